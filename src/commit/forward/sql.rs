//! The cloud statements of the forward direction, generated once per table from its mapping.
//!
//! Staging tables (session temp tables): `S` holds the desktop's current rows for the batch's keys, `K`
//! the keys themselves (a key in `K` without a row in `S` was deleted on the desktop), `P` (cloud-key
//! tables) the multiset match between `S` and the cloud rows of the touched scopes. User columns are
//! staged by position (see [`crate::commit::sql`]). Every statement that changes user rows takes a range
//! `$1..$2` of staging row numbers (`_n`), so a failing row can be isolated by bisection; the fast path
//! passes the whole range.
//!
//! Each statement is built by a function of its own: [`common`] those of every table, [`keyed`] those
//! of desktop-key tables, [`scoped`] those of cloud-key tables; [`ForwardSql::build`] only assembles
//! them.

use crate::config::owner;
use crate::transform::TableMapping;

mod common;
mod keyed;
mod scoped;
mod staged;

pub use common::BySize;
use scoped::Scoped;
use staged::Staged;

/// What a ranged statement's rows are numbered by, for building a dead letter of one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbered {
    Rows,
    Keys,
    Plan,
}

/// A statement over a range of staging rows.
#[derive(Debug, Clone)]
pub struct Ranged {
    pub what: &'static str,
    pub sql: String,
    pub numbered: Numbered,
}

/// A ranged statement that writes the target's rows.
#[derive(Debug, Clone)]
pub struct Write {
    /// As the careful path runs it, range by range.
    pub ranged: Ranged,
    /// As the fast path runs it: the same, letting the foreign keys' checks reuse their plans while
    /// it runs (see [`GENERIC_CHECKS`]); the step after it is [`CUSTOM_PLANS`].
    pub fast: String,
}

impl Write {
    /// `sql` is given the condition that lets the checks reuse their plans (`AND …`, or nothing), to
    /// place right after its range.
    pub(super) fn new(what: &'static str, n: Numbered, sql: impl Fn(&str) -> String) -> Self {
        Write {
            ranged: Ranged {
                what,
                sql: sql(""),
                numbered: n,
            },
            fast: sql(&format!(" AND {GENERIC_CHECKS}")),
        }
    }
}

/// tandem's sessions plan each execution of a statement for its own parameters
/// (`plan_cache_mode = force_custom_plan`: staging sizes vary by orders of magnitude), and PostgreSQL
/// plans the checks of the target's foreign keys under the same setting: once per row written and
/// per foreign key, instead of once per session. That doubled a bulk write (measured 2026-12-01, the
/// seeds' initial sync: jobtasks' 64,542-row insert 2.2 s, 0.86 s as the same INSERT … SELECT under
/// the default; jobshead's 24,562-row upsert 0.80 s, 0.29 s; by hand, the same jobtasks insert 2.43 s
/// under `force_custom_plan`, 1.24 s under `auto`, its ON CONFLICT clause costing nothing). A write
/// statement is planned (bound) before it runs and the checks run at its end, so the fast path's
/// write statements set the server's default for the transaction as they start (a one-time
/// condition, true), and the step right after each puts tandem's setting back ([`CUSTOM_PLANS`])
/// before any other statement is bound. The careful path keeps the plain statements: it runs one
/// statement many times over ranges with no step in between, and each must be planned for its range.
const GENERIC_CHECKS: &str =
    "(SELECT pg_catalog.set_config('plan_cache_mode', 'auto', true)) IS NOT NULL";

/// tandem's session setting again (see [`crate::commit::Target::prepare`]), after a fast write.
pub const CUSTOM_PLANS: &str =
    "SELECT pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true)";

#[derive(Debug, Clone)]
pub struct ForwardSql {
    pub rows: String,
    pub keys: String,
    pub plan_table: Option<String>,
    pub create: String,
    pub copy_rows_in: String,
    pub copy_keys_in: String,
    /// Adds every desktop-owned key (or scope) of the cloud table to `K`: a TRUNCATE on the desktop.
    pub truncate_keys: String,
    /// Whether `K` holds a key with a NULL part (only cloud-key tables can).
    pub keys_have_null: Option<String>,
    /// Desktop-key tables: the `S` row numbers of each key the desktop holds more than once.
    pub duplicate_rows: Option<String>,
    pub drop_duplicates: Option<Vec<String>>,
    /// Cloud-key tables: fills `P`, for keys without NULL parts and for keys with them.
    pub plan: Option<(String, String)>,
    /// `ANALYZE` of `S` (the columns statements filter and join on) and `K`, and of `P` once filled:
    /// big batches (see [`super::ANALYZE_ABOVE`]).
    pub analyze_staged: String,
    pub analyze_plan: Option<String>,
    /// Tables whose phone rows do not travel back (`reverse = false`): the desktop changes a phone's
    /// row would take, logged as conflicts ($1 table name). Such a row is never received, so never
    /// the desktop's to change.
    pub conflicts: Vec<String>,
    /// Tables whose phone rows travel back: takes out of `K` and `S` the keys (or scopes) whose cloud
    /// row holds a phone's change the desktop had not received when the batch read it, or that a
    /// phone's delete (or move) the desktop had not received left, and returns them (each an array of
    /// the key's texts, as the capture triggers write them): they are put back into the outbox, to be
    /// taken again once the table's horizon reaches this transaction. Either the reverse direction
    /// delivers the phone's change first (the desktop change is then an edit made after it, or a
    /// conflict it settles), or the desktop held it already and only the horizon was behind.
    pub hold: Option<BySize>,
    /// Tables whose phone rows travel back: locks the cloud rows of the batch's keys (or scopes)
    /// before `hold` reads them, so that what the hold decides stays true until the batch commits: a
    /// phone's update or delete of one of them waits for the batch (and then changes the desktop's new
    /// version, which the reverse applies as an ordinary edit), instead of slipping in between the
    /// hold and the write (a phone's delete there let the write insert the row again).
    pub lock: Option<BySize>,
    /// Cloud-key tables whose phone rows travel back: the hold again once `P` is filled, on its view
    /// (see [`scoped::late_hold`]).
    pub late_hold: Option<String>,
    /// Cloud-key tables whose phone rows travel back: takes the cloud rows open conflicts keep out of
    /// `P` (see [`scoped::keep`]).
    pub keep: Option<String>,
    pub delete: Write,
    pub write: Write,
    /// Cloud-key tables: pairs the cloud rows no staged row matched with the staged rows no cloud row
    /// matched, scope by scope (a desktop edit of a row is a changed row of the same scope), in `P`.
    pub pair: Option<String>,
    /// Cloud-key tables: writes each pair's staged row over its cloud row, in place (the cloud key
    /// stays, the row becomes desktop-owned).
    pub update_pairs: Option<Write>,
    /// Into a target that holds no row, and the lock and check before it (see
    /// [`super::Forward::fill`]).
    pub fill: Write,
    pub lock_empty: String,
    pub lookup_update: Option<Write>,
    /// Marks the dead letters of keys that now applied as resolved ($1 table, $2 batch).
    pub resolve: String,
    /// `(row_key, row_image)` of row `$1` of `S`, `K` and `P`, for a dead letter.
    images: [String; 3],
}

/// One table's names and staged columns: what every statement of it is built from.
struct Table<'a> {
    pub t: &'a TableMapping,
    pub st: Staged<'a>,
    /// The cloud table, quoted.
    pub target: String,
    /// `S`, the staged rows.
    pub rows: String,
    /// `K`, the staged keys (or scopes).
    pub keys: String,
    /// Its place in the mapping (its staging tables and its horizon are numbered by it).
    pub i: usize,
}

impl<'a> Table<'a> {
    /// Table `t`, the `i`-th of the mapping (its staging tables are numbered by it).
    pub fn new(t: &'a TableMapping, i: usize) -> Self {
        Table {
            t,
            st: Staged::new(t),
            target: t.table.cloud.quoted(),
            rows: format!("pg_temp.tandem_s_{i}"),
            keys: format!("pg_temp.tandem_k_{i}"),
            i,
        }
    }

    /// Whether the desktop may change or delete cloud row `alias`: it is desktop-owned, or (when
    /// phone rows travel back) the phone's version the desktop has received by the table's horizon.
    pub fn may_change(&self, alias: &str) -> String {
        if self.t.reverse {
            owner::desktop_may_change(alias, &owner::horizon(self.i))
        } else {
            owner::desktop_owned(&owner::of(alias))
        }
    }
}

impl ForwardSql {
    /// The names of this table's staging tables.
    pub fn staging_tables(&self) -> Vec<String> {
        [Some(&self.rows), Some(&self.keys), self.plan_table.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    pub fn build(t: &TableMapping, i: usize) -> ForwardSql {
        let table = Table::new(t, i);
        let scoped_table = Scoped::of(&table, i);
        let insert = common::insert(&table);
        let (fill, lock_empty) = super::fill::statements(
            &table.target,
            &table.rows,
            insert.columns.clone(),
            insert.values.clone(),
        );
        let create = match &scoped_table {
            None => common::create(&table),
            Some(s) => format!("{}\n{}", common::create(&table), scoped::create_plan(s)),
        };
        ForwardSql {
            rows: table.rows.clone(),
            keys: table.keys.clone(),
            plan_table: scoped_table.as_ref().map(|s| s.plan.clone()),
            create,
            copy_rows_in: common::copy_rows_in(&table),
            copy_keys_in: common::copy_keys_in(&table),
            truncate_keys: common::truncate_keys(&table),
            keys_have_null: scoped_table
                .as_ref()
                .map(|_| scoped::keys_have_null(&table)),
            duplicate_rows: scoped_table
                .is_none()
                .then(|| keyed::duplicate_rows(&table)),
            drop_duplicates: scoped_table
                .is_none()
                .then(|| keyed::drop_duplicates(&table)),
            plan: scoped_table
                .as_ref()
                .map(|s| (scoped::plan(s, false), scoped::plan(s, true))),
            analyze_staged: common::analyze_staged(&table),
            analyze_plan: scoped_table.as_ref().map(scoped::analyze_plan),
            conflicts: match &scoped_table {
                None if !t.reverse => vec![keyed::conflicts(&table)],
                _ => Vec::new(),
            },
            hold: t.reverse.then(|| match &scoped_table {
                None => keyed::hold(&table),
                Some(s) => scoped::hold(s),
            }),
            lock: t
                .reverse
                .then(|| common::lock(&table, scoped_table.is_some())),
            late_hold: scoped_table
                .as_ref()
                .filter(|_| t.reverse)
                .map(scoped::late_hold),
            keep: scoped_table
                .as_ref()
                .filter(|_| t.reverse)
                .map(scoped::keep),
            pair: scoped_table.as_ref().map(scoped::pair),
            update_pairs: scoped_table.as_ref().map(scoped::update_pairs),
            delete: match &scoped_table {
                None => keyed::delete(&table),
                Some(s) => scoped::delete(s),
            },
            write: match &scoped_table {
                None => keyed::upsert(&table, &insert),
                Some(s) => scoped::insert(s, &insert),
            },
            fill,
            lock_empty,
            lookup_update: scoped_table.as_ref().and_then(scoped::lookup_update),
            resolve: common::resolve(&table),
            images: [
                common::image_of_rows(&table),
                common::image_of_keys(&table),
                scoped_table
                    .as_ref()
                    .map(scoped::image_of_plan)
                    .unwrap_or_default(),
            ],
        }
    }

    /// `(row_key, row_image)` of staging row `$1` of a ranged statement, for a dead letter.
    pub fn dead_letter_image(&self, numbered: Numbered) -> &str {
        match numbered {
            Numbered::Rows => &self.images[0],
            Numbered::Keys => &self.images[1],
            Numbered::Plan => &self.images[2],
        }
    }

    /// The staging table a ranged statement's `_n` refers to.
    pub fn numbered_table(&self, numbered: Numbered) -> &str {
        match numbered {
            Numbered::Rows => &self.rows,
            Numbered::Keys => &self.keys,
            Numbered::Plan => self
                .plan_table
                .as_deref()
                .expect("only cloud-key tables have a plan"),
        }
    }
}

#[cfg(test)]
mod tests;
