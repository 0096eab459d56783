//! The forward statements every table has, whatever its kind: its staging tables `S` and `K` and
//! what fills and analyzes them, a TRUNCATE's keys, the resolution of dead letters, the images of a
//! staged row for a dead letter, and the columns and values of an insert.

use super::Table;
use crate::config::{CREATED_AT_COLUMN, UPDATED_AT_COLUMN, owner};
use crate::expr::{col, group_by, list, q};
use crate::transform::TableMapping;

/// `CREATE TEMP TABLE` of `S` (the staged columns, in the types they travel in) and `K` (the key's).
pub(super) fn create(table: &Table) -> String {
    let Table { st, rows, keys, .. } = table;
    let defs = |types: Vec<&str>| -> String {
        types
            .iter()
            .enumerate()
            .map(|(j, ty)| format!(", {} {ty}", col(j)))
            .collect()
    };
    let row_defs = defs(st.columns.iter().map(|c| c.wire()).collect());
    let key_defs = defs(st.key.iter().map(|(k, _)| k.wire()).collect());
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS {rows} (_n bigint GENERATED ALWAYS AS IDENTITY{row_defs}) ON COMMIT PRESERVE ROWS;\n\
         CREATE TEMP TABLE IF NOT EXISTS {keys} (_n bigint GENERATED ALWAYS AS IDENTITY{key_defs}) ON COMMIT PRESERVE ROWS;"
    )
}

/// `COPY` of the staged rows into `S`, in binary.
pub(super) fn copy_rows_in(table: &Table) -> String {
    format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        table.rows,
        list((0..table.st.columns.len()).map(col))
    )
}

/// `COPY` of the staged keys into `K`, in binary.
pub(super) fn copy_keys_in(table: &Table) -> String {
    format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        table.keys,
        list((0..table.st.key.len()).map(col))
    )
}

/// Locks the cloud rows of the keys (or scopes, `or_null`: a NULL part matching NULL) of `K` against
/// phones' updates and deletes until the batch commits (see `ForwardSql::lock`). Counts them, and
/// sets [`crate::capture::logical::PHONE_ROWS_SETTING`] when one is a phone's. `FOR NO KEY UPDATE`: a phone's new row referencing one of them still inserts.
pub(super) fn lock(table: &Table, or_null: bool) -> BySize {
    let Table {
        st, target, keys, ..
    } = table;
    let phone = owner::is_mobile(&owner::of("c"));
    let c_is_k = st.c_is_k(or_null);
    let counted = |locked: String| {
        format!(
            "SELECT count(*), CASE WHEN bool_or(locked.phone) THEN pg_catalog.set_config('{}', 'on', true) END \
             FROM ({locked}) locked",
            crate::capture::logical::PHONE_ROWS_SETTING,
        )
    };
    BySize {
        // A locking subquery is never flattened: key by key, through the target's index.
        probing: counted(format!(
            "SELECT c.phone FROM {keys} k CROSS JOIN LATERAL (SELECT {phone} AS phone FROM {target} c \
             WHERE {c_is_k} FOR NO KEY UPDATE OF c) c"
        )),
        joined: counted(format!(
            "SELECT {phone} AS phone FROM {target} c WHERE EXISTS (SELECT 1 FROM {keys} k WHERE {c_is_k}) \
             FOR NO KEY UPDATE OF c"
        )),
    }
}

/// A statement that reads the target by the keys of `K`, in two forms. The planner knows nothing of
/// a staging table it has not analyzed (see `ANALYZE_ABOVE`): it takes `K` for thousands of rows and
/// reads the whole target into a hash join, once a batch (a one-row batch's lock and hold cost
/// 0.1–0.26 ms on a 2,000–5,000-row table in the latency bench, 2026-12-08, and grow with the
/// table). So a small batch probes the target's index key by key (`probing`), and a big one, whose
/// staging is analyzed, is planned as a join (`joined`).
#[derive(Debug, Clone)]
pub struct BySize {
    pub probing: String,
    pub joined: String,
}

impl BySize {
    /// The form for a batch: `big`, its staging analyzed.
    pub fn of(&self, big: bool) -> &str {
        if big { &self.joined } else { &self.probing }
    }

    /// Both forms of `sql`, given the text a probing subquery ends with (or nothing).
    pub(super) fn from(sql: impl Fn(&str) -> String) -> Self {
        BySize {
            probing: sql(" OFFSET 0"),
            joined: sql(""),
        }
    }
}

/// The statement shape of a hold (see `ForwardSql::hold`): takes the keys of `K` (aliased `k`) for
/// which one of the conditions `held` holds out of `K`, and their rows (`s_in_k`: `S` row `s` is of
/// held key `k`) out of `S`, and returns each key's texts as the capture triggers write them (a
/// `text[]`). Each condition selects its keys apart and the sets are joined: PostgreSQL plans `a OR b`
/// of two subqueries as a filter that took 0.3 s for 50,000 keys, where each alone is a join of a few
/// milliseconds.
pub(super) fn hold(table: &Table, held: &[String], s_in_k: &str) -> String {
    let keys = &table.keys;
    match held {
        [one] => hold_after(table, "", one, s_in_k),
        _ => {
            let sets: Vec<String> = held
                .iter()
                .map(|h| format!("SELECT k.ctid AS t FROM {keys} k WHERE {h}"))
                .collect();
            let before = format!("hk AS ({}), ", sets.join(" UNION ALL "));
            hold_after(table, &before, "k.ctid IN (SELECT hk.t FROM hk)", s_in_k)
        }
    }
}

/// [`hold`] after the common table expressions `before` (each followed by a comma), which `held`
/// may read.
pub(super) fn hold_after(table: &Table, before: &str, held: &str, s_in_k: &str) -> String {
    let Table { st, rows, keys, .. } = table;
    let texts = list((0..st.key.len()).map(|n| format!("(k.{})::text", col(n))));
    format!(
        "WITH {before}held AS (DELETE FROM {keys} k WHERE {held} RETURNING k.*), \
              dropped AS (DELETE FROM {rows} s USING held k WHERE {s_in_k} RETURNING 1) \
         SELECT ARRAY[{texts}]::text[] FROM held k"
    )
}

/// Whether the cloud's journal holds a phone's update or delete of key (or scope) `k` of `K` that the
/// table's horizon does not see: the phone changed or removed a row of it after the last version the
/// desktop received. Not an insert (cloud-key tables): a phone's new row the desktop has not received
/// holds its scope back by itself, and one deleted since leaves its delete. Entries of older versions of tandem (no transaction recorded) are long received.
/// The table's unreceived entries are looked for once a statement first (an uncorrelated `EXISTS`,
/// an init plan): with none, as almost always, no key is looked up.
pub(super) fn unreceived_journal(table: &Table) -> String {
    let Table { t, st, i, .. } = table;
    let horizon = owner::horizon(*i);
    let key = list(
        st.key
            .iter()
            .enumerate()
            .map(|(n, (k, _))| format!("to_jsonb({})", k.cloud_value(&format!("k.{}", col(n))))),
    );
    let unreceived = format!(
        "SELECT 1 FROM tandem.journal j WHERE j.table_schema = {} AND j.table_name = {} \
         AND j.xid >= coalesce(pg_catalog.pg_snapshot_xmin({horizon}), '0'::pg_catalog.xid8) \
         AND j.op <> 'I' AND NOT {}",
        crate::expr::lit(&t.table.cloud.schema),
        crate::expr::lit(&t.table.cloud.name),
        owner::seen_xid8("j.xid", &horizon),
    );
    format!(
        "(EXISTS ({unreceived}) AND EXISTS ({unreceived} AND j.key = jsonb_build_array({key})))"
    )
}

/// Adds every key (or scope) of the cloud table the desktop may change (its own rows, and phones'
/// it has received) that `K` lacks to `K`: a TRUNCATE on the desktop.
pub(super) fn truncate_keys(table: &Table) -> String {
    let Table {
        st, target, keys, ..
    } = table;
    let key_group: Vec<String> = st
        .key
        .iter()
        .map(|(k, _)| group_by(&format!("c.{}", q(&k.name)), &k.cloud))
        .collect();
    let desktop_owned = table.may_change("c");
    format!(
        "INSERT INTO {keys} ({kcols}) SELECT {wired} \
         FROM (SELECT DISTINCT ON ({group}) {ckeys} FROM {target} c WHERE {desktop_owned}) c \
         WHERE NOT EXISTS (SELECT 1 FROM {keys} k WHERE {matching})",
        kcols = list((0..st.key.len()).map(col)),
        wired = list(
            st.key
                .iter()
                .map(|(k, _)| format!("CAST(c.{} AS {})", q(&k.name), k.wire()))
        ),
        group = key_group.join(", "),
        ckeys = list(st.key.iter().map(|(k, _)| format!("c.{}", q(&k.name)))),
        matching = st.c_is_k(true),
    )
}

/// Marks the open forward dead letters of the keys of `K` as resolved ($1 table, $2 batch, whose own
/// dead letters stay open).
pub(super) fn resolve(table: &Table) -> String {
    format!(
        "UPDATE tandem.dead_letters d SET resolved_at = now() FROM {} k \
         WHERE d.direction = 'forward' AND d.table_name = $1 AND d.resolved_at IS NULL \
         AND d.batch IS DISTINCT FROM $2 AND d.row_key = {}",
        table.keys,
        table.st.key_json("k")
    )
}

/// `ANALYZE` of `S`'s range and key columns, and of `K`.
pub(super) fn analyze_staged(table: &Table) -> String {
    // `S`'s columns the statements filter and join on only: its wide user columns took three
    // quarters of the time of analyzing it (64,542 rows of jobtasks: 40 ms, 11 ms without them).
    format!(
        "ANALYZE {} (_n{}), {}",
        table.rows,
        table
            .st
            .key
            .iter()
            .map(|(_, at)| format!(", {}", col(*at)))
            .collect::<String>(),
        table.keys
    )
}

/// The columns of a cloud row tandem inserts and the values for them from `S` row `s`.
pub(super) struct Insert {
    /// The staged columns, the owner, and the timestamps the cloud table has.
    pub columns: String,
    /// The staged values, desktop-owned, written now.
    pub values: String,
}

pub(super) fn insert(table: &Table) -> Insert {
    let Table { t, st, .. } = table;
    let mut columns = st.names();
    columns.push(owner::column());
    let mut values: Vec<String> = (0..st.columns.len()).map(|j| st.value("s", j)).collect();
    values.push(owner::desktop());
    if t.has_created_at {
        columns.push(q(CREATED_AT_COLUMN));
        values.push("now()".into());
    }
    if t.has_updated_at {
        columns.push(q(UPDATED_AT_COLUMN));
        values.push("now()".into());
    }
    Insert {
        columns: list(columns),
        values: list(values),
    }
}

/// `, "updated_at" = now()` when the cloud table has it: the end of an UPDATE's SET.
pub(super) fn touch(t: &TableMapping) -> String {
    if t.has_updated_at {
        format!(", {} = now()", q(UPDATED_AT_COLUMN))
    } else {
        String::new()
    }
}

/// `(row_key, row_image, old_image)` of `S` row `$1`, for a dead letter: the incoming row.
pub(super) fn image_of_rows(table: &Table) -> String {
    format!(
        "SELECT {}, {}, NULL::jsonb FROM {} s WHERE s._n = $1",
        table.st.key_json("s"),
        table.st.incoming(),
        table.rows
    )
}

/// The same of `K` row `$1` (a delete): the cloud row it would have deleted.
pub(super) fn image_of_keys(table: &Table) -> String {
    format!(
        "SELECT {}, (SELECT to_jsonb(c.*) FROM {} c WHERE {} LIMIT 1), NULL::jsonb FROM {} k WHERE k._n = $1",
        table.st.key_json("k"),
        table.target,
        table.st.c_is_k(true),
        table.keys
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::testing::{int, json, odd_keyed, odd_names_quoted, odd_scoped, table};
    use crate::transform::{Kind, TableMapping};

    fn built<T>(t: &TableMapping, statement: impl Fn(&Table) -> T) -> T {
        statement(&Table::new(t, 0))
    }

    #[test]
    fn staging_tables_hold_positional_columns_in_the_types_they_travel_in() {
        let sql = built(&odd_keyed(), create);
        assert_eq!(
            sql,
            "CREATE TEMP TABLE IF NOT EXISTS pg_temp.tandem_s_0 (_n bigint GENERATED ALWAYS AS IDENTITY, \
             c1 integer, c2 json, c3 json, c4 json) ON COMMIT PRESERVE ROWS;\n\
             CREATE TEMP TABLE IF NOT EXISTS pg_temp.tandem_k_0 (_n bigint GENERATED ALWAYS AS IDENTITY, \
             c1 integer) ON COMMIT PRESERVE ROWS;"
        );
    }

    #[test]
    fn a_hold_takes_keys_out_of_k_and_s_and_returns_their_texts() {
        let t = odd_keyed();
        let sql = built(&t, |table| hold(table, &["HELD".to_string()], "S_IN_K"));
        assert_eq!(
            sql,
            "WITH held AS (DELETE FROM pg_temp.tandem_k_0 k WHERE HELD RETURNING k.*), \
                  dropped AS (DELETE FROM pg_temp.tandem_s_0 s USING held k WHERE S_IN_K RETURNING 1) \
             SELECT ARRAY[(k.c1)::text]::text[] FROM held k"
        );
        // Several conditions: each selects its keys apart, the sets joined.
        let sql = built(&t, |table| {
            hold(table, &["A".to_string(), "B".to_string()], "S_IN_K")
        });
        assert_eq!(
            sql,
            "WITH hk AS (SELECT k.ctid AS t FROM pg_temp.tandem_k_0 k WHERE A UNION ALL \
                         SELECT k.ctid AS t FROM pg_temp.tandem_k_0 k WHERE B), \
                  held AS (DELETE FROM pg_temp.tandem_k_0 k WHERE k.ctid IN (SELECT hk.t FROM hk) RETURNING k.*), \
                  dropped AS (DELETE FROM pg_temp.tandem_s_0 s USING held k WHERE S_IN_K RETURNING 1) \
             SELECT ARRAY[(k.c1)::text]::text[] FROM held k"
        );
    }

    #[test]
    fn an_unreceived_journal_entry_is_one_of_the_key_the_horizon_does_not_see() {
        let sql = built(&odd_keyed(), unreceived_journal);
        assert!(
            sql.starts_with("(EXISTS (SELECT 1 FROM tandem.journal j WHERE j.table_schema = 'public' AND j.table_name = 'Task List' "),
            "{sql}"
        );
        // Only entries from the horizon's oldest on (an index range), not seen by it, of this key.
        assert!(sql.contains("j.xid >= coalesce(pg_catalog.pg_snapshot_xmin(nullif(pg_catalog.current_setting('tandem.horizon_0', true), '')::pg_catalog.pg_snapshot), '0'::pg_catalog.xid8)"), "{sql}");
        assert!(
            sql.contains("AND NOT coalesce(pg_catalog.pg_visible_in_snapshot(j.xid, "),
            "{sql}"
        );
        assert!(
            sql.ends_with("AND j.key = jsonb_build_array(to_jsonb(k.c1))))"),
            "{sql}"
        );
        // The table's unreceived entries first, without the key: once a statement.
        assert!(
            sql.contains("false)) AND EXISTS (SELECT 1 FROM tandem.journal j"),
            "{sql}"
        );
    }

    #[test]
    fn copies_name_the_staging_columns_by_position() {
        let t = odd_keyed();
        assert_eq!(
            built(&t, copy_rows_in),
            "COPY pg_temp.tandem_s_0 (c1, c2, c3, c4) FROM STDIN (FORMAT binary)"
        );
        assert_eq!(
            built(&t, copy_keys_in),
            "COPY pg_temp.tandem_k_0 (c1) FROM STDIN (FORMAT binary)"
        );
    }

    #[test]
    fn a_truncate_adds_only_the_keys_the_desktop_may_change_that_k_lacks() {
        let sql = built(&odd_keyed(), truncate_keys);
        let may = owner::desktop_may_change("c", &owner::horizon(0));
        assert!(sql.starts_with(&format!("INSERT INTO pg_temp.tandem_k_0 (c1) SELECT CAST(c.\"Task List\" AS integer) FROM (SELECT DISTINCT ON (c.\"Task List\") c.\"Task List\" FROM \"public\".\"Task List\" c WHERE {may}) c")), "{sql}");
        // NULL scope parts match NULL: a scope without a value is a scope too.
        assert!(
            sql.ends_with("WHERE NOT EXISTS (SELECT 1 FROM pg_temp.tandem_k_0 k WHERE (c.\"Task List\" OPERATOR(pg_catalog.=) k.c1 OR (c.\"Task List\" IS NULL AND k.c1 IS NULL)))"),
            "{sql}"
        );
        // A key without a btree equality is deduplicated by its text.
        let by_text = built(
            &table("t", Kind::Key(vec![json("c")]), vec![json("c")]),
            truncate_keys,
        );
        assert!(
            by_text.contains("DISTINCT ON ((c.\"c\")::text)"),
            "{by_text}"
        );
    }

    #[test]
    fn resolve_marks_only_open_forward_dead_letters_of_other_batches() {
        let sql = built(&odd_keyed(), resolve);
        assert!(sql.starts_with("UPDATE tandem.dead_letters d SET resolved_at = now() FROM pg_temp.tandem_k_0 k WHERE "), "{sql}");
        for condition in [
            "d.direction = 'forward'",
            "d.table_name = $1",
            "d.resolved_at IS NULL",
            "d.batch IS DISTINCT FROM $2",
            "d.row_key = jsonb_build_object('Task List', to_jsonb(k.c1))",
        ] {
            assert!(sql.contains(condition), "{condition}: {sql}");
        }
    }

    #[test]
    fn analyze_reads_the_range_and_the_key_columns_of_s_wherever_the_key_is() {
        let columns = vec![json("a"), json("b"), int("id")];
        let t = table("t", Kind::Key(vec![int("id")]), columns);
        assert_eq!(
            built(&t, analyze_staged),
            "ANALYZE pg_temp.tandem_s_0 (_n, c3), pg_temp.tandem_k_0"
        );
    }

    #[test]
    fn an_insert_writes_desktop_owned_rows_with_the_timestamps_the_table_has() {
        let t = odd_keyed();
        let Insert { columns, values } = built(&t, insert);
        assert_eq!(
            columns,
            "\"Task List\", \"na'me\", \"c\", \"_n\", \"source\", \"created_at\", \"updated_at\""
        );
        assert_eq!(values, "s.c1, s.c2, s.c3, s.c4, 'D', now(), now()");
        let mut bare = odd_scoped();
        bare.has_created_at = false;
        bare.has_updated_at = false;
        let Insert { columns, values } = built(&bare, insert);
        assert!(columns.ends_with("\"_n\", \"source\""), "{columns}");
        assert!(values.ends_with("s.c4, 'D'"), "{values}");
    }

    #[test]
    fn an_update_touches_updated_at_only_when_the_table_has_it() {
        let mut t = odd_keyed();
        assert_eq!(touch(&t), ", \"updated_at\" = now()");
        t.has_updated_at = false;
        assert_eq!(touch(&t), "");
    }

    #[test]
    fn a_dead_letter_of_s_is_the_incoming_row_under_the_users_names() {
        let sql = built(&odd_keyed(), image_of_rows);
        assert_eq!(
            sql,
            "SELECT jsonb_build_object('Task List', to_jsonb(s.c1)), \
             jsonb_build_object('Task List', s.c1, 'na''me', s.c2, 'c', s.c3, '_n', s.c4), NULL::jsonb \
             FROM pg_temp.tandem_s_0 s WHERE s._n = $1"
        );
        assert!(odd_names_quoted(&sql), "{sql}");
    }

    #[test]
    fn a_dead_letter_of_k_is_the_cloud_row_the_delete_would_have_removed() {
        let sql = built(&odd_keyed(), image_of_keys);
        assert!(sql.contains("(SELECT to_jsonb(c.*) FROM \"public\".\"Task List\" c WHERE (c.\"Task List\" OPERATOR(pg_catalog.=) k.c1 OR"), "{sql}");
        assert!(
            sql.ends_with("LIMIT 1), NULL::jsonb FROM pg_temp.tandem_k_0 k WHERE k._n = $1"),
            "{sql}"
        );
        assert!(odd_names_quoted(&sql), "{sql}");
    }
}
