//! The desktop statements of the reverse direction (mobile rows → desktop), built once per table.
//!
//! The stream stages every change as a row of `S` (`_seq` its order, `_op` I = the row's new version /
//! D = deleted, `_old` the row before the change as jsonb, `_unchanged` the TOASTed columns the change
//! did not carry, `_ck` the cloud key). `N` reduces them to one net change per key (desktop-key tables)
//! or per cloud row (cloud-key tables): the last version, and the *first* old image. The desktop's row
//! is then compared with that old image: equal means the desktop has what the phone started from, so
//! the phone's change applies; different means both sides changed the row (or a phone created a key
//! the desktop already holds), so nothing is changed and the incoming row goes to `tandem.conflicts`.

use crate::change::quote_ident;
use crate::transform::{Kind, MappedColumn, TableMapping};

use crate::commit::forward::sql::{Numbered, Ranged};
use crate::commit::log_conflicts;

/// The start of a `resolve` statement, and the dead letters it may resolve.
const RESOLVE: &str = "UPDATE tandem.dead_letters d SET resolved_at = now()";
const RESOLVE_OPEN: &str = "d.direction = 'reverse' AND d.table_name = $1 AND d.resolved_at IS NULL \
     AND d.batch IS DISTINCT FROM $2";

/// Column `c` of staging row `alias` cast to the desktop column's type, never failing: a cast to a
/// length-limited type truncates, one to a precision-limited time rounds, and a `numeric(p,s)` value
/// too big for it stays as it is (no desktop row can equal it anyway; the cast would fail the
/// statement, and with it every later change of the row).
fn as_desktop_type(c: &MappedColumn, alias: &str) -> String {
    let col = format!("{alias}.{}", q(&c.name));
    let cast = format!("CAST({col} AS {})", c.desktop_type);
    match numeric_typmod(&c.desktop_type) {
        Some((precision, scale)) => format!(
            "CASE WHEN abs(round({col}, {scale})) < 1e{} THEN {cast} ELSE {col} END",
            precision - scale
        ),
        None => cast,
    }
}

/// `(precision, scale)` of `numeric(p,s)` / `numeric(p)`.
fn numeric_typmod(type_name: &str) -> Option<(i32, i32)> {
    let inner = type_name.strip_prefix("numeric(")?.strip_suffix(')')?;
    let mut parts = inner.split(',').map(|p| p.trim().parse::<i32>());
    let precision = parts.next()?.ok()?;
    let scale = match parts.next() {
        Some(s) => s.ok()?,
        None => 0,
    };
    Some((precision, scale))
}

fn q(name: &str) -> String {
    quote_ident(name)
}

fn lit(name: &str) -> String {
    format!("'{}'", name.replace('\'', "''"))
}

fn join(parts: impl IntoIterator<Item = String>, sep: &str) -> String {
    parts.into_iter().collect::<Vec<_>>().join(sep)
}

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
    /// `(row_key, row_image)` of `N` row `$1`, for a dead letter.
    pub dead_letter_image: String,
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

/// The columns of `S` before the table's own: `_seq, _op, _unchanged, _old, _ck`.
pub const STAGED_PREFIX: [&str; 5] = ["_seq", "_op", "_unchanged", "_old", "_ck"];

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
        let cols = &t.reverse_columns;
        let names: Vec<String> = cols.iter().map(|c| q(&c.name)).collect();
        let defs = join(
            cols.iter()
                .map(|c| format!("{} {}", q(&c.name), c.desktop_base)),
            ", ",
        );
        let mut create = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {staged} (_seq bigint, _op \"char\", _unchanged text[], _old jsonb, _ck text, {defs}) ON COMMIT PRESERVE ROWS;\n\
             CREATE TEMP TABLE IF NOT EXISTS {net} (_n bigint GENERATED ALWAYS AS IDENTITY, _op \"char\", _unchanged text[], _first_old jsonb, _ck text, {defs}) ON COMMIT PRESERVE ROWS;"
        );
        let copy_in = format!(
            "COPY {staged} ({}, {}) FROM STDIN",
            STAGED_PREFIX.join(", "),
            names.join(", ")
        );
        let copy_direct = format!("COPY {target} ({}) FROM STDIN", names.join(", "));
        // An old image as the desktop would hold it: read as a staging row (base types, so a value
        // too long for the desktop's column does not fail the statement: a phone's row the desktop
        // refused for one, a dead letter, must not stop its delete or its next version from applying),
        // then cast to the desktop's column types, which truncates and rounds as the desktop would
        // have stored it (a `numeric(5,2)` 1.5 is 1.50, as the desktop row it is compared with).
        let as_desktop = join(
            cols.iter()
                .map(|c| format!("{} AS {}", as_desktop_type(c, "r"), q(&c.name))),
            ", ",
        );
        let old = |alias: &str| {
            format!(
                "(SELECT {as_desktop} FROM jsonb_populate_record(NULL::{staged}, {alias}._first_old) r)"
            )
        };
        // Unchanged TOAST: keep the desktop's value (update), or the old image's (insert).
        let value = |c: &MappedColumn, keep: &str| {
            format!(
                "CASE WHEN {} = ANY(n._unchanged) THEN {keep}.{col} ELSE n.{col} END",
                lit(&c.name),
                col = q(&c.name)
            )
        };
        let same_new = join(
            cols.iter().map(|c| {
                // coalesce: `x = ANY(NULL)` is NULL, not false.
                format!(
                    "(coalesce({} = ANY(n._unchanged), false) OR d.{col} IS NOT DISTINCT FROM n.{col})",
                    lit(&c.name),
                    col = q(&c.name)
                )
            }),
            " AND ",
        );
        let row_of = |alias: &str| join(names.iter().map(|n| format!("{alias}.{n}")), ", ");
        let same_old = format!(
            "(n._first_old IS NOT NULL AND ROW({}) IS NOT DISTINCT FROM ROW({}))",
            row_of("d"),
            row_of("o")
        );
        let incoming = "CASE WHEN n._op = 'D' THEN NULL ELSE to_jsonb(n) - '_n' - '_op' - '_unchanged' - '_first_old' - '_ck' END";
        let insert_cols = names.join(", ");
        let sets = join(
            cols.iter()
                .map(|c| format!("{} = {}", q(&c.name), value(c, "d"))),
            ", ",
        );
        let numbered = |what: &'static str, sql: String| Ranged {
            what,
            sql,
            numbered: Numbered::Rows,
        };

        match &t.kind {
            Kind::Key(key) => {
                let kx = |alias: &str| {
                    join(
                        key.iter().enumerate().map(|(j, k)| {
                            format!(
                                "CASE WHEN {alias}._op = 'D' THEN (jsonb_populate_record(NULL::{staged}, {alias}._old)).{col} ELSE {alias}.{col} END AS _k{j}",
                                col = q(&k.name)
                            )
                        }),
                        ", ",
                    )
                };
                let kn = join((0..key.len()).map(|j| format!("_k{j}")), ", ");
                let net_cols = join(
                    cols.iter()
                        .map(|c| match key.iter().position(|k| k.name == c.name) {
                            Some(j) => format!("_k{j}"),
                            None => q(&c.name),
                        }),
                    ", ",
                );
                let reduce = format!(
                    "INSERT INTO {net} (_op, _unchanged, _first_old, _ck, {insert_cols}) \
                     SELECT DISTINCT ON ({kn}) _op, _unchanged, _first_old, _ck, {net_cols} \
                     FROM (SELECT x.*, first_value(x._old) OVER (PARTITION BY {kn} ORDER BY x._seq) AS _first_old \
                           FROM (SELECT s.*, {} FROM {staged} s) x) y \
                     ORDER BY {kn}, _seq DESC",
                    kx("s")
                );
                let eq = join(
                    key.iter().map(|k| format!("d.{0} = n.{0}", q(&k.name))),
                    " AND ",
                );
                let key_json = format!(
                    "jsonb_build_object({})",
                    join(
                        key.iter()
                            .map(|k| format!("{}, n.{}", lit(&k.name), q(&k.name))),
                        ", "
                    )
                );
                let conflicts = log_conflicts(&format!(
                    "SELECT 'reverse', $1::text, {key_json}, {incoming}, to_jsonb(d), \
                       CASE WHEN n._op = 'D' THEN 'the phone deleted this row, but the desktop''s row differs from what the phone had; the desktop row was kept' \
                            WHEN n._first_old IS NULL THEN 'the phone created a row whose key the desktop already holds with other content (a key collision); neither side was changed' \
                            ELSE 'the phone changed this row, and the desktop changed it too; the desktop''s version was kept' END \
                     FROM {net} n JOIN {target} d ON {eq} LEFT JOIN LATERAL {} o ON n._first_old IS NOT NULL \
                     WHERE (n._op = 'I' AND NOT ({same_new}) AND NOT {same_old}) OR (n._op = 'D' AND NOT {same_old})",
                    old("n")
                ));
                let delete = numbered(
                    "reverse delete",
                    format!(
                        "DELETE FROM {target} d USING {net} n LEFT JOIN LATERAL {} o ON n._first_old IS NOT NULL \
                         WHERE {eq} AND n._op = 'D' AND {same_old} AND n._n BETWEEN $1 AND $2",
                        old("n")
                    ),
                );
                let update = numbered(
                    "reverse update",
                    format!(
                        "UPDATE {target} d SET {sets} FROM {net} n LEFT JOIN LATERAL {} o ON n._first_old IS NOT NULL \
                         WHERE {eq} AND n._op = 'I' AND {same_old} AND NOT ({same_new}) AND n._n BETWEEN $1 AND $2",
                        old("n")
                    ),
                );
                let insert_vals = join(cols.iter().map(|c| value(c, "o")), ", ");
                let insert = numbered(
                    "reverse insert",
                    format!(
                        "INSERT INTO {target} ({insert_cols}) SELECT {insert_vals} FROM {net} n LEFT JOIN LATERAL {} o ON n._unchanged IS NOT NULL \
                         {absent} AND n._op = 'I' AND n._n BETWEEN $1 AND $2",
                        old("n"),
                        // Probe the key's index row by row when there is one (see the direct path below).
                        absent = if t.desktop_key_indexed {
                            format!(
                                "LEFT JOIN LATERAL (SELECT 1 AS found FROM {target} d WHERE {eq} LIMIT 1) x ON true WHERE x.found IS NULL"
                            )
                        } else {
                            format!("WHERE NOT EXISTS (SELECT 1 FROM {target} d WHERE {eq})")
                        }
                    ),
                );
                let eq_s = join(
                    key.iter().map(|k| format!("d.{0} = s.{0}", q(&k.name))),
                    " AND ",
                );
                let key_json_s = format!(
                    "jsonb_build_object({})",
                    join(
                        key.iter()
                            .map(|k| format!("{}, s.{}", lit(&k.name), q(&k.name))),
                        ", "
                    )
                );
                // How new rows find desktop rows with the same key. Never a plan that reads the whole
                // desktop table per row: an empty, never-analyzed desktop table (a first sync) makes the
                // planner think it holds nothing. Two forms: probing the key's index row by row (a
                // LATERAL subquery stays a nested loop: cheap for a few rows into a big table), and a
                // hash join (nested loops turned off by the caller: for many rows, or without an index).
                let reason = "'the phone created a row whose key the desktop already holds with other content (a key collision); neither side was changed'";
                let incoming_s = "to_jsonb(s) - '_seq' - '_op' - '_unchanged' - '_old' - '_ck'";
                let conflicts_via = |matching: String| {
                    log_conflicts(&format!(
                        "SELECT 'reverse', $1::text, {key_json_s}, {incoming_s}, to_jsonb(d), {reason} \
                         FROM {staged} s {matching} WHERE ROW({}) IS DISTINCT FROM ROW({})",
                        row_of("d"),
                        row_of("s")
                    ))
                };
                let insert_via = |absent: String| {
                    format!(
                        "INSERT INTO {target} ({insert_cols}) SELECT {} FROM {staged} s {absent}",
                        row_of("s")
                    )
                };
                let probe = DirectSql {
                    conflicts: conflicts_via(format!(
                        "CROSS JOIN LATERAL (SELECT * FROM {target} d WHERE {eq_s} OFFSET 0) d"
                    )),
                    insert: insert_via(format!(
                        "LEFT JOIN LATERAL (SELECT 1 AS found FROM {target} d WHERE {eq_s} LIMIT 1) x ON true WHERE x.found IS NULL"
                    )),
                };
                let hash = DirectSql {
                    conflicts: conflicts_via(format!("JOIN {target} d ON {eq_s}")),
                    insert: insert_via(format!(
                        "WHERE NOT EXISTS (SELECT 1 FROM {target} d WHERE {eq_s})"
                    )),
                };
                ReverseSql {
                    target: target.clone(),
                    direct_probe: t.desktop_key_indexed.then_some(probe),
                    direct_hash: hash,
                    no_key_index: !t.desktop_key_indexed,
                    analyze_net: format!("ANALYZE {net}"),
                    dead_letter_image: format!(
                        "SELECT {key_json}, to_jsonb(n) - '_n' - '_op' - '_unchanged' - '_first_old' - '_ck' FROM {net} n WHERE n._n = $1"
                    ),
                    resolve: format!(
                        "{RESOLVE} FROM {net} n WHERE {RESOLVE_OPEN} AND d.row_key = {key_json}"
                    ),
                    staged,
                    net,
                    plan_table: None,
                    create,
                    copy_in,
                    copy_direct,
                    reduce,
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
                    "\nCREATE TEMP TABLE IF NOT EXISTS {plan} (ck text, tid tid) ON COMMIT PRESERVE ROWS;"
                ));
                let reduce = format!(
                    "INSERT INTO {net} (_op, _unchanged, _first_old, _ck, {insert_cols}) \
                     SELECT DISTINCT ON (_ck) _op, _unchanged, _first_old, _ck, {insert_cols} \
                     FROM (SELECT s.*, first_value(s._old) OVER (PARTITION BY s._ck ORDER BY s._seq) AS _first_old FROM {staged} s) x \
                     ORDER BY _ck, _seq DESC"
                );
                let scope_names: Vec<String> = scope.iter().map(|c| q(&c.name)).collect();
                let hash = |alias: &str| format!("md5(ROW({})::text)", row_of(alias));
                let o_scope = join(scope_names.iter().map(|s| format!("o.{s}")), ", ");
                let d_scope = join(scope_names.iter().map(|s| format!("d.{s}")), ", ");
                let any_null = |alias: &str| {
                    join(
                        scope_names.iter().map(|s| format!("{alias}.{s} IS NULL")),
                        " OR ",
                    )
                };
                let plan_sql = format!(
                    "INSERT INTO {plan} (ck, tid) \
                     WITH o AS (SELECT n._ck, {ho} AS h, {o_scope} FROM {net} n CROSS JOIN LATERAL {old_n} o WHERE n._first_old IS NOT NULL), \
                          od AS (SELECT _ck, h, row_number() OVER (PARTITION BY h ORDER BY _ck) AS dup FROM o), \
                          c AS (SELECT d.ctid AS tid, {hd} AS h FROM {target} d WHERE ({d_scope}) IN (SELECT {scope_list} FROM o) \
                                UNION ALL \
                                SELECT d.ctid, {hd} FROM {target} d WHERE EXISTS (SELECT 1 FROM o WHERE {o_null}) AND ({d_null})), \
                          cd AS (SELECT tid, h, row_number() OVER (PARTITION BY h ORDER BY tid) AS dup FROM c) \
                     SELECT od._ck, cd.tid FROM od LEFT JOIN cd ON cd.h = od.h AND cd.dup = od.dup",
                    ho = hash("o"),
                    hd = hash("d"),
                    old_n = old("n"),
                    scope_list = scope_names.join(", "),
                    o_null = any_null("o"),
                    d_null = any_null("d"),
                );
                // A row the desktop refused before (an open dead letter) arrives again as a change of a
                // row the desktop does not hold: it is inserted, as the row it is now, not a conflict.
                let refused = format!(
                    "EXISTS (SELECT 1 FROM tandem.dead_letters dl WHERE dl.direction = 'reverse' AND dl.table_name = {} \
                     AND dl.resolved_at IS NULL AND dl.row_key = jsonb_build_object('cloud_key', n._ck))",
                    lit(&t.table.desktop.to_string())
                );
                let conflicts = log_conflicts(&format!(
                    "SELECT 'reverse', $1::text, jsonb_build_object('cloud_key', n._ck), {incoming}, n._first_old, \
                       'the phone changed a row the desktop no longer holds as it was; the desktop was left as it is' \
                     FROM {net} n JOIN {plan} p ON p.ck = n._ck WHERE n._op = 'I' AND p.tid IS NULL AND NOT {refused}"
                ));
                let delete = numbered(
                    "reverse delete",
                    format!(
                        "DELETE FROM {target} d USING {plan} p JOIN {net} n ON n._ck = p.ck \
                         WHERE d.ctid = p.tid AND n._op = 'D' AND n._n BETWEEN $1 AND $2"
                    ),
                );
                let update = numbered(
                    "reverse update",
                    format!(
                        "UPDATE {target} d SET {sets} FROM {plan} p JOIN {net} n ON n._ck = p.ck \
                         WHERE d.ctid = p.tid AND n._op = 'I' AND n._n BETWEEN $1 AND $2"
                    ),
                );
                let insert_vals = join(cols.iter().map(|c| value(c, "o")), ", ");
                let insert = numbered(
                    "reverse insert",
                    format!(
                        "INSERT INTO {target} ({insert_cols}) SELECT {insert_vals} FROM {net} n LEFT JOIN LATERAL {} o ON n._unchanged IS NOT NULL \
                         WHERE n._op = 'I' AND (n._first_old IS NULL \
                           OR ({refused} AND NOT EXISTS (SELECT 1 FROM {plan} p WHERE p.ck = n._ck AND p.tid IS NOT NULL))) \
                         AND n._n BETWEEN $1 AND $2",
                        old("n")
                    ),
                );
                ReverseSql {
                    target: target.clone(),
                    direct_probe: None,
                    no_key_index: !t.desktop_key_indexed,
                    direct_hash: DirectSql {
                        conflicts: String::new(),
                        insert: format!(
                            "INSERT INTO {target} ({insert_cols}) SELECT {} FROM {staged} s",
                            row_of("s")
                        ),
                    },
                    analyze_net: format!("ANALYZE {net}"),
                    dead_letter_image: format!(
                        "SELECT jsonb_build_object('cloud_key', n._ck), to_jsonb(n) - '_n' - '_op' - '_unchanged' - '_first_old' - '_ck' FROM {net} n WHERE n._n = $1"
                    ),
                    resolve: format!(
                        "{RESOLVE} FROM {net} n WHERE {RESOLVE_OPEN} AND d.row_key = jsonb_build_object('cloud_key', n._ck)"
                    ),
                    staged,
                    net,
                    plan_table: Some(plan),
                    create,
                    copy_in,
                    copy_direct,
                    reduce,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn column(desktop_type: &str) -> MappedColumn {
        MappedColumn {
            name: "v".into(),
            desktop_base: "numeric".into(),
            desktop_type: desktop_type.into(),
            cloud_type: "numeric".into(),
            wire_type: "numeric".into(),
            explicit_cast: false,
        }
    }

    #[test]
    fn numeric_typmods_are_read_from_the_type_name() {
        assert_eq!(numeric_typmod("numeric(5,2)"), Some((5, 2)));
        assert_eq!(numeric_typmod("numeric(7)"), Some((7, 0)));
        assert_eq!(numeric_typmod("numeric(2,-3)"), Some((2, -3)));
        assert_eq!(numeric_typmod("numeric"), None);
        assert_eq!(numeric_typmod("numeric(5,2)[]"), None);
        assert_eq!(numeric_typmod("character varying(5)"), None);
    }

    #[test]
    fn a_cast_to_a_numeric_typmod_keeps_values_it_cannot_hold() {
        assert_eq!(
            as_desktop_type(&column("numeric(3,2)"), "r"),
            "CASE WHEN abs(round(r.\"v\", 2)) < 1e1 THEN CAST(r.\"v\" AS numeric(3,2)) ELSE r.\"v\" END"
        );
        assert_eq!(
            as_desktop_type(&column("character varying(2)"), "r"),
            "CAST(r.\"v\" AS character varying(2))"
        );
    }
}
