//! The reverse statements every table has, whatever its kind: its staging tables `S` and `N` and
//! what fills them, the reduction to net changes, the dead letters of a row (kept, inherited,
//! resolved, imaged), and the pieces of an update and an insert from a net change.

use super::{PARKED_SQLSTATE, Table};
use crate::commit::forward::sql::{Numbered, Ranged};
use crate::commit::reverse::layout;
use crate::expr::{col, lit, q};

/// The start of a `resolve` statement, and the dead letters it may resolve.
const RESOLVE: &str = "UPDATE tandem.dead_letters dl SET resolved_at = now()";
const RESOLVE_OPEN: &str = "dl.direction = 'reverse' AND dl.table_name = $1 AND dl.resolved_at IS NULL \
     AND dl.batch IS DISTINCT FROM $2";

/// `CREATE TEMP TABLE` of `S` (the staging layout) and `N` (a net change: its operation, unchanged
/// TOAST columns, first old image, cloud key and columns, all text).
pub(super) fn create(table: &Table) -> String {
    let Table { staged, net, .. } = table;
    let width = table.c.cols.len();
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS {staged} ({}) ON COMMIT PRESERVE ROWS;\n\
         CREATE TEMP TABLE IF NOT EXISTS {net} (_n bigint GENERATED ALWAYS AS IDENTITY, _op \"char\", \
         _unchanged int[], _first_old jsonb, _ck text, _xid bigint, _at timestamptz, _lsn pg_lsn, _verdict text, _remade boolean{}) \
         ON COMMIT PRESERVE ROWS;",
        layout::definitions(width),
        (0..width)
            .map(|j| format!(", {} text", col(j)))
            .collect::<String>()
    )
}

/// `COPY` of the staged changes into `S`, as text.
pub(super) fn copy_in(table: &Table) -> String {
    format!(
        "COPY {} ({}) FROM STDIN",
        table.staged,
        layout::copy_columns(table.c.cols.len())
    )
}

/// `COPY` of new rows straight into the desktop table.
pub(super) fn copy_direct(table: &Table) -> String {
    format!(
        "COPY {} ({}) FROM STDIN",
        table.target,
        table.c.names().join(", ")
    )
}

/// Fills `N` from `S`: per `key` (expressions over staged row `s`, named `_k0`, `_k1`, ... in `y`)
/// the last version, with the first old image. A row a phone made and deleted within the group
/// (its first change an insert, no old image) keeps its delete's old image: the same net change as
/// when the two arrive in two groups (the insert taken for the desktop's equal row, if it holds one;
/// the delete then of that row), whatever the grouping; one a phone deleted and made again is
/// `_remade` (a new row where the desktop deleted it too, as in two groups). `columns` are `y`'s
/// expressions for N's columns.
pub(super) fn reduce(table: &Table, key: &[String], columns: &[String]) -> String {
    let Table { staged, net, .. } = table;
    let width = table.c.cols.len();
    let data = (0..width).map(col).collect::<Vec<_>>().join(", ");
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
        "INSERT INTO {net} (_op, _unchanged, _first_old, _ck, _xid, _at, _lsn, _remade{comma}{data}) \
         SELECT DISTINCT ON ({ks}) y._op, y._unchanged, \
                CASE WHEN y._first_old IS NULL AND y._op = 'D' THEN y._old ELSE y._first_old END, \
                y._ck, y._xid, y._at, y._lsn, y._first_op = 'D' AND y._op = 'I'{comma}{columns} \
         FROM (SELECT x.*, first_value(x._old) OVER w AS _first_old, first_value(x._op) OVER w AS _first_op \
               FROM (SELECT s.*, {named} FROM {staged} s) x \
               WINDOW w AS (PARTITION BY {xs} ORDER BY x._seq)) y \
         ORDER BY {ks}, y._seq DESC",
        comma = if width > 0 { ", " } else { "" },
        columns = columns.join(", "),
        named = named.join(", "),
    )
}

/// `y`'s columns for `N`'s, as staged.
pub(super) fn plain_columns(table: &Table) -> Vec<String> {
    (0..table.c.cols.len())
        .map(|j| format!("y.{}", col(j)))
        .collect()
}

/// After the reduction: the net change of a row with an open dead letter (`row_key`, over `n`)
/// takes that dead letter's old image as its own.
pub(super) fn inherit(table: &Table, row_key: &str) -> String {
    let table_name = lit(&table.t.table.desktop.to_string());
    format!(
        "UPDATE {} n SET _first_old = CASE WHEN dl.old_image = 'null'::jsonb THEN NULL ELSE dl.old_image END \
         FROM tandem.dead_letters dl WHERE dl.direction = 'reverse' AND dl.table_name = {table_name} \
         AND dl.resolved_at IS NULL AND dl.old_image IS NOT NULL AND dl.row_key = {row_key}",
        table.net
    )
}

/// Keeps a parked table's net changes as dead letters, one per `row_key`: a row's open dead letter
/// is updated (its old image kept), or one is added ($1: table name, $2: batch, $3: why).
pub(super) fn set_aside(table: &Table, row_key: &str) -> String {
    let incoming = incoming(table);
    format!(
        "WITH parked AS (SELECT {row_key} AS k, {incoming} AS r, coalesce(n._first_old, 'null'::jsonb) AS o \
                         FROM {} n), \
              kept AS (UPDATE tandem.dead_letters dl SET attempts = dl.attempts + 1, failed_at = now(), \
                              row_image = p.r, old_image = coalesce(dl.old_image, p.o), \
                              sqlstate = '{PARKED_SQLSTATE}', message = $3, batch = $2 \
                         FROM parked p WHERE dl.direction = 'reverse' AND dl.table_name = $1 \
                          AND dl.resolved_at IS NULL AND dl.row_key = p.k RETURNING dl.row_key) \
         INSERT INTO tandem.dead_letters (direction, table_name, row_key, row_image, old_image, sqlstate, message, batch) \
         SELECT 'reverse', $1, p.k, p.r, p.o, '{PARKED_SQLSTATE}', $3, $2 FROM parked p \
         WHERE NOT EXISTS (SELECT 1 FROM kept WHERE kept.row_key = p.k)",
        table.net
    )
}

/// Resolves the open reverse dead letters of the rows (`row_key`) `N` holds a later change of ($1:
/// table name, $2: the group's batch, whose own dead letters stay open).
pub(super) fn resolve(table: &Table, row_key: &str) -> String {
    format!(
        "{RESOLVE} FROM {} n WHERE {RESOLVE_OPEN} AND dl.row_key = {row_key}",
        table.net
    )
}

/// `(row_key, row_image, old_image)` of `N` row `$1`, for a dead letter.
pub(super) fn dead_letter_image(table: &Table, row_key: &str) -> String {
    format!(
        "SELECT {row_key}, {}, coalesce(n._first_old, 'null'::jsonb) FROM {} n WHERE n._n = $1",
        table.c.json("n"),
        table.net
    )
}

/// `ANALYZE` of `N`.
pub(super) fn analyze_net(table: &Table) -> String {
    format!("ANALYZE {}", table.net)
}

/// Net row `n` as JSON of the user's column names; NULL for a delete.
pub(super) fn incoming(table: &Table) -> String {
    format!(
        "CASE WHEN n._op = 'D' THEN NULL ELSE {} END",
        table.c.json("n")
    )
}

/// The SET list of an update of desktop row `d` to net row `n`'s version; a column `n` did not
/// change (unchanged TOAST) keeps its value.
pub(super) fn sets(table: &Table) -> String {
    let c = &table.c;
    (0..c.cols.len())
        .map(|j| {
            let keep = format!("d.{}", q(&c.cols[j].name));
            format!("{} = {}", q(&c.cols[j].name), c.value_or(j, &keep))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The values of a new desktop row from net row `n`: an unchanged TOAST value comes from the old
/// image.
pub(super) fn insert_values(table: &Table) -> String {
    let c = &table.c;
    (0..c.cols.len())
        .map(|j| c.value_or(j, &c.cols[j].desktop_value(&c.old(j))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A statement over a range of `N`'s rows.
pub(super) fn ranged(what: &'static str, sql: String) -> Ranged {
    Ranged {
        what,
        sql,
        numbered: Numbered::Rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::TableMapping;
    use crate::transform::testing::{odd_keyed, odd_names_quoted};

    fn built<T>(t: &TableMapping, statement: impl Fn(&Table) -> T) -> T {
        statement(&Table::new(t, 0))
    }

    /// The row key a desktop-key table's statements pass (of net row `n`).
    const ROW_KEY: &str = "jsonb_build_object('Task List', to_jsonb(CAST(n.c1 AS integer)))";

    #[test]
    fn staging_tables_hold_the_layout_and_the_columns_as_text() {
        let sql = built(&odd_keyed(), create);
        assert_eq!(
            sql,
            format!(
                "CREATE TEMP TABLE IF NOT EXISTS pg_temp.tandem_r_0 ({}) ON COMMIT PRESERVE ROWS;\n\
                 CREATE TEMP TABLE IF NOT EXISTS pg_temp.tandem_rn_0 (_n bigint GENERATED ALWAYS AS IDENTITY, \
                 _op \"char\", _unchanged int[], _first_old jsonb, _ck text, _xid bigint, _at timestamptz, _lsn pg_lsn, \
                 _verdict text, _remade boolean, c1 text, c2 text, c3 text, c4 text) ON COMMIT PRESERVE ROWS;",
                layout::definitions(4)
            )
        );
    }

    #[test]
    fn copies_are_text_into_s_by_position_and_into_the_desktop_by_name() {
        let t = odd_keyed();
        assert_eq!(
            built(&t, copy_in),
            format!(
                "COPY pg_temp.tandem_r_0 ({}) FROM STDIN",
                layout::copy_columns(4)
            )
        );
        assert_eq!(
            built(&t, copy_direct),
            "COPY \"public\".\"Task List\" (\"Task List\", \"na'me\", \"c\", \"_n\") FROM STDIN"
        );
    }

    #[test]
    fn the_reduction_keeps_the_last_version_and_the_first_old_image_per_key() {
        let key = ["s.c1".to_string(), "s._ck".to_string()];
        let sql = built(&odd_keyed(), |t| reduce(t, &key, &plain_columns(t)));
        assert_eq!(
            sql,
            "INSERT INTO pg_temp.tandem_rn_0 (_op, _unchanged, _first_old, _ck, _xid, _at, _lsn, _remade, c1, c2, c3, c4) \
             SELECT DISTINCT ON (y._k0, y._k1) y._op, y._unchanged, \
             CASE WHEN y._first_old IS NULL AND y._op = 'D' THEN y._old ELSE y._first_old END, y._ck, y._xid, y._at, y._lsn, \
             y._first_op = 'D' AND y._op = 'I', y.c1, y.c2, y.c3, y.c4 \
             FROM (SELECT x.*, first_value(x._old) OVER w AS _first_old, first_value(x._op) OVER w AS _first_op \
             FROM (SELECT s.*, s.c1 AS _k0, s._ck AS _k1 FROM pg_temp.tandem_r_0 s) x \
             WINDOW w AS (PARTITION BY x._k0, x._k1 ORDER BY x._seq)) y \
             ORDER BY y._k0, y._k1, y._seq DESC"
        );
        // A table of no travelling columns: no dangling comma.
        let mut bare = odd_keyed();
        bare.reverse_columns.clear();
        let sql = built(&bare, |t| reduce(t, &["s._ck".to_string()], &[]));
        assert!(
            sql.contains("y._first_op = 'D' AND y._op = 'I' FROM (SELECT x.*"),
            "{sql}"
        );
    }

    #[test]
    fn a_row_inherits_the_old_image_of_its_open_dead_letter_of_this_table() {
        assert_eq!(
            built(&odd_keyed(), |t| inherit(t, ROW_KEY)),
            format!(
                "UPDATE pg_temp.tandem_rn_0 n SET _first_old = CASE WHEN dl.old_image = 'null'::jsonb THEN NULL ELSE dl.old_image END \
                 FROM tandem.dead_letters dl WHERE dl.direction = 'reverse' AND dl.table_name = 'Task List' \
                 AND dl.resolved_at IS NULL AND dl.old_image IS NOT NULL AND dl.row_key = {ROW_KEY}"
            )
        );
    }

    #[test]
    fn a_parked_change_updates_its_rows_open_dead_letter_keeping_the_old_image_or_adds_one() {
        let sql = built(&odd_keyed(), |t| set_aside(t, ROW_KEY));
        assert!(
            sql.starts_with(&format!(
                "WITH parked AS (SELECT {ROW_KEY} AS k, CASE WHEN n._op = 'D' THEN NULL ELSE"
            )),
            "{sql}"
        );
        assert!(
            sql.contains("old_image = coalesce(dl.old_image, p.o), sqlstate = 'TPARK'"),
            "{sql}"
        );
        assert!(
            sql.contains("WHERE dl.direction = 'reverse' AND dl.table_name = $1 AND dl.resolved_at IS NULL AND dl.row_key = p.k RETURNING dl.row_key"),
            "{sql}"
        );
        assert!(
            sql.ends_with("SELECT 'reverse', $1, p.k, p.r, p.o, 'TPARK', $3, $2 FROM parked p WHERE NOT EXISTS (SELECT 1 FROM kept WHERE kept.row_key = p.k)"),
            "{sql}"
        );
        assert!(odd_names_quoted(&sql), "{sql}");
    }

    #[test]
    fn resolve_marks_only_open_reverse_dead_letters_of_other_batches() {
        assert_eq!(
            built(&odd_keyed(), |t| resolve(t, ROW_KEY)),
            format!(
                "UPDATE tandem.dead_letters dl SET resolved_at = now() FROM pg_temp.tandem_rn_0 n \
                 WHERE dl.direction = 'reverse' AND dl.table_name = $1 AND dl.resolved_at IS NULL \
                 AND dl.batch IS DISTINCT FROM $2 AND dl.row_key = {ROW_KEY}"
            )
        );
    }

    #[test]
    fn a_dead_letter_is_the_net_change_with_its_old_image() {
        assert_eq!(
            built(&odd_keyed(), |t| dead_letter_image(t, ROW_KEY)),
            format!(
                "SELECT {ROW_KEY}, jsonb_build_object('Task List', n.c1, 'na''me', n.c2, 'c', n.c3, '_n', n.c4), \
                 coalesce(n._first_old, 'null'::jsonb) FROM pg_temp.tandem_rn_0 n WHERE n._n = $1"
            )
        );
    }

    #[test]
    fn n_is_analyzed_by_name() {
        assert_eq!(
            built(&odd_keyed(), analyze_net),
            "ANALYZE pg_temp.tandem_rn_0"
        );
    }

    #[test]
    fn the_incoming_row_of_a_delete_is_null() {
        assert_eq!(
            built(&odd_keyed(), incoming),
            "CASE WHEN n._op = 'D' THEN NULL ELSE jsonb_build_object('Task List', n.c1, 'na''me', n.c2, 'c', n.c3, '_n', n.c4) END"
        );
    }

    #[test]
    fn an_unchanged_toast_value_keeps_the_desktops_in_an_update_and_the_old_images_in_an_insert() {
        let t = odd_keyed();
        let sets = built(&t, sets);
        assert!(
            sets.starts_with("\"Task List\" = CASE WHEN 1 = ANY(n._unchanged) THEN d.\"Task List\" ELSE CAST(n.c1 AS integer) END, "),
            "{sets}"
        );
        assert!(
            sets.contains("\"na'me\" = CASE WHEN 2 = ANY(n._unchanged) THEN d.\"na'me\" ELSE CAST(n.c2 AS json) END"),
            "{sets}"
        );
        let values = built(&t, insert_values);
        assert!(
            values.contains("CASE WHEN 2 = ANY(n._unchanged) THEN CAST(n._first_old ->> 'na''me' AS json) ELSE CAST(n.c2 AS json) END"),
            "{values}"
        );
        assert!(odd_names_quoted(&sets) && odd_names_quoted(&values));
    }

    #[test]
    fn ranged_statements_are_numbered_by_n() {
        let r = ranged("x", "SELECT 1".into());
        assert_eq!(
            (r.what, r.sql.as_str(), r.numbered),
            ("x", "SELECT 1", Numbered::Rows)
        );
    }
}
