//! The desktop source: batches of `tandem.outbox` rows, and the current desktop rows for their keys.
//!
//! Capture keys, not rows: the capture triggers (installed by [`crate::setup::desktop`]) write which
//! keys (or scopes, for cloud-key tables) a statement touched, old and new. The reader re-reads the
//! current rows for those keys, so the desktop application pays for one small insert per statement, and
//! every apply is idempotent.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::change::{Horizon, OutboxId, QualifiedName, Received, Side};

/// The channel the capture function notifies when it wrote to the outbox.
pub const NOTIFY_CHANNEL: &str = "tandem_outbox";
use crate::db::{self, Context, DbError, StatementCache};
use crate::transform::Mapping;

mod open;
mod read;
pub use open::{image, not_held, not_kept};
pub use read::{Lookups, ReadSql, key_list, lookup_joins};

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
    /// When the oldest change in the batch was captured (its transaction's start on the desktop).
    pub oldest: Option<std::time::SystemTime>,
    /// Each table's horizon (by mapping index), as the batch's snapshot has it.
    pub horizons: Vec<Received>,
    /// The tables without an open reverse conflict or dead letter in the batch's snapshot: their
    /// reads are [`ReadSql::unheld`].
    pub unheld: BTreeSet<usize>,
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
/// The tables' horizons' next transaction ids, as a JSON object by table name.
const HORIZONS_SETTING: &str = "tandem.batch_horizons";

/// The oldest `$1` outbox rows (of transactions snapshot `$2` sees, unless `$2` is empty) of tables
/// `($3, $4)` (schemas and names of the tables that stream: a parked table's rows wait, and so do those of
/// a table `init` added before this run picked it up), and the batch bounds set for the snapshot's later
/// queries, in one round trip. The tables' horizons are read once a statement (an uncorrelated
/// subquery): as a subquery per outbox row, the planner's estimate for 50,000 rows passed
/// `jit_above_cost`, and compiling the query took 0.2 s a batch. They are kept for the snapshot's
/// reads too ([`HORIZONS_SETTING`]): a subquery in each read cost it more planning than running.
const BATCH_SQL: &str = "WITH horizons AS (
        SELECT coalesce(jsonb_object_agg(ts.table_name, split_part(ts.horizon, ':', 2)), '{}') AS next
          FROM tandem.table_state ts WHERE ts.horizon IS NOT NULL),
     batch AS (
        SELECT id, table_schema, table_name, op::text AS op, captured_at FROM tandem.outbox o
         WHERE ($2 = '' OR pg_visible_in_snapshot(xid, $2::pg_snapshot))
           AND (table_schema, table_name) IN (SELECT * FROM unnest($3::text[], $4::text[]))
           AND (o.wait_for IS NULL OR o.wait_for <= ((SELECT h.next FROM horizons h)
                  ->> CASE WHEN o.table_schema = 'public' THEN o.table_name
                           ELSE o.table_schema || '.' || o.table_name END)::bigint)
         ORDER BY id LIMIT $1),
     bounds AS (
        SELECT set_config('tandem.batch_min_id', coalesce(min(id), 0)::text, true),
               set_config('tandem.batch_max_id', coalesce(max(id), 0)::text, true),
               set_config('tandem.batch_snapshot', $2, true),
               set_config('tandem.batch_horizons', (SELECT h.next FROM horizons h)::text, true)
          FROM batch)
     SELECT b.id, b.table_schema, b.table_name, b.op, b.captured_at FROM batch b, bounds ORDER BY b.id";

/// The tables whose outbox rows a batch takes (those that stream), as the batch query takes them.
#[derive(Debug, Clone, Default)]
pub struct Taken {
    schemas: Vec<String>,
    names: Vec<String>,
}

impl Taken {
    pub fn new(tables: &[&crate::change::QualifiedName]) -> Self {
        Taken {
            schemas: tables.iter().map(|t| t.schema.clone()).collect(),
            names: tables.iter().map(|t| t.name.clone()).collect(),
        }
    }
}

/// Begins the batch's REPEATABLE READ transaction on the desktop and takes up to `limit` outbox rows in
/// it, of `taken` tables only. With `snapshot` (a `pg_snapshot` text), only rows of transactions that snapshot sees: `run
/// --once` drains what was committed when it started and stops. The transaction stays open (its
/// snapshot is what the batch's rows are read from) until [`finish_batch`].
pub async fn begin_batch(
    client: &Client,
    statements: &mut StatementCache,
    mapping: &Mapping,
    limit: i64,
    snapshot: Option<&str>,
    taken: &Taken,
) -> Result<OutboxBatch, DbError> {
    let snapshot = snapshot.unwrap_or("");
    let statement = statements.get(client, BATCH_SQL).await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&limit, &snapshot, &taken.schemas, &taken.names];
    // One round trip: BEGIN, the batch query and the horizons are pipelined.
    let begin = statements
        .get(client, "BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    let horizons = statements.get(client, HORIZONS_SQL).await?;
    let mut results = db::pipelined(vec![
        client.query(&begin, &[]),
        client.query(&statement, &params),
        client.query(&horizons, &[]),
    ])
    .await;
    let horizons = results
        .pop()
        .expect("three results")
        .ctx(Side::Desktop, "reading the tables' horizons")?;
    let rows = results
        .pop()
        .expect("three results")
        .ctx(Side::Desktop, "reading a batch from tandem.outbox")?;
    results
        .pop()
        .expect("three results")
        .ctx(Side::Desktop, "beginning the batch snapshot")?;
    let mut batch = OutboxBatch {
        horizons: table_horizons(mapping, &horizons),
        unheld: unheld(mapping, &horizons),
        ..OutboxBatch::default()
    };
    for row in &rows {
        batch.ids.push(OutboxId(row.get(0)));
        let captured: std::time::SystemTime = row.get(4);
        batch.oldest = Some(batch.oldest.map_or(captured, |o| o.min(captured)));
        let (schema, name, op): (&str, &str, &str) = (row.get(1), row.get(2), row.get(3));
        match mapping.position(schema, name) {
            Some(i) if op == "T" => {
                batch.truncated.insert(i);
            }
            Some(i) => {
                batch.keyed.insert(i);
            }
            None => {}
        }
    }
    Ok(batch)
}

/// Every table's horizon (`tandem.table_state`; NULL: none yet), with the cloud keys its open
/// conflicts by concurrency keep (see [`Received`]; NULL when none, as for a desktop-key table, whose
/// records name its key), and whether it has an open reverse conflict or dead letter at all (without
/// one, a batch's reads need not look for them: see [`ReadSql::unheld`]).
pub const HORIZONS_SQL: &str = "SELECT ts.table_name, ts.horizon, \
       (SELECT jsonb_agg(DISTINCT x.row_key ->> 'cloud_key') FROM tandem.conflicts x \
         WHERE x.resolved_at IS NULL AND x.table_name = ts.table_name AND x.direction = 'reverse' \
           AND x.kind IS NOT NULL AND x.row_key ? 'cloud_key')::text, \
       EXISTS (SELECT 1 FROM tandem.conflicts x WHERE x.resolved_at IS NULL AND x.direction = 'reverse' \
                  AND x.table_name = ts.table_name) \
       OR EXISTS (SELECT 1 FROM tandem.dead_letters x WHERE x.resolved_at IS NULL AND x.direction = 'reverse' \
                     AND x.table_name = ts.table_name) \
  FROM tandem.table_state ts";

/// What [`HORIZONS_SQL`] read, by mapping index.
pub fn table_horizons(mapping: &Mapping, rows: &[tokio_postgres::Row]) -> Vec<Received> {
    let mut out = vec![Received::default(); mapping.tables.len()];
    for (i, row) in of_tables(mapping, rows) {
        out[i] = Received {
            horizon: row
                .get::<_, Option<String>>(1)
                .as_deref()
                .and_then(Horizon::parse),
            kept: row.get(2),
        };
    }
    out
}

/// The tables [`HORIZONS_SQL`] read no open reverse conflict or dead letter of.
fn unheld(mapping: &Mapping, rows: &[tokio_postgres::Row]) -> BTreeSet<usize> {
    of_tables(mapping, rows)
        .filter(|(_, row)| !row.get::<_, bool>(3))
        .map(|(i, _)| i)
        .collect()
}

/// The rows of [`HORIZONS_SQL`] of configured tables, with their mapping indexes.
fn of_tables<'a>(
    mapping: &'a Mapping,
    rows: &'a [tokio_postgres::Row],
) -> impl Iterator<Item = (usize, &'a tokio_postgres::Row)> {
    rows.iter().filter_map(|row| {
        let name: &str = row.get(0);
        let i = mapping
            .tables
            .iter()
            .position(|t| t.table.desktop.to_string() == name)?;
        Some((i, row))
    })
}

/// Whether the outbox holds rows of transactions `snapshot` sees, of `taken` tables.
pub async fn pending(client: &Client, snapshot: &str, taken: &Taken) -> Result<bool, DbError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM tandem.outbox
              WHERE pg_visible_in_snapshot(xid, $1::text::pg_snapshot)
                AND (table_schema, table_name) IN (SELECT * FROM unnest($2::text[], $3::text[])))",
            &[&snapshot, &taken.schemas, &taken.names],
        )
        .await
        .ctx(Side::Desktop, "reading what tandem.outbox still holds")?;
    Ok(row.get(0))
}

/// Keys of one table a batch held back (see `tandem.outbox.wait_for`): the cloud row holds a phone's
/// change the desktop had not received when the batch read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub table: QualifiedName,
    /// Each key's (or scope's) values as the capture triggers write them.
    pub keys: Vec<Vec<Option<String>>>,
    /// The cloud transaction id (xid8) the table's horizon must reach before they are taken again.
    pub wait_for: i64,
}

/// Puts held keys back into the outbox, waiting for their horizon, with the time and transaction of
/// the desktop change the batch took them for (a conflict settled later compares that time), and
/// `I` for a key only inserted, `D` for one a change of which deleted a row, `U` otherwise (a
/// reconcile tells a row the desktop never had from one it changed by that: see
/// `commit::reconcile::Waiting`; the reverse plan finds a cloud-key table's `delete/update` only in
/// a scope the desktop deleted a row of: see `commit::reverse::sql::scoped`). A key already waiting
/// (held before, changed again since) waits once, with the later change's time.
const HOLD_SQL: &str = "WITH k AS (SELECT ARRAY(SELECT jsonb_array_elements_text(e)) AS key
                  FROM jsonb_array_elements($3::text::jsonb) e),
          b AS (SELECT k.key, coalesce(w.xid, pg_current_xact_id()) AS xid, coalesce(w.captured_at, now()) AS captured_at,
                       CASE WHEN w.inserted THEN 'I' WHEN w.deleted THEN 'D' ELSE 'U' END::\"char\" AS op
                  FROM k LEFT JOIN LATERAL (SELECT (array_agg(o.xid ORDER BY o.id DESC))[1] AS xid,
                                                   max(o.captured_at) AS captured_at, bool_and(o.op = 'I') AS inserted,
                                                   bool_or(o.op = 'D') AS deleted
                                              FROM tandem.outbox o
                                             WHERE o.id = ANY($5) AND o.table_schema = $1 AND o.table_name = $2
                                               AND o.row_key = k.key) w ON true),
          waiting AS (UPDATE tandem.outbox o SET wait_for = $4, xid = b.xid,
                             captured_at = greatest(o.captured_at, b.captured_at),
                             op = CASE WHEN o.op = 'I' AND b.op = 'I' THEN 'I' WHEN 'D' IN (o.op, b.op) THEN 'D' ELSE 'U' END::\"char\"
                        FROM b WHERE o.table_schema = $1 AND o.table_name = $2 AND o.row_key = b.key
                         AND o.wait_for IS NOT NULL AND NOT o.id = ANY($5)
                      RETURNING o.row_key)
     INSERT INTO tandem.outbox (table_schema, table_name, op, row_key, xid, captured_at, wait_for)
     SELECT $1, $2, b.op, b.key, b.xid, b.captured_at, $4 FROM b
      WHERE NOT EXISTS (SELECT 1 FROM waiting w WHERE w.row_key = b.key)";

/// Puts held keys into the outbox outside a batch (a reconcile applying directly): their changes'
/// times are not known any more, so now.
pub async fn hold(client: &Client, held: &[Held]) -> Result<(), DbError> {
    let none: Vec<i64> = Vec::new();
    for h in held.iter().filter(|h| !h.keys.is_empty()) {
        let keys = serde_json::to_string(&h.keys).expect("strings serialize");
        client
            .execute(
                HOLD_SQL,
                &[&h.table.schema, &h.table.name, &keys, &h.wait_for, &none],
            )
            .await
            .ctx(Side::Desktop, "putting held keys back into tandem.outbox")?;
    }
    Ok(())
}

/// Deletes a batch's outbox rows by id, puts back the keys it held, and ends the desktop transaction:
/// called once the cloud transaction that applied them committed. An empty batch just ends the
/// transaction.
pub async fn finish_batch(
    client: &Client,
    statements: &mut StatementCache,
    ids: &[OutboxId],
    held: &[Held],
) -> Result<(), DbError> {
    if ids.is_empty() {
        return client
            .batch_execute("COMMIT")
            .await
            .ctx(Side::Desktop, "ending the batch snapshot");
    }
    let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
    let hold = statements.get(client, HOLD_SQL).await?;
    let holding: Vec<(String, String, String)> = held
        .iter()
        .filter(|h| !h.keys.is_empty())
        .map(|h| {
            let keys = serde_json::to_string(&h.keys).expect("strings serialize");
            (h.table.schema.clone(), h.table.name.clone(), keys)
        })
        .collect();
    let statement = statements
        .get(client, "DELETE FROM tandem.outbox WHERE id = ANY($1)")
        .await?;
    let commit = statements.get(client, "COMMIT").await?;
    let hold_params: Vec<Vec<&(dyn tokio_postgres::types::ToSql + Sync)>> = holding
        .iter()
        .zip(held.iter().filter(|h| !h.keys.is_empty()))
        .map(|((schema, name, keys), h)| {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                vec![schema, name, keys, &h.wait_for, &ids];
            params
        })
        .collect();
    let delete_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids];
    let mut pipeline = Vec::new();
    for params in &hold_params {
        pipeline.push(client.execute(&hold, params));
    }
    pipeline.push(client.execute(&statement, &delete_params));
    pipeline.push(client.execute(&commit, &[]));
    let mut results = db::pipelined(pipeline).await;
    results
        .pop()
        .expect("the commit's result")
        .ctx(Side::Desktop, "committing the outbox delete")?;
    results
        .pop()
        .expect("the delete's result")
        .ctx(Side::Desktop, "deleting applied rows from tandem.outbox")?;
    for held in results {
        held.ctx(Side::Desktop, "putting held keys back into tandem.outbox")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_query_sets_the_bounds_the_other_queries_read() {
        for setting in [MIN_SETTING, MAX_SETTING, SNAPSHOT_SETTING, HORIZONS_SETTING] {
            assert!(
                BATCH_SQL.contains(&format!("set_config('{setting}'")),
                "{setting}"
            );
        }
    }
}
