//! The two workers of `tandem run`: [`forward`] (desktop outbox → cloud) and [`reverse`] (cloud logical
//! replication → desktop), each in its own task, sharing the shutdown signal and the retry policy.

mod ack;
pub mod forward;
mod nap;
pub mod reverse;
mod session;
pub mod sync;
pub mod tables;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::change::CommitLsn;
use crate::commit::{BatchOutcome, CommitError};
use crate::config::{Config, SyncConfig};
use crate::db::{DbError, ErrorKind};
use crate::transform::MappingError;

pub use forward::{run_forward, run_forward_with};
pub use reverse::{run_reverse, run_reverse_with};
pub use tables::{Parked, Tables};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("desktop: the LISTEN connection was lost")]
    ListenerLost,
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("{0}")]
    Worker(String),
    /// Reverse: the desktop refused a row written straight into its table (a key it already holds, a
    /// constraint). The worker receives the transactions up to the given commit position again with
    /// every row staged, where conflicts and dead letters are sorted out row by row.
    #[error(
        "a new mobile row written straight into a desktop table was refused ({0}); receiving the transactions up to {1} again, staged"
    )]
    Replay(CommitError, CommitLsn),
    /// The tables' states or shapes changed (a table parked or resumed, a schema picked up): the
    /// worker's next session starts at once with them.
    #[error("the tables changed; starting again with them")]
    Reshaped,
    #[error("tandem is not set up for this config:\n{}\nfix: run `tandem init` (and `tandem check`)", .0.iter().map(|m| format!("  - {m}")).collect::<Vec<_>>().join("\n"))]
    NotInstalled(Vec<String>),
}

/// An error of the logical replication stream, classified where it was raised: the transport's own
/// failures by their kind, the server's by what the cloud says about the slot and the publication
/// (the transport flattens server errors into text, which tandem does not parse).
#[derive(Debug, thiserror::Error)]
#[error("cloud: replication stream: {message}")]
pub struct StreamError {
    pub kind: ErrorKind,
    pub message: String,
}

impl StreamError {
    /// A failure retrying can fix (the stream ended, a message tandem could not decode).
    pub fn transient(message: impl Into<String>) -> Self {
        StreamError {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }
}

impl RunError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RunError::Db(e) | RunError::Mapping(MappingError::Db(e)) => e.kind(),
            RunError::Commit(e) => e.kind(),
            RunError::Mapping(MappingError::Invalid(_)) => ErrorKind::Fatal,
            RunError::ListenerLost | RunError::Replay(..) | RunError::Reshaped => {
                ErrorKind::Transient
            }
            RunError::Stream(e) => e.kind,
            RunError::NotInstalled(_) | RunError::Worker(_) => ErrorKind::Fatal,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// What kind of trouble it was, as the retries metric labels it.
    pub fn cause(&self) -> &'static str {
        let db = match self {
            RunError::Db(e) | RunError::Mapping(MappingError::Db(e)) => Some(e),
            RunError::Commit(e) => Some(&e.source),
            _ => None,
        };
        match (self, db.map(|e| e.code().map(|c| c.code()))) {
            (_, Some(None)) | (RunError::ListenerLost, _) => "connection",
            (_, Some(Some("57014"))) => "timeout",
            (_, Some(Some("40001" | "40P01" | "55P03"))) => "contention",
            (_, Some(Some(_))) => "server",
            (RunError::Stream(_), _) => "stream",
            (RunError::Replay(..), _) => "replay",
            (RunError::Reshaped, _) => "reshaped",
            _ => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Apply what was committed on the desktop when the run started, then return.
    pub once: bool,
}

impl RunOptions {
    /// How long a direction that cannot run waits to try again; none with `once`, which fails.
    pub fn broken_retry(&self, sync: &SyncConfig) -> Option<Duration> {
        (!self.once).then(|| Duration::from_millis(sync.broken_retry_ms.max(1)))
    }
}

/// Totals of a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    pub batches: u64,
    /// Forward: outbox rows taken. Reverse: cloud transactions received.
    pub outbox_rows: u64,
    pub outcome: BatchOutcome,
    pub retries: u64,
    /// Reverse: times a group was received again, staged, after the desktop refused a row written
    /// straight into its table.
    pub replays: u64,
}

/// A test hook: `TANDEM_FAILPOINT=<name>` makes the process abort at that point, like `kill -9`.
pub(crate) fn failpoint(name: &str) {
    if std::env::var("TANDEM_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("tandem: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// How many outbox rows the next batch takes. A batch that staged more than `batch_max_bytes` or took
/// longer than `batch_max_wait_ms` halves the next one (so a change arriving in a flood never waits
/// long behind the batch in flight); otherwise batches grow back, doubling, to `batch_max_rows`.
#[derive(Debug, Clone)]
pub struct BatchSize {
    max_rows: i64,
    max_bytes: u64,
    max_time: Duration,
    limit: i64,
}

impl BatchSize {
    pub fn new(sync: &SyncConfig) -> Self {
        let max_rows = i64::try_from(sync.batch_max_rows)
            .unwrap_or(i64::MAX)
            .max(1);
        BatchSize {
            max_rows,
            max_bytes: sync.batch_max_bytes as u64,
            max_time: Duration::from_millis(sync.batch_max_wait_ms),
            limit: max_rows,
        }
    }

    pub fn limit(&self) -> i64 {
        self.limit
    }

    /// Adjusts the limit after a batch of `rows` outbox rows that staged `bytes` in `elapsed`.
    pub fn observe(&mut self, rows: u64, bytes: u64, elapsed: Duration) {
        let full = rows as i64 >= self.limit;
        if bytes > self.max_bytes || elapsed > self.max_time {
            self.limit = (rows as i64 / 2).max(1);
        } else if full {
            self.limit = self.limit.saturating_mul(2).min(self.max_rows);
        }
    }
}

/// What a run did, and the tables it left parked (by name, with why).
#[derive(Debug)]
pub struct RunReport {
    pub forward: RunStats,
    pub reverse: RunStats,
    pub parked: Vec<(String, Parked)>,
}

/// Both directions until `shutdown` (or, with `once`, until both have applied what was committed when
/// they started). Without `once`, a direction that cannot run stops alone and tries again on a slow
/// timer (`[sync] broken_retry_ms`) while the other streams; with `once`, it stops the other and its
/// error is returned. A table that does not fit its schema is parked, not the run.
pub async fn run(
    config: &Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<RunReport, RunError> {
    preflight(config, options).await?;
    let tables = Tables::start(config).await?;
    // Tables new since init are synced before the workers start: what the sync hands to the outbox,
    // the forward worker applies; what the slot holds from before the sync, the reverse worker finds
    // already on the desktop.
    sync::due(config, &tables, &sync::Quiet).await?;
    let stop = shutdown.child_token();
    if !options.once {
        let every = Duration::from_millis(config.sync.schema_recheck_ms.max(1));
        tokio::spawn(tables.clone().rechecking(every, stop.clone()));
        tokio::spawn(sync::syncing(config.clone(), tables.clone(), stop.clone()));
    }
    tables.forward_running(false);
    // `run --once`: the reverse direction applies what phones committed before the start first; the
    // forward one then sends the desktop's changes knowing which of them were made after receiving
    // those (ordinary edits) and which were not (conflicts, settled on the desktop).
    if options.once {
        tables.reverse_caught_up(false);
    }
    let forward = async {
        let result = run_forward_with(config, options, tables.clone(), stop.clone()).await;
        tables.forward_running(true);
        result
    };
    let reverse = async {
        let result = run_reverse_with(config, options, tables.clone(), stop.clone()).await;
        tables.reverse_caught_up(true);
        result
    };
    tokio::pin!(forward, reverse);
    let (mut f, mut r) = (None, None);
    while f.is_none() || r.is_none() {
        tokio::select! {
            result = &mut forward, if f.is_none() => {
                if result.is_err() { stop.cancel(); }
                f = Some(result);
            }
            result = &mut reverse, if r.is_none() => {
                if result.is_err() { stop.cancel(); }
                r = Some(result);
            }
        }
    }
    stop.cancel();
    Ok(RunReport {
        forward: f.expect("done")?,
        reverse: r.expect("done")?,
        parked: tables.parked(),
    })
}

/// Whether an error of a table's statement parks the table (rather than failing the session): the
/// schema does not fit it, or a value it holds cannot be staged or compared.
fn parks(e: &CommitError) -> Option<usize> {
    matches!(e.kind(), ErrorKind::Schema | ErrorKind::BadRow)
        .then_some(e.table)
        .flatten()
}

/// Before streaming: is everything `init` installs in place for this config? A missing outbox, trigger
/// or slot would otherwise surface as a bare "does not exist" from deep inside a worker. Without
/// `once`, what only the reverse direction needs (the slot, the publication) does not stop the run:
/// it is logged, the forward direction streams, and the reverse one retries on its slow timer until
/// `tandem init` repaired it.
async fn preflight(config: &Config, options: RunOptions) -> Result<(), RunError> {
    use crate::change::Side;
    use crate::setup::Step;
    let desktop = crate::db::connect(Side::Desktop, &config.desktop.url).await?;
    let cloud = crate::db::connect(Side::Cloud, &config.cloud.url).await?;
    let desktop_plan = crate::setup::plan_desktop(&desktop, config).await?;
    let cloud_plan = crate::setup::plan_cloud(&cloud, config).await?;
    let reverse_only = |s: &Step| {
        matches!(
            s,
            Step::CreatePublication { .. }
                | Step::SetPublicationTables { .. }
                | Step::CreateSlot { .. }
        ) || matches!(s, Step::Record { item, .. } if item == "slot" || item == "publication")
    };
    let (mut missing, mut reverse) = (Vec::new(), Vec::new());
    for (side, plan) in [("desktop", &desktop_plan), ("cloud", &cloud_plan)] {
        for step in &plan.steps {
            let line = format!("{side}: missing: {step}");
            if reverse_only(step) {
                reverse.push(line)
            } else {
                missing.push(line)
            }
        }
    }
    for b in cloud_plan.blockers.iter().chain(&desktop_plan.blockers) {
        let line = b.to_string();
        if b.subject.contains("slot") || b.subject.contains("publication") {
            reverse.push(line);
        } else {
            missing.push(line);
        }
    }
    if options.once || !missing.is_empty() {
        missing.extend(reverse);
        return if missing.is_empty() {
            Ok(())
        } else {
            Err(RunError::NotInstalled(missing))
        };
    }
    if !reverse.is_empty() {
        tracing::error!(
            problems = %reverse.join("; "),
            "the reverse direction cannot run until this is fixed (run `tandem init`, then `tandem reconcile`); the forward direction streams meanwhile"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_shrink_when_too_big_or_slow_and_grow_back_when_full() {
        let sync = SyncConfig {
            batch_max_rows: 1000,
            batch_max_bytes: 1_000_000,
            batch_max_wait_ms: 100,
            schema_recheck_ms: 1000,
            ..SyncConfig::default()
        };
        let mut size = BatchSize::new(&sync);
        assert_eq!(size.limit(), 1000);
        size.observe(1000, 5_000_000, Duration::from_millis(10));
        assert_eq!(size.limit(), 500, "too many bytes");
        size.observe(500, 1000, Duration::from_millis(400));
        assert_eq!(size.limit(), 250, "too slow");
        size.observe(3, 10, Duration::from_millis(1));
        assert_eq!(size.limit(), 250, "a small batch says nothing about load");
        size.observe(250, 10, Duration::from_millis(1));
        assert_eq!(size.limit(), 500);
        size.observe(500, 10, Duration::from_millis(1));
        size.observe(1000, 10, Duration::from_millis(1));
        assert_eq!(size.limit(), 1000, "never above batch_max_rows");
        size.observe(1, 10_000_000, Duration::from_millis(1));
        assert_eq!(size.limit(), 1, "never below one row");
    }
}
