//! The desktop source: batches of `tandem.outbox` rows, and the current desktop rows for their keys.
//!
//! Capture keys, not rows: the capture triggers (installed by [`crate::setup::desktop`]) write which
//! keys (or scopes, for cloud-key tables) a statement touched, old and new. The reader re-reads the
//! current rows for those keys, so the desktop application pays for one small insert per statement, and
//! every apply is idempotent.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::change::{Horizon, OutboxId, QualifiedName, Received, Side, quote_literal};
use crate::expr::{col, group_by, q, same_key, same_key_or_null};

/// The channel the capture function notifies when it wrote to the outbox.
pub const NOTIFY_CHANNEL: &str = "tandem_outbox";
use crate::db::{self, Context, DbError, StatementCache};
use crate::transform::{Mapping, TableMapping};

mod open;
pub use open::{not_held, not_kept};

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
