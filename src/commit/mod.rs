//! The one commit engine: it owns the target's transaction in both directions (and, next, the
//! reconcile's).
//!
//! A direction brings rows into the target's staging tables (the forward direction pipes them from the
//! desktop's snapshot by binary COPY, the reverse direction streams them from the logical replication
//! slot by COPY text) and contributes a *plan builder*: which statements make the target equal to what
//! is staged, per table. The engine runs the plan in one transaction, always the same way:
//!
//! - **staging lifecycle** ([`staging`]): session temp tables created once per connection, emptied
//!   before a table's first use in a transaction (truncated once they held many rows: temp tables are
//!   never vacuumed), analyzed when big;
//! - **order**: what reads the target as it is first (plan tables, conflicts), then deletes children
//!   first, then writes parents first (the cloud's foreign keys), then dead letters resolved;
//! - **the fast path**: every statement sent at once as one pipeline, one round trip, after a savepoint;
//! - **the careful path**, when the target refused a row: back to the savepoint, and every statement
//!   over a range of staging rows runs again under savepoints, failing ranges halved until each refused
//!   row stands alone as a dead letter ([`isolate`]) while the rest commits;
//! - **conflict logging** through one statement shape ([`log_conflicts`]), dead letters, and the
//!   direction's progress written in the same transaction as the data, then COMMIT.
//!
//! Errors keep their kind from where they were raised and name the table whose statement failed, so the
//! pipeline can park that table alone ([`CommitError::table`]).

pub mod forward;
pub mod isolate;
mod plan;
pub mod reconcile;
pub mod resolve;
pub mod reverse;
mod staging;

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::change::{EndLsn, Horizon, Side};
use crate::db::{self, APPLYING_SETTING, Context, DbError, ErrorKind, StatementCache};

pub use plan::{Batch, BatchOutcome, Count, Direction, Isolate, Params, Plan, Step};
pub use staging::{CopyInto, Dest, Staged, StagingTables, pipe};

/// Where a direction's progress is recorded, in the same transaction as its data.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// The forward direction records when it last applied (its position is the outbox itself: applied
    /// rows are deleted from it after the commit).
    Forward,
    /// The end of the last cloud transaction applied, its commit time on the cloud when known, and the
    /// latest horizon the stream passed before it (see [`RECORD_HORIZON`]).
    Reverse(EndLsn, Option<std::time::SystemTime>, Option<&'a Horizon>),
    /// Nothing to record (a reconcile's repairs are no position of any source).
    Nothing,
}

/// How long tandem waits for a row an application holds before it gives way (the reverse for a
/// desktop row, the forward for a cloud row a phone's transaction holds): shorter than PostgreSQL's
/// `deadlock_timeout` (1 s by default), so when the application and tandem each wait for a row the
/// other holds, tandem's wait ends first and the application's transaction goes on (the deadlock
/// detector would otherwise abort either one). tandem's transaction is rolled back and tried again
/// after a pause (a transient error). The value it had is kept in `tandem.lock_timeout` for
/// [`LOCK_TIMEOUT_RESET`] (reading it back from `pg_settings` took 0.3–0.6 ms a batch, most of a
/// one-row forward batch's statements).
pub(crate) const LOCK_TIMEOUT: &str = "SELECT pg_catalog.set_config('tandem.lock_timeout', \
     pg_catalog.current_setting('lock_timeout'), true), pg_catalog.set_config('lock_timeout', '300ms', true)";
/// The `lock_timeout` the transaction had before [`LOCK_TIMEOUT`].
pub(crate) const LOCK_TIMEOUT_RESET: &str = "SELECT pg_catalog.set_config('lock_timeout', \
     pg_catalog.current_setting('tandem.lock_timeout'), true)";

/// Records `$1` (a [`Horizon`]'s text, which the reverse stream has passed with everything before it
/// applied) as the horizon of every table synced since the slot was made, where it is later than the
/// table's own. A table due to sync (after a new slot) keeps the one it had, which is still true: what
/// phones did before the new slot was made is not the stream's, and its sync sets the next.
pub const RECORD_HORIZON: &str = "UPDATE tandem.table_state SET horizon = $1::text \
     WHERE synced_at IS NOT NULL \
       AND (horizon IS NULL OR split_part(horizon, ':', 2)::bigint < split_part($1::text, ':', 2)::bigint)";

/// Wakes the forward worker when desktop changes wait for a horizon (see `tandem.outbox.wait_for`).
pub const WAKE_WAITING: &str = "SELECT pg_notify('tandem_outbox', '') \
     FROM (SELECT 1 FROM tandem.outbox WHERE wait_for IS NOT NULL LIMIT 1) w";

const FORWARD_PROGRESS: &str =
    "INSERT INTO tandem.progress (direction, applied_at) VALUES ('forward', now())
     ON CONFLICT (direction) DO UPDATE SET applied_at = EXCLUDED.applied_at";
/// Monotonic: a replayed transaction never moves the position back.
const REVERSE_PROGRESS: &str = "INSERT INTO tandem.progress (direction, lsn, applied_at, committed_at)
     VALUES ('reverse', $1::text::pg_lsn, now(), $2)
     ON CONFLICT (direction) DO UPDATE SET lsn = GREATEST(tandem.progress.lsn, EXCLUDED.lsn), applied_at = EXCLUDED.applied_at,
         committed_at = GREATEST(tandem.progress.committed_at, EXCLUDED.committed_at)";

/// A failure of the engine, with the configured table whose statement failed (when one did).
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct CommitError {
    /// The mapping index of the table the failing statement (or staging) concerned.
    pub table: Option<usize>,
    #[source]
    pub source: DbError,
}

impl CommitError {
    pub fn kind(&self) -> ErrorKind {
        self.source.kind()
    }

    /// The error, as concerning table `i`.
    pub fn of_table(source: DbError, table: usize) -> Self {
        CommitError {
            table: Some(table),
            source,
        }
    }
}

impl From<DbError> for CommitError {
    fn from(source: DbError) -> Self {
        CommitError {
            table: None,
            source,
        }
    }
}

/// What a direction brings to one transaction of the target: the engine's one contract, which the
/// forward batches, a sync's direct applications, the reverse groups, a reconcile's desktop repairs and
/// `conflicts resolve` all write through ([`Target::run`] drives it):
/// - [`Job::tables`]: the staging tables the transaction uses (emptied before their first use in it);
/// - [`Job::stage`]: the rows, into staging (a reverse group's came while the stream was read, in the
///   transaction open already);
/// - [`Job::apply`]: what decides the plan, read first, then the plan, through [`Target::apply`];
/// - [`Job::progress`]: what the commit records with the data, or `None` to write nothing after all.
pub(crate) trait Job {
    /// What the transaction did.
    type Done;

    fn tables(&self) -> Vec<usize> {
        Vec::new()
    }

    async fn stage(&mut self, _target: &mut Target, _client: &Client) -> Result<(), CommitError> {
        Ok(())
    }

    async fn apply(
        &mut self,
        target: &mut Target,
        client: &Client,
    ) -> Result<Self::Done, CommitError>;

    fn progress(&self, done: &Self::Done) -> Option<Progress<'_>>;
}

/// One connection to a target database, in tandem's session: its prepared statements, its staging
/// tables, and the transaction open on it.
#[derive(Debug)]
pub struct Target {
    pub direction: Direction,
    pub statements: StatementCache,
    pub staging: StagingTables,
    open: bool,
    /// Rows the open transaction wrote or deleted, per table: counted once it commits.
    applied: Vec<(String, u64)>,
}

impl Target {
    /// Once per connection: marks the session as tandem's (the desktop's capture trigger skips its
    /// writes, the cloud's ownership trigger leaves its `source` alone), plans every execution for its
    /// own batch (staging sizes vary by orders of magnitude), and creates the staging tables.
    pub async fn prepare(
        client: &Client,
        direction: Direction,
        staging: StagingTables,
    ) -> Result<Target, DbError> {
        let side = direction.target();
        client
            .execute(
                "SELECT set_config($1, 'on', false), set_config('plan_cache_mode', 'force_custom_plan', false)",
                &[&APPLYING_SETTING],
            )
            .await
            .ctx(side, "marking the session as tandem's")?;
        client
            .batch_execute(&staging.create_sql())
            .await
            .ctx(side, "creating the staging tables")?;
        Ok(Target {
            direction,
            statements: StatementCache::new(side),
            staging,
            open: false,
            applied: Vec::new(),
        })
    }

    /// Counts `rows` written or deleted in `table` by the open transaction (see [`Target::commit`]).
    pub fn count_applied(&mut self, table: &str, rows: u64) {
        self.applied.push((table.to_string(), rows));
    }

    /// The open transaction committed: its rows are counted in the metrics.
    fn committed(&mut self) {
        let direction = self.direction.as_str();
        for (table, rows) in self.applied.drain(..) {
            crate::telemetry::rows_applied(direction, &table, rows);
        }
    }

    pub fn side(&self) -> Side {
        self.direction.target()
    }

    /// Whether a transaction is open.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Begins the transaction if none is open, and empties the staging tables of `tables` not used in
    /// it yet: one round trip.
    pub async fn begin(
        &mut self,
        client: &Client,
        tables: impl IntoIterator<Item = usize>,
    ) -> Result<(), DbError> {
        let mut sql = String::new();
        if !self.open {
            sql.push_str("BEGIN;");
            if self.direction == Direction::Reverse {
                sql.push_str(&format!(
                    "SELECT pg_advisory_xact_lock({}, {});",
                    db::LOCK_CLASS,
                    db::REVERSE_LOCK
                ));
            }
        }
        for i in tables {
            sql.push_str(&self.staging.first_use(i));
        }
        if !sql.is_empty() {
            client
                .batch_execute(&sql)
                .await
                .ctx(self.side(), "beginning the transaction")?;
            self.applied.clear();
        }
        self.open = true;
        Ok(())
    }

    /// Runs `plan` in the open transaction: the fast path, then, if the target refused a row, the
    /// careful path from the savepoint taken before it.
    pub async fn apply(
        &mut self,
        client: &Client,
        plan: &Plan<'_>,
        batch: Batch<'_>,
    ) -> Result<BatchOutcome, CommitError> {
        let side = self.side();
        match self.fast(client, &plan.fast, batch).await? {
            Ok(outcome) => Ok(outcome),
            Err(refused) => {
                tracing::debug!(
                    direction = self.direction.as_str(),
                    error = %refused,
                    "a row was refused; applying the batch again, isolating refused rows"
                );
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT tandem_apply")
                    .await
                    .ctx(side, "ROLLBACK TO SAVEPOINT")?;
                self.careful(client, &plan.careful, batch).await
            }
        }
    }

    /// The savepoint, then every step, as one pipeline. A refused row comes back as the inner error
    /// (the caller goes careful from the savepoint); anything else fails the batch.
    async fn fast(
        &mut self,
        client: &Client,
        steps: &[Step<'_>],
        batch: Batch<'_>,
    ) -> Result<Result<BatchOutcome, DbError>, CommitError> {
        let side = self.side();
        let savepoint = self
            .statements
            .get(client, "SAVEPOINT tandem_apply")
            .await?;
        let mut prepared = Vec::with_capacity(steps.len());
        for step in steps {
            let statement = self
                .statements
                .get(client, step.sql)
                .await
                .map_err(|e| CommitError::of_table(e, step.table))?;
            prepared.push(statement);
        }
        let whole = (i64::MIN, i64::MAX);
        // The savepoint first (no step), in the same round trip.
        let mut results = db::pipelined(
            std::iter::once((None, &savepoint))
                .chain(steps.iter().map(Some).zip(&prepared))
                .map(|(step, statement)| {
                    let whole = &whole;
                    async move {
                        let Some(step) = step else {
                            return client.execute(statement, &[]).await;
                        };
                        let name = &batch.names[step.table];
                        let reason = batch.reason(step.table);
                        let params: Vec<&(dyn ToSql + Sync)> = match step.params {
                            Params::None => vec![],
                            Params::Table => vec![name],
                            Params::TableAndBatch => vec![name, &batch.id],
                            Params::Range => vec![&whole.0, &whole.1],
                            Params::TableBatchAndReason => vec![name, &batch.id, &reason],
                        };
                        client.execute(statement, &params).await
                    }
                })
                .collect(),
        )
        .await
        .into_iter();
        results
            .next()
            .expect("the savepoint's result")
            .ctx(side, "SAVEPOINT")?;
        let mut outcome = BatchOutcome::default();
        let mut applied = Vec::new();
        // The first error is the cause; the statements after it only say the transaction is aborted.
        for (step, result) in steps.iter().zip(results) {
            let source = match result {
                Ok(n) => {
                    outcome.tally(step.count, n);
                    if matches!(step.count, Count::Written | Count::Deleted) {
                        applied.push((batch.names[step.table].clone(), n));
                    }
                    continue;
                }
                Err(source) => source,
            };
            let e = DbError::Query {
                side,
                context: format!("{} on {}", step.what, batch.names[step.table]),
                source,
            };
            if e.kind() == ErrorKind::BadRow {
                return Ok(Err(e));
            }
            return Err(CommitError::of_table(e, step.table));
        }
        self.applied.extend(applied);
        Ok(Ok(outcome))
    }

    /// Every step one by one; ranged steps isolate their refused rows as dead letters.
    async fn careful(
        &mut self,
        client: &Client,
        steps: &[Step<'_>],
        batch: Batch<'_>,
    ) -> Result<BatchOutcome, CommitError> {
        let side = self.side();
        let mut outcome = BatchOutcome::default();
        for step in steps {
            let name = &batch.names[step.table];
            let of_table = |e| CommitError::of_table(e, step.table);
            let statement = self
                .statements
                .get(client, step.sql)
                .await
                .map_err(of_table)?;
            let affected = match (step.isolate, step.params) {
                (Some(isolate), _) => {
                    let site = isolate::DeadLetterSite {
                        side,
                        direction: self.direction.as_str(),
                        table_name: name,
                        batch: batch.id,
                        image_sql: isolate.image,
                        numbered_table: isolate.numbered,
                    };
                    let done = isolate::run_ranged(client, step.what, &statement, &site)
                        .await
                        .map_err(of_table)?;
                    outcome.dead_letters += done.dead_letters;
                    done.affected
                }
                (None, params) => {
                    let result = match params {
                        Params::None => client.execute(&statement, &[]).await,
                        Params::Table => client.execute(&statement, &[name]).await,
                        Params::TableAndBatch => {
                            client.execute(&statement, &[name, &batch.id]).await
                        }
                        Params::Range => client.execute(&statement, &[&i64::MIN, &i64::MAX]).await,
                        Params::TableBatchAndReason => {
                            let reason = batch.reason(step.table);
                            client
                                .execute(&statement, &[name, &batch.id, &reason])
                                .await
                        }
                    };
                    result
                        .ctx(side, format!("{} on {name}", step.what))
                        .map_err(of_table)?
                }
            };
            outcome.tally(step.count, affected);
            if matches!(step.count, Count::Written | Count::Deleted) {
                self.applied.push((name.to_string(), affected));
            }
        }
        Ok(outcome)
    }

    /// Records the direction's progress and commits the open transaction, in one round trip.
    pub async fn commit(&mut self, client: &Client, progress: Progress<'_>) -> Result<(), DbError> {
        let side = self.side();
        let commit = self.statements.get(client, "COMMIT").await?;
        let (sql, position) = match progress {
            Progress::Forward => (FORWARD_PROGRESS, None),
            Progress::Reverse(end, committed, horizon) => {
                if let Some(horizon) = horizon {
                    let record = self.statements.get(client, RECORD_HORIZON).await?;
                    let wake = self.statements.get(client, WAKE_WAITING).await?;
                    let mut done = db::pipelined(vec![
                        client.execute(&record, &[&horizon.as_str()]),
                        client.execute(&wake, &[]),
                    ])
                    .await;
                    done.pop()
                        .expect("two results")
                        .ctx(side, "waking the forward worker")?;
                    done.pop()
                        .expect("two results")
                        .ctx(side, "recording the tables' horizon")?;
                }
                (REVERSE_PROGRESS, Some((end.to_string(), committed)))
            }
            Progress::Nothing => {
                client
                    .execute(&commit, &[])
                    .await
                    .ctx(side, "committing the batch")?;
                self.open = false;
                self.staging.end_transaction();
                self.committed();
                return Ok(());
            }
        };
        let record = self.statements.get(client, sql).await?;
        let params: Vec<&(dyn ToSql + Sync)> = match &position {
            Some((p, committed)) => vec![p, committed],
            None => vec![],
        };
        let mut done = db::pipelined(vec![
            client.execute(&record, &params),
            client.execute(&commit, &[]),
        ])
        .await;
        let committed = done.pop().expect("two results");
        let recorded = done.pop().expect("two results");
        recorded.ctx(side, "recording the progress")?;
        committed.ctx(side, "committing the batch")?;
        self.open = false;
        self.staging.end_transaction();
        self.committed();
        Ok(())
    }

    /// Runs `job` in one transaction, from its begin (unless one is open: a job may have staged in it
    /// already) to its commit with the job's progress; rolled back when the job writes nothing after
    /// all. On an error the transaction is left as it is: the caller decides from it (a reverse group
    /// whose rows went straight into desktop tables is received again, staged) and ends the session or
    /// rolls back.
    pub(crate) async fn run<J: Job>(
        &mut self,
        client: &Client,
        job: &mut J,
    ) -> Result<J::Done, CommitError> {
        self.begin(client, job.tables()).await?;
        job.stage(self, client).await?;
        let done = job.apply(self, client).await?;
        match job.progress(&done) {
            Some(progress) => self.commit(client, progress).await?,
            None => self.rollback(client).await?,
        }
        Ok(done)
    }

    /// Rolls the open transaction back (what was staged in it is gone too).
    pub async fn rollback(&mut self, client: &Client) -> Result<(), DbError> {
        self.open = false;
        self.applied.clear();
        self.staging.end_transaction();
        client
            .batch_execute("ROLLBACK")
            .await
            .ctx(self.side(), "rolling back the batch")
    }
}

/// The statement logging the conflicts `select` yields (direction, table name, row key, incoming row,
/// current row, reason; `$1::text` where it takes the table's name), except those already logged and
/// still open: the same row key, incoming and current rows seen again (the desktop re-saving a row
/// unchanged, a lookup's change or a retry sending a row again, a phone re-saving) is one conflict.
pub fn log_conflicts(select: &str) -> String {
    format!(
        "INSERT INTO tandem.conflicts (direction, table_name, row_key, incoming, current, reason) \
         SELECT x.* FROM ({select}) AS x (direction, table_name, row_key, incoming, current, reason) \
         WHERE NOT EXISTS (SELECT 1 FROM tandem.conflicts o WHERE o.resolved_at IS NULL \
         AND o.direction = x.direction AND o.table_name = x.table_name \
         AND o.row_key IS NOT DISTINCT FROM x.row_key AND o.incoming IS NOT DISTINCT FROM x.incoming \
         AND o.current IS NOT DISTINCT FROM x.current)"
    )
}
