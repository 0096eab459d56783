//! The forward statements of a desktop-key table: the desktop key is the cloud row's key, so a
//! staged row is upserted by it and a staged key without a row deletes it. Only rows the desktop may
//! change are changed: its own, and phones' it has received (an edit made after receiving the phone's
//! version is an ordinary edit). A key whose phone change the desktop has not received is held back
//! ([`hold`]) until it has; for a table whose phone rows never travel back, a change such a row would
//! take is logged as a conflict instead ([`conflicts`]).

use super::common::{self, Insert, touch};
use super::{Numbered, Table, Write};
use crate::commit::log_conflicts;
use crate::config::owner;
use crate::expr::{group_by, list, q, row_text};

/// Blocked upserts (a mobile-owned row the desktop's differs from) and blocked deletes (a
/// mobile-owned row the desktop deleted), logged in one statement ($1: table name).
pub(super) fn conflicts(table: &Table) -> String {
    let Table {
        st,
        target,
        rows,
        keys,
        ..
    } = table;
    log_conflicts(&format!(
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
    ))
}

/// The hold of a desktop-key table (see `ForwardSql::hold`): keys whose cloud row is a phone's the
/// desktop has not received, and keys the cloud lacks that a phone's unreceived delete (or key change)
/// left.
pub(super) fn hold(table: &Table) -> common::BySize {
    let Table { st, target, .. } = table;
    let c_is_k = st.c_is_k(false);
    // The journal first: it is looked for once a statement, and with no unreceived entry (as almost
    // always) the second lookup of each key is skipped. `probe` keeps a lookup a subquery of each key
    // (an `OFFSET` is never made a join): see `common::BySize`.
    common::BySize::from(|probe| {
        let held = [
            format!(
                "EXISTS (SELECT 1 FROM {target} c WHERE {c_is_k} AND NOT {may}{probe})",
                may = table.may_change("c"),
            ),
            format!(
                "{journal} AND NOT EXISTS (SELECT 1 FROM {target} c WHERE {c_is_k}{probe})",
                journal = common::unreceived_journal(table),
            ),
        ];
        common::hold(table, &held, &st.s_is_k())
    })
}

/// Deletes the cloud rows of the keys of `K` that `S` has no row of, where the desktop may (range of
/// `K`).
pub(super) fn delete(table: &Table) -> Write {
    let Table {
        st,
        target,
        rows,
        keys,
        ..
    } = table;
    let (c_is_k, s_is_k) = (st.c_is_k(false), st.s_is_k());
    let desktop_owned = table.may_change("c");
    Write::new("delete", Numbered::Keys, |checks| {
        format!(
            "DELETE FROM {target} c USING {keys} k WHERE {c_is_k} AND {desktop_owned} \
             AND NOT EXISTS (SELECT 1 FROM {rows} s WHERE {s_is_k}) AND k._n BETWEEN $1 AND $2{checks}"
        )
    })
}

/// Inserts the rows of `S`, or updates the cloud row of their key where the desktop may and it
/// differs (range of `S`). An update makes the row desktop-owned: the desktop wrote it last.
pub(super) fn upsert(table: &Table, insert: &Insert) -> Write {
    let Table {
        t,
        st,
        target,
        rows,
        ..
    } = table;
    let names = st.names();
    // Every staged column is set, keys included: a key the desktop now writes differently
    // (`1.0` → `1.00`) is the same key to the unique index, and its new text is a change.
    let sets = list(names.iter().map(|n| format!("{n} = EXCLUDED.{n}")));
    let current: Vec<String> = names.iter().map(|n| format!("c.{n}")).collect();
    let excluded: Vec<String> = names.iter().map(|n| format!("EXCLUDED.{n}")).collect();
    let Insert {
        columns: cols,
        values: vals,
    } = insert;
    let arbiter = list(st.key.iter().map(|(k, _)| q(&k.name)));
    let (current, excluded) = (row_text(&current), row_text(&excluded));
    let set_desktop = owner::set_desktop();
    let touch = touch(t);
    let desktop_owned = table.may_change("c");
    Write::new("upsert", Numbered::Rows, |checks| {
        format!(
            "INSERT INTO {target} AS c ({cols}) SELECT {vals} FROM {rows} s \
             WHERE s._n BETWEEN $1 AND $2{checks} \
             ON CONFLICT ({arbiter}) DO UPDATE SET {sets}, {set_desktop}{touch} \
             WHERE {desktop_owned} AND {current} IS DISTINCT FROM {excluded}"
        )
    })
}

/// The `S` row numbers of each key the desktop holds more than once (as the cloud would hold it).
pub(super) fn duplicate_rows(table: &Table) -> String {
    let st = &table.st;
    let group: Vec<String> = st
        .key
        .iter()
        .map(|(k, at)| group_by(&st.value("s", *at), &k.cloud))
        .collect();
    format!(
        "SELECT array_agg(s._n ORDER BY s._n), count(*) FROM {} s GROUP BY {} HAVING count(*) > 1",
        table.rows,
        group.join(", ")
    )
}

/// Drops `S` rows `$1` (an array of row numbers) and their keys from `K`.
pub(super) fn drop_duplicates(table: &Table) -> Vec<String> {
    let Table { st, rows, keys, .. } = table;
    vec![
        format!(
            "DELETE FROM {keys} k USING {rows} s WHERE s._n = ANY($1) AND {}",
            st.s_is_k()
        ),
        format!("DELETE FROM {rows} s WHERE s._n = ANY($1)"),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::common;
    use super::*;
    use crate::transform::testing::{json, odd_keyed, odd_names_quoted, table};
    use crate::transform::{Kind, TableMapping};

    fn built<T>(t: &TableMapping, statement: impl Fn(&Table) -> T) -> T {
        statement(&Table::new(t, 0))
    }

    #[test]
    fn conflicts_are_logged_for_mobile_rows_only_a_change_would_touch() {
        let sql = built(&odd_keyed(), conflicts);
        assert!(sql.starts_with("INSERT INTO tandem.conflicts "), "{sql}");
        let (upserts, deletes) = sql.split_once(" UNION ALL ").unwrap();
        // A blocked upsert: a mobile row whose content differs from the desktop's.
        assert!(
            upserts.contains("WHERE c.\"source\" = 'M' AND ROW(c.\"Task List\", c.\"na'me\", c.\"c\", c.\"_n\")::text IS DISTINCT FROM ROW(s.c1, s.c2, s.c3, s.c4)::text"),
            "{upserts}"
        );
        // A blocked delete: a mobile row whose key the desktop deleted (in K, not in S).
        assert!(
            deletes.contains("FROM pg_temp.tandem_k_0 k JOIN \"public\".\"Task List\" c ON c.\"Task List\" OPERATOR(pg_catalog.=) k.c1 WHERE c.\"source\" = 'M' AND NOT EXISTS (SELECT 1 FROM pg_temp.tandem_s_0 s WHERE s.c1 OPERATOR(pg_catalog.=) k.c1)"),
            "{deletes}"
        );
        assert!(odd_names_quoted(&sql), "{sql}");
    }

    #[test]
    fn a_delete_removes_desktop_owned_rows_of_deleted_keys_in_a_range_of_k() {
        let w = built(&odd_keyed(), delete);
        assert_eq!(
            (w.ranged.what, w.ranged.numbered),
            ("delete", Numbered::Keys)
        );
        let may = owner::desktop_may_change("c", &owner::horizon(0));
        assert_eq!(
            w.ranged.sql,
            format!(
                "DELETE FROM \"public\".\"Task List\" c USING pg_temp.tandem_k_0 k \
                 WHERE c.\"Task List\" OPERATOR(pg_catalog.=) k.c1 AND {may} \
                 AND NOT EXISTS (SELECT 1 FROM pg_temp.tandem_s_0 s WHERE s.c1 OPERATOR(pg_catalog.=) k.c1) \
                 AND k._n BETWEEN $1 AND $2"
            )
        );
        // A table whose phone rows never travel back: only desktop-owned rows.
        let mut one_way = odd_keyed();
        one_way.reverse = false;
        let w = built(&one_way, delete);
        assert!(
            w.ranged
                .sql
                .contains("AND (c.\"source\" = 'D' OR c.\"source\" IS NULL) AND NOT EXISTS"),
            "{}",
            w.ranged.sql
        );
    }

    #[test]
    fn a_hold_takes_keys_whose_cloud_row_or_journal_holds_an_unreceived_phone_change() {
        let both = built(&odd_keyed(), hold);
        let may = owner::desktop_may_change("c", &owner::horizon(0));
        // A small batch looks each key up (an OFFSET keeps the lookup a subquery), a big one joins.
        assert_eq!(
            both.probing.matches(" OFFSET 0)").count(),
            2,
            "{}",
            both.probing
        );
        assert_eq!(both.probing.replace(" OFFSET 0)", ")"), both.joined);
        let sql = both.joined;
        assert!(
            sql.contains(&format!(
                "WHERE EXISTS (SELECT 1 FROM \"public\".\"Task List\" c WHERE c.\"Task List\" OPERATOR(pg_catalog.=) k.c1 AND NOT {may}) \
                 UNION ALL SELECT k.ctid AS t FROM pg_temp.tandem_k_0 k WHERE (EXISTS (SELECT 1 FROM tandem.journal j"
            )),
            "{sql}"
        );
        assert!(
            sql.contains(
                "AND NOT EXISTS (SELECT 1 FROM \"public\".\"Task List\" c WHERE c.\"Task List\" OPERATOR(pg_catalog.=) k.c1)), \
                 held AS (DELETE FROM pg_temp.tandem_k_0 k WHERE k.ctid IN (SELECT hk.t FROM hk) RETURNING k.*)"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("DELETE FROM pg_temp.tandem_s_0 s USING held k WHERE s.c1 OPERATOR(pg_catalog.=) k.c1"),
            "{sql}"
        );
        assert!(odd_names_quoted(&sql), "{sql}");
    }

    #[test]
    fn an_upsert_updates_only_rows_the_desktop_may_change_and_only_when_a_value_differs() {
        let t = odd_keyed();
        let table = Table::new(&t, 0);
        let w = upsert(&table, &common::insert(&table));
        assert_eq!(
            (w.ranged.what, w.ranged.numbered),
            ("upsert", Numbered::Rows)
        );
        let sql = &w.ranged.sql;
        assert!(
            sql.starts_with("INSERT INTO \"public\".\"Task List\" AS c (\"Task List\", \"na'me\", \"c\", \"_n\", \"source\", \"created_at\", \"updated_at\") SELECT s.c1, s.c2, s.c3, s.c4, 'D', now(), now() FROM pg_temp.tandem_s_0 s WHERE s._n BETWEEN $1 AND $2 "),
            "{sql}"
        );
        // Every staged column, keys included, and the row becomes desktop-owned, touched.
        assert!(
            sql.contains("ON CONFLICT (\"Task List\") DO UPDATE SET \"Task List\" = EXCLUDED.\"Task List\", \"na'me\" = EXCLUDED.\"na'me\", \"c\" = EXCLUDED.\"c\", \"_n\" = EXCLUDED.\"_n\", \"source\" = 'D', \"updated_at\" = now() "),
            "{sql}"
        );
        let may = owner::desktop_may_change("c", &owner::horizon(0));
        assert!(
            sql.ends_with(&format!("WHERE {may} AND ROW(c.\"Task List\", c.\"na'me\", c.\"c\", c.\"_n\")::text IS DISTINCT FROM ROW(EXCLUDED.\"Task List\", EXCLUDED.\"na'me\", EXCLUDED.\"c\", EXCLUDED.\"_n\")::text")),
            "{sql}"
        );
        assert!(odd_names_quoted(sql), "{sql}");
    }

    #[test]
    fn duplicate_keys_are_found_by_the_key_as_the_cloud_holds_it() {
        let sql = built(&odd_keyed(), duplicate_rows);
        assert_eq!(
            sql,
            "SELECT array_agg(s._n ORDER BY s._n), count(*) FROM pg_temp.tandem_s_0 s GROUP BY s.c1 HAVING count(*) > 1"
        );
        // A key without a btree equality: by its text.
        let t = table("t", Kind::Key(vec![json("k")]), vec![json("v"), json("k")]);
        assert!(built(&t, duplicate_rows).contains("GROUP BY (s.c2)::text HAVING"));
    }

    #[test]
    fn duplicates_are_dropped_from_k_and_s_by_row_number() {
        assert_eq!(
            built(&odd_keyed(), drop_duplicates),
            vec![
                "DELETE FROM pg_temp.tandem_k_0 k USING pg_temp.tandem_s_0 s WHERE s._n = ANY($1) AND s.c1 OPERATOR(pg_catalog.=) k.c1",
                "DELETE FROM pg_temp.tandem_s_0 s WHERE s._n = ANY($1)",
            ]
        );
    }
}
