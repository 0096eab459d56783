//! The reverse worker: mobile-owned cloud rows → desktop, through the logical replication slot.
//!
//! Events arrive in commit order. Each change of a configured table is encoded into that table's
//! staging buffer; buffers go to the desktop in chunks (so a transaction of any size never sits in
//! memory). At a commit, if the next event is already waiting and the group is small, the next
//! transaction joins the same desktop transaction; otherwise the group is applied, its last end LSN is
//! recorded in `tandem.progress` in the same desktop transaction, and only then is the slot told. A
//! transaction at or below the stored position is skipped (the slot may replay after a restart). When no
//! transaction is open and nothing is pending, a keepalive's position is acknowledged, so a quiet
//! publication never pins the cloud's WAL.

pub mod clock;
mod diagnose;
mod resume;
mod stream;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use pgwire_replication::ReplicationClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::capture::logical;
use crate::capture::pgoutput::RelationCache;
use crate::change::{CommitLsn, Side};
use crate::commit::reverse::encode::Encoder;
use crate::commit::reverse::{self, Reverse};
use crate::commit::{Direction, Target};
use crate::config::Config;
use crate::db::{self, Context, ErrorKind};
use crate::transform::Mapping;

use crate::pipeline::nap::Nap;
use crate::pipeline::session::{Worker, reconnecting};
use crate::pipeline::tables::{Snapshot, Tables, WorkerId};
use crate::pipeline::{RunError, RunOptions, RunStats, parks};

use diagnose::{diagnose, stream_error};
use stream::Stream;

/// The prefix of the marker `run --once` emits to know when it has seen everything before its start.
pub(super) const ONCE_PREFIX: &str = "tandem.once";
/// A transaction past this many changes is big: when the stream runs dry inside it, the worker naps
/// (see `Stream::nap_if_dry`).
pub(super) const NAP_AFTER_CHANGES: u64 = 1_000;

/// The reverse direction of `tandem run`.
///
/// It runs on a thread of its own, on a single-threaded runtime: every row of the stream passes from
/// the replication transport's task to the decoder and on to the desktop connection's task, and on one
/// thread those hand-overs cost no cross-thread wake-ups (a third of the worker's CPU otherwise). The
/// thread does not preempt others when it wakes (see [`yield_on_wake_up`]).
pub async fn run_reverse(
    config: &Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<RunStats, RunError> {
    let tables = Tables::start(config).await?;
    run_reverse_with(config, options, tables, shutdown).await
}

/// [`run_reverse`] with the table states of a run both directions share.
pub async fn run_reverse_with(
    config: &Config,
    options: RunOptions,
    tables: Arc<Tables>,
    shutdown: CancellationToken,
) -> Result<RunStats, RunError> {
    let config = config.clone();
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tandem-reverse".into())
        .spawn(move || {
            yield_on_wake_up();
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(reverse_worker(&config, options, tables, shutdown)),
                Err(e) => Err(RunError::Worker(format!(
                    "cannot start the reverse worker's runtime: {e}"
                ))),
            };
            let _ = done.send(result);
        })
        .map_err(|e| RunError::Worker(format!("cannot start the reverse worker's thread: {e}")))?;
    result
        .await
        .unwrap_or_else(|_| Err(RunError::Worker("the reverse worker panicked".into())))
}

async fn reverse_worker(
    config: &Config,
    options: RunOptions,
    tables: Arc<Tables>,
    shutdown: CancellationToken,
) -> Result<RunStats, RunError> {
    let mut worker = ReverseWorker {
        config,
        options,
        changes: tables.subscribe(),
        tables,
        prepared: None,
        stats: RunStats::default(),
        once_token: None,
        final_marker: false,
        careful_through: None,
    };
    reconnecting(&mut worker, &shutdown, options.broken_retry(&config.sync)).await?;
    Ok(worker.stats)
}

/// What is built once per mapping.
struct Prepared {
    generation: u64,
    mapping: Arc<Mapping>,
    plan: Reverse,
}

struct ReverseWorker<'a> {
    config: &'a Config,
    options: RunOptions,
    tables: Arc<Tables>,
    /// Tells when tables are parked, resumed or reshaped.
    changes: watch::Receiver<Snapshot>,
    prepared: Option<Prepared>,
    stats: RunStats,
    /// With `once`: the marker this run emitted; reaching it means everything before the start is here.
    once_token: Option<(String, crate::change::Lsn)>,
    /// `run --once`: whether the second marker (after the forward worker ended) was written.
    final_marker: bool,
    /// Transactions committed at or before this position stage every row (they are being received
    /// again after the desktop refused a row written straight into its table).
    careful_through: Option<CommitLsn>,
}

impl Worker for ReverseWorker<'_> {
    const NAME: &'static str = "reverse";

    async fn session(&mut self, shutdown: &CancellationToken) -> Result<(), RunError> {
        match self.connected(shutdown).await {
            Err(RunError::Stream(e)) if e.kind == ErrorKind::Fatal => {
                Err(diagnose(self.config, e).await)
            }
            // A table's statement does not fit its schema: it is parked (or its statements rebuilt),
            // and the group, of which nothing was confirmed, comes again with that table's rows set
            // aside as dead letters.
            Err(RunError::Commit(e)) if let Some(table) = parks(&e) => {
                self.tables.failed(table, &e).await?;
                Err(RunError::Reshaped)
            }
            other => other,
        }
    }

    fn progress(&self) -> u64 {
        self.stats.batches
    }

    fn retried(&mut self) {
        self.stats.retries += 1;
    }

    fn recover(&mut self, error: RunError) -> Result<(), RunError> {
        match error {
            RunError::Replay(cause, through) => {
                // Not a failure: the slot sends the group again (nothing of it was confirmed).
                tracing::info!(%cause, through = %through, "reverse: a row written directly was refused; receiving the group again, staged");
                self.stats.replays += 1;
                self.careful_through = self.careful_through.max(Some(through));
                Ok(())
            }
            RunError::Reshaped => Ok(()),
            other => Err(other),
        }
    }
}

/// Makes the calling thread a batch thread (Linux `SCHED_BATCH`): it still gets its fair share of the
/// CPU, but waking up (a row arrived, a nap ended) does not preempt whatever runs on that CPU. Through a
/// big transaction the worker wakes thousands of times a second; where it shares cores with the cloud's
/// walsender (the bench) or the desktop's own work (a desktop server), each preempting wake-up took the
/// CPU from a process doing the real work. Measured on the bench: the 100k-row transaction's median
/// went from 0.76-1.05x native to 1.02-1.15x, the worker's CPU through five of them from 0.48-0.57 s to
/// 0.38 s, single-row latency unchanged (p50 ~0.5 ms). Returns whether the kernel took it.
pub(crate) fn yield_on_wake_up() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; SCHED_BATCH takes priority 0 and no privilege.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc == 0 {
            return true;
        }
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "the reverse worker's thread stays an ordinary thread (SCHED_BATCH refused)"
        );
    }
    false
}

impl ReverseWorker<'_> {
    async fn connected(&mut self, shutdown: &CancellationToken) -> Result<(), RunError> {
        let desktop = db::connect(Side::Desktop, &self.config.desktop.url).await?;
        let cloud = db::connect(Side::Cloud, &self.config.cloud.url).await?;
        let tables = self.changes.borrow_and_update().clone();
        if self
            .prepared
            .as_ref()
            .is_none_or(|p| p.generation != tables.generation)
        {
            let mapping = tables.mapping.clone();
            let plan = Reverse::new(&mapping);
            self.prepared = Some(Prepared {
                generation: tables.generation,
                mapping,
                plan,
            });
        }
        let prepared = self.prepared.as_ref().expect("prepared above");
        self.tables.running(WorkerId::Reverse, tables.generation);
        let parked: BTreeMap<usize, String> = tables
            .parked
            .iter()
            .map(|(&i, p)| (i, format!("{}; fix: {}", p.reason, p.fix)))
            .collect();
        let target = Target::prepare(&desktop, Direction::Reverse, prepared.plan.staging()).await?;
        let ahead = clock::record_cloud_ahead(&desktop, &cloud).await?;
        tracing::debug!(
            cloud_ahead_ms = ahead as f64 / 1000.0,
            "measured how far the cloud's clock is ahead of the desktop's"
        );
        let stored = reverse::stored_position(&desktop).await?;
        let sync_points = sync_points(&desktop, &prepared.mapping).await?;
        let start = stored.map(|s| s.0);
        // `run --once` beside a running `run`: the slot is that run's; it applies what was committed
        // before now, and this one waits for it.
        if self.options.once && applied_elsewhere(&cloud, &self.config.cloud.slot, shutdown).await?
        {
            self.tables.reverse_caught_up(true);
            return Ok(());
        }
        let replication_config =
            logical::replication_config(self.config, start.unwrap_or_default(), start)?;
        let replication = ReplicationClient::connect(replication_config)
            .await
            .map_err(stream_error)?;
        crate::telemetry::up("reverse");
        if self.options.once && self.once_token.is_none() {
            self.once_token = Some(once_marker(&cloud).await?);
        }
        let sync = &self.config.sync;
        let mut encoder = Encoder::new(&prepared.mapping);
        for &i in parked.keys() {
            encoder.park(i);
        }
        let mut stream = Stream {
            cloud,
            mapping: &prepared.mapping,
            plan: &prepared.plan,
            tables: &self.tables,
            changes: self.changes.clone(),
            parked,
            reshaped: false,
            desktop,
            target,
            replication,
            relations: RelationCache::new(),
            maps: HashMap::new(),
            encoder,
            stored,
            careful_through: self.careful_through,
            last_final: CommitLsn::default(),
            sync_points,
            acknowledged: start,
            in_transaction: false,
            tx_changes: 0,
            nap: Nap::default(),
            skip_transaction: false,
            once_at_commit: false,
            pending: None,
            commit_times: None,
            caught_up_written: None,
            horizon: None,
            horizon_written: None,
            group_rows: 0,
            group_began: None,
            // Small enough that the desktop writes rows while the stream is read (what is still buffered
            // when a big transaction's Commit arrives is written after it: at 1 MiB that was ~14k rows,
            // 20-25 ms), large enough to be cheap.
            flush_bytes: sync.batch_max_bytes.clamp(16 * 1024, 64 * 1024),
            max_rows: sync.batch_max_rows as u64,
            max_time: std::time::Duration::from_millis(sync.batch_max_wait_ms),
        };
        // Tables that resumed bring their rows set aside while parked.
        stream.resume(&mut self.stats).await?;
        let mut result = stream
            .run(
                shutdown,
                self.once_token.as_ref().map(|(t, end)| (t.as_str(), *end)),
                &mut self.stats,
            )
            .await;
        // The forward worker of the same `run --once` wrote to the cloud meanwhile: WAL after the
        // marker, which the slot would hold as unconfirmed lag. Once it is done, a second marker
        // takes the slot past it (and anything a phone committed meanwhile is applied too).
        if result.is_ok() && self.options.once && !self.final_marker {
            self.final_marker = true;
            self.tables.reverse_caught_up(true);
            if !self.tables.forward_ended(shutdown).await {
                return Ok(());
            }
            self.once_token = Some(once_marker(&stream.cloud).await?);
            result = stream
                .run(
                    shutdown,
                    self.once_token.as_ref().map(|(t, end)| (t.as_str(), *end)),
                    &mut self.stats,
                )
                .await;
        }
        // `run --once` reached its marker: the slot's position moves to it before the stream stops
        // (the transport sends positions at most every status interval, and not when it stops).
        if let (Ok(()), Some((_, end))) = (&result, &self.once_token) {
            let slot = &self.config.cloud.slot;
            let end = end.to_string();
            tracing::debug!(end = %end, "run --once: waiting for the slot to confirm its marker");
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
                loop {
                    let told = stream
                        .cloud
                        .query_opt(
                            "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                            &[slot, &end],
                        )
                        .await;
                    if !matches!(told, Ok(Some(ref r)) if !r.get::<_, Option<bool>>(0).unwrap_or(false)) {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            })
            .await;
        }
        stream.replication.stop();
        // Let the replication worker end the stream cleanly (briefly: it is only politeness).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Ok(Some(_)) = stream.replication.recv().await {}
        })
        .await;
        result
    }
}

/// Writes `run --once`'s marker in the cloud's WAL: a token of this process, and where its record
/// ends (what the slot is told once the marker arrives).
async fn once_marker(
    cloud: &tokio_postgres::Client,
) -> Result<(String, crate::change::Lsn), RunError> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let token = format!("{}-{}", std::process::id(), since_epoch.as_nanos());
    // A message outside any transaction is not flushed: a walsender sends it once the WAL writer gets
    // to it, up to `wal_writer_delay` (200 ms by default) later. A transactional one commits
    // synchronously, flushed at once, and the stream stops at that commit's end: no WAL of the
    // marker is left behind the slot.
    let marked = async {
        cloud
            .batch_execute("BEGIN; SET LOCAL synchronous_commit = on")
            .await?;
        // Its snapshot too: once the stream reaches it, every phone change committed before `run
        // --once` started has reached the desktop, which the forward direction then knows.
        cloud.execute(&logical::Own::emit_sql(), &[&true]).await?;
        let end: String = cloud
            .query_one(
                "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2)::text",
                &[&ONCE_PREFIX, &token],
            )
            .await?
            .get(0);
        cloud.batch_execute("COMMIT").await?;
        Ok::<_, tokio_postgres::Error>(end)
    }
    .await;
    if marked.is_err() {
        let _ = cloud.batch_execute("ROLLBACK").await;
    }
    let end = marked.ctx(Side::Cloud, "marking the end of what run --once applies")?;
    Ok((token, end.parse().unwrap_or_default()))
}

/// With the slot streaming to another process: marks the cloud's position now (a transaction of its
/// own, which that process applies and acknowledges like any other) and waits until the slot's
/// confirmed position passes it. False when the slot is not in use (or stops being): this process
/// streams itself.
async fn applied_elsewhere(
    cloud: &tokio_postgres::Client,
    slot: &str,
    shutdown: &CancellationToken,
) -> Result<bool, RunError> {
    let state = "SELECT active, confirmed_flush_lsn > $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1";
    let row = cloud
        .query_opt(state, &[&slot, &"0/0"])
        .await
        .ctx(Side::Cloud, format!("reading replication slot {slot}"))?;
    if !row.is_some_and(|r| r.get::<_, bool>(0)) {
        return Ok(false);
    }
    let mark: String = cloud
        .query_one(
            "SELECT pg_logical_emit_message(true, $1, 'another tandem run applies')::text",
            &[&ONCE_PREFIX],
        )
        .await
        .ctx(Side::Cloud, "marking the end of what run --once waits for")?
        .get(0);
    tracing::info!(
        slot,
        "another tandem process streams from the slot; waiting for it to apply what was committed before now"
    );
    loop {
        let row = cloud
            .query_opt(state, &[&slot, &mark])
            .await
            .ctx(Side::Cloud, format!("reading replication slot {slot}"))?;
        match row {
            Some(r) if !r.get::<_, bool>(0) => return Ok(false),
            Some(r) if r.get::<_, Option<bool>>(1) == Some(true) => return Ok(true),
            None => return Ok(false),
            _ => {}
        }
        if shutdown.is_cancelled() {
            return Ok(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Where a reconcile brought each table's mobile rows to (`tandem.table_state.sync_lsn`): the table's
/// changes of transactions that committed before are not applied again.
async fn sync_points(
    desktop: &tokio_postgres::Client,
    mapping: &crate::transform::Mapping,
) -> Result<HashMap<usize, CommitLsn>, RunError> {
    let rows = desktop
        .query(
            "SELECT table_name, sync_lsn::text FROM tandem.table_state WHERE sync_lsn IS NOT NULL",
            &[],
        )
        .await
        .ctx(Side::Desktop, "reading the tables' sync points")?;
    let mut points = HashMap::new();
    for row in rows {
        let (name, lsn): (String, String) = (row.get(0), row.get(1));
        let Some(i) = mapping
            .tables
            .iter()
            .position(|t| t.table.desktop.to_string() == name)
        else {
            continue;
        };
        if let Ok(lsn) = lsn.parse() {
            points.insert(i, CommitLsn(lsn));
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_worker_thread_becomes_a_batch_thread_and_others_do_not() {
        // SAFETY: sched_getscheduler of the calling thread (pid 0) only reads.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let (took, after) = std::thread::spawn(move || (yield_on_wake_up(), policy()))
            .join()
            .unwrap();
        assert!(took);
        assert_eq!(after, libc::SCHED_BATCH);
        // Only the calling thread changes.
        assert_eq!(policy(), libc::SCHED_OTHER);
    }
}
