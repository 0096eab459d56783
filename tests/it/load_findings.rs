//! Conflicts once settled wrongly, found by the load test (`load.rs`), each reduced to a few writes:
//! regression tests. The tables and statements are those of `policies.rs`.

use std::time::Duration;

use crate::any_schema::{OWNERSHIP, installed_with, run_once};
use crate::policies::{DESK_EDIT, KEYED, PHONE_EDIT, SCOPED, exec};
use crate::support::count;

/// Found by the load test: in a cloud-key table the desktop's time of a conflict is its latest
/// change of any row of the scope, not of the row in conflict (the outbox holds only the scope).
#[tokio::test]
async fn latest_takes_the_desktops_time_from_its_change_of_the_row_not_of_another_row_of_the_scope()
{
    let (db, config) = SCOPED.install().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let t = SCOPED.quoted("latest");
    let row = r#""Grp" = 1 AND "Note's A" = 'a0'"#;
    let edit = |sql: &str| sql.replace("{t}", &t).replace("{row}", row);
    exec(&desktop, &edit(DESK_EDIT)).await;
    exec(&cloud, &edit(PHONE_EDIT)).await;
    // Later, the desktop changes another row of the scope.
    exec(
        &desktop,
        &format!(
            r#"UPDATE {t} SET "b col" = 'b later' WHERE "Grp" = 1 AND "Note's A" = 'bystander'"#
        ),
    )
    .await;
    run_once(&config).await;
    let want = vec![
        vec!["a phone", "b desk", "2000.00"],
        vec!["bystander", "b later", "1.00"],
    ];
    assert_eq!(SCOPED.versions(&desktop, "latest", 1, false).await, want);
    assert_eq!(SCOPED.versions(&cloud, "latest", 1, false).await, want);
}

/// Found by the load test: a settlement puts the row's key into the outbox (the cloud must take the
/// result), and that entry's time, the settlement's, then counts as the desktop's time of the row's
/// next conflict. Here a phone's two edits arrive in two groups: the second, made after the
/// desktop's edit, must win the column both changed.
#[tokio::test]
async fn latest_does_not_take_a_settlements_time_for_the_desktops() {
    let tables =
        "[sync]\nbatch_max_rows = 1\n[[tables]]\ndesktop = \"Item Latest\"\nkey = [\"Key\"]\n";
    let t = KEYED.quoted("latest");
    let (db, config) = installed_with(
        &format!("CREATE TABLE {t} ({});", KEYED.columns),
        &format!("CREATE TABLE {t} ({}, {OWNERSHIP});", KEYED.columns),
        tables,
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    exec(
        &desktop,
        &format!("INSERT INTO {t} VALUES (1, 'a0', 'b0', 1000)"),
    )
    .await;
    run_once(&config).await;
    exec(&cloud, &format!(r#"UPDATE {t} SET "Note's A" = 'a phone'"#)).await;
    exec(
        &desktop,
        &format!(r#"UPDATE {t} SET "b col" = 'b desk', "Amount" = 3000.5"#),
    )
    .await;
    exec(&cloud, &format!(r#"UPDATE {t} SET "Amount" = 2000"#)).await;
    run_once(&config).await;
    let want = vec![vec!["a phone", "b desk", "2000.00"]];
    assert_eq!(KEYED.versions(&desktop, "latest", 1, false).await, want);
    assert_eq!(KEYED.versions(&cloud, "latest", 1, false).await, want);
}

/// A desktop change committed while the reverse applies a group: it checked the desktop's row
/// (no conflict: it was still what the phone started from), then waits for the row, which the
/// desktop's change holds; once that commits, the phone's change no longer applies (the row is not
/// what it started from), and nothing records why. Both changes were made without seeing each other:
/// a conflict, which `latest` merges (they changed different columns).
#[tokio::test]
async fn a_desktop_change_committed_while_the_reverse_applies_is_a_conflict_not_a_lost_phone_edit()
{
    let t = KEYED.quoted("latest");
    let (db, config) = installed_with(
        &format!("CREATE TABLE {t} ({});", KEYED.columns),
        &format!("CREATE TABLE {t} ({}, {OWNERSHIP});", KEYED.columns),
        "[[tables]]\ndesktop = \"Item Latest\"\nkey = [\"Key\"]\n",
    )
    .await;
    let (desktop, app, cloud) = (db.desktop().await, db.desktop().await, db.cloud().await);
    exec(
        &desktop,
        &format!("INSERT INTO {t} VALUES (1, 'a0', 'b0', 1000)"),
    )
    .await;
    run_once(&config).await;
    exec(&cloud, &format!(r#"UPDATE {t} SET "Note's A" = 'a phone'"#)).await;
    exec(
        &app,
        &format!(r#"BEGIN; UPDATE {t} SET "b col" = 'b desk'"#),
    )
    .await;
    let run = tokio::spawn({
        let config = config.clone();
        async move { run_once(&config).await }
    });
    let waits = "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name = 'tandem' AND wait_event_type = 'Lock'";
    let waiting = tandem::cluster::wait_until(Duration::from_secs(30), || async {
        count(&desktop, waits).await > 0
    })
    .await;
    assert!(waiting, "the reverse never waited for the desktop's row");
    exec(&app, "COMMIT").await;
    run.await.unwrap();
    run_once(&config).await;
    let want = vec![vec!["a phone", "b desk", "1000.00"]];
    let conflicts = count(&desktop, "SELECT count(*) FROM tandem.conflicts").await;
    assert_eq!(
        KEYED.versions(&desktop, "latest", 1, false).await,
        want,
        "{conflicts} conflicts"
    );
    assert_eq!(KEYED.versions(&cloud, "latest", 1, false).await, want);
}

/// The same in a cloud-key table, where the reverse pairs each phone's change with the desktop row
/// holding its old image by the row's place (`ctid`): the desktop's change, committed after the
/// pairing, moves the row, and the phone's change applies to nothing.
#[tokio::test]
async fn a_desktop_change_committed_while_the_reverse_applies_to_a_cloud_key_row_is_a_conflict_too()
{
    let (db, config) = SCOPED.install().await;
    let (desktop, app, cloud) = (db.desktop().await, db.desktop().await, db.cloud().await);
    let t = SCOPED.quoted("latest");
    let row = r#""Grp" = 1 AND "Note's A" = 'a0'"#;
    exec(
        &cloud,
        &format!(r#"UPDATE {t} SET "Amount" = 2000 WHERE {row}"#),
    )
    .await;
    exec(
        &app,
        &format!(r#"BEGIN; UPDATE {t} SET "b col" = 'b desk' WHERE {row}"#),
    )
    .await;
    let run = tokio::spawn({
        let config = config.clone();
        async move { run_once(&config).await }
    });
    let waits = "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name = 'tandem' AND wait_event_type = 'Lock'";
    let waiting = tandem::cluster::wait_until(Duration::from_secs(30), || async {
        count(&desktop, waits).await > 0
    })
    .await;
    assert!(waiting, "the reverse never waited for the desktop's row");
    exec(&app, "COMMIT").await;
    run.await.unwrap();
    run_once(&config).await;
    let want = vec![
        vec!["a0", "b desk", "2000.00"],
        vec!["bystander", "b0", "1.00"],
    ];
    let conflicts = count(&desktop, "SELECT count(*) FROM tandem.conflicts").await;
    assert_eq!(
        SCOPED.versions(&desktop, "latest", 1, false).await,
        want,
        "{conflicts} conflicts"
    );
    assert_eq!(SCOPED.versions(&cloud, "latest", 1, false).await, want);
}

/// Found by the load test, which records no `delete/update` in its cloud-key table: the desktop
/// deletes a row a phone edits, and edits another row of the scope. The phone's edit must meet the
/// desktop's delete (`latest` keeps the edit), and the other row's edit is no conflict.
#[tokio::test]
async fn a_phones_edit_of_a_row_the_desktop_deleted_is_not_paired_with_another_row_it_edited() {
    let (db, config) = SCOPED.install().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let t = SCOPED.quoted("latest");
    exec(
        &cloud,
        &format!(r#"UPDATE {t} SET "Amount" = 2000 WHERE "Grp" = 1 AND "Note's A" = 'a0'"#),
    )
    .await;
    exec(
        &desktop,
        &format!(
            r#"DELETE FROM {t} WHERE "Grp" = 1 AND "Note's A" = 'a0';
               UPDATE {t} SET "b col" = 'b desk' WHERE "Grp" = 1 AND "Note's A" = 'bystander'"#
        ),
    )
    .await;
    run_once(&config).await;
    let want = vec![
        vec!["a0", "b0", "2000.00"],
        vec!["bystander", "b desk", "1.00"],
    ];
    let kinds = crate::support::rows(&desktop, "tandem.conflicts", "kind, outcome", "true").await;
    assert_eq!(
        SCOPED.versions(&desktop, "latest", 1, false).await,
        want,
        "{kinds:?}"
    );
    assert_eq!(
        SCOPED.versions(&cloud, "latest", 1, false).await,
        want,
        "{kinds:?}"
    );
    assert_eq!(kinds, ["(delete/update,mobile)"]);
}

/// Found by the load test: the forward decided a key was the desktop's to write (the cloud row was a
/// version the desktop had received), and a phone's delete of that row committed before the write,
/// which then inserted the desktop's row again as new; the reverse applied the phone's delete on the
/// desktop (the desktop's row was what the phone deleted), leaving the row in the cloud only. Here the
/// phone's delete is open while the forward runs: the forward must wait for it, or give way, and then
/// see it.
#[tokio::test]
async fn a_phones_delete_committed_while_the_forward_applies_is_not_undone() {
    let t = KEYED.quoted("latest");
    let (db, config) = installed_with(
        &format!("CREATE TABLE {t} ({});", KEYED.columns),
        &format!("CREATE TABLE {t} ({}, {OWNERSHIP});", KEYED.columns),
        "[[tables]]\ndesktop = \"Item Latest\"\nkey = [\"Key\"]\n",
    )
    .await;
    let (desktop, cloud, phone) = (db.desktop().await, db.cloud().await, db.cloud().await);
    exec(
        &desktop,
        &format!("INSERT INTO {t} VALUES (1, 'a0', 'b0', 1000), (2, 'a0', 'b0', 1000)"),
    )
    .await;
    run_once(&config).await;
    // The desktop writes the row again as it is (its key goes to the outbox, its content is what
    // the phone deletes); the phone's delete is under way.
    exec(&desktop, &format!(r#"UPDATE {t} SET "b col" = "b col""#)).await;
    exec(
        &phone,
        &format!(r#"BEGIN; DELETE FROM {t} WHERE "Key" = 1"#),
    )
    .await;
    let run = tokio::spawn({
        let config = config.clone();
        async move { run_once(&config).await }
    });
    let waits = "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name = 'tandem' AND wait_event_type = 'Lock'";
    let waiting = tandem::cluster::wait_until(Duration::from_secs(30), || async {
        count(&cloud, waits).await > 0
    })
    .await;
    assert!(waiting, "the forward never waited for the phone's row");
    exec(&phone, "COMMIT").await;
    run.await.unwrap();
    run_once(&config).await;
    let want = vec![vec!["a0", "b0", "1000.00"]];
    assert_eq!(KEYED.versions(&cloud, "latest", 2, false).await, want);
    assert_eq!(KEYED.versions(&desktop, "latest", 2, false).await, want);
    for (side, client) in [("desktop", &desktop), ("cloud", &cloud)] {
        let left = count(
            client,
            &format!(r#"SELECT count(*) FROM {t} WHERE "Key" = 1"#),
        )
        .await;
        assert_eq!(left, 0, "the phone's delete is undone on the {side}");
    }
}
