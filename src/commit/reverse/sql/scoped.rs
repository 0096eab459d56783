//! The reverse statements of a cloud-key table: the desktop rows have no key, so each changed cloud
//! row is paired (`P`) with a desktop row of the same content as its old image, copy by copy; a
//! change applies to its paired row, and a change whose row the desktop no longer holds as it was is
//! logged as a conflict.

use super::common::{incoming, insert_values, plain_columns, ranged, sets};
use super::{DirectSql, Table};
use crate::commit::forward::sql::Ranged;
use crate::commit::log_conflicts;
use crate::expr::{col, lit, q, row_text, same_key};
use crate::transform::MappedColumn;

/// How a dead letter or a conflict names the row of net change `n`: by its cloud key.
pub(super) const ROW_KEY: &str = "jsonb_build_object('cloud_key', n._ck)";

/// A cloud-key table and its plan `P`: each row `(_ck, _tid)` pairs the cloud row `_ck` of a net
/// change with the desktop row (`ctid`) holding its old image, or with none.
pub(super) struct Scoped<'a> {
    pub table: &'a Table<'a>,
    /// `P`.
    pub plan: String,
    /// The scope columns, with where each is among the columns that travel.
    scope: Vec<(usize, &'a MappedColumn)>,
}

impl<'a> Scoped<'a> {
    /// `table`, the `i`-th of the mapping, scoped by `scope`.
    pub fn new(table: &'a Table<'a>, scope: &'a [MappedColumn], i: usize) -> Self {
        let scope = scope
            .iter()
            .map(|s| {
                let j = table
                    .c
                    .cols
                    .iter()
                    .position(|r| r.name == s.name)
                    .expect("scope columns travel to the desktop");
                (j, s)
            })
            .collect();
        Scoped {
            table,
            plan: format!("pg_temp.tandem_rp_{i}"),
            scope,
        }
    }

    /// `alias.x IS NULL OR ...` for each scope column: by its name (`named`, a desktop row) or its
    /// position (a row of the old images).
    fn any_null(&self, alias: &str, named: bool) -> String {
        self.scope
            .iter()
            .map(|(j, s)| {
                let column = if named { q(&s.name) } else { col(*j) };
                format!("{alias}.{column} IS NULL")
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    }
}

/// `CREATE TEMP TABLE` of `P`.
pub(super) fn create_plan(s: &Scoped) -> String {
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS {} (_ck text, _tid tid) ON COMMIT PRESERVE ROWS;",
        s.plan
    )
}

/// Fills `N`: one net change per cloud row.
pub(super) fn reduce(table: &Table) -> String {
    super::common::reduce(table, &["s._ck".to_string()], &plain_columns(table))
}

/// Fills `P`: the old image of each net change that has one, paired with a desktop row of its scope
/// (or, when a scope part is NULL, of a scope with a NULL part) and the same content, copy by copy.
pub(super) fn plan(s: &Scoped) -> String {
    let Table { c, target, net, .. } = s.table;
    let plan = &s.plan;
    let width = c.cols.len();
    let desktop_row: Vec<String> = c.names().iter().map(|n| format!("d.{n}")).collect();
    let old_image: Vec<String> = (0..width).map(|j| format!("o.{}", col(j))).collect();
    let in_scope = s
        .scope
        .iter()
        .map(|(j, sc)| {
            same_key(
                &format!("d.{}", q(&sc.name)),
                &format!("o.{}", col(*j)),
                &sc.desktop,
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
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
        old_row = c.old_row(),
        o_scope = s
            .scope
            .iter()
            .map(|(j, _)| format!("o.{}", col(*j)))
            .collect::<Vec<_>>()
            .join(", "),
        o_null = s.any_null("o", false),
        d_null = s.any_null("d", true),
    )
}

/// Net change `n` is of a row the desktop refused before (an open dead letter): it arrives again as
/// a change of a row the desktop does not hold, and is inserted, as the row it is now, not a conflict.
fn refused(table: &Table) -> String {
    format!(
        "EXISTS (SELECT 1 FROM tandem.dead_letters dl WHERE dl.direction = 'reverse' AND dl.table_name = {} \
         AND dl.resolved_at IS NULL AND dl.row_key = {ROW_KEY})",
        lit(&table.t.table.desktop.to_string())
    )
}

/// Logs the net changes of rows the desktop no longer holds as the phone had them ($1: table name):
/// a change, or a phone's delete of a row whose version the desktop changed or deleted (nothing is
/// dropped without a record).
pub(super) fn conflicts(s: &Scoped) -> String {
    let (net, plan) = (&s.table.net, &s.plan);
    log_conflicts(&format!(
        "SELECT 'reverse', $1::text, {ROW_KEY}, \
           CASE WHEN n._op = 'D' THEN NULL ELSE {incoming} END, n._first_old, \
           CASE WHEN n._op = 'D' THEN 'the phone deleted a row whose version it had the desktop no longer holds (the desktop changed or deleted its copy); the desktop was left as it is' \
                ELSE 'the phone changed a row the desktop no longer holds as it was; the desktop was left as it is' END \
         FROM {net} n JOIN {plan} p ON p._ck = n._ck WHERE p._tid IS NULL AND NOT {refused} \
         AND (n._op = 'I' OR (n._op = 'D' AND n._first_old IS NOT NULL))",
        incoming = incoming(s.table),
        refused = refused(s.table),
    ))
}

/// Deletes the desktop rows paired with net deletes (range of `N`).
pub(super) fn delete(s: &Scoped) -> Ranged {
    let Table { target, net, .. } = s.table;
    let plan = &s.plan;
    ranged(
        "reverse delete",
        format!(
            "DELETE FROM {target} d USING {plan} p JOIN {net} n ON n._ck = p._ck \
             WHERE d.ctid = p._tid AND n._op = 'D' AND n._n BETWEEN $1 AND $2"
        ),
    )
}

/// Updates the desktop rows paired with net changes to their new versions (range of `N`).
pub(super) fn update(s: &Scoped) -> Ranged {
    let Table { target, net, .. } = s.table;
    let plan = &s.plan;
    ranged(
        "reverse update",
        format!(
            "UPDATE {target} d SET {sets} FROM {plan} p JOIN {net} n ON n._ck = p._ck \
             WHERE d.ctid = p._tid AND n._op = 'I' AND n._n BETWEEN $1 AND $2",
            sets = sets(s.table),
        ),
    )
}

/// Inserts the new rows, and the rows the desktop refused before and holds no copy of (range of `N`).
pub(super) fn insert(s: &Scoped) -> Ranged {
    let Table { c, target, net, .. } = s.table;
    let plan = &s.plan;
    ranged(
        "reverse insert",
        format!(
            "INSERT INTO {target} ({names}) SELECT {values} FROM {net} n \
             WHERE n._op = 'I' AND (n._first_old IS NULL \
               OR ({refused} AND NOT EXISTS (SELECT 1 FROM {plan} p WHERE p._ck = n._ck AND p._tid IS NOT NULL))) \
             AND n._n BETWEEN $1 AND $2",
            names = c.names().join(", "),
            values = insert_values(s.table),
            refused = refused(s.table),
        ),
    )
}

/// The direct path: new rows have no desktop row to collide with, so every row of `S` is inserted
/// and none is a conflict.
pub(super) fn direct_hash(table: &Table) -> DirectSql {
    let Table {
        c, target, staged, ..
    } = table;
    DirectSql {
        collisions: String::new(),
        insert: format!(
            "INSERT INTO {target} ({}) SELECT {} FROM {staged} s",
            c.names().join(", "),
            c.values_of("s").join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::testing::{odd_names_quoted, odd_scoped};
    use crate::transform::{Kind, TableMapping};

    /// `f` of the cloud-key table `t`, the 2nd of its mapping.
    fn built<T>(t: &TableMapping, f: impl Fn(&Scoped) -> T) -> T {
        let table = Table::new(t, 2);
        let Kind::Scoped { scope, .. } = &t.kind else {
            panic!("a cloud-key table")
        };
        f(&Scoped::new(&table, scope, 2))
    }

    /// Net change `n` is of a row the desktop refused before.
    const REFUSED: &str = "EXISTS (SELECT 1 FROM tandem.dead_letters dl WHERE dl.direction = 'reverse' \
        AND dl.table_name = 'Task List' AND dl.resolved_at IS NULL AND dl.row_key = jsonb_build_object('cloud_key', n._ck))";

    #[test]
    #[should_panic(expected = "scope columns travel to the desktop")]
    fn a_scope_column_must_travel_to_the_desktop() {
        let mut t = odd_scoped();
        t.reverse_columns.remove(0);
        built(&t, |_| ());
    }

    #[test]
    fn the_plan_is_numbered_like_the_staging_and_holds_cloud_keys_and_row_ids() {
        assert_eq!(
            built(&odd_scoped(), create_plan),
            "CREATE TEMP TABLE IF NOT EXISTS pg_temp.tandem_rp_2 (_ck text, _tid tid) ON COMMIT PRESERVE ROWS;"
        );
    }

    #[test]
    fn the_reduction_is_per_cloud_row() {
        let sql = built(&odd_scoped(), |s| reduce(s.table));
        assert!(
            sql.contains("SELECT DISTINCT ON (y._k0) y._op, y._unchanged, y._first_old, y._ck, y._xid, y._at, y._lsn, y.c1, y.c2, y.c3, y.c4 "),
            "{sql}"
        );
        assert!(
            sql.contains("FROM (SELECT s.*, s._ck AS _k0 FROM pg_temp.tandem_r_2 s) x"),
            "{sql}"
        );
    }

    #[test]
    fn the_plan_pairs_old_images_with_desktop_rows_of_their_scope_by_content() {
        let sql = built(&odd_scoped(), plan);
        assert!(sql.starts_with("INSERT INTO pg_temp.tandem_rp_2 (_ck, _tid) WITH o AS (SELECT n._ck, md5(ROW(o.c1, o.c2, o.c3, o.c4)::text) AS h, o.c1 FROM pg_temp.tandem_rn_2 n CROSS JOIN LATERAL"), "{sql}");
        let desktop_hash = "md5(ROW(d.\"Task List\", d.\"na'me\", d.\"c\", d.\"_n\")::text)";
        assert!(
            sql.contains(&format!("c AS (SELECT d.ctid AS tid, {desktop_hash} AS h FROM \"public\".\"Task List\" d WHERE EXISTS (SELECT 1 FROM o WHERE d.\"Task List\" OPERATOR(pg_catalog.=) o.c1)")),
            "{sql}"
        );
        // A scope with a NULL part finds the desktop rows of scopes with a NULL part.
        assert!(
            sql.contains(&format!("SELECT d.ctid, {desktop_hash} FROM \"public\".\"Task List\" d WHERE EXISTS (SELECT 1 FROM o WHERE o.c1 IS NULL) AND (d.\"Task List\" IS NULL))")),
            "{sql}"
        );
        // Copy by copy: the n-th copy of a content with the n-th desktop row of it.
        assert!(
            sql.ends_with(
                "SELECT od._ck, cd.tid FROM od LEFT JOIN cd ON cd.h = od.h AND cd.dup = od.dup"
            ),
            "{sql}"
        );
        assert!(odd_names_quoted(&sql), "{sql}");
    }

    #[test]
    fn conflicts_are_changes_of_unpaired_rows_the_desktop_did_not_refuse() {
        let sql = built(&odd_scoped(), conflicts);
        assert!(
            sql.contains("SELECT 'reverse', $1::text, jsonb_build_object('cloud_key', n._ck), "),
            "{sql}"
        );
        assert!(
            sql.contains(&format!(
                "FROM pg_temp.tandem_rn_2 n JOIN pg_temp.tandem_rp_2 p ON p._ck = n._ck WHERE p._tid IS NULL AND NOT {REFUSED} \
                 AND (n._op = 'I' OR (n._op = 'D' AND n._first_old IS NOT NULL))"
            )),
            "{sql}"
        );
    }

    #[test]
    fn a_delete_removes_the_paired_desktop_row() {
        let r = built(&odd_scoped(), delete);
        assert_eq!(r.what, "reverse delete");
        assert_eq!(
            r.sql,
            "DELETE FROM \"public\".\"Task List\" d USING pg_temp.tandem_rp_2 p JOIN pg_temp.tandem_rn_2 n ON n._ck = p._ck \
             WHERE d.ctid = p._tid AND n._op = 'D' AND n._n BETWEEN $1 AND $2"
        );
    }

    #[test]
    fn an_update_changes_the_paired_desktop_row() {
        let r = built(&odd_scoped(), update);
        assert_eq!(r.what, "reverse update");
        assert!(r.sql.starts_with("UPDATE \"public\".\"Task List\" d SET \"Task List\" = CASE WHEN 1 = ANY(n._unchanged) THEN d.\"Task List\""), "{}", r.sql);
        assert!(
            r.sql.ends_with("FROM pg_temp.tandem_rp_2 p JOIN pg_temp.tandem_rn_2 n ON n._ck = p._ck WHERE d.ctid = p._tid AND n._op = 'I' AND n._n BETWEEN $1 AND $2"),
            "{}",
            r.sql
        );
        assert!(odd_names_quoted(&r.sql), "{}", r.sql);
    }

    #[test]
    fn an_insert_writes_new_rows_and_refused_rows_the_desktop_holds_no_copy_of() {
        let r = built(&odd_scoped(), insert);
        assert_eq!(r.what, "reverse insert");
        assert!(
            r.sql.ends_with(&format!(
                "FROM pg_temp.tandem_rn_2 n WHERE n._op = 'I' AND (n._first_old IS NULL \
                 OR ({REFUSED} AND NOT EXISTS (SELECT 1 FROM pg_temp.tandem_rp_2 p WHERE p._ck = n._ck AND p._tid IS NOT NULL))) \
                 AND n._n BETWEEN $1 AND $2"
            )),
            "{}",
            r.sql
        );
    }

    #[test]
    fn the_direct_path_inserts_every_new_row_and_logs_nothing() {
        let t = odd_scoped();
        let sql = built(&t, |s| direct_hash(s.table));
        assert_eq!(sql.collisions, "");
        assert_eq!(
            sql.insert,
            "INSERT INTO \"public\".\"Task List\" (\"Task List\", \"na'me\", \"c\", \"_n\") \
             SELECT CAST(s.c1 AS integer), CAST(s.c2 AS json), CAST(s.c3 AS json), CAST(s.c4 AS json) FROM pg_temp.tandem_r_2 s"
        );
    }
}
