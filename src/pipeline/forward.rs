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

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::capture::outbox::{self, NOTIFY_CHANNEL, ReadSql};
use crate::change::QualifiedName;
use crate::change::Side;
use crate::commit::forward::Forward;
use crate::commit::forward::Sending;
use crate::commit::{BatchOutcome, Direction, Staged, Target};
use crate::config::Config;
use crate::db::{self, Context, Notifications, StatementCache};
use crate::transform::Mapping;

use super::session::{Worker, reconnecting};
use super::tables::{Snapshot, Tables, WorkerId};
use super::{BatchSize, RunError, RunOptions, RunStats, failpoint, parks};

/// The forward direction of `tandem run`. Returns when `shutdown` fires, or with `once` when the
/// outbox holds nothing more from before the start; errors only on what retrying cannot fix.
pub async fn run_forward(
    config: &Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<RunStats, RunError> {
    let tables = Tables::start(config).await?;
    run_forward_with(config, options, tables, shutdown).await
}

/// [`run_forward`] with the table states of a run both directions share.
pub async fn run_forward_with(
    config: &Config,
    options: RunOptions,
    tables: Arc<Tables>,
    shutdown: CancellationToken,
) -> Result<RunStats, RunError> {
    let mut worker = ForwardWorker {
        config,
        options,
        changes: tables.subscribe(),
        tables,
        state: None,
        once_snapshot: None,
        stats: RunStats::default(),
    };
    reconnecting(&mut worker, &shutdown, options.broken_retry(&config.sync)).await?;
    Ok(worker.stats)
}

/// The connections of one session, with what each holds.
struct Connections {
    desktop: Client,
    desktop_statements: StatementCache,
    cloud: Client,
    target: Target,
}

/// What is built once per mapping.
struct Prepared {
    generation: u64,
    mapping: Arc<Mapping>,
    read: Vec<ReadSql>,
    /// The same without looking for open records, for a batch without any (see
    /// [`ReadSql::unheld`]).
    unheld: Vec<ReadSql>,
    plan: Forward,
}

struct ForwardWorker<'a> {
    config: &'a Config,
    options: RunOptions,
    tables: Arc<Tables>,
    /// Tells when tables are parked, resumed or reshaped.
    changes: watch::Receiver<Snapshot>,
    state: Option<Prepared>,
    /// With `once`: the desktop snapshot at start; only changes it sees are applied.
    once_snapshot: Option<String>,
    stats: RunStats,
}

impl Worker for ForwardWorker<'_> {
    const NAME: &'static str = "forward";

    async fn session(&mut self, shutdown: &CancellationToken) -> Result<(), RunError> {
        match self.connected(shutdown).await {
            // A table's statement does not fit its schema: it is parked (or its statements rebuilt),
            // and its outbox rows stay queued.
            Err(RunError::Commit(e)) if let Some(table) = parks(&e) => {
                self.tables.failed(table, &e).await?;
                Err(RunError::Reshaped)
            }
            other => other,
        }
    }

    fn recover(&mut self, error: RunError) -> Result<(), RunError> {
        match error {
            RunError::Reshaped => Ok(()),
            other => Err(other),
        }
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
        let tables = self.changes.borrow_and_update().clone();
        if self
            .state
            .as_ref()
            .is_none_or(|s| s.generation != tables.generation)
        {
            let mapping = tables.mapping.clone();
            let read = (0..mapping.tables.len())
                .map(|i| ReadSql::build(&mapping, i))
                .collect();
            let unheld = (0..mapping.tables.len())
                .map(|i| ReadSql::unheld(&mapping, i))
                .collect();
            let plan = Forward::new(&mapping);
            self.state = Some(Prepared {
                generation: tables.generation,
                mapping,
                read,
                unheld,
                plan,
            });
        }
        let state = self.state.as_ref().expect("prepared above");
        self.tables.running(WorkerId::Forward, tables.generation);
        // Parked tables' outbox rows stay where they are (and those of tables not configured yet).
        let streaming: Vec<&QualifiedName> = (0..state.mapping.tables.len())
            .filter(|i| !tables.is_parked(*i))
            .map(|i| &state.mapping.tables[i].table.desktop)
            .collect();
        let taken = outbox::Taken::new(&streaming);
        let target = Target::prepare(&cloud, Direction::Forward, state.plan.staging()).await?;
        desktop
            .batch_execute("SET plan_cache_mode = force_custom_plan")
            .await
            .ctx(Side::Desktop, "setting plan_cache_mode")?;
        listener
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await
            .ctx(Side::Desktop, "LISTEN for outbox notifications")?;
        // One forward applier at a time (see `db::FORWARD_LOCK`), held until this session's connection
        // closes. `run --once` beside a running applier lets that one apply what it would have.
        if !db::try_lock(&desktop, Side::Desktop, db::FORWARD_LOCK).await? {
            if self.options.once {
                if wait_applied_elsewhere(&desktop, &taken, shutdown).await? {
                    return Ok(());
                }
            } else {
                tracing::warn!(
                    "another tandem process applies this desktop's outbox; waiting for it to stop"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    locked = desktop.execute(
                        "SELECT pg_advisory_lock($1, $2)",
                        &[&db::LOCK_CLASS, &db::FORWARD_LOCK],
                    ) => {
                        locked.ctx(Side::Desktop, "waiting for the forward applier lock")?;
                    }
                }
            }
        }
        if self.options.once && self.once_snapshot.is_none() {
            if !self.tables.reverse_caught_up_wait(shutdown).await {
                return Ok(());
            }
            let row = desktop
                .query_one("SELECT pg_current_snapshot()::text", &[])
                .await
                .ctx(Side::Desktop, "reading the current snapshot")?;
            self.once_snapshot = Some(row.get(0));
        }
        let mut conn = Connections {
            desktop,
            desktop_statements: StatementCache::new(Side::Desktop),
            cloud,
            target,
        };
        let mut size = BatchSize::new(&self.config.sync);
        crate::telemetry::up("forward");
        loop {
            // Drain: batch after batch until the outbox is empty.
            loop {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                if self.changes.has_changed().unwrap_or(false) {
                    return Err(RunError::Reshaped);
                }
                let started = Instant::now();
                let limit = size.limit();
                let read = Read {
                    limit,
                    snapshot: self.once_snapshot.as_deref(),
                    taken: &taken,
                    tables: &tables,
                };
                let Some((rows, outcome)) = one_batch(state, &mut conn, read).await? else {
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
                db::drop_temp_tables(&conn.cloud).await;
                return Ok(());
            }
            wait_for_changes(&mut notifications, &mut self.changes, shutdown).await?;
            if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }
}

/// `run --once` while another session holds the forward applier lock: waits until the outbox rows
/// committed now (of tables not parked) are applied by it. True when they were; false when the lock
/// came free first (that session ended, or was only ending: a closed connection's backend releases
/// its locks a moment later), and it is now this session's, which applies them itself.
async fn wait_applied_elsewhere(
    desktop: &Client,
    taken: &outbox::Taken,
    shutdown: &CancellationToken,
) -> Result<bool, RunError> {
    let snapshot: String = desktop
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .ctx(Side::Desktop, "reading the current snapshot")?
        .get(0);
    loop {
        let pending = outbox::pending(desktop, &snapshot, taken).await?;
        if !pending || shutdown.is_cancelled() {
            return Ok(true);
        }
        if db::try_lock(desktop, Side::Desktop, db::FORWARD_LOCK).await? {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Sleeps until a notification (or shutdown, or the tables changing: a resumed table's queued rows
/// send no notification); swallows the others already queued.
async fn wait_for_changes(
    notifications: &mut Notifications,
    changes: &mut watch::Receiver<Snapshot>,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    tokio::select! {
        // Shutdown first: a notification must not delay it.
        biased;
        _ = shutdown.cancelled() => Ok(()),
        _ = changes.changed() => Err(RunError::Reshaped),
        n = notifications.recv() => match n {
            Some(_) => {
                while notifications.try_recv().is_ok() {}
                Ok(())
            }
            None => Err(RunError::ListenerLost),
        },
    }
}

/// What the next batch reads.
struct Read<'a> {
    limit: i64,
    /// With `once`: only rows of transactions this snapshot sees.
    snapshot: Option<&'a str>,
    taken: &'a outbox::Taken,
    tables: &'a Snapshot,
}

/// One batch; `None` when the outbox had nothing to take.
async fn one_batch(
    state: &Prepared,
    conn: &mut Connections,
    read: Read<'_>,
) -> Result<Option<(u64, BatchOutcome)>, RunError> {
    let mapping = &state.mapping;
    let batch = outbox::begin_batch(
        &conn.desktop,
        &mut conn.desktop_statements,
        mapping,
        read.limit,
        read.snapshot,
        read.taken,
    )
    .await?;
    if batch.is_empty() {
        outbox::finish_batch(&conn.desktop, &mut conn.desktop_statements, &[], &[]).await?;
        return Ok(None);
    }
    // A parked table is not written, not even as a lookup's dependent.
    let mut tables = batch.tables(mapping);
    tables.retain(|&i| !read.tables.is_parked(i));
    let (first, last) = (batch.ids[0].0, batch.ids[batch.ids.len() - 1].0);
    let batch_id = format!("forward {first}..{last}");
    let (cloud, target) = (&conn.cloud, &mut conn.target);
    // The session ends on an error; closing its connections rolls both transactions back.
    let mut sending = Sending {
        plan: &state.plan,
        mapping,
        reads: tables
            .iter()
            .map(|&i| match batch.unheld.contains(&i) {
                true => (i, &state.unheld[i]),
                false => (i, &state.read[i]),
            })
            .collect(),
        truncated: &batch.truncated,
        horizons: &batch.horizons,
        batch_id: &batch_id,
        fill: false,
        desktop: &conn.desktop,
        desktop_statements: &mut conn.desktop_statements,
        staged: Staged::default(),
    };
    let applied = target.run(cloud, &mut sending).await?;
    let (rows, bytes) = (sending.staged.rows, sending.staged.bytes);
    let mut outcome = applied.outcome;
    crate::telemetry::batch_committed("forward", outcome.dead_letters, batch.oldest);
    outcome.staged_rows = rows;
    outcome.staged_bytes = bytes;
    failpoint("after-cloud-commit");
    let held: Vec<outbox::Held> = applied
        .held
        .into_iter()
        .map(|(i, keys)| outbox::Held {
            table: mapping.tables[i].table.desktop.clone(),
            keys,
            wait_for: applied.wait_for,
        })
        .collect();
    if !held.is_empty() {
        tracing::debug!(
            keys = held.iter().map(|h| h.keys.len()).sum::<usize>(),
            wait_for = applied.wait_for,
            "desktop changes held back until the desktop has received a phone's change of their rows"
        );
    }
    outbox::finish_batch(
        &conn.desktop,
        &mut conn.desktop_statements,
        &batch.ids,
        &held,
    )
    .await?;
    Ok(Some((batch.ids.len() as u64, outcome)))
}
