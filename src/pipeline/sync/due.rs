//! The initial sync of the tables due (`tandem.table_state`), two at a time (see [`super::lanes`]),
//! and of those that become due while `run` streams.

use std::time::Instant;

use tokio_postgres::Client;

use crate::change::Side;
use crate::config::Config;
use crate::db::{self, Context};
use crate::transform::Mapping;

use super::super::{RunError, Tables};
use super::lanes::{self, Around, LANES, Outcome};
use super::{Quiet, Request, TableReport, Watch, record};

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
    let due: Vec<usize> = mapping
        .parents_first
        .iter()
        .copied()
        .filter(|&i| {
            !snapshot.is_parked(i) && names.contains(&mapping.tables[i].table.desktop.to_string())
        })
        .collect();
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let started = Instant::now();
    let request = Request {
        forward: true,
        reverse: true,
        dry_run: false,
    };
    let around = States {
        desktop: &desktop,
        mapping,
        watch,
    };
    let outcomes =
        lanes::reconcile_tables(config, mapping, &due, request, lanes, watch, &around).await?;
    let reports: Vec<TableReport> = outcomes
        .into_iter()
        .filter_map(|(_, outcome)| outcome.ok().map(|(report, _)| report))
        .collect();
    record(
        &desktop,
        "sync",
        started,
        &serde_json::json!({ "dry_run": false, "tables": reports }),
    )
    .await?;
    Ok(reports)
}

/// A table is `syncing` while its sync runs, `streaming` once it is done, `new` again if it failed.
struct States<'a> {
    desktop: &'a Client,
    mapping: &'a Mapping,
    watch: &'a dyn Watch,
}

impl Around for States<'_> {
    async fn starting(&self, i: usize) -> Result<(), RunError> {
        let name = self.mapping.tables[i].table.desktop.to_string();
        set_state(self.desktop, &name, "syncing").await
    }

    async fn ended(&self, i: usize, outcome: &Outcome) -> Result<(), RunError> {
        let name = self.mapping.tables[i].table.desktop.to_string();
        match outcome {
            Ok((report, _)) => {
                self.watch.finish(report);
                set_state(self.desktop, &name, "streaming").await?;
                tracing::info!(
                    table = %name,
                    to_cloud = report.forward.written(),
                    to_desktop = report.reverse.written(),
                    unchanged = report.forward.unchanged + report.reverse.unchanged,
                    conflicts = report.reverse.conflicts,
                    seconds = report.seconds,
                    "initial sync done; the table streams"
                );
            }
            Err(e) => {
                tracing::error!(table = %name, error = %e, "the table's initial sync failed; it is tried again on the next change of the tables or the next run");
                set_state(self.desktop, &name, "new").await?;
            }
        }
        Ok(())
    }
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
