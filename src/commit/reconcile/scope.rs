//! A cloud-key table's scope: its rows matched as multisets, and the repairs that follow.

use std::collections::HashSet;

use crate::capture::scan::Hashes;

use super::{Entry, Waiting};

/// A cloud row of a scope.
#[derive(Debug, Clone)]
pub struct CloudRow {
    pub hashes: Hashes,
    /// A phone's row the desktop has not received.
    pub mobile: bool,
    /// A phone's row, received or not.
    pub phone: bool,
    /// The phone's version of an open conflict by concurrency: a person decides it (the forward
    /// leaves it alone too), so it is neither brought back nor deleted.
    pub kept: bool,
    pub cloud_key: Option<String>,
}

/// A reverse repair of a cloud-key table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeRepair {
    /// Bring mobile row `cloud_key`, over the desktop row holding `old` (or as a new row). `contested`:
    /// no desktop row holds the version the phone changed (the desktop changed its copy too): the
    /// reverse plan logs a conflict, as the stream would.
    Bring {
        cloud_key: String,
        old: Option<String>,
        contested: bool,
    },
    /// Delete the desktop row equal to `old` (a phone deleted the row; `cloud_key` was its key).
    /// `contested`: no desktop row holds a version the phone's changes started from, and the desktop
    /// has rows of the scope left unexplained: it may have changed its copy (the reverse plan pairs
    /// it by likeness, as the stream's delete, and settles an `update/delete` conflict).
    Remove {
        cloud_key: Option<String>,
        old: String,
        contested: bool,
    },
}

/// What one scope of a cloud-key table needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeDecision {
    /// Desktop rows matched with desktop-owned rows, and with mobile-owned rows.
    pub unchanged: u64,
    pub unchanged_mobile: u64,
    /// Forward: desktop rows the cloud lacks, and desktop-owned cloud rows the desktop lacks. Either
    /// makes the scope one to replace.
    pub inserts: u64,
    pub deletes: u64,
    pub repairs: Vec<ScopeRepair>,
}

/// Matches a scope's rows as multisets, desktop rows with the cloud rows the desktop has (its own and
/// phones' it received) and with mobile rows, in the order `received_known` decides (see below);
/// mobile rows left over are brought
/// to the desktop (over the version a journal entry shows it holds, when one does), desktop rows left
/// over are removed when the journal shows a phone deleted them, sent forward otherwise. A phone's
/// row the desktop received and no desktop row matches, in a scope no desktop change of which waits
/// in the outbox, was lost by the desktop without a delete (drift): it is brought back. Where the
/// desktop holds no version a phone's changes started from, it changed or deleted that row only if a
/// change of the scope other than an INSERT waits (`waiting.changed`); otherwise it never had it.
///
/// `made` holds the cloud keys of rows a phone made that the desktop has not received (their inserts
/// are journaled): the desktop never had them, whatever rows of like content it holds. Such a row is
/// brought as new, and its delete asks nothing of the desktop: neither is paired by content or
/// likeness with a desktop row, which is the desktop's own.
pub fn decide_scope(
    desktop: &[Hashes],
    cloud: &[CloudRow],
    entries: &[&Entry],
    made: &HashSet<String>,
    waiting: Waiting,
    received_known: bool,
) -> ScopeDecision {
    let (pending, changed) = (waiting.any, waiting.changed);
    let mut out = ScopeDecision::default();
    let mut left: Vec<Option<Hashes>> = desktop.iter().copied().map(Some).collect();
    let take = |left: &mut Vec<Option<Hashes>>, matches: &dyn Fn(&Hashes) -> bool| {
        left.iter_mut()
            .find(|d| d.as_ref().is_some_and(matches))
            .and_then(Option::take)
            .is_some()
    };
    // With a horizon (`received_known`), the cloud rows the desktop has (its own, and phones' it
    // received) first, then the phones' rows it has not received: a desktop row equal to one of those
    // is its copy (never sent back as desktop-owned) where no desktop change of the scope waits (the
    // horizon lags what the stream applied: it moves when the stream passes one of tandem's
    // snapshots); where one waits, an equal desktop row is taken for one the desktop made (both
    // stay): a phone's row equal to a desktop row made meanwhile is brought, not taken for its copy.
    // Without a horizon (a table's first sync, adopting a cloud the old sync filled, where every phone
    // row counts as not received), the phones' rows first: the desktop's copy of one is never sent
    // back as desktop-owned, and an old sync's equal copy beside it is the stray.
    let mut mobile_left = Vec::new();
    let mut mobile = |left: &mut Vec<Option<Hashes>>, out: &mut ScopeDecision, copies: bool| {
        for m in cloud.iter().filter(|c| c.mobile) {
            if copies && take(left, &|d| d.reverse == m.hashes.reverse) {
                out.unchanged_mobile += 1;
            } else {
                mobile_left.push(m);
            }
        }
    };
    if !received_known {
        mobile(&mut left, &mut out, true);
    }
    for c in cloud.iter().filter(|c| !c.mobile) {
        if take(&mut left, &|d| d.forward == c.hashes.forward) || c.kept {
            out.unchanged += 1;
        } else if let (true, false, Some(cloud_key)) = (c.phone, pending, c.cloud_key.clone()) {
            out.repairs.push(ScopeRepair::Bring {
                cloud_key,
                old: None,
                contested: false,
            });
        } else {
            out.deletes += 1;
        }
    }
    if received_known {
        mobile(&mut left, &mut out, !pending);
    }
    for m in mobile_left {
        let Some(cloud_key) = m.cloud_key.clone() else {
            continue;
        };
        let of_row = |e: &&&Entry| !e.deleted && e.cloud_key.as_deref() == Some(cloud_key.as_str());
        // A row an open conflict keeps: a person decides it. A phone's change of it since is brought
        // as the stream brings it (the desktop's row still differs: the plan finds the conflict again
        // and brings its record up to date); nothing else of it is touched.
        if m.kept {
            match entries.iter().rev().find(of_row) {
                Some(e) => out.repairs.push(ScopeRepair::Bring {
                    cloud_key,
                    old: Some(e.old.clone()),
                    contested: true,
                }),
                None => out.unchanged_mobile += 1,
            }
            continue;
        }
        if made.contains(&cloud_key) {
            out.repairs.push(ScopeRepair::Bring {
                cloud_key,
                old: None,
                contested: false,
            });
            continue;
        }
        let held = entries.iter().rev().filter(of_row).find(|e| {
            left.iter()
                .any(|d| d.is_some_and(|d| d.reverse == e.reverse))
        });
        let repair = match held {
            Some(e) => {
                take(&mut left, &|d| d.reverse == e.reverse);
                ScopeRepair::Bring {
                    cloud_key,
                    old: Some(e.old.clone()),
                    contested: false,
                }
            }
            // A phone edited the row, and the desktop holds no version it changed: when the desktop
            // changed or deleted a row of the scope since the cloud last took its changes, it had
            // the row and changed it (a conflict, as the stream logs it: paired with a row of the
            // scope left unexplained) or deleted it (`delete/update`: the plan finds no row to pair);
            // otherwise the desktop never had the row (a phone made it, then edited it): a new row
            // for the desktop.
            None => match (
                entries.iter().rev().find(of_row),
                entries.iter().find(of_row),
            ) {
                (Some(e), _) if changed && left.iter().any(Option::is_some) => ScopeRepair::Bring {
                    cloud_key,
                    old: Some(e.old.clone()),
                    contested: true,
                },
                (Some(_), Some(first)) if changed => ScopeRepair::Bring {
                    cloud_key,
                    old: Some(first.old.clone()),
                    contested: true,
                },
                _ => ScopeRepair::Bring {
                    cloud_key,
                    old: None,
                    contested: false,
                },
            },
        };
        out.repairs.push(repair);
    }
    // A phone's delete removes the desktop row holding a version of that row the phone's changes
    // started from (the newest the desktop holds); with none, desktop rows of the scope left
    // unexplained and a desktop change of the scope that is not an INSERT waiting, the desktop may
    // have changed its copy: contested, as the stream's delete would be.
    for e in entries.iter().rev().filter(|e| e.deleted) {
        if e.cloud_key.as_ref().is_some_and(|ck| made.contains(ck)) {
            continue;
        }
        let of_row = |x: &&&Entry| match &e.cloud_key {
            Some(ck) => x.cloud_key.as_deref() == Some(ck.as_str()),
            None => std::ptr::eq(**x, *e),
        };
        let held = entries.iter().rev().filter(of_row).find(|x| {
            left.iter()
                .any(|d| d.is_some_and(|d| d.reverse == x.reverse))
        });
        if let Some(x) = held {
            take(&mut left, &|d| d.reverse == x.reverse);
            out.repairs.push(ScopeRepair::Remove {
                cloud_key: e.cloud_key.clone(),
                old: x.old.clone(),
                contested: false,
            });
        } else if changed && left.iter().any(Option::is_some) {
            let first = entries.iter().find(of_row).unwrap_or(e);
            out.repairs.push(ScopeRepair::Remove {
                cloud_key: e.cloud_key.clone(),
                old: first.old.clone(),
                contested: true,
            });
        }
    }
    out.inserts = left.iter().flatten().count() as u64;
    out
}
