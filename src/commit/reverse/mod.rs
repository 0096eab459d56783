//! The reverse plan builder (mobile rows → desktop).
//!
//! A group of cloud transactions is staged on the desktop by COPY, in chunks as the stream arrives (a
//! transaction of any size never sits in memory; see [`encode`]): new rows of tables the desktop can
//! check by key go straight into their table, everything else into staging. The plan then reduces the
//! staged changes to one net change per key and applies them set-based where the desktop's row is what
//! the phone started from: conflicts logged first, deletes children first, updates and inserts parents
//! first. The end LSN of the group's last commit is recorded in `tandem.progress` in the same desktop
//! transaction; only after the commit is the slot told, so a crash at any point replays at most what
//! the desktop does not have yet.

pub mod encode;
pub mod layout;
mod plan;
pub mod relation;
pub mod retry;
pub mod sql;

/// The item of `tandem.installation` (on the desktop) holding how far the cloud's clock is ahead of the
/// desktop's, as an interval: what the `latest` policy moves the desktop's times by (see
/// [`crate::pipeline::reverse::clock`]).
pub const CLOUD_AHEAD_ITEM: &str = "cloud_ahead";

use std::collections::{BTreeMap, HashSet};

use tokio_postgres::Client;

use crate::change::{EndLsn, Side};
use crate::db::{self, Context, DbError};
use crate::transform::Mapping;

use super::{
    Batch, BatchOutcome, CommitError, CopyInto, Dest, LOCK_TIMEOUT, LOCK_TIMEOUT_RESET, Progress,
    StagingTables, Target,
};
use sql::ReverseSql;

/// Above this many staged rows, a staging table is analyzed before the statements that read it.
const ANALYZE_ABOVE: u64 = 10_000;

/// A group of cloud transactions to commit on the desktop.
#[derive(Debug, Clone, Copy)]
pub struct Group<'a> {
    /// The end of its last transaction: the position recorded with it (none for a reconcile's).
    pub end: EndLsn,
    /// Tables that staged more than new rows (see [`Reverse::commit`]).
    pub complex: &'a HashSet<usize>,
    /// Parked tables, with why.
    pub parked: &'a BTreeMap<usize, String>,
    /// Where the changes come from.
    pub origin: Origin,
    /// The latest horizon the stream passed before the group's end (recorded with it).
    pub horizon: Option<&'a crate::change::Horizon>,
    /// An ordinary connection to the cloud, to read the rows of a scope whose change is contested
    /// (a cloud-key table's row the desktop changed too: see [`Reverse::contest`]).
    pub cloud: Option<&'a Client>,
}

/// Where a group's changes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The stream: `end` is recorded as the reverse position, with the cloud's commit time of the
    /// group's last transaction.
    Stream { committed: std::time::SystemTime },
    /// The deletes of a resumed table's rows, staged from its dead letters (`end`: the stored position).
    Resumed,
    /// A reconcile's repairs, staged from a table scan: no position is recorded.
    Reconcile,
}

/// The reverse direction's statements, per configured table, built once per mapping.
#[derive(Debug, Clone)]
pub struct Reverse {
    sql: Vec<ReverseSql>,
    /// Each table's desktop name, as conflicts and dead letters record it.
    names: Vec<String>,
}

/// The last cloud position applied to the desktop, as recorded there.
pub async fn stored_position(desktop: &Client) -> Result<Option<EndLsn>, DbError> {
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
        Some(text) => Ok(Some(EndLsn(text.parse().map_err(|e: String| {
            DbError::BadUrl {
                side: Side::Desktop,
                url: "tandem.progress".into(),
                message: e,
            }
        })?))),
        None => Ok(None),
    }
}

impl Reverse {
    pub fn new(mapping: &Mapping) -> Self {
        Reverse {
            sql: mapping
                .tables
                .iter()
                .enumerate()
                .map(|(i, t)| ReverseSql::build(t, i))
                .collect(),
            names: mapping
                .tables
                .iter()
                .map(|t| t.table.desktop.to_string())
                .collect(),
        }
    }

    /// The staging tables a desktop connection needs.
    pub fn staging(&self) -> StagingTables {
        StagingTables::declared(
            Side::Desktop,
            self.sql
                .iter()
                .map(|sql| (sql.staging_tables(), sql.create.clone())),
        )
    }

    /// Sends `rows` rows of table `i` (COPY text) towards its staging table or, for `Dest::Direct`,
    /// straight into the desktop table, beginning the transaction if needed. Returns without waiting
    /// for the desktop to take them.
    pub async fn stage(
        &self,
        target: &mut Target,
        desktop: &Client,
        i: usize,
        dest: Dest,
        data: Vec<u8>,
        rows: u64,
    ) -> Result<(), CommitError> {
        let of_table = |e| CommitError::of_table(e, i);
        if target.staging.copying() != Some((i, dest)) {
            // A new COPY: the one in progress ends first, then the transaction begins and the staging
            // table is emptied if this is its first use in it.
            target
                .staging
                .finish_copy()
                .await
                .map_err(|(t, e)| CommitError::of_table(e, t))?;
            let first_use = (dest == Dest::Staging).then_some(i);
            target.begin(desktop, first_use).await.map_err(of_table)?;
        }
        let sql = &self.sql[i];
        let copy = match dest {
            Dest::Staging => &sql.copy_in,
            Dest::Direct => &sql.copy_direct,
        };
        let statement = target
            .statements
            .get(desktop, copy)
            .await
            .map_err(of_table)?;
        let what = || match dest {
            Dest::Staging => format!("staging mobile rows of {} (COPY)", sql.target),
            Dest::Direct => format!("writing new mobile rows into {} (COPY)", sql.target),
        };
        let into = CopyInto {
            table: i,
            dest,
            statement: &statement,
            what: &what,
        };
        target
            .staging
            .send(desktop, into, data, rows)
            .await
            .map_err(of_table)
    }

    /// Applies everything staged in the open transaction, records `end` as the reverse position and
    /// commits. Tables in `complex` had more than new rows (updates, deletes, claims, unchanged TOAST)
    /// and go through the reduction; the others are inserted straight from staging. Rows written
    /// straight into desktop tables are already there. Does nothing (and records nothing) when no
    /// transaction is open.
    ///
    /// Tables in `group.parked` (with why) are not applied: their net changes are kept as dead letters.
    pub async fn commit(
        &self,
        target: &mut Target,
        desktop: &Client,
        mapping: &Mapping,
        group: &Group<'_>,
    ) -> Result<BatchOutcome, CommitError> {
        if !target.is_open() {
            return Ok(BatchOutcome::default());
        }
        let mut applying = Applying {
            plan: self,
            mapping,
            group,
        };
        target.run(desktop, &mut applying).await
    }

    /// Cloud-key tables whose net changes meet a desktop that no longer holds the version the phone
    /// changed: the cloud's rows of those scopes are read (`cloud`), and each such change is paired
    /// with the desktop row it became (the desktop changed it too: a conflict to settle), if any.
    /// Without a cloud connection nothing is paired: such a change then counts as one whose row the
    /// desktop deleted.
    async fn contest(
        &self,
        desktop: &Client,
        cloud: Option<&Client>,
        tables: &[usize],
    ) -> Result<(), CommitError> {
        for &i in tables {
            let sql = &self.sql[i];
            let (Some(scopes), Some(rows), Some(contest), Some(cloud)) = (
                &sql.contested_scopes,
                &sql.cloud_scope_rows,
                &sql.contest,
                cloud,
            ) else {
                continue;
            };
            let of_table = |e| CommitError::of_table(e, i);
            let lost = desktop
                .query(scopes, &[])
                .await
                .ctx(Side::Desktop, "reading the scopes of contested mobile rows")
                .map_err(of_table)?;
            if lost.is_empty() {
                continue;
            }
            let scopes: Vec<Vec<Option<String>>> = lost.iter().map(|r| r.get(0)).collect();
            let scopes = serde_json::to_string(&scopes).expect("strings serialize");
            let images: Vec<serde_json::Value> = cloud
                .query(rows, &[&scopes])
                .await
                .ctx(Side::Cloud, "reading the cloud's rows of contested scopes")
                .map_err(of_table)?
                .iter()
                .filter_map(|r| serde_json::from_str(r.get::<_, &str>(0)).ok())
                .collect();
            let images = serde_json::to_string(&images).expect("json serializes");
            desktop
                .execute(contest, &[&images])
                .await
                .ctx(Side::Desktop, "pairing contested mobile rows")
                .map_err(of_table)?;
        }
        Ok(())
    }

    /// Reduces the staged changes of `tables` to their net change per key (and pairs cloud-key rows
    /// with the desktop rows they started from), in one round trip.
    async fn reduce(
        &self,
        target: &mut Target,
        desktop: &Client,
        tables: &[usize],
        parked: &BTreeMap<usize, String>,
    ) -> Result<(), CommitError> {
        let mut statements = Vec::new();
        for &i in tables {
            let of_table = |e| CommitError::of_table(e, i);
            for (sql, what) in self.reduction(target, i, parked.contains_key(&i)) {
                let statement = target
                    .statements
                    .get(desktop, sql)
                    .await
                    .map_err(of_table)?;
                statements.push((i, statement, what));
            }
        }
        let results = db::pipelined(
            statements
                .iter()
                .map(|(_, s, _)| desktop.execute(s, &[]))
                .collect(),
        )
        .await;
        for ((i, _, what), result) in statements.iter().zip(results) {
            result
                .ctx(Side::Desktop, *what)
                .map_err(|e| CommitError::of_table(e, *i))?;
        }
        Ok(())
    }

    /// The statements that reduce table `i`'s staged changes, in order, with what each does (a parked
    /// table's only to its net changes, which are set aside). The desktop rows they meet are locked
    /// first, giving way to the desktop's application (see [`super::LOCK_TIMEOUT`]).
    fn reduction(&self, target: &Target, i: usize, parked: bool) -> Vec<(&str, &'static str)> {
        const REDUCING: &str = "reducing the staged mobile changes";
        let sql = &self.sql[i];
        let mut out = vec![(sql.reduce.as_str(), REDUCING)];
        if parked {
            return out;
        }
        if target.staging.staged(i) > ANALYZE_ABOVE {
            out.push((&sql.analyze_net, REDUCING));
        }
        out.push((LOCK_TIMEOUT, REDUCING));
        out.push((
            &sql.lock,
            "locking the desktop rows the phones' changes meet (a desktop transaction holds one: \
             tandem gives way, and applies the changes again once it ends)",
        ));
        out.push((LOCK_TIMEOUT_RESET, REDUCING));
        out.push((&sql.inherit, REDUCING));
        if let Some(plan) = &sql.plan {
            out.push((plan, REDUCING));
        }
        out
    }
}

/// A group as the commit engine runs it ([`Target::run`]), in the transaction its rows were staged in
/// as the stream delivered them: the last COPY ended, the plan applied (see [`Reverse::commit`]), the
/// group's position recorded.
struct Applying<'a> {
    plan: &'a Reverse,
    mapping: &'a Mapping,
    group: &'a Group<'a>,
}

impl super::Job for Applying<'_> {
    type Done = BatchOutcome;

    async fn stage(&mut self, target: &mut Target, _: &Client) -> Result<(), CommitError> {
        target
            .staging
            .finish_copy()
            .await
            .map_err(|(t, e)| CommitError::of_table(e, t))
    }

    async fn apply(
        &mut self,
        target: &mut Target,
        desktop: &Client,
    ) -> Result<BatchOutcome, CommitError> {
        let Group {
            end,
            complex,
            parked,
            origin,
            cloud,
            ..
        } = *self.group;
        let plan = self.plan;
        let mut out = BatchOutcome::default();
        let tables: Vec<usize> = self
            .mapping
            .parents_first
            .iter()
            .copied()
            .filter(|&i| target.staging.is_used(i))
            .collect();
        if !tables.is_empty() {
            let batch_id = match origin {
                Origin::Stream { .. } => format!("reverse {end}"),
                Origin::Resumed => format!("reverse {end} (a parked table resumed)"),
                Origin::Reconcile => "reverse (reconcile)".to_string(),
            };
            let batch = Batch {
                names: &plan.names,
                id: &batch_id,
                reasons: parked,
            };
            let (reduced, direct): (Vec<usize>, Vec<usize>) = tables
                .iter()
                .partition(|i| complex.contains(i) || parked.contains_key(i));
            plan.reduce(target, desktop, &reduced, parked).await?;
            let contested: Vec<usize> = reduced
                .iter()
                .copied()
                .filter(|i| !parked.contains_key(i))
                .collect();
            plan.contest(desktop, cloud, &contested).await?;
            let steps = plan.plan(target, desktop, &tables, &direct, parked).await?;
            out = target.apply(desktop, &steps, batch).await?;
        }
        let (direct, per_table) = target.staging.take_direct_written();
        out.written += direct;
        for (i, n) in per_table {
            target.count_applied(&plan.names[i], n);
        }
        Ok(out)
    }

    fn progress(&self, _: &BatchOutcome) -> Option<Progress<'_>> {
        let Group {
            end,
            origin,
            horizon,
            ..
        } = *self.group;
        Some(match origin {
            Origin::Stream { committed } => Progress::Reverse(end, Some(committed), horizon),
            Origin::Resumed => Progress::Reverse(end, None, horizon),
            Origin::Reconcile => Progress::Nothing,
        })
    }
}
