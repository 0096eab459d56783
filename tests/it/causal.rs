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

/// The sample's tasks of job 100, on both sides, with their cloud keys.
async fn tasks(db: &TestDb) -> (Vec<String>, Vec<String>) {
    (
        rows(
            &db.desktop().await,
            "jobtasks",
            "task_id, task_name, task_status",
            "job_id = 100",
        )
        .await,
        rows(
            &db.cloud().await,
            "jobtasks",
            "task_id, task_name, task_status",
            "job_id = 100",
        )
        .await,
    )
}

async fn cloud_keys(db: &TestDb) -> Vec<String> {
    rows(
        &db.cloud().await,
        "jobtasks",
        "jt_id, source",
        "job_id = 100",
    )
    .await
}

#[tokio::test]
async fn ping_pong_of_twenty_edits_of_a_cloud_key_row_keeps_its_cloud_key_without_a_conflict() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    desktop_app(
        &db,
        "INSERT INTO jobtasks (job_id, task_id, task_name) VALUES (100, 1, 'Collect'), (100, 2, 'Prepare')",
    )
    .await;
    run_once(&config).await;
    let keys: Vec<String> = cloud_keys(&db)
        .await
        .iter()
        .map(|r| r.split(',').next().unwrap().to_string())
        .collect();
    for n in 0..20 {
        let value = format!("edit {n}");
        let sql = format!("UPDATE jobtasks SET task_status = '{value}' WHERE task_id = 2");
        if n % 2 == 0 {
            desktop_app(&db, &sql).await;
        } else {
            phone(&db, &sql).await;
        }
        run_once(&config).await;
        let (desktop, cloud) = tasks(&db).await;
        assert_eq!(desktop, cloud, "edit {n}");
        assert!(
            desktop.contains(&format!("(2,Prepare,\"{value}\")")),
            "edit {n}: {desktop:?}"
        );
        let now = cloud_keys(&db).await;
        let now_keys: Vec<String> = now
            .iter()
            .map(|r| r.split(',').next().unwrap().to_string())
            .collect();
        assert_eq!(
            now_keys, keys,
            "edit {n}: the rows keep their cloud keys: {now:?}"
        );
    }
    assert_eq!(conflicts(&db).await, 0);
}

#[tokio::test]
async fn a_desktop_edit_of_a_phones_task_updates_it_in_place_and_a_desktop_delete_deletes_it() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    desktop_app(
        &db,
        "INSERT INTO jobtasks (job_id, task_id, task_name) VALUES (100, 1, 'Collect'), (100, 2, 'Prepare')",
    )
    .await;
    run_once(&config).await;
    // A phone marks a task done, and makes a task of its own.
    phone(
        &db,
        "UPDATE jobtasks SET task_status = 'Done' WHERE task_id = 2;
         INSERT INTO jobtasks (job_id, client_id, task_id, task_name) VALUES (100, 1, 1, 'Photo')",
    )
    .await;
    run_once(&config).await;
    let before = cloud_keys(&db).await;
    assert_eq!(before.len(), 3, "{before:?}");
    // Later the desktop reopens the task: the same cloud row, now the desktop's.
    desktop_app(
        &db,
        "UPDATE jobtasks SET task_status = 'Reopened' WHERE task_id = 2",
    )
    .await;
    run_once(&config).await;
    let (desktop, cloud) = tasks(&db).await;
    assert_eq!(desktop, cloud);
    assert_eq!(
        cloud,
        vec!["(1,Collect,)", "(1,Photo,)", "(2,Prepare,Reopened)"]
    );
    let after = cloud_keys(&db).await;
    let key_of = |rows: &[String], i: usize| rows[i].split(',').next().unwrap().to_string();
    assert_eq!(
        (0..3).map(|i| key_of(&after, i)).collect::<Vec<_>>(),
        (0..3).map(|i| key_of(&before, i)).collect::<Vec<_>>(),
        "no second copy, no new key: {before:?} {after:?}"
    );
    // The desktop deletes the phone's task it received: gone in the cloud.
    desktop_app(&db, "DELETE FROM jobtasks WHERE task_name = 'Photo'").await;
    run_once(&config).await;
    let (desktop, cloud) = tasks(&db).await;
    assert_eq!(desktop, cloud);
    assert_eq!(cloud, vec!["(1,Collect,)", "(2,Prepare,Reopened)"]);
    assert_eq!(conflicts(&db).await, 0);
}

#[tokio::test]
async fn a_task_changed_on_both_sides_at_once_is_settled_in_place_by_the_later_writer() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    desktop_app(
        &db,
        "INSERT INTO jobtasks (job_id, task_id, task_name) VALUES (100, 1, 'Collect'), (100, 2, 'Prepare')",
    )
    .await;
    run_once(&config).await;
    let before = cloud_keys(&db).await;
    // Neither sees the other: the phone marks task 2 done, then the desktop renames it.
    phone(
        &db,
        "UPDATE jobtasks SET task_status = 'Done' WHERE task_id = 2",
    )
    .await;
    desktop_app(
        &db,
        "UPDATE jobtasks SET task_name = 'Prepare return' WHERE task_id = 2",
    )
    .await;
    run_once(&config).await;
    run_once(&config).await;
    let (desktop, cloud) = tasks(&db).await;
    assert_eq!(desktop, cloud);
    // `latest`: each changed a different column, so both changes are kept.
    assert_eq!(cloud, vec!["(1,Collect,)", "(2,\"Prepare return\",Done)"]);
    let after = cloud_keys(&db).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(
        after
            .iter()
            .map(|r| r.split(',').next().unwrap())
            .collect::<Vec<_>>(),
        before
            .iter()
            .map(|r| r.split(',').next().unwrap())
            .collect::<Vec<_>>()
    );
    let (kind, outcome): (String, String) = db
        .desktop()
        .await
        .query_one("SELECT kind, outcome FROM tandem.conflicts", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        (kind.as_str(), outcome.as_str()),
        ("update/update", "merged")
    );
}

/// The reverse worker measures how far the cloud's clock is ahead of the desktop's when it connects,
/// and records it where every settlement reads it: both clusters here share one clock, so the
/// offset is within the round trip of the measurement.
#[tokio::test]
async fn the_cloud_clocks_offset_is_measured_and_recorded_for_the_latest_policy() {
    let (db, config) = installed().await;
    let desktop = db.desktop().await;
    let recorded = "SELECT count(*) FROM tandem.installation WHERE item = 'cloud_ahead'";
    assert_eq!(count(&desktop, recorded).await, 0);
    run_once(&config).await;
    let ahead: f64 = desktop
        .query_one(
            "SELECT extract(epoch FROM value::interval)::float8 FROM tandem.installation \
              WHERE item = 'cloud_ahead'",
            &[],
        )
        .await
        .expect("cloud_ahead recorded")
        .get(0);
    assert!(ahead.abs() < 0.5, "one clock, {ahead} s apart");
}
