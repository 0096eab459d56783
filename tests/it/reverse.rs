//! Reverse streaming: mobile rows reach the desktop through logical replication, with no echo and no
//! holes. Tests are named after the seeds' bugs they guard against where there is one.

use tandem::config::Config;
use tandem::pipeline::{self, RunOptions, RunStats};
use tokio_util::sync::CancellationToken;

use crate::forward::{forward_once, installed};
use crate::support::{TestDb, count, rows};

/// Applies everything the cloud committed before the call, like the reverse half of `run --once`.
pub async fn reverse_once(config: &Config) -> RunStats {
    pipeline::run_reverse(config, RunOptions { once: true }, CancellationToken::new())
        .await
        .expect("reverse run")
}

/// What the parents of the sample need, made on the desktop and sent to the cloud.
pub async fn parents(db: &TestDb, config: &Config) {
    desktop_app(db, "INSERT INTO orgmaster (org_id, org_name) VALUES (1, 'Org');
             INSERT INTO climaster (client_id, org_id, client_name) VALUES (1, 1, 'Asha Traders'), (2, 1, 'Bala & Co');
             INSERT INTO jobmaster (job_id, job_name) VALUES (1, 'GST return');
             INSERT INTO mbstaff (staff_id, org_id, staff_name) VALUES (1, 1, 'Ravi'), (2, 1, 'Mala');
             INSERT INTO taskmaster (task_id, task_name) VALUES (1, 'Collect'), (2, 'Prepare');
             INSERT INTO jobshead (job_id, client_id, job_name, job_status) VALUES (100, 1, 'Audit', 'Open');").await;
    forward_once(config).await;
}

pub async fn phone(db: &TestDb, sql: &str) {
    db.cloud().await.batch_execute(sql).await.unwrap();
}

/// The desktop application writes.
pub async fn desktop_app(db: &TestDb, sql: &str) {
    db.desktop().await.batch_execute(sql).await.unwrap();
}

#[tokio::test]
async fn mobile_inserts_updates_and_deletes_reach_the_desktop_for_every_table_kind_without_echo() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    phone(
        &db,
        "INSERT INTO reminder (rem_id, staff_id, client_id, rem_subject) VALUES (7, 1, 1, 'Call Asha');
         INSERT INTO jobshead (job_id, client_id, job_name, job_status) VALUES (200, 2, 'Mobile job', 'Open');
         INSERT INTO jobtasks (job_id, client_id, task_id, task_name) VALUES (100, 1, 1, 'Scan receipts'), (100, 1, 1, 'Scan receipts');
         INSERT INTO workdiary (staff_id, wd_date, job_id, hours, narration) VALUES (2, '2025-06-01', 100, 1.5, 'Site visit');",
    )
    .await;
    let stats = reverse_once(&config).await;
    assert_eq!(stats.outcome.dead_letters, 0, "{stats:?}");
    let desktop = db.desktop().await;
    assert_eq!(
        rows(
            &desktop,
            "mbreminder",
            "rem_id, staff_id, client_id, rem_subject",
            "true"
        )
        .await,
        vec!["(7,1,1,\"Call Asha\")"]
    );
    assert_eq!(
        rows(&desktop, "jobshead", "job_id, job_name", "job_id = 200").await,
        vec!["(200,\"Mobile job\")"]
    );
    assert_eq!(
        rows(&desktop, "jobtasks", "job_id, task_name", "true").await,
        vec!["(100,\"Scan receipts\")"; 2]
    );
    assert_eq!(
        rows(
            &desktop,
            "workdiary",
            "staff_id, wd_date, hours, narration",
            "true"
        )
        .await,
        vec!["(2,2025-06-01,1.50,\"Site visit\")"]
    );
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await,
        0,
        "tandem's writes were captured: echo"
    );

    phone(
        &db,
        "UPDATE reminder SET rem_subject = 'Call Asha again' WHERE rem_id = 7;
         UPDATE jobshead SET job_status = 'Completed' WHERE job_id = 200;
         UPDATE jobtasks SET task_name = 'Scan all receipts' WHERE jt_id = (SELECT min(jt_id) FROM jobtasks WHERE source = 'M');
         UPDATE workdiary SET hours = 2 WHERE source = 'M';",
    )
    .await;
    reverse_once(&config).await;
    assert_eq!(
        rows(&desktop, "mbreminder", "rem_subject", "true").await,
        vec!["(\"Call Asha again\")"]
    );
    assert_eq!(
        rows(&desktop, "jobshead", "job_status", "job_id = 200").await,
        vec!["(Completed)"]
    );
    assert_eq!(
        rows(&desktop, "jobtasks", "task_name", "true").await,
        vec!["(\"Scan all receipts\")", "(\"Scan receipts\")"]
    );
    assert_eq!(
        rows(&desktop, "workdiary", "hours", "true").await,
        vec!["(2.00)"]
    );

    // The desktop changes the same scopes: the forward scoped replace must not send the phone's rows
    // back as desktop-owned copies.
    desktop
        .batch_execute("INSERT INTO jobtasks (job_id, task_id, task_name) VALUES (100, 2, 'Prepare'); INSERT INTO workdiary (staff_id, wd_date, hours) VALUES (2, '2025-06-01', 3)")
        .await
        .unwrap();
    forward_once(&config).await;
    let cloud = db.cloud().await;
    assert_eq!(
        rows(&cloud, "jobtasks", "task_name, source", "true").await,
        vec![
            "(\"Scan all receipts\",M)",
            "(\"Scan receipts\",M)",
            "(Prepare,D)"
        ]
    );
    assert_eq!(
        rows(&cloud, "workdiary", "hours, source", "true").await,
        vec!["(2.00,M)", "(3.00,D)"]
    );
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM tandem.conflicts").await,
        0
    );

    phone(&db, "DELETE FROM reminder; DELETE FROM jobtasks WHERE source = 'M'; DELETE FROM workdiary WHERE source = 'M'; DELETE FROM jobshead WHERE job_id = 200").await;
    reverse_once(&config).await;
    assert_eq!(count(&desktop, "SELECT count(*) FROM mbreminder").await, 0);
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM jobshead WHERE job_id = 200").await,
        0
    );
    assert_eq!(
        rows(&desktop, "jobtasks", "task_name", "true").await,
        vec!["(Prepare)"]
    );
    assert_eq!(
        rows(&desktop, "workdiary", "hours", "true").await,
        vec!["(3.00)"]
    );
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await,
        0
    );
}

#[tokio::test]
async fn seeds_003_scenario_2_a_phone_marking_job_100_complete_is_not_reverted() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    // The mobile user marks job #100 complete.
    phone(&db, "UPDATE jobshead SET job_status = 'Completed', completed_date = '2025-11-01' WHERE job_id = 100").await;
    reverse_once(&config).await;
    let desktop = db.desktop().await;
    assert_eq!(
        rows(
            &desktop,
            "jobshead",
            "job_status, completed_date",
            "job_id = 100"
        )
        .await,
        vec!["(Completed,2025-11-01)"]
    );
    // The desktop then edits another column of job 100: the forward sync must not revert the phone's work.
    desktop
        .batch_execute("UPDATE jobshead SET remarks = 'Invoice sent' WHERE job_id = 100")
        .await
        .unwrap();
    forward_once(&config).await;
    let cloud = db.cloud().await;
    // An edit made after receiving the phone's: an ordinary edit, the desktop's now.
    assert_eq!(
        rows(
            &cloud,
            "jobshead",
            "job_status, remarks, source",
            "job_id = 100"
        )
        .await,
        vec!["(Completed,\"Invoice sent\",D)"]
    );
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM tandem.conflicts").await
            + count(&desktop, "SELECT count(*) FROM tandem.conflicts").await,
        0
    );
    // The phone's edit of a desktop-made task (no key on the desktop) replaces that task, not a copy.
    desktop.batch_execute("INSERT INTO jobtasks (job_id, task_id, task_name) VALUES (100, 1, 'Collect'), (100, 2, 'Prepare')").await.unwrap();
    forward_once(&config).await;
    phone(
        &db,
        "UPDATE jobtasks SET task_status = 'Done' WHERE task_id = 2",
    )
    .await;
    reverse_once(&config).await;
    assert_eq!(
        rows(&desktop, "jobtasks", "task_name, task_status", "true").await,
        vec!["(Collect,)", "(Prepare,Done)"]
    );
    forward_once(&config).await;
    assert_eq!(
        rows(&cloud, "jobtasks", "task_name, task_status, source", "true").await,
        vec!["(Collect,,D)", "(Prepare,Done,M)"]
    );
}

#[tokio::test]
async fn a_phone_deleting_a_desktop_row_deletes_it_on_the_desktop() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    db.desktop().await.batch_execute("INSERT INTO jobtasks (job_id, task_id, task_name) VALUES (100, 1, 'Collect'), (100, 2, 'Prepare')").await.unwrap();
    forward_once(&config).await;
    phone(
        &db,
        "DELETE FROM jobtasks WHERE task_id = 1; DELETE FROM learequest",
    )
    .await;
    reverse_once(&config).await;
    let desktop = db.desktop().await;
    assert_eq!(
        rows(&desktop, "jobtasks", "task_name", "true").await,
        vec!["(Prepare)"]
    );
    forward_once(&config).await;
    assert_eq!(
        rows(&db.cloud().await, "jobtasks", "task_name", "true").await,
        vec!["(Prepare)"]
    );
}

#[tokio::test]
async fn a_100_kb_text_survives_an_update_of_another_column() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    // Incompressible, so PostgreSQL stores it out of line (TOAST).
    phone(
        &db,
        "INSERT INTO jobshead (job_id, client_id, job_name, remarks)
         SELECT 300, 1, 'Big', string_agg(md5(g::text), '') FROM generate_series(1, 3200) g",
    )
    .await;
    reverse_once(&config).await;
    phone(
        &db,
        "UPDATE jobshead SET job_status = 'Billed' WHERE job_id = 300",
    )
    .await;
    reverse_once(&config).await;
    let desktop = db.desktop().await;
    let row = desktop
        .query_one(
            "SELECT job_status, length(remarks), md5(remarks) FROM jobshead WHERE job_id = 300",
            &[],
        )
        .await
        .unwrap();
    let expected: String = db
        .cloud()
        .await
        .query_one("SELECT md5(remarks) FROM jobshead WHERE job_id = 300", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(row.get::<_, String>(0), "Billed");
    assert_eq!(row.get::<_, i32>(1), 102_400);
    assert_eq!(row.get::<_, String>(2), expected);
}

#[tokio::test]
async fn a_key_collision_under_the_manual_policy_is_an_open_conflict_and_both_sides_keep_their_data()
 {
    let (db, mut config) = installed().await;
    for t in &mut config.tables {
        t.policy = tandem::config::Policy::Manual;
    }
    parents(&db, &config).await;
    // The desktop creates reminder 5; before it is sent, a phone creates reminder 5 too.
    desktop_app(
        &db,
        "INSERT INTO mbreminder (rem_id, rem_subject) VALUES (5, 'Desk')",
    )
    .await;
    phone(
        &db,
        "INSERT INTO reminder (rem_id, rem_subject) VALUES (5, 'Phone')",
    )
    .await;
    let stats = reverse_once(&config).await;
    // mbreminder's id has no unique constraint on the desktop: its rows are always staged, never
    // written straight in (see the next test for a table whose key is unique).
    assert_eq!(stats.replays, 0, "{stats:?}");
    let desktop = db.desktop().await;
    assert_eq!(
        rows(&desktop, "mbreminder", "rem_id, rem_subject", "true").await,
        vec!["(5,Desk)"]
    );
    let (kind, outcome, resolved): (String, Option<String>, bool) = desktop
        .query_one(
            "SELECT kind, outcome, resolved_at IS NOT NULL FROM tandem.conflicts",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(
        (kind.as_str(), outcome, resolved),
        ("insert/insert", None, false)
    );
    // The phone saving its row again unchanged: the same conflict, not logged twice while it is open.
    // Its next real edit brings that conflict up to date: one open record of the row, with the
    // phone's latest version (the one a person keeps or restores).
    let logged = "SELECT count(*) FROM tandem.conflicts";
    phone(
        &db,
        "UPDATE reminder SET rem_subject = rem_subject WHERE rem_id = 5",
    )
    .await;
    reverse_once(&config).await;
    assert_eq!(count(&desktop, logged).await, 1);
    phone(
        &db,
        "UPDATE reminder SET rem_subject = 'Phone, later' WHERE rem_id = 5",
    )
    .await;
    reverse_once(&config).await;
    assert_eq!(count(&desktop, logged).await, 1);
    let (kind, subject, open): (String, String, bool) = desktop
        .query_one(
            "SELECT kind, mobile_row ->> 'rem_subject', resolved_at IS NULL FROM tandem.conflicts",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(
        (kind.as_str(), subject.as_str(), open),
        ("insert/insert", "Phone, later", true)
    );
    assert_eq!(
        rows(&desktop, "mbreminder", "rem_id, rem_subject", "true").await,
        vec!["(5,Desk)"]
    );
    // The desktop's change waits for the person too: the cloud keeps the phone's row.
    forward_once(&config).await;
    let cloud = db.cloud().await;
    assert_eq!(
        rows(&cloud, "reminder", "rem_id, rem_subject, source", "true").await,
        vec!["(5,\"Phone, later\",M)"]
    );
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM tandem.conflicts").await,
        0
    );
}

#[tokio::test]
async fn rows_the_desktop_refuses_are_dead_letters() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    desktop_app(
        &db,
        "ALTER TABLE learequest ALTER leave_type TYPE varchar(2)",
    )
    .await;
    phone(&db, "INSERT INTO learequest (lea_id, staff_id, leave_type) VALUES (1, 1, 'Sick leave'), (2, 1, 'CL')").await;
    let stats = reverse_once(&config).await;
    assert_eq!(stats.outcome.dead_letters, 1, "{stats:?}");
    assert_eq!(stats.replays, 1, "{stats:?}");
    let desktop = db.desktop().await;
    assert_eq!(
        rows(&desktop, "learequest", "lea_id", "true").await,
        vec!["(2)"]
    );
    assert_eq!(
        rows(
            &desktop,
            "tandem.dead_letters",
            "direction, table_name, row_key, sqlstate",
            "true"
        )
        .await,
        vec![r#"(reverse,learequest,"{""lea_id"": 1}",22001)"#]
    );
}

#[tokio::test]
async fn a_refused_direct_write_brings_the_group_again_staged_with_nothing_lost_or_doubled() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    // learequest's key is the desktop's primary key: new rows go straight into the desktop table.
    desktop_app(
        &db,
        "INSERT INTO learequest (lea_id, staff_id, leave_type, reason) VALUES (5, 1, 'CL', 'Desk')",
    )
    .await;
    // One transaction with new rows of a parent and its child around a key the desktop already holds,
    // then two more transactions: all arrive in one group.
    phone(
        &db,
        "BEGIN;
         INSERT INTO learequest (lea_id, staff_id, leave_type, reason) SELECT g, 1, 'CL', 'Phone ' || g FROM generate_series(1, 4) g;
         INSERT INTO jobshead (job_id, client_id, job_name, job_status) VALUES (300, 2, 'Phone job', 'Open');
         INSERT INTO jobtasks (job_id, client_id, task_id, task_name) VALUES (300, 2, 1, 'Phone task');
         INSERT INTO learequest (lea_id, staff_id, leave_type, reason) VALUES (5, 2, 'SL', 'Phone');
         INSERT INTO learequest (lea_id, staff_id, leave_type, reason) SELECT g, 1, 'CL', 'Phone ' || g FROM generate_series(6, 8) g;
         COMMIT;
         INSERT INTO learequest (lea_id, staff_id, leave_type, reason) VALUES (9, 1, 'CL', 'Phone 9');
         INSERT INTO jobtasks (job_id, client_id, task_id, task_name) VALUES (300, 2, 2, 'Second task');",
    )
    .await;
    let stats = reverse_once(&config).await;
    // The desktop refused the direct write of request 5; the group came again, staged.
    assert_eq!(stats.replays, 1, "{stats:?}");
    assert_eq!(stats.outcome.conflicts, 1, "{stats:?}");
    let desktop = db.desktop().await;
    // Request 5 was made on both sides without either seeing the other: settled by `latest`, the
    // phone's (written last) wins; the desktop's is kept in the conflict.
    let mut expected: Vec<String> = (1..=9)
        .map(|i| match i {
            5 => "(5,2,Phone)".to_string(),
            _ => format!("({i},1,\"Phone {i}\")"),
        })
        .collect();
    expected.sort();
    assert_eq!(
        rows(&desktop, "learequest", "lea_id, staff_id, reason", "true").await,
        expected
    );
    assert_eq!(
        rows(&desktop, "jobtasks", "job_id, task_name", "job_id = 300").await,
        vec!["(300,\"Phone task\")", "(300,\"Second task\")"]
    );
    let (kind, outcome, desk): (String, String, String) = desktop
        .query_one(
            "SELECT kind, outcome, desktop_row->>'reason' FROM tandem.conflicts",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(
        (kind.as_str(), outcome.as_str(), desk.as_str()),
        ("insert/insert", "mobile", "Desk")
    );
    // Only the desktop's own request 5 waits to go to the cloud: nothing tandem wrote echoes.
    assert_eq!(
        rows(&desktop, "tandem.outbox", "table_name, op, row_key", "true").await,
        vec![r#"(learequest,I,{5})"#]
    );

    // The next group goes straight in again.
    phone(
        &db,
        "INSERT INTO learequest (lea_id, staff_id, leave_type, reason) VALUES (10, 1, 'CL', 'Phone 10')",
    )
    .await;
    let stats = reverse_once(&config).await;
    assert_eq!((stats.replays, stats.outcome.written), (0, 1), "{stats:?}");
    assert_eq!(
        count(
            &desktop,
            "SELECT count(*) FROM learequest WHERE lea_id = 10"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn seeds_004_all_24562_mobile_jobs_arrive_whatever_their_age() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    // No 10k LIMIT, no 7-day window: rows dated years ago arrive too.
    phone(
        &db,
        "INSERT INTO jobshead (job_id, client_id, job_name, created_at, updated_at)
         SELECT 1000 + g, 1 + g % 2, 'Job ' || g, '2019-04-01', '2019-04-01' FROM generate_series(1, 24562) g",
    )
    .await;
    reverse_once(&config).await;
    assert_eq!(
        count(
            &db.desktop().await,
            "SELECT count(*) FROM jobshead WHERE job_id > 1000"
        )
        .await,
        24_562
    );
}

#[tokio::test]
async fn a_million_row_transaction_arrives_whole() {
    let (db, config) = installed().await;
    parents(&db, &config).await;
    phone(
        &db,
        "INSERT INTO learequest (lea_id, staff_id, from_date, leave_type, reason)
         SELECT g, 1 + g % 2, date '2025-01-01' + g % 365, 'CL', 'Reason ' || g FROM generate_series(1, 1000000) g",
    )
    .await;
    let stats = reverse_once(&config).await;
    assert_eq!(stats.outcome.written, 1_000_000, "{stats:?}");
    assert_eq!(stats.replays, 0, "{stats:?}");
    let desktop = db.desktop().await;
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM learequest").await,
        1_000_000
    );
    assert_eq!(
        count(&desktop, "SELECT count(DISTINCT lea_id) FROM learequest").await,
        1_000_000
    );
}

#[tokio::test]
async fn the_slot_moves_on_while_only_tables_outside_the_publication_are_written() {
    let (db, config) = installed().await;
    let cloud = db.cloud().await;
    cloud
        .batch_execute("CREATE TABLE busy (id serial PRIMARY KEY, v text)")
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let worker = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        tokio::spawn(async move {
            pipeline::run_reverse(&config, RunOptions { once: false }, shutdown).await
        })
    };
    cloud
        .batch_execute(
            "INSERT INTO busy (v) SELECT repeat('x', 100) FROM generate_series(1, 20000)",
        )
        .await
        .unwrap();
    let target: String = cloud
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let slot = db.name.clone();
    let moved = tandem::cluster::wait_until(std::time::Duration::from_secs(30), || async {
        cloud
            .query_one("SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2", &[&target, &slot])
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    })
    .await;
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    assert!(moved, "the slot's confirmed position did not pass {target}");
}

#[tokio::test]
async fn the_clouds_fast_shutdown_is_not_blocked_by_a_connected_worker() {
    // A cloud of its own: this test stops it.
    let mut cluster = tokio::task::spawn_blocking(|| {
        tandem::cluster::LocalCluster::start(
            "cloud-stop",
            &tandem::cluster::ClusterOptions::default(),
        )
        .unwrap()
    })
    .await
    .unwrap();
    let db = TestDb::new().await;
    let admin = crate::support::connect(&cluster.url("postgres")).await;
    admin.batch_execute("CREATE DATABASE stop").await.unwrap();
    drop(admin);
    let cloud_url = cluster.url("stop");
    let cloud = crate::support::connect(&cloud_url).await;
    tandem::sample::create_schemas(&db.desktop().await, &cloud)
        .await
        .unwrap();
    let config = db.sample_config_at(&db.desktop_url, &cloud_url);
    tandem::setup::init(&config, false).await.unwrap();
    let shutdown = CancellationToken::new();
    let worker = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        tokio::spawn(async move {
            pipeline::run_reverse(&config, RunOptions { once: false }, shutdown).await
        })
    };
    // Something to stream, and the worker connected.
    cloud
        .batch_execute("INSERT INTO mbstaff (staff_id, staff_name) VALUES (1, 'Ravi')")
        .await
        .unwrap();
    let desktop = db.desktop().await;
    let arrived = tandem::cluster::wait_until(std::time::Duration::from_secs(30), || async {
        count(&desktop, "SELECT count(*) FROM mbstaff").await == 1
    })
    .await;
    assert!(arrived);
    drop(cloud);
    let started = std::time::Instant::now();
    let (stopped, cluster) = tokio::task::spawn_blocking(move || {
        let result = cluster.stop();
        (result, cluster)
    })
    .await
    .unwrap();
    stopped.expect("pg_ctl stop -m fast");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "fast shutdown took {:?}",
        started.elapsed()
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
