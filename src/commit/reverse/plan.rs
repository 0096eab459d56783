//! The steps of a group's plan: which statements, in what order, with what parameters.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::change::Side;
use crate::db::Context;

use super::super::forward::sql::Ranged;
use super::super::{CommitError, Count, Isolate, Params, Plan, Step, Target};
use super::Reverse;

/// Fewer new rows than this are looked up on the desktop by index probes, whatever the table's size.
const PROBE_BELOW: u64 = 1_000;
const NESTLOOP_OFF: &str = "SET LOCAL enable_nestloop = off";
const NESTLOOP_ON: &str = "SET LOCAL enable_nestloop = on";

impl Reverse {
    /// The plan of a group: on the fast path, tables in `direct` (only new rows) insert straight from
    /// staging; on the careful path every table goes through the reduction, so each row can be isolated.
    pub(super) async fn plan<'a>(
        &'a self,
        target: &Target,
        desktop: &Client,
        tables: &[usize],
        direct: &[usize],
        parked: &BTreeMap<usize, String>,
    ) -> Result<Plan<'a>, CommitError> {
        // A parked table's changes are set aside first; nothing else of it runs.
        let mut set_aside = Vec::new();
        for &i in tables.iter().filter(|i| parked.contains_key(i)) {
            set_aside.push(Step::whole(
                i,
                "keeping a parked table's mobile rows as dead letters",
                &self.sql[i].set_aside,
                Params::TableBatchAndReason,
                Count::DeadLetters,
            ));
        }
        let active: Vec<usize> = tables
            .iter()
            .copied()
            .filter(|i| !parked.contains_key(i))
            .collect();
        let mut fast = set_aside.clone();
        fast.extend(self.steps(target, desktop, &active, direct).await?);
        let mut careful: Vec<Step<'a>> = set_aside;
        for &i in direct {
            for (sql, what) in self.reduction(target, i, false) {
                careful.push(Step::whole(i, what, sql, Params::None, Count::Nothing));
            }
        }
        careful.extend(self.steps(target, desktop, &active, &[]).await?);
        Ok(Plan { fast, careful })
    }

    /// The statements that apply table `i`'s staged new rows directly: probing the desktop key's index
    /// for a few rows, or a hash join (nested loops off) for many — never a plan that reads the whole
    /// desktop table once per row.
    async fn direct_steps<'a>(
        &'a self,
        target: &Target,
        desktop: &Client,
        i: usize,
        steps: &mut Vec<Step<'a>>,
    ) -> Result<(), CommitError> {
        let sql = &self.sql[i];
        let rows = target.staging.staged(i);
        let probe = match &sql.direct_probe {
            Some(probe) if rows < PROBE_BELOW => Some(probe),
            Some(probe) => {
                // Many rows: probing still wins against a table ten times bigger (a hash join reads
                // all of it), by the catalog's estimate.
                let size: f32 = desktop
                    .query_one(
                        "SELECT greatest(reltuples, 0)::real FROM pg_class WHERE oid = to_regclass($1)",
                        &[&sql.target],
                    )
                    .await
                    .ctx(Side::Desktop, "reading the desktop table's size")
                    .map_err(|e| CommitError::of_table(e, i))?
                    .get(0);
                (rows as f64 * 10.0 < size as f64).then_some(probe)
            }
            None => None,
        };
        let (direct, hash) = match probe {
            Some(probe) => (probe, false),
            // Cloud-key tables insert without looking anything up: no join to plan.
            None => (&sql.direct_hash, !sql.direct_hash.collisions.is_empty()),
        };
        let setting = |sql| Step::whole(i, "planning", sql, Params::None, Count::Nothing);
        if hash {
            steps.push(setting(NESTLOOP_OFF));
        }
        if !direct.collisions.is_empty() {
            steps.push(Step::whole(
                i,
                "setting aside key collisions to settle",
                &direct.collisions,
                Params::None,
                Count::Nothing,
            ));
        }
        steps.push(Step::whole(
            i,
            "inserting new mobile rows",
            &direct.insert,
            Params::None,
            Count::Written,
        ));
        if hash {
            steps.push(setting(NESTLOOP_ON));
        }
        Ok(())
    }

    /// The steps of a commit, in order: conflicts first (they compare with the desktop as it is),
    /// deletes children first, then updates and inserts parents first, then the dead letters of rows
    /// applied resolved. Tables in `direct` use the statements that read staging directly.
    async fn steps<'a>(
        &'a self,
        target: &Target,
        desktop: &Client,
        tables: &[usize],
        direct: &[usize],
    ) -> Result<Vec<Step<'a>>, CommitError> {
        let mut steps = Vec::new();
        for &i in tables {
            if direct.contains(&i) {
                self.direct_steps(target, desktop, i, &mut steps).await?;
            }
            let sql = &self.sql[i];
            // A direct table's rows are new: only a desktop-key table's collisions are conflicts.
            if !direct.contains(&i) || !sql.direct_hash.collisions.is_empty() {
                let settle = &sql.settle;
                let whole = |what, sql, params, count| Step::whole(i, what, sql, params, count);
                steps.push(whole(
                    "finding conflicts",
                    &settle.find,
                    Params::None,
                    Count::Nothing,
                ));
                steps.push(whole(
                    "recording conflicts",
                    &settle.record,
                    Params::Table,
                    Count::Conflicts,
                ));
                steps.push(whole(
                    "queueing settled conflicts for the cloud",
                    &settle.enqueue,
                    Params::None,
                    Count::Nothing,
                ));
                steps.push(whole(
                    "settling conflicts",
                    &settle.apply,
                    Params::None,
                    Count::Nothing,
                ));
            }
        }
        for &i in tables.iter().rev().filter(|i| !direct.contains(i)) {
            steps.push(self.ranged(i, &self.sql[i].delete, Count::Deleted));
        }
        // A direct table's settled key collisions update its desktop rows.
        for &i in tables
            .iter()
            .filter(|&&i| direct.contains(&i) && !self.sql[i].direct_hash.collisions.is_empty())
        {
            steps.push(self.ranged(i, &self.sql[i].update, Count::Written));
        }
        for &i in tables.iter().filter(|i| !direct.contains(i)) {
            let sql = &self.sql[i];
            steps.push(self.ranged(i, &sql.update, Count::Written));
            // Without an index on the desktop key, the insert's lookup must not run as nested loops.
            let setting = |sql| Step::whole(i, "planning", sql, Params::None, Count::Nothing);
            if sql.no_key_index {
                steps.push(setting(NESTLOOP_OFF));
            }
            steps.push(self.ranged(i, &sql.insert, Count::Written));
            if sql.no_key_index {
                steps.push(setting(NESTLOOP_ON));
            }
        }
        // Last: what was refused in this group is written by then, and stays open.
        for &i in tables.iter().filter(|i| !direct.contains(i)) {
            steps.push(Step::whole(
                i,
                "resolving dead letters",
                &self.sql[i].resolve,
                Params::TableAndBatch,
                Count::Nothing,
            ));
        }
        Ok(steps)
    }

    fn ranged<'a>(&'a self, i: usize, ranged: &'a Ranged, count: Count) -> Step<'a> {
        let sql = &self.sql[i];
        Step::ranged(
            i,
            ranged.what,
            &ranged.sql,
            count,
            Isolate {
                numbered: &sql.net,
                image: &sql.dead_letter_image,
            },
        )
    }
}
