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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::capture::logical::{self, CLAIM_PREFIX, Claim};
use crate::capture::pgoutput::{self, RelationCache};
use crate::change::{CommitLsn, EndLsn, PgOutput, Side, WalEnd};
use crate::commit::reverse::encode::Encoder;
use crate::commit::reverse::relation::RelationMap;
use crate::commit::reverse::sql::PARKED_SQLSTATE;
use crate::commit::reverse::{self, Group, Reverse, retry};
use crate::commit::{CommitError, Direction, Target};
use crate::config::Config;
use crate::db::{self, APPLYING_SETTING, Context, ErrorKind};
use crate::setup::cloud::{publication_state, slot_state};
use crate::transform::Mapping;

use super::ack::{self, Event, Held};
use super::nap::Nap;
use super::session::{Worker, reconnecting};
use super::tables::{Parked, Snapshot, Tables};
use super::{RunError, RunOptions, RunStats, StreamError, failpoint, parks};

/// The prefix of the marker `run --once` emits to know when it has seen everything before its start.
const ONCE_PREFIX: &str = "tandem.once";
/// A transaction past this many changes is big: when the stream runs dry inside it, the worker naps
/// (see `Stream::nap_if_dry`).
const NAP_AFTER_CHANGES: u64 = 1_000;

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
        careful_through: None,
    };
    reconnecting(&mut worker, &shutdown).await?;
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
    once_token: Option<String>,
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

/// A server error on the replication stream (the transport gives only its text): what the cloud says
/// about the slot and the publication tells whether retrying can help, and the fix when it cannot.
async fn diagnose(config: &Config, stream: StreamError) -> RunError {
    let cloud = match db::connect(Side::Cloud, &config.cloud.url).await {
        Ok(cloud) => cloud,
        Err(e) => return e.into(),
    };
    let slot = &config.cloud.slot;
    let publication = &config.cloud.publication;
    let fatal = |message: String| {
        RunError::Stream(StreamError {
            kind: ErrorKind::Fatal,
            message: format!("{message} (the server said: {})", stream.message),
        })
    };
    match slot_state(&cloud, slot).await {
        Err(e) => return e.into(),
        Ok(None) => {
            return fatal(format!(
                "replication slot {slot} does not exist; fix: run `tandem init` to create it (changes made \
                 while it was missing did not stream: repair them with `tandem reconcile`)"
            ));
        }
        Ok(Some(state)) => {
            if let Some((problem, fix)) = state.problem(slot) {
                return fatal(format!("{problem}; fix: {fix}"));
            }
        }
    }
    match publication_state(&cloud, publication).await {
        Err(e) => e.into(),
        Ok(None) => fatal(format!(
            "publication {publication} does not exist; fix: run `tandem init` to create it"
        )),
        // The slot and the publication are fine: a passing problem (the slot busy with another
        // connection, the server restarting).
        Ok(Some(_)) => RunError::Stream(StreamError {
            kind: ErrorKind::Transient,
            message: stream.message,
        }),
    }
}

/// The state of one connected stretch.
struct Stream<'a> {
    mapping: &'a Mapping,
    plan: &'a Reverse,
    tables: &'a Tables,
    changes: watch::Receiver<Snapshot>,
    /// Parked tables, with why: their rows are set aside as dead letters.
    parked: BTreeMap<usize, String>,
    /// The tables changed: the session ends at the next group boundary, to start again with them.
    reshaped: bool,
    desktop: tokio_postgres::Client,
    target: Target,
    replication: ReplicationClient,
    relations: RelationCache,
    maps: HashMap<u32, Option<RelationMap>>,
    encoder: Encoder,
    /// End LSN of the last transaction applied to the desktop.
    stored: Option<EndLsn>,
    careful_through: Option<CommitLsn>,
    /// Commit position of the last transaction that began: where a replay must reach.
    last_final: CommitLsn,
    /// The last position told to the slot.
    acknowledged: Option<crate::change::Lsn>,
    in_transaction: bool,
    /// Changes received in the transaction in progress.
    tx_changes: u64,
    nap: Nap,
    skip_transaction: bool,
    /// End LSN of the last committed transaction of the group not yet applied, and when it began.
    pending: Option<(EndLsn, Instant)>,
    /// Rows staged for the group not yet applied (sent to the desktop already, or still buffered).
    group_rows: u64,
    /// When the first transaction of the group began to arrive.
    group_began: Option<Instant>,
    flush_bytes: usize,
    max_rows: u64,
    max_time: std::time::Duration,
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

/// Classifies a transport error where it is raised: its own failures by their variant; a server error
/// (flattened to text by the transport) is `Fatal` until [`diagnose`] asks the cloud.
fn stream_error(e: pgwire_replication::error::PgWireError) -> RunError {
    use pgwire_replication::error::PgWireError as E;
    let kind = match &e {
        E::Io(_) | E::Task(_) | E::Protocol(_) => ErrorKind::Transient,
        // A wrong password, a certificate that fails verification, a frame over the limit, the server
        // refusing: retrying as such cannot help (a server error is diagnosed before giving up).
        _ => ErrorKind::Fatal,
    };
    RunError::Stream(StreamError {
        kind,
        message: e.to_string(),
    })
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
        let parked: BTreeMap<usize, String> = tables
            .parked
            .iter()
            .map(|(&i, p)| (i, format!("{}; fix: {}", p.reason, p.fix)))
            .collect();
        let target = Target::prepare(&desktop, Direction::Reverse, prepared.plan.staging()).await?;
        let stored = reverse::stored_position(&desktop).await?;
        let start = stored.map(|s| s.0);
        let replication_config =
            logical::replication_config(self.config, start.unwrap_or_default(), start)?;
        let replication = ReplicationClient::connect(replication_config)
            .await
            .map_err(stream_error)?;
        if self.options.once && self.once_token.is_none() {
            let since_epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let token = format!("{}-{}", std::process::id(), since_epoch.as_nanos());
            cloud
                .execute(
                    "SELECT pg_logical_emit_message(false, $1, $2)",
                    &[&ONCE_PREFIX, &token],
                )
                .await
                .ctx(Side::Cloud, "marking the end of what run --once applies")?;
            self.once_token = Some(token);
        }
        let sync = &self.config.sync;
        let mut encoder = Encoder::new(&prepared.mapping);
        for &i in parked.keys() {
            encoder.park(i);
        }
        let mut stream = Stream {
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
            acknowledged: start,
            in_transaction: false,
            tx_changes: 0,
            nap: Nap::default(),
            skip_transaction: false,
            pending: None,
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
        stream.resume(&cloud, &mut self.stats).await?;
        drop(cloud);
        let result = stream
            .run(shutdown, self.once_token.as_deref(), &mut self.stats)
            .await;
        stream.replication.stop();
        // Let the replication worker end the stream cleanly (briefly: it is only politeness).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Ok(Some(_)) = stream.replication.recv().await {}
        })
        .await;
        result
    }
}

impl Stream<'_> {
    /// Inside a big transaction, when no event is waiting: the thread sleeps for a moment (see
    /// [`Nap`]) instead of waking for every row. Nothing of the transaction can be applied before its
    /// commit arrives anyway, so latency loses at most one nap per transaction; small transactions
    /// never nap.
    ///
    /// A blocking sleep on purpose: the reverse worker has its thread and its single-threaded runtime
    /// to itself, and the point is that the replication transport's task does not run either.
    fn nap_if_dry(&mut self) -> Option<pgwire_replication::Result<Option<ReplicationEvent>>> {
        let waiting = self.replication.recv().now_or_never();
        if waiting.is_none() {
            std::thread::sleep(self.nap.next());
        }
        waiting
    }

    async fn run(
        &mut self,
        shutdown: &CancellationToken,
        once: Option<&str>,
        stats: &mut RunStats,
    ) -> Result<(), RunError> {
        loop {
            if self.reshaped && !self.in_transaction && self.pending.is_none() {
                return Err(RunError::Reshaped);
            }
            // At a commit boundary with a group staged, take the next event only if it is already here:
            // otherwise apply the group now (latency first).
            let event = if self.pending.is_some() && !self.in_transaction {
                let (_, started) = self.pending.expect("checked");
                let rows = self.group_rows + self.encoder.staged_rows();
                let small = rows < self.max_rows && started.elapsed() < self.max_time;
                match small
                    .then(|| self.replication.recv().now_or_never())
                    .flatten()
                {
                    Some(event) => event.map_err(stream_error)?,
                    None => {
                        self.apply(stats).await?;
                        continue;
                    }
                }
            } else if let Some(event) = (self.in_transaction
                && self.tx_changes >= NAP_AFTER_CHANGES)
                .then(|| self.nap_if_dry())
                .flatten()
            {
                event.map_err(stream_error)?
            } else {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        // A transaction half received is replayed next time; a whole group is applied.
                        if !self.in_transaction && self.pending.is_some() {
                            self.apply(stats).await?;
                        }
                        return Ok(());
                    }
                    _ = self.changes.changed(), if !self.reshaped => {
                        self.reshaped = true;
                        continue;
                    }
                    event = self.replication.recv() => event.map_err(stream_error)?,
                }
            };
            let Some(event) = event else {
                return Err(StreamError::transient("the replication stream ended").into());
            };
            match event {
                ReplicationEvent::Begin { final_lsn, .. } => {
                    let final_lsn = CommitLsn(crate::change::Lsn(final_lsn.as_u64()));
                    self.in_transaction = true;
                    self.tx_changes = 0;
                    self.nap.begin();
                    self.group_began.get_or_insert_with(Instant::now);
                    self.skip_transaction = final_lsn.applied_by(self.stored);
                    self.last_final = final_lsn;
                    self.encoder
                        .set_careful(self.careful_through.is_some_and(|c| final_lsn <= c));
                }
                ReplicationEvent::XLogData { data, .. } => {
                    self.tx_changes += 1;
                    self.nap.received(data.len());
                    self.change(&data).await?
                }
                ReplicationEvent::Message {
                    prefix, content, ..
                } => {
                    if prefix == CLAIM_PREFIX && !self.skip_transaction {
                        self.claim(&content);
                    } else if prefix == ONCE_PREFIX
                        && once.is_some_and(|t| t.as_bytes() == content.as_ref())
                    {
                        if self.pending.is_some() {
                            self.apply(stats).await?;
                        }
                        return Ok(());
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    self.in_transaction = false;
                    self.encoder.end_transaction();
                    if !self.skip_transaction {
                        let started = self.pending.map_or_else(Instant::now, |(_, s)| s);
                        self.pending =
                            Some((EndLsn(crate::change::Lsn(end_lsn.as_u64())), started));
                        stats.outbox_rows += 1;
                    }
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    // When everything before it is applied, the slot moves on: a quiet publication
                    // must not pin WAL, and the cloud's fast shutdown waits for this.
                    let wal_end = WalEnd(crate::change::Lsn(wal_end.as_u64()));
                    self.acknowledge(Event::KeepAlive(wal_end));
                }
                ReplicationEvent::StoppedAt { .. } => return Ok(()),
            }
        }
    }

    async fn change(&mut self, data: &bytes::Bytes) -> Result<(), RunError> {
        let message =
            pgoutput::decode_bytes(data).map_err(|e| StreamError::transient(e.to_string()))?;
        // Borrowed, not cloned: this runs for every row.
        let maps = &self.maps;
        let encoder = &mut self.encoder;
        let mapped = |id: u32| maps.get(&id).and_then(Option::as_ref);
        let kept = match message {
            PgOutput::Relation(relation) => {
                let map = self
                    .mapping
                    .position_in_cloud(&relation.name.schema, &relation.name.name)
                    .filter(|&i| self.mapping.tables[i].reverse)
                    .map(|i| RelationMap::new(self.mapping, i, &relation));
                // Rows without a configured column (renamed or dropped in the cloud) would reach the
                // desktop without it: the table is parked, its rows set aside until it fits again.
                if let Some(map) = &map
                    && !map.missing().is_empty()
                    && !self.parked.contains_key(&map.table)
                {
                    let table = map.table;
                    let parked = Parked {
                        reason: format!(
                            "cloud table {} has no column {} any more (the stream's rows lack it)",
                            relation.name,
                            map.missing().join(", ")
                        ),
                        fix: "rename or add the column back in the cloud, or change the config and run `tandem init`"
                            .to_string(),
                    };
                    self.tables.park(table, parked.clone()).await?;
                    self.parked
                        .insert(table, format!("{}; fix: {}", parked.reason, parked.fix));
                    self.encoder.park(table);
                }
                self.maps.insert(relation.id, map);
                self.relations.update(relation);
                return Ok(());
            }
            _ if self.skip_transaction => return Ok(()),
            PgOutput::Insert { relation, new } => mapped(relation).map(|m| encoder.insert(m, &new)),
            PgOutput::Update { relation, old, new } => {
                mapped(relation).map(|m| encoder.update(m, old.as_ref(), &new))
            }
            PgOutput::Delete { relation, old } => mapped(relation).map(|m| encoder.delete(m, &old)),
            PgOutput::Truncate { relations, .. } => {
                for id in relations {
                    if let Some(r) = self.relations.get(id) {
                        tracing::warn!(
                            table = %r.name,
                            "the cloud table was truncated; tandem never truncates a desktop table: its desktop rows were left as they are"
                        );
                    }
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        if kept == Some(false) {
            tracing::debug!(
                "a change of a row that is not mobile-owned was ignored (the publication's row filter should not send it)"
            );
        }
        if self.encoder.buffered_bytes() >= self.flush_bytes {
            self.flush().await?;
            failpoint("reverse-mid-transaction");
        }
        Ok(())
    }

    fn claim(&mut self, content: &[u8]) {
        tracing::debug!(claim = %String::from_utf8_lossy(content), "claim received");
        let Some(claim) = Claim::parse(content) else {
            tracing::warn!("a tandem.claim message that is not valid JSON was ignored");
            return;
        };
        let table = self
            .mapping
            .position_in_cloud(&claim.schema, &claim.table)
            .filter(|&i| self.mapping.tables[i].reverse);
        if let Some(i) = table {
            self.encoder.claim(i, claim);
        }
    }

    /// Sends the buffered rows towards the desktop (the COPY goes on in the background while the
    /// stream is read).
    async fn flush(&mut self) -> Result<(), RunError> {
        for chunk in self.encoder.take() {
            self.group_rows += chunk.rows;
            let staged = self
                .plan
                .stage(
                    &mut self.target,
                    &self.desktop,
                    chunk.table,
                    chunk.dest,
                    chunk.data,
                    chunk.rows,
                )
                .await;
            staged.map_err(|e| self.refused(e))?;
        }
        Ok(())
    }

    /// A desktop error while the group wrote rows straight into desktop tables: a refused row there
    /// means receiving the group again, staged.
    fn refused(&self, e: CommitError) -> RunError {
        if e.kind() == ErrorKind::BadRow && self.target.staging.wrote_direct() {
            RunError::Replay(e, self.last_final)
        } else {
            e.into()
        }
    }

    /// Tells the slot what [`ack::acknowledgeable`] allows after `event`.
    fn acknowledge(&mut self, event: Event) {
        let held = Held {
            in_transaction: self.in_transaction,
            pending: self.pending.is_some(),
            acknowledged: self.acknowledged,
        };
        if let Some(position) = ack::acknowledgeable(held, event) {
            self.replication
                .update_applied_lsn(pgwire_replication::Lsn::from_u64(position.0));
            self.acknowledged = Some(position);
        }
    }

    /// Brings back what tables that are not parked (any more) set aside while they were: each row
    /// the cloud still holds as mobile-owned is re-saved there (by `cloud`, tandem's session) so its
    /// current version streams again, and applies against the old image its dead letter kept; a row
    /// the cloud no longer holds was deleted meanwhile, and its delete is applied from that image; a
    /// row now desktop-owned, or one the desktop never had and the cloud no longer holds, needs nothing.
    async fn resume(
        &mut self,
        cloud: &tokio_postgres::Client,
        stats: &mut RunStats,
    ) -> Result<(), RunError> {
        let mapping = self.mapping;
        let mut marked = false;
        let mut deleted = Vec::new();
        for (i, t) in mapping.tables.iter().enumerate() {
            if self.parked.contains_key(&i) || !t.reverse {
                continue;
            }
            let name = t.table.desktop.to_string();
            let open = retry::open(&self.desktop, &name, Some(PARKED_SQLSTATE)).await?;
            if open.is_empty() {
                continue;
            }
            if !marked {
                cloud
                    .execute("SELECT set_config($1, 'on', false)", &[&APPLYING_SETTING])
                    .await
                    .ctx(Side::Cloud, "marking the session as tandem's")?;
                marked = true;
            }
            let row = retry::CloudRow::new(t);
            let (mut resaved, mut settled) = (Vec::new(), Vec::new());
            for dl in open {
                let found = match &dl.row_key {
                    Some(key) => row.resave(cloud, key).await?,
                    None => retry::Found::Gone,
                };
                match (found, dl.old_image) {
                    (retry::Found::Resaved, _) => resaved.push(dl.id),
                    (retry::Found::Gone, Some(serde_json::Value::Object(old))) => {
                        self.encoder.claim(
                            i,
                            Claim {
                                delete: true,
                                schema: t.table.cloud.schema.clone(),
                                table: t.table.cloud.name.clone(),
                                old,
                            },
                        );
                        deleted.push(dl.id);
                    }
                    _ => settled.push(dl.id),
                }
            }
            tracing::info!(
                table = %name,
                resaved = resaved.len(),
                deleted_meanwhile = deleted.len(),
                settled = settled.len(),
                "a resumed table's rows set aside while parked come back"
            );
            retry::mark(&self.desktop, &resaved, false).await?;
            retry::mark(&self.desktop, &settled, true).await?;
        }
        if deleted.is_empty() {
            return Ok(());
        }
        self.flush().await?;
        let complex = self.encoder.take_complex();
        let group = Group {
            end: self.stored.unwrap_or_default(),
            complex: &complex,
            parked: &self.parked,
            resumed: true,
        };
        let outcome = self
            .plan
            .commit(&mut self.target, &self.desktop, mapping, &group)
            .await?;
        stats.outcome.add(&outcome);
        Ok(())
    }

    async fn apply(&mut self, stats: &mut RunStats) -> Result<(), RunError> {
        let Some((end, _)) = self.pending.take() else {
            return Ok(());
        };
        self.flush().await?;
        let rows = std::mem::take(&mut self.group_rows);
        let complex = self.encoder.take_complex();
        let started = Instant::now();
        let group = Group {
            end,
            complex: &complex,
            parked: &self.parked,
            resumed: false,
        };
        let committed = self
            .plan
            .commit(&mut self.target, &self.desktop, self.mapping, &group)
            .await;
        let outcome = committed.map_err(|e| self.refused(e))?;
        failpoint("reverse-after-commit");
        self.acknowledge(Event::Applied(end));
        self.stored = Some(end);
        stats.batches += 1;
        stats.outcome.add(&outcome);
        stats.outcome.staged_rows += rows;
        let received = self.group_began.take().map(|b| started.duration_since(b));
        tracing::debug!(
            position = %end,
            received = ?received,
            staged = rows,
            written = outcome.written,
            deleted = outcome.deleted,
            conflicts = outcome.conflicts,
            dead_letters = outcome.dead_letters,
            elapsed = ?started.elapsed(),
            nap = ?self.nap.length(),
            "reverse group applied"
        );
        Ok(())
    }
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
