//! The reverse statements of a desktop-key table: a net change finds its desktop row by the key, and
//! applies where that row is what the phone started from (its old image), or where its conflict was
//! settled (see [`super::settle`]). New rows without a reduction take the direct path, probing the
//! key; those whose key the desktop holds with other content are settled as conflicts too.

use super::common::{insert_values, ranged, sets};
use super::{DirectSql, Table};
use crate::commit::forward::sql::Ranged;
use crate::expr::{col, is_integer, json_object, key_json_value, lit, q, same_key};
use crate::transform::MappedColumn;

/// A net change whose conflict its policy settled (its version is now the result): it applies
/// whatever the desktop holds.
const SETTLED: &str = "n._verdict = 'settled'";

/// A net change applies where the desktop row is what the phone started from (`same_old`) and no
/// conflict holds it (one open on its key does: see `settle::kind`), or where its conflict was settled.
fn applies(same_old: &str) -> String {
    format!("(({same_old} AND n._verdict IS NULL) OR {SETTLED})")
}

/// A desktop-key table and its key, with where each key column is among the columns that travel.
pub(super) struct Keyed<'a> {
    pub table: &'a Table<'a>,
    key: Vec<(&'a MappedColumn, usize)>,
}

impl<'a> Keyed<'a> {
    pub fn new(table: &'a Table<'a>, key: &'a [MappedColumn]) -> Self {
        let key = key
            .iter()
            .map(|k| {
                let at = table
                    .c
                    .cols
                    .iter()
                    .position(|r| r.name == k.name)
                    .expect("key columns travel to the desktop");
                (k, at)
            })
            .collect();
        Keyed { table, key }
    }

    /// Where each key column is among the columns that travel, in key order.
    pub fn key_positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.key.iter().map(|(_, j)| *j)
    }

    /// Desktop row `d` has the key of staged (or net) row `alias`.
    pub fn is_key(&self, alias: &str) -> String {
        self.key
            .iter()
            .map(|(k, j)| {
                same_key(
                    &format!("d.{}", q(&k.name)),
                    &self.table.c.cols[*j].desktop_value(&format!("{alias}.{}", col(*j))),
                    &k.desktop,
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The dead-letter row key of staged (or net) row `alias`.
    pub fn key_json(&self, alias: &str) -> String {
        let pairs: Vec<(String, String)> = self
            .key
            .iter()
            .map(|(k, j)| {
                let staged = format!("{alias}.{}", col(*j));
                // Staged keys are text already; integers are numbers in `row_key`.
                let value = if is_integer(&k.desktop) {
                    key_json_value(&self.table.c.cols[*j].desktop_value(&staged), &k.desktop)
                } else {
                    staged
                };
                (k.name.clone(), value)
            })
            .collect();
        json_object(&pairs)
    }
}

/// Fills `N`: one net change per key. Staged keys are grouped by their text (the same key is the
/// same text in the stream): a deleted row's from its old image.
pub(super) fn reduce(k: &Keyed) -> String {
    let staged_key: Vec<String> = k
        .key
        .iter()
        .map(|(key, j)| {
            format!(
                "CASE WHEN s._op = 'D' THEN s._old ->> {} ELSE s.{} END",
                lit(&key.name),
                col(*j)
            )
        })
        .collect();
    let net_columns: Vec<String> = (0..k.table.c.cols.len())
        .map(|j| match k.key.iter().position(|(_, at)| *at == j) {
            Some(n) => format!("y._k{n}"),
            None => format!("y.{}", col(j)),
        })
        .collect();
    super::common::reduce(k.table, &staged_key, &net_columns)
}

/// Locks the desktop rows of the net changes' keys (see `ReverseSql::lock`), counting them (no row
/// comes back).
pub(super) fn lock(k: &Keyed) -> String {
    let Table { target, net, .. } = k.table;
    format!(
        "SELECT count(*) FROM (SELECT 1 FROM {target} d WHERE EXISTS (SELECT 1 FROM {net} n WHERE {}) \
         FOR UPDATE OF d) locked",
        k.is_key("n")
    )
}

/// Deletes the desktop rows of the net deletes where the desktop row is the old image (range of `N`).
pub(super) fn delete(k: &Keyed) -> Ranged {
    let Table { c, target, net, .. } = k.table;
    ranged(
        "reverse delete",
        format!(
            "DELETE FROM {target} d USING {net} n LEFT JOIN LATERAL {old_row} ON n._first_old IS NOT NULL \
             WHERE {is_n} AND n._op = 'D' AND {applies} AND n._n BETWEEN $1 AND $2",
            old_row = c.old_row(),
            is_n = k.is_key("n"),
            applies = applies(&c.same_old()),
        ),
    )
}

/// Updates the desktop rows to the net changes' versions where the desktop row is the old image and
/// does not hold the new version already (range of `N`).
pub(super) fn update(k: &Keyed) -> Ranged {
    let Table { c, target, net, .. } = k.table;
    ranged(
        "reverse update",
        format!(
            "UPDATE {target} d SET {sets} FROM {net} n LEFT JOIN LATERAL {old_row} ON n._first_old IS NOT NULL \
             WHERE {is_n} AND n._op = 'I' AND {applies} AND NOT {same_new} AND n._n BETWEEN $1 AND $2",
            sets = sets(k.table),
            old_row = c.old_row(),
            is_n = k.is_key("n"),
            applies = applies(&c.same_old()),
            same_new = c.same_new(),
        ),
    )
}

/// Inserts the net changes whose key the desktop does not hold (range of `N`), probing the key's
/// index row by row when there is one (see [`direct_probe`]).
pub(super) fn insert(k: &Keyed) -> Ranged {
    let Table {
        t, c, target, net, ..
    } = k.table;
    let absent = if t.desktop_key_indexed {
        format!(
            "LEFT JOIN LATERAL (SELECT 1 AS found FROM {target} d WHERE {} LIMIT 1) x ON true WHERE x.found IS NULL",
            k.is_key("n")
        )
    } else {
        format!(
            "WHERE NOT EXISTS (SELECT 1 FROM {target} d WHERE {})",
            k.is_key("n")
        )
    };
    ranged(
        "reverse insert",
        format!(
            "INSERT INTO {target} ({names}) SELECT {values} FROM {net} n {absent} \
             AND n._op = 'I' AND (n._first_old IS NULL OR n._remade OR {SETTLED}) AND n._n BETWEEN $1 AND $2",
            names = c.names().join(", "),
            values = insert_values(k.table),
        ),
    )
}

// How new rows find desktop rows with the same key. Never a plan that reads the whole desktop table
// per row: an empty, never-analyzed desktop table (a first sync) makes the planner think it holds
// nothing. Two forms: probing the key's index row by row (a LATERAL subquery stays a nested loop:
// cheap for a few rows into a big table), and a hash join (nested loops turned off by the caller: for
// many rows, or without an index).

/// The direct path probing the key's index: the new rows of `S` whose key the desktop holds with
/// other content are conflicts, the others are inserted.
pub(super) fn direct_probe(k: &Keyed) -> DirectSql {
    let target = &k.table.target;
    DirectSql {
        collisions: super::settle::collisions(
            k,
            &format!(
                "CROSS JOIN LATERAL (SELECT * FROM {target} d WHERE {} OFFSET 0) d",
                k.is_key("s")
            ),
        ),
        insert: direct_insert(
            k,
            &format!(
                "LEFT JOIN LATERAL (SELECT 1 AS found FROM {target} d WHERE {} LIMIT 1) x ON true WHERE x.found IS NULL",
                k.is_key("s")
            ),
        ),
    }
}

/// The same by hash join.
pub(super) fn direct_hash(k: &Keyed) -> DirectSql {
    let target = &k.table.target;
    DirectSql {
        collisions: super::settle::collisions(k, &format!("JOIN {target} d ON {}", k.is_key("s"))),
        insert: direct_insert(
            k,
            &format!(
                "WHERE NOT EXISTS (SELECT 1 FROM {target} d WHERE {})",
                k.is_key("s")
            ),
        ),
    }
}

/// Inserts the rows of `S` that `absent` keeps (those whose key the desktop does not hold).
fn direct_insert(k: &Keyed, absent: &str) -> String {
    let Table {
        c, target, staged, ..
    } = k.table;
    format!(
        "INSERT INTO {target} ({}) SELECT {} FROM {staged} s {absent}",
        c.names().join(", "),
        c.values_of("s").join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::testing::{odd_keyed, odd_names_quoted, text};
    use crate::transform::{Kind, TableMapping};

    /// `f` of the desktop-key table `t`, the 0th of its mapping.
    fn built<T>(t: &TableMapping, f: impl Fn(&Keyed) -> T) -> T {
        let table = Table::new(t, 0);
        let Kind::Key(key) = &t.kind else {
            panic!("a desktop-key table")
        };
        f(&Keyed::new(&table, key))
    }

    /// Desktop row `d` has the key of net row `n`.
    const IS_N: &str = "d.\"Task List\" OPERATOR(pg_catalog.=) CAST(n.c1 AS integer)";
    /// The same of staged row `s`.
    const IS_S: &str = "d.\"Task List\" OPERATOR(pg_catalog.=) CAST(s.c1 AS integer)";

    #[test]
    #[should_panic(expected = "key columns travel to the desktop")]
    fn a_key_column_must_travel_to_the_desktop() {
        let mut t = odd_keyed();
        t.reverse_columns.remove(0);
        built(&t, |_| ());
    }

    #[test]
    fn rows_are_found_by_the_key_as_the_desktop_types_it_and_named_by_it() {
        let t = odd_keyed();
        assert_eq!(built(&t, |k| k.is_key("n")), IS_N);
        // Integers are numbers in a row key; other keys are their staged text.
        assert_eq!(
            built(&t, |k| k.key_json("n")),
            "jsonb_build_object('Task List', to_jsonb(CAST(n.c1 AS integer)))"
        );
        let by_text = crate::transform::testing::table(
            "t",
            Kind::Key(vec![text("na'me")]),
            vec![text("x"), text("na'me")],
        );
        assert_eq!(
            built(&by_text, |k| k.key_json("s")),
            "jsonb_build_object('na''me', s.c2)"
        );
    }

    #[test]
    fn the_reduction_groups_by_the_key_a_delete_taking_it_from_its_old_image() {
        let sql = built(&odd_keyed(), reduce);
        assert!(
            sql.contains(
                "SELECT DISTINCT ON (y._k0) y._op, y._unchanged, \
                CASE WHEN y._first_old IS NULL AND y._op = 'D' THEN y._old ELSE y._first_old END, \
                y._ck, y._xid, y._at, y._lsn, y._first_op = 'D' AND y._op = 'I', y._k0, y.c2, y.c3, y.c4 "
            ),
            "{sql}"
        );
        assert!(
            sql.contains("CASE WHEN s._op = 'D' THEN s._old ->> 'Task List' ELSE s.c1 END AS _k0"),
            "{sql}"
        );
    }

    #[test]
    fn a_delete_applies_where_the_desktop_row_is_the_old_image_or_its_conflict_was_settled() {
        let t = odd_keyed();
        let r = built(&t, delete);
        assert_eq!(
            (r.what, r.numbered),
            (
                "reverse delete",
                crate::commit::forward::sql::Numbered::Rows
            )
        );
        let c = &Table::new(&t, 0).c;
        assert_eq!(
            r.sql,
            format!(
                "DELETE FROM \"public\".\"Task List\" d USING pg_temp.tandem_rn_0 n LEFT JOIN LATERAL {} ON n._first_old IS NOT NULL \
                 WHERE {IS_N} AND n._op = 'D' AND (({} AND n._verdict IS NULL) OR n._verdict = 'settled') AND n._n BETWEEN $1 AND $2",
                c.old_row(),
                c.same_old()
            )
        );
    }

    #[test]
    fn an_update_applies_where_the_desktop_row_is_the_old_image_or_settled_and_not_yet_the_new() {
        let t = odd_keyed();
        let r = built(&t, update);
        assert_eq!(r.what, "reverse update");
        let c = &Table::new(&t, 0).c;
        assert!(
            r.sql.ends_with(&format!(
                "WHERE {IS_N} AND n._op = 'I' AND (({} AND n._verdict IS NULL) OR n._verdict = 'settled') AND NOT {} AND n._n BETWEEN $1 AND $2",
                c.same_old(),
                c.same_new()
            )),
            "{}",
            r.sql
        );
        // The old image is compared column by column, by text, where it knows the column.
        assert!(
            c.same_old().contains("(NOT (n._first_old ? 'na''me') OR (d.\"na'me\")::text IS NOT DISTINCT FROM (o.c2)::text)"),
            "{}",
            c.same_old()
        );
        assert!(r.sql.starts_with("UPDATE \"public\".\"Task List\" d SET \"Task List\" = CASE WHEN 1 = ANY(n._unchanged)"), "{}", r.sql);
        assert!(odd_names_quoted(&r.sql), "{}", r.sql);
    }

    #[test]
    fn an_insert_probes_the_key_index_when_there_is_one() {
        let mut t = odd_keyed();
        let probing = built(&t, insert);
        assert_eq!(probing.what, "reverse insert");
        assert!(
            probing.sql.contains(&format!(
                "FROM pg_temp.tandem_rn_0 n LEFT JOIN LATERAL (SELECT 1 AS found FROM \"public\".\"Task List\" d WHERE {IS_N} LIMIT 1) x ON true \
                 WHERE x.found IS NULL AND n._op = 'I' AND (n._first_old IS NULL OR n._remade OR n._verdict = 'settled') AND n._n BETWEEN $1 AND $2"
            )),
            "{}",
            probing.sql
        );
        t.desktop_key_indexed = false;
        let scanning = built(&t, insert);
        assert!(
            scanning.sql.ends_with(&format!(
                "FROM pg_temp.tandem_rn_0 n WHERE NOT EXISTS (SELECT 1 FROM \"public\".\"Task List\" d WHERE {IS_N}) \
                 AND n._op = 'I' AND (n._first_old IS NULL OR n._remade OR n._verdict = 'settled') AND n._n BETWEEN $1 AND $2"
            )),
            "{}",
            scanning.sql
        );
    }

    #[test]
    fn the_direct_probe_looks_each_new_row_up_in_a_lateral_subquery() {
        let sql = built(&odd_keyed(), direct_probe);
        assert!(
            sql.collisions.contains(&format!(
                "FROM pg_temp.tandem_r_0 s CROSS JOIN LATERAL (SELECT * FROM \"public\".\"Task List\" d WHERE {IS_S} OFFSET 0) d \
                 WHERE ROW(d.\"Task List\", d.\"na'me\", d.\"c\", d.\"_n\")::text IS DISTINCT FROM"
            )),
            "{}",
            sql.collisions
        );
        // Made net changes of their own, new rows to be settled.
        assert!(
            sql.collisions.starts_with("INSERT INTO pg_temp.tandem_rn_0 (_op, _unchanged, _first_old, _ck, _xid, _at, _lsn, c1, c2, c3, c4) \
                 SELECT 'I', NULL, NULL, s._ck, s._xid, s._at, s._lsn, s.c1, s.c2, s.c3, s.c4 FROM pg_temp.tandem_r_0 s"),
            "{}",
            sql.collisions
        );
        assert_eq!(
            sql.insert,
            format!(
                "INSERT INTO \"public\".\"Task List\" (\"Task List\", \"na'me\", \"c\", \"_n\") \
                 SELECT CAST(s.c1 AS integer), CAST(s.c2 AS json), CAST(s.c3 AS json), CAST(s.c4 AS json) \
                 FROM pg_temp.tandem_r_0 s LEFT JOIN LATERAL (SELECT 1 AS found FROM \"public\".\"Task List\" d \
                 WHERE {IS_S} LIMIT 1) x ON true WHERE x.found IS NULL"
            )
        );
    }

    #[test]
    fn the_direct_hash_joins_new_rows_with_the_desktop() {
        let sql = built(&odd_keyed(), direct_hash);
        assert!(
            sql.collisions.contains(&format!(
                "FROM pg_temp.tandem_r_0 s JOIN \"public\".\"Task List\" d ON {IS_S} WHERE ROW("
            )),
            "{}",
            sql.collisions
        );
        assert!(
            sql.insert.ends_with(&format!(
                "FROM pg_temp.tandem_r_0 s WHERE NOT EXISTS (SELECT 1 FROM \"public\".\"Task List\" d WHERE {IS_S})"
            )),
            "{}",
            sql.insert
        );
        assert!(odd_names_quoted(&sql.collisions), "{}", sql.collisions);
    }
}
