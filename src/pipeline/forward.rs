//! The forward worker: desktop outbox → cloud, one micro-batch at a time.
//!
//! It sleeps until the capture function's NOTIFY, then drains: each batch takes the oldest outbox rows
//! in a REPEATABLE READ snapshot, pipes the current desktop rows for their keys into the cloud, commits
//! the cloud transaction, and only then deletes those outbox rows (a crash in between re-applies the
//! batch, which changes nothing the second time). A change that arrives when the worker is idle goes out
//! at once; batches grow only while the worker is busy (up to `batch_max_rows` outbox rows).
//!
//! Transient errors (a connection lost, a database restarting, a serialization failure) never stop it:
//! it reconnects with backoff and goes on. A refused row makes the batch run again in careful mode,
//! which sets the row aside as a dead letter. Shutdown lets the batch in flight finish.

use std::time::Instant;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::capture::outbox::{self, NOTIFY_CHANNEL, ReadSql};
use crate::change::Side;
use crate::commit::forward::Forward;
use crate::commit::{BatchOutcome, Direction, Progress, Target};
use crate::config::Config;
use crate::db::{self, Context, Notifications, StatementCache};
use crate::transform::Mapping;

use super::session::{Worker, reconnecting};
use super::{BatchSize, RunError, RunOptions, RunStats, failpoint};

/// The forward direction of `tandem run`. Returns when `shutdown` fires, or with `once` when the
/// outbox holds nothing more from before the start; errors only on what retrying cannot fix.
pub async fn run_forward(
    config: &Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<RunStats, RunError> {
    let mut worker = ForwardWorker {
        config,
        options,
        state: None,
        snapshot: None,
        stats: RunStats::default(),
    };
    reconnecting(&mut worker, &shutdown).await?;
    Ok(worker.stats)
}

/// The connections of one session, with what each holds.
struct Connections {
    desktop: Client,
    desktop_statements: StatementCache,
    cloud: Client,
    target: Target,
}

/// What is built once from the live schemas.
struct Prepared {
    mapping: Mapping,
    read: Vec<ReadSql>,
    plan: Forward,
}

struct ForwardWorker<'a> {
    config: &'a Config,
    options: RunOptions,
    state: Option<Prepared>,
    /// With `once`: the desktop snapshot at start; only changes it sees are applied.
    snapshot: Option<String>,
    stats: RunStats,
}

impl Worker for ForwardWorker<'_> {
    const NAME: &'static str = "forward";

    async fn session(&mut self, shutdown: &CancellationToken) -> Result<(), RunError> {
        self.connected(shutdown).await
    }

    fn progress(&self) -> u64 {
        self.stats.batches
    }

    fn retried(&mut self) {
        self.stats.retries += 1;
    }
}

impl ForwardWorker<'_> {
    /// One connected stretch: connect, drain, wait for notifications, drain again...
    async fn connected(&mut self, shutdown: &CancellationToken) -> Result<(), RunError> {
        let desktop = db::connect(Side::Desktop, &self.config.desktop.url).await?;
        let (listener, mut notifications) =
            db::connect_listener(Side::Desktop, &self.config.desktop.url).await?;
        let cloud = db::connect(Side::Cloud, &self.config.cloud.url).await?;
        if self.state.is_none() {
            let mapping = Mapping::load(self.config, &desktop, &cloud).await?;
            let read = (0..mapping.tables.len())
                .map(|i| ReadSql::build(&mapping, i))
                .collect();
            let plan = Forward::new(&mapping);
            self.state = Some(Prepared {
                mapping,
                read,
                plan,
            });
        }
        let state = self.state.as_ref().expect("prepared above");
        let target = Target::prepare(&cloud, Direction::Forward, state.plan.staging()).await?;
        desktop
            .batch_execute("SET plan_cache_mode = force_custom_plan")
            .await
            .ctx(Side::Desktop, "setting plan_cache_mode")?;
        listener
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await
            .ctx(Side::Desktop, "LISTEN for outbox notifications")?;
        if self.options.once && self.snapshot.is_none() {
            let row = desktop
                .query_one("SELECT pg_current_snapshot()::text", &[])
                .await
                .ctx(Side::Desktop, "reading the current snapshot")?;
            self.snapshot = Some(row.get(0));
        }
        let mut conn = Connections {
            desktop,
            desktop_statements: StatementCache::new(Side::Desktop),
            cloud,
            target,
        };
        let mut size = BatchSize::new(&self.config.sync);
        loop {
            // Drain: batch after batch until the outbox is empty.
            loop {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                let started = Instant::now();
                let limit = size.limit();
                let Some((rows, outcome)) =
                    one_batch(state, &mut conn, limit, self.snapshot.as_deref()).await?
                else {
                    break;
                };
                size.observe(rows, outcome.staged_bytes, started.elapsed());
                self.stats.batches += 1;
                self.stats.outbox_rows += rows;
                self.stats.outcome.add(&outcome);
                tracing::debug!(
                    outbox_rows = rows,
                    staged = outcome.staged_rows,
                    staged_bytes = outcome.staged_bytes,
                    next_limit = size.limit(),
                    written = outcome.written,
                    deleted = outcome.deleted,
                    conflicts = outcome.conflicts,
                    dead_letters = outcome.dead_letters,
                    elapsed = ?started.elapsed(),
                    "forward batch applied"
                );
                // A partial batch took everything visible: whatever commits later sends a NOTIFY.
                if (rows as i64) < limit {
                    break;
                }
            }
            if self.options.once {
                return Ok(());
            }
            wait_for_changes(&mut notifications, shutdown).await?;
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }
}

/// Sleeps until a notification (or shutdown); swallows the others already queued.
async fn wait_for_changes(
    notifications: &mut Notifications,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    tokio::select! {
        // Shutdown first: a notification must not delay it.
        biased;
        _ = shutdown.cancelled() => Ok(()),
        n = notifications.recv() => match n {
            Some(_) => {
                while notifications.try_recv().is_ok() {}
                Ok(())
            }
            None => Err(RunError::ListenerLost),
        },
    }
}

/// One batch; `None` when the outbox had nothing to take.
async fn one_batch(
    state: &Prepared,
    conn: &mut Connections,
    limit: i64,
    snapshot: Option<&str>,
) -> Result<Option<(u64, BatchOutcome)>, RunError> {
    let mapping = &state.mapping;
    let batch = outbox::begin_batch(
        &conn.desktop,
        &mut conn.desktop_statements,
        mapping,
        limit,
        snapshot,
    )
    .await?;
    if batch.is_empty() {
        outbox::finish_batch(&conn.desktop, &mut conn.desktop_statements, &[]).await?;
        return Ok(None);
    }
    if !batch.unconfigured.is_empty() {
        tracing::warn!(
            tables = ?batch.unconfigured,
            "outbox rows of tables that are not configured were dropped; run `tandem init` to remove their triggers"
        );
    }
    let tables = batch.tables(mapping);
    let (first, last) = (batch.ids[0].0, batch.ids[batch.ids.len() - 1].0);
    let batch_id = format!("forward {first}..{last}");
    let (cloud, target) = (&conn.cloud, &mut conn.target);
    target.begin(cloud, tables.iter().copied()).await?;
    let (mut rows, mut bytes) = (0, 0);
    for &i in &tables {
        let staged = state
            .plan
            .stage(
                target,
                i,
                &state.read[i],
                &conn.desktop,
                &mut conn.desktop_statements,
                cloud,
            )
            .await?;
        rows += staged.rows;
        bytes += staged.bytes;
    }
    // The session ends on an error; closing its connections rolls both transactions back.
    let mut outcome = state
        .plan
        .apply(target, cloud, mapping, &tables, &batch.truncated, &batch_id)
        .await?;
    target.commit(cloud, Progress::Forward).await?;
    outcome.staged_rows = rows;
    outcome.staged_bytes = bytes;
    failpoint("after-cloud-commit");
    outbox::finish_batch(&conn.desktop, &mut conn.desktop_statements, &batch.ids).await?;
    Ok(Some((batch.ids.len() as u64, outcome)))
}
