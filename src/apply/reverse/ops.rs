//! The statements of one group's apply, in order, with how their parameters are filled.

use tokio_postgres::{Client, Statement};

use crate::change::Side;
use crate::db::{Context, DbError};

use super::super::BatchOutcome;
use super::super::forward_sql::Ranged;
use super::{DesktopSession, NESTLOOP_OFF, NESTLOOP_ON, PROBE_BELOW, ReverseApplier};

/// How a statement's parameters are filled.
#[derive(Debug, Clone, Copy)]
pub(super) enum Params {
    None,
    TableName,
    /// The table's name and the group's batch.
    TableAndBatch,
    WholeRange,
}

pub(super) struct Op<'a> {
    pub(super) table: usize,
    pub(super) statement: Statement,
    pub(super) params: Params,
    pub(super) count: Count,
    pub(super) ranged: Option<&'a Ranged>,
}

impl Op<'_> {
    /// A statement over all of a table's staged rows at once (not one to isolate refused rows in).
    fn plain(table: usize, statement: Statement, params: Params, count: Count) -> Self {
        Op {
            table,
            statement,
            params,
            count,
            ranged: None,
        }
    }
}

impl ReverseApplier {
    /// The statements that apply table `i`'s staged new rows directly: probing the desktop key's index
    /// for a few rows, or a hash join (nested loops off) for many — never a plan that reads the whole
    /// desktop table once per row.
    async fn direct_ops(
        &self,
        desktop: &Client,
        session: &mut DesktopSession,
        i: usize,
        ops: &mut Vec<Op<'_>>,
    ) -> Result<(), DbError> {
        let sql = &self.sql[i];
        let rows = session.staged.get(&i).copied().unwrap_or(0);
        let probe = match &sql.direct_probe {
            Some(probe) if rows < PROBE_BELOW => Some(probe),
            Some(probe) => {
                // Many rows: probing still wins against a table ten times bigger (a hash join reads
                // all of it), by the catalog's estimate.
                let size: f32 = desktop
                    .query_one("SELECT greatest(reltuples, 0)::real FROM pg_class WHERE oid = to_regclass($1)", &[&sql.target])
                    .await
                    .ctx(Side::Desktop, "reading the desktop table's size")?
                    .get(0);
                (rows as f64 * 10.0 < size as f64).then_some(probe)
            }
            None => None,
        };
        let (direct, hash) = match probe {
            Some(probe) => (probe, false),
            // Cloud-key tables insert without looking anything up: no join to plan.
            None => (&sql.direct_hash, !sql.direct_hash.conflicts.is_empty()),
        };
        let statements = &mut session.statements;
        if hash {
            let off = statements.get(desktop, NESTLOOP_OFF).await?;
            ops.push(Op::plain(i, off, Params::None, Count::Nothing));
        }
        if !direct.conflicts.is_empty() {
            let statement = statements.get(desktop, &direct.conflicts).await?;
            ops.push(Op::plain(i, statement, Params::TableName, Count::Conflicts));
        }
        let statement = statements.get(desktop, &direct.insert).await?;
        ops.push(Op::plain(i, statement, Params::None, Count::Written));
        if hash {
            let on = statements.get(desktop, NESTLOOP_ON).await?;
            ops.push(Op::plain(i, on, Params::None, Count::Nothing));
        }
        Ok(())
    }

    /// The statements of a commit, in order: conflicts first (they compare with the desktop as it is),
    /// deletes children first, then updates and inserts parents first. Tables in `direct` use the
    /// statements that read staging directly.
    pub(super) async fn operations<'a>(
        &'a self,
        desktop: &Client,
        session: &mut DesktopSession,
        tables: &[usize],
        direct: &[usize],
    ) -> Result<Vec<Op<'a>>, DbError> {
        let mut ops = Vec::new();
        for &i in tables {
            if direct.contains(&i) {
                self.direct_ops(desktop, session, i, &mut ops).await?;
            } else {
                let statement = session
                    .statements
                    .get(desktop, &self.sql[i].conflicts)
                    .await?;
                ops.push(Op::plain(i, statement, Params::TableName, Count::Conflicts));
            }
        }
        let statements = &mut session.statements;
        for &i in tables.iter().rev().filter(|i| !direct.contains(i)) {
            let r = &self.sql[i].delete;
            let statement = statements.get(desktop, &r.sql).await?;
            ops.push(Op {
                table: i,
                statement,
                params: Params::WholeRange,
                count: Count::Deleted,
                ranged: Some(r),
            });
        }
        for &i in tables {
            let sql = &self.sql[i];
            if direct.contains(&i) {
                continue; // with its conflicts, above
            }
            for r in [&sql.update, &sql.insert] {
                let guard = sql.no_key_index && std::ptr::eq(r, &sql.insert);
                let nested_loops = |on: bool| if on { NESTLOOP_ON } else { NESTLOOP_OFF };
                if guard {
                    let off = statements.get(desktop, nested_loops(false)).await?;
                    ops.push(Op::plain(i, off, Params::None, Count::Nothing));
                }
                let statement = statements.get(desktop, &r.sql).await?;
                ops.push(Op {
                    table: i,
                    statement,
                    params: Params::WholeRange,
                    count: Count::Written,
                    ranged: Some(r),
                });
                if guard {
                    let on = statements.get(desktop, nested_loops(true)).await?;
                    ops.push(Op::plain(i, on, Params::None, Count::Nothing));
                }
            }
        }
        // Last: what was refused in this group is written by then, and stays open.
        for &i in tables.iter().filter(|i| !direct.contains(i)) {
            let statement = statements.get(desktop, &self.sql[i].resolve).await?;
            ops.push(Op::plain(
                i,
                statement,
                Params::TableAndBatch,
                Count::Nothing,
            ));
        }
        Ok(ops)
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Count {
    Nothing,
    Written,
    Deleted,
    Conflicts,
}

pub(super) fn tally(out: &mut BatchOutcome, count: Count, n: u64) {
    match count {
        Count::Written => out.written += n,
        Count::Deleted => out.deleted += n,
        Count::Conflicts => out.conflicts += n,
        Count::Nothing => {}
    }
}
