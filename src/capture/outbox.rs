//! The desktop source: batches of `tandem.outbox` rows, and the current desktop rows for their keys.
//!
//! Capture keys, not rows: the capture triggers (installed by [`crate::setup::desktop`]) write which
//! keys (or scopes, for cloud-key tables) a statement touched, old and new. The reader re-reads the
//! current rows for those keys, so the desktop application pays for one small insert per statement, and
//! every apply is idempotent.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::change::{OutboxId, Side, quote_ident, quote_literal};

/// The channel the capture function notifies when it wrote to the outbox.
pub const NOTIFY_CHANNEL: &str = "tandem_outbox";
use crate::db::{self, Context, DbError, StatementCache};
use crate::transform::{Mapping, TableMapping};

// ---------------------------------------------------------------------------------------------------
// Reading: batches of outbox rows, and the current desktop rows for their keys.

/// The outbox rows of one batch: all visible rows with the lowest ids, up to a limit. Read in a
/// REPEATABLE READ snapshot, so "ids from `min` to `max` that pass the same filter" is exactly this set
/// for every query of the snapshot; deleted afterwards by the exact ids, never by a range (a
/// transaction still in flight may commit a lower id later).
#[derive(Debug, Default)]
pub struct OutboxBatch {
    pub ids: Vec<OutboxId>,
    /// Mapping indexes of the tables with keys in the batch.
    pub keyed: BTreeSet<usize>,
    /// Mapping indexes of the tables truncated in the batch.
    pub truncated: BTreeSet<usize>,
    /// Rows for tables that are not configured (triggers left from an older config).
    pub unconfigured: Vec<String>,
}

impl OutboxBatch {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Tables to write: those in the batch, and those whose lookups read from them.
    pub fn tables(&self, mapping: &Mapping) -> BTreeSet<usize> {
        let mut tables: BTreeSet<usize> = self.keyed.union(&self.truncated).copied().collect();
        for i in tables.clone() {
            tables.extend(mapping.dependents_of(i));
        }
        tables
    }
}

/// The session settings the batch's queries read (set transaction-locally).
const MIN_SETTING: &str = "tandem.batch_min_id";
const MAX_SETTING: &str = "tandem.batch_max_id";
const SNAPSHOT_SETTING: &str = "tandem.batch_snapshot";

/// The oldest `$1` outbox rows (of transactions snapshot `$2` sees, unless `$2` is empty), and the batch
/// bounds set for the snapshot's later queries, in one round trip.
const BATCH_SQL: &str = "WITH batch AS (
        SELECT id, table_schema, table_name, op::text AS op FROM tandem.outbox
         WHERE ($2 = '' OR pg_visible_in_snapshot(xid, $2::pg_snapshot))
         ORDER BY id LIMIT $1),
     bounds AS (
        SELECT set_config('tandem.batch_min_id', coalesce(min(id), 0)::text, true),
               set_config('tandem.batch_max_id', coalesce(max(id), 0)::text, true),
               set_config('tandem.batch_snapshot', $2, true)
          FROM batch)
     SELECT b.id, b.table_schema, b.table_name, b.op FROM batch b, bounds ORDER BY b.id";

/// Begins the batch's REPEATABLE READ transaction on the desktop and takes up to `limit` outbox rows in
/// it. With `snapshot` (a `pg_snapshot` text), only rows of transactions that snapshot sees: `run
/// --once` drains what was committed when it started and stops. The transaction stays open (its
/// snapshot is what the batch's rows are read from) until [`finish_batch`].
pub async fn begin_batch(
    client: &Client,
    statements: &mut StatementCache,
    mapping: &Mapping,
    limit: i64,
    snapshot: Option<&str>,
) -> Result<OutboxBatch, DbError> {
    let snapshot = snapshot.unwrap_or("");
    let statement = statements.get(client, BATCH_SQL).await?;
    // One round trip: BEGIN and the batch query are pipelined.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&limit, &snapshot];
    // One round trip: BEGIN and the batch query are pipelined.
    let begin = statements
        .get(client, "BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    let mut results = db::pipelined(vec![
        client.query(&begin, &[]),
        client.query(&statement, &params),
    ])
    .await;
    let rows = results
        .pop()
        .expect("two results")
        .ctx(Side::Desktop, "reading a batch from tandem.outbox")?;
    results
        .pop()
        .expect("two results")
        .ctx(Side::Desktop, "beginning the batch snapshot")?;
    let mut batch = OutboxBatch::default();
    for row in &rows {
        batch.ids.push(OutboxId(row.get(0)));
        let (schema, name, op): (&str, &str, &str) = (row.get(1), row.get(2), row.get(3));
        match mapping.position(schema, name) {
            Some(i) if op == "T" => {
                batch.truncated.insert(i);
            }
            Some(i) => {
                batch.keyed.insert(i);
            }
            None => batch.unconfigured.push(format!("{schema}.{name}")),
        }
    }
    Ok(batch)
}

/// Deletes a batch's outbox rows by id and ends the desktop transaction: called once the cloud
/// transaction that applied them committed. An empty batch just ends the transaction.
pub async fn finish_batch(
    client: &Client,
    statements: &mut StatementCache,
    ids: &[OutboxId],
) -> Result<(), DbError> {
    if ids.is_empty() {
        return client
            .batch_execute("COMMIT")
            .await
            .ctx(Side::Desktop, "ending the batch snapshot");
    }
    let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
    let statement = statements
        .get(client, "DELETE FROM tandem.outbox WHERE id = ANY($1)")
        .await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids];
    let commit = statements.get(client, "COMMIT").await?;
    let mut results = db::pipelined(vec![
        client.execute(&statement, &params),
        client.execute(&commit, &[]),
    ])
    .await;
    results
        .pop()
        .expect("two results")
        .ctx(Side::Desktop, "committing the outbox delete")?;
    results
        .pop()
        .expect("two results")
        .ctx(Side::Desktop, "deleting applied rows from tandem.outbox")?;
    Ok(())
}

/// The outbox rows of the current batch for one table; `truncate` selects its TRUNCATE rows instead.
fn batch_rows(table: &TableMapping, truncate: bool) -> String {
    format!(
        "tandem.outbox o WHERE o.id BETWEEN current_setting('{MIN_SETTING}')::bigint AND current_setting('{MAX_SETTING}')::bigint \
         AND (current_setting('{SNAPSHOT_SETTING}') = '' OR pg_visible_in_snapshot(o.xid, current_setting('{SNAPSHOT_SETTING}')::pg_snapshot)) \
         AND o.table_schema = {} AND o.table_name = {} AND o.op {} 'T'",
        quote_literal(&table.table.desktop.schema),
        quote_literal(&table.table.desktop.name),
        if truncate { "=" } else { "<>" }
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

impl ReadSql {
    pub fn build(mapping: &Mapping, i: usize) -> ReadSql {
        let t = &mapping.tables[i];
        let keys = t.key_columns();
        let cast_keys: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(n, k)| {
                format!(
                    "(o.row_key[{}])::{} AS {}",
                    n + 1,
                    k.desktop_base,
                    quote_ident(&k.name)
                )
            })
            .collect();
        let key_list: Vec<String> = keys
            .iter()
            .map(|k| format!("d.{}", quote_ident(&k.name)))
            .collect();
        let mut sources = vec![format!(
            "SELECT {} FROM {}",
            cast_keys.join(", "),
            batch_rows(t, false)
        )];
        // A change of a row a lookup reads is a change of the rows that read it.
        for lookup in &t.lookups {
            let from = &mapping.tables[lookup.from];
            let from_key = &from.key_columns()[0];
            let on = quote_ident(&lookup.on);
            sources.push(format!(
                "SELECT {} FROM {} d WHERE d.{on} IN (SELECT (o.row_key[1])::{} FROM {})",
                key_list.join(", "),
                t.table.desktop.quoted(),
                from_key.desktop_base,
                batch_rows(from, false)
            ));
            sources.push(format!(
                "SELECT {} FROM {} d WHERE EXISTS (SELECT 1 FROM {})",
                key_list.join(", "),
                t.table.desktop.quoted(),
                batch_rows(from, true)
            ));
        }
        let keys_cte = format!(
            "k AS (SELECT DISTINCT * FROM ({}) u)",
            sources.join(" UNION ")
        );

        let wire_keys: Vec<String> = keys.iter().map(|k| k.desktop_expr("k")).collect();
        let copy_keys = format!(
            "COPY (WITH {keys_cte} SELECT {} FROM k) TO STDOUT (FORMAT binary)",
            wire_keys.join(", ")
        );

        let mut select: Vec<String> = t.columns.iter().map(|c| c.desktop_expr("t")).collect();
        let mut joins = String::new();
        for (n, lookup) in t.lookups.iter().enumerate() {
            let from = &mapping.tables[lookup.from];
            let on = quote_ident(&lookup.on);
            joins.push_str(&format!(
                " LEFT JOIN LATERAL (SELECT l.{col} FROM {from} l WHERE l.{on} = t.{on} LIMIT 1) lk{n} ON true",
                col = quote_ident(&lookup.column.name),
                from = from.table.desktop.quoted(),
            ));
            select.push(lookup.column.desktop_expr(&format!("lk{n}")));
        }
        let eq: Vec<String> = keys
            .iter()
            .map(|k| format!("t.{0} = k.{0}", quote_ident(&k.name)))
            .collect();
        let mut rows = format!(
            "SELECT {} FROM {} t JOIN k ON {}{joins}",
            select.join(", "),
            t.table.desktop.quoted(),
            eq.join(" AND ")
        );
        // Keys holding NULL (a scope column without a value) match by IS NOT DISTINCT FROM.
        let null_safe: Vec<String> = keys
            .iter()
            .map(|k| format!("t.{0} IS NOT DISTINCT FROM k.{0}", quote_ident(&k.name)))
            .collect();
        let any_null: Vec<String> = keys
            .iter()
            .map(|k| format!("k.{} IS NULL", quote_ident(&k.name)))
            .collect();
        rows.push_str(&format!(
            " UNION ALL SELECT {} FROM (SELECT * FROM k WHERE {}) k JOIN {} t ON {}{joins}",
            select.join(", "),
            any_null.join(" OR "),
            t.table.desktop.quoted(),
            null_safe.join(" AND ")
        ));
        let copy_rows = format!("COPY (WITH {keys_cte} {rows}) TO STDOUT (FORMAT binary)");
        ReadSql {
            copy_keys,
            copy_rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_query_sets_the_bounds_the_other_queries_read() {
        for setting in [MIN_SETTING, MAX_SETTING, SNAPSHOT_SETTING] {
            assert!(
                BATCH_SQL.contains(&format!("set_config('{setting}'")),
                "{setting}"
            );
        }
    }
}
