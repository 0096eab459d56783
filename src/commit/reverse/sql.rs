//! The desktop statements of the reverse direction (mobile rows → desktop), built once per table.
//!
//! The stream stages every change as a row of `S` (see [`super::layout`]). `N` reduces them to one net
//! change per key (desktop-key tables) or per cloud row (cloud-key tables): the last version, and the
//! *first* old image. The desktop's row is then compared with that old image: the same (by text, as
//! the desktop column would hold the image's values; see [`crate::expr`]) means the desktop has what
//! the phone started from, so the phone's change applies; different means both sides changed the row
//! (or a phone created a key the desktop already holds), so nothing is changed and the incoming row
//! goes to `tandem.conflicts`.

use super::layout;
use crate::commit::forward::sql::{Numbered, Ranged};
use crate::commit::log_conflicts;
use crate::expr::{col, is_integer, json_object, key_json_value, lit, q, row_text, same_key, text};
use crate::transform::{Kind, MappedColumn, TableMapping};

/// The SQLSTATE of the dead letters of a parked table's rows (not an error of the desktop's).
pub const PARKED_SQLSTATE: &str = "TPARK";

/// The start of a `resolve` statement, and the dead letters it may resolve.
const RESOLVE: &str = "UPDATE tandem.dead_letters dl SET resolved_at = now()";
const RESOLVE_OPEN: &str = "dl.direction = 'reverse' AND dl.table_name = $1 AND dl.resolved_at IS NULL \
     AND dl.batch IS DISTINCT FROM $2";

/// The statements of a group that only inserted new rows.
#[derive(Debug, Clone)]
pub struct DirectSql {
    pub conflicts: String,
    pub insert: String,
}

#[derive(Debug, Clone)]
pub struct ReverseSql {
    /// The desktop table, quoted.
    pub target: String,
    pub staged: String,
    pub net: String,
    pub plan_table: Option<String>,
    pub create: String,
    pub copy_in: String,
    /// New rows straight into the desktop table (see `commit::Dest::Direct`).
    pub copy_direct: String,
    /// Fills `N` from `S`.
    pub reduce: String,
    /// Cloud-key tables: pairs each changed cloud row with the desktop row it started from.
    pub plan: Option<String>,
    /// Conflicts ($1: table name).
    pub conflicts: String,
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

/// The expressions over one table's staged columns.
struct Columns<'a> {
    cols: &'a [MappedColumn],
}

impl Columns<'_> {
    /// Quoted user names.
    fn names(&self) -> Vec<String> {
        self.cols.iter().map(|c| q(&c.name)).collect()
    }

    /// Column `j`'s text in the old image of net row `n` (NULL when null or unknown).
    fn old(&self, j: usize) -> String {
        format!("n._first_old ->> {}", lit(&self.cols[j].name))
    }

    /// Whether the old image of `n` knows column `j`.
    fn known(&self, j: usize) -> String {
        format!("n._first_old ? {}", lit(&self.cols[j].name))
    }

    /// The old image of `n` as the desktop would hold it: a LATERAL subquery `o` with `c1..cN`.
    fn old_row(&self) -> String {
        let values: Vec<String> = (0..self.cols.len())
            .map(|j| {
                format!(
                    "{} AS {}",
                    self.cols[j].desktop_shaped(&self.old(j)),
                    col(j)
                )
            })
            .collect();
        format!("(SELECT {}) o", values.join(", "))
    }

    /// The desktop row `d` is what the phone started from: it equals the old image in every column
    /// the image knows.
    fn same_old(&self) -> String {
        let each: Vec<String> = (0..self.cols.len())
            .map(|j| {
                format!(
                    "(NOT ({}) OR {} IS NOT DISTINCT FROM {})",
                    self.known(j),
                    text(&format!("d.{}", q(&self.cols[j].name))),
                    text(&format!("o.{}", col(j)))
                )
            })
            .collect();
        format!("(n._first_old IS NOT NULL AND {})", each.join(" AND "))
    }

    /// The desktop row `d` already holds `n`'s new version (unchanged TOAST values aside).
    fn same_new(&self) -> String {
        let each: Vec<String> = (0..self.cols.len())
            .map(|j| {
                format!(
                    "(coalesce({} = ANY(n._unchanged), false) OR {} IS NOT DISTINCT FROM {})",
                    j + 1,
                    text(&format!("d.{}", q(&self.cols[j].name))),
                    text(&self.cols[j].desktop_shaped(&format!("n.{}", col(j))))
                )
            })
            .collect();
        format!("({})", each.join(" AND "))
    }

    /// The value for column `j` from `n`'s new version; where it is unchanged TOAST, `keep`.
    fn value_or(&self, j: usize, keep: &str) -> String {
        format!(
            "CASE WHEN {} = ANY(n._unchanged) THEN {keep} ELSE {} END",
            j + 1,
            self.cols[j].desktop_value(&format!("n.{}", col(j)))
        )
    }

    /// The values of staged row `s` for the desktop columns.
    fn values_of(&self, alias: &str) -> Vec<String> {
        (0..self.cols.len())
            .map(|j| self.cols[j].desktop_value(&format!("{alias}.{}", col(j))))
            .collect()
    }

    /// Staged row `alias` (or net row) as JSON of the user's column names.
    fn json(&self, alias: &str) -> String {
        let pairs: Vec<(String, String)> = self
            .cols
            .iter()
            .enumerate()
            .map(|(j, c)| (c.name.clone(), format!("{alias}.{}", col(j))))
            .collect();
        json_object(&pairs)
    }

    /// The desktop row `d` differs from staged row `alias` (as the desktop would hold it).
    fn differs(&self, alias: &str) -> String {
        let desktop: Vec<String> = self.names().iter().map(|n| format!("d.{n}")).collect();
        let staged: Vec<String> = (0..self.cols.len())
            .map(|j| self.cols[j].desktop_shaped(&format!("{alias}.{}", col(j))))
            .collect();
        format!(
            "{} IS DISTINCT FROM {}",
            row_text(&desktop),
            row_text(&staged)
        )
    }
}

impl ReverseSql {
    /// The names of this table's staging tables.
    pub fn staging_tables(&self) -> Vec<String> {
        [
            Some(&self.staged),
            Some(&self.net),
            self.plan_table.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    pub fn build(t: &TableMapping, i: usize) -> ReverseSql {
        let target = t.table.desktop.quoted();
        let staged = format!("pg_temp.tandem_r_{i}");
        let net = format!("pg_temp.tandem_rn_{i}");
        let c = Columns {
            cols: &t.reverse_columns,
        };
        let width = c.cols.len();
        let names = c.names().join(", ");
        let data = (0..width).map(col).collect::<Vec<_>>().join(", ");
        let mut create = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {staged} ({}) ON COMMIT PRESERVE ROWS;\n\
             CREATE TEMP TABLE IF NOT EXISTS {net} (_n bigint GENERATED ALWAYS AS IDENTITY, _op \"char\", \
             _unchanged int[], _first_old jsonb, _ck text{}) ON COMMIT PRESERVE ROWS;",
            layout::definitions(width),
            (0..width)
                .map(|j| format!(", {} text", col(j)))
                .collect::<String>()
        );
        let copy_in = format!("COPY {staged} ({}) FROM STDIN", layout::copy_columns(width));
        let copy_direct = format!("COPY {target} ({names}) FROM STDIN");
        let incoming = format!("CASE WHEN n._op = 'D' THEN NULL ELSE {} END", c.json("n"));
        let sets = (0..width)
            .map(|j| {
                let keep = format!("d.{}", q(&c.cols[j].name));
                format!("{} = {}", q(&c.cols[j].name), c.value_or(j, &keep))
            })
            .collect::<Vec<_>>()
            .join(", ");
        // A new row the desktop does not hold: an unchanged TOAST value comes from the old image.
        let insert_vals = (0..width)
            .map(|j| c.value_or(j, &c.cols[j].desktop_value(&c.old(j))))
            .collect::<Vec<_>>()
            .join(", ");
        let old_row = c.old_row();
        let table_name = lit(&t.table.desktop.to_string());
        let inherit = |key_json: &str| {
            format!(
                "UPDATE {net} n SET _first_old = CASE WHEN dl.old_image = 'null'::jsonb THEN NULL ELSE dl.old_image END \
                 FROM tandem.dead_letters dl WHERE dl.direction = 'reverse' AND dl.table_name = {table_name} \
                 AND dl.resolved_at IS NULL AND dl.old_image IS NOT NULL AND dl.row_key = {key_json}"
            )
        };
        let set_aside = |key_json: &str| {
            format!(
                "WITH parked AS (SELECT {key_json} AS k, {incoming} AS r, coalesce(n._first_old, 'null'::jsonb) AS o \
                                 FROM {net} n), \
                      kept AS (UPDATE tandem.dead_letters dl SET attempts = dl.attempts + 1, failed_at = now(), \
                                      row_image = p.r, old_image = coalesce(dl.old_image, p.o), \
                                      sqlstate = '{PARKED_SQLSTATE}', message = $3, batch = $2 \
                                 FROM parked p WHERE dl.direction = 'reverse' AND dl.table_name = $1 \
                                  AND dl.resolved_at IS NULL AND dl.row_key = p.k RETURNING dl.row_key) \
                 INSERT INTO tandem.dead_letters (direction, table_name, row_key, row_image, old_image, sqlstate, message, batch) \
                 SELECT 'reverse', $1, p.k, p.r, p.o, '{PARKED_SQLSTATE}', $3, $2 FROM parked p \
                 WHERE NOT EXISTS (SELECT 1 FROM kept WHERE kept.row_key = p.k)"
            )
        };
        let numbered = |what: &'static str, sql: String| Ranged {
            what,
            sql,
            numbered: Numbered::Rows,
        };
        // The net change per `key` (expressions over staged row `s`, named `_k0`, `_k1`, ... in `y`): the
        // last version, with the first old image. `columns` are `y`'s expressions for N's columns.
        let reduce = |key: &[String], columns: &[String]| {
            let named: Vec<String> = key
                .iter()
                .enumerate()
                .map(|(n, k)| format!("{k} AS _k{n}"))
                .collect();
            let ks = (0..key.len())
                .map(|n| format!("y._k{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let xs = ks.replace("y._k", "x._k");
            format!(
                "INSERT INTO {net} (_op, _unchanged, _first_old, _ck{comma}{data}) \
                 SELECT DISTINCT ON ({ks}) y._op, y._unchanged, y._first_old, y._ck{comma}{columns} \
                 FROM (SELECT x.*, first_value(x._old) OVER (PARTITION BY {xs} ORDER BY x._seq) AS _first_old \
                       FROM (SELECT s.*, {named} FROM {staged} s) x) y \
                 ORDER BY {ks}, y._seq DESC",
                comma = if width > 0 { ", " } else { "" },
                columns = columns.join(", "),
                named = named.join(", "),
            )
        };
        let plain_columns: Vec<String> = (0..width).map(|j| format!("y.{}", col(j))).collect();

        match &t.kind {
            Kind::Key(key) => {
                let at = |k: &MappedColumn| {
                    c.cols
                        .iter()
                        .position(|r| r.name == k.name)
                        .expect("key columns travel to the desktop")
                };
                // Staged keys are grouped by their text (the same key is the same text in the stream): a
                // deleted row's from its old image.
                let staged_key: Vec<String> = key
                    .iter()
                    .map(|k| {
                        format!(
                            "CASE WHEN s._op = 'D' THEN s._old ->> {} ELSE s.{} END",
                            lit(&k.name),
                            col(at(k))
                        )
                    })
                    .collect();
                let net_columns: Vec<String> = (0..width)
                    .map(|j| match key.iter().position(|k| at(k) == j) {
                        Some(n) => format!("y._k{n}"),
                        None => format!("y.{}", col(j)),
                    })
                    .collect();
                let is_key = |alias: &str| {
                    key.iter()
                        .map(|k| {
                            let j = at(k);
                            same_key(
                                &format!("d.{}", q(&k.name)),
                                &c.cols[j].desktop_value(&format!("{alias}.{}", col(j))),
                                &k.desktop,
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" AND ")
                };
                let key_json = |alias: &str| {
                    let pairs: Vec<(String, String)> = key
                        .iter()
                        .map(|k| {
                            let j = at(k);
                            let staged = format!("{alias}.{}", col(j));
                            // Staged keys are text already; integers are numbers in `row_key`.
                            let value = if is_integer(&k.desktop) {
                                key_json_value(&c.cols[j].desktop_value(&staged), &k.desktop)
                            } else {
                                staged
                            };
                            (k.name.clone(), value)
                        })
                        .collect();
                    json_object(&pairs)
                };
                let (same_old, same_new) = (c.same_old(), c.same_new());
                let conflicts = log_conflicts(&format!(
                    "SELECT 'reverse', $1::text, {kj}, {incoming}, to_jsonb(d.*), \
                       CASE WHEN n._op = 'D' THEN 'the phone deleted this row, but the desktop''s row differs from what the phone had; the desktop row was kept' \
                            WHEN n._first_old IS NULL THEN 'the phone created a row whose key the desktop already holds with other content (a key collision); neither side was changed' \
                            ELSE 'the phone changed this row, and the desktop changed it too; the desktop''s version was kept' END \
                     FROM {net} n JOIN {target} d ON {is_n} LEFT JOIN LATERAL {old_row} ON n._first_old IS NOT NULL \
                     WHERE (n._op = 'I' AND NOT {same_new} AND NOT {same_old}) OR (n._op = 'D' AND NOT {same_old})",
                    kj = key_json("n"),
                    is_n = is_key("n"),
                ));
                let delete = numbered(
                    "reverse delete",
                    format!(
                        "DELETE FROM {target} d USING {net} n LEFT JOIN LATERAL {old_row} ON n._first_old IS NOT NULL \
                         WHERE {is_n} AND n._op = 'D' AND {same_old} AND n._n BETWEEN $1 AND $2",
                        is_n = is_key("n"),
                    ),
                );
                let update = numbered(
                    "reverse update",
                    format!(
                        "UPDATE {target} d SET {sets} FROM {net} n LEFT JOIN LATERAL {old_row} ON n._first_old IS NOT NULL \
                         WHERE {is_n} AND n._op = 'I' AND {same_old} AND NOT {same_new} AND n._n BETWEEN $1 AND $2",
                        is_n = is_key("n"),
                    ),
                );
                // Probe the key's index row by row when there is one (see the direct path below).
                let absent = |alias: &str| {
                    if t.desktop_key_indexed {
                        format!(
                            "LEFT JOIN LATERAL (SELECT 1 AS found FROM {target} d WHERE {} LIMIT 1) x ON true WHERE x.found IS NULL",
                            is_key(alias)
                        )
                    } else {
                        format!(
                            "WHERE NOT EXISTS (SELECT 1 FROM {target} d WHERE {})",
                            is_key(alias)
                        )
                    }
                };
                let insert = numbered(
                    "reverse insert",
                    format!(
                        "INSERT INTO {target} ({names}) SELECT {insert_vals} FROM {net} n {} \
                         AND n._op = 'I' AND n._n BETWEEN $1 AND $2",
                        absent("n")
                    ),
                );
                // How new rows find desktop rows with the same key. Never a plan that reads the whole
                // desktop table per row: an empty, never-analyzed desktop table (a first sync) makes the
                // planner think it holds nothing. Two forms: probing the key's index row by row (a
                // LATERAL subquery stays a nested loop: cheap for a few rows into a big table), and a
                // hash join (nested loops turned off by the caller: for many rows, or without an index).
                let reason = "'the phone created a row whose key the desktop already holds with other content (a key collision); neither side was changed'";
                let conflicts_via = |matching: String| {
                    log_conflicts(&format!(
                        "SELECT 'reverse', $1::text, {}, {}, to_jsonb(d.*), {reason} \
                         FROM {staged} s {matching} WHERE {}",
                        key_json("s"),
                        c.json("s"),
                        c.differs("s")
                    ))
                };
                let values = c.values_of("s").join(", ");
                let insert_via = |absent: String| {
                    format!(
                        "INSERT INTO {target} ({names}) SELECT {values} FROM {staged} s {absent}"
                    )
                };
                let probe = DirectSql {
                    conflicts: conflicts_via(format!(
                        "CROSS JOIN LATERAL (SELECT * FROM {target} d WHERE {} OFFSET 0) d",
                        is_key("s")
                    )),
                    insert: insert_via(format!(
                        "LEFT JOIN LATERAL (SELECT 1 AS found FROM {target} d WHERE {} LIMIT 1) x ON true WHERE x.found IS NULL",
                        is_key("s")
                    )),
                };
                let hash = DirectSql {
                    conflicts: conflicts_via(format!("JOIN {target} d ON {}", is_key("s"))),
                    insert: insert_via(format!(
                        "WHERE NOT EXISTS (SELECT 1 FROM {target} d WHERE {})",
                        is_key("s")
                    )),
                };
                ReverseSql {
                    target: target.clone(),
                    direct_probe: t.desktop_key_indexed.then_some(probe),
                    direct_hash: hash,
                    no_key_index: !t.desktop_key_indexed,
                    analyze_net: format!("ANALYZE {net}"),
                    dead_letter_image: format!(
                        "SELECT {}, {}, coalesce(n._first_old, 'null'::jsonb) FROM {net} n WHERE n._n = $1",
                        key_json("n"),
                        c.json("n")
                    ),
                    inherit: inherit(&key_json("n")),
                    set_aside: set_aside(&key_json("n")),
                    resolve: format!(
                        "{RESOLVE} FROM {net} n WHERE {RESOLVE_OPEN} AND dl.row_key = {}",
                        key_json("n")
                    ),
                    reduce: reduce(&staged_key, &net_columns),
                    staged,
                    net,
                    plan_table: None,
                    create,
                    copy_in,
                    copy_direct,
                    plan: None,
                    conflicts,
                    delete,
                    update,
                    insert,
                }
            }
            Kind::Scoped { scope, .. } => {
                let plan = format!("pg_temp.tandem_rp_{i}");
                create.push_str(&format!(
                    "\nCREATE TEMP TABLE IF NOT EXISTS {plan} (_ck text, _tid tid) ON COMMIT PRESERVE ROWS;"
                ));
                let scope_at: Vec<(usize, &MappedColumn)> = scope
                    .iter()
                    .map(|s| {
                        let j = c
                            .cols
                            .iter()
                            .position(|r| r.name == s.name)
                            .expect("scope columns travel to the desktop");
                        (j, s)
                    })
                    .collect();
                let desktop_row: Vec<String> = c.names().iter().map(|n| format!("d.{n}")).collect();
                let old_image: Vec<String> = (0..width).map(|j| format!("o.{}", col(j))).collect();
                let in_scope = scope_at
                    .iter()
                    .map(|(j, s)| {
                        same_key(
                            &format!("d.{}", q(&s.name)),
                            &format!("o.{}", col(*j)),
                            &s.desktop,
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" AND ");
                let any_null = |alias: &str, named: bool| {
                    scope_at
                        .iter()
                        .map(|(j, s)| {
                            let column = if named { q(&s.name) } else { col(*j) };
                            format!("{alias}.{column} IS NULL")
                        })
                        .collect::<Vec<_>>()
                        .join(" OR ")
                };
                let plan_sql = format!(
                    "INSERT INTO {plan} (_ck, _tid) \
                     WITH o AS (SELECT n._ck, md5({ho}) AS h, {o_scope} FROM {net} n CROSS JOIN LATERAL {old_row} \
                                WHERE n._first_old IS NOT NULL), \
                          od AS (SELECT o._ck, o.h, row_number() OVER (PARTITION BY o.h ORDER BY o._ck) AS dup FROM o), \
                          c AS (SELECT d.ctid AS tid, md5({hd}) AS h FROM {target} d WHERE EXISTS (SELECT 1 FROM o WHERE {in_scope}) \
                                UNION ALL \
                                SELECT d.ctid, md5({hd}) FROM {target} d WHERE EXISTS (SELECT 1 FROM o WHERE {o_null}) AND ({d_null})), \
                          cd AS (SELECT c.tid, c.h, row_number() OVER (PARTITION BY c.h ORDER BY c.tid) AS dup FROM c) \
                     SELECT od._ck, cd.tid FROM od LEFT JOIN cd ON cd.h = od.h AND cd.dup = od.dup",
                    ho = row_text(&old_image),
                    hd = row_text(&desktop_row),
                    o_scope = scope_at
                        .iter()
                        .map(|(j, _)| format!("o.{}", col(*j)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    o_null = any_null("o", false),
                    d_null = any_null("d", true),
                );
                // A row the desktop refused before (an open dead letter) arrives again as a change of a
                // row the desktop does not hold: it is inserted, as the row it is now, not a conflict.
                let refused = format!(
                    "EXISTS (SELECT 1 FROM tandem.dead_letters dl WHERE dl.direction = 'reverse' AND dl.table_name = {} \
                     AND dl.resolved_at IS NULL AND dl.row_key = jsonb_build_object('cloud_key', n._ck))",
                    lit(&t.table.desktop.to_string())
                );
                // A phone's delete of a row whose version the desktop no longer holds (it changed or
                // deleted its copy) is one too: nothing is dropped without a record.
                let conflicts = log_conflicts(&format!(
                    "SELECT 'reverse', $1::text, jsonb_build_object('cloud_key', n._ck), \
                       CASE WHEN n._op = 'D' THEN NULL ELSE {incoming} END, n._first_old, \
                       CASE WHEN n._op = 'D' THEN 'the phone deleted a row whose version it had the desktop no longer holds (the desktop changed or deleted its copy); the desktop was left as it is' \
                            ELSE 'the phone changed a row the desktop no longer holds as it was; the desktop was left as it is' END \
                     FROM {net} n JOIN {plan} p ON p._ck = n._ck WHERE p._tid IS NULL AND NOT {refused} \
                     AND (n._op = 'I' OR (n._op = 'D' AND n._first_old IS NOT NULL))"
                ));
                let delete = numbered(
                    "reverse delete",
                    format!(
                        "DELETE FROM {target} d USING {plan} p JOIN {net} n ON n._ck = p._ck \
                         WHERE d.ctid = p._tid AND n._op = 'D' AND n._n BETWEEN $1 AND $2"
                    ),
                );
                let update = numbered(
                    "reverse update",
                    format!(
                        "UPDATE {target} d SET {sets} FROM {plan} p JOIN {net} n ON n._ck = p._ck \
                         WHERE d.ctid = p._tid AND n._op = 'I' AND n._n BETWEEN $1 AND $2"
                    ),
                );
                let insert = numbered(
                    "reverse insert",
                    format!(
                        "INSERT INTO {target} ({names}) SELECT {insert_vals} FROM {net} n \
                         WHERE n._op = 'I' AND (n._first_old IS NULL \
                           OR ({refused} AND NOT EXISTS (SELECT 1 FROM {plan} p WHERE p._ck = n._ck AND p._tid IS NOT NULL))) \
                         AND n._n BETWEEN $1 AND $2"
                    ),
                );
                ReverseSql {
                    target: target.clone(),
                    direct_probe: None,
                    no_key_index: !t.desktop_key_indexed,
                    direct_hash: DirectSql {
                        conflicts: String::new(),
                        insert: format!(
                            "INSERT INTO {target} ({names}) SELECT {} FROM {staged} s",
                            c.values_of("s").join(", ")
                        ),
                    },
                    analyze_net: format!("ANALYZE {net}"),
                    dead_letter_image: format!(
                        "SELECT jsonb_build_object('cloud_key', n._ck), {}, coalesce(n._first_old, 'null'::jsonb) \
                         FROM {net} n WHERE n._n = $1",
                        c.json("n")
                    ),
                    inherit: inherit("jsonb_build_object('cloud_key', n._ck)"),
                    set_aside: set_aside("jsonb_build_object('cloud_key', n._ck)"),
                    resolve: format!(
                        "{RESOLVE} FROM {net} n WHERE {RESOLVE_OPEN} AND dl.row_key = jsonb_build_object('cloud_key', n._ck)"
                    ),
                    reduce: reduce(&["s._ck".to_string()], &plain_columns),
                    staged,
                    net,
                    plan_table: Some(plan),
                    create,
                    copy_in,
                    copy_direct,
                    plan: Some(plan_sql),
                    conflicts,
                    delete,
                    update,
                    insert,
                }
            }
        }
    }
}
