//! Reverse dead letters: a mobile row the desktop refused comes again, by `tandem dead-letters --retry`
//! or by the phone's next change of it, and its dead letter is resolved; nothing is doubled. And old
//! images read as the desktop holds its rows, whatever the column types' limits on either side.

use tandem::ops::dead_letters::{self as deadletters, ReverseRetry};

use crate::forward::{forward_once, installed};
use crate::reverse::{desktop_app, parents, phone, reverse_once};
use crate::support::{TestDb, count, rows};

/// The desktop starts refusing work-diary narrations of 10 characters or more (rows it holds stay).
async fn refuse_long_narrations(db: &TestDb) {
    desktop_app(
        db,
        "ALTER TABLE workdiary ADD CONSTRAINT short_narration CHECK (length(narration) < 10) NOT VALID",
    )
    .await;
}

const OPEN_REVERSE: &str =
    "SELECT count(*) FROM tandem.dead_letters WHERE direction = 'reverse' AND resolved_at IS NULL";

#[tokio::test]
async fn a_refused_mobile_row_of_a_keyed_table_arrives_once_retried_and_its_dead_letter_is_resolved()
 {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    desktop_app(
        &db,
        "ALTER TABLE learequest ALTER leave_type TYPE varchar(2)",
    )
    .await;
    phone(&db, "INSERT INTO learequest (lea_id, staff_id, leave_type) VALUES (1, 1, 'Sick leave'), (2, 1, 'Earned leave'), (3, 1, 'CL')").await;
    let stats = reverse_once(&config).await;
    assert_eq!(stats.outcome.dead_letters, 2, "{stats:?}");
    let desktop = db.desktop().await;
    assert_eq!(count(&desktop, OPEN_REVERSE).await, 2);

    // The phone deletes one of them: the desktop never had it, its dead letter is moot.
    phone(&db, "DELETE FROM learequest WHERE lea_id = 2").await;
    reverse_once(&config).await;
    assert_eq!(count(&desktop, OPEN_REVERSE).await, 1);

    // Retried before the cause is fixed: refused again, the same dead letter stays open.
    let retried = deadletters::retry_reverse(&config).await.unwrap();
    assert_eq!(
        retried,
        ReverseRetry {
            resent: 1,
            left: vec![]
        }
    );
    let stats = reverse_once(&config).await;
    assert_eq!(stats.outcome.dead_letters, 1, "{stats:?}");
    assert_eq!(
        rows(
            &desktop,
            "tandem.dead_letters",
            "row_key, attempts, retried_at IS NOT NULL",
            "resolved_at IS NULL"
        )
        .await,
        vec![r#"("{""lea_id"": 1}",2,t)"#]
    );

    // Fixed on the desktop, retried: the row arrives as it is in the cloud, once.
    desktop_app(
        &db,
        "ALTER TABLE learequest ALTER leave_type TYPE varchar(20)",
    )
    .await;
    deadletters::retry_reverse(&config).await.unwrap();
    let stats = reverse_once(&config).await;
    assert_eq!(stats.outcome.dead_letters, 0, "{stats:?}");
    assert_eq!(
        rows(&desktop, "learequest", "lea_id, leave_type", "true").await,
        vec!["(1,\"Sick leave\")", "(3,CL)"]
    );
    assert_eq!(count(&desktop, OPEN_REVERSE).await, 0);
    // Nothing echoes, and the cloud row is as the phone left it.
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await,
        0
    );
    forward_once(&config).await;
    assert_eq!(
        rows(
            &db.cloud().await,
            "learequest",
            "lea_id, leave_type, source",
            "true"
        )
        .await,
        vec!["(1,\"Sick leave\",M)", "(3,CL,M)"]
    );
    // Nothing left to retry.
    assert_eq!(
        deadletters::retry_reverse(&config).await.unwrap(),
        ReverseRetry::default()
    );
}

#[tokio::test]
async fn a_refused_work_diary_entry_arrives_with_the_phones_next_edit_and_is_not_doubled() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    refuse_long_narrations(&db).await;
    phone(&db, "INSERT INTO workdiary (staff_id, wd_date, job_id, hours, narration) VALUES (2, '2025-06-01', 100, 1.5, 'Site visit at Asha Traders'), (2, '2025-06-01', 100, 2, 'Call')").await;
    let stats = reverse_once(&config).await;
    assert_eq!(stats.outcome.dead_letters, 1, "{stats:?}");
    let desktop = db.desktop().await;
    assert_eq!(
        rows(&desktop, "workdiary", "narration", "true").await,
        vec!["(Call)"]
    );

    // The phone shortens the text: a change of a row the desktop never held arrives as that row,
    // not as a conflict.
    desktop_app(&db, "ALTER TABLE workdiary DROP CONSTRAINT short_narration").await;
    phone(
        &db,
        "UPDATE workdiary SET narration = 'Site visit' WHERE narration LIKE 'Site visit%'",
    )
    .await;
    let stats = reverse_once(&config).await;
    assert_eq!(
        (stats.outcome.dead_letters, stats.outcome.conflicts),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(
        rows(&desktop, "workdiary", "hours, narration", "true").await,
        vec!["(1.50,\"Site visit\")", "(2.00,Call)"]
    );
    assert_eq!(count(&desktop, OPEN_REVERSE).await, 0);

    // Retrying now finds nothing open; a further edit updates the one desktop row.
    assert_eq!(
        deadletters::retry_reverse(&config).await.unwrap(),
        ReverseRetry::default()
    );
    phone(
        &db,
        "UPDATE workdiary SET hours = 1.75 WHERE narration = 'Site visit'",
    )
    .await;
    reverse_once(&config).await;
    assert_eq!(
        rows(&desktop, "workdiary", "hours, narration", "true").await,
        vec!["(1.75,\"Site visit\")", "(2.00,Call)"]
    );
    // The forward scoped replace sends nothing back as a desktop duplicate.
    forward_once(&config).await;
    assert_eq!(
        rows(&db.cloud().await, "workdiary", "hours, source", "true").await,
        vec!["(1.75,M)", "(2.00,M)"]
    );
}

#[tokio::test]
async fn a_refused_work_diary_entry_retried_arrives_once() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    refuse_long_narrations(&db).await;
    phone(&db, "INSERT INTO workdiary (staff_id, wd_date, job_id, hours, narration) VALUES (2, '2025-06-01', 100, 1.5, 'Site visit at Asha Traders')").await;
    assert_eq!(reverse_once(&config).await.outcome.dead_letters, 1);
    desktop_app(&db, "ALTER TABLE workdiary DROP CONSTRAINT short_narration").await;
    let retried = deadletters::retry_reverse(&config).await.unwrap();
    assert_eq!(
        retried,
        ReverseRetry {
            resent: 1,
            left: vec![]
        }
    );
    let stats = reverse_once(&config).await;
    assert_eq!(
        (stats.outcome.dead_letters, stats.outcome.conflicts),
        (0, 0),
        "{stats:?}"
    );
    let desktop = db.desktop().await;
    assert_eq!(
        rows(&desktop, "workdiary", "narration", "true").await,
        vec!["(\"Site visit at Asha Traders\")"]
    );
    assert_eq!(count(&desktop, OPEN_REVERSE).await, 0);

    // A dead letter whose cloud row is gone is left open and reported.
    refuse_long_narrations(&db).await;
    phone(&db, "INSERT INTO workdiary (staff_id, wd_date, hours, narration) VALUES (1, '2025-06-02', 1, 'Long narration')").await;
    assert_eq!(reverse_once(&config).await.outcome.dead_letters, 1);
    let id: i64 = desktop
        .query_one(
            "SELECT id FROM tandem.dead_letters WHERE resolved_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // tandem's own session deletes it (a phone's delete would stream and resolve it).
    db.cloud()
        .await
        .batch_execute(
            "SET tandem.applying = on; DELETE FROM workdiary WHERE wd_date = '2025-06-02'",
        )
        .await
        .unwrap();
    let retried = deadletters::retry_reverse(&config).await.unwrap();
    assert_eq!(
        retried,
        ReverseRetry {
            resent: 0,
            left: vec![id]
        }
    );
}

/// A cloud-key row is found on the desktop by its old image: read with the desktop's column types
/// (`numeric(6,3)` here, the cloud's `numeric(5,2)`), it matches the row the desktop stored, so the
/// phone's edit updates that row rather than being logged as a conflict.
#[tokio::test]
async fn an_old_image_is_compared_as_the_desktop_stored_it() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    desktop_app(&db, "ALTER TABLE workdiary ALTER hours TYPE numeric(6,3)").await;
    phone(&db, "INSERT INTO workdiary (staff_id, wd_date, hours, narration) VALUES (2, '2025-06-01', 1.5, 'Call')").await;
    reverse_once(&config).await;
    let desktop = db.desktop().await;
    assert_eq!(
        rows(&desktop, "workdiary", "hours, narration", "true").await,
        vec!["(1.500,Call)"]
    );
    phone(&db, "UPDATE workdiary SET narration = 'Call back'").await;
    let stats = reverse_once(&config).await;
    assert_eq!(
        (stats.outcome.conflicts, stats.outcome.dead_letters),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(
        rows(&desktop, "workdiary", "hours, narration", "true").await,
        vec!["(1.500,\"Call back\")"]
    );
}

/// An old image the desktop's types cannot hold at all (12.50 in a `numeric(3,2)`) is compared as it
/// is instead: the phone's next versions of a refused row still arrive, refused again while they do
/// not fit, applied once they do; the worker never stops on it.
#[tokio::test]
async fn an_old_image_the_desktop_cannot_hold_does_not_stop_the_worker() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    desktop_app(&db, "ALTER TABLE workdiary ALTER hours TYPE numeric(3,2)").await;
    phone(&db, "INSERT INTO workdiary (staff_id, wd_date, hours, narration) VALUES (2, '2025-06-01', 12.5, 'Audit')").await;
    assert_eq!(reverse_once(&config).await.outcome.dead_letters, 1);
    phone(&db, "UPDATE workdiary SET narration = 'Audit, day 2'").await;
    let stats = reverse_once(&config).await;
    assert_eq!(
        (stats.outcome.conflicts, stats.outcome.dead_letters),
        (0, 1),
        "{stats:?}"
    );
    let desktop = db.desktop().await;
    assert_eq!(
        rows(
            &desktop,
            "tandem.dead_letters",
            "attempts",
            "resolved_at IS NULL"
        )
        .await,
        vec!["(2)"]
    );
    phone(&db, "UPDATE workdiary SET hours = 9.5").await;
    let stats = reverse_once(&config).await;
    assert_eq!(
        (stats.outcome.conflicts, stats.outcome.dead_letters),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(
        rows(&desktop, "workdiary", "hours, narration", "true").await,
        vec!["(9.50,\"Audit, day 2\")"]
    );
    assert_eq!(count(&desktop, OPEN_REVERSE).await, 0);
}
