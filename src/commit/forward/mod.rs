//! The forward plan builder (desktop → cloud).
//!
//! The desktop's current rows for the batch's keys are piped by binary COPY from the desktop's snapshot
//! straight into the cloud's staging tables (no row is decoded in between, so memory does not grow with
//! the batch); the plan then makes the cloud's desktop-owned rows equal to them: keys the desktop no
//! longer has are deleted, rows are upserted only where a value differs, cloud-key scopes are replaced
//! as a multiset diff, mobile-owned rows are never touched and a blocked change is logged as a conflict.

pub mod sql;

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use crate::capture::outbox::ReadSql;
use crate::change::Side;
use crate::db::{self, Context, DbError, StatementCache};
use crate::transform::Mapping;

use super::isolate::{self, DeadLetterSite};
use super::{
    Batch, BatchOutcome, CommitError, Count, Isolate, Params, Plan, Staged, StagingTables, Step,
    Target, pipe,
};
use sql::{ForwardSql, Ranged};

/// Above this many staged rows, the staging tables are analyzed so the planner sizes its joins.
const ANALYZE_ABOVE: u64 = 100_000;

/// The forward direction's statements, per configured table, built once per mapping.
#[derive(Debug, Clone)]
pub struct Forward {
    sql: Vec<ForwardSql>,
    /// Each table's cloud name, as conflicts and dead letters record it.
    names: Vec<String>,
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
        if rows.rows + keys.rows > ANALYZE_ABOVE {
            cloud
                .batch_execute(&format!("ANALYZE {}, {}", sql.rows, sql.keys))
                .await
                .ctx(Side::Cloud, "analyzing the staging tables")
                .map_err(of_table)?;
        }
        Ok(Staged {
            rows: rows.rows,
            bytes: rows.bytes + keys.bytes,
        })
    }

    /// Applies what is staged for `tables` in the open cloud transaction (the caller commits):
    /// desktop TRUNCATEs and the checks that shape the plan first, then the plan through the engine.
    pub async fn apply(
        &self,
        target: &mut Target,
        cloud: &Client,
        mapping: &Mapping,
        tables: &BTreeSet<usize>,
        truncated: &BTreeSet<usize>,
        batch_id: &str,
    ) -> Result<BatchOutcome, CommitError> {
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
        let (dead_letters, null_scopes) = self
            .prepare(target, cloud, &order, truncated, batch)
            .await?;
        let plan = self.plan(&order, &null_scopes);
        let mut outcome = target.apply(cloud, &plan, batch).await?;
        outcome.dead_letters += dead_letters;
        Ok(outcome)
    }

    /// What decides the plan, in one round trip: a TRUNCATE adds every desktop-owned key of its
    /// table to the batch's keys, before anything reads them; keys the desktop holds twice become dead
    /// letters and leave the batch; scopes holding NULL need the plan that matches NULL.
    async fn prepare(
        &self,
        target: &mut Target,
        cloud: &Client,
        order: &[usize],
        truncated: &BTreeSet<usize>,
        batch: Batch<'_>,
    ) -> Result<(u64, BTreeSet<usize>), CommitError> {
        let names = batch.names;
        let mut truncates = Vec::new();
        for &i in order.iter().filter(|i| truncated.contains(i)) {
            let statement = target
                .statements
                .get(cloud, &self.sql[i].truncate_keys)
                .await
                .map_err(|e| CommitError::of_table(e, i))?;
            truncates.push((i, statement));
        }
        let mut checks = Vec::new();
        for &i in order {
            let sql = &self.sql[i];
            let check = sql.duplicate_rows.as_ref().or(sql.keys_have_null.as_ref());
            if let Some(check) = check {
                let statement = target
                    .statements
                    .get(cloud, check)
                    .await
                    .map_err(|e| CommitError::of_table(e, i))?;
                checks.push((i, statement));
            }
        }
        let truncated_keys = db::pipelined(
            truncates
                .iter()
                .map(|(_, s)| cloud.execute(s, &[]))
                .collect(),
        )
        .await;
        let results =
            db::pipelined(checks.iter().map(|(_, s)| cloud.query(s, &[])).collect()).await;
        for ((i, _), result) in truncates.iter().zip(truncated_keys) {
            result
                .ctx(Side::Cloud, format!("applying a TRUNCATE of {}", names[*i]))
                .map_err(|e| CommitError::of_table(e, *i))?;
        }
        let mut dead_letters = 0;
        let mut null_scopes = BTreeSet::new();
        for ((i, _), result) in checks.iter().zip(results) {
            let rows = result
                .ctx(
                    Side::Cloud,
                    format!("reading the staged keys of {}", names[*i]),
                )
                .map_err(|e| CommitError::of_table(e, *i))?;
            if self.sql[*i].duplicate_rows.is_some() {
                if !rows.is_empty() {
                    dead_letters += self
                        .set_aside_duplicates(cloud, *i, batch, &rows)
                        .await
                        .map_err(|e| CommitError::of_table(e, *i))?;
                }
            } else if rows[0].get::<_, bool>(0) {
                null_scopes.insert(*i);
            }
        }
        Ok((dead_letters, null_scopes))
    }

    /// The plan: scoped tables' multiset match and every table's conflicts first (they read the cloud
    /// as it is), deletes children first, writes parents first, then the dead letters of keys that
    /// applied resolved. The careful path runs the same steps.
    fn plan<'a>(&'a self, order: &[usize], null_scopes: &BTreeSet<usize>) -> Plan<'a> {
        let mut steps = Vec::new();
        for &i in order {
            let sql = &self.sql[i];
            if let Some((without_null, with_null)) = &sql.plan {
                let plan = if null_scopes.contains(&i) {
                    with_null
                } else {
                    without_null
                };
                steps.push(Step::whole(
                    i,
                    "matching the scope's rows",
                    plan,
                    Params::None,
                    Count::Nothing,
                ));
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
        for &i in order.iter().rev() {
            steps.push(self.ranged(i, &self.sql[i].delete, Count::Deleted));
        }
        for &i in order {
            let sql = &self.sql[i];
            steps.push(self.ranged(i, &sql.write, Count::Written));
            if let Some(update) = &sql.lookup_update {
                steps.push(self.ranged(i, update, Count::Written));
            }
            steps.push(Step::whole(
                i,
                "resolving dead letters",
                &sql.resolve,
                Params::TableAndBatch,
                Count::Nothing,
            ));
        }
        Plan {
            careful: steps.clone(),
            fast: steps,
        }
    }

    fn ranged<'a>(&'a self, i: usize, ranged: &'a Ranged, count: Count) -> Step<'a> {
        let sql = &self.sql[i];
        Step::ranged(
            i,
            ranged.what,
            &ranged.sql,
            count,
            Isolate {
                numbered: sql.numbered_table(ranged.numbered),
                image: sql.dead_letter_image(ranged.numbered),
            },
        )
    }

    /// Keys the desktop holds more than once: one dead letter each, and out of the batch.
    async fn set_aside_duplicates(
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
