//! One connected stretch of the reverse worker: events from the slot, encoded and staged on the
//! desktop, applied per group, acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use futures_util::FutureExt;
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::capture::logical::{CLAIM_PREFIX, CUT_PREFIX, Claim, OWN_PREFIX, Own};
use crate::capture::pgoutput::{self, RelationCache};
use crate::change::Side;
use crate::change::{CommitLsn, EndLsn, Horizon, PgOutput, WalEnd};
use crate::commit::reverse::encode::Encoder;
use crate::commit::reverse::relation::RelationMap;
use crate::commit::reverse::{Group, Origin, Reverse};
use crate::commit::{CommitError, Target};
use crate::db::{Context, ErrorKind};
use crate::transform::Mapping;

use crate::pipeline::ack::{self, Event, Held};
use crate::pipeline::nap::Nap;
use crate::pipeline::tables::{Parked, Snapshot, Tables};
use crate::pipeline::{RunError, RunStats, StreamError, failpoint};

use super::diagnose::stream_error;
use super::{NAP_AFTER_CHANGES, ONCE_PREFIX};

/// How long the stream waits at a reconcile's cut at most (the reconcile gives up after 10 minutes).
const CUT_WAIT: std::time::Duration = std::time::Duration::from_secs(660);

/// The state of one connected stretch.
pub(super) struct Stream<'a> {
    /// An ordinary connection to the cloud: markers, re-saves, and the rows of a scope whose conflict
    /// is contested (see `commit::reverse`).
    pub(super) cloud: tokio_postgres::Client,
    pub(super) mapping: &'a Mapping,
    pub(super) plan: &'a Reverse,
    pub(super) tables: &'a Tables,
    pub(super) changes: watch::Receiver<Snapshot>,
    /// Parked tables, with why: their rows are set aside as dead letters.
    pub(super) parked: BTreeMap<usize, String>,
    /// The tables changed: the session ends at the next group boundary, to start again with them.
    pub(super) reshaped: bool,
    pub(super) desktop: tokio_postgres::Client,
    pub(super) target: Target,
    pub(super) replication: ReplicationClient,
    pub(super) relations: RelationCache,
    pub(super) maps: HashMap<u32, Option<RelationMap>>,
    pub(super) encoder: Encoder,
    /// End LSN of the last transaction applied to the desktop.
    pub(super) stored: Option<EndLsn>,
    pub(super) careful_through: Option<CommitLsn>,
    /// Commit position of the last transaction that began: where a replay must reach.
    pub(super) last_final: CommitLsn,
    /// Per table, the position a reconcile brought its mobile rows to: the table's changes of
    /// transactions that committed before it are skipped.
    pub(super) sync_points: HashMap<usize, CommitLsn>,
    /// The last position told to the slot.
    pub(super) acknowledged: Option<crate::change::Lsn>,
    pub(super) in_transaction: bool,
    /// Changes received in the transaction in progress.
    pub(super) tx_changes: u64,
    pub(super) nap: Nap,
    pub(super) skip_transaction: bool,
    /// The transaction being received holds `run --once`'s marker: the stream stops at its commit.
    pub(super) once_at_commit: bool,
    /// End LSN of the last committed transaction of the group not yet applied, and when it began.
    pub(super) pending: Option<(EndLsn, Instant)>,
    /// The cloud's commit times of the group's first and last transactions (see [`pg_time`]).
    pub(super) commit_times: Option<(i64, i64)>,
    /// When `tandem.progress.caught_up_at` was last written.
    pub(super) caught_up_written: Option<Instant>,
    /// The latest horizon the stream passed (a snapshot tandem wrote into the WAL: everything it sees
    /// is before it in the stream) not yet recorded on the desktop, and whether a desktop change waits
    /// for it (see [`Stream::horizon_passed`]).
    pub(super) horizon: Option<(Horizon, bool)>,
    /// When a horizon was last recorded on its own (not with a group).
    pub(super) horizon_written: Option<Instant>,
    /// Rows staged for the group not yet applied (sent to the desktop already, or still buffered).
    pub(super) group_rows: u64,
    /// When the first transaction of the group began to arrive.
    pub(super) group_began: Option<Instant>,
    pub(super) flush_bytes: usize,
    pub(super) max_rows: u64,
    pub(super) max_time: std::time::Duration,
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

    pub(super) async fn run(
        &mut self,
        shutdown: &CancellationToken,
        once: Option<(&str, crate::change::Lsn)>,
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
                    // Between transactions only: inside one, every event would register and drop a
                    // waiter on the watch (a lock each), and the session ends after it anyway.
                    _ = self.changes.changed(), if !self.reshaped && !self.in_transaction => {
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
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => {
                    let final_lsn = CommitLsn(crate::change::Lsn(final_lsn.as_u64()));
                    self.encoder.begin(xid, commit_time_micros, final_lsn.0);
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
                    if prefix == OWN_PREFIX && self.in_transaction {
                        // tandem's own change (sent first in its transaction): nothing to apply.
                        self.skip_transaction = true;
                        self.horizon_passed(Own::parse(&content));
                    } else if prefix == CLAIM_PREFIX && !self.skip_transaction {
                        self.claim(&content);
                    } else if prefix == CUT_PREFIX && !self.in_transaction {
                        self.cut(&content, shutdown, stats).await?;
                    } else if prefix == ONCE_PREFIX
                        && once.is_some_and(|(t, _)| t.as_bytes() == content.as_ref())
                    {
                        if self.in_transaction {
                            // Its own transaction, with nothing else in it: the stream stops at the
                            // commit.
                            self.skip_transaction = true;
                            self.once_at_commit = true;
                        } else {
                            // Everything that committed before it is applied: the slot moves to its
                            // end, as for a keepalive.
                            if let Some((_, end)) = once {
                                self.reached_once(WalEnd(end), stats).await?;
                            }
                            return Ok(());
                        }
                    }
                }
                ReplicationEvent::Commit {
                    end_lsn,
                    commit_time_micros,
                    ..
                } => {
                    self.in_transaction = false;
                    self.encoder.end_transaction();
                    if !self.skip_transaction {
                        let first = self.commit_times.map_or(commit_time_micros, |(f, _)| f);
                        self.commit_times = Some((first, commit_time_micros));
                        let started = self.pending.map_or_else(Instant::now, |(_, s)| s);
                        self.pending =
                            Some((EndLsn(crate::change::Lsn(end_lsn.as_u64())), started));
                        stats.outbox_rows += 1;
                    }
                    if std::mem::take(&mut self.once_at_commit) {
                        let end = WalEnd(crate::change::Lsn(end_lsn.as_u64()));
                        self.reached_once(end, stats).await?;
                        return Ok(());
                    }
                    if self.pending.is_none() {
                        self.record_horizon(false).await?;
                    }
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    // When everything before it is applied, the slot moves on: a quiet publication
                    // must not pin WAL, and the cloud's fast shutdown waits for this.
                    let wal_end = WalEnd(crate::change::Lsn(wal_end.as_u64()));
                    self.acknowledge(Event::KeepAlive(wal_end));
                    if self.pending.is_none() && !self.in_transaction {
                        self.caught_up().await?;
                    }
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
        let (points, last_final) = (&self.sync_points, self.last_final);
        // A table a reconcile brought past this transaction has it already.
        let mapped = |id: u32| {
            maps.get(&id)
                .and_then(Option::as_ref)
                .filter(|m| points.get(&m.table).is_none_or(|&at| last_final >= at))
        };
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

    /// A snapshot tandem wrote into the WAL: every transaction it sees committed before it, so once
    /// what is pending is applied, the desktop has received all of them. The latest is kept until it
    /// is recorded, with the next group or on its own ([`Stream::record_horizon`]).
    fn horizon_passed(&mut self, own: Own) {
        let Some(horizon) = own.horizon else {
            return;
        };
        let wanted = own.wanted || self.horizon.as_ref().is_some_and(|(_, w)| *w);
        match &self.horizon {
            Some((kept, _)) if kept.xmax() >= horizon.xmax() => {
                self.horizon.as_mut().expect("matched").1 = wanted;
            }
            _ => self.horizon = Some((horizon, wanted)),
        }
    }

    /// Records the latest horizon passed on the desktop, when nothing received is unapplied: at once
    /// when a desktop change waits for it (or `always`), else at most every [`HORIZON_EVERY`] (every
    /// forward batch writes one; a group records the latest with its progress anyway).
    async fn record_horizon(&mut self, always: bool) -> Result<(), RunError> {
        let Some((horizon, wanted)) = &self.horizon else {
            return Ok(());
        };
        let due = *wanted
            || always
            || self
                .horizon_written
                .is_none_or(|at| at.elapsed() >= HORIZON_EVERY);
        if !due || self.in_transaction || self.pending.is_some() || self.target.is_open() {
            return Ok(());
        }
        self.desktop
            .execute(crate::commit::RECORD_HORIZON, &[&horizon.as_str()])
            .await
            .ctx(Side::Desktop, "recording the tables' horizon")?;
        self.desktop
            .execute(crate::commit::WAKE_WAITING, &[])
            .await
            .ctx(Side::Desktop, "waking the forward worker")?;
        self.horizon = None;
        self.horizon_written = Some(Instant::now());
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
        if let Some(i) = table
            && self
                .sync_points
                .get(&i)
                .is_none_or(|&at| self.last_final >= at)
        {
            self.encoder.claim(i, claim);
        }
    }

    /// A reconcile's cut (see `crate::pipeline::sync`): everything before it is applied, the reconcile
    /// is told, and the stream waits until it has brought the table's mobile rows (its scan saw the
    /// cloud exactly here), at most a little longer than the reconcile waits for it.
    async fn cut(
        &mut self,
        content: &[u8],
        shutdown: &CancellationToken,
        stats: &mut RunStats,
    ) -> Result<(), RunError> {
        if self.pending.is_some() {
            self.apply(stats).await?;
        }
        let id = String::from_utf8_lossy(content).into_owned();
        self.desktop
            .execute(
                "UPDATE tandem.cuts SET reached_at = now() WHERE id = $1 AND reached_at IS NULL",
                &[&id],
            )
            .await
            .ctx(
                Side::Desktop,
                "recording that the stream reached a reconcile's cut",
            )?;
        let deadline = Instant::now() + CUT_WAIT;
        let mut said = false;
        loop {
            // A cut the desktop does not know (or one done already) holds nothing up.
            let waiting: bool = self
                .desktop
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM tandem.cuts WHERE id = $1 AND done_at IS NULL)",
                    &[&id],
                )
                .await
                .ctx(Side::Desktop, "reading tandem.cuts")?
                .get(0);
            if !waiting || shutdown.is_cancelled() {
                return Ok(());
            }
            if Instant::now() > deadline {
                tracing::warn!(cut = %id, "a reconcile's cut was not done in time; streaming on");
                return Ok(());
            }
            if !said {
                tracing::info!(cut = %id, "the reverse stream waits while a reconcile brings a table's mobile rows");
                said = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Sends the buffered rows towards the desktop (the COPY goes on in the background while the
    /// stream is read).
    pub(super) async fn flush(&mut self) -> Result<(), RunError> {
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

    /// `run --once` reached its marker, which ends at `end`: what is pending is applied and the slot
    /// moves to the marker's end.
    async fn reached_once(&mut self, end: WalEnd, stats: &mut RunStats) -> Result<(), RunError> {
        if self.pending.is_some() {
            self.apply(stats).await?;
        }
        self.record_horizon(true).await?;
        self.acknowledge(Event::KeepAlive(end));
        Ok(())
    }

    /// A keepalive found nothing unapplied: records that the desktop holds everything the cloud had
    /// sent (`tandem status` reads the lag as zero while this is recent), at most every
    /// [`CAUGHT_UP_EVERY`].
    async fn caught_up(&mut self) -> Result<(), RunError> {
        self.record_horizon(true).await?;
        if self
            .caught_up_written
            .is_some_and(|at| at.elapsed() < CAUGHT_UP_EVERY)
        {
            return Ok(());
        }
        self.desktop
            .execute(
                "INSERT INTO tandem.progress (direction, caught_up_at) VALUES ('reverse', now())
                 ON CONFLICT (direction) DO UPDATE SET caught_up_at = now()",
                &[],
            )
            .await
            .ctx(
                Side::Desktop,
                "recording that the reverse direction is caught up",
            )?;
        self.caught_up_written = Some(Instant::now());
        Ok(())
    }

    async fn apply(&mut self, stats: &mut RunStats) -> Result<(), RunError> {
        let Some((end, _)) = self.pending.take() else {
            return Ok(());
        };
        let (first, last) = self.commit_times.take().unwrap_or_default();
        self.flush().await?;
        let rows = std::mem::take(&mut self.group_rows);
        let complex = self.encoder.take_complex();
        let started = Instant::now();
        let horizon = self.horizon.take();
        let group = Group {
            end,
            complex: &complex,
            parked: &self.parked,
            origin: Origin::Stream {
                committed: pg_time(last),
            },
            horizon: horizon.as_ref().map(|(h, _)| h),
            cloud: Some(&self.cloud),
        };
        let committed = self
            .plan
            .commit(&mut self.target, &self.desktop, self.mapping, &group)
            .await;
        let outcome = committed.map_err(|e| self.refused(e))?;
        failpoint("reverse-after-commit");
        crate::telemetry::batch_committed("reverse", outcome.dead_letters, Some(pg_time(first)));
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

/// How often the latest horizon is recorded on its own when no desktop change waits for it.
const HORIZON_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// How often a caught-up reverse worker says so in `tandem.progress` (keepalives come about every
/// 10 s while the publication is quiet).
pub const CAUGHT_UP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A time the replication protocol sends (microseconds since 2000-01-01 UTC).
fn pg_time(micros: i64) -> std::time::SystemTime {
    const PG_EPOCH_FROM_UNIX: u64 = 946_684_800;
    let epoch = std::time::UNIX_EPOCH + std::time::Duration::from_secs(PG_EPOCH_FROM_UNIX);
    if micros >= 0 {
        epoch + std::time::Duration::from_micros(micros as u64)
    } else {
        epoch - std::time::Duration::from_micros(micros.unsigned_abs())
    }
}
