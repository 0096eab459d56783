//! The forward plan builder (desktop → cloud).
//!
//! The desktop's current rows for the batch's keys are piped by binary COPY from the desktop's snapshot
//! straight into the cloud's staging tables (no row is decoded in between, so memory does not grow with
//! the batch); the plan then makes the cloud's desktop-owned rows equal to them: keys the desktop no
//! longer has are deleted, rows are upserted only where a value differs, cloud-key scopes are replaced
//! as a multiset diff, mobile-owned rows are never touched and a blocked change is logged as a conflict.

mod fill;
mod prepare;
use prepare::Shape;
pub mod sql;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::Client;

use crate::capture::outbox::ReadSql;
use crate::change::{Received, Side};
use crate::db::StatementCache;
use crate::transform::Mapping;

use super::{
    Batch, BatchOutcome, CommitError, Count, Isolate, Params, Plan, Staged, StagingTables, Step,
    Target, pipe,
};
use sql::{ForwardSql, Write};

/// Above this many staged rows (keys and rows), the staging tables are analyzed before the statements
/// that read them (in the same pipelines: no round trip of its own). Temp tables have no statistics
/// otherwise: the fast path's whole range (`_n BETWEEN $1 AND $2`) is then estimated at 0.5% of the
/// rows, `P._ck IS NULL` at 0.5% too, and the planner joins `S` and `P` by a nested loop, quadratic:
/// the seeds' 1,208 taskchecklist rows took 90 ms to insert that way (1.46M comparisons), a few ms
/// once analyzed. Analyzing a thousand-row staging table takes about a millisecond.
pub(super) const ANALYZE_ABOVE: u64 = 1_000;

/// How often an active forward direction writes its snapshot for the stream (see
/// [`crate::capture::logical::Own::emit_when_sql`]) when its batches change no phone's row: the desktop's horizon is then at
/// most about this old while the desktop writes. A desktop change of a phone's row the horizon does
/// not see yet is held back and asks for one at once (the stream passes it within milliseconds).
const HORIZON_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What [`Forward::apply`] did: the engine's outcome, and the keys it held back (per table, each
/// key's texts), to be taken again once the table's horizon reaches `wait_for` (a cloud xid8).
#[derive(Debug, Default)]
pub struct Applied {
    pub outcome: BatchOutcome,
    pub held: Vec<(usize, Vec<Vec<Option<String>>>)>,
    pub wait_for: i64,
}

/// One forward transaction as the commit engine runs it ([`Target::run`]): each table's desktop rows
/// that `read` selects, piped from the desktop's snapshot into staging, then the plan; with `fill`, a
/// table still empty once locked is filled instead (see [`Forward::fill`]).
pub struct Sending<'a> {
    pub plan: &'a Forward,
    pub mapping: &'a Mapping,
    /// The tables, in order, each with what selects its rows.
    pub reads: Vec<(usize, &'a ReadSql)>,
    pub truncated: &'a BTreeSet<usize>,
    pub horizons: &'a [Received],
    pub batch_id: &'a str,
    pub fill: bool,
    /// The source: its transaction holds the batch's snapshot.
    pub desktop: &'a Client,
    pub desktop_statements: &'a mut StatementCache,
    /// What was staged.
    pub staged: Staged,
}

impl super::Job for Sending<'_> {
    type Done = Applied;

    fn tables(&self) -> Vec<usize> {
        self.reads.iter().map(|(i, _)| *i).collect()
    }

    async fn stage(&mut self, target: &mut Target, cloud: &Client) -> Result<(), CommitError> {
        for &(i, read) in &self.reads {
            let staged = self
                .plan
                .stage(
                    target,
                    i,
                    read,
                    self.desktop,
                    self.desktop_statements,
                    cloud,
                )
                .await?;
            self.staged.rows += staged.rows;
            self.staged.bytes += staged.bytes;
        }
        Ok(())
    }

    async fn apply(&mut self, target: &mut Target, cloud: &Client) -> Result<Applied, CommitError> {
        if self.fill
            && let [(i, _)] = self.reads[..]
            && let Some(outcome) = self
                .plan
                .fill(target, cloud, self.mapping, i, self.batch_id)
                .await?
        {
            return Ok(Applied {
                outcome,
                ..Applied::default()
            });
        }
        let tables = self.tables().into_iter().collect();
        self.plan
            .apply(
                target,
                cloud,
                self.mapping,
                &tables,
                self.truncated,
                self.horizons,
                self.batch_id,
            )
            .await
    }

    fn progress(&self, _: &Applied) -> Option<super::Progress<'_>> {
        Some(super::Progress::Forward)
    }
}

/// The forward direction's statements, per configured table, built once per mapping.
#[derive(Debug, Clone)]
pub struct Forward {
    pub(super) sql: Vec<ForwardSql>,
    /// Each table's cloud name, as conflicts and dead letters record it.
    pub(super) names: Vec<String>,
    /// When a batch last wrote its snapshot into the cloud's WAL (milliseconds since the Unix epoch):
    /// the desktop's horizon moves when the stream passes one (see [`crate::capture::logical::Own::emit_when_sql`]).
    horizon_sent: Arc<AtomicU64>,
}

impl Forward {
    pub fn new(mapping: &Mapping) -> Self {
        Forward {
            sql: mapping
                .tables
                .iter()
                .enumerate()
                .map(|(i, t)| ForwardSql::build(t, i))
                .collect(),
            names: mapping
                .tables
                .iter()
                .map(|t| t.table.cloud.to_string())
                .collect(),
            horizon_sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Whether a batch should write its snapshot whatever it changes: none has for
    /// [`HORIZON_EVERY`].
    fn horizon_due(&self) -> bool {
        let last = self.horizon_sent.load(Ordering::Relaxed);
        now_millis().saturating_sub(last) >= HORIZON_EVERY.as_millis() as u64
    }

    /// A batch wrote its snapshot.
    fn horizon_sent(&self) {
        self.horizon_sent.store(now_millis(), Ordering::Relaxed);
    }

    /// The staging tables a cloud connection needs.
    pub fn staging(&self) -> StagingTables {
        StagingTables::declared(
            Side::Cloud,
            self.sql
                .iter()
                .map(|sql| (sql.staging_tables(), sql.create.clone())),
        )
    }

    /// The staging tables of a cloud connection that creates each table's only when it first stages
    /// it ([`Forward::create_staging`]): a reconcile that applies a few tables never creates the others'
    /// (creating them all takes tens of milliseconds).
    pub fn staging_on_demand(&self) -> StagingTables {
        StagingTables::declared(
            Side::Cloud,
            self.sql
                .iter()
                .map(|sql| (sql.staging_tables(), String::new())),
        )
    }

    /// `CREATE TEMP TABLE IF NOT EXISTS` of table `i`'s staging tables, for [`Forward::staging_on_demand`].
    pub fn create_staging(&self, i: usize) -> &str {
        &self.sql[i].create
    }

    /// Stages table `i`'s keys and rows from the desktop snapshot into the open cloud transaction.
    pub async fn stage(
        &self,
        target: &mut Target,
        i: usize,
        read: &ReadSql,
        desktop: &Client,
        desktop_statements: &mut StatementCache,
        cloud: &Client,
    ) -> Result<Staged, CommitError> {
        let of_table = |e| CommitError::of_table(e, i);
        let sql = &self.sql[i];
        target.begin(cloud, [i]).await?;
        let keys_out = desktop_statements
            .get(desktop, &read.copy_keys)
            .await
            .map_err(of_table)?;
        let rows_out = desktop_statements
            .get(desktop, &read.copy_rows)
            .await
            .map_err(of_table)?;
        let keys_in = target
            .statements
            .get(cloud, &sql.copy_keys_in)
            .await
            .map_err(of_table)?;
        let rows_in = target
            .statements
            .get(cloud, &sql.copy_rows_in)
            .await
            .map_err(of_table)?;
        let keys = pipe(desktop, &keys_out, cloud, &keys_in)
            .await
            .map_err(of_table)?;
        let rows = pipe(desktop, &rows_out, cloud, &rows_in)
            .await
            .map_err(of_table)?;
        target.staging.add(i, keys.rows + rows.rows);
        Ok(Staged {
            rows: rows.rows,
            bytes: rows.bytes + keys.bytes,
        })
    }

    /// Applies what is staged for `tables` in the open cloud transaction (the caller commits):
    /// desktop TRUNCATEs, the keys held back and the checks that shape the plan first, then the plan
    /// through the engine. `horizons` are the tables' horizons on the desktop, by mapping index, read
    /// in the snapshot the staged rows were read in: a phone's row whose writer one sees is the
    /// desktop's to change.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply(
        &self,
        target: &mut Target,
        cloud: &Client,
        mapping: &Mapping,
        tables: &BTreeSet<usize>,
        truncated: &BTreeSet<usize>,
        horizons: &[Received],
        batch_id: &str,
    ) -> Result<Applied, CommitError> {
        let order: Vec<usize> = mapping
            .parents_first
            .iter()
            .copied()
            .filter(|i| tables.contains(i))
            .collect();
        let none = BTreeMap::new();
        let batch = Batch {
            names: &self.names,
            id: batch_id,
            reasons: &none,
        };
        let big: BTreeSet<usize> = order
            .iter()
            .copied()
            .filter(|&i| target.staging.staged(i) > ANALYZE_ABOVE)
            .collect();
        let shape = Shape {
            order: &order,
            truncated,
            big: &big,
            horizons,
        };
        let prepared = self.prepare(target, cloud, shape, batch).await?;
        let plan = self.plan(&order, &big);
        let mut outcome = target.apply(cloud, &plan, batch).await?;
        outcome.dead_letters += prepared.dead_letters;
        Ok(Applied {
            outcome,
            held: prepared.held,
            wait_for: prepared.wait_for,
        })
    }

    /// The plan: scoped tables' multiset match and every table's conflicts first (they read the cloud
    /// as it is), deletes children first, writes parents first, then the dead letters of keys that
    /// applied resolved. The careful path runs the same steps, with its write statements as they are
    /// (see [`sql::CUSTOM_PLANS`]).
    fn plan<'a>(&'a self, order: &[usize], big: &BTreeSet<usize>) -> Plan<'a> {
        Plan {
            fast: self.steps(order, big, true),
            careful: self.steps(order, big, false),
        }
    }

    fn steps<'a>(&'a self, order: &[usize], big: &BTreeSet<usize>, fast: bool) -> Vec<Step<'a>> {
        let mut steps = Vec::new();
        for &i in order {
            let sql = &self.sql[i];
            if sql.plan.is_some() {
                // `P` was filled before the plan (see `prepare`).
                if let Some(analyze) = sql.analyze_plan.as_ref().filter(|_| big.contains(&i)) {
                    steps.push(Step::whole(
                        i,
                        "analyzing the scope's match",
                        analyze,
                        Params::None,
                        Count::Nothing,
                    ));
                }
                if let Some(pair) = &sql.pair {
                    steps.push(Step::whole(
                        i,
                        "pairing the scope's changed rows",
                        pair,
                        Params::None,
                        Count::Nothing,
                    ));
                }
            }
            for conflicts in &sql.conflicts {
                steps.push(Step::whole(
                    i,
                    "logging conflicts",
                    conflicts,
                    Params::Table,
                    Count::Conflicts,
                ));
            }
        }
        // Only big batches let their foreign keys' checks reuse plans: a small one has few rows to check,
        // and its latency is the statements it sends.
        let generic = |i: usize| fast && big.contains(&i);
        for &i in order.iter().rev() {
            self.write(
                &mut steps,
                i,
                &self.sql[i].delete,
                Count::Deleted,
                generic(i),
            );
        }
        for &i in order {
            let sql = &self.sql[i];
            self.write(&mut steps, i, &sql.write, Count::Written, generic(i));
            if let Some(update) = &sql.update_pairs {
                self.write(&mut steps, i, update, Count::Written, generic(i));
            }
            if let Some(update) = &sql.lookup_update {
                self.write(&mut steps, i, update, Count::Written, generic(i));
            }
            steps.push(self.resolving(i));
        }
        steps
    }

    /// The step resolving table `i`'s open dead letters of the keys the batch wrote (see
    /// `ForwardSql::resolve`).
    pub(super) fn resolving(&self, i: usize) -> Step<'_> {
        Step::whole(
            i,
            "resolving dead letters",
            &self.sql[i].resolve,
            Params::TableAndBatch,
            Count::Nothing,
        )
    }

    /// A ranged write step; with `fast` (the fast path of a big batch), its foreign keys' checks reuse
    /// their plans and the step after it plans each execution again.
    pub(super) fn write<'a>(
        &'a self,
        steps: &mut Vec<Step<'a>>,
        i: usize,
        write: &'a Write,
        count: Count,
        fast: bool,
    ) {
        let (sql, ranged) = (&self.sql[i], &write.ranged);
        steps.push(Step::ranged(
            i,
            ranged.what,
            if fast { &write.fast } else { &ranged.sql },
            count,
            Isolate {
                numbered: sql.numbered_table(ranged.numbered),
                image: sql.dead_letter_image(ranged.numbered),
            },
        ));
        if fast {
            steps.push(Step::whole(
                i,
                "planning each statement for its batch again",
                sql::CUSTOM_PLANS,
                Params::None,
                Count::Nothing,
            ));
        }
    }
}
