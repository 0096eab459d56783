//! Writing a batch: staging by binary COPY, then one set-based transaction on the target.
//!
//! Forward (desktop → cloud): the desktop's current rows for the batch's keys are piped by binary COPY
//! from the desktop's snapshot straight into session temp tables on the cloud (no row is decoded in
//! between, so memory does not grow with the batch), then a fixed sequence of statements makes the
//! cloud's desktop-owned rows equal to them: keys the desktop no longer has are deleted (children
//! first), rows are upserted (parents first) only where a value differs, cloud-key scopes are replaced
//! as a multiset diff, mobile-owned rows are never touched and a blocked change is logged as a conflict.

pub mod forward_sql;
pub mod isolate;
pub mod reverse;
pub mod reverse_sql;

use std::collections::BTreeSet;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, pin_mut};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::change::Side;
use crate::db::APPLYING_SETTING;
use crate::db::{self, Context, DbError, StatementCache};
use crate::transform::Mapping;
use forward_sql::{ForwardSql, Ranged};
use isolate::{DeadLetterSite, run_ranged};

/// What one batch did to the target.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub staged_rows: u64,
    /// Bytes of binary COPY data staged (keys and rows).
    pub staged_bytes: u64,
    pub written: u64,
    pub deleted: u64,
    pub conflicts: u64,
    pub dead_letters: u64,
}

impl BatchOutcome {
    pub fn add(&mut self, other: &BatchOutcome) {
        self.staged_rows += other.staged_rows;
        self.staged_bytes += other.staged_bytes;
        self.written += other.written;
        self.deleted += other.deleted;
        self.conflicts += other.conflicts;
        self.dead_letters += other.dead_letters;
    }
}

/// Above this many staged rows, the staging tables are analyzed so the planner sizes its joins.
const ANALYZE_ABOVE: u64 = 100_000;
/// After this many rows staged through a table since it was last truncated, it is truncated again.
const TRUNCATE_AFTER: u64 = 50_000;

/// Rows and bytes moved by one COPY.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    pub rows: u64,
    pub bytes: u64,
}

/// Pipes one binary COPY from the desktop (the batch snapshot) into the cloud (the batch transaction).
pub async fn pipe(
    desktop: &Client,
    out: &Statement,
    cloud: &Client,
    into: &Statement,
) -> Result<Staged, DbError> {
    let reading = "reading the batch (COPY TO STDOUT)";
    let staging = "staging the batch (COPY FROM STDIN)";
    let source = desktop.copy_out(out).await.ctx(Side::Desktop, reading)?;
    let sink = cloud
        .copy_in::<_, Bytes>(into)
        .await
        .ctx(Side::Cloud, staging)?;
    pin_mut!(source, sink);
    let mut bytes = 0;
    while let Some(chunk) = source.next().await {
        let chunk = chunk.ctx(Side::Desktop, reading)?;
        bytes += chunk.len() as u64;
        // feed, not send: send flushes every message, and COPY TO sends one message per row.
        sink.feed(chunk).await.ctx(Side::Cloud, staging)?;
    }
    let rows = sink.finish().await.ctx(Side::Cloud, staging)?;
    Ok(Staged { rows, bytes })
}

/// What one cloud connection holds for the forward direction: its prepared statements, and how much
/// each staging table took since it was last truncated.
#[derive(Debug)]
pub struct CloudSession {
    pub statements: StatementCache,
    since_truncate: Vec<u64>,
}

/// How a statement's affected rows are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    Nothing,
    Written,
    Deleted,
    Conflicts,
}

type Param<'a> = &'a (dyn ToSql + Sync);

/// One statement of a batch's commit.
struct Op<'a> {
    statement: Statement,
    params: Vec<Param<'a>>,
    count: Count,
    /// For statements over a range of staging rows: the table and the statement, to isolate refused rows.
    ranged: Option<(usize, &'a Ranged)>,
}

static WHOLE_LO: i64 = i64::MIN;
static WHOLE_HI: i64 = i64::MAX;

/// The cloud side of the forward direction: per-table statements, built once.
#[derive(Debug, Clone)]
pub struct ForwardApplier {
    sql: Vec<ForwardSql>,
}

impl ForwardApplier {
    pub fn new(mapping: &Mapping) -> Self {
        ForwardApplier {
            sql: mapping
                .tables
                .iter()
                .enumerate()
                .map(|(i, t)| ForwardSql::build(t, i))
                .collect(),
        }
    }

    /// Once per cloud connection: mark the session as tandem's (the ownership trigger leaves its
    /// `source` alone), plan every execution for its own batch size, create the staging tables.
    pub async fn prepare(&self, cloud: &Client) -> Result<CloudSession, DbError> {
        cloud
            .execute(
                "SELECT set_config($1, 'on', false), set_config('plan_cache_mode', 'force_custom_plan', false)",
                &[&APPLYING_SETTING],
            )
            .await
            .ctx(Side::Cloud, "marking the session as tandem's")?;
        let create: Vec<&str> = self.sql.iter().map(|s| s.create.as_str()).collect();
        cloud
            .batch_execute(&create.join("\n"))
            .await
            .ctx(Side::Cloud, "creating the staging tables")?;
        Ok(CloudSession {
            statements: StatementCache::new(Side::Cloud),
            since_truncate: vec![0; self.sql.len()],
        })
    }

    /// Begins the batch's cloud transaction and empties the staging tables of `tables`, in one round
    /// trip (the staging tables keep their rows across commits, so only the ones in use are emptied).
    pub async fn begin(
        &self,
        cloud: &Client,
        session: &mut CloudSession,
        tables: &BTreeSet<usize>,
    ) -> Result<(), DbError> {
        let mut sql = String::from("BEGIN;");
        for &i in tables {
            if session.since_truncate[i] > TRUNCATE_AFTER {
                sql.push_str(&self.sql[i].truncate);
                session.since_truncate[i] = 0;
            } else {
                sql.push_str(&self.sql[i].clear);
            }
        }
        cloud
            .batch_execute(&sql)
            .await
            .ctx(Side::Cloud, "beginning the batch transaction")
    }

    /// Stages table `i`'s keys and rows from the desktop snapshot.
    pub async fn stage(
        &self,
        i: usize,
        read: &crate::capture::outbox::ReadSql,
        desktop: &Client,
        desktop_statements: &mut StatementCache,
        cloud: &Client,
        session: &mut CloudSession,
    ) -> Result<Staged, DbError> {
        let sql = &self.sql[i];
        let keys_out = desktop_statements.get(desktop, &read.copy_keys).await?;
        let rows_out = desktop_statements.get(desktop, &read.copy_rows).await?;
        let keys_in = session.statements.get(cloud, &sql.copy_keys_in).await?;
        let rows_in = session.statements.get(cloud, &sql.copy_rows_in).await?;
        let keys = pipe(desktop, &keys_out, cloud, &keys_in).await?;
        let rows = pipe(desktop, &rows_out, cloud, &rows_in).await?;
        session.since_truncate[i] += keys.rows + rows.rows;
        if rows.rows + keys.rows > ANALYZE_ABOVE {
            cloud
                .batch_execute(&format!("ANALYZE {}, {}", sql.rows, sql.keys))
                .await
                .ctx(Side::Cloud, "analyzing the staging tables")?;
        }
        Ok(Staged {
            rows: rows.rows,
            bytes: rows.bytes + keys.bytes,
        })
    }

    /// The statements of one batch, in the open cloud transaction, after staging; the caller commits.
    /// Normally they go as one pipeline (one round trip) and the first refused row fails the batch;
    /// `careful` runs them one by one, isolating refused rows into dead letters.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit(
        &self,
        cloud: &Client,
        session: &mut CloudSession,
        mapping: &Mapping,
        tables: &BTreeSet<usize>,
        truncated: &BTreeSet<usize>,
        batch: &str,
        careful: bool,
    ) -> Result<BatchOutcome, DbError> {
        let mut out = BatchOutcome::default();
        let order: Vec<usize> = mapping
            .parents_first
            .iter()
            .copied()
            .filter(|i| tables.contains(i))
            .collect();
        let names: Vec<String> = mapping
            .tables
            .iter()
            .map(|t| t.table.cloud.to_string())
            .collect();
        let statements = &mut session.statements;

        // A TRUNCATE adds every desktop-owned key of its table to the batch's keys, before anything
        // reads them; then what decides the rest: keys the desktop holds twice, scopes holding NULL.
        // One round trip.
        let mut truncates = Vec::new();
        for &i in order.iter().filter(|i| truncated.contains(i)) {
            truncates.push((i, statements.get(cloud, &self.sql[i].truncate_keys).await?));
        }
        let mut checks = Vec::new();
        for &i in &order {
            let sql = &self.sql[i];
            if let Some(find) = &sql.duplicate_rows {
                checks.push((i, statements.get(cloud, find).await?));
            } else if let Some(has_null) = &sql.keys_have_null {
                checks.push((i, statements.get(cloud, has_null).await?));
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
            result.ctx(Side::Cloud, format!("applying a TRUNCATE of {}", names[*i]))?;
        }
        let mut null_scopes = BTreeSet::new();
        for ((i, _), result) in checks.iter().zip(results) {
            let rows = result.ctx(
                Side::Cloud,
                format!("reading the staged keys of {}", names[*i]),
            )?;
            if self.sql[*i].duplicate_rows.is_some() {
                if !rows.is_empty() {
                    out.dead_letters += self
                        .set_aside_duplicates(cloud, mapping, *i, &names[*i], batch, &rows)
                        .await?;
                }
            } else if rows[0].get::<_, bool>(0) {
                null_scopes.insert(*i);
            }
        }

        let mut ops: Vec<Op> = Vec::new();
        fn plain(statement: Statement, params: Vec<Param<'_>>, count: Count) -> Op<'_> {
            Op {
                statement,
                params,
                count,
                ranged: None,
            }
        }
        for &i in &order {
            let sql = &self.sql[i];
            if let Some((without_null, with_null)) = &sql.plan {
                let plan = if null_scopes.contains(&i) {
                    with_null
                } else {
                    without_null
                };
                ops.push(plain(
                    statements.get(cloud, plan).await?,
                    vec![],
                    Count::Nothing,
                ));
            }
            for conflict in &sql.conflicts {
                ops.push(plain(
                    statements.get(cloud, conflict).await?,
                    vec![&names[i]],
                    Count::Conflicts,
                ));
            }
        }
        let whole: Vec<Param<'_>> = vec![&WHOLE_LO, &WHOLE_HI];
        // Deletes children first, writes parents first.
        for &i in order.iter().rev() {
            let delete = &self.sql[i].delete;
            ops.push(Op {
                statement: statements.get(cloud, &delete.sql).await?,
                params: whole.clone(),
                count: Count::Deleted,
                ranged: Some((i, delete)),
            });
        }
        for &i in &order {
            let sql = &self.sql[i];
            for write in std::iter::once(&sql.write).chain(sql.lookup_update.as_ref()) {
                ops.push(Op {
                    statement: statements.get(cloud, &write.sql).await?,
                    params: whole.clone(),
                    count: Count::Written,
                    ranged: Some((i, write)),
                });
            }
            ops.push(plain(
                statements.get(cloud, &sql.resolve).await?,
                vec![&names[i], &batch],
                Count::Nothing,
            ));
        }
        ops.push(plain(
            statements.get(cloud, PROGRESS_SQL).await?,
            vec![],
            Count::Nothing,
        ));

        if careful {
            for op in &ops {
                let affected = match op.ranged {
                    Some((i, ranged)) => {
                        let sql = &self.sql[i];
                        let image = sql.dead_letter_image(&mapping.tables[i], ranged.numbered);
                        let site = site(
                            &names[i],
                            batch,
                            &image,
                            sql.numbered_table(ranged.numbered),
                        );
                        let done =
                            run_ranged(cloud, ranged.what, &op.statement, &site, true).await?;
                        out.dead_letters += done.dead_letters;
                        done.affected
                    }
                    None => cloud
                        .execute(&op.statement, &op.params)
                        .await
                        .ctx(Side::Cloud, "applying the batch")?,
                };
                tally(&mut out, op.count, affected);
            }
        } else {
            let results = db::pipelined(
                ops.iter()
                    .map(|op| cloud.execute(&op.statement, &op.params))
                    .collect(),
            )
            .await;
            for (op, result) in ops.iter().zip(results) {
                let what = op.ranged.map_or("applying the batch", |(_, r)| r.what);
                tally(&mut out, op.count, result.ctx(Side::Cloud, what)?);
            }
        }
        Ok(out)
    }

    /// Keys the desktop holds more than once: one dead letter each, and out of the batch.
    async fn set_aside_duplicates(
        &self,
        cloud: &Client,
        mapping: &Mapping,
        i: usize,
        name: &str,
        batch: &str,
        duplicates: &[tokio_postgres::Row],
    ) -> Result<u64, DbError> {
        let sql = &self.sql[i];
        let image = sql.dead_letter_image(&mapping.tables[i], forward_sql::Numbered::Rows);
        let site = site(name, batch, &image, &sql.rows);
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

const PROGRESS_SQL: &str =
    "INSERT INTO tandem.progress (direction, applied_at) VALUES ('forward', now())
     ON CONFLICT (direction) DO UPDATE SET applied_at = EXCLUDED.applied_at";

fn tally(out: &mut BatchOutcome, count: Count, affected: u64) {
    match count {
        Count::Written => out.written += affected,
        Count::Deleted => out.deleted += affected,
        Count::Conflicts => out.conflicts += affected,
        Count::Nothing => {}
    }
}

fn site<'a>(
    table: &'a str,
    batch: &'a str,
    image: &'a str,
    numbered: &'a str,
) -> DeadLetterSite<'a> {
    DeadLetterSite {
        side: Side::Cloud,
        direction: "forward",
        table_name: table,
        batch,
        image_sql: image,
        numbered_table: numbered,
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

/// Whether a batch failure should be retried in careful mode (a row was refused).
pub fn is_refused_row(e: &DbError) -> bool {
    e.kind() == db::ErrorKind::BadRow
}
