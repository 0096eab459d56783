//! The sessions a reconcile keeps from table to table: the one that writes on the desktop (repairs,
//! key lists, outbox rows), the scans', the one that cuts the stream, and the forward applier's.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::change::Side;
use crate::commit::forward::Forward;
use crate::commit::reverse::Reverse;
use crate::commit::{Direction, StagingTables, Target};
use crate::config::Config;
use crate::db::{self, StatementCache};
use crate::transform::Mapping;

use super::RunError;

/// The desktop session a reconcile writes with. Its target (the session marked as tandem's, with the
/// reverse staging tables) is prepared when a repair first needs it. When it holds the forward applier
/// lock (no `run` applies the outbox), it is the forward applier too: see [`Direct`].
pub struct Writer {
    pub desktop: Client,
    pub(super) target: Option<Target>,
    pub(super) plan: Reverse,
    pub(super) direct: Option<Direct>,
    holds_lock: bool,
    /// What the next table's writes wait for (an initial sync's lane).
    pub(super) gate: Option<super::lanes::Gate>,
    /// The scans' sessions (and the one that cuts the stream), kept from table to table.
    pub(super) scan_desktop: Client,
    pub(super) scan_cloud: Client,
    pub(super) cutter: Client,
}

/// The forward applier of a reconcile that holds the forward lock (or runs beside a writer of this
/// process that does): the keys that differ are listed on the desktop and applied at the end of the
/// table's scan through the forward plan, in one cloud transaction, from the desktop's rows as they
/// are then (a table-scan source beside the outbox). Safe for the same reason the outbox is: nobody
/// else applies while the lock is held, and every desktop change since is in the outbox, applied
/// after. Its target is prepared when it first applies.
pub(super) struct Direct {
    pub(super) cloud: Client,
    /// Its staging tables are created table by table, when a table is first applied.
    pub(super) target: Option<Target>,
    pub(super) staged: BTreeSet<usize>,
    pub(super) plan: Forward,
    pub(super) statements: StatementCache,
}

/// `target`, prepared on `client` first if it is not yet (the session marked as tandem's, the staging
/// tables created: a reconcile that writes nothing never pays for them).
pub(super) async fn prepared<'t>(
    target: &'t mut Option<Target>,
    client: &Client,
    direction: Direction,
    staging: impl FnOnce() -> StagingTables,
) -> Result<&'t mut Target, RunError> {
    if target.is_none() {
        *target = Some(Target::prepare(client, direction, staging()).await?);
    }
    Ok(target.as_mut().expect("prepared above"))
}

/// How a writer's forward repairs are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applier {
    /// Through the outbox (a dry run, or another process holds the forward lock).
    Outbox,
    /// Directly, by this writer, which takes the forward lock if it is free (else: through the outbox).
    Locking,
    /// Directly, beside a writer of this process that holds the forward lock (see [`Writer::beside`]).
    Beside,
}

impl Writer {
    /// With `apply_forward`, takes the forward applier lock if it is free (released when the writer is
    /// dropped: its session ends).
    pub async fn connect(
        config: &Config,
        mapping: &Mapping,
        apply_forward: bool,
    ) -> Result<Writer, RunError> {
        let applier = match apply_forward {
            true => Applier::Locking,
            false => Applier::Outbox,
        };
        Self::open(config, mapping, applier).await
    }

    /// A writer that applies directly (`direct`) without taking the forward lock: only while another
    /// writer of this process holds it ([`Writer::holds_lock`]), for as long as that one lives.
    pub(super) async fn beside(
        config: &Config,
        mapping: &Mapping,
        direct: bool,
    ) -> Result<Writer, RunError> {
        let applier = match direct {
            true => Applier::Beside,
            false => Applier::Outbox,
        };
        Self::open(config, mapping, applier).await
    }

    /// At most `n` writers: with `apply_forward`, the first takes the forward lock if it is free and
    /// the others apply beside it; when another process holds the lock, the first alone (its keys go
    /// to the outbox, which is applied in its order: a second lane could queue a child's keys before
    /// its parent's).
    pub(super) async fn lanes(
        config: &Config,
        mapping: &Mapping,
        apply_forward: bool,
        n: usize,
    ) -> Result<Vec<Writer>, RunError> {
        let applier = match apply_forward {
            true => Applier::Beside,
            false => Applier::Outbox,
        };
        let others = (1..n).map(|_| Self::open(config, mapping, applier));
        let (first, mut others) = tokio::try_join!(
            Self::connect(config, mapping, apply_forward),
            futures_util::future::try_join_all(others)
        )?;
        if apply_forward && !first.applies_directly() {
            for other in others.drain(..) {
                other.close().await;
            }
        }
        others.insert(0, first);
        Ok(others)
    }

    async fn open(
        config: &Config,
        mapping: &Mapping,
        applier: Applier,
    ) -> Result<Writer, RunError> {
        let (desktop, scan_desktop, scan_cloud, cutter, cloud) = tokio::try_join!(
            db::connect(Side::Desktop, &config.desktop.url),
            db::connect(Side::Desktop, &config.desktop.url),
            db::connect(Side::Cloud, &config.cloud.url),
            db::connect(Side::Cloud, &config.cloud.url),
            async {
                match applier {
                    Applier::Locking | Applier::Beside => {
                        db::connect(Side::Cloud, &config.cloud.url).await.map(Some)
                    }
                    Applier::Outbox => Ok(None),
                }
            }
        )?;
        let holds_lock = applier == Applier::Locking
            && db::try_lock(&desktop, Side::Desktop, db::FORWARD_LOCK).await?;
        let direct = cloud
            .filter(|_| holds_lock || applier == Applier::Beside)
            .map(|cloud| Direct {
                cloud,
                target: None,
                staged: BTreeSet::new(),
                plan: Forward::new(mapping),
                statements: StatementCache::new(Side::Desktop),
            });
        Ok(Writer {
            desktop,
            target: None,
            plan: Reverse::new(mapping),
            direct,
            holds_lock,
            gate: None,
            scan_desktop,
            scan_cloud,
            cutter,
        })
    }

    /// Whether this writer holds the forward applier lock.
    pub(super) fn holds_lock(&self) -> bool {
        self.holds_lock
    }

    /// Whether this writer applies forward repairs itself (see [`Direct`]).
    pub(super) fn applies_directly(&self) -> bool {
        self.direct.is_some()
    }
}

impl Writer {
    /// Ends the writer's sessions, letting the forward applier lock go now: a dropped connection's
    /// backend releases it a moment later, when a worker starting next could already find it taken.
    pub async fn close(self) {
        if let Some(direct) = &self.direct
            && direct.target.is_some()
        {
            db::drop_temp_tables(&direct.cloud).await;
        }
        if self.holds_lock {
            // After a failure the session may be in a failed transaction.
            let _ = self.desktop.batch_execute("ROLLBACK").await;
            let unlock = self.desktop.execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&db::LOCK_CLASS, &db::FORWARD_LOCK],
            );
            if let Err(e) = unlock.await {
                tracing::debug!(error = %e, "releasing the forward applier lock (the session ends anyway)");
            }
        }
    }
}
