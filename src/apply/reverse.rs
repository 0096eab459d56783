//! The desktop side of the reverse direction: staged mobile changes become one desktop transaction,
//! with the stream position it reached recorded in the same transaction.
//!
//! A group of cloud transactions is staged (COPY, in chunks, so a transaction of any size never sits in
//! memory), then applied set-based: conflicts logged first, deletes children first, updates and inserts
//! parents first. A row the desktop refuses makes the group apply again from a savepoint taken after
//! staging, in careful mode, which isolates it as a dead letter. `tandem.progress` takes the end LSN of
//! the group's last commit; only after the desktop commit is the slot told, so a crash at any point
//! replays at most what the desktop does not have yet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, CopyInSink};

use crate::capture::rows::Dest;
use crate::change::{Lsn, Side};
use crate::db::APPLYING_SETTING;
use crate::db::{self, Context, DbError, StatementCache};
use crate::transform::Mapping;

use super::BatchOutcome;
use super::isolate::{self, DeadLetterSite};
use super::reverse_sql::ReverseSql;

mod ops;
use ops::{Params, tally};

/// Above this many staged rows, a staging table is analyzed before the statements that read it.
const ANALYZE_ABOVE: u64 = 10_000;
/// After this many rows staged through a table since it was last truncated, it is truncated again.
const TRUNCATE_AFTER: u64 = 50_000;
/// Fewer new rows than this are looked up on the desktop by index probes, whatever the table's size.
const PROBE_BELOW: u64 = 1_000;
const NESTLOOP_OFF: &str = "SET LOCAL enable_nestloop = off";
const NESTLOOP_ON: &str = "SET LOCAL enable_nestloop = on";

/// What one desktop connection holds for the reverse direction.
pub struct DesktopSession {
    statements: StatementCache,
    /// Whether a desktop transaction is open, and rows staged per table in it.
    open: bool,
    staged: BTreeMap<usize, u64>,
    /// The COPY in progress (one per connection at a time): its table, destination and sink. Kept open
    /// while that table's rows keep coming, so the connection sends them while the stream is read.
    copy: Option<OpenCopy>,
    /// Rows written straight into desktop tables in the open transaction (sent, and confirmed by
    /// finished COPYs).
    direct_sent: u64,
    direct_written: u64,
    /// Rows staged per table since its staging tables were last truncated.
    since_truncate: HashMap<usize, u64>,
}

/// A COPY in progress on the desktop connection.
struct OpenCopy {
    table: usize,
    dest: Dest,
    sink: Pin<Box<CopyInSink<Bytes>>>,
}

impl DesktopSession {
    /// Whether the open transaction wrote rows straight into desktop tables: a row the desktop refused
    /// there can only be handled by receiving the group again with everything staged.
    pub fn wrote_direct(&self) -> bool {
        self.direct_sent > 0 || self.copy.as_ref().is_some_and(|c| c.dest == Dest::Direct)
    }
}

impl std::fmt::Debug for DesktopSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesktopSession")
            .field("open", &self.open)
            .field("staged", &self.staged)
            .field("copying", &self.copy.as_ref().map(|c| (c.table, c.dest)))
            .field("direct_sent", &self.direct_sent)
            .finish()
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
            staged: BTreeMap::new(),
            copy: None,
            direct_sent: 0,
            direct_written: 0,
            since_truncate: HashMap::new(),
        })
    }

    /// Sends `rows` rows of table `i` (COPY text) towards its staging table or, for `Dest::Direct`,
    /// straight into the desktop table, beginning the transaction if needed. Returns without waiting
    /// for the desktop to take them.
    pub async fn stage(
        &self,
        desktop: &Client,
        session: &mut DesktopSession,
        i: usize,
        dest: Dest,
        data: Vec<u8>,
        rows: u64,
    ) -> Result<(), DbError> {
        let side = Side::Desktop;
        if session
            .copy
            .as_ref()
            .is_some_and(|c| (c.table, c.dest) != (i, dest))
        {
            self.finish_copy(session).await?;
        }
        if session.copy.is_none() {
            let mut begin = String::new();
            if !session.open {
                begin.push_str("BEGIN;");
                session.open = true;
            }
            if dest == Dest::Staging && !session.staged.contains_key(&i) {
                let dirty = session.since_truncate.entry(i).or_default();
                if *dirty > TRUNCATE_AFTER {
                    begin.push_str(&self.sql[i].truncate);
                    *dirty = 0;
                } else {
                    begin.push_str(&self.sql[i].clear);
                }
            }
            if !begin.is_empty() {
                desktop
                    .batch_execute(&begin)
                    .await
                    .ctx(side, "beginning the reverse transaction")?;
            }
            let sql = match dest {
                Dest::Staging => &self.sql[i].copy_in,
                Dest::Direct => &self.sql[i].copy_direct,
            };
            let copy = session.statements.get(desktop, sql).await?;
            let sink = desktop
                .copy_in::<_, Bytes>(&copy)
                .await
                .ctx(side, self.copy_what(i, dest))?;
            session.copy = Some(OpenCopy {
                table: i,
                dest,
                sink: Box::pin(sink),
            });
        }
        let open = session.copy.as_mut().expect("opened above");
        open.sink
            .as_mut()
            .feed(Bytes::from(data))
            .await
            .ctx(side, self.copy_what(i, dest))?;
        match dest {
            Dest::Staging => {
                *session.staged.entry(i).or_default() += rows;
                *session.since_truncate.entry(i).or_default() += rows;
            }
            Dest::Direct => session.direct_sent += rows,
        }
        Ok(())
    }

    fn copy_what(&self, i: usize, dest: Dest) -> String {
        match dest {
            Dest::Staging => format!("staging mobile rows of {} (COPY)", self.sql[i].target),
            Dest::Direct => format!("writing new mobile rows into {} (COPY)", self.sql[i].target),
        }
    }

    /// Ends the COPY in progress, if any.
    async fn finish_copy(&self, session: &mut DesktopSession) -> Result<(), DbError> {
        if let Some(mut open) = session.copy.take() {
            let n = open
                .sink
                .as_mut()
                .finish()
                .await
                .ctx(Side::Desktop, self.copy_what(open.table, open.dest))?;
            if open.dest == Dest::Direct {
                session.direct_written += n;
            }
        }
        Ok(())
    }

    async fn reduce(
        &self,
        desktop: &Client,
        session: &mut DesktopSession,
        tables: &[usize],
    ) -> Result<(), DbError> {
        let mut statements = Vec::new();
        for &i in tables {
            let sql = &self.sql[i];
            statements.push(session.statements.get(desktop, &sql.reduce).await?);
            if session.staged.get(&i).copied().unwrap_or(0) > ANALYZE_ABOVE {
                statements.push(session.statements.get(desktop, &sql.analyze_net).await?);
            }
            if let Some(plan) = &sql.plan {
                statements.push(session.statements.get(desktop, plan).await?);
            }
        }
        for result in
            db::pipelined(statements.iter().map(|s| desktop.execute(s, &[])).collect()).await
        {
            result.ctx(Side::Desktop, "reducing the staged mobile changes")?;
        }
        Ok(())
    }

    /// Applies everything staged in the open transaction, records `end` as the reverse position and
    /// commits. Tables in `complex` had more than new rows (updates, deletes, claims, unchanged TOAST)
    /// and go through the reduction; the others are inserted straight from staging. Rows written
    /// straight into desktop tables are already there. Does nothing (and records nothing) when no
    /// transaction is open.
    pub async fn commit(
        &self,
        desktop: &Client,
        session: &mut DesktopSession,
        mapping: &Mapping,
        end: Lsn,
        complex: &HashSet<usize>,
    ) -> Result<BatchOutcome, DbError> {
        let mut out = BatchOutcome::default();
        if !session.open {
            return Ok(out);
        }
        self.finish_copy(session).await?;
        let tables: Vec<usize> = mapping
            .parents_first
            .iter()
            .copied()
            .filter(|i| session.staged.contains_key(i))
            .collect();
        let names: Vec<String> = mapping
            .tables
            .iter()
            .map(|t| t.table.desktop.to_string())
            .collect();
        if !tables.is_empty() {
            self.apply_staged(desktop, session, &tables, &names, end, complex, &mut out)
                .await?;
        }
        out.written += std::mem::take(&mut session.direct_written);
        session.direct_sent = 0;
        self.record_and_commit(desktop, session, end).await?;
        Ok(out)
    }

    /// Applies what is staged for `tables` (in parents-first order) in the open transaction.
    #[allow(clippy::too_many_arguments)]
    async fn apply_staged(
        &self,
        desktop: &Client,
        session: &mut DesktopSession,
        tables: &[usize],
        names: &[String],
        end: Lsn,
        complex: &HashSet<usize>,
        out: &mut BatchOutcome,
    ) -> Result<(), DbError> {
        let side = Side::Desktop;
        let batch = format!("reverse {end}");
        let (reduced, direct): (Vec<usize>, Vec<usize>) =
            tables.iter().partition(|i| complex.contains(i));
        self.reduce(desktop, session, &reduced).await?;
        desktop
            .batch_execute("SAVEPOINT tandem_apply")
            .await
            .ctx(side, "SAVEPOINT")?;

        let normal = self.operations(desktop, session, tables, &direct).await?;
        let whole = (i64::MIN, i64::MAX);
        let batch_ref = &batch;
        let results = db::pipelined(
            normal
                .iter()
                .map(|op| async move {
                    match op.params {
                        Params::None => desktop.execute(&op.statement, &[]).await.map(|n| (n, 0)),
                        Params::TableName => desktop
                            .execute(&op.statement, &[&names[op.table]])
                            .await
                            .map(|n| (n, 0)),
                        Params::TableAndBatch => desktop
                            .execute(&op.statement, &[&names[op.table], batch_ref])
                            .await
                            .map(|n| (n, 0)),
                        Params::WholeRange => desktop
                            .execute(&op.statement, &[&whole.0, &whole.1])
                            .await
                            .map(|n| (n, 0)),
                    }
                })
                .collect(),
        )
        .await;
        // The first error is the cause; the statements after it only say the transaction is aborted.
        let mut refused = None;
        for (op, result) in normal.iter().zip(results) {
            match result {
                Ok((n, conflicts)) => {
                    tally(out, op.count, n);
                    out.conflicts += conflicts;
                }
                Err(e) if db::classify(e.code()) == db::ErrorKind::BadRow => {
                    refused = Some(e);
                    break;
                }
                Err(e) => {
                    return Err(e).ctx(
                        side,
                        op.ranged.map_or("applying mobile changes", |r| r.what),
                    );
                }
            }
        }
        if let Some(e) = refused {
            tracing::debug!(error = %db::describe(&e), "a mobile row was refused; applying again, isolating refused rows");
            *out = BatchOutcome::default();
            desktop
                .batch_execute("ROLLBACK TO SAVEPOINT tandem_apply")
                .await
                .ctx(side, "ROLLBACK TO SAVEPOINT")?;
            self.reduce(desktop, session, &direct).await?;
            for op in self.operations(desktop, session, tables, &[]).await? {
                let n = match op.ranged {
                    None if matches!(op.params, Params::None) => desktop
                        .execute(&op.statement, &[])
                        .await
                        .ctx(side, "applying mobile changes")?,
                    None if matches!(op.params, Params::TableAndBatch) => desktop
                        .execute(&op.statement, &[&names[op.table], &batch])
                        .await
                        .ctx(side, "resolving the dead letters of rows applied")?,
                    None => desktop
                        .execute(&op.statement, &[&names[op.table]])
                        .await
                        .ctx(side, "logging reverse conflicts")?,
                    Some(r) => {
                        let sql = &self.sql[op.table];
                        let site = DeadLetterSite {
                            side,
                            direction: "reverse",
                            table_name: &names[op.table],
                            batch: &batch,
                            image_sql: &sql.dead_letter_image,
                            numbered_table: &sql.net,
                        };
                        let done = isolate::run_ranged(desktop, r.what, &op.statement, &site, true)
                            .await?;
                        out.dead_letters += done.dead_letters;
                        done.affected
                    }
                };
                tally(out, op.count, n);
            }
        }
        Ok(())
    }

    /// Records `end` as the reverse position and commits the open transaction.
    async fn record_and_commit(
        &self,
        desktop: &Client,
        session: &mut DesktopSession,
        end: Lsn,
    ) -> Result<(), DbError> {
        let side = Side::Desktop;
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
        Ok(())
    }
}
