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
        "CREATE TEMP TABLE IF NOT EXISTS pg_temp.tandem_rp_2 (_ck text, _tid tid, _contested boolean) ON COMMIT PRESERVE ROWS;"
    );
}

#[test]
fn the_reduction_is_per_cloud_row() {
    let sql = built(&odd_scoped(), |s| reduce(s.table));
    assert!(
        sql.contains(
            "SELECT DISTINCT ON (y._k0) y._op, y._unchanged, \
            CASE WHEN y._first_old IS NULL AND y._op = 'D' THEN y._old ELSE y._first_old END, \
            y._ck, y._xid, y._at, y._lsn, y._first_op = 'D' AND y._op = 'I', y.c1, y.c2, y.c3, y.c4 "
        ),
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
fn a_contest_pairs_a_lost_change_with_the_lone_desktop_row_most_like_its_old_image() {
    let sql = built(&odd_scoped(), contest);
    // The changes whose old image no desktop row holds, that the desktop did not refuse before.
    assert!(
        sql.contains(&format!(
            "WHERE p._tid IS NULL AND n._first_old IS NOT NULL AND NOT {REFUSED})"
        )),
        "{sql}"
    );
    // The cloud's rows of those scopes come as images in $1; desktop rows matching one are not
    // lone, copy by copy.
    assert!(
        sql.contains("FROM jsonb_array_elements($1::text::jsonb) x(img)"),
        "{sql}"
    );
    assert!(
        sql.contains("WHERE qn.sc IS NOT DISTINCT FROM dn.sc AND qn.h = dn.h AND qn.dup = dn.dup"),
        "{sql}"
    );
    // The most columns equal to the old image first, then by position.
    assert!(
        sql.contains("CASE WHEN (d.\"Task List\")::text IS NOT DISTINCT FROM (lost.c1)::text THEN 1 ELSE 0 END"),
        "{sql}"
    );
    assert!(sql.contains("DESC, l.tid LIMIT 1) best"), "{sql}");
    // A desktop row another change holds the old image of is not a candidate.
    assert!(
        sql.contains("AND NOT EXISTS (SELECT 1 FROM pg_temp.tandem_rp_2 o WHERE o._tid = dn.tid)"),
        "{sql}"
    );
    assert!(
        sql.contains("UPDATE pg_temp.tandem_rp_2 p SET _tid = best.tid, _contested = true"),
        "{sql}"
    );
    assert!(odd_names_quoted(&sql), "{sql}");
}

#[test]
fn the_contested_scopes_are_read_from_the_cloud_as_images() {
    let t = odd_scoped();
    let scopes = built(&t, contested_scopes);
    assert!(
        scopes.starts_with("SELECT DISTINCT ARRAY[n._first_old ->> 'Task List']::text[] FROM "),
        "{scopes}"
    );
    let rows = built(&t, cloud_scope_rows);
    assert!(
        rows.contains("FROM \"public\".\"Task List\" c WHERE EXISTS"),
        "{rows}"
    );
    assert!(
        rows.contains("ARRAY[(CASE WHEN pg_catalog.num_nulls(c.\"Task List\") = 1 THEN NULL ELSE pg_catalog.concat(c.\"Task List\") END)]::text[] IS NOT DISTINCT FROM"),
        "{rows}"
    );
}

#[test]
fn a_contested_change_is_an_update_against_an_update_or_a_delete() {
    let t = odd_scoped();
    let table = Table::new(&t, 2);
    let key = match &t.kind {
        crate::transform::Kind::Scoped { scope, .. } => scope.clone(),
        _ => unreachable!(),
    };
    let s = Scoped::new(&table, &key, 2);
    let site = site(&s);
    assert_eq!(
        site.from,
        "JOIN pg_temp.tandem_rp_2 p ON p._ck = n._ck LEFT JOIN \"public\".\"Task List\" d ON d.ctid = p._tid"
    );
    assert!(
        site.kind
            .contains("WHEN n._op = 'I' AND p._contested THEN 'update/update'"),
        "{}",
        site.kind
    );
    assert!(site.kind.contains("THEN 'delete/update'"), "{}", site.kind);
    assert!(
        site.kind
            .contains("WHEN n._op = 'D' AND p._contested THEN 'update/delete'"),
        "{}",
        site.kind
    );
    assert_eq!(site.row_key, ROW_KEY);
    assert_eq!(
        site.outbox_key,
        "ARRAY[(CAST(coalesce(n.c1, n._first_old ->> 'Task List') AS integer))::text]::text[]"
    );
}

#[test]
fn a_delete_removes_the_paired_desktop_row() {
    let r = built(&odd_scoped(), delete);
    assert_eq!(r.what, "reverse delete");
    assert_eq!(
        r.sql,
        "DELETE FROM \"public\".\"Task List\" d USING pg_temp.tandem_rp_2 p JOIN pg_temp.tandem_rn_2 n ON n._ck = p._ck \
         WHERE d.ctid = p._tid AND n._op = 'D' AND (p._contested IS NOT TRUE OR n._verdict = 'settled') \
         AND n._n BETWEEN $1 AND $2"
    );
}

#[test]
fn an_update_changes_the_paired_desktop_row() {
    let r = built(&odd_scoped(), update);
    assert_eq!(r.what, "reverse update");
    assert!(r.sql.starts_with("UPDATE \"public\".\"Task List\" d SET \"Task List\" = CASE WHEN 1 = ANY(n._unchanged) THEN d.\"Task List\""), "{}", r.sql);
    assert!(
        r.sql.ends_with("FROM pg_temp.tandem_rp_2 p JOIN pg_temp.tandem_rn_2 n ON n._ck = p._ck WHERE d.ctid = p._tid AND n._op = 'I' \
                         AND (p._contested IS NOT TRUE OR n._verdict = 'settled') AND n._n BETWEEN $1 AND $2"),
        "{}",
        r.sql
    );
    assert!(odd_names_quoted(&r.sql), "{}", r.sql);
}

#[test]
fn an_insert_writes_new_refused_settled_and_never_had_rows_the_desktop_lacks() {
    let r = built(&odd_scoped(), insert);
    assert_eq!(r.what, "reverse insert");
    let deleted = "EXISTS (SELECT 1 FROM tandem.outbox ob WHERE ob.table_schema = 'public' AND ob.table_name = 'Task List' \
                   AND (ob.op = 'T' OR (ob.op = 'D' AND ob.row_key = ARRAY[";
    assert!(
        r.sql.contains(&format!(
            "FROM pg_temp.tandem_rn_2 n WHERE n._op = 'I' AND (n._first_old IS NULL \
             OR (({REFUSED} OR n._verdict = 'settled' OR NOT {deleted}"
        )),
        "{}",
        r.sql
    );
    assert!(
        r.sql.ends_with(
            "AND NOT EXISTS (SELECT 1 FROM pg_temp.tandem_rp_2 p WHERE p._ck = n._ck AND p._tid IS NOT NULL))) \
             AND n._n BETWEEN $1 AND $2"
        ),
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
