//! The reconcile plan builder: what a merged pair of table scans ([`crate::capture::scan`]) says to do,
//! and the desktop repairs it stages through the reverse plan.
//!
//! Both directions' repairs go through the commit engine as the streams' changes do:
//! - **Forward** (the desktop's rows to the cloud): the keys (or scopes) that differ are handed to the
//!   forward applier through the outbox, as the capture triggers hand theirs. The applier makes the
//!   cloud equal the desktop's rows for them *as they are when it applies*, so a repair can never put
//!   back an older version than a desktop change made meanwhile, and mobile-owned rows are left alone
//!   (logged as conflicts) by the same statements as always.
//! - **Reverse** (mobile rows to the desktop): staged here as changes in the reverse layout, each with
//!   the old image the desktop must still hold for it to apply, and committed by the reverse plan under
//!   the lock its stream takes ([`crate::db::REVERSE_LOCK`]): a desktop row changed since it was scanned
//!   is a conflict, not overwritten; a row the stream already brought is not written twice.
//!
//! **After a lost slot** tandem tells a phone's delete or edit it missed from a desktop row the cloud
//! has not seen yet by the cloud's journal (`tandem.journal`, written by the ownership trigger on every
//! phone UPDATE and DELETE: the row as it was). A desktop row the cloud lacks is deleted on the desktop
//! only when its last version is in the journal as deleted (another version: the desktop changed the
//! row the phone deleted, an `update/delete` conflict); otherwise it is the desktop's, and goes to
//! the cloud. A phone's row the desktop lacks while a desktop change of it waits in the outbox was
//! deleted by the desktop: a `delete/update` conflict. A mobile row that differs from the desktop's is
//! applied over it only when the journal shows the desktop holds the version the phone changed;
//! otherwise both sides changed the row, or a phone created a key the desktop holds for another row:
//! a conflict, never an overwrite.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::capture::scan::{Hashes, Key, ScanSql};
use crate::change::Side;
use crate::db::{Context, DbError};

use super::reverse::encode::copy_escape;
use super::reverse::layout::{META, Meta};
use super::reverse::{Group, Origin, Reverse};
use super::{BatchOutcome, CommitError, Dest, Target};
use crate::transform::{Kind, Mapping};

mod repairs;
mod scope;

pub use repairs::Repairs;
pub use scope::{CloudRow, ScopeDecision, ScopeRepair, decide_scope};

/// A journal entry: a phone's UPDATE or DELETE of a row, with the row before it; or (`inserted`,
/// cloud-key tables) a phone's INSERT, with the row it made.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: i64,
    pub deleted: bool,
    pub inserted: bool,
    /// The row's cloud key (cloud-key tables).
    pub cloud_key: Option<String>,
    /// The `reverse` hash of the row before the change (see [`Hashes`]).
    pub reverse: i64,
    /// The row before the change, as reverse old images are written (column name → text).
    pub old: String,
    /// Its key (or scope).
    pub key: Key,
}

/// Reads table `sql`'s journal entries (in the caller's snapshot).
pub async fn journal(cloud: &Client, sql: &ScanSql, table: &str) -> Result<Vec<Entry>, DbError> {
    let rows = cloud
        .query(&sql.journal, &[])
        .await
        .ctx(Side::Cloud, format!("reading the journal of {table}"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let key = (0..sql.width)
                .map(|n| {
                    r.get::<_, Option<String>>(5 + n)
                        .map(|s| bytes::Bytes::from(s.into_bytes()))
                })
                .collect();
            Entry {
                id: r.get(0),
                deleted: r.get::<_, String>(1) == "D",
                inserted: r.get::<_, String>(1) == "I",
                cloud_key: r.get(2),
                reverse: r.get(3),
                old: r.get(4),
                key: Key(key),
            }
        })
        .collect())
}

/// The desktop's changes of a key (or scope) waiting in the outbox as a scan began: what the cloud
/// has not taken yet. What they were tells a desktop that changed or deleted a row it had received from
/// one that never had it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waiting {
    /// A change waits.
    pub any: bool,
    /// The first of them made the key (an INSERT): the desktop lacked it until then, so it had not
    /// received a phone's version of it (desktop-key tables: one row a key).
    pub made: bool,
    /// One of them is not an INSERT (an UPDATE, a DELETE, a TRUNCATE of the table, or a key held back
    /// once, whose changes are no longer told apart): the desktop may have changed or removed a row
    /// it had received. Without one, every row of the scope the desktop had received is still there.
    pub changed: bool,
}

/// What to do with one key of a desktop-key table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyDecision {
    Unchanged,
    /// Forward: the cloud lacks the desktop's row.
    Insert,
    /// Forward: the cloud's desktop-owned row differs.
    Update,
    /// Forward: the desktop no longer has the cloud's desktop-owned row.
    Delete,
    /// Reverse: bring the mobile row; with the old image the desktop holds (a phone's edit it missed),
    /// or none (a new row for the desktop).
    Bring {
        old: Option<String>,
    },
    /// Reverse: the mobile row differs from a desktop row the journal does not explain: a conflict. With
    /// the old image a phone changed (both sides changed the row), or none (a phone made a key the
    /// desktop holds for another row). Staged like [`KeyDecision::Bring`]: the reverse plan logs it.
    Collision {
        old: Option<String>,
    },
    /// Reverse: a phone deleted the row; with the old image it deleted. `contested`: the desktop holds
    /// another version (it changed the row without seeing the delete): staged all the same, the
    /// reverse plan settles it as an `update/delete` conflict.
    Remove {
        old: String,
        contested: bool,
    },
}

/// A desktop-key table's key: the desktop's row (`None`: none; several rows with one key are always
/// sent forward, where the commit engine sorts them out), the cloud's (with whether it is a phone's the
/// desktop has not received), the journal's entries for the key, oldest first (only the phones'
/// changes the desktop has not received: see `ScanSql::journal`), and the desktop changes of the key
/// waiting in the outbox.
///
/// The entries make the rules exact the way the stream's old images do: an entry is a phone's change
/// the desktop has not received, of the version in it. So a desktop row that is not that version was
/// changed by the desktop without seeing the phone's change: a conflict, staged for the reverse plan to
/// find and settle as the stream's change would be (`update/update`, `update/delete`). A desktop row
/// missing where a phone changed the row is a desktop delete when one waits in the outbox (a delete
/// applied to the cloud would have removed the row the phone changed: it cannot have been applied), a
/// `delete/update` conflict; with none waiting the desktop lost the row without deleting it (drift), or
/// never had it, and it is brought. A key the desktop made since the cloud last took its changes
/// (`made`) held no phone version the desktop had received: against a phone's row it is
/// `insert/insert`, and a phone's delete of another version is no conflict. A phone's row the desktop
/// received and lacks, with no desktop change waiting (`lost`), is drift too: brought back, not
/// deleted.
pub fn decide_key(
    desktop: Option<Hashes>,
    cloud: Option<(Hashes, bool)>,
    entries: &[&Entry],
    waiting: Waiting,
    phone: bool,
) -> KeyDecision {
    let lost = phone && !waiting.any;
    let last = |deleted: bool, reverse: i64| {
        entries
            .iter()
            .rev()
            .find(|e| e.deleted == deleted && e.reverse == reverse)
            .map(|e| e.old.clone())
    };
    match (desktop, cloud) {
        (Some(d), Some((c, false))) if d.forward == c.forward => KeyDecision::Unchanged,
        (Some(_), Some((_, false))) => KeyDecision::Update,
        (Some(d), Some((c, true))) if d.reverse == c.reverse => KeyDecision::Unchanged,
        // Over the version the desktop holds when a phone changed it, or deleted it and made the key
        // again (the stream applies the delete, then the new row: the same).
        (Some(d), Some((_, true))) => {
            match last(false, d.reverse).or_else(|| last(true, d.reverse)) {
                Some(old) => KeyDecision::Bring { old: Some(old) },
                None if waiting.made => KeyDecision::Collision { old: None },
                None => KeyDecision::Collision {
                    old: entries
                        .iter()
                        .rev()
                        .find(|e| !e.deleted)
                        .map(|e| e.old.clone()),
                },
            }
        }
        // The phone deleted the version the desktop holds, or the desktop holds the version the
        // phone's changes started from (the stream's net change: its first old image; an edit the
        // desktop made and undid since is no change).
        (Some(d), None) => match (
            last(true, d.reverse).or_else(|| {
                entries
                    .first()
                    .filter(|e| e.reverse == d.reverse)
                    .map(|e| e.old.clone())
            }),
            entries.last(),
        ) {
            (Some(old), _) => KeyDecision::Remove {
                old,
                contested: false,
            },
            // The phone's last change deleted the row, a version the desktop no longer holds.
            (None, Some(e)) if e.deleted && !waiting.made => KeyDecision::Remove {
                old: e.old.clone(),
                contested: true,
            },
            (None, _) => KeyDecision::Insert,
        },
        (None, Some((_, false))) if lost => KeyDecision::Bring { old: None },
        (None, Some((_, false))) => KeyDecision::Delete,
        // The desktop deleted the row a phone changed (from the first version it changed). One the
        // phone deleted first (and made again) both deleted: the phone's row is new, as the
        // stream's net change of it is (`_remade`).
        (None, Some((_, true))) if waiting.any && !waiting.made => match entries.first() {
            Some(first) if !first.deleted => KeyDecision::Collision {
                old: Some(first.old.clone()),
            },
            _ => KeyDecision::Bring { old: None },
        },
        (None, Some((_, true))) => KeyDecision::Bring { old: None },
        (None, None) => KeyDecision::Unchanged,
    }
}

/// A desktop repair to stage.
#[derive(Debug, Clone)]
pub enum Repair {
    /// Bring the mobile row of `key` (desktop-key tables) or `cloud_key` (cloud-key tables) as the cloud
    /// holds it when the repair is applied; over `old`, or as a new row.
    Bring {
        key: Key,
        cloud_key: Option<String>,
        old: Option<String>,
    },
    /// Delete the desktop row holding `old`.
    Remove {
        cloud_key: Option<String>,
        old: String,
    },
}

/// Where desktop repairs of table `i` are written: the reverse direction's target and plan.
pub struct Desktop<'a> {
    pub target: &'a mut Target,
    pub plan: &'a Reverse,
    pub desktop: &'a Client,
    pub mapping: &'a Mapping,
    pub i: usize,
}

impl<'a> Desktop<'a> {
    fn parts(&mut self) -> (&mut Target, &'a Reverse, &'a Client, &'a Mapping, usize) {
        (self.target, self.plan, self.desktop, self.mapping, self.i)
    }
}

/// Stages `repairs` of table `i` on the desktop in the transaction of `target` (the reverse direction's,
/// begun here if none is open: it takes the reverse lock), with the mobile rows' versions read from
/// `cloud` (in the scan's snapshot: the stream brings what came after). Returns the rows staged; they
/// are applied by [`commit`].
pub async fn stage(
    on: &mut Desktop<'_>,
    cloud: &Client,
    sql: &ScanSql,
    repairs: &[Repair],
) -> Result<u64, CommitError> {
    let (target, plan, desktop, mapping, i) = on.parts();
    let of_table = |e| CommitError::of_table(e, i);
    target.begin(desktop, []).await.map_err(of_table)?;
    let table = mapping.tables[i].table.to_string();
    let width = mapping.tables[i].reverse_columns.len();
    // The mobile rows' current versions, by key (or cloud key).
    let scoped = matches!(mapping.tables[i].kind, Kind::Scoped { .. });
    let mut keys: Vec<Vec<Option<String>>> = vec![Vec::new(); if scoped { 1 } else { sql.width }];
    for r in repairs {
        if let Repair::Bring { key, cloud_key, .. } = r {
            match cloud_key {
                Some(ck) => keys[0].push(Some(ck.clone())),
                None => {
                    for (n, part) in key.texts().into_iter().enumerate() {
                        keys[n].push(part);
                    }
                }
            }
        }
    }
    let mut current: HashMap<String, Vec<Option<String>>> = HashMap::new();
    if keys.first().is_some_and(|k| !k.is_empty()) {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = keys
            .iter()
            .map(|k| k as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = cloud
            .query(&sql.fetch, &params)
            .await
            .ctx(
                Side::Cloud,
                format!("reading the mobile rows of {table} to bring"),
            )
            .map_err(of_table)?;
        for r in rows {
            let ident = if scoped {
                r.get::<_, Option<String>>(sql.width).unwrap_or_default()
            } else {
                key_ident(&(0..sql.width).map(|n| r.get(n)).collect::<Vec<_>>())
            };
            let values = (0..width).map(|j| r.get(sql.width + 1 + j)).collect();
            current.insert(ident, values);
        }
    }
    let mut data = Vec::new();
    let mut rows = 0;
    for (seq, r) in repairs.iter().enumerate() {
        let (op, old, ck, values) = match r {
            Repair::Bring {
                key,
                cloud_key,
                old,
            } => {
                let ident = match cloud_key {
                    Some(ck) => ck.clone(),
                    None => key_ident(&key.texts()),
                };
                // Gone, or no longer mobile-owned: nothing to bring.
                let Some(values) = current.get(&ident) else {
                    continue;
                };
                (b'I', old.as_deref(), cloud_key.as_deref(), Some(values))
            }
            Repair::Remove { cloud_key, old } => {
                (b'D', Some(old.as_str()), cloud_key.as_deref(), None)
            }
        };
        for (n, (meta, _, _)) in META.iter().enumerate() {
            if n > 0 {
                data.push(b'\t');
            }
            match meta {
                Meta::Seq => data.extend_from_slice((seq + 1).to_string().as_bytes()),
                Meta::Op => data.push(op),
                Meta::Unchanged => data.extend_from_slice(b"\\N"),
                Meta::Old => field(&mut data, old),
                Meta::CloudKey => field(&mut data, ck),
                Meta::Xid | Meta::At | Meta::Lsn => data.extend_from_slice(b"\\N"),
            }
        }
        for j in 0..width {
            data.push(b'\t');
            field(&mut data, values.and_then(|v| v[j].as_deref()));
        }
        data.push(b'\n');
        rows += 1;
    }
    if rows > 0 {
        plan.stage(target, desktop, i, Dest::Staging, data, rows)
            .await?;
    }
    Ok(rows)
}

/// Applies what [`stage`] staged for table `i`, runs `also` (statements of the caller's) in the same
/// transaction, and commits. No position of the stream is recorded. `cloud` reads the rows of a
/// scope whose change is contested (see [`super::reverse::Group::cloud`]).
pub async fn commit(
    on: &mut Desktop<'_>,
    also: &str,
    cloud: &Client,
) -> Result<BatchOutcome, CommitError> {
    let (target, plan, desktop, mapping, i) = on.parts();
    let of_table = |e| CommitError::of_table(e, i);
    target.begin(desktop, []).await.map_err(of_table)?;
    // The staging COPY in progress ends first: the connection runs one statement at a time.
    target
        .staging
        .finish_copy()
        .await
        .map_err(|(t, e)| CommitError::of_table(e, t))?;
    if !also.is_empty() {
        desktop
            .batch_execute(also)
            .await
            .ctx(Side::Desktop, "recording the reconcile's position")
            .map_err(of_table)?;
    }
    let complex = std::collections::HashSet::from([i]);
    let parked = std::collections::BTreeMap::new();
    let group = Group {
        end: Default::default(),
        complex: &complex,
        parked: &parked,
        origin: Origin::Reconcile,
        horizon: None,
        cloud: Some(cloud),
    };
    plan.commit(target, desktop, mapping, &group).await
}

fn field(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => copy_escape(out, v.as_bytes()),
        None => out.extend_from_slice(b"\\N"),
    }
}

/// A key's texts as one string, for matching fetched rows with repairs.
fn key_ident(parts: &[Option<String>]) -> String {
    serde_json::to_string(parts).unwrap_or_default()
}

#[cfg(test)]
mod tests;
