use super::*;

/// No desktop change waits; one that is not an INSERT waits.
const NONE: Waiting = Waiting {
    any: false,
    made: false,
    changed: false,
};
const CHANGED: Waiting = Waiting {
    any: true,
    made: false,
    changed: true,
};
/// The desktop made the key since the cloud last took its changes.
const MADE: Waiting = Waiting {
    any: true,
    made: true,
    changed: false,
};

/// [`decide_scope`] with no row a phone made unseen.
fn decide(
    desktop: &[Hashes],
    cloud: &[CloudRow],
    entries: &[&Entry],
    waiting: Waiting,
    received_known: bool,
) -> ScopeDecision {
    let none = std::collections::HashSet::new();
    decide_scope(desktop, cloud, entries, &none, waiting, received_known)
}

fn h(forward: i64, reverse: i64) -> Hashes {
    Hashes { forward, reverse }
}

fn entry(deleted: bool, ck: Option<&str>, reverse: i64, old: &str) -> Entry {
    Entry {
        inserted: false,
        id: 1,
        deleted,
        cloud_key: ck.map(str::to_string),
        reverse,
        old: old.to_string(),
        key: Key(vec![]),
    }
}

#[test]
fn a_desktop_key_is_sent_forward_unless_the_journal_says_a_phone_deleted_it() {
    assert_eq!(
        decide_key(Some(h(1, 1)), Some((h(1, 1), false)), &[], NONE, false),
        KeyDecision::Unchanged
    );
    assert_eq!(
        decide_key(Some(h(1, 1)), Some((h(2, 1), false)), &[], NONE, false),
        KeyDecision::Update
    );
    assert_eq!(
        decide_key(Some(h(1, 1)), None, &[], NONE, false),
        KeyDecision::Insert
    );
    assert_eq!(
        decide_key(None, Some((h(1, 1), false)), &[], NONE, false),
        KeyDecision::Delete
    );
    // A phone's row the desktop received, then lost without deleting it (no change of it waits in
    // the outbox): brought back, not deleted.
    assert_eq!(
        decide_key(None, Some((h(1, 1), false)), &[], NONE, true),
        KeyDecision::Bring { old: None }
    );
    let gone = entry(true, None, 1, "v1");
    assert_eq!(
        decide_key(Some(h(1, 1)), None, &[&gone], NONE, false),
        KeyDecision::Remove {
            old: "v1".into(),
            contested: false
        }
    );
    // The desktop changed the row while a phone deleted it (the entry is a change the desktop has
    // not received): an update/delete conflict for the reverse plan to settle.
    assert_eq!(
        decide_key(Some(h(5, 5)), None, &[&gone], NONE, false),
        KeyDecision::Remove {
            old: "v1".into(),
            contested: true
        }
    );
    // A phone changed the row, then deleted it; the desktop holds the version the phone started
    // from (it changed the row and put it back meanwhile): the delete applies, as the stream's net
    // change (first old image: the desktop's row) does.
    let changed = entry(false, None, 1, "v1");
    let deleted = entry(true, None, 6, "v6");
    assert_eq!(
        decide_key(Some(h(1, 1)), None, &[&changed, &deleted], CHANGED, false),
        KeyDecision::Remove {
            old: "v1".into(),
            contested: false
        }
    );
    // A phone deleted the row, then made the key again and changed that (all unreceived); the desktop
    // still holds the first version: its delete applies, the new row is the phone's.
    let edited = entry(false, None, 2, "v2");
    assert_eq!(
        decide_key(Some(h(1, 1)), None, &[&gone, &edited], NONE, false),
        KeyDecision::Remove {
            old: "v1".into(),
            contested: false
        }
    );
}

#[test]
fn a_phones_delete_then_new_row_of_a_key_replaces_the_version_the_desktop_holds() {
    let gone = entry(true, None, 3, "v3");
    assert_eq!(
        decide_key(Some(h(3, 3)), Some((h(4, 4), true)), &[&gone], NONE, false),
        KeyDecision::Bring {
            old: Some("v3".into())
        }
    );
}

#[test]
fn a_key_the_desktop_made_since_the_cloud_took_its_changes_held_no_phone_version() {
    let edited = entry(false, None, 3, "v3");
    let gone = entry(true, None, 3, "v3");
    // Against a phone's row: both created the key.
    assert_eq!(
        decide_key(
            Some(h(9, 9)),
            Some((h(4, 4), true)),
            &[&edited],
            MADE,
            false
        ),
        KeyDecision::Collision { old: None }
    );
    // A phone's delete of a version the desktop never had: the desktop's row is its own.
    assert_eq!(
        decide_key(Some(h(9, 9)), None, &[&gone], MADE, false),
        KeyDecision::Insert
    );
    // Made and removed again on the desktop, made and changed by a phone: the phone's row.
    assert_eq!(
        decide_key(None, Some((h(4, 4), true)), &[&edited], MADE, false),
        KeyDecision::Bring { old: None }
    );
}

#[test]
fn a_desktop_delete_of_a_row_a_phone_changed_meanwhile_is_a_conflict() {
    let edited = entry(false, None, 3, "v3");
    // The desktop's delete waits in the outbox: delete/update, from the version the phone changed.
    assert_eq!(
        decide_key(None, Some((h(4, 4), true)), &[&edited], CHANGED, false),
        KeyDecision::Collision {
            old: Some("v3".into())
        }
    );
    // No desktop change waits: the desktop never had the row (or lost it): brought.
    assert_eq!(
        decide_key(None, Some((h(4, 4), true)), &[&edited], NONE, false),
        KeyDecision::Bring { old: None }
    );
    // The phone deleted the version the desktop had first, then made the key again, while the
    // desktop deleted it: both deleted that one, and the phone's new row is brought (as the
    // stream's net change of a key deleted and made again is a new row where the desktop lacks it).
    let gone = entry(true, None, 3, "v3");
    let again = entry(false, None, 5, "v5");
    assert_eq!(
        decide_key(
            None,
            Some((h(4, 4), true)),
            &[&gone, &again],
            CHANGED,
            false
        ),
        KeyDecision::Bring { old: None }
    );
}

#[test]
fn a_mobile_row_applies_over_the_desktop_only_where_the_journal_shows_what_it_changed() {
    // The desktop holds the mobile row: nothing to do, whatever the forward columns say.
    assert_eq!(
        decide_key(Some(h(1, 7)), Some((h(2, 7), true)), &[], NONE, false),
        KeyDecision::Unchanged
    );
    assert_eq!(
        decide_key(None, Some((h(1, 1), true)), &[], NONE, false),
        KeyDecision::Bring { old: None }
    );
    let edited = entry(false, None, 3, "v3");
    assert_eq!(
        decide_key(
            Some(h(3, 3)),
            Some((h(4, 4), true)),
            &[&edited],
            NONE,
            false
        ),
        KeyDecision::Bring {
            old: Some("v3".into())
        }
    );
    // The desktop holds something the phone never started from.
    assert_eq!(
        decide_key(
            Some(h(9, 9)),
            Some((h(4, 4), true)),
            &[&edited],
            NONE,
            false
        ),
        KeyDecision::Collision {
            old: Some("v3".into())
        }
    );
    assert_eq!(
        decide_key(Some(h(9, 9)), Some((h(4, 4), true)), &[], NONE, false),
        KeyDecision::Collision { old: None }
    );
}

fn row(forward: i64, reverse: i64, mobile: bool, ck: &str) -> CloudRow {
    CloudRow {
        hashes: h(forward, reverse),
        mobile,
        phone: mobile,
        kept: false,
        cloud_key: Some(ck.to_string()),
    }
}

#[test]
fn a_scope_is_compared_as_a_multiset_received_rows_first() {
    // Two equal desktop rows, one desktop-owned and one mobile-owned copy in the cloud: in sync.
    let d = [h(1, 1), h(1, 1)];
    let same = decide(
        &d,
        &[row(1, 1, true, "7"), row(1, 1, false, "8")],
        &[],
        NONE,
        false,
    );
    assert_eq!((same.unchanged, same.unchanged_mobile), (1, 1));
    assert_eq!((same.inserts, same.deletes), (0, 0));
    assert!(same.repairs.is_empty());
    // Without a horizon (adoption): one desktop row, an old sync's copy and a phone's equal row: the
    // desktop row is the phone's copy, the old sync's is stray.
    let stray = decide(
        &d[..1],
        &[row(1, 1, true, "7"), row(1, 1, false, "8")],
        &[],
        NONE,
        false,
    );
    assert_eq!(
        (stray.unchanged_mobile, stray.inserts, stray.deletes),
        (1, 0, 1)
    );
    // With one: one desktop row, a row the desktop has and an equal phone's row it has not received:
    // the desktop row is the first's copy, the phone's is new to the desktop and brought (a phone
    // made a second equal row).
    let second = decide(
        &d[..1],
        &[row(1, 1, true, "7"), row(1, 1, false, "8")],
        &[],
        CHANGED,
        true,
    );
    assert_eq!(
        (second.unchanged, second.inserts, second.deletes),
        (1, 0, 0)
    );
    assert_eq!(
        second.repairs,
        vec![ScopeRepair::Bring {
            cloud_key: "7".into(),
            old: None,
            contested: false
        }]
    );
    // The desktop's copy of a phone's row the table has no horizon for (every phone row counts as
    // not received: adoption) matches it, and so does one the stream applied before the horizon
    // moved. With a horizon and a desktop change of the scope waiting, an equal desktop row is the
    // desktop's own: both stay.
    let adopted = decide(&d[..1], &[row(1, 1, true, "7")], &[], NONE, false);
    assert_eq!((adopted.unchanged_mobile, adopted.inserts), (1, 0));
    assert!(adopted.repairs.is_empty());
    let streamed = decide(&d[..1], &[row(1, 1, true, "7")], &[], NONE, true);
    assert_eq!((streamed.unchanged_mobile, streamed.inserts), (1, 0));
    let both = decide(&d[..1], &[row(1, 1, true, "7")], &[], MADE, true);
    assert_eq!((both.unchanged_mobile, both.inserts), (0, 1));
    assert_eq!(
        both.repairs,
        vec![ScopeRepair::Bring {
            cloud_key: "7".into(),
            old: None,
            contested: false
        }]
    );
    // A mobile row the desktop lacks is brought; a desktop row the cloud lacks goes forward.
    let missing = decide(&[h(2, 2)], &[row(3, 3, true, "9")], &[], NONE, false);
    assert_eq!(missing.inserts, 1);
    assert_eq!(
        missing.repairs,
        vec![ScopeRepair::Bring {
            cloud_key: "9".into(),
            old: None,
            contested: false
        }]
    );
}

#[test]
fn a_scope_uses_the_journal_for_edits_and_deletes_the_desktop_missed() {
    let edited = entry(false, Some("9"), 2, "v2");
    let gone = entry(true, Some("5"), 4, "v4");
    let d = [h(2, 2), h(4, 4), h(6, 6)];
    let out = decide(&d, &[row(3, 3, true, "9")], &[&edited, &gone], NONE, false);
    assert_eq!(
        out.repairs,
        vec![
            ScopeRepair::Bring {
                cloud_key: "9".into(),
                old: Some("v2".into()),
                contested: false
            },
            ScopeRepair::Remove {
                cloud_key: Some("5".into()),
                old: "v4".into(),
                contested: false
            },
        ]
    );
    assert_eq!(
        out.inserts, 1,
        "the row no journal entry explains is the desktop's"
    );
    // A delete the stream applied long ago: the desktop's equal row is matched with the cloud's
    // first, and is not removed.
    let twin = decide(&[h(4, 4)], &[row(4, 4, false, "6")], &[&gone], NONE, false);
    assert!(twin.repairs.is_empty());
    assert_eq!(twin.unchanged, 1);
    // Both sides changed a row (a desktop update of the scope waits): the phone's version is staged
    // over the version it changed, which the desktop no longer holds: a conflict (the desktop's row
    // goes forward as its own).
    let both = decide(
        &[h(8, 8)],
        &[row(3, 3, true, "9")],
        &[&edited],
        CHANGED,
        false,
    );
    assert_eq!(
        both.repairs,
        vec![ScopeRepair::Bring {
            cloud_key: "9".into(),
            old: Some("v2".into()),
            contested: true
        }]
    );
    assert_eq!(both.inserts, 1);
    // Only the desktop's INSERTs of the scope wait (or none): every row of it the desktop had
    // received is still there, so it never had the phone's: the phone made the row, then edited it.
    for waiting in [NONE, MADE] {
        let made = decide(
            &[h(8, 8)],
            &[row(3, 3, true, "9")],
            &[&edited],
            waiting,
            false,
        );
        assert_eq!(
            made.repairs,
            vec![ScopeRepair::Bring {
                cloud_key: "9".into(),
                old: None,
                contested: false
            }]
        );
    }
    // A phone made the row and edited it before the desktop ever had it: a new row.
    let made = decide(&[], &[row(3, 3, true, "9")], &[&edited], NONE, false);
    assert_eq!(
        made.repairs,
        vec![ScopeRepair::Bring {
            cloud_key: "9".into(),
            old: None,
            contested: false
        }]
    );
}

#[test]
fn a_received_phone_row_the_desktop_lost_is_brought_back_unless_a_change_waits() {
    // The desktop holds nothing of the scope; the cloud a phone's row the desktop received.
    let received = CloudRow {
        phone: true,
        ..row(1, 1, false, "9")
    };
    let lost = decide(&[], std::slice::from_ref(&received), &[], NONE, false);
    assert_eq!(lost.deletes, 0);
    assert_eq!(
        lost.repairs,
        vec![ScopeRepair::Bring {
            cloud_key: "9".into(),
            old: None,
            contested: false
        }]
    );
    // The phone's version of an open conflict: a person decides it, nothing here.
    let kept = CloudRow {
        kept: true,
        ..received.clone()
    };
    let open = decide(&[h(5, 5)], &[kept], &[], NONE, false);
    assert_eq!((open.unchanged, open.deletes, open.inserts), (1, 0, 1));
    assert!(open.repairs.is_empty());
    // A desktop change of the scope waits in the outbox: it decides, when applied.
    let pending = decide(&[], &[received], &[], CHANGED, false);
    assert_eq!((pending.deletes, pending.repairs.len()), (1, 0));
}

#[test]
fn a_scopes_row_changed_on_one_side_and_deleted_or_edited_on_the_other_is_contested() {
    // The phone changed row 9 (v2 to v3), then deleted it; the desktop still holds v2: the delete
    // applies to it, from the version the desktop holds.
    let edited = entry(false, Some("9"), 2, "v2");
    let gone = entry(true, Some("9"), 3, "v3");
    let out = decide(&[h(2, 2)], &[], &[&edited, &gone], NONE, false);
    assert_eq!(
        out.repairs,
        vec![ScopeRepair::Remove {
            cloud_key: Some("9".into()),
            old: "v2".into(),
            contested: false
        }]
    );
    assert_eq!(out.inserts, 0);
    // The desktop changed its copy instead: contested from the first version the phone changed
    // (update/delete), and the desktop's row stays to be sent after the repair.
    let out = decide(&[h(8, 8)], &[], &[&edited, &gone], CHANGED, false);
    assert_eq!(
        out.repairs,
        vec![ScopeRepair::Remove {
            cloud_key: Some("9".into()),
            old: "v2".into(),
            contested: true
        }]
    );
    assert_eq!(out.inserts, 1);
    // Without a desktop change of the scope that is not an INSERT, the desktop never had the row.
    let out = decide(&[h(8, 8)], &[], &[&edited, &gone], MADE, false);
    assert!(out.repairs.is_empty());
    assert_eq!(out.inserts, 1);
    // The desktop holds nothing of the scope: both deleted the row.
    assert!(
        decide(&[], &[], &[&edited, &gone], CHANGED, false)
            .repairs
            .is_empty()
    );
    // The desktop deleted the row a phone edited (a change of the scope waits): delete/update.
    let out = decide(&[], &[row(3, 3, true, "9")], &[&edited], CHANGED, false);
    assert_eq!(
        out.repairs,
        vec![ScopeRepair::Bring {
            cloud_key: "9".into(),
            old: Some("v2".into()),
            contested: true
        }]
    );
}

#[test]
fn a_row_a_phone_made_unseen_is_new_to_the_desktop_and_its_delete_asks_nothing_of_it() {
    // The desktop edited a row of the scope (its cloud version `(1, 1)` is left over; the desktop's
    // edit `(2, 2)` is what it holds) while a phone made row "9", edited it from content like the
    // desktop's edit and made another, "8", then deleted it. Without the phone's inserts, "9" is taken
    // for a row the desktop changed (a contested bring, paired by likeness with the desktop's edit) and
    // the delete of "8" for one of a row it changed too.
    let d = [h(2, 2)];
    let cloud = [row(1, 1, false, "5"), row(3, 3, true, "9")];
    let edited = entry(false, Some("9"), 4, "{}");
    let gone = entry(true, Some("8"), 5, "{}");
    let unseen = decide(&d, &cloud, &[&edited, &gone], CHANGED, true);
    assert!(unseen.repairs.iter().all(|r| match r {
        ScopeRepair::Bring { contested, .. } | ScopeRepair::Remove { contested, .. } => *contested,
    }));
    assert_eq!(unseen.repairs.len(), 2);
    let made: std::collections::HashSet<String> = ["9".to_string(), "8".to_string()].into();
    let known = decide_scope(&d, &cloud, &[&edited, &gone], &made, CHANGED, true);
    assert_eq!(
        known.repairs,
        vec![ScopeRepair::Bring {
            cloud_key: "9".into(),
            old: None,
            contested: false
        }]
    );
    assert_eq!((known.inserts, known.deletes), (1, 1));
}
