//! Conflicts by concurrency, not by owner: an edit made after receiving the other side's last version
//! is an ordinary edit and flows, in both directions, any number of times; only two changes made
//! without seeing each other conflict, and the table's policy settles them.

use tandem::config::Config;
use tandem::pipeline::{self, RunOptions};
use tokio_util::sync::CancellationToken;

use crate::forward::installed;
use crate::reverse::{desktop_app, parents, phone};
use crate::support::{TestDb, count, rows};

/// `run --once`: the reverse direction first (what phones committed), then the forward one.
pub async fn run_once(config: &Config) -> pipeline::RunReport {
    pipeline::run(config, RunOptions { once: true }, CancellationToken::new())
        .await
        .expect("run --once")
}

/// Both sides' rows of `table` (desktop name, cloud name) in `columns`, and the cloud's owner column.
async fn both(
    db: &TestDb,
    tables: (&str, &str),
    columns: &str,
    filter: &str,
) -> (Vec<String>, Vec<String>) {
    (
        rows(&db.desktop().await, tables.0, columns, filter).await,
        rows(&db.cloud().await, tables.1, columns, filter).await,
    )
}

async fn conflicts(db: &TestDb) -> i64 {
    count(&db.desktop().await, "SELECT count(*) FROM tandem.conflicts").await
        + count(&db.cloud().await, "SELECT count(*) FROM tandem.conflicts").await
}

#[tokio::test]
async fn seeds_003_test_case_3_a_later_desktop_edit_wins() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    desktop_app(
        &db,
        "INSERT INTO jobshead (job_id, client_id, job_name, job_status) VALUES (300, 1, 'Audit', 'Open')",
    )
    .await;
    run_once(&config).await;
    // The phone marks it completed; the desktop receives that; later the desktop puts it on hold.
    phone(
        &db,
        "UPDATE jobshead SET job_status = 'Completed' WHERE job_id = 300",
    )
    .await;
    run_once(&config).await;
    assert_eq!(
        rows(
            &db.desktop().await,
            "jobshead",
            "job_status",
            "job_id = 300"
        )
        .await,
        vec!["(Completed)"]
    );
    desktop_app(
        &db,
        "UPDATE jobshead SET job_status = 'On Hold' WHERE job_id = 300",
    )
    .await;
    run_once(&config).await;
    let (desktop, cloud) = both(&db, ("jobshead", "jobshead"), "job_status", "job_id = 300").await;
    assert_eq!(desktop, vec!["(\"On Hold\")"]);
    assert_eq!(cloud, desktop);
    assert_eq!(
        rows(&db.cloud().await, "jobshead", "source", "job_id = 300").await,
        vec!["(D)"]
    );
    assert_eq!(
        conflicts(&db).await,
        0,
        "sequential edits are not conflicts"
    );

    // As the seeds wrote it: the phone's change and the desktop's later one, neither seeing the
    // other. Both changed the status; the desktop wrote last: its version wins, everywhere.
    phone(
        &db,
        "UPDATE jobshead SET job_status = 'Completed' WHERE job_id = 300",
    )
    .await;
    desktop_app(
        &db,
        "UPDATE jobshead SET job_status = 'Closed' WHERE job_id = 300",
    )
    .await;
    run_once(&config).await;
    run_once(&config).await;
    let (desktop, cloud) = both(&db, ("jobshead", "jobshead"), "job_status", "job_id = 300").await;
    assert_eq!(desktop, vec!["(Closed)"]);
    assert_eq!(cloud, desktop);
    let record = db
        .desktop()
        .await
        .query_one(
            "SELECT kind, policy, outcome, columns, base->>'job_status', desktop_row->>'job_status',
                    mobile_row->>'job_status', resolved_by FROM tandem.conflicts",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(record.get::<_, String>(0), "update/update");
    assert_eq!(record.get::<_, String>(1), "latest");
    assert_eq!(record.get::<_, String>(2), "desktop");
    assert_eq!(record.get::<_, Vec<String>>(3), vec!["job_status"]);
    assert_eq!(record.get::<_, String>(4), "On Hold");
    assert_eq!(record.get::<_, String>(5), "Closed");
    assert_eq!(record.get::<_, String>(6), "Completed");
    assert_eq!(record.get::<_, String>(7), "policy latest");
}

#[tokio::test]
async fn ping_pong_of_twenty_edits_of_a_desktop_key_row_flows_without_a_conflict() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    for n in 0..20 {
        let value = format!("edit {n}");
        if n % 2 == 0 {
            desktop_app(
                &db,
                &format!("UPDATE jobshead SET job_name = '{value}' WHERE job_id = 100"),
            )
            .await;
        } else {
            phone(
                &db,
                &format!("UPDATE jobshead SET job_name = '{value}' WHERE job_id = 100"),
            )
            .await;
        }
        run_once(&config).await;
        let (desktop, cloud) =
            both(&db, ("jobshead", "jobshead"), "job_name", "job_id = 100").await;
        assert_eq!(desktop, vec![format!("(\"{value}\")")], "edit {n}");
        assert_eq!(cloud, desktop, "edit {n}");
        let owner = if n % 2 == 0 { "D" } else { "M" };
        assert_eq!(
            rows(&db.cloud().await, "jobshead", "source", "job_id = 100").await,
            vec![format!("({owner})")],
            "edit {n}"
        );
    }
    assert_eq!(conflicts(&db).await, 0);
}
