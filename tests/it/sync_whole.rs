//! A table the cloud holds no row of (and its journal no entry of) is synced whole: no hashes, its
//! rows read as one set through the forward plan, lookups joined as a set when their source's key is
//! unique on the desktop and row by row otherwise. Counted as a scan counts, and a reconcile right
//! after finds both sides equal. A cloud table a phone emptied is compared, not refilled.

use tandem::config::Config;
use tandem::ops::reconcile::{self, Direction, Report, Request};
use tandem::pipeline::sync::Quiet;

use crate::any_schema::{OWNERSHIP, installed_with, run_once};
use crate::support::{TestDb, count};

const TABLES: &str = "[[tables]]\ndesktop = \"job\"\nkey = [\"job_id\"]\n\
     [[tables]]\ndesktop = \"task\"\ncloud_key = \"task_id\"\nscope = [\"job_id\"]\n\
     lookups = [{ column = \"client_id\", from = \"job\", on = \"job_id\" }]\n";
const JOBS: i64 = 50;
const TASKS_PER_JOB: i64 = 3;
/// Tasks of a job the desktop does not hold: their lookup finds nothing.
const ORPHAN_TASKS: i64 = 2;

/// The desktop's `job` with a primary key (`unique`), or without one and job 7 held twice (a legacy
/// desktop), both rows with the same client.
async fn installed(unique: bool) -> (TestDb, Config) {
    let (key, duplicate) = if unique {
        (" PRIMARY KEY", "")
    } else {
        ("", "INSERT INTO job VALUES (7, 70, 'job 7, again');")
    };
    let desktop = format!(
        "CREATE TABLE job (job_id int{key}, client_id int, name text); CREATE INDEX ON job (job_id);
         CREATE TABLE task (job_id int, name text); CREATE INDEX ON task (job_id);
         INSERT INTO job SELECT g, g * 10, 'job ' || g FROM generate_series(1, {JOBS}) g;
         {duplicate}
         INSERT INTO task SELECT j, 'task ' || t FROM generate_series(1, {JOBS}) j,
                                generate_series(1, {TASKS_PER_JOB}) t;
         INSERT INTO task SELECT 999, 'orphan ' || t FROM generate_series(1, {ORPHAN_TASKS}) t;"
    );
    let cloud = format!(
        "CREATE TABLE job (job_id int PRIMARY KEY, client_id int, name text, {OWNERSHIP});
         CREATE TABLE task (task_id bigserial PRIMARY KEY, job_id int, client_id int, name text, {OWNERSHIP});"
    );
    installed_with(&desktop, &cloud, TABLES).await
}

fn both() -> Request {
    Request {
        tables: Vec::new(),
        direction: Direction::Both,
        dry_run: false,
        trigger: "command",
    }
}

fn counts<'a>(report: &'a Report, table: &str, direction: &str) -> &'a reconcile::Row {
    report
        .rows
        .iter()
        .find(|r| r.table == table && r.direction == direction)
        .unwrap_or_else(|| panic!("no {direction} row for {table}: {:#?}", report.rows))
}

/// What the initial sync recorded it sent forward for `table`.
async fn synced_inserts(db: &TestDb, table: &str) -> u64 {
    let report: serde_json::Value = db
        .desktop()
        .await
        .query_one(
            "SELECT report FROM tandem.reconciles WHERE trigger = 'sync' ORDER BY started_at DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    report["tables"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["table"] == table))
        .and_then(|t| t["forward"]["inserted"].as_u64())
        .unwrap_or_else(|| panic!("no sync record of {table}: {report}"))
}

#[tokio::test]
async fn an_empty_cloud_gets_every_row_with_its_lookup_whether_or_not_the_source_key_is_unique() {
    for unique in [true, false] {
        let (db, config) = installed(unique).await;
        run_once(&config).await;
        let cloud = db.cloud().await;
        let tasks = JOBS * TASKS_PER_JOB + ORPHAN_TASKS;
        assert_eq!(count(&cloud, "SELECT count(*) FROM task").await, tasks);
        let wrong = count(
            &cloud,
            "SELECT count(*) FROM task WHERE client_id IS DISTINCT FROM
               CASE WHEN job_id = 999 THEN NULL ELSE job_id * 10 END",
        )
        .await;
        assert_eq!(wrong, 0, "lookups (unique key: {unique})");
        assert_eq!(
            count(&cloud, "SELECT count(*) FROM task WHERE source <> 'D'").await,
            0
        );
        // Job 7, held twice by the legacy desktop, is a dead letter, not a write.
        let jobs = if unique { JOBS } else { JOBS - 1 };
        assert_eq!(count(&cloud, "SELECT count(*) FROM job").await, jobs);
        let letters = count(
            &cloud,
            "SELECT count(*) FROM tandem.dead_letters WHERE resolved_at IS NULL",
        )
        .await;
        assert_eq!(letters, i64::from(!unique), "unique key: {unique}");
        assert_eq!(synced_inserts(&db, "task").await, tasks as u64);
        assert_eq!(synced_inserts(&db, "job").await, JOBS as u64);

        let again = reconcile::reconcile(&config, &both(), &Quiet)
            .await
            .unwrap();
        assert!(again.complete(), "{:?}", again.skipped);
        assert_eq!(again.written(), 0, "{:#?}", again.rows);
        assert_eq!(
            counts(&again, "task", "forward").counts.unchanged,
            tasks as u64
        );
    }
}

#[tokio::test]
async fn a_cloud_table_a_phone_emptied_is_compared_not_sent_again() {
    let (db, config) = installed(true).await;
    run_once(&config).await;
    // A phone deletes every job (the ownership trigger journals each delete).
    let cloud = db.cloud().await;
    cloud.batch_execute("DELETE FROM job").await.unwrap();
    let report = reconcile::reconcile(&config, &both(), &Quiet)
        .await
        .unwrap();
    assert!(report.complete(), "{:?}", report.skipped);
    let (forward, reverse) = (
        counts(&report, "job", "forward").counts,
        counts(&report, "job", "reverse").counts,
    );
    assert_eq!(forward.inserted, 0, "{:#?}", report.rows);
    assert_eq!(reverse.deleted, JOBS as u64, "{:#?}", report.rows);
    assert_eq!(count(&cloud, "SELECT count(*) FROM job").await, 0);
    assert_eq!(
        count(&db.desktop().await, "SELECT count(*) FROM job").await,
        0
    );
}

#[tokio::test]
async fn a_cloud_table_emptied_without_a_trace_is_sent_whole_again() {
    let (db, config) = installed(true).await;
    run_once(&config).await;
    // A TRUNCATE in the cloud fires no row trigger: nothing in the journal.
    let cloud = db.cloud().await;
    cloud.batch_execute("TRUNCATE task").await.unwrap();
    let report = reconcile::reconcile(&config, &both(), &Quiet)
        .await
        .unwrap();
    assert!(report.complete(), "{:?}", report.skipped);
    let tasks = JOBS * TASKS_PER_JOB + ORPHAN_TASKS;
    assert_eq!(
        counts(&report, "task", "forward").counts.inserted,
        tasks as u64
    );
    assert_eq!(report.written(), tasks as u64, "{:#?}", report.rows);
    assert_eq!(count(&cloud, "SELECT count(*) FROM task").await, tasks);
    let again = reconcile::reconcile(&config, &both(), &Quiet)
        .await
        .unwrap();
    assert_eq!(again.written(), 0, "{:#?}", again.rows);
}
