//! Tables reconciled two at a time, each on a lane of its own sessions (a [`Writer`]). Most of a
//! small table's reconcile is round trips, and most of a big one's is statements the servers run on
//! one core each: the other lane does the small tables meanwhile.
//!
//! **Order.** A table starts once the tables its cloud foreign keys reference (its parents) have
//! started: it scans and stages meanwhile, and writes, both ways, only once they are done (see
//! [`Gate`]): a child's rows find their parents, on the desktop as in the cloud. Only parents before a
//! table in `parents_first` order count, so a cycle of foreign keys never has two tables wait for
//! each other.
//!
//! **One forward applier.** Only the first lane takes the forward applier lock; the other applies
//! directly beside it (the lock is this process's while both run). When the first lane fails, both
//! start again with new sessions once neither runs. When the forward keys go to the outbox (the lock
//! is another process's), one lane only: the outbox is applied in its order, parents' keys first.

use std::collections::BTreeSet;
use std::future::Future;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::change::Side;
use crate::config::Config;
use crate::db::Context;
use crate::transform::Mapping;

use super::super::RunError;
use super::{Handed, Request, TableReport, Watch, Writer, table};

/// Tables reconciled at a time.
pub(super) const LANES: usize = 2;

/// What one table's reconcile ended with.
pub type Outcome = Result<(TableReport, Handed), RunError>;

/// What the caller does around each table's reconcile.
pub(super) trait Around {
    /// Before table `i` starts.
    fn starting(&self, i: usize) -> impl Future<Output = Result<(), RunError>>;
    /// Once it ended.
    fn ended(&self, i: usize, outcome: &Outcome) -> impl Future<Output = Result<(), RunError>>;
}

/// Reconciles `order` (tables in `parents_first` order), two at a time: each table's outcome, in
/// `order` (a table that fails has its outcome, and the others go on).
pub async fn reconcile_all(
    config: &Config,
    mapping: &Mapping,
    order: &[usize],
    request: Request,
    watch: &dyn Watch,
) -> Result<Vec<(usize, Outcome)>, RunError> {
    reconcile_tables(
        config,
        mapping,
        order,
        request,
        LANES,
        watch,
        &Finished(watch),
    )
    .await
}

/// Tells the watch each table that was reconciled.
struct Finished<'a>(&'a dyn Watch);

impl Around for Finished<'_> {
    async fn starting(&self, _: usize) -> Result<(), RunError> {
        Ok(())
    }

    async fn ended(&self, _: usize, outcome: &Outcome) -> Result<(), RunError> {
        if let Ok((report, _)) = outcome {
            self.0.finish(report);
        }
        Ok(())
    }
}

/// Reconciles `order` (tables in `parents_first` order) on at most `lanes` lanes: each table's
/// outcome, in `order`. An error is returned only when what surrounds the tables fails (sessions,
/// [`Around`]); a table that fails has its outcome, and the others go on.
#[allow(clippy::too_many_arguments)]
pub(super) async fn reconcile_tables(
    config: &Config,
    mapping: &Mapping,
    order: &[usize],
    request: Request,
    lanes: usize,
    watch: &dyn Watch,
    around: &impl Around,
) -> Result<Vec<(usize, Outcome)>, RunError> {
    if order.is_empty() {
        return Ok(Vec::new());
    }
    let apply_forward = !request.dry_run;
    let connect = |n| Writer::lanes(config, mapping, apply_forward, n);
    let lanes = lanes.min(order.len());
    let mut idle = connect(lanes).await?;
    let parents = cloud_parents(&idle[0].scan_cloud, mapping).await?;
    // A table's parents that are reconciled before it (others are not reconciled now).
    let parents: Vec<Vec<usize>> = (0..parents.len())
        .map(|i| {
            let at = order.iter().position(|&w| w == i);
            parents[i]
                .iter()
                .copied()
                .filter(|p| {
                    let before = order.iter().position(|w| w == p);
                    before.is_some() && before < at
                })
                .collect()
        })
        .collect();
    let mut waiting = order.to_vec();
    let (done, _) = watch::channel(BTreeSet::new());
    let mut running = FuturesUnordered::new();
    let mut outcomes = Vec::new();
    // A failed lane that held the forward lock: every lane starts again once none runs.
    let mut broken = None;
    loop {
        if broken.is_some() && running.is_empty() && !waiting.is_empty() {
            let writers: Vec<Writer> = broken.take().into_iter().chain(idle.drain(..)).collect();
            for writer in writers {
                writer.close().await;
            }
            idle = connect(lanes).await?;
        }
        while broken.is_none() && !idle.is_empty() {
            let ready = waiting
                .iter()
                .position(|i| parents[*i].iter().all(|p| !waiting.contains(p)));
            let Some(at) = ready else { break };
            let i = waiting.remove(at);
            let mut writer = idle.pop().expect("a lane is idle");
            writer.gate = Some(Gate {
                parents: parents[i].clone(),
                done: done.subscribe(),
            });
            running.push(lane(config, mapping, i, request, writer, watch, around));
        }
        let Some(finished) = running.next().await else {
            break;
        };
        let (i, writer, outcome) = finished?;
        done.send_modify(|d| {
            d.insert(i);
        });
        let failed = outcome.is_err();
        outcomes.push((i, outcome));
        match failed {
            false => idle.push(writer),
            true if writer.holds_lock() => broken = Some(writer),
            true => {
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
    outcomes.sort_by_key(|(i, _)| order.iter().position(|o| o == i));
    Ok(outcomes)
}

/// One table's reconcile on a lane: the table, the lane's writer, and how it ended.
async fn lane(
    config: &Config,
    mapping: &Mapping,
    i: usize,
    request: Request,
    mut writer: Writer,
    watch: &dyn Watch,
    around: &impl Around,
) -> Result<(usize, Writer, Outcome), RunError> {
    around.starting(i).await?;
    let outcome = table(config, mapping, i, request, &mut writer, watch).await;
    around.ended(i, &outcome).await?;
    Ok((i, writer, outcome))
}

/// What a table's writes wait for: the tables its rows reference (its cloud foreign keys) being
/// done, or failed. Waited for before the desktop repairs (a child's desktop rows after its
/// parents') and before the forward writes.
pub(super) struct Gate {
    parents: Vec<usize>,
    done: watch::Receiver<BTreeSet<usize>>,
}

impl Gate {
    pub(super) async fn open(mut self) {
        let parents = self.parents;
        // The sender lives as long as the tables run: an error only means they ended.
        let _ = self
            .done
            .wait_for(|done| parents.iter().all(|p| done.contains(p)))
            .await;
    }
}

/// The configured tables each configured table's cloud foreign keys reference (itself excluded), by
/// mapping index.
async fn cloud_parents(cloud: &Client, mapping: &Mapping) -> Result<Vec<Vec<usize>>, RunError> {
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
