//! The forward plan builder (desktop → cloud).
//!
//! The desktop's current rows for the batch's keys are piped by binary COPY from the desktop's snapshot
//! straight into the cloud's staging tables (no row is decoded in between, so memory does not grow with
//! the batch); the plan then makes the cloud's desktop-owned rows equal to them: keys the desktop no
//! longer has are deleted, rows are upserted only where a value differs, cloud-key scopes are replaced
//! as a multiset diff, mobile-owned rows are never touched and a blocked change is logged as a conflict.

mod fill;
pub mod sql;

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use crate::capture::logical::Own;
use crate::capture::outbox::ReadSql;
use crate::change::{Received, Side};
use crate::db::{self, Context, DbError, StatementCache};
use crate::transform::Mapping;
use tokio_postgres::types::ToSql;

use super::isolate::{self, DeadLetterSite};
use super::{
    Batch, BatchOutcome, CommitError, Count, Isolate, LOCK_TIMEOUT, LOCK_TIMEOUT_RESET, Params,
    Plan, Staged, StagingTables, Step, Target, pipe,
};
use sql::{ForwardSql, Write};

/// Above this many staged rows (keys and rows), the staging tables are analyzed before the statements
/// that read them (in the same pipelines: no round trip of its own). Temp tables have no statistics
/// otherwise: the fast path's whole range (`_n BETWEEN $1 AND $2`) is then estimated at 0.5% of the
/// rows, `P._ck IS NULL` at 0.5% too, and the planner joins `S` and `P` by a nested loop, quadratic:
/// the seeds' 1,208 taskchecklist rows took 90 ms to insert that way (1.46M comparisons), a few ms
/// once analyzed. Analyzing a thousand-row staging table takes about a millisecond.
pub(super) const ANALYZE_ABOVE: u64 = 1_000;

/// Sets a transaction-local setting ($1, $2): a table's horizon for its statements.
const SET_HORIZON: &str = "SELECT pg_catalog.set_config($1, $2, true)";

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

/// What shapes a batch's plan.
#[derive(Clone, Copy)]
struct Shape<'a> {
    order: &'a [usize],
    truncated: &'a BTreeSet<usize>,
    big: &'a BTreeSet<usize>,
    horizons: &'a [Received],
}

/// What [`Forward::prepare`] found.
struct Prepared {
    dead_letters: u64,
    held: Vec<(usize, Vec<Vec<Option<String>>>)>,
    wait_for: i64,
}

/// The forward direction's statements, per configured table, built once per mapping.
#[derive(Debug, Clone)]
pub struct Forward {
    pub(super) sql: Vec<ForwardSql>,
    /// Each table's cloud name, as conflicts and dead letters record it.
    pub(super) names: Vec<String>,
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
        }
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

    /// What decides the plan, in one round trip: each table's horizon set for its statements; a
    /// TRUNCATE adds every key of its table the desktop may change to the batch's keys, before
    /// anything reads them; the `big` tables' staging is analyzed; the cloud rows of the batch's keys
    /// are locked against phones' changes, then keys whose phone change the desktop has not received
    /// are held back; keys the desktop holds twice become dead letters and leave the
    /// batch; scopes holding NULL need the plan that matches NULL. Last, the transaction says it is
    /// tandem's own in the cloud's WAL (the reverse stream skips it), with its snapshot (the desktop's
    /// next horizon, once the stream passes it). A second round trip fills cloud-key tables' match `P`
    /// and holds back the scopes it finds a phone's unreceived row in.
    async fn prepare(
        &self,
        target: &mut Target,
        cloud: &Client,
        shape: Shape<'_>,
        batch: Batch<'_>,
    ) -> Result<Prepared, CommitError> {
        let Shape {
            order,
            truncated,
            big,
            horizons,
        } = shape;
        let names = batch.names;
        /// What a statement's rows are.
        #[derive(PartialEq)]
        enum Reads {
            Nothing,
            Check,
            Held,
            /// The transaction's id (the emitted message's).
            Own,
        }
        /// One statement of the round trip: its table, what it does, its parameters, its rows.
        struct Read<'a> {
            table: usize,
            sql: &'a str,
            what: &'a str,
            params: Vec<&'a (dyn ToSql + Sync)>,
            reads: Reads,
        }
        let read = |table, sql, what, reads| Read {
            table,
            sql,
            what,
            params: Vec::new(),
            reads,
        };
        let settings: Vec<(String, String)> = order
            .iter()
            .map(|&i| {
                let horizon = horizons.get(i).and_then(|r| r.horizon.as_ref());
                (
                    crate::config::owner::horizon_setting(i),
                    horizon.map(|h| h.as_str().to_string()).unwrap_or_default(),
                )
            })
            .collect();
        let mut statements: Vec<Read> = Vec::new();
        for (&i, (name, value)) in order.iter().zip(&settings) {
            statements.push(Read {
                params: vec![name, value],
                ..read(i, SET_HORIZON, "setting the horizon", Reads::Nothing)
            });
        }
        for &i in order.iter().filter(|i| truncated.contains(i)) {
            let sql = &self.sql[i].truncate_keys;
            statements.push(read(i, sql, "applying a TRUNCATE", Reads::Nothing));
        }
        for &i in order.iter().filter(|i| big.contains(i)) {
            let sql = &self.sql[i].analyze_staged;
            statements.push(read(i, sql, "analyzing the staging tables", Reads::Nothing));
        }
        // The rows the holds read are locked first, giving way to phones' transactions (see
        // `ForwardSql::lock`).
        let locking: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| self.sql[i].lock.is_some())
            .collect();
        if let Some(&first) = locking.first() {
            statements.push(read(
                first,
                LOCK_TIMEOUT,
                "setting the lock timeout",
                Reads::Nothing,
            ));
            for &i in &locking {
                let lock = self.sql[i].lock.as_deref().expect("filtered");
                statements.push(read(
                    i,
                    lock,
                    "locking the cloud rows of the batch's keys (a phone's transaction holds one: \
                     tandem gives way, and applies the batch again once it ends)",
                    Reads::Nothing,
                ));
            }
            statements.push(read(
                first,
                LOCK_TIMEOUT_RESET,
                "setting the lock timeout",
                Reads::Nothing,
            ));
        }
        for &i in order {
            if let Some(hold) = &self.sql[i].hold {
                statements.push(read(i, hold, "holding back unreceived keys", Reads::Held));
            }
        }
        for &i in order {
            let sql = &self.sql[i];
            if let Some(check) = sql.duplicate_rows.as_ref().or(sql.keys_have_null.as_ref()) {
                statements.push(read(i, check, "reading the staged keys", Reads::Check));
            }
        }
        let own = Own::emit_sql();
        let quiet = false;
        if let Some(&first) = order.first() {
            statements.push(Read {
                params: vec![&quiet],
                ..read(
                    first,
                    &own,
                    "marking the transaction as tandem's",
                    Reads::Own,
                )
            });
        }
        let mut prepared = Vec::with_capacity(statements.len());
        for s in &statements {
            let statement = target
                .statements
                .get(cloud, s.sql)
                .await
                .map_err(|e| CommitError::of_table(e, s.table))?;
            prepared.push(statement);
        }
        let results = db::pipelined(
            prepared
                .iter()
                .zip(&statements)
                .map(|(p, s)| cloud.query(p, &s.params))
                .collect(),
        )
        .await;
        let mut checks = Vec::new();
        let mut held = Vec::new();
        let mut wait_for = 0;
        // The first error is the cause; the statements after it only say the transaction is aborted.
        for (s, result) in statements.iter().zip(results) {
            let i = s.table;
            let rows = result
                .ctx(Side::Cloud, format!("{} of {}", s.what, names[i]))
                .map_err(|e| CommitError::of_table(e, i))?;
            match s.reads {
                Reads::Check => checks.push((i, rows)),
                Reads::Held if !rows.is_empty() => held.push((
                    i,
                    rows.iter()
                        .map(|r| r.get::<_, Vec<Option<String>>>(0))
                        .collect::<Vec<_>>(),
                )),
                Reads::Own => wait_for = rows[0].get(0),
                _ => {}
            }
        }
        let mut dead_letters = 0;
        let mut null_scopes = BTreeSet::new();
        for (i, rows) in &checks {
            if self.sql[*i].duplicate_rows.is_some() {
                if !rows.is_empty() {
                    dead_letters += self
                        .set_aside_duplicates(cloud, *i, batch, rows)
                        .await
                        .map_err(|e| CommitError::of_table(e, *i))?;
                }
            } else if rows[0].get::<_, bool>(0) {
                null_scopes.insert(*i);
            }
        }
        // Cloud-key tables: `P` is filled, and the scopes it finds a phone's unreceived row in are
        // held on its view (see `sql::scoped::late_hold`), in one round trip.
        let mut planned: Vec<(usize, &str, &str, Reads, Option<&String>)> = Vec::new();
        for &i in order {
            let sql = &self.sql[i];
            let Some((without_null, with_null)) = &sql.plan else {
                continue;
            };
            let fill = if null_scopes.contains(&i) {
                with_null
            } else {
                without_null
            };
            planned.push((i, fill, "matching the scope's rows", Reads::Nothing, None));
            let kept = horizons.get(i).and_then(|r| r.kept.as_ref());
            if let (Some(keep), Some(kept)) = (&sql.keep, kept) {
                let what = "leaving alone the rows open conflicts keep";
                planned.push((i, keep, what, Reads::Nothing, Some(kept)));
            }
            if let Some(late) = &sql.late_hold {
                planned.push((i, late, "holding back unreceived scopes", Reads::Held, None));
            }
        }
        if !planned.is_empty() {
            let mut statements = Vec::with_capacity(planned.len());
            for &(i, sql, ..) in &planned {
                let statement = target
                    .statements
                    .get(cloud, sql)
                    .await
                    .map_err(|e| CommitError::of_table(e, i))?;
                statements.push(statement);
            }
            let params: Vec<Vec<&(dyn ToSql + Sync)>> = planned
                .iter()
                .map(|(.., kept)| kept.iter().map(|k| *k as &(dyn ToSql + Sync)).collect())
                .collect();
            let results = db::pipelined(
                statements
                    .iter()
                    .zip(&params)
                    .map(|(p, params)| cloud.query(p, params))
                    .collect(),
            )
            .await;
            for ((i, _, what, reads, _), result) in planned.iter().zip(results) {
                let rows = result
                    .ctx(Side::Cloud, format!("{what} of {}", names[*i]))
                    .map_err(|e| CommitError::of_table(e, *i))?;
                if *reads == Reads::Held && !rows.is_empty() {
                    let keys = rows.iter().map(|r| r.get::<_, Vec<Option<String>>>(0));
                    match held.iter_mut().find(|(t, _)| t == i) {
                        Some((_, already)) => already.extend(keys),
                        None => held.push((*i, keys.collect())),
                    }
                }
            }
        }
        // Keys held back wait for the stream to pass this transaction: the reverse worker records
        // that at once when told so.
        if !held.is_empty() {
            let wanted = true;
            let statement = target.statements.get(cloud, &own).await?;
            wait_for = cloud
                .query_one(&statement, &[&wanted])
                .await
                .ctx(Side::Cloud, "marking the transaction as tandem's")?
                .get(0);
        }
        Ok(Prepared {
            dead_letters,
            held,
            wait_for,
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

    /// Keys the desktop holds more than once: one dead letter each, and out of the batch.
    pub(super) async fn set_aside_duplicates(
        &self,
        cloud: &Client,
        i: usize,
        batch: Batch<'_>,
        duplicates: &[tokio_postgres::Row],
    ) -> Result<u64, DbError> {
        let sql = &self.sql[i];
        let name = &batch.names[i];
        let site = DeadLetterSite {
            side: Side::Cloud,
            direction: super::Direction::Forward.as_str(),
            table_name: name,
            batch: batch.id,
            image_sql: sql.dead_letter_image(sql::Numbered::Rows),
            numbered_table: &sql.rows,
        };
        let mut all: Vec<i64> = Vec::new();
        for row in duplicates {
            let (same_key, count): (Vec<i64>, i64) = (row.get(0), row.get(1));
            let message = format!(
                "the desktop holds {count} rows with this key, the cloud can hold one: remove the duplicates on \
                 the desktop (the cloud row is left as it was)"
            );
            isolate::record_dead_letter(cloud, &site, same_key[0], "21000", &message).await?;
            all.extend(same_key);
        }
        for statement in sql.drop_duplicates.iter().flatten() {
            cloud.execute(statement, &[&all]).await.ctx(
                Side::Cloud,
                format!("setting aside duplicate keys of {name}"),
            )?;
        }
        Ok(duplicates.len() as u64)
    }
}
