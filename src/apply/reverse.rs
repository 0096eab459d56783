//! The desktop side of the reverse direction: staged mobile changes become one desktop transaction,
//! with the stream position it reached recorded in the same transaction.
//!
//! A group of cloud transactions is staged (COPY, in chunks, so a transaction of any size never sits in
//! memory), then applied set-based: conflicts logged first, deletes children first, updates and inserts
//! parents first. A row the desktop refuses makes the group apply again from a savepoint taken after
//! staging, in careful mode, which isolates it as a dead letter. `tandem.progress` takes the end LSN of
//! the group's last commit; only after the desktop commit is the slot told, so a crash at any point
//! replays at most what the desktop does not have yet.

use std::collections::BTreeSet;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, Statement};

use crate::capture::APPLYING_SETTING;
use crate::change::{Lsn, Side};
use crate::db::{self, Context, DbError, StatementCache};
use crate::transform::Mapping;

use super::BatchOutcome;
use super::isolate::{self, DeadLetterSite};
use super::reverse_sql::ReverseSql;

/// What one desktop connection holds for the reverse direction.
#[derive(Debug)]
pub struct DesktopSession {
    statements: StatementCache,
    /// Whether a desktop transaction is open, and which staging tables it emptied.
    open: bool,
    staged: BTreeSet<usize>,
}

impl DesktopSession {
    pub fn is_open(&self) -> bool {
        self.open
    }
}

#[derive(Debug, Clone)]
pub struct ReverseApplier {
    sql: Vec<ReverseSql>,
}

const PROGRESS_SQL: &str = "INSERT INTO tandem.progress (direction, lsn, applied_at) VALUES ('reverse', $1::text::pg_lsn, now())
     ON CONFLICT (direction) DO UPDATE SET lsn = GREATEST(tandem.progress.lsn, EXCLUDED.lsn), applied_at = EXCLUDED.applied_at";

/// The last cloud position applied to the desktop, as recorded there.
pub async fn stored_position(desktop: &Client) -> Result<Option<Lsn>, DbError> {
    let row = desktop
        .query_opt(
            "SELECT lsn::text FROM tandem.progress WHERE direction = 'reverse'",
            &[],
        )
        .await
        .ctx(
            Side::Desktop,
            "reading the reverse position from tandem.progress",
        )?;
    match row.and_then(|r| r.get::<_, Option<String>>(0)) {
        Some(text) => Ok(Some(text.parse().map_err(|e: String| DbError::BadUrl {
            side: Side::Desktop,
            url: "tandem.progress".into(),
            message: e,
        })?)),
        None => Ok(None),
    }
}

impl ReverseApplier {
    pub fn new(mapping: &Mapping) -> Self {
        ReverseApplier {
            sql: mapping
                .tables
                .iter()
                .enumerate()
                .map(|(i, t)| ReverseSql::build(t, i))
                .collect(),
        }
    }

    pub fn sql(&self, i: usize) -> &ReverseSql {
        &self.sql[i]
    }

    /// Once per desktop connection: tandem's writes are not captured (no echo), values from the stream
    /// are parsed in ISO date style (the stream is asked for the same), staging tables exist.
    pub async fn prepare(&self, desktop: &Client) -> Result<DesktopSession, DbError> {
        desktop
            .execute(
                "SELECT set_config($1, 'on', false), set_config('datestyle', 'ISO, MDY', false),
                        set_config('intervalstyle', 'postgres', false),
                        set_config('plan_cache_mode', 'force_custom_plan', false)",
                &[&APPLYING_SETTING],
            )
            .await
            .ctx(Side::Desktop, "setting up the reverse session")?;
        let create: Vec<&str> = self.sql.iter().map(|s| s.create.as_str()).collect();
        desktop
            .batch_execute(&create.join("\n"))
            .await
            .ctx(Side::Desktop, "creating the reverse staging tables")?;
        Ok(DesktopSession {
            statements: StatementCache::new(Side::Desktop),
            open: false,
            staged: BTreeSet::new(),
        })
    }

    /// Sends table `i`'s buffered rows into its staging table, beginning the transaction if needed.
    pub async fn stage(
        &self,
        desktop: &Client,
        session: &mut DesktopSession,
        i: usize,
        data: Vec<u8>,
    ) -> Result<(), DbError> {
        let sql = &self.sql[i];
        let mut begin = String::new();
        if !session.open {
            begin.push_str("BEGIN;");
            session.open = true;
        }
        if session.staged.insert(i) {
            begin.push_str(&sql.clear);
        }
        if !begin.is_empty() {
            desktop
                .batch_execute(&begin)
                .await
                .ctx(Side::Desktop, "beginning the reverse transaction")?;
        }
        let copy = session.statements.get(desktop, &sql.copy_in).await?;
        let sink = desktop
            .copy_in::<_, Bytes>(&copy)
            .await
            .ctx(Side::Desktop, "staging mobile rows (COPY)")?;
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from(data))
            .await
            .ctx(Side::Desktop, "staging mobile rows (COPY)")?;
        sink.finish()
            .await
            .ctx(Side::Desktop, "staging mobile rows (COPY)")?;
        Ok(())
    }

    /// Applies everything staged in the open transaction, records `end` as the reverse position and
    /// commits. Does nothing (and records nothing) when nothing was staged.
    pub async fn commit(
        &self,
        desktop: &Client,
        session: &mut DesktopSession,
        mapping: &Mapping,
        end: Lsn,
    ) -> Result<BatchOutcome, DbError> {
        let mut out = BatchOutcome::default();
        if !session.open {
            return Ok(out);
        }
        let tables: Vec<usize> = mapping
            .parents_first
            .iter()
            .copied()
            .filter(|i| session.staged.contains(i))
            .collect();
        let names: Vec<String> = mapping
            .tables
            .iter()
            .map(|t| t.table.desktop.to_string())
            .collect();
        let batch = format!("reverse {end}");
        let side = Side::Desktop;

        let mut prepare = Vec::new();
        for &i in &tables {
            let sql = &self.sql[i];
            prepare.push(session.statements.get(desktop, &sql.reduce).await?);
            if let Some(plan) = &sql.plan {
                prepare.push(session.statements.get(desktop, plan).await?);
            }
        }
        for result in db::pipelined(prepare.iter().map(|s| desktop.execute(s, &[])).collect()).await
        {
            result.ctx(side, "reducing the staged mobile changes")?;
        }
        if tracing::enabled!(tracing::Level::TRACE) {
            for &i in &tables {
                for r in desktop
                    .query(
                        &format!("SELECT to_jsonb(n)::text FROM {} n", self.sql[i].net),
                        &[],
                    )
                    .await
                    .ctx(side, "trace")?
                {
                    tracing::trace!(net = %r.get::<_, String>(0), "staged net change");
                }
            }
        }
        desktop
            .batch_execute("SAVEPOINT tandem_apply")
            .await
            .ctx(side, "SAVEPOINT")?;

        // Conflicts first (they compare with the desktop as it is), deletes children first, then
        // updates and inserts parents first.
        let mut ops: Vec<(usize, Option<&super::forward_sql::Ranged>, Statement, Count)> =
            Vec::new();
        for &i in &tables {
            ops.push((
                i,
                None,
                session
                    .statements
                    .get(desktop, &self.sql[i].conflicts)
                    .await?,
                Count::Conflicts,
            ));
        }
        for &i in tables.iter().rev() {
            let r = &self.sql[i].delete;
            ops.push((
                i,
                Some(r),
                session.statements.get(desktop, &r.sql).await?,
                Count::Deleted,
            ));
        }
        for &i in &tables {
            for r in [&self.sql[i].update, &self.sql[i].insert] {
                ops.push((
                    i,
                    Some(r),
                    session.statements.get(desktop, &r.sql).await?,
                    Count::Written,
                ));
            }
        }
        let whole = (i64::MIN, i64::MAX);
        let names = &names;
        let normal = db::pipelined(
            ops.iter()
                .map(|(i, ranged, statement, _)| async move {
                    match ranged {
                        Some(_) => desktop.execute(statement, &[&whole.0, &whole.1]).await,
                        None => desktop.execute(statement, &[&names[*i]]).await,
                    }
                })
                .collect(),
        )
        .await;
        // The first error is the cause; the statements after it only say the transaction is aborted.
        let mut refused = None;
        for ((_, ranged, _, count), result) in ops.iter().zip(normal) {
            match result {
                Ok(n) => tally(&mut out, *count, n),
                Err(e) if db::classify(e.code()) == db::ErrorKind::BadRow => {
                    refused = Some(e);
                    break;
                }
                Err(e) => {
                    return Err(e).ctx(side, ranged.map_or("logging reverse conflicts", |r| r.what));
                }
            }
        }
        if let Some(e) = refused {
            tracing::debug!(error = %db::describe(&e), "a mobile row was refused; applying again, isolating refused rows");
            out = BatchOutcome::default();
            desktop
                .batch_execute("ROLLBACK TO SAVEPOINT tandem_apply")
                .await
                .ctx(side, "ROLLBACK TO SAVEPOINT")?;
            for (i, ranged, statement, count) in &ops {
                let n = match ranged {
                    None => desktop
                        .execute(statement, &[&names[*i]])
                        .await
                        .ctx(side, "logging reverse conflicts")?,
                    Some(r) => {
                        let sql = &self.sql[*i];
                        let site = DeadLetterSite {
                            side,
                            direction: "reverse",
                            table_name: &names[*i],
                            batch: &batch,
                            image_sql: &sql.dead_letter_image,
                            numbered_table: &sql.net,
                        };
                        let done =
                            isolate::run_ranged(desktop, r.what, statement, &site, true).await?;
                        out.dead_letters += done.dead_letters;
                        done.affected
                    }
                };
                tally(&mut out, *count, n);
            }
        }
        let progress = session.statements.get(desktop, PROGRESS_SQL).await?;
        let end_text = end.to_string();
        let commit = session.statements.get(desktop, "COMMIT").await?;
        let mut done = db::pipelined(vec![
            desktop.execute(&progress, &[&end_text]),
            desktop.execute(&commit, &[]),
        ])
        .await;
        done.pop()
            .expect("two results")
            .ctx(side, "committing the mobile changes")?;
        done.pop()
            .expect("two results")
            .ctx(side, "recording the reverse position")?;
        session.open = false;
        session.staged.clear();
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy)]
enum Count {
    Written,
    Deleted,
    Conflicts,
}

fn tally(out: &mut BatchOutcome, count: Count, n: u64) {
    match count {
        Count::Written => out.written += n,
        Count::Deleted => out.deleted += n,
        Count::Conflicts => out.conflicts += n,
    }
}
