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

use tokio_postgres::{Client, IsolationLevel};
use tokio_util::sync::CancellationToken;

use crate::apply::{self, BatchOutcome, ForwardApplier};
use crate::capture::outbox::{self, NOTIFY_CHANNEL, ReadSql};
use crate::change::Side;
use crate::config::Config;
use crate::db::{self, Context, DbError, ErrorKind, Notifications};
use crate::retry;
use crate::transform::{Mapping, MappingError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("desktop: the LISTEN connection was lost")]
    ListenerLost,
}

impl RunError {
    pub fn is_transient(&self) -> bool {
        match self {
            RunError::Db(e) | RunError::Mapping(MappingError::Db(e)) => {
                e.kind() == ErrorKind::Transient
            }
            RunError::Mapping(MappingError::Invalid(_)) => false,
            RunError::ListenerLost => true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Apply what was committed on the desktop when the run started, then return.
    pub once: bool,
}

/// Totals of a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    pub batches: u64,
    pub outbox_rows: u64,
    pub outcome: BatchOutcome,
    pub retries: u64,
}

/// A test hook: `TANDEM_FAILPOINT=<name>` makes the process abort at that point, like `kill -9`.
fn failpoint(name: &str) {
    if std::env::var("TANDEM_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("tandem: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// The forward direction of `tandem run`. Returns when `shutdown` fires, or with `once` when the
/// outbox holds nothing more from before the start; errors only on what retrying cannot fix.
pub async fn run_forward(
    config: &Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<RunStats, RunError> {
    let mut worker = Forward {
        config,
        options,
        state: None,
        snapshot: None,
        stats: RunStats::default(),
    };
    let mut delays = retry::backoff();
    loop {
        match worker.session(&shutdown).await {
            Ok(()) => return Ok(worker.stats),
            Err(e) if e.is_transient() => {
                worker.stats.retries += 1;
                let delay = delays.next().expect("the backoff never ends");
                tracing::warn!(error = %e, retry_in = ?delay, "forward: transient error; reconnecting");
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(worker.stats),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
        if worker.session_was_productive() {
            delays = retry::backoff();
        }
    }
}

/// What is built once from the live schemas.
struct Prepared {
    mapping: Mapping,
    read: Vec<ReadSql>,
    applier: ForwardApplier,
}

struct Forward<'a> {
    config: &'a Config,
    options: RunOptions,
    state: Option<Prepared>,
    /// With `once`: the desktop snapshot at start; only changes it sees are applied.
    snapshot: Option<String>,
    stats: RunStats,
}

impl Forward<'_> {
    fn session_was_productive(&self) -> bool {
        // Reset the backoff after any progress; a session that fails at once keeps growing it.
        self.stats.batches > 0
    }

    /// One connected stretch: connect, drain, wait for notifications, drain again...
    async fn session(&mut self, shutdown: &CancellationToken) -> Result<(), RunError> {
        let mut desktop = db::connect(Side::Desktop, &self.config.desktop.url).await?;
        let (listener, mut notifications) =
            db::connect_listener(Side::Desktop, &self.config.desktop.url).await?;
        let mut cloud = db::connect(Side::Cloud, &self.config.cloud.url).await?;
        if self.state.is_none() {
            let mapping = Mapping::load(self.config, &desktop, &cloud).await?;
            let read = (0..mapping.tables.len())
                .map(|i| ReadSql::build(&mapping, i))
                .collect();
            let applier = ForwardApplier::new(&mapping);
            self.state = Some(Prepared {
                mapping,
                read,
                applier,
            });
        }
        let state = self.state.as_ref().expect("prepared above");
        state.applier.prepare(&cloud).await?;
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
        let limit = i64::try_from(self.config.sync.batch_max_rows).unwrap_or(i64::MAX);
        loop {
            // Drain: batch after batch until the outbox is empty.
            loop {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                let started = Instant::now();
                let Some((rows, outcome)) = one_batch(
                    state,
                    &mut desktop,
                    &mut cloud,
                    limit,
                    self.snapshot.as_deref(),
                )
                .await?
                else {
                    break;
                };
                self.stats.batches += 1;
                self.stats.outbox_rows += rows;
                self.stats.outcome.add(&outcome);
                tracing::debug!(
                    outbox_rows = rows,
                    staged = outcome.staged_rows,
                    written = outcome.written,
                    deleted = outcome.deleted,
                    conflicts = outcome.conflicts,
                    dead_letters = outcome.dead_letters,
                    elapsed = ?started.elapsed(),
                    "forward batch applied"
                );
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
    desktop: &mut Client,
    cloud: &mut Client,
    limit: i64,
    snapshot: Option<&str>,
) -> Result<Option<(u64, BatchOutcome)>, RunError> {
    let mapping = &state.mapping;
    let dtx = desktop
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .ctx(Side::Desktop, "beginning the batch snapshot")?;
    let batch = outbox::take_batch(&dtx, mapping, limit, snapshot).await?;
    if batch.is_empty() {
        dtx.commit()
            .await
            .ctx(Side::Desktop, "ending the batch snapshot")?;
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
    let mut careful = false;
    let outcome = loop {
        let ctx = cloud
            .transaction()
            .await
            .ctx(Side::Cloud, "beginning the batch transaction")?;
        let mut staged = 0;
        for &i in &tables {
            staged += state.applier.stage(i, &state.read[i], &dtx, &ctx).await?;
        }
        match state
            .applier
            .commit(&ctx, mapping, &tables, &batch.truncated, &batch_id, careful)
            .await
        {
            Ok(mut outcome) => {
                ctx.commit()
                    .await
                    .ctx(Side::Cloud, "committing the batch")?;
                outcome.staged_rows = staged;
                break outcome;
            }
            Err(e) if !careful && apply::is_refused_row(&e) => {
                tracing::debug!(error = %e, "a row was refused; applying the batch again, isolating refused rows");
                ctx.rollback()
                    .await
                    .ctx(Side::Cloud, "rolling back the batch")?;
                careful = true;
            }
            Err(e) => return Err(e.into()),
        }
    };
    dtx.commit()
        .await
        .ctx(Side::Desktop, "ending the batch snapshot")?;
    failpoint("after-cloud-commit");
    outbox::delete_batch(desktop, &batch.ids).await?;
    Ok(Some((batch.ids.len() as u64, outcome)))
}
