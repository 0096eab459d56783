//! The initial sync of the tables due, two at a time: each on a lane of its own sessions (a
//! [`Writer`]). Most of a small table's sync is round trips, and most of a big one's is one statement
//! the cloud runs on one core: the other lane syncs small tables meanwhile. A table starts once every
//! table its cloud foreign keys reference is synced (its rows' checks find their parents), in
//! `parents_first` order otherwise. Only the first lane takes the forward applier lock; the second
//! applies directly only beside it (the lock is this process's while both run), so one forward
//! applier at a time still holds.

use std::collections::BTreeSet;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio_postgres::Client;

use crate::change::Side;
use crate::config::Config;
use crate::db::{self, Context};
use crate::transform::Mapping;

use super::super::{RunError, Tables};
use super::{Quiet, Request, TableReport, Watch, Writer, record, table};

/// Tables synced at a time.
const LANES: usize = 2;

/// Syncs the tables whose initial sync is due (`tandem.table_state.synced_at` is NULL: `init` added
/// them, or made a new slot) and that are not parked, both ways. A table is `syncing` while its scan
/// runs and `streaming` once its repairs are written and its forward keys applied or handed to the
/// outbox (the forward worker applies those in order with every captured change). A table whose sync
/// fails stays due, and the others go on.
pub async fn due(
    config: &Config,
    tables: &Tables,
    watch: &dyn Watch,
) -> Result<Vec<TableReport>, RunError> {
    due_on(config, tables, watch, LANES).await
}

/// [`due`] on at most `lanes` lanes.
async fn due_on(
    config: &Config,
    tables: &Tables,
    watch: &dyn Watch,
    lanes: usize,
) -> Result<Vec<TableReport>, RunError> {
    let snapshot = tables.snapshot();
    let mapping = &snapshot.mapping;
    let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let names: Vec<String> = desktop
        .query(
            "SELECT table_name FROM tandem.table_state WHERE synced_at IS NULL",
            &[],
        )
        .await
        .ctx(Side::Desktop, "reading which tables are due to sync")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut waiting: Vec<usize> = mapping
        .parents_first
        .iter()
        .copied()
        .filter(|&i| {
            !snapshot.is_parked(i) && names.contains(&mapping.tables[i].table.desktop.to_string())
        })
        .collect();
    if waiting.is_empty() {
        return Ok(Vec::new());
    }
    let started = Instant::now();
    let lanes = lanes.min(waiting.len());
    let (mut idle, parents) = tokio::try_join!(
        Writer::lanes(config, mapping, lanes),
        cloud_parents(config, mapping)
    )?;
    // Only tables before it in the order count as a table's parents: a cycle of foreign keys never
    // has two tables wait for each other.
    let parents: Vec<Vec<usize>> = (0..parents.len())
        .map(|i| {
            let at = waiting.iter().position(|&w| w == i);
            parents[i]
                .iter()
                .copied()
                .filter(|p| waiting.iter().position(|w| w == p) < at)
                .collect()
        })
        .collect();
    let (synced, _) = tokio::sync::watch::channel(BTreeSet::new());
    let mut running = FuturesUnordered::new();
    let mut reports = Vec::new();
    // A failed lane that held the forward lock: every lane starts again once none runs.
    let mut broken = None;
    loop {
        if broken.is_some() && running.is_empty() && !waiting.is_empty() {
            let writers: Vec<Writer> = broken.take().into_iter().chain(idle.drain(..)).collect();
            for writer in writers {
                writer.close().await;
            }
            idle = Writer::lanes(config, mapping, lanes).await?;
        }
        while broken.is_none() && !idle.is_empty() {
            // A table starts once its parents have: it scans and stages meanwhile, and writes once
            // they are synced (see [`Gate`]).
            let ready = waiting
                .iter()
                .position(|i| parents[*i].iter().all(|p| !waiting.contains(p)));
            let Some(at) = ready else { break };
            let i = waiting.remove(at);
            let mut writer = idle.pop().expect("a lane is idle");
            writer.gate = Some(Gate {
                parents: parents[i].clone(),
                synced: synced.subscribe(),
            });
            running.push(lane(config, mapping, i, writer, watch, &desktop));
        }
        let Some(finished) = running.next().await else {
            break;
        };
        let (i, writer, report) = finished?;
        synced.send_modify(|s| {
            s.insert(i);
        });
        match report {
            Some(report) => {
                reports.push(report);
                idle.push(writer);
            }
            None if writer.holds_lock() => broken = Some(writer),
            None => {
                // Its sessions may be in a failed transaction: new ones, beside the lock's holder.
                let direct = writer.applies_directly();
                writer.close().await;
                idle.push(Writer::beside(config, mapping, direct).await?);
            }
        }
    }
    for writer in broken.into_iter().chain(idle) {
        writer.close().await;
    }
    record(
        &desktop,
        "sync",
        started,
        &serde_json::json!({ "dry_run": false, "tables": reports }),
    )
    .await?;
    Ok(reports)
}

/// What a table's writes wait for: the tables its rows reference (its cloud foreign keys) being
/// synced, or failed. Waited for before the desktop repairs (a child's desktop rows after its
/// parents') and before the forward writes.
pub(super) struct Gate {
    parents: Vec<usize>,
    synced: tokio::sync::watch::Receiver<BTreeSet<usize>>,
}

impl Gate {
    pub(super) async fn open(mut self) {
        let parents = self.parents;
        // The sender lives as long as the sync: an error only means it ended.
        let _ = self
            .synced
            .wait_for(|synced| parents.iter().all(|p| synced.contains(p)))
            .await;
    }
}

/// One table's initial sync on a lane: the table, the lane's writer, and its report (`None`: it
/// failed, and stays due).
async fn lane(
    config: &Config,
    mapping: &Mapping,
    i: usize,
    mut writer: Writer,
    watch: &dyn Watch,
    desktop: &Client,
) -> Result<(usize, Writer, Option<TableReport>), RunError> {
    let name = mapping.tables[i].table.desktop.to_string();
    set_state(desktop, &name, "syncing").await?;
    let request = Request {
        forward: true,
        reverse: true,
        dry_run: false,
    };
    match table(config, mapping, i, request, &mut writer, watch).await {
        Ok((report, _)) => {
            watch.finish(&report);
            set_state(desktop, &name, "streaming").await?;
            tracing::info!(
                table = %name,
                to_cloud = report.forward.written(),
                to_desktop = report.reverse.written(),
                unchanged = report.forward.unchanged + report.reverse.unchanged,
                conflicts = report.reverse.conflicts,
                seconds = report.seconds,
                "initial sync done; the table streams"
            );
            Ok((i, writer, Some(report)))
        }
        Err(e) => {
            tracing::error!(table = %name, error = %e, "the table's initial sync failed; it is tried again on the next change of the tables or the next run");
            set_state(desktop, &name, "new").await?;
            Ok((i, writer, None))
        }
    }
}

/// The configured tables each configured table's cloud foreign keys reference (itself excluded), by
/// mapping index.
async fn cloud_parents(config: &Config, mapping: &Mapping) -> Result<Vec<Vec<usize>>, RunError> {
    let cloud = db::connect(Side::Cloud, &config.cloud.url).await?;
    let names: Vec<String> = mapping
        .tables
        .iter()
        .map(|t| t.table.cloud.quoted())
        .collect();
    let rows = cloud
        .query(
            "SELECT t.n::int, p.n::int
               FROM unnest($1::text[]) WITH ORDINALITY AS t(name, n)
               JOIN pg_catalog.pg_constraint c ON c.contype = 'f' AND c.conrelid = to_regclass(t.name)
               JOIN unnest($1::text[]) WITH ORDINALITY AS p(name, n) ON c.confrelid = to_regclass(p.name)
              WHERE t.n <> p.n",
            &[&names],
        )
        .await
        .ctx(
            Side::Cloud,
            "reading the configured tables' foreign keys from pg_constraint",
        )?;
    let mut parents = vec![Vec::new(); names.len()];
    for row in rows {
        let (child, parent): (i32, i32) = (row.get(0), row.get(1));
        parents[child as usize - 1].push(parent as usize - 1);
    }
    Ok(parents)
}

async fn set_state(desktop: &Client, table: &str, state: &str) -> Result<(), RunError> {
    desktop
        .execute(
            "UPDATE tandem.table_state SET state = $2, since = now(),
                    synced_at = CASE WHEN $2 = 'streaming' THEN now() ELSE synced_at END
              WHERE table_name = $1 AND state <> 'parked'",
            &[&table, &state],
        )
        .await
        .ctx(
            Side::Desktop,
            format!("recording {table} as {state} in tandem.table_state"),
        )?;
    Ok(())
}

/// Syncs the tables that become due while `run` streams (a table `init` added, picked up by the
/// recheck), once both workers run with the tables that include them: a phone's change after the scan
/// is then received by a session that knows the table.
pub async fn syncing(
    config: Config,
    tables: std::sync::Arc<Tables>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut changes = tables.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let generation = changes.borrow_and_update().generation;
        if !tables.workers_at(generation, &shutdown).await {
            return;
        }
        // A reverse worker counts as running once its session started, a moment before its stream
        // is: a cut taken then would not wait for the stream to reach it (`Cut::make`), and the
        // stream could bring a mobile row the scan brings too.
        if let Err(e) = stream_active(&config, &shutdown).await {
            tracing::warn!(error = %e, "reading whether the reverse stream runs failed; syncing anyway");
        }
        // One table at a time beside streaming workers: as fast as it needs to be, and every cut is
        // reached before the next is taken.
        if let Err(e) = due_on(&config, &tables, &Quiet, 1).await {
            tracing::warn!(error = %e, "syncing the tables due failed; trying again on the next change");
        }
    }
}

/// Waits (at most [`STREAM_DEADLINE`]) until the run's slot streams to a walsender.
async fn stream_active(
    config: &Config,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(), RunError> {
    let cloud = db::connect(Side::Cloud, &config.cloud.url).await?;
    let deadline = Instant::now() + STREAM_DEADLINE;
    while !shutdown.is_cancelled() && Instant::now() < deadline {
        let active: Option<bool> = cloud
            .query_opt(
                "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&config.cloud.slot],
            )
            .await
            .ctx(
                Side::Cloud,
                format!("reading replication slot {}", config.cloud.slot),
            )?
            .and_then(|r| r.get(0));
        if active == Some(true) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// How long [`syncing`] waits for the reverse stream to run before it syncs anyway.
const STREAM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
