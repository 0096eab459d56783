//! The forward direction's desktop reads: the current rows for the keys of an outbox batch (or of a
//! reconcile's list, or of a whole table), piped by binary COPY from the batch's snapshot.

use super::{HORIZONS_SETTING, MAX_SETTING, MIN_SETTING, SNAPSHOT_SETTING, not_held, not_kept};
use crate::change::quote_literal;
use crate::expr::{col, group_by, q, same_key, same_key_or_null};
use crate::transform::{Mapping, TableMapping};

/// The outbox rows of the current batch for one table; `truncate` selects its TRUNCATE rows instead.
/// The same rows [`BATCH_SQL`] took: in its id range, seen by its snapshot, not waiting for a horizon
/// the table has not reached (the batch's REPEATABLE READ snapshot reads the same horizon).
fn batch_rows(table: &TableMapping, truncate: bool) -> String {
    format!(
        "tandem.outbox o WHERE o.id BETWEEN current_setting('{MIN_SETTING}')::bigint AND current_setting('{MAX_SETTING}')::bigint \
         AND (current_setting('{SNAPSHOT_SETTING}') = '' OR pg_visible_in_snapshot(o.xid, current_setting('{SNAPSHOT_SETTING}')::pg_snapshot)) \
         AND o.table_schema = {} AND o.table_name = {} AND o.op {} 'T' \
         AND (o.wait_for IS NULL OR o.wait_for <= (current_setting('{HORIZONS_SETTING}')::jsonb ->> {})::bigint)",
        quote_literal(&table.table.desktop.schema),
        quote_literal(&table.table.desktop.name),
        if truncate { "=" } else { "<>" },
        quote_literal(&table.table.desktop.to_string()),
    )
}

/// The desktop SQL of the forward direction for one table, built once.
#[derive(Debug, Clone)]
pub struct ReadSql {
    /// `COPY (distinct keys, wire-typed) TO STDOUT (FORMAT binary)`.
    pub copy_keys: String,
    /// `COPY (current rows for those keys, mapped and wire-typed, with lookups) TO STDOUT (FORMAT binary)`.
    pub copy_rows: String,
}

/// Whether a read looks for the open records that hold keys and rows back ([`not_held`], [`not_kept`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Held,
    /// The snapshot holds none of the table's.
    None,
}

/// How a statement reads a table's lookup columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookups {
    /// Per row, by the source's key (a lateral probe of its index): for the few rows of an outbox
    /// batch.
    PerRow,
    /// As a set (a plain join the planner may hash) when the source's desktop key is unique, per row
    /// otherwise: for statements reading many rows (a table scan, a reconcile's reads).
    Set,
}

/// The joins that read table `i`'s lookup columns on the desktop (rows of `t`), and each lookup's value:
/// the source table's column for the row whose key is `t`'s join column (the first, should the legacy
/// desktop hold the key twice). With [`Lookups::Set`], a source whose key has a unique index on the
/// desktop is joined as a set: it holds at most one row per key under the `=` of the key's btree
/// operator class (the one the join uses), so the plain join finds the same row the probe would.
pub fn lookup_joins(mapping: &Mapping, i: usize, how: Lookups) -> (String, Vec<String>) {
    let t = &mapping.tables[i];
    let mut joins = String::new();
    let mut values = Vec::new();
    for (n, lookup) in t.lookups.iter().enumerate() {
        let from = &mapping.tables[lookup.from];
        let from_key = &from.key_columns()[0];
        let on = q(&lookup.on);
        let column = q(&lookup.column.name);
        let table = from.table.desktop.quoted();
        if how == Lookups::Set && from.desktop_key_unique {
            joins.push_str(&format!(
                " LEFT JOIN {table} lk{n} ON {}",
                same_key(
                    &format!("lk{n}.{on}"),
                    &format!("t.{on}"),
                    &from_key.desktop
                ),
            ));
        } else {
            joins.push_str(&format!(
                " LEFT JOIN LATERAL (SELECT l.{column} FROM {table} l WHERE {matching} LIMIT 1) lk{n} ON true",
                matching = same_key(&format!("l.{on}"), &format!("t.{on}"), &from_key.desktop),
            ));
        }
        values.push(format!("lk{n}.{column}"));
    }
    (joins, values)
}

/// The desktop temporary table a reconcile lists table `i`'s keys in (`k1..kN`, text), for
/// [`ReadSql::listed`].
pub fn key_list(i: usize) -> String {
    format!("pg_temp.tandem_keys_{i}")
}

impl ReadSql {
    /// For the keys of the current outbox batch, and of the rows its lookups' sources changed.
    pub fn build(mapping: &Mapping, i: usize) -> ReadSql {
        Self::with_sources(mapping, i, false, Open::Held)
    }

    /// The same for a batch whose snapshot holds no open reverse conflict or dead letter of the table
    /// ([`OutboxBatch::unheld`]): nothing holds a key or a row back, and the reads do not look (a
    /// COPY's query is planned at each run: the lookups, uncorrelated subqueries that find none, cost
    /// a one-row batch's two reads 0.5 ms, measured 2026-12-07, against 0.28 ms without).
    pub fn unheld(mapping: &Mapping, i: usize) -> ReadSql {
        Self::with_sources(mapping, i, false, Open::None)
    }

    /// For the keys listed in [`key_list`] (a reconcile's: their text, as the capture triggers write it).
    pub fn listed(mapping: &Mapping, i: usize) -> ReadSql {
        Self::with_sources(mapping, i, true, Open::Held)
    }

    /// For every row of the table (a reconcile's, when the cloud holds none of the table's rows): its
    /// keys, and its rows read as one set.
    pub fn whole(mapping: &Mapping, i: usize) -> ReadSql {
        let t = &mapping.tables[i];
        let table = t.table.desktop.quoted();
        let of_row: Vec<String> = t
            .key_columns()
            .iter()
            .enumerate()
            .map(|(n, k)| format!("d.{} AS {}", q(&k.name), col(n)))
            .collect();
        let sources = vec![format!("SELECT {} FROM {table} d", of_row.join(", "))];
        let mut read = Self::reading(mapping, i, sources, Lookups::Set, Open::Held);
        let (select, joins) = row_select(mapping, i, Lookups::Set);
        read.copy_rows =
            format!("COPY (SELECT {select} FROM {table} t{joins}) TO STDOUT (FORMAT binary)");
        read
    }

    fn with_sources(mapping: &Mapping, i: usize, listed: bool, open: Open) -> ReadSql {
        let t = &mapping.tables[i];
        let table = t.table.desktop.quoted();
        let keys = t.key_columns();
        if listed {
            let cast: Vec<String> = keys
                .iter()
                .enumerate()
                .map(|(n, k)| format!("CAST(o.k{} AS {}) AS {}", n + 1, k.desktop.base, col(n)))
                .collect();
            let sources = vec![format!("SELECT {} FROM {} o", cast.join(", "), key_list(i))];
            return Self::reading(mapping, i, sources, Lookups::Set, open);
        }
        // The captured keys are their columns' text under tandem's settings (the capture function runs
        // with them): read back exactly.
        let captured: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(n, k)| {
                format!(
                    "CAST(o.row_key[{}] AS {}) AS {}",
                    n + 1,
                    k.desktop.base,
                    col(n)
                )
            })
            .collect();
        let of_row: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(n, k)| format!("d.{} AS {}", q(&k.name), col(n)))
            .collect();
        let mut sources = vec![format!(
            "SELECT {} FROM {}",
            captured.join(", "),
            batch_rows(t, false)
        )];
        // A change of a row a lookup reads is a change of the rows that read it.
        for lookup in &t.lookups {
            let from = &mapping.tables[lookup.from];
            let from_key = &from.key_columns()[0];
            let on = format!("d.{}", q(&lookup.on));
            let captured = format!("CAST(o.row_key[1] AS {})", from_key.desktop.base);
            sources.push(format!(
                "SELECT {} FROM {table} d WHERE EXISTS (SELECT 1 FROM {} AND {})",
                of_row.join(", "),
                batch_rows(from, false),
                same_key(&on, &captured, &from_key.desktop)
            ));
            sources.push(format!(
                "SELECT {} FROM {table} d WHERE EXISTS (SELECT 1 FROM {})",
                of_row.join(", "),
                batch_rows(from, true)
            ));
        }
        Self::reading(mapping, i, sources, Lookups::PerRow, open)
    }

    /// The statements reading the keys `sources` select (`c1..cN`, of the key's desktop types), and the
    /// current rows for them.
    fn reading(
        mapping: &Mapping,
        i: usize,
        sources: Vec<String>,
        lookups: Lookups,
        open: Open,
    ) -> ReadSql {
        let t = &mapping.tables[i];
        let table = t.table.desktop.quoted();
        let keys = t.key_columns();
        let width = keys.len();
        let distinct: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(n, k)| group_by(&format!("u.{}", col(n)), &k.desktop))
            .collect();
        let held = match open {
            Open::Held => format!(" WHERE {}", not_held(t, "u")),
            Open::None => String::new(),
        };
        let keys_cte = format!(
            "k AS (SELECT DISTINCT ON ({}) u.* FROM ({}) u{held})",
            distinct.join(", "),
            sources.join(" UNION ALL "),
        );

        let staged_keys: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(n, k)| k.desktop_read(&format!("k.{}", col(n))))
            .collect();
        let copy_keys = format!(
            "COPY (WITH {keys_cte} SELECT {} FROM k) TO STDOUT (FORMAT binary)",
            staged_keys.join(", ")
        );

        let (select, joins) = row_select(mapping, i, lookups);
        let matching = |or_null: bool| {
            let m = if or_null { same_key_or_null } else { same_key };
            keys.iter()
                .enumerate()
                .map(|(n, k)| {
                    m(
                        &format!("t.{}", q(&k.name)),
                        &format!("k.{}", col(n)),
                        &k.desktop,
                    )
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let any_null: Vec<String> = (0..width)
            .map(|n| format!("k.{} IS NULL", col(n)))
            .collect();
        // Keys holding NULL (a scope column without a value) match NULL, in a branch of their own so
        // the others can use the key's index.
        let kept = match open {
            Open::Held => not_kept(t, "t").map_or(String::new(), |w| format!(" WHERE {w}")),
            Open::None => String::new(),
        };
        let rows = format!(
            "SELECT {select} FROM {table} t JOIN k ON {}{joins}{kept} \
             UNION ALL SELECT {select} FROM (SELECT * FROM k WHERE {}) k JOIN {table} t ON {}{joins}{kept}",
            matching(false),
            any_null.join(" OR "),
            matching(true),
        );
        let copy_rows = format!("COPY (WITH {keys_cte} {rows}) TO STDOUT (FORMAT binary)");
        ReadSql {
            copy_keys,
            copy_rows,
        }
    }
}

/// The columns a forward read sends of a row `t` of table `i` (wire-typed, lookups included), and the
/// joins its lookups need.
fn row_select(mapping: &Mapping, i: usize, lookups: Lookups) -> (String, String) {
    let t = &mapping.tables[i];
    let mut select: Vec<String> = t
        .columns
        .iter()
        .map(|c| c.desktop_read(&format!("t.{}", q(&c.name))))
        .collect();
    let (joins, looked_up) = lookup_joins(mapping, i, lookups);
    select.extend(
        t.lookups
            .iter()
            .zip(&looked_up)
            .map(|(lookup, value)| lookup.column.desktop_read(value)),
    );
    (select.join(", "), joins)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::outbox::HORIZONS_SQL;

    #[test]
    fn a_batch_without_open_records_reads_without_looking_for_them() {
        use crate::transform::testing::{odd_keyed, odd_scoped};
        for t in [odd_keyed(), odd_scoped()] {
            let mapping = Mapping {
                tables: vec![t],
                parents_first: vec![0],
            };
            let (held, unheld) = (ReadSql::build(&mapping, 0), ReadSql::unheld(&mapping, 0));
            for sql in [&held.copy_keys, &held.copy_rows] {
                assert!(sql.contains("FROM tandem.conflicts x"), "{sql}");
                assert!(sql.contains("FROM tandem.dead_letters x"), "{sql}");
            }
            for sql in [&unheld.copy_keys, &unheld.copy_rows] {
                assert!(!sql.contains("tandem.conflicts"), "{sql}");
                assert!(!sql.contains("tandem.dead_letters"), "{sql}");
            }
            // Either way, a held key waits for its horizon, read from the batch's setting.
            for sql in [&held.copy_keys, &unheld.copy_keys] {
                assert!(!sql.contains("tandem.table_state"), "{sql}");
                assert!(
                    sql.contains(&format!("current_setting('{HORIZONS_SETTING}')::jsonb")),
                    "{sql}"
                );
            }
        }
        // Whether a table has any is read in the batch's snapshot, with its horizon.
        assert!(HORIZONS_SQL.contains("OR EXISTS (SELECT 1 FROM tandem.dead_letters x"));
    }
}
