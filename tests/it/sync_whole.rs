//! A table the cloud holds no row of (and its journal no entry of) is synced whole: no hashes, its
//! rows read as one set through the forward plan, lookups joined as a set when their source's key is
//! unique on the desktop and row by row otherwise. Counted as a scan counts, and a reconcile right
//! after finds both sides equal. A cloud table a phone emptied is compared, not refilled. A target
//! still empty once locked is filled by plain inserts while phones wait; one that gained a row since
//! the scan is applied through the forward plan (a phone's row kept, the desktop's logged as a
//! conflict).

use std::collections::BTreeSet;

use tandem::capture::outbox::ReadSql;
use tandem::change::Side;
use tandem::commit::forward::Forward;
use tandem::commit::{self, Progress, Target};
use tandem::config::Config;
use tandem::db::{self, StatementCache};
use tandem::ops::reconcile::{self, Direction, Report, Request};
use tandem::pipeline::Tables;
use tandem::pipeline::sync::Quiet;
use tokio_postgres::Client;

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

/// The forward applier's pieces for table `job`, its rows staged from the whole desktop table in an
/// open cloud transaction.
struct Staged {
    forward: Forward,
    target: Target,
    cloud: Client,
    mapping: std::sync::Arc<tandem::transform::Mapping>,
    i: usize,
    _desktop: Client,
}

async fn staged(config: &Config) -> Staged {
    let tables = Tables::start(config).await.unwrap();
    let mapping = tables.snapshot().mapping.clone();
    let i = mapping
        .tables
        .iter()
        .position(|t| t.table.cloud.name == "job")
        .unwrap();
    let desktop = db::connect(Side::Desktop, &config.desktop.url)
        .await
        .unwrap();
    let cloud = db::connect(Side::Cloud, &config.cloud.url).await.unwrap();
    let forward = Forward::new(&mapping);
    let mut target = Target::prepare(&cloud, commit::Direction::Forward, forward.staging())
        .await
        .unwrap();
    desktop
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let mut statements = StatementCache::new(Side::Desktop);
    let read = ReadSql::whole(&mapping, i);
    forward
        .stage(&mut target, i, &read, &desktop, &mut statements, &cloud)
        .await
        .unwrap();
    Staged {
        forward,
        target,
        cloud,
        mapping,
        i,
        _desktop: desktop,
    }
}

#[tokio::test]
async fn an_empty_target_is_filled_while_phones_wait() {
    let (db, config) = installed(true).await;
    let mut s = staged(&config).await;
    let outcome = s
        .forward
        .fill(&mut s.target, &s.cloud, &s.mapping, s.i, "test fill")
        .await
        .unwrap()
        .expect("the target is empty: filled");
    assert_eq!(outcome.written, JOBS as u64);
    // Until the fill commits, a phone's write waits for it.
    let phone = db.cloud().await;
    phone
        .batch_execute("SET lock_timeout = '200ms'")
        .await
        .unwrap();
    let blocked = phone
        .batch_execute("INSERT INTO job (job_id, client_id, name) VALUES (1000, 1, 'phone')")
        .await
        .expect_err("a phone's insert while the table is filled must wait");
    assert_eq!(
        blocked.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
        "{blocked}"
    );
    s.target.commit(&s.cloud, Progress::Forward).await.unwrap();
    phone
        .batch_execute("INSERT INTO job (job_id, client_id, name) VALUES (1000, 1, 'phone')")
        .await
        .unwrap();
    let cloud = db.cloud().await;
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM job WHERE source = 'D'").await,
        JOBS
    );
}

#[tokio::test]
async fn a_target_that_gained_a_phone_row_since_the_scan_is_applied_not_filled() {
    let (db, config) = installed(true).await;
    // The scan found the cloud empty; then a phone made job 7.
    let phone = db.cloud().await;
    phone
        .batch_execute("INSERT INTO job (job_id, client_id, name) VALUES (7, 1, 'made on a phone')")
        .await
        .unwrap();
    let mut s = staged(&config).await;
    let filled = s
        .forward
        .fill(&mut s.target, &s.cloud, &s.mapping, s.i, "test fill")
        .await
        .unwrap();
    assert!(
        filled.is_none(),
        "a target holding a row must not be filled"
    );
    let applied = s
        .forward
        .apply(
            &mut s.target,
            &s.cloud,
            &s.mapping,
            &BTreeSet::from([s.i]),
            &BTreeSet::new(),
            &[],
            "test apply",
        )
        .await
        .unwrap();
    s.target.commit(&s.cloud, Progress::Forward).await.unwrap();
    assert_eq!(applied.outcome.written, JOBS as u64 - 1);
    // The phone's row, which the desktop has not received, holds the desktop's key back until it has.
    assert_eq!(applied.held, vec![(s.i, vec![vec![Some("7".to_string())]])]);
    let cloud = db.cloud().await;
    let kept = count(
        &cloud,
        "SELECT count(*) FROM job WHERE job_id = 7 AND source = 'M' AND name = 'made on a phone'",
    )
    .await;
    assert_eq!(kept, 1, "the phone's row was overwritten");
}

#[tokio::test]
async fn a_table_whose_sync_fails_stays_due_and_the_other_lane_goes_on() {
    let tasks = JOBS * TASKS_PER_JOB + ORPHAN_TASKS;
    for (failing, other, rows) in [("job", "task", tasks), ("task", "job", JOBS)] {
        let (db, config) = installed(true).await;
        let cloud = db.cloud().await;
        // A journal entry that is not a row of the table: reading the journal fails, and so does the
        // table's sync.
        cloud
            .execute(
                "INSERT INTO tandem.journal (table_schema, table_name, op, names, old)
                 SELECT 'public', $1::text, 'U', array_agg(attname::text ORDER BY attnum), '(not a row)'
                   FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
                &[&failing],
            )
            .await
            .unwrap();
        run_once(&config).await;
        let desktop = db.desktop().await;
        let state = |table: &str| {
            format!(
                "SELECT count(*) FROM tandem.table_state WHERE table_name = '{table}' AND synced_at IS NULL"
            )
        };
        assert_eq!(
            count(&desktop, &state(failing)).await,
            1,
            "{failing} stays due"
        );
        assert_eq!(count(&desktop, &state(other)).await, 0, "{other} synced");
        assert_eq!(
            count(&cloud, &format!("SELECT count(*) FROM {other}")).await,
            rows
        );
        assert_eq!(
            count(&cloud, &format!("SELECT count(*) FROM {failing}")).await,
            0
        );
        cloud
            .batch_execute("DELETE FROM tandem.journal")
            .await
            .unwrap();
        run_once(&config).await;
        assert_eq!(
            count(&desktop, &state(failing)).await,
            0,
            "{failing} synced"
        );
        assert_eq!(count(&cloud, "SELECT count(*) FROM job").await, JOBS);
        assert_eq!(count(&cloud, "SELECT count(*) FROM task").await, tasks);
    }
}

#[tokio::test]
async fn a_table_is_written_only_once_the_tables_it_references_are_synced() {
    // The cloud's task references job; job's insert takes a while (a statement trigger that waits),
    // so task, staged meanwhile on the other lane, would find no job if it wrote before job committed.
    let desktop = format!(
        "CREATE TABLE job (job_id int PRIMARY KEY, client_id int, name text);
         CREATE TABLE task (job_id int, name text); CREATE INDEX ON task (job_id);
         INSERT INTO job SELECT g, g * 10, 'job ' || g FROM generate_series(1, {JOBS}) g;
         INSERT INTO task SELECT j, 'task ' || t FROM generate_series(1, {JOBS}) j,
                                generate_series(1, {TASKS_PER_JOB}) t;"
    );
    let cloud = format!(
        "CREATE TABLE job (job_id int PRIMARY KEY, client_id int, name text, {OWNERSHIP});
         CREATE TABLE task (task_id bigserial PRIMARY KEY, job_id int REFERENCES job (job_id),
                            client_id int, name text, {OWNERSHIP});
         CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$;
         CREATE TRIGGER slow_insert AFTER INSERT ON job FOR EACH STATEMENT EXECUTE FUNCTION slow_insert();"
    );
    let (db, config) = installed_with(&desktop, &cloud, TABLES).await;
    run_once(&config).await;
    let cloud = db.cloud().await;
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM tandem.dead_letters").await,
        0,
        "task was written before job"
    );
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM task").await,
        JOBS * TASKS_PER_JOB
    );
    // Due again alone (its parent is not): it does not wait for a parent that is not synced now.
    db.desktop()
        .await
        .batch_execute(
            "UPDATE tandem.table_state SET state = 'new', synced_at = NULL WHERE table_name = 'task'",
        )
        .await
        .unwrap();
    let again = tokio::time::timeout(std::time::Duration::from_secs(60), run_once(&config)).await;
    assert!(again.is_ok(), "a child due alone waited for its parent");
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM task").await,
        JOBS * TASKS_PER_JOB
    );
}
