//! The cloud statements of the forward direction, generated once per table from its mapping.
//!
//! Staging tables (session temp tables): `S` holds the desktop's current rows for the batch's keys, `K`
//! the keys themselves (a key in `K` without a row in `S` was deleted on the desktop), `P` (cloud-key
//! tables) the multiset match between `S` and the cloud rows of the touched scopes. User columns are
//! staged by position (see [`crate::commit::sql`]). Every statement that changes user rows takes a range
//! `$1..$2` of staging row numbers (`_n`), so a failing row can be isolated by bisection; the fast path
//! passes the whole range.

use crate::commit::log_conflicts;
use crate::config::{CREATED_AT_COLUMN, UPDATED_AT_COLUMN, owner};
use crate::expr::{col, group_by, list, q, row_text, same_key};
use crate::transform::{Kind, TableMapping};

mod staged;
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
    pub conflicts: Vec<String>,
    pub delete: Write,
    pub write: Write,
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
        let target = t.table.cloud.quoted();
        let rows = format!("pg_temp.tandem_s_{i}");
        let keys = format!("pg_temp.tandem_k_{i}");
        let st = Staged::new(t);
        let width = st.columns.len();
        let defs = |types: Vec<&str>| -> String {
            types
                .iter()
                .enumerate()
                .map(|(j, ty)| format!(", {} {ty}", col(j)))
                .collect()
        };
        let row_defs = defs(st.columns.iter().map(|c| c.wire()).collect());
        let key_defs = defs(st.key.iter().map(|(k, _)| k.wire()).collect());
        let mut create = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {rows} (_n bigint GENERATED ALWAYS AS IDENTITY{row_defs}) ON COMMIT PRESERVE ROWS;\n\
             CREATE TEMP TABLE IF NOT EXISTS {keys} (_n bigint GENERATED ALWAYS AS IDENTITY{key_defs}) ON COMMIT PRESERVE ROWS;"
        );
        let copy_rows_in = format!(
            "COPY {rows} ({}) FROM STDIN (FORMAT binary)",
            list((0..width).map(col))
        );
        let copy_keys_in = format!(
            "COPY {keys} ({}) FROM STDIN (FORMAT binary)",
            list((0..st.key.len()).map(col))
        );
        let key_group: Vec<String> = st
            .key
            .iter()
            .map(|(k, _)| group_by(&format!("c.{}", q(&k.name)), &k.cloud))
            .collect();
        let desktop_owned = owner::desktop_owned(&owner::of("c"));
        let truncate_keys = format!(
            "INSERT INTO {keys} ({kcols}) SELECT {wired} \
             FROM (SELECT DISTINCT ON ({group}) {ckeys} FROM {target} c WHERE {desktop_owned}) c \
             WHERE NOT EXISTS (SELECT 1 FROM {keys} k WHERE {matching})",
            kcols = list((0..st.key.len()).map(col)),
            wired = list(st.key.iter().map(|(k, _)| format!(
                "CAST(c.{} AS {})",
                q(&k.name),
                k.wire()
            ))),
            group = key_group.join(", "),
            ckeys = list(st.key.iter().map(|(k, _)| format!("c.{}", q(&k.name)))),
            matching = st.c_is_k(true),
        );
        let resolve = format!(
            "UPDATE tandem.dead_letters d SET resolved_at = now() FROM {keys} k \
             WHERE d.direction = 'forward' AND d.table_name = $1 AND d.resolved_at IS NULL \
             AND d.batch IS DISTINCT FROM $2 AND d.row_key = {}",
            st.key_json("k")
        );
        // `S`'s columns the statements filter and join on only: its wide user columns took three
        // quarters of the time of analyzing it (64,542 rows of jobtasks: 40 ms, 11 ms without them).
        let analyze_staged = format!(
            "ANALYZE {rows} (_n{}), {keys}",
            st.key
                .iter()
                .map(|(_, at)| format!(", {}", col(*at)))
                .collect::<String>()
        );
        let mut insert_cols = st.names();
        insert_cols.push(owner::column());
        let mut insert_vals: Vec<String> = (0..width).map(|j| st.value("s", j)).collect();
        insert_vals.push(owner::desktop());
        if t.has_created_at {
            insert_cols.push(q(CREATED_AT_COLUMN));
            insert_vals.push("now()".into());
        }
        if t.has_updated_at {
            insert_cols.push(q(UPDATED_AT_COLUMN));
            insert_vals.push("now()".into());
        }
        let touch = if t.has_updated_at {
            format!(", {} = now()", q(UPDATED_AT_COLUMN))
        } else {
            String::new()
        };
        let (fill, lock_empty) = super::fill::statements(
            &target,
            &rows,
            list(insert_cols.clone()),
            list(insert_vals.clone()),
        );
        let images = |plan: Option<&str>| {
            let of_rows = format!(
                "SELECT {}, {}, NULL::jsonb FROM {rows} s WHERE s._n = $1",
                st.key_json("s"),
                st.incoming()
            );
            let of_keys = format!(
                "SELECT {}, (SELECT to_jsonb(c.*) FROM {target} c WHERE {} LIMIT 1), NULL::jsonb FROM {keys} k WHERE k._n = $1",
                st.key_json("k"),
                st.c_is_k(true),
            );
            let of_plan = match (&t.kind, plan) {
                (
                    Kind::Scoped {
                        cloud_key,
                        cloud_key_type,
                        ..
                    },
                    Some(plan),
                ) => format!(
                    "SELECT {}, to_jsonb(c.*), NULL::jsonb FROM {plan} p JOIN {target} c ON {} WHERE p._n = $1",
                    st.key_json_of_target(),
                    same_key(&format!("c.{}", q(cloud_key)), "p._ck", cloud_key_type),
                ),
                _ => String::new(),
            };
            [of_rows, of_keys, of_plan]
        };

        match &t.kind {
            Kind::Key(key) => {
                let names = st.names();
                // Blocked upserts and blocked deletes, in one statement.
                let conflicts = vec![log_conflicts(&format!(
                    "SELECT 'forward', $1::text, {kjs}, {incoming}, to_jsonb(c.*), \
                     'the cloud row is mobile-owned; the desktop change was not applied' \
                     FROM {rows} s JOIN {target} c ON {c_is_s} WHERE {mobile} AND {differs} \
                     UNION ALL \
                     SELECT 'forward', $1::text, {kjk}, NULL, to_jsonb(c.*), \
                     'the desktop deleted this row, but the cloud row is mobile-owned; it was kept' \
                     FROM {keys} k JOIN {target} c ON {c_is_k} WHERE {mobile} \
                     AND NOT EXISTS (SELECT 1 FROM {rows} s WHERE {s_is_k})",
                    kjs = st.key_json("s"),
                    incoming = st.incoming(),
                    c_is_s = st.c_is_s(),
                    differs = st.differs_from_target(),
                    kjk = st.key_json("k"),
                    c_is_k = st.c_is_k(false),
                    s_is_k = st.s_is_k(),
                    mobile = owner::is_mobile(&owner::of("c")),
                ))];
                let (c_is_k, s_is_k) = (st.c_is_k(false), st.s_is_k());
                let delete = Write::new("delete", Numbered::Keys, |checks| {
                    format!(
                        "DELETE FROM {target} c USING {keys} k WHERE {c_is_k} AND {desktop_owned} \
                         AND NOT EXISTS (SELECT 1 FROM {rows} s WHERE {s_is_k}) AND k._n BETWEEN $1 AND $2{checks}"
                    )
                });
                // Every staged column is set, keys included: a key the desktop now writes differently
                // (`1.0` → `1.00`) is the same key to the unique index, and its new text is a change.
                let sets = list(names.iter().map(|n| format!("{n} = EXCLUDED.{n}")));
                let current: Vec<String> = names.iter().map(|n| format!("c.{n}")).collect();
                let excluded: Vec<String> = names.iter().map(|n| format!("EXCLUDED.{n}")).collect();
                let (cols, vals) = (list(insert_cols), list(insert_vals));
                let arbiter = list(key.iter().map(|k| q(&k.name)));
                let (current, excluded) = (row_text(&current), row_text(&excluded));
                let set_desktop = owner::set_desktop();
                let write = Write::new("upsert", Numbered::Rows, |checks| {
                    format!(
                        "INSERT INTO {target} AS c ({cols}) SELECT {vals} FROM {rows} s \
                         WHERE s._n BETWEEN $1 AND $2{checks} \
                         ON CONFLICT ({arbiter}) DO UPDATE SET {sets}, {set_desktop}{touch} \
                         WHERE {desktop_owned} AND {current} IS DISTINCT FROM {excluded}"
                    )
                });
                let group: Vec<String> = st
                    .key
                    .iter()
                    .map(|(k, at)| group_by(&st.value("s", *at), &k.cloud))
                    .collect();
                ForwardSql {
                    duplicate_rows: Some(format!(
                        "SELECT array_agg(s._n ORDER BY s._n), count(*) FROM {rows} s GROUP BY {} HAVING count(*) > 1",
                        group.join(", ")
                    )),
                    drop_duplicates: Some(vec![
                        format!(
                            "DELETE FROM {keys} k USING {rows} s WHERE s._n = ANY($1) AND {}",
                            st.s_is_k()
                        ),
                        format!("DELETE FROM {rows} s WHERE s._n = ANY($1)"),
                    ]),
                    keys_have_null: None,
                    plan: None,
                    plan_table: None,
                    analyze_staged,
                    analyze_plan: None,
                    conflicts,
                    delete,
                    write,
                    lookup_update: None,
                    fill,
                    lock_empty,
                    images: images(None),
                    rows,
                    keys,
                    create,
                    copy_rows_in,
                    copy_keys_in,
                    truncate_keys,
                    resolve,
                }
            }
            Kind::Scoped {
                cloud_key,
                cloud_key_type,
                ..
            } => {
                let plan = format!("pg_temp.tandem_p_{i}");
                create.push_str(&format!(
                    "\nCREATE TEMP TABLE IF NOT EXISTS {plan} (_n bigint GENERATED ALWAYS AS IDENTITY, _ck {}, _row bigint, _source text) ON COMMIT PRESERVE ROWS;",
                    cloud_key_type.base
                ));
                let ck = format!("c.{}", q(cloud_key));
                let is_p = same_key(&ck, "p._ck", cloud_key_type);
                // Rows are matched on the text of all their desktop columns, as the cloud holds them.
                let own = t.columns.len();
                let d_hash = format!(
                    "md5({})",
                    row_text(
                        &(0..own)
                            .map(|j| st.columns[j].cloud_shaped(&format!("s.{}", col(j))))
                            .collect::<Vec<_>>()
                    )
                );
                let c_hash = format!(
                    "md5({})",
                    row_text(
                        &t.columns
                            .iter()
                            .map(|c| format!("c.{}", q(&c.name)))
                            .collect::<Vec<_>>()
                    )
                );
                // When the cloud holds no row of the touched scopes (an initial sync, new jobs), every
                // staged row is new: the second branch lists them without hashing and sorting them (a
                // third of the seeds' jobtasks plan, 0.17 s for 64,542 rows, was that).
                let plan_sql = |or_null: bool| {
                    format!(
                        "INSERT INTO {plan} (_ck, _row, _source) \
                         WITH d AS (SELECT s._n, {d_hash} AS h FROM {rows} s), \
                              dn AS (SELECT d._n, d.h, row_number() OVER (PARTITION BY d.h ORDER BY d._n) AS dup FROM d), \
                              c AS (SELECT {ck} AS _ck, {c_owner} AS _source, {c_hash} AS h FROM {target} c \
                                    WHERE EXISTS (SELECT 1 FROM {keys} k WHERE {scope})), \
                              cn AS (SELECT c._ck, c._source, c.h, row_number() OVER (PARTITION BY c.h \
                                     ORDER BY ({c_mobile}) DESC NULLS LAST, c._ck) AS dup FROM c) \
                         SELECT cn._ck, dn._n, cn._source FROM dn FULL JOIN cn ON dn.h = cn.h AND dn.dup = cn.dup \
                         WHERE EXISTS (SELECT 1 FROM c) \
                         UNION ALL SELECT NULL, s._n, NULL FROM {rows} s WHERE NOT EXISTS (SELECT 1 FROM c)",
                        scope = st.c_is_k(or_null),
                        c_owner = owner::text_of("c"),
                        c_mobile = owner::is_mobile("c._source"),
                    )
                };
                let p_desktop = owner::desktop_owned("p._source");
                let delete = Write::new("scoped delete", Numbered::Plan, |checks| {
                    format!(
                        "DELETE FROM {target} c USING {plan} p WHERE {is_p} AND p._row IS NULL \
                         AND {p_desktop} AND p._n BETWEEN $1 AND $2{checks}"
                    )
                });
                let (cols, vals) = (list(insert_cols), list(insert_vals));
                let write = Write::new("scoped insert", Numbered::Rows, |checks| {
                    format!(
                        "INSERT INTO {target} ({cols}) SELECT {vals} FROM {rows} s JOIN {plan} p ON p._row = s._n \
                         WHERE p._ck IS NULL AND s._n BETWEEN $1 AND $2{checks}"
                    )
                });
                let lookups: Vec<usize> = (own..width).collect();
                let lookup_update = (!lookups.is_empty()).then(|| {
                    let sets = list(lookups.iter().map(|&j| {
                        format!("{} = {}", q(&st.columns[j].name), st.value("s", j))
                    }));
                    let current: Vec<String> = lookups
                        .iter()
                        .map(|&j| format!("c.{}", q(&st.columns[j].name)))
                        .collect();
                    let staged: Vec<String> = lookups
                        .iter()
                        .map(|&j| st.columns[j].cloud_shaped(&format!("s.{}", col(j))))
                        .collect();
                    let (current, staged) = (row_text(&current), row_text(&staged));
                    // Only matched rows: new ones (no cloud key) were inserted with their lookups, and
                    // leaving them out spares a join with the whole table (0.05 s on the seeds' jobtasks).
                    Write::new("lookup update", Numbered::Rows, |checks| {
                        format!(
                            "UPDATE {target} c SET {sets}{touch} FROM {plan} p JOIN {rows} s ON s._n = p._row \
                             WHERE p._ck IS NOT NULL AND {is_p} AND {p_desktop} \
                             AND {current} IS DISTINCT FROM {staged} AND s._n BETWEEN $1 AND $2{checks}"
                        )
                    })
                });
                let any_null = (0..st.key.len()).map(|n| format!("k.{} IS NULL", col(n)));
                ForwardSql {
                    duplicate_rows: None,
                    drop_duplicates: None,
                    keys_have_null: Some(format!(
                        "SELECT EXISTS (SELECT 1 FROM {keys} k WHERE {})",
                        any_null.collect::<Vec<_>>().join(" OR ")
                    )),
                    plan: Some((plan_sql(false), plan_sql(true))),
                    conflicts: Vec::new(),
                    delete,
                    write,
                    lookup_update,
                    fill,
                    lock_empty,
                    images: images(Some(&plan)),
                    analyze_staged,
                    analyze_plan: Some(format!("ANALYZE {plan}")),
                    plan_table: Some(plan),
                    rows,
                    keys,
                    create,
                    copy_rows_in,
                    copy_keys_in,
                    truncate_keys,
                    resolve,
                }
            }
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
