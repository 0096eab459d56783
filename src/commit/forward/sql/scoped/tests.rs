use super::super::common;
use super::*;
use crate::transform::testing::{int, json, odd_keyed, odd_names_quoted, odd_scoped, scoped};
use crate::transform::{LookupColumn, TableMapping};

/// `f` of the cloud-key table `t`, the 3rd of its mapping.
fn built<T>(t: &TableMapping, f: impl Fn(&Scoped) -> T) -> T {
    let table = Table::new(t, 3);
    f(&Scoped::of(&table, 3).expect("a cloud-key table"))
}

/// [`odd_scoped`] with a lookup column `"looked up"` after its own.
fn with_lookup() -> TableMapping {
    let mut t = odd_scoped();
    t.lookups.push(LookupColumn {
        column: int("looked up"),
        from: 0,
        on: "Task List".into(),
    });
    t
}

#[test]
fn only_cloud_key_tables_have_a_plan_numbered_like_their_staging() {
    let keyed = odd_keyed();
    assert!(Scoped::of(&Table::new(&keyed, 3), 3).is_none());
    assert_eq!(
        built(&odd_scoped(), |s| s.plan.clone()),
        "pg_temp.tandem_p_3"
    );
    assert_eq!(
        built(&odd_scoped(), create_plan),
        "CREATE TEMP TABLE IF NOT EXISTS pg_temp.tandem_p_3 (_n bigint GENERATED ALWAYS AS IDENTITY, \
         _ck bigint, _row bigint, _source text, _mine boolean, _scope text, _pair boolean) ON COMMIT PRESERVE ROWS;"
    );
}

#[test]
fn the_plan_matches_own_columns_copy_by_copy_mobile_copies_first() {
    let t = with_lookup();
    let sql = built(&t, |s| plan(s, false));
    assert!(
        sql.starts_with("INSERT INTO pg_temp.tandem_p_3 (_ck, _row, _source, _mine, _scope) "),
        "{sql}"
    );
    // The table's own columns, not the lookup (c5): the hash of what the desktop holds; and the
    // scope, as text, for pairing.
    assert!(
        sql.contains("WITH d AS (SELECT s._n, md5(ROW(s.c1, s.c2, s.c3, s.c4)::text) AS h, ROW(s.c1)::text AS sc FROM pg_temp.tandem_s_3 s)"),
        "{sql}"
    );
    let may = owner::desktop_may_change("c", &owner::horizon(3));
    assert!(
        sql.contains(&format!("c AS (SELECT c.\"k\" AS _ck, c.\"source\"::text AS _source, {may} AS _mine, md5(ROW(c.\"Task List\", c.\"na'me\", c.\"c\", c.\"_n\")::text) AS h, ROW(c.\"Task List\")::text AS sc FROM \"public\".\"Task List\" c WHERE EXISTS (SELECT 1 FROM pg_temp.tandem_k_3 k WHERE c.\"Task List\" OPERATOR(pg_catalog.=) k.c1))")),
        "{sql}"
    );
    assert!(
        sql.contains("PARTITION BY c.h ORDER BY (c._source = 'M') DESC NULLS LAST, c._ck) AS dup"),
        "{sql}"
    );
    assert!(
        sql.contains("FROM dn FULL JOIN cn ON dn.h = cn.h AND dn.dup = cn.dup"),
        "{sql}"
    );
    // Nothing of the scopes in the cloud: every staged row is new, unhashed.
    assert!(
        sql.ends_with("UNION ALL SELECT NULL, s._n, NULL, true, NULL FROM pg_temp.tandem_s_3 s WHERE NOT EXISTS (SELECT 1 FROM c)"),
        "{sql}"
    );
    assert!(odd_names_quoted(&sql), "{sql}");
}

#[test]
fn the_plan_for_null_scopes_differs_only_in_matching_null() {
    let t = odd_scoped();
    let (plain, or_null) = (built(&t, |s| plan(s, false)), built(&t, |s| plan(s, true)));
    let matching = "c.\"Task List\" OPERATOR(pg_catalog.=) k.c1";
    assert_eq!(
        or_null,
        plain.replace(
            matching,
            &format!("({matching} OR (c.\"Task List\" IS NULL AND k.c1 IS NULL))")
        )
    );
}

#[test]
fn a_scoped_delete_removes_unmatched_rows_the_desktop_may_change_in_a_range_of_p() {
    let w = built(&odd_scoped(), delete);
    assert_eq!(
        (w.ranged.what, w.ranged.numbered),
        ("scoped delete", Numbered::Plan)
    );
    let may = owner::desktop_may_change("c", &owner::horizon(3));
    assert_eq!(
        w.ranged.sql,
        format!(
            "DELETE FROM \"public\".\"Task List\" c USING pg_temp.tandem_p_3 p \
             WHERE c.\"k\" OPERATOR(pg_catalog.=) p._ck AND p._row IS NULL \
             AND p._mine AND {may} AND p._n BETWEEN $1 AND $2"
        )
    );
}

#[test]
fn a_scopes_hold_takes_scopes_with_an_unreceived_phone_row_or_journal_entry() {
    let both = built(&odd_scoped(), hold);
    let may = owner::desktop_may_change("c", &owner::horizon(3));
    assert_eq!(
        both.probing.matches(" OFFSET 0)").count(),
        1,
        "{}",
        both.probing
    );
    assert_eq!(both.probing.replace(" OFFSET 0)", ")"), both.joined);
    let sql = both.joined;
    assert!(
        sql.contains(&format!(
            "WHERE EXISTS (SELECT 1 FROM \"public\".\"Task List\" c WHERE (c.\"Task List\" OPERATOR(pg_catalog.=) k.c1 \
             OR (c.\"Task List\" IS NULL AND k.c1 IS NULL)) AND NOT {may}) \
             UNION ALL SELECT k.ctid AS t FROM pg_temp.tandem_k_3 k WHERE (EXISTS (SELECT 1 FROM tandem.journal j"
        )),
        "{sql}"
    );
    // A scope without a value is held whole too.
    assert!(
        sql.contains("USING held k WHERE (s.c1 OPERATOR(pg_catalog.=) k.c1 OR (s.c1 IS NULL AND k.c1 IS NULL))"),
        "{sql}"
    );
}

#[test]
fn a_scopes_rows_are_locked_against_phones_changes_null_parts_included() {
    // Locking a phone's row says so: the batch then marks itself as tandem's in the stream.
    let sql = built(&odd_scoped(), |s| common::lock(s.table, true));
    assert_eq!(
        sql.joined,
        "SELECT count(*), CASE WHEN bool_or(locked.phone) THEN pg_catalog.set_config('tandem.phone_rows', 'on', true) END \
         FROM (SELECT c.\"source\" = 'M' AS phone FROM \"public\".\"Task List\" c WHERE EXISTS (SELECT 1 FROM pg_temp.tandem_k_3 k \
         WHERE (c.\"Task List\" OPERATOR(pg_catalog.=) k.c1 OR (c.\"Task List\" IS NULL AND k.c1 IS NULL))) \
         FOR NO KEY UPDATE OF c) locked"
    );
    // A small batch's: key by key, through the index (a locking subquery is never flattened).
    assert_eq!(
        sql.probing,
        "SELECT count(*), CASE WHEN bool_or(locked.phone) THEN pg_catalog.set_config('tandem.phone_rows', 'on', true) END \
         FROM (SELECT c.phone FROM pg_temp.tandem_k_3 k CROSS JOIN LATERAL (SELECT c.\"source\" = 'M' AS phone \
         FROM \"public\".\"Task List\" c WHERE (c.\"Task List\" OPERATOR(pg_catalog.=) k.c1 OR (c.\"Task List\" IS NULL AND k.c1 IS NULL)) \
         FOR NO KEY UPDATE OF c) c) locked"
    );
}

#[test]
fn the_rows_open_conflicts_keep_leave_the_match_unless_a_staged_row_matched_them() {
    let sql = built(&odd_scoped(), keep);
    assert_eq!(
        sql,
        "DELETE FROM pg_temp.tandem_p_3 p WHERE p._row IS NULL AND p._ck IS NOT NULL \
         AND (CASE WHEN pg_catalog.num_nulls(p._ck) = 1 THEN NULL ELSE pg_catalog.concat(p._ck) END) \
         IN (SELECT pg_catalog.jsonb_array_elements_text($1::text::pg_catalog.jsonb))"
    );
}

#[test]
fn a_late_hold_takes_the_scopes_the_match_found_a_row_of_the_desktop_may_not_change_in() {
    let t = odd_scoped();
    let table = Table::new(&t, 3);
    let s = Scoped::of(&table, 3).expect("a cloud-key table");
    let (late, matched) = (late_hold(&s), plan(&s, false));
    let k = &table.st.key[0].0;
    // A scope is named by the same text in `K` as the match gives it from a staged row.
    let (in_k, in_s) = (
        row_text(&[k.cloud_shaped("k.c1")]),
        row_text(&[k.cloud_shaped("s.c1")]),
    );
    assert!(matched.contains(&format!("{in_s} AS sc FROM")), "{matched}");
    assert!(
        late.starts_with(
            "WITH late AS (SELECT DISTINCT p._scope FROM pg_temp.tandem_p_3 p WHERE NOT p._mine), \
             unplanned AS (DELETE FROM pg_temp.tandem_p_3 p USING late l WHERE p._scope = l._scope RETURNING 1), \
             held AS (DELETE FROM pg_temp.tandem_k_3 k WHERE "
        ),
        "{late}"
    );
    assert!(
        late.contains(&format!(
            "WHERE {in_k} IN (SELECT l._scope FROM late l) RETURNING k.*"
        )),
        "{late}"
    );
    assert!(
        late.contains("USING held k WHERE (s.c1 OPERATOR(pg_catalog.=) k.c1 OR (s.c1 IS NULL AND k.c1 IS NULL))"),
        "{late}"
    );
    assert!(
        late.ends_with("SELECT ARRAY[(k.c1)::text]::text[] FROM held k"),
        "{late}"
    );
}

#[test]
fn rows_left_over_pair_within_their_scope_in_the_order_of_their_content() {
    let sql = built(&odd_scoped(), pair);
    assert!(
        sql.contains("row_number() OVER (PARTITION BY p._scope ORDER BY ROW(c.\"Task List\", c.\"na'me\", c.\"c\", c.\"_n\")::text, p._ck) AS r"),
        "{sql}"
    );
    assert!(sql.contains("WHERE p._row IS NULL AND p._mine"), "{sql}");
    assert!(
        sql.contains("row_number() OVER (PARTITION BY p._scope ORDER BY ROW(s.c1, s.c2, s.c3, s.c4)::text, p._row) AS r"),
        "{sql}"
    );
    assert!(
        sql.contains("UPDATE pg_temp.tandem_p_3 p SET _row = d._row, _pair = true FROM c JOIN d ON d._scope = c._scope AND d.r = c.r"),
        "{sql}"
    );
    assert!(
        sql.ends_with("DELETE FROM pg_temp.tandem_p_3 p USING paired x WHERE p._n = x.moved"),
        "{sql}"
    );
}

#[test]
fn a_pair_is_written_in_place_and_becomes_the_desktops() {
    let w = built(&with_lookup(), update_pairs);
    assert_eq!(
        (w.ranged.what, w.ranged.numbered),
        ("scoped update", Numbered::Rows)
    );
    let may = owner::desktop_may_change("c", &owner::horizon(3));
    assert_eq!(
        w.ranged.sql,
        format!(
            "UPDATE \"public\".\"Task List\" c SET \"Task List\" = s.c1, \"na'me\" = s.c2, \"c\" = s.c3, \"_n\" = s.c4, \
             \"looked up\" = s.c5, \"source\" = 'D', \"updated_at\" = now() \
             FROM pg_temp.tandem_p_3 p JOIN pg_temp.tandem_s_3 s ON s._n = p._row \
             WHERE p._pair AND c.\"k\" OPERATOR(pg_catalog.=) p._ck AND {may} AND s._n BETWEEN $1 AND $2"
        )
    );
}

#[test]
fn a_scoped_insert_writes_unmatched_staged_rows_in_a_range_of_s() {
    let t = odd_scoped();
    let w = built(&t, |s| insert(s, &common::insert(s.table)));
    assert_eq!(
        (w.ranged.what, w.ranged.numbered),
        ("scoped insert", Numbered::Rows)
    );
    assert_eq!(
        w.ranged.sql,
        "INSERT INTO \"public\".\"Task List\" (\"Task List\", \"na'me\", \"c\", \"_n\", \"source\", \"created_at\", \"updated_at\") \
         SELECT s.c1, s.c2, s.c3, s.c4, 'D', now(), now() FROM pg_temp.tandem_s_3 s JOIN pg_temp.tandem_p_3 p ON p._row = s._n \
         WHERE p._ck IS NULL AND s._n BETWEEN $1 AND $2"
    );
}

#[test]
fn a_lookup_update_sets_only_lookups_of_matched_rows_the_desktop_may_change_that_differ() {
    assert!(built(&odd_scoped(), lookup_update).is_none());
    let w = built(&with_lookup(), lookup_update).expect("a lookup");
    assert_eq!(
        (w.ranged.what, w.ranged.numbered),
        ("lookup update", Numbered::Rows)
    );
    assert_eq!(
        w.ranged.sql,
        "UPDATE \"public\".\"Task List\" c SET \"looked up\" = s.c5, \"updated_at\" = now() \
         FROM pg_temp.tandem_p_3 p JOIN pg_temp.tandem_s_3 s ON s._n = p._row \
         WHERE p._ck IS NOT NULL AND p._pair IS NOT TRUE AND c.\"k\" OPERATOR(pg_catalog.=) p._ck AND p._mine \
         AND ROW(c.\"looked up\")::text IS DISTINCT FROM ROW(s.c5)::text AND s._n BETWEEN $1 AND $2"
    );
}

#[test]
fn k_has_a_null_scope_when_any_part_is_null() {
    let mut t = scoped("t", json("a"), vec![json("a"), json("b")]);
    if let Kind::Scoped { scope, .. } = &mut t.kind {
        scope.push(json("b"));
    }
    assert_eq!(
        keys_have_null(&Table::new(&t, 1)),
        "SELECT EXISTS (SELECT 1 FROM pg_temp.tandem_k_1 k WHERE k.c1 IS NULL OR k.c2 IS NULL)"
    );
}

#[test]
fn the_plan_is_analyzed_by_name() {
    assert_eq!(
        built(&odd_scoped(), analyze_plan),
        "ANALYZE pg_temp.tandem_p_3"
    );
}

#[test]
fn a_dead_letter_of_p_is_the_cloud_row_keyed_by_its_scope() {
    let sql = built(&odd_scoped(), image_of_plan);
    assert_eq!(
        sql,
        "SELECT jsonb_build_object('Task List', to_jsonb(CAST(c.\"Task List\" AS integer))), to_jsonb(c.*), NULL::jsonb \
         FROM pg_temp.tandem_p_3 p JOIN \"public\".\"Task List\" c ON c.\"k\" OPERATOR(pg_catalog.=) p._ck WHERE p._n = $1"
    );
}
