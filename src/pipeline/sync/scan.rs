//! One table's merge: the decision per key (or scope) and what it leads to (keys handed forward,
//! desktop repairs).

use tokio_postgres::Client;

use std::collections::BTreeSet;

use futures_util::SinkExt;

use crate::capture::outbox::{NOTIFY_CHANNEL, ReadSql, key_list};
use crate::capture::scan::{Key, Line, Lines, ScanSql};
use crate::change::Side;
use crate::commit::forward::{Applied, Sending};
use crate::commit::reconcile::{self, CloudRow, Entry, KeyDecision, Repair, Repairs, ScopeRepair};
use crate::commit::reverse::Reverse;
use crate::commit::reverse::encode::copy_escape;
use crate::commit::{BatchOutcome, CommitError, Direction, Job, Progress, Staged, Target};
use crate::db::{self, Context, DbError};
use crate::transform::{Kind, Mapping};

use super::super::RunError;
use super::cut::Cut;
use super::{Handed, REPAIRS_PER_STAGE, Request, TableReport};

/// One table's connections and statements.
pub(super) struct Scan<'a> {
    pub(super) mapping: &'a Mapping,
    pub(super) i: usize,
    pub(super) sql: ScanSql,
    pub(super) request: Request,
    /// The desktop session that writes (outbox rows, repairs).
    pub(super) desktop: &'a Client,
    pub(super) target: &'a mut Option<Target>,
    pub(super) plan: &'a Reverse,
    pub(super) report: TableReport,
    pub(super) forward_now: Vec<Key>,
    /// Keys to send forward once the desktop repairs of their scope are committed.
    pub(super) forward_after: Vec<Key>,
    pub(super) repairs: Repairs,
    pub(super) handed: Handed,
    /// The table's desktop changes waiting in the outbox, as the scan began.
    pub(super) pending: Pending,
    /// The keys (desktop-key tables) or cloud keys (cloud-key tables) of the rows the table's open
    /// conflicts by concurrency keep, as the scan began: a person decides them, not the scan.
    pub(super) conflicted: std::collections::HashSet<Vec<Option<String>>>,
    /// The table has a horizon: what the desktop received of it is known (see
    /// [`reconcile::decide_scope`]).
    pub(super) received_known: bool,
    /// The cloud keys of rows phones made that the desktop has not received (see
    /// [`reconcile::decide_scope`]).
    pub(super) made: std::collections::HashSet<String>,
    /// This process applies the forward repairs itself (see [`super::Direct`]).
    pub(super) direct: Option<&'a mut super::Direct>,
    /// Keys listed for it.
    pub(super) listed: u64,
    /// What its writes wait for (an initial sync's lane).
    pub(super) gate: Option<super::lanes::Gate>,
}

impl Scan<'_> {
    /// Waits until the tables this one's rows reference are synced (an initial sync's lane).
    pub(super) async fn parents_synced(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.open().await;
        }
    }

    /// Makes the desktop list of the table's keys to send forward, empty (before its first keys).
    async fn list_keys(&mut self) -> Result<(), RunError> {
        let columns: Vec<String> = (1..=self.sql.width).map(|n| format!("k{n} text")).collect();
        let list = key_list(self.i);
        let name = list.trim_start_matches("pg_temp.");
        self.desktop
            .batch_execute(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS {name} ({}); TRUNCATE {list}",
                columns.join(", ")
            ))
            .await
            .ctx(Side::Desktop, "creating the list of keys to send forward")?;
        Ok(())
    }

    /// Applies the listed keys through the forward plan: the desktop's rows for them, as they are now,
    /// in one cloud transaction.
    pub(super) async fn apply_listed(&mut self) -> Result<(), RunError> {
        if self.listed == 0 {
            return Ok(());
        }
        let read = ReadSql::listed(self.mapping, self.i);
        self.apply_direct(&read, false).await?;
        Ok(())
    }

    /// The table's reconcile when the cloud holds none of its rows and its journal no entry, in the
    /// scan's snapshot (taken at the cut): every desktop row is an insert, and nothing comes back. No
    /// hash is read: the whole table goes through the forward plan, as the desktop holds it when it is
    /// applied (this process holds the forward lock: a desktop change since is in the outbox, applied
    /// after; a phone's row the cloud gained since is a conflict the forward plan logs, and comes back
    /// through the stream, past the cut recorded here as for any table).
    pub(super) async fn whole(
        mut self,
        cloud: &Client,
        cut: Option<&Cut>,
        watch: &dyn super::Watch,
    ) -> Result<(TableReport, Handed), RunError> {
        self.repair(cloud, cut).await?;
        cloud
            .batch_execute("COMMIT")
            .await
            .ctx(Side::Cloud, "ending the scan")?;
        let read = ReadSql::whole(self.mapping, self.i);
        if let Some((staged, outcome)) = self.apply_direct(&read, true).await? {
            watch.advance(staged);
            // As a scan counts them: each row the cloud lacked (refused and blocked ones too: the
            // report takes dead letters off, and counts conflicts, from where they are recorded).
            self.report.forward.inserted =
                outcome.written + outcome.dead_letters + outcome.conflicts;
        }
        Ok((self.report, self.handed))
    }

    /// Applies the desktop's rows `read` selects through the forward plan, in one cloud transaction
    /// (direct application only): the rows staged and what the plan did. With `whole` (`read` selects
    /// every desktop row), a target still empty once locked is filled ([`crate::commit::forward::Forward::fill`]).
    async fn apply_direct(
        &mut self,
        read: &ReadSql,
        whole: bool,
    ) -> Result<Option<(u64, BatchOutcome)>, RunError> {
        let Some(direct) = self.direct.as_deref_mut() else {
            return Ok(None);
        };
        let i = self.i;
        let forward = &direct.plan;
        let target = super::prepared(
            &mut direct.target,
            &direct.cloud,
            Direction::Forward,
            || forward.staging_on_demand(),
        )
        .await?;
        if direct.staged.insert(i) {
            direct
                .cloud
                .batch_execute(forward.create_staging(i))
                .await
                .ctx(Side::Cloud, "creating the staging tables")?;
        }
        self.desktop
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await
            .ctx(Side::Desktop, "beginning the read of the rows to send")?;
        // In the snapshot the rows are read in.
        let horizons = self
            .desktop
            .query(crate::capture::outbox::HORIZONS_SQL, &[])
            .await
            .ctx(Side::Desktop, "reading the tables' horizons")?;
        let horizons = crate::capture::outbox::table_horizons(self.mapping, &horizons);
        let batch = format!("reconcile {}", self.mapping.tables[i].table);
        let mut sending = Gated {
            sending: Sending {
                plan: &direct.plan,
                mapping: self.mapping,
                reads: vec![(i, read)],
                truncated: &BTreeSet::new(),
                horizons: &horizons,
                batch_id: &batch,
                fill: whole,
                desktop: self.desktop,
                desktop_statements: &mut direct.statements,
                staged: Staged::default(),
            },
            gate: self.gate.take(),
        };
        let applied = target.run(&direct.cloud, &mut sending).await?;
        let staged = sending.sending.staged;
        let outcome = applied.outcome;
        let held: Vec<_> = applied
            .held
            .into_iter()
            .map(|(i, keys)| crate::capture::outbox::Held {
                table: self.mapping.tables[i].table.desktop.clone(),
                keys,
                wait_for: applied.wait_for,
            })
            .collect();
        // Keys whose phone change the desktop had not received go to the outbox, held until it has.
        crate::capture::outbox::hold(self.desktop, &held).await?;
        self.desktop
            .batch_execute("COMMIT")
            .await
            .ctx(Side::Desktop, "ending the read of the rows sent")?;
        Ok(Some((staged.rows, outcome)))
    }

    /// Decides one key (or scope) from both sides' lines.
    pub(super) fn decide(
        &mut self,
        key: Key,
        desktop: Vec<Line>,
        cloud: Vec<Line>,
        journal: &[&Entry],
    ) {
        let (forward, reverse) = (self.request.forward, self.request.reverse);
        let f = &mut self.report.forward;
        let r = &mut self.report.reverse;
        match &self.mapping.tables[self.i].kind {
            Kind::Key(_) => {
                // Several desktop rows with one key: the forward statements sort them out as always.
                let decision = if desktop.len() > 1 {
                    KeyDecision::Update
                } else if self.conflicted.contains(&key.texts()) {
                    // An open conflict keeps the key: a person decides, not the scan. A phone's
                    // change of it the desktop has not received goes through the reverse plan as
                    // the stream's would (the conflict is found again and brought up to date);
                    // nothing else of it moves.
                    let mobile = cloud.first().is_some_and(|l| l.mobile);
                    match (journal.last(), cloud.is_empty()) {
                        // After a delete the phone made the key again (inserts are not journaled:
                        // a phone's row the journal says nothing of since is one): a new row, as
                        // the stream's net change of it is (no old image).
                        (last, false) if mobile => KeyDecision::Collision {
                            old: last
                                .filter(|_| !journal.iter().any(|e| e.deleted))
                                .map(|e| e.old.clone()),
                        },
                        (Some(e), true) if e.deleted && !desktop.is_empty() => {
                            KeyDecision::Remove {
                                old: e.old.clone(),
                                contested: true,
                            }
                        }
                        _ => KeyDecision::Unchanged,
                    }
                } else {
                    reconcile::decide_key(
                        desktop.first().map(|l| l.hashes),
                        cloud.first().map(|l| (l.hashes, l.mobile)),
                        journal,
                        self.pending.of(&key.texts()),
                        cloud.first().is_some_and(|l| l.phone && !l.mobile)
                            && !self.conflicted.contains(&key.texts()),
                    )
                };
                let mobile = cloud.first().is_some_and(|l| l.mobile);
                match decision {
                    KeyDecision::Unchanged if mobile => r.unchanged += 1,
                    KeyDecision::Unchanged => f.unchanged += 1,
                    KeyDecision::Insert | KeyDecision::Update | KeyDecision::Delete => {
                        match decision {
                            KeyDecision::Insert => f.inserted += 1,
                            KeyDecision::Update => f.updated += 1,
                            _ => f.deleted += 1,
                        }
                        if forward {
                            self.forward_now.push(key);
                        }
                    }
                    KeyDecision::Bring { old } => {
                        if old.is_some() {
                            r.updated += 1;
                        } else {
                            r.inserted += 1;
                        }
                        if reverse {
                            self.repairs.push(Repair::Bring {
                                key,
                                cloud_key: None,
                                old,
                            });
                        }
                    }
                    KeyDecision::Collision { old } => {
                        // Staged all the same: the reverse plan logs the desktop's row and the phone's
                        // as a conflict and changes nothing.
                        r.conflicts += 1;
                        if reverse {
                            self.repairs.push(Repair::Bring {
                                key,
                                cloud_key: None,
                                old,
                            });
                        }
                    }
                    KeyDecision::Remove { old, contested } => {
                        if contested {
                            r.conflicts += 1;
                        } else {
                            r.deleted += 1;
                        }
                        if reverse {
                            self.repairs.push(Repair::Remove {
                                cloud_key: None,
                                old,
                            });
                        }
                    }
                }
            }
            Kind::Scoped { .. } => {
                let d: Vec<_> = desktop.iter().map(|l| l.hashes).collect();
                let c: Vec<CloudRow> = cloud
                    .into_iter()
                    .map(|l| CloudRow {
                        hashes: l.hashes,
                        mobile: l.mobile,
                        phone: l.phone,
                        kept: self.conflicted.contains(&vec![l.cloud_key.clone()]),
                        cloud_key: l.cloud_key,
                    })
                    .collect();
                let waiting = self.pending.of(&key.texts());
                let out = reconcile::decide_scope(
                    &d,
                    &c,
                    journal,
                    &self.made,
                    waiting,
                    self.received_known,
                );
                f.unchanged += out.unchanged;
                r.unchanged += out.unchanged_mobile;
                f.inserted += out.inserts;
                f.deleted += out.deletes;
                let repaired = !out.repairs.is_empty();
                for repair in out.repairs {
                    let (counted, repair) = match repair {
                        ScopeRepair::Bring {
                            cloud_key,
                            old,
                            contested,
                        } => (
                            match (contested, old.is_some()) {
                                (true, _) => &mut r.conflicts,
                                (false, true) => &mut r.updated,
                                (false, false) => &mut r.inserted,
                            },
                            Repair::Bring {
                                key: key.clone(),
                                cloud_key: Some(cloud_key),
                                old,
                            },
                        ),
                        ScopeRepair::Remove {
                            cloud_key,
                            old,
                            contested,
                        } => (
                            if contested {
                                &mut r.conflicts
                            } else {
                                &mut r.deleted
                            },
                            Repair::Remove { cloud_key, old },
                        ),
                    };
                    *counted += 1;
                    self.repairs.push(repair);
                }
                if !reverse {
                    self.repairs.clear();
                }
                if forward && out.inserts + out.deletes > 0 {
                    // A scope whose desktop rows a repair changes is replaced after it, from the rows
                    // the repair left (a forward-only reconcile leaves it for a whole one).
                    if !repaired {
                        self.forward_now.push(key);
                    } else if reverse {
                        self.forward_after.push(key);
                    }
                }
            }
        }
    }

    /// Hands the keys waiting to be sent forward to the outbox (`after`: those waiting for repairs).
    pub(super) async fn flush(&mut self, after: bool) -> Result<(), RunError> {
        let keys = std::mem::take(if after {
            &mut self.forward_after
        } else {
            &mut self.forward_now
        });
        if keys.is_empty() || self.request.dry_run || !self.request.forward {
            return Ok(());
        }
        if self.direct.is_some() {
            return self.list(&keys).await;
        }
        let t = &self.mapping.tables[self.i];
        let width = self.sql.width;
        let mut columns: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(keys.len()); width];
        for key in &keys {
            for (n, part) in key.texts().into_iter().enumerate() {
                columns[n].push(part);
            }
        }
        let args: Vec<String> = (0..width).map(|n| format!("${}::text[]", n + 3)).collect();
        let names: Vec<String> = (1..=width).map(|n| format!("u.k{n}")).collect();
        let sql = format!(
            "WITH added AS (INSERT INTO tandem.outbox (table_schema, table_name, op, row_key)
                SELECT $1, $2, 'U', ARRAY[{names}] FROM unnest({args}) AS u({aliases}) RETURNING id)
             SELECT max(id), pg_notify('{NOTIFY_CHANNEL}', '') FROM added",
            names = names.join(", "),
            args = args.join(", "),
            aliases = (1..=width)
                .map(|n| format!("k{n}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&t.table.desktop.schema, &t.table.desktop.name];
        for c in &columns {
            params.push(c);
        }
        let row = self.desktop.query_one(&sql, &params).await.ctx(
            Side::Desktop,
            format!("handing the keys of {} to tandem.outbox", t.table.desktop),
        )?;
        let upto: Option<i64> = row.get(0);
        self.handed.upto = self.handed.upto.max(upto);
        Ok(())
    }

    /// Adds `keys` to the desktop list of keys to send forward (COPY text).
    async fn list(&mut self, keys: &[Key]) -> Result<(), RunError> {
        if self.listed == 0 {
            self.list_keys().await?;
        }
        let mut data = Vec::new();
        for key in keys {
            for (n, part) in key.0.iter().enumerate() {
                if n > 0 {
                    data.push(b'\t');
                }
                match part {
                    Some(v) => copy_escape(&mut data, v),
                    None => data.extend_from_slice(b"\\N"),
                }
            }
            data.push(b'\n');
        }
        let sink = self
            .desktop
            .copy_in(&format!("COPY {} FROM STDIN", key_list(self.i)))
            .await
            .ctx(Side::Desktop, "listing the keys to send forward")?;
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from(data))
            .await
            .ctx(Side::Desktop, "listing the keys to send forward")?;
        sink.finish()
            .await
            .ctx(Side::Desktop, "listing the keys to send forward")?;
        self.listed += keys.len() as u64;
        Ok(())
    }

    /// Writes the desktop repairs in one transaction, staged [`REPAIRS_PER_STAGE`] at a time, with the
    /// cut's position recorded as the table's sync point in the same transaction: the reverse stream
    /// skips the table's transactions from before it (the repairs brought them), whether this process
    /// crashes before or after the commit.
    pub(super) async fn repair(
        &mut self,
        cloud: &Client,
        cut: Option<&Cut>,
    ) -> Result<(), RunError> {
        if self.request.dry_run || !self.request.reverse {
            return Ok(());
        }
        let i = self.i;
        let also = match cut {
            Some(cut) => cut.record_sql(&self.mapping.tables[i].table.desktop.to_string()),
            None => String::new(),
        };
        if self.repairs.is_empty() {
            // Nothing to stage: the sync point alone, under the lock the reverse plan takes.
            if !also.is_empty() {
                self.desktop
                    .batch_execute(&format!(
                        "BEGIN; SELECT pg_advisory_xact_lock({}, {}); {also}; COMMIT",
                        db::LOCK_CLASS,
                        db::REVERSE_LOCK
                    ))
                    .await
                    .ctx(Side::Desktop, "recording the reconcile's position")?;
            }
            return Ok(());
        }
        let plan = self.plan;
        let target = super::prepared(self.target, self.desktop, Direction::Reverse, || {
            plan.staging()
        })
        .await?;
        let mut on = reconcile::Desktop {
            target,
            plan: self.plan,
            desktop: self.desktop,
            mapping: self.mapping,
            i,
        };
        for chunk in self.repairs.chunks(REPAIRS_PER_STAGE) {
            reconcile::stage(&mut on, cloud, &self.sql, &chunk).await?;
        }
        let outcome = reconcile::commit(&mut on, &also, cloud).await?;
        // Conflicts standing since an earlier reconcile are not logged again, but they are counted.
        let r = &mut self.report.reverse;
        r.conflicts = r.conflicts.max(outcome.conflicts);
        r.dead_letters = outcome.dead_letters;
        Ok(())
    }
}

/// Scan lines grouped by key (a cloud-key table's scope, or a desktop key held by several rows).
/// A table's rows sent by a scan, as the commit engine runs them: staged from the scan's snapshot,
/// then the lanes' gate opens (the next table's scan may take its snapshot) before the plan applies.
/// The desktop changes of a table waiting in the outbox: by key (texts), whether the first made the
/// key and whether one is not an INSERT; and whether the table was truncated.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub keys: std::collections::HashMap<Vec<Option<String>>, (bool, bool)>,
    pub truncated: bool,
}

impl Pending {
    /// What waits for `key` (see [`reconcile::Waiting`]).
    pub fn of(&self, key: &[Option<String>]) -> reconcile::Waiting {
        let (made, changed) = self.keys.get(key).copied().unwrap_or_default();
        reconcile::Waiting {
            any: self.keys.contains_key(key),
            made: made && !self.truncated,
            changed: changed || self.truncated,
        }
    }
}

struct Gated<'a> {
    sending: Sending<'a>,
    gate: Option<super::lanes::Gate>,
}

impl Job for Gated<'_> {
    type Done = Applied;

    fn tables(&self) -> Vec<usize> {
        self.sending.tables()
    }

    async fn stage(&mut self, target: &mut Target, cloud: &Client) -> Result<(), CommitError> {
        self.sending.stage(target, cloud).await?;
        if let Some(gate) = self.gate.take() {
            gate.open().await;
        }
        Ok(())
    }

    async fn apply(&mut self, target: &mut Target, cloud: &Client) -> Result<Applied, CommitError> {
        self.sending.apply(target, cloud).await
    }

    fn progress(&self, done: &Applied) -> Option<Progress<'_>> {
        self.sending.progress(done)
    }
}

pub(super) struct Grouped {
    lines: Lines,
    pending: Option<Line>,
}

impl Grouped {
    pub(super) fn new(lines: Lines) -> Self {
        Grouped {
            lines,
            pending: None,
        }
    }

    pub(super) async fn next(&mut self) -> Result<Option<(Key, Vec<Line>)>, DbError> {
        let first = match self.pending.take() {
            Some(line) => line,
            None => match self.lines.next().await? {
                Some(line) => line,
                None => return Ok(None),
            },
        };
        let key = first.key.clone();
        let mut group = vec![first];
        while let Some(line) = self.lines.next().await? {
            if line.key == key {
                group.push(line);
            } else {
                self.pending = Some(line);
                break;
            }
        }
        Ok(Some((key, group)))
    }
}
