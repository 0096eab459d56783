//! The desktop statements of the reverse direction (mobile rows → desktop), built once per table.
//!
//! The stream stages every change as a row of `S` (see [`super::layout`]). `N` reduces them to one net
//! change per key (desktop-key tables) or per cloud row (cloud-key tables): the last version, and the
//! *first* old image. The desktop's row is then compared with that old image: the same (by text, as
//! the desktop column would hold the image's values; see [`crate::expr`]) means the desktop has what
//! the phone started from, so the phone's change applies; different means both sides changed the row
//! (or a phone created a key the desktop already holds), so nothing is changed and the incoming row
//! goes to `tandem.conflicts`.
//!
//! Each statement is built by a function of its own: [`common`] those of every table, [`keyed`] those
//! of desktop-key tables, [`scoped`] those of cloud-key tables; [`ReverseSql::build`] only assembles
//! them.

use crate::commit::forward::sql::Ranged;
use crate::transform::{Kind, TableMapping};

mod columns;
mod common;
mod keyed;
mod scoped;
mod settle;

use columns::Columns;
use keyed::Keyed;
use scoped::Scoped;

/// The SQLSTATE of the dead letters of a parked table's rows (not an error of the desktop's).
pub const PARKED_SQLSTATE: &str = "TPARK";

/// The statements of a group that only inserted new rows.
#[derive(Debug, Clone)]
pub struct DirectSql {
    /// Desktop-key tables: makes the new rows whose key the desktop holds with other content net
    /// changes of `N`, to be settled as conflicts (empty for cloud-key tables).
    pub collisions: String,
    pub insert: String,
}

/// How a desktop-key table's conflicts are found, recorded and settled (see `settle`), in order.
#[derive(Debug, Clone)]
pub struct Settle {
    /// Fills `C`: the net changes in conflict, with their result by the table's policy.
    pub find: String,
    /// Records them in `tandem.conflicts` ($1: table name).
    pub record: String,
    /// Queues the keys whose result the cloud must take too.
    pub enqueue: String,
    /// Writes the results over their net changes (or holds them, for a person to decide).
    pub apply: String,
}

#[derive(Debug, Clone)]
pub struct ReverseSql {
    /// The desktop table, quoted.
    pub target: String,
    pub staged: String,
    pub net: String,
    pub plan_table: Option<String>,
    /// `C` (desktop-key tables).
    pub found: Option<String>,
    pub create: String,
    pub copy_in: String,
    /// New rows straight into the desktop table (see `commit::Dest::Direct`).
    pub copy_direct: String,
    /// Fills `N` from `S`.
    pub reduce: String,
    /// Locks the desktop rows the net changes meet (by key; a cloud-key table's rows of the scopes
    /// the changes started in) before anything reads them: each later statement of the group reads
    /// them as they are then (a new snapshot per statement), and no desktop change can commit between
    /// the check that finds a conflict and the write that relies on it.
    pub lock: String,
    /// Cloud-key tables: pairs each changed cloud row with the desktop row it started from.
    pub plan: Option<String>,
    /// Settles the conflicts.
    pub settle: Settle,
    /// Cloud-key tables: the scopes (text arrays, as the old images hold them) of net changes whose
    /// old image the desktop does not hold: to read the cloud's rows of, for [`ReverseSql::contest`].
    pub contested_scopes: Option<String>,
    /// Cloud-key tables, in the cloud: the rows of scopes `$1` (a JSON array of text arrays), each
    /// as `(scope texts, image)`, the image as the stream writes old images.
    pub cloud_scope_rows: Option<String>,
    /// Cloud-key tables: pairs each net change whose old image the desktop does not hold with the
    /// desktop row it changed that into, if any, from the cloud's rows `$1` (a JSON array of images).
    pub contest: Option<String>,
    pub delete: Ranged,
    pub update: Ranged,
    pub insert: Ranged,
    /// `(row_key, row_image, old_image)` of `N` row `$1`, for a dead letter.
    pub dead_letter_image: String,
    /// After the reduction: a key with an open dead letter compares its change with the old image that
    /// dead letter recorded (what the desktop still holds), not with the change's own.
    pub inherit: String,
    /// A parked table's net changes, kept as dead letters ($1: table name, $2: batch, $3: why), one
    /// per key: a later change of a key updates its open dead letter and keeps its old image.
    pub set_aside: String,
    /// Resolves the open dead letters of rows `N` holds a later version of ($1: table name, $2: the
    /// group's batch, whose own dead letters stay open): that version was applied, or logged as a
    /// conflict, or is a delete of a row the desktop never had.
    pub resolve: String,
    /// A group that only inserted new rows needs no reduction: conflicts ($1: table name; empty for
    /// cloud-key tables) and inserts straight from `S`, probing the desktop key's index (when it has
    /// one) or by hash join.
    pub direct_probe: Option<DirectSql>,
    pub direct_hash: DirectSql,
    /// The desktop key (or scope) has no index: statements that look rows up by it must not run as
    /// nested loops.
    pub no_key_index: bool,
    pub analyze_net: String,
}

/// One table's names and columns: what every statement of it is built from.
struct Table<'a> {
    pub t: &'a TableMapping,
    /// The columns that travel to the desktop.
    pub c: Columns<'a>,
    /// The desktop table, quoted.
    pub target: String,
    /// `S`, the staged changes.
    pub staged: String,
    /// `N`, the net change of each row.
    pub net: String,
    /// `C`, the conflicts of a group (desktop-key tables).
    pub found: String,
}

impl<'a> Table<'a> {
    /// Table `t`, the `i`-th of the mapping (its staging tables are numbered by it).
    pub fn new(t: &'a TableMapping, i: usize) -> Self {
        Table {
            t,
            c: Columns {
                cols: &t.reverse_columns,
            },
            target: t.table.desktop.quoted(),
            staged: format!("pg_temp.tandem_r_{i}"),
            net: format!("pg_temp.tandem_rn_{i}"),
            found: format!("pg_temp.tandem_rc_{i}"),
        }
    }
}

/// A table's kind, with what the statements of that kind are built from.
enum ByKind<'a> {
    Keyed(Keyed<'a>),
    Scoped(Scoped<'a>),
}

impl ReverseSql {
    /// The names of this table's staging tables.
    pub fn staging_tables(&self) -> Vec<String> {
        [
            Some(&self.staged),
            Some(&self.net),
            self.plan_table.as_ref(),
            self.found.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    pub fn build(t: &TableMapping, i: usize) -> ReverseSql {
        let table = Table::new(t, i);
        let kind = match &t.kind {
            Kind::Key(key) => ByKind::Keyed(Keyed::new(&table, key)),
            Kind::Scoped { scope, .. } => ByKind::Scoped(Scoped::new(&table, scope, i)),
        };
        // How a dead letter names the row of net change `n`.
        let row_key = match &kind {
            ByKind::Keyed(k) => k.key_json("n"),
            ByKind::Scoped(_) => scoped::ROW_KEY.to_string(),
        };
        ReverseSql {
            target: table.target.clone(),
            staged: table.staged.clone(),
            net: table.net.clone(),
            plan_table: match &kind {
                ByKind::Keyed(_) => None,
                ByKind::Scoped(s) => Some(s.plan.clone()),
            },
            found: Some(table.found.clone()),
            create: match &kind {
                ByKind::Keyed(_) => {
                    format!("{}\n{}", common::create(&table), settle::create(&table))
                }
                ByKind::Scoped(s) => format!(
                    "{}\n{}\n{}",
                    common::create(&table),
                    settle::create(&table),
                    scoped::create_plan(s)
                ),
            },
            copy_in: common::copy_in(&table),
            copy_direct: common::copy_direct(&table),
            reduce: match &kind {
                ByKind::Keyed(k) => keyed::reduce(k),
                ByKind::Scoped(_) => scoped::reduce(&table),
            },
            lock: match &kind {
                ByKind::Keyed(k) => keyed::lock(k),
                ByKind::Scoped(s) => scoped::lock(s),
            },
            plan: match &kind {
                ByKind::Keyed(_) => None,
                ByKind::Scoped(s) => Some(scoped::plan(s)),
            },
            contest: match &kind {
                ByKind::Keyed(_) => None,
                ByKind::Scoped(s) => Some(scoped::contest(s)),
            },
            contested_scopes: match &kind {
                ByKind::Keyed(_) => None,
                ByKind::Scoped(s) => Some(scoped::contested_scopes(s)),
            },
            cloud_scope_rows: match &kind {
                ByKind::Keyed(_) => None,
                ByKind::Scoped(s) => Some(scoped::cloud_scope_rows(s)),
            },
            settle: {
                let site = match &kind {
                    ByKind::Keyed(k) => settle::Site::keyed(k),
                    ByKind::Scoped(s) => scoped::site(s),
                };
                Settle {
                    find: settle::find(&site, t.policy),
                    record: settle::record(&site, t.policy),
                    enqueue: settle::enqueue(&site),
                    apply: settle::apply(&site),
                }
            },
            delete: match &kind {
                ByKind::Keyed(k) => keyed::delete(k),
                ByKind::Scoped(s) => scoped::delete(s),
            },
            update: match &kind {
                ByKind::Keyed(k) => keyed::update(k),
                ByKind::Scoped(s) => scoped::update(s),
            },
            insert: match &kind {
                ByKind::Keyed(k) => keyed::insert(k),
                ByKind::Scoped(s) => scoped::insert(s),
            },
            dead_letter_image: common::dead_letter_image(&table, &row_key),
            inherit: common::inherit(&table, &row_key),
            set_aside: common::set_aside(&table, &row_key),
            resolve: common::resolve(&table, &row_key),
            direct_probe: match &kind {
                ByKind::Keyed(k) => t.desktop_key_indexed.then(|| keyed::direct_probe(k)),
                ByKind::Scoped(_) => None,
            },
            direct_hash: match &kind {
                ByKind::Keyed(k) => keyed::direct_hash(k),
                ByKind::Scoped(_) => scoped::direct_hash(&table),
            },
            no_key_index: !t.desktop_key_indexed,
            analyze_net: common::analyze_net(&table),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::testing::{odd_keyed, odd_scoped};

    #[test]
    fn each_kind_gets_its_own_statements() {
        let mut keyed = odd_keyed();
        let sql = ReverseSql::build(&keyed, 0);
        assert_eq!(
            sql.staging_tables(),
            [
                "pg_temp.tandem_r_0",
                "pg_temp.tandem_rn_0",
                "pg_temp.tandem_rc_0"
            ]
        );
        assert!(sql.plan.is_none() && sql.direct_probe.is_some() && !sql.no_key_index);
        assert!(!sql.direct_hash.collisions.is_empty());
        // No index on the desktop key: nothing probes it.
        keyed.desktop_key_indexed = false;
        let sql = ReverseSql::build(&keyed, 0);
        assert!(sql.direct_probe.is_none() && sql.no_key_index);

        let sql = ReverseSql::build(&odd_scoped(), 1);
        assert_eq!(
            sql.staging_tables(),
            [
                "pg_temp.tandem_r_1",
                "pg_temp.tandem_rn_1",
                "pg_temp.tandem_rp_1",
                "pg_temp.tandem_rc_1"
            ]
        );
        assert!(sql.plan.is_some() && sql.direct_probe.is_none());
        assert!(sql.direct_hash.collisions.is_empty());
        assert!(sql.create.ends_with(
            "\nCREATE TEMP TABLE IF NOT EXISTS pg_temp.tandem_rp_1 (_ck text, _tid tid, _contested boolean) ON COMMIT PRESERVE ROWS;"
        ));
        assert!(
            sql.resolve
                .ends_with("dl.row_key = jsonb_build_object('cloud_key', n._ck)")
        );
    }
}
