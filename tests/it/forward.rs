//! Forward streaming: desktop changes reach the cloud, and mobile data is never lost. Tests are named
//! after the seeds' bugs they guard against.

use tandem::config::Config;
use tandem::pipeline::{self, RunOptions, RunStats};
use tandem::{sample, setup};
use tokio_util::sync::CancellationToken;

use crate::support::{TestDb, count, rows};

/// Applies everything pending, like `tandem run --once`.
pub async fn forward_once(config: &Config) -> RunStats {
    pipeline::run_forward(config, RunOptions { once: true }, CancellationToken::new())
        .await
        .expect("forward run")
}

/// Sample schema, tandem installed, the (empty) tables synced as the first run syncs them.
pub async fn installed() -> (TestDb, Config) {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    setup::init(&config, false).await.unwrap();
    crate::support::synced(&config).await;
    (db, config)
}

#[tokio::test]
async fn seeds_000_orphan_clients_are_dead_letters_and_the_other_726_arrive() {
    let (db, config) = installed().await;
    let report = sample::seed(&mut db.desktop().await, &config, 1.0)
        .await
        .unwrap();
    assert_eq!(report.total(), 92_387);
    let started = std::time::Instant::now();
    let stats = forward_once(&config).await;
    eprintln!("forward of 92,387 rows: {:?}, {stats:?}", started.elapsed());
    let cloud = db.cloud().await;
    assert_eq!(count(&cloud, "SELECT count(*) FROM climaster").await, 726);
    assert_eq!(count(&cloud, "SELECT count(*) FROM jobshead").await, 24_562);
    assert_eq!(count(&cloud, "SELECT count(*) FROM jobtasks").await, 64_542);
    assert_eq!(
        count(
            &cloud,
            "SELECT count(*) FROM jobtasks WHERE client_id IS NULL"
        )
        .await,
        0
    );
    let letters = cloud
        .query("SELECT table_name, row_key->>'client_id', sqlstate, message FROM tandem.dead_letters ORDER BY 2", &[])
        .await
        .unwrap();
    assert_eq!(letters.len(), 3, "{letters:?}");
    for l in &letters {
        assert_eq!(l.get::<_, String>(0), "climaster");
        assert_eq!(l.get::<_, String>(2), "23503");
        assert!(
            l.get::<_, String>(3).contains("orgmaster"),
            "{}",
            l.get::<_, String>(3)
        );
    }
    assert_eq!(
        count(&db.desktop().await, "SELECT count(*) FROM tandem.outbox").await,
        0
    );
}

/// The desktop columns of jobshead that travel (job_uid and sporg_id are desktop-only).
const JOBSHEAD: &str = "job_id, client_id, org_id, loc_id, jobm_id, job_name, job_status, job_date, target_date, completed_date, fee_amount, remarks";
const JOBTASKS: &str = "job_id, task_id, staff_id, task_name, task_status, start_date, end_date, est_hours, actual_hours";

/// A small, valid slice of the sample: 1 org, 1 loc, clients 1-2, job master 1, staff 1, tasks 1-3.
async fn parents(db: &TestDb) {
    db.desktop()
        .await
        .batch_execute(
            "INSERT INTO orgmaster (org_id, org_name) VALUES (1, 'Org');
             INSERT INTO locmaster (loc_id, org_id, loc_name) VALUES (1, 1, 'Loc');
             INSERT INTO climaster (client_id, org_id, loc_id, client_name) VALUES (1, 1, 1, 'Asha Traders'), (2, 1, 1, 'Bala & Co');
             INSERT INTO jobmaster (job_id, job_name) VALUES (1, 'GST return');
             INSERT INTO mbstaff (staff_id, org_id, staff_name) VALUES (1, 1, 'Ravi');
             INSERT INTO taskmaster (task_id, task_name) VALUES (1, 'Collect'), (2, 'Prepare'), (3, 'File');",
        )
        .await
        .unwrap();
}

/// A phone's write in the cloud (the ownership trigger makes it mobile-owned).
async fn phone(db: &TestDb, sql: &str) {
    db.cloud().await.batch_execute(sql).await.unwrap();
}

#[tokio::test]
async fn seeds_001_scenario_3_a_mobile_row_survives_forward_sync_of_its_table() {
    let (db, config) = installed().await;
    parents(&db).await;
    forward_once(&config).await;
    phone(&db, "INSERT INTO jobshead (job_id, client_id, org_id, loc_id, job_name, job_status) VALUES (99999, 1, 1, 1, 'Mobile job', 'Open')").await;
    let cloud = db.cloud().await;
    let before = rows(
        &cloud,
        "jobshead",
        "job_id, job_name, source, created_at, updated_at",
        "job_id = 99999",
    )
    .await;
    db.desktop()
        .await
        .batch_execute("INSERT INTO jobshead (job_id, client_id, org_id, loc_id, job_name) SELECT g, 1, 1, 1, 'Job ' || g FROM generate_series(1, 50) g")
        .await
        .unwrap();
    forward_once(&config).await;
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM jobshead WHERE source = 'D'").await,
        50
    );
    assert_eq!(
        rows(
            &cloud,
            "jobshead",
            "job_id, job_name, source, created_at, updated_at",
            "job_id = 99999"
        )
        .await,
        before
    );
}

#[tokio::test]
async fn seeds_001_scenario_4_a_desktop_change_never_overwrites_a_mobile_row() {
    let (db, config) = installed().await;
    parents(&db).await;
    forward_once(&config).await;
    phone(&db, "INSERT INTO jobshead (job_id, client_id, job_name, job_status) VALUES (99999, 1, 'Mobile job', 'Active')").await;
    let cloud = db.cloud().await;
    let before = rows(
        &cloud,
        "jobshead",
        "job_id, job_name, job_status, source, updated_at",
        "job_id = 99999",
    )
    .await;
    // The desktop later writes a different row under the same key, not having received the phone's.
    db.desktop()
        .await
        .batch_execute("INSERT INTO jobshead (job_id, client_id, job_name, job_status) VALUES (99999, 1, 'Mobile job', 'Completed')")
        .await
        .unwrap();
    // The forward direction alone never overwrites it: the desktop's change waits for the phone's to
    // reach the desktop (held in the outbox), however often it runs.
    for _ in 0..2 {
        forward_once(&config).await;
        assert_eq!(
            rows(
                &cloud,
                "jobshead",
                "job_id, job_name, job_status, source, updated_at",
                "job_id = 99999"
            )
            .await,
            before
        );
    }
    let desktop = db.desktop().await;
    assert_eq!(
        count(
            &desktop,
            "SELECT count(*) FROM tandem.outbox WHERE row_key = '{99999}' AND wait_for IS NOT NULL"
        )
        .await,
        1
    );
    // Once it has, the two rows made without seeing each other are a conflict, settled by the
    // table's policy (`latest`: the desktop wrote last) and recorded with both versions.
    crate::causal::run_once(&config).await;
    crate::causal::run_once(&config).await;
    for client in [&desktop, &cloud] {
        assert_eq!(
            rows(client, "jobshead", "job_status", "job_id = 99999").await,
            vec!["(Completed)"]
        );
    }
    let conflict = desktop
        .query_one(
            "SELECT kind, outcome, mobile_row->>'job_status', desktop_row->>'job_status' FROM tandem.conflicts",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(conflict.get::<_, String>(0), "insert/insert");
    assert_eq!(conflict.get::<_, String>(1), "desktop");
    assert_eq!(conflict.get::<_, String>(2), "Active");
    assert_eq!(conflict.get::<_, String>(3), "Completed");
}

#[tokio::test]
async fn the_desktop_resaving_a_row_it_received_from_mobile_is_not_a_conflict() {
    let (db, config) = installed().await;
    parents(&db).await;
    forward_once(&config).await;
    phone(
        &db,
        "INSERT INTO reminder (rem_id, staff_id, rem_subject) VALUES (7, 1, 'Call Asha')",
    )
    .await;
    // The same row arrives on the desktop (as the reverse direction will put it) and is saved again.
    db.desktop()
        .await
        .batch_execute("INSERT INTO mbreminder (rem_id, staff_id, rem_subject) VALUES (7, 1, 'Call Asha'); UPDATE mbreminder SET rem_subject = rem_subject")
        .await
        .unwrap();
    forward_once(&config).await;
    let cloud = db.cloud().await;
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM tandem.conflicts").await,
        0
    );
    assert_eq!(
        rows(&cloud, "reminder", "rem_id, rem_subject, source", "true").await,
        vec!["(7,\"Call Asha\",M)"]
    );
}

#[tokio::test]
async fn seeds_003_truncate_on_the_desktop_never_deletes_mobile_data() {
    let (db, config) = installed().await;
    parents(&db).await;
    let desktop = db.desktop().await;
    desktop
        .batch_execute(
            "INSERT INTO jobshead (job_id, client_id, job_name) SELECT g, 1, 'Job ' || g FROM generate_series(1, 20) g;
             INSERT INTO jobtasks (job_id, task_id, task_name) SELECT g, 1, 'Collect' FROM generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    forward_once(&config).await;
    phone(
        &db,
        "INSERT INTO jobshead (job_id, client_id, job_name) VALUES (99999, 1, 'Mobile job');
         INSERT INTO jobtasks (job_id, task_id, task_name) VALUES (99999, 2, 'Mobile task'), (5, 2, 'Mobile task on a desktop job');",
    )
    .await;
    let cloud = db.cloud().await;
    let mobile = "source = 'M'";
    let mobile_jobs = rows(&cloud, "jobshead", JOBSHEAD, mobile).await;
    let mobile_tasks = rows(
        &cloud,
        "jobtasks",
        "jt_id, job_id, task_name, updated_at",
        mobile,
    )
    .await;
    // The desktop truncates without having received the phones' rows.
    desktop.batch_execute("TRUNCATE jobtasks").await.unwrap();
    let stats = forward_once(&config).await;
    assert_eq!(stats.outcome.dead_letters, 0);
    // Every desktop task goes but job 5's: that scope holds a phone's task the desktop has not
    // received, so its change waits until it has.
    assert_eq!(
        rows(&cloud, "jobtasks", "job_id, task_name", "source = 'D'").await,
        vec!["(5,Collect)"]
    );
    assert_eq!(
        rows(
            &cloud,
            "jobtasks",
            "jt_id, job_id, task_name, updated_at",
            mobile
        )
        .await,
        mobile_tasks
    );
    // The seeds' bug: TRUNCATE jobshead on every sync. Job 5 keeps its tasks: its delete is refused
    // by the cloud's foreign key and kept as a dead letter; every other desktop job goes; mobile jobs stay.
    desktop.batch_execute("TRUNCATE jobshead").await.unwrap();
    let stats = forward_once(&config).await;
    assert_eq!(stats.outcome.dead_letters, 1);
    assert_eq!(
        rows(&cloud, "jobshead", "job_id::text", "source = 'D'").await,
        vec!["(5)"]
    );
    assert_eq!(
        rows(&cloud, "jobshead", JOBSHEAD, mobile).await,
        mobile_jobs
    );
    assert_eq!(
        rows(
            &cloud,
            "jobtasks",
            "jt_id, job_id, task_name, updated_at",
            mobile
        )
        .await,
        mobile_tasks
    );
    let letter = cloud
        .query_one(
            "SELECT row_key::text, sqlstate FROM tandem.dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (letter.get::<_, String>(0), letter.get::<_, String>(1)),
        (r#"{"job_id": 5}"#.to_string(), "23503".to_string())
    );
}

#[tokio::test]
async fn desktop_inserts_updates_and_deletes_propagate_for_every_table_kind() {
    let (db, config) = installed().await;
    parents(&db).await;
    let desktop = db.desktop().await;
    let cloud = db.cloud().await;
    desktop
        .batch_execute(
            "INSERT INTO jobshead (job_id, client_id, job_name, job_uid, sporg_id) VALUES (1, 1, 'Audit', 'uid-1', 9), (2, 2, 'ITR', 'uid-2', 9);
             INSERT INTO jobtasks (job_id, task_id, task_name, jt_uid) VALUES (1, 1, 'Collect', 'a'), (1, 2, 'Prepare', 'b'), (2, 3, 'File', 'c');
             INSERT INTO workdiary (staff_id, wd_date, job_id, hours, narration) VALUES (1, '2025-04-01', 1, 2.5, 'Ledger'), (1, '2025-04-01', 2, 1, 'Call');
             INSERT INTO mbreminder (rem_id, staff_id, client_id, rem_subject) VALUES (1, 1, 1, 'Follow up');",
        )
        .await
        .unwrap();
    forward_once(&config).await;
    let same = |table: &'static str, cols: &'static str| {
        let (desktop, cloud) = (&desktop, &cloud);
        async move {
            let cloud_table = if table == "mbreminder" {
                "reminder"
            } else {
                table
            };
            assert_eq!(
                rows(desktop, table, cols, "true").await,
                rows(cloud, cloud_table, cols, "source = 'D'").await,
                "{table} differs"
            );
        }
    };
    same("jobshead", JOBSHEAD).await;
    same("jobtasks", JOBTASKS).await;
    same("workdiary", "staff_id, wd_date, job_id, hours, narration").await;
    same("mbreminder", "rem_id, staff_id, client_id, rem_subject").await;
    // Desktop-only columns never arrive; lookups fill client_id.
    assert_eq!(
        rows(&cloud, "jobtasks", "job_id, client_id", "true").await,
        vec!["(1,1)", "(1,1)", "(2,2)"]
    );

    desktop
        .batch_execute(
            "UPDATE jobshead SET job_status = 'Completed', fee_amount = 1500.50 WHERE job_id = 1;
             UPDATE jobtasks SET task_status = 'Done' WHERE job_id = 1 AND task_id = 2;
             DELETE FROM workdiary WHERE job_id = 2;
             UPDATE mbreminder SET rem_id = 2, rem_subject = 'Moved';
             DELETE FROM jobtasks WHERE job_id = 2; DELETE FROM jobshead WHERE job_id = 2;",
        )
        .await
        .unwrap();
    forward_once(&config).await;
    same("jobshead", JOBSHEAD).await;
    same("jobtasks", JOBTASKS).await;
    same("workdiary", "staff_id, wd_date, job_id, hours, narration").await;
    same("mbreminder", "rem_id, staff_id, client_id, rem_subject").await;
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await,
        0
    );
}

#[tokio::test]
async fn a_desktop_delete_never_deletes_a_mobile_row_it_had_not_received() {
    let (db, config) = installed().await;
    parents(&db).await;
    db.desktop()
        .await
        .batch_execute("INSERT INTO learequest (lea_id, staff_id, reason) VALUES (1, 1, 'Fever')")
        .await
        .unwrap();
    forward_once(&config).await;
    // The phone edits the row; the desktop, not having received that, deletes it.
    phone(
        &db,
        "UPDATE learequest SET lea_status = 'Approved' WHERE lea_id = 1",
    )
    .await;
    db.desktop()
        .await
        .batch_execute("DELETE FROM learequest")
        .await
        .unwrap();
    forward_once(&config).await;
    let cloud = db.cloud().await;
    assert_eq!(
        rows(
            &cloud,
            "learequest",
            "lea_id, reason, lea_status, source",
            "true"
        )
        .await,
        vec!["(1,Fever,Approved,M)"]
    );
    // Once the desktop hears of the edit: a delete against an edit, settled by `latest` keeping the
    // edit (nothing a person typed is lost): the row is back on the desktop as the phone has it.
    crate::causal::run_once(&config).await;
    crate::causal::run_once(&config).await;
    let desktop = db.desktop().await;
    assert_eq!(
        rows(&desktop, "learequest", "lea_id, reason, lea_status", "true").await,
        vec!["(1,Fever,Approved)"]
    );
    assert_eq!(
        rows(
            &cloud,
            "learequest",
            "lea_id, reason, lea_status, source",
            "true"
        )
        .await,
        vec!["(1,Fever,Approved,M)"]
    );
    let (kind, outcome): (String, String) = desktop
        .query_one("SELECT kind, outcome FROM tandem.conflicts", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        (kind.as_str(), outcome.as_str()),
        ("delete/update", "mobile")
    );
}

#[tokio::test]
async fn seeds_000_incremental_would_cause_data_loss_editing_one_task_changes_one_cloud_row() {
    let (db, config) = installed().await;
    parents(&db).await;
    let desktop = db.desktop().await;
    desktop
        .batch_execute(
            "INSERT INTO jobshead (job_id, client_id, job_name) VALUES (1, 1, 'Audit');
             INSERT INTO jobtasks (job_id, task_id, task_name) VALUES (1, 1, 'Collect'), (1, 2, 'Prepare'), (1, 2, 'Prepare'), (1, 3, 'File');",
        )
        .await
        .unwrap();
    forward_once(&config).await;
    phone(
        &db,
        "INSERT INTO jobtasks (job_id, client_id, task_id, task_name) VALUES (1, 1, 3, 'Photo of the receipt')",
    )
    .await;
    // The desktop receives the phone's task before it edits one of its own.
    crate::reverse::reverse_once(&config).await;
    let cloud = db.cloud().await;
    let before = rows(
        &cloud,
        "jobtasks",
        "jt_id, task_id, task_name, source, created_at, updated_at",
        "true",
    )
    .await;
    assert_eq!(before.len(), 5);
    desktop
        .batch_execute("UPDATE jobtasks SET task_name = 'File return' WHERE task_name = 'File'")
        .await
        .unwrap();
    forward_once(&config).await;
    let after = rows(
        &cloud,
        "jobtasks",
        "jt_id, task_id, task_name, source, created_at, updated_at",
        "true",
    )
    .await;
    let kept: Vec<&String> = after.iter().filter(|r| before.contains(r)).collect();
    assert_eq!(after.len(), 5, "{after:#?}");
    assert_eq!(
        kept.len(),
        4,
        "exactly one cloud row may change: {after:#?}"
    );
    // In place: the edited task keeps its cloud key.
    let file = |rows: &[String]| -> Vec<String> {
        rows.iter()
            .filter(|r| r.contains("File"))
            .map(|r| r.split(',').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(file(&after), file(&before), "{after:#?}");
    assert!(
        after.iter().any(|r| r.contains("File return")),
        "{after:#?}"
    );
    assert!(
        after
            .iter()
            .any(|r| r.contains("Photo of the receipt") && r.contains(",M,")),
        "{after:#?}"
    );
    // An identical duplicate still counts twice.
    assert_eq!(
        count(
            &cloud,
            "SELECT count(*) FROM jobtasks WHERE task_name = 'Prepare'"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn created_at_is_set_once_and_a_no_op_update_writes_nothing() {
    let (db, config) = installed().await;
    parents(&db).await;
    let desktop = db.desktop().await;
    desktop
        .batch_execute(
            "INSERT INTO jobshead (job_id, client_id, job_name) VALUES (1, 1, 'Audit');
             INSERT INTO jobtasks (job_id, task_id, task_name) VALUES (1, 1, 'Collect'), (1, 2, 'Prepare');",
        )
        .await
        .unwrap();
    forward_once(&config).await;
    let cloud = db.cloud().await;
    let versions = "xmin::text, created_at, updated_at";
    let job = rows(&cloud, "jobshead", versions, "true").await;
    let tasks = rows(&cloud, "jobtasks", &format!("jt_id, {versions}"), "true").await;
    // Every row touched, nothing changed: nothing is written in the cloud.
    desktop
        .batch_execute("UPDATE jobshead SET job_name = job_name; UPDATE jobtasks SET task_name = task_name; UPDATE climaster SET client_name = client_name")
        .await
        .unwrap();
    let stats = forward_once(&config).await;
    assert_eq!((stats.outcome.written, stats.outcome.deleted), (0, 0));
    assert_eq!(rows(&cloud, "jobshead", versions, "true").await, job);
    assert_eq!(
        rows(&cloud, "jobtasks", &format!("jt_id, {versions}"), "true").await,
        tasks
    );
    // A real change: updated_at moves, created_at does not.
    desktop
        .batch_execute("UPDATE jobshead SET job_status = 'Open'")
        .await
        .unwrap();
    forward_once(&config).await;
    let row = cloud
        .query_one(
            "SELECT created_at = $1::text::timestamptz, updated_at > created_at FROM jobshead",
            &[&job[0].split(',').nth(1).unwrap().trim_matches('"')],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "created_at changed");
    assert!(row.get::<_, bool>(1), "updated_at did not move");
}

#[tokio::test]
async fn derived_client_id_follows_a_jobshead_client_change() {
    let (db, config) = installed().await;
    parents(&db).await;
    let desktop = db.desktop().await;
    desktop
        .batch_execute(
            "INSERT INTO jobshead (job_id, client_id, job_name) VALUES (1, 1, 'Audit'), (2, 1, 'ITR');
             INSERT INTO jobtasks (job_id, task_id, task_name) VALUES (1, 1, 'Collect'), (1, 2, 'Prepare'), (2, 1, 'Collect');",
        )
        .await
        .unwrap();
    forward_once(&config).await;
    let cloud = db.cloud().await;
    let ids = rows(&cloud, "jobtasks", "jt_id", "job_id = 1").await;
    desktop
        .batch_execute("UPDATE jobshead SET client_id = 2 WHERE job_id = 1")
        .await
        .unwrap();
    forward_once(&config).await;
    assert_eq!(
        rows(&cloud, "jobtasks", "job_id, client_id", "true").await,
        vec!["(1,2)", "(1,2)", "(2,1)"]
    );
    assert_eq!(
        rows(&cloud, "jobtasks", "jt_id", "job_id = 1").await,
        ids,
        "the tasks keep their jt_id"
    );
}

#[tokio::test]
async fn rows_the_cloud_refuses_are_dead_letters_and_the_rest_commits() {
    let (db, config) = installed().await;
    parents(&db).await;
    forward_once(&config).await;
    // The cloud is stricter than the desktop: a shorter column, a check, a NOT NULL.
    db.cloud()
        .await
        .batch_execute(
            "ALTER TABLE conmaster ALTER con_designation TYPE varchar(5);
             ALTER TABLE jobshead ADD CHECK (fee_amount >= 0);
             ALTER TABLE learequest ALTER reason SET NOT NULL;",
        )
        .await
        .unwrap();
    db.desktop()
        .await
        .batch_execute(
            "INSERT INTO conmaster (con_id, org_id, con_name, con_designation) VALUES (1, 1, 'A', 'Partner and founder'), (2, 1, 'B', 'CA');
             INSERT INTO jobshead (job_id, client_id, job_name, fee_amount) VALUES (1, 1, 'Audit', -5), (2, 1, 'ITR', 500);
             INSERT INTO learequest (lea_id, staff_id, reason) VALUES (1, 1, NULL), (2, 1, 'Fever');",
        )
        .await
        .unwrap();
    let stats = forward_once(&config).await;
    assert_eq!(stats.outcome.dead_letters, 3);
    let cloud = db.cloud().await;
    let letters = rows(
        &cloud,
        "tandem.dead_letters",
        "table_name, row_key, sqlstate",
        "true",
    )
    .await;
    assert_eq!(
        letters,
        vec![
            r#"(conmaster,"{""con_id"": 1}",22001)"#,
            r#"(jobshead,"{""job_id"": 1}",23514)"#,
            r#"(learequest,"{""lea_id"": 1}",23502)"#,
        ]
    );
    assert_eq!(
        rows(&cloud, "conmaster", "con_id", "true").await,
        vec!["(2)"]
    );
    assert_eq!(
        rows(&cloud, "jobshead", "job_id", "true").await,
        vec!["(2)"]
    );
    assert_eq!(
        rows(&cloud, "learequest", "lea_id", "true").await,
        vec!["(2)"]
    );
    let image: String = cloud
        .query_one("SELECT row_image->>'con_designation' FROM tandem.dead_letters WHERE table_name = 'conmaster'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(image, "Partner and founder");
    // Nothing is lost: the outbox is empty, and the rows are in the dead letters.
    assert_eq!(
        count(&db.desktop().await, "SELECT count(*) FROM tandem.outbox").await,
        0
    );
}

#[tokio::test]
async fn a_desktop_key_held_twice_is_a_dead_letter_not_a_silent_pick() {
    let (db, config) = installed().await;
    parents(&db).await;
    // mbreminder has no unique constraint on the desktop.
    db.desktop()
        .await
        .batch_execute("INSERT INTO mbreminder (rem_id, rem_subject) VALUES (1, 'one'), (1, 'other'), (2, 'fine')")
        .await
        .unwrap();
    let stats = forward_once(&config).await;
    assert_eq!(stats.outcome.dead_letters, 1);
    let cloud = db.cloud().await;
    assert_eq!(
        rows(&cloud, "reminder", "rem_id, rem_subject", "true").await,
        vec!["(2,fine)"]
    );
    assert_eq!(
        rows(&cloud, "tandem.dead_letters", "row_key, sqlstate", "true").await,
        vec![r#"("{""rem_id"": 1}",21000)"#]
    );
    let message: String = cloud
        .query_one("SELECT message FROM tandem.dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        message.contains("the desktop holds 2 rows with this key"),
        "{message}"
    );
    // Once the desktop is fixed, the key applies and its dead letter is resolved.
    db.desktop()
        .await
        .batch_execute("DELETE FROM mbreminder WHERE rem_subject = 'other'")
        .await
        .unwrap();
    forward_once(&config).await;
    assert_eq!(
        rows(&cloud, "reminder", "rem_id, rem_subject", "true").await,
        vec!["(1,one)", "(2,fine)"]
    );
    assert_eq!(
        count(
            &cloud,
            "SELECT count(*) FROM tandem.dead_letters WHERE resolved_at IS NULL"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_transaction_that_took_a_lower_outbox_id_and_commits_last_is_not_skipped() {
    let (db, config) = installed().await;
    parents(&db).await;
    forward_once(&config).await;
    let mut slow = db.desktop().await;
    let fast = db.desktop().await;
    let slow_tx = slow.transaction().await.unwrap();
    slow_tx
        .batch_execute("INSERT INTO jobmaster (job_id, job_name) VALUES (10, 'slow')")
        .await
        .unwrap();
    fast.batch_execute("INSERT INTO jobmaster (job_id, job_name) VALUES (11, 'fast')")
        .await
        .unwrap();
    let fast_ids = outbox_ids(&fast).await;
    assert_eq!(
        fast_ids.len(),
        1,
        "only the committed change is visible: {fast_ids:?}"
    );
    forward_once(&config).await;
    let cloud = db.cloud().await;
    assert_eq!(
        rows(&cloud, "jobmaster", "job_id", "true").await,
        vec!["(1)", "(11)"]
    );
    slow_tx.commit().await.unwrap();
    let slow_ids = outbox_ids(&fast).await;
    assert_eq!(slow_ids.len(), 1, "{slow_ids:?}");
    assert!(
        slow_ids[0] < fast_ids[0],
        "the slow transaction took the lower id: {slow_ids:?} vs {fast_ids:?}"
    );
    forward_once(&config).await;
    assert_eq!(
        rows(&cloud, "jobmaster", "job_id", "true").await,
        vec!["(1)", "(10)", "(11)"]
    );
}

#[tokio::test]
async fn the_worker_wakes_on_notify_survives_lost_connections_and_stops_gracefully() {
    let (db, config) = installed().await;
    parents(&db).await;
    let shutdown = CancellationToken::new();
    let worker = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        tokio::spawn(async move {
            pipeline::run_forward(&config, RunOptions { once: false }, shutdown).await
        })
    };
    let desktop = db.desktop().await;
    let cloud = db.cloud().await;
    let arrived = |sql: &'static str| {
        let cloud = &cloud;
        move || async move {
            cloud
                .query_one(sql, &[])
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
        }
    };
    eventually(
        "the parents arrive",
        arrived("SELECT count(*) = 2 FROM climaster"),
    )
    .await;
    // Kill every connection tandem has, on both sides: it must reconnect by itself.
    for client in [&desktop, &cloud] {
        client
            .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tandem'")
            .await
            .unwrap();
    }
    desktop
        .batch_execute("INSERT INTO jobmaster (job_id, job_name) VALUES (2, 'after the outage')")
        .await
        .unwrap();
    eventually(
        "a change made after the outage arrives",
        arrived("SELECT count(*) = 2 FROM jobmaster"),
    )
    .await;
    shutdown.cancel();
    let stats = tokio::time::timeout(std::time::Duration::from_secs(30), worker)
        .await
        .expect("the worker stops on shutdown")
        .unwrap()
        .unwrap();
    assert!(stats.retries >= 1, "{stats:?}");
}

async fn outbox_ids(client: &tokio_postgres::Client) -> Vec<i64> {
    client
        .query("SELECT id FROM tandem.outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Waits for an async condition with a deadline.
async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let timeout = std::time::Duration::from_secs(30);
    assert!(
        tandem::cluster::wait_until(timeout, condition).await,
        "timed out after {timeout:?} waiting for: {what}"
    );
}

/// A small batch's lock and hold read the cloud table through its key's index, however big the
/// table: the planner knows nothing of staging tables it has not analyzed, and planned both as a
/// hash join over a scan of the whole table, once a batch (see `commit::forward::sql::BySize`).
#[tokio::test]
async fn a_small_batchs_lock_and_hold_probe_the_cloud_tables_index() {
    use tandem::commit::forward::sql::ForwardSql;
    let desktop = "CREATE TABLE job (job_id int PRIMARY KEY, name text);
         CREATE TABLE task (job_id int, name text); CREATE INDEX ON task (job_id);";
    let cloud = format!(
        "CREATE TABLE job (job_id int PRIMARY KEY, name text, {ownership});
         CREATE TABLE task (task_id bigserial PRIMARY KEY, job_id int, name text, {ownership});
         CREATE INDEX ON task (job_id);
         INSERT INTO job (job_id, name, source) SELECT g, 'job ' || g, 'D' FROM generate_series(1, 20000) g;
         INSERT INTO task (job_id, name, source) SELECT g % 20000, 'task ' || g, 'D' FROM generate_series(1, 40000) g;
         ANALYZE job; ANALYZE task;",
        ownership = crate::any_schema::OWNERSHIP
    );
    let tables = "[[tables]]\ndesktop = \"job\"\nkey = [\"job_id\"]\n\
         [[tables]]\ndesktop = \"task\"\ncloud_key = \"task_id\"\nscope = [\"job_id\"]\n";
    let (_db, config) = crate::any_schema::installed_with(desktop, &cloud, tables).await;
    let tables = pipeline::Tables::start(&config).await.unwrap();
    let mapping = tables.snapshot().mapping.clone();
    let cloud = tandem::db::connect(tandem::change::Side::Cloud, &config.cloud.url)
        .await
        .unwrap();
    for (i, t) in mapping.tables.iter().enumerate() {
        let sql = ForwardSql::build(t, i);
        cloud.batch_execute(&sql.create).await.unwrap();
        let keys = format!("pg_temp.tandem_k_{i}");
        cloud
            .batch_execute(&format!("INSERT INTO {keys} (c1) VALUES (5)"))
            .await
            .unwrap();
        let (lock, hold) = (sql.lock.expect("phone rows travel back"), sql.hold.unwrap());
        for (what, statement) in [("lock", lock.of(false)), ("hold", hold.of(false))] {
            let plan: Vec<String> = cloud
                .query(&format!("EXPLAIN {statement}"), &[])
                .await
                .unwrap_or_else(|e| panic!("{what} of {}: {e}\n{statement}", t.table.cloud))
                .iter()
                .map(|r| r.get(0))
                .collect();
            let name = &t.table.cloud.name;
            assert!(
                !plan
                    .iter()
                    .any(|l| l.contains(&format!("Seq Scan on {name}"))),
                "the {what} of {name} reads the whole table:\n{}",
                plan.join("\n")
            );
        }
    }
}
