//! Reconcile on the sample schema (issue 11): a cloud the old Node.js sync filled is adopted as it is,
//! drift is repaired both ways with exact counts, a dry run writes nothing and reports what the
//! reconcile then does, a phone's row colliding with a desktop key is a conflict, and the command line
//! reconciles one table as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::json;
use tandem::config::{Config, Identity, TableConfig};
use tandem::ops::reconcile::{self, Direction, Report, Request};
use tandem::pipeline::sync::{Counts, Quiet};
use tandem::{sample, setup};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::any_schema::run_once;
use crate::support::{TestDb, count, rows};

const SCALE: f64 = 0.05;
/// When the old sync last wrote the rows it left in the cloud.
const OLD_SYNC_AT: &str = "'2025-10-31 16:53:44+05:30'::timestamptz";
/// The seed's 3 orphan clients (their org is missing) are in no cloud: its foreign keys refuse them.
const VALID_CLIENTS: &str = "org_id IN (SELECT org_id FROM orgmaster)";
/// Rows phones made: a job, a reminder, a task of job {0} and a diary entry for it.
const PHONE_ROWS: &str = "
    INSERT INTO jobshead (job_id, client_id, job_name, job_status) VALUES (900001, 1, 'Mobile job', 'Open');
    INSERT INTO reminder (rem_id, staff_id, client_id, rem_date, rem_subject)
         VALUES (900001, 1, 1, '2025-11-03', 'Call about the GST notice');
    INSERT INTO jobtasks (job_id, client_id, task_name, task_status)
         SELECT job_id, client_id, 'Phone task', 'Open' FROM jobshead WHERE job_id = {0};
    INSERT INTO workdiary (staff_id, wd_date, job_id, hours, narration)
         VALUES (1, '2025-11-03', {0}, 2.5, 'Site visit, logged on the phone');";
/// A desktop bulk import: a job added, one edited, a leave request deleted; in jobtasks a row added to
/// job {0}, one of job {1} edited, one of job {2} deleted.
const IMPORT: &str = "
    INSERT INTO jobshead (job_id, client_id, org_id, loc_id, jobm_id, job_name, job_status, job_uid)
         VALUES (800001, 1, 1, 1, 1, 'Added offline', 'Open', 'uid-800001');
    UPDATE jobshead SET job_status = 'Changed offline' WHERE job_id = 5;
    DELETE FROM learequest WHERE lea_id = 1;
    INSERT INTO jobtasks (job_id, task_id, staff_id, task_name, task_status) VALUES ({0}, 1, 1, 'Added offline', 'Open');
    UPDATE jobtasks SET task_status = 'Changed offline' WHERE ctid = (SELECT min(ctid) FROM jobtasks WHERE job_id = {1});
    DELETE FROM jobtasks WHERE ctid = (SELECT min(ctid) FROM jobtasks WHERE job_id = {2});";

fn with(sql: &str, jobs: &[i32]) -> String {
    let mut out = sql.to_string();
    for (n, job) in jobs.iter().enumerate() {
        out = out.replace(&format!("{{{n}}}"), &job.to_string());
    }
    out
}

async fn exec(client: &Client, sql: &str) {
    let done = client.batch_execute(sql).await;
    done.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Asserts `SELECT count(*) FROM {from}` is `n`.
async fn is(client: &Client, from: &str, n: i64) {
    let found = count(client, &format!("SELECT count(*) FROM {from}")).await;
    assert_eq!(found, n, "{from}");
}

async fn reconcile_all(config: &Config, dry_run: bool) -> Report {
    let request = Request {
        tables: Vec::new(),
        direction: Direction::Both,
        dry_run,
        trigger: "command",
    };
    reconcile::reconcile(config, &request, &Quiet)
        .await
        .unwrap_or_else(|e| panic!("reconcile (dry run {dry_run}): {e}"))
}

fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A cloud session writing as tandem (and the old sync) did: `source` kept as written, no journal.
async fn as_tandem(db: &TestDb) -> Client {
    let cloud = db.cloud().await;
    exec(&cloud, "SELECT set_config('tandem.applying', 'on', false)").await;
    cloud
}

/// A desktop session the capture triggers do not see: a bulk import only a scan can find.
async fn uncaptured(db: &TestDb) -> Client {
    let desktop = db.desktop().await;
    exec(&desktop, "SET session_replication_role = replica").await;
    desktop
}

/// The first column of `sql`'s rows, as text.
async fn texts(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<String> {
    let found = client.query(sql, params).await;
    let found = found.unwrap_or_else(|e| panic!("{sql}: {e}"));
    found.iter().map(|r| r.get(0)).collect()
}

/// The desktop columns of `t` that go to the cloud (quoted, in order): both sides have them.
async fn mapped(desktop: &Client, t: &TableConfig) -> Vec<String> {
    let sql = "SELECT quote_ident(column_name) FROM information_schema.columns
                WHERE table_schema = $1 AND table_name = $2 AND column_name::text <> ALL($3)
                ORDER BY ordinal_position";
    let table = &t.table.desktop;
    let skip = &t.skip_to_cloud;
    texts(desktop, sql, &[&table.schema, &table.name, skip]).await
}

fn orphans_excluded(t: &TableConfig) -> &'static str {
    if t.table.desktop.name == "climaster" {
        VALID_CLIENTS
    } else {
        "true"
    }
}

/// Fills the cloud the way the old Node.js sync left it: every desktop row as a desktop-owned row with
/// its timestamps, tables renamed, desktop-only columns left out, jobtasks.client_id looked up from
/// jobshead, and the cloud-key tables' rows under arbitrary, shuffled cloud keys.
async fn copy_like_the_old_sync(db: &TestDb, config: &Config) {
    let (desktop, cloud) = (db.desktop().await, as_tandem(db).await);
    for t in &config.tables {
        let cols = mapped(&desktop, t).await;
        let mut select: Vec<String> = cols.iter().map(|c| format!("t.{c} AS {c}")).collect();
        for l in &t.lookups {
            let (c, on, from) = (q(&l.column), q(&l.on), q(&l.from));
            let value = format!("(SELECT {c} FROM {from} l WHERE l.{on} = t.{on} LIMIT 1)");
            select.push(format!("{value} AS {c}"));
        }
        if let Identity::CloudKey { column, .. } = &t.identity {
            let shuffled = "row_number() OVER (ORDER BY md5(t::text), t::text)";
            select.push(format!("1000000 + {shuffled} AS {}", q(column)));
        }
        let (select, filter) = (select.join(", "), orphans_excluded(t));
        let from = t.table.desktop.quoted();
        let sql = format!(
            "SELECT coalesce(json_agg(x), '[]')::text FROM (SELECT {select}, 'D' AS source,
                    {OLD_SYNC_AT} AS created_at, {OLD_SYNC_AT} AS updated_at FROM {from} t WHERE {filter}) x"
        );
        let json = texts(&desktop, &sql, &[]).await;
        let table = t.table.cloud.quoted();
        let insert = format!(
            "INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, $1::text::json)"
        );
        let copied = cloud.execute(&insert, &[&json[0]]).await;
        copied.unwrap_or_else(|e| panic!("copying {}: {e}", t.table));
    }
}

/// Each cloud row of `t` as `identity xmin owner` (identity: the desktop key, or the cloud key).
async fn cloud_rows(cloud: &Client, t: &TableConfig) -> BTreeSet<String> {
    let id = match &t.identity {
        Identity::Key(cols) => {
            let cols: Vec<String> = cols.iter().map(|c| q(c)).collect();
            format!("ROW({})", cols.join(", "))
        }
        Identity::CloudKey { column, .. } => q(column),
    };
    let table = t.table.cloud.quoted();
    let sql =
        format!("SELECT {id}::text || ' ' || xmin || ' ' || coalesce(source, 'D') FROM {table}");
    texts(cloud, &sql, &[]).await.into_iter().collect()
}

/// Every row of every synced table on both sides, as `side table ctid xmin`: equal before and after
/// means nothing was written.
async fn every_row(db: &TestDb, config: &Config) -> Vec<String> {
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let mut out = Vec::new();
    for t in &config.tables {
        for (side, client, table) in [
            ("desktop", &desktop, t.table.desktop.quoted()),
            ("cloud", &cloud, t.table.cloud.quoted()),
        ] {
            let what = format!("'{side}', '{table}', ctid, xmin");
            out.extend(rows(client, &table, &what, "true").await);
        }
    }
    out.sort();
    out
}

/// Both sides hold the same rows in every table (the desktop's orphan clients aside).
async fn assert_sides_equal(db: &TestDb, config: &Config) {
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    for t in &config.tables {
        let cols = mapped(&desktop, t).await.join(", ");
        let (dt, ct) = (t.table.desktop.quoted(), t.table.cloud.quoted());
        let d = rows(&desktop, &dt, &cols, orphans_excluded(t)).await;
        let c = rows(&cloud, &ct, &cols, "true").await;
        assert!(!d.is_empty(), "{} is empty", t.table);
        assert_eq!(d, c, "{}: the desktop and the cloud differ", t.table);
    }
}

/// Every row of the report by `table direction`.
fn by_row(report: &Report) -> BTreeMap<String, Counts> {
    let each = report.rows.iter();
    each.map(|r| (format!("{} {}", r.table, r.direction), r.counts))
        .collect()
}

/// (table, direction) → [inserted, updated, deleted, conflicts, dead letters], for the rows that
/// write or refuse something.
type Summary = BTreeMap<(String, String), [u64; 5]>;

fn summary(report: &Report) -> Summary {
    let mut out = Summary::new();
    for r in &report.rows {
        let c = r.counts;
        let n = [
            c.inserted,
            c.updated,
            c.deleted,
            c.conflicts,
            c.dead_letters,
        ];
        if n.iter().any(|&n| n > 0) {
            out.insert((r.table.clone(), r.direction.to_string()), n);
        }
    }
    out
}

/// What a reconcile of the seeded sample reports besides `more`: the 3 orphan clients the cloud
/// refuses, counted as dead letters (not as writes, not hidden).
fn with_the_orphans(more: &[(&str, &str, [u64; 5])]) -> Summary {
    let all = more
        .iter()
        .chain([&("climaster", "forward", [0, 0, 0, 0, 3])]);
    all.map(|(t, d, n)| ((t.to_string(), d.to_string()), *n))
        .collect()
}

/// The sample seeded on the desktop, installed, and synced by a first `run --once`.
async fn synced() -> (TestDb, Config) {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    let seeded = sample::seed(&mut db.desktop().await, &config, SCALE).await;
    seeded.unwrap();
    setup::init(&config, false).await.unwrap();
    run_once(&config).await;
    let desktop = db.desktop().await;
    is(&desktop, "tandem.outbox", 0).await;
    is(&desktop, "tandem.table_state WHERE state <> 'streaming'", 0).await;
    (db, config)
}

/// Jobs with at least two tasks on the desktop, lowest first.
async fn jobs_with_tasks(desktop: &Client, n: i64) -> Vec<i32> {
    let sql = "SELECT job_id::text FROM jobtasks WHERE job_id IS NOT NULL
                GROUP BY job_id HAVING count(*) >= 2 ORDER BY job_id LIMIT $1";
    let jobs = texts(desktop, sql, &[&n]).await;
    let jobs: Vec<i32> = jobs.iter().map(|j| j.parse().unwrap()).collect();
    assert_eq!(jobs.len() as i64, n, "too few jobs with tasks");
    jobs
}

/// `identity`s of `rows` (see [`cloud_rows`]).
fn ids<'a>(rows: impl Iterator<Item = &'a String>) -> Vec<&'a str> {
    rows.map(|r| r.split(' ').next().unwrap()).collect()
}

/// The cloud keys of the jobtasks rows equal to the first desktop task of each of `jobs`.
async fn cloud_copies(db: &TestDb, cols: &str, jobs: &[i32]) -> BTreeSet<String> {
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let first = format!(
        "SELECT ROW({cols})::text FROM jobtasks WHERE ctid = (SELECT min(ctid) FROM jobtasks WHERE job_id = $1)"
    );
    let copies =
        format!("SELECT jt_id::text FROM jobtasks WHERE job_id = $1 AND ROW({cols})::text = $2");
    let mut out = BTreeSet::new();
    for job in jobs {
        let old = texts(&desktop, &first, &[job]).await;
        out.extend(texts(&cloud, &copies, &[job, &old[0]]).await);
    }
    out
}

#[tokio::test]
async fn migration_from_the_old_sync_adopts_the_cloud_as_it_is() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    let mut desktop = db.desktop().await;
    sample::seed(&mut desktop, &config, SCALE).await.unwrap();
    copy_like_the_old_sync(&db, &config).await;
    let s = jobs_with_tasks(&desktop, 4).await;
    // Rows phones made that the old sync never brought back, in both kinds of table.
    let cloud = as_tandem(&db).await;
    exec(&cloud, &with(PHONE_ROWS, &s)).await;
    let owned = "UPDATE jobshead SET source = 'M' WHERE job_id = 900001;
                 UPDATE reminder SET source = 'M' WHERE rem_id = 900001;
                 UPDATE jobtasks SET source = 'M' WHERE task_name = 'Phone task';
                 UPDATE workdiary SET source = 'M' WHERE narration = 'Site visit, logged on the phone';";
    exec(&cloud, owned).await;
    setup::init(&config, false).await.unwrap();
    let mut before = Vec::new();
    for t in &config.tables {
        before.push(cloud_rows(&cloud, t).await);
    }
    // The cloud rows the desktop's jobtasks edit and delete may replace (equal rows of their scope).
    let jobtasks = config
        .tables
        .iter()
        .find(|t| t.table.desktop.name == "jobtasks");
    let jt_cols = mapped(&desktop, jobtasks.unwrap()).await.join(", ");
    let replaceable = cloud_copies(&db, &jt_cols, &s[2..4]).await;
    // The desktop changes after the copy, in a bulk import the capture triggers do not see; the
    // change of job 9 is of a column the cloud does not have.
    let import = format!(
        "{} UPDATE jobshead SET job_status = 'Changed offline' WHERE job_id = 6;
            UPDATE jobshead SET job_uid = 'never sent' WHERE job_id = 9;",
        with(IMPORT, &s[1..4])
    );
    exec(&uncaptured(&db).await, &import).await;
    is(&desktop, "tandem.outbox", 0).await;

    run_once(&config).await;

    // Only the rows the import changed are rewritten (old versions gone, new versions come).
    let mut changed = Vec::new();
    for (t, before) in config.tables.iter().zip(&before) {
        let after = cloud_rows(&cloud, t).await;
        let gone = ids(before.difference(&after));
        let came = ids(after.difference(before));
        let name = t.table.desktop.name.clone();
        assert!(
            before.difference(&after).all(|r| !r.ends_with(" M")),
            "{name}: a mobile row was written"
        );
        if name == "jobtasks" {
            // The edited and the deleted task each replace one cloud row equal to it; every other
            // row keeps its jt_id and is not rewritten.
            assert_eq!((gone.len(), came.len()), (2, 2), "{gone:?} {came:?}");
            assert!(
                gone.iter().all(|id| replaceable.contains(*id)),
                "{gone:?}, may be {replaceable:?}"
            );
        } else if !(gone.is_empty() && came.is_empty()) {
            changed.push(format!("{name}: {} -> {}", gone.join(" "), came.join(" ")));
        }
    }
    let expected = [
        "jobshead: (5) (6) -> (5) (6) (800001)",
        "learequest: (1) -> ",
    ];
    assert_eq!(changed, expected, "cloud rows rewritten");
    // The phones' rows reached the desktop; the import reached the cloud; nothing else differs.
    assert_sides_equal(&db, &config).await;
    is(&desktop, "jobshead WHERE job_id = 900001", 1).await;
    is(&desktop, "mbreminder WHERE rem_id = 900001", 1).await;
    is(&desktop, "jobtasks WHERE task_name = 'Phone task'", 1).await;
    is(&desktop, "workdiary WHERE wd_date = '2025-11-03'", 1).await;
    is(&cloud, "jobshead WHERE job_status = 'Changed offline'", 2).await;

    // A reconcile right after writes nothing on either side; the orphans are reported, not hidden.
    let all_rows = every_row(&db, &config).await;
    let again = reconcile_all(&config, false).await;
    assert!(again.complete(), "{:?}", again.skipped);
    assert_eq!(summary(&again), with_the_orphans(&[]), "{:#?}", again.rows);
    assert_eq!(again.dead_letters_retried.forward, 3);
    let unwritten = every_row(&db, &config).await == all_rows;
    assert!(unwritten, "the second reconcile wrote rows");
    is(&cloud, "tandem.dead_letters WHERE resolved_at IS NULL", 3).await;

    // Adopted: the desktop holds the phones' rows as agreed versions, so its first edits of them are
    // ordinary edits, applied in place (the same cloud row, now desktop-owned), not conflicts.
    let phone_task = "SELECT jt_id FROM jobtasks WHERE task_name = 'Phone task'";
    let jt_id: i64 = cloud.query_one(phone_task, &[]).await.unwrap().get(0);
    exec(
        &desktop,
        "UPDATE jobshead SET remarks = 'edited at the office' WHERE job_id = 900001;
         UPDATE jobtasks SET task_name = 'Phone task, checked' WHERE task_name = 'Phone task';
         DELETE FROM mbreminder WHERE rem_id = 900001;",
    )
    .await;
    run_once(&config).await;
    is(
        &cloud,
        "jobshead WHERE job_id = 900001 AND remarks = 'edited at the office' AND source = 'D'",
        1,
    )
    .await;
    is(&cloud, "reminder WHERE rem_id = 900001", 0).await;
    let edited: Vec<i64> = cloud
        .query(
            "SELECT jt_id FROM jobtasks WHERE task_name LIKE 'Phone task%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(edited, [jt_id], "the phone's task, edited in place");
    for client in [&desktop, &cloud] {
        is(client, "tandem.conflicts", 0).await;
    }
    assert_sides_equal(&db, &config).await;
}

/// Drift between the two sides of a synced sample, found only by a scan: the cloud edited by hand
/// (rows deleted, changed, added as desktop-owned), the desktop changed by a bulk import, and phones'
/// rows and an edit no stream delivered. Returns the writes a reconcile must report.
async fn inject_drift(db: &TestDb) -> Summary {
    let desktop = db.desktop().await;
    let s = jobs_with_tasks(&desktop, 8).await;
    let by_hand = "
        DELETE FROM cliunimaster WHERE cliu_id IN (1, 2);
        INSERT INTO cliunimaster (cliu_id, client_id, unit_name, source) VALUES (900001, 1, 'Stray unit', 'D');
        UPDATE jobshead SET remarks = 'edited in the cloud by hand' WHERE job_id IN (3, 4);
        UPDATE reminder SET rem_status = 'Drifted' WHERE rem_id = 1;
        DELETE FROM jobtasks WHERE jt_id IN (SELECT min(jt_id) FROM jobtasks WHERE job_id IN ({0}, {1}) GROUP BY job_id);
        UPDATE jobtasks SET actual_hours = 9999.25 WHERE jt_id = (SELECT min(jt_id) FROM jobtasks WHERE job_id = {2});
        INSERT INTO jobtasks (job_id, client_id, task_name, source)
             SELECT job_id, client_id, 'Stray task', 'D' FROM jobshead WHERE job_id = {3};";
    exec(&as_tandem(db).await, &with(by_hand, &s)).await;
    exec(&uncaptured(db).await, &with(IMPORT, &s[4..7])).await;
    is(&desktop, "tandem.outbox", 0).await;
    // Phones' writes (a plain session: they become mobile-owned), never streamed; one takes job 7 over.
    let phone = db.cloud().await;
    let takeover = "UPDATE jobshead SET job_status = 'Done on phone' WHERE job_id = 7";
    let phones = format!("{}; {takeover}", with(PHONE_ROWS, &s[7..]));
    exec(&phone, &phones).await;
    with_the_orphans(&[
        // Two deleted in the cloud come back; the stray one goes.
        ("cliunimaster", "forward", [2, 0, 1, 0, 0]),
        // The import's new job; two cloud edits and the import's edit undone.
        ("jobshead", "forward", [1, 3, 0, 0, 0]),
        // The phone's new job, and its edit of job 7 (the journal shows the desktop holds what it edited).
        ("jobshead", "reverse", [1, 1, 0, 0, 0]),
        ("mbreminder", "forward", [0, 1, 0, 0, 0]),
        ("mbreminder", "reverse", [1, 0, 0, 0, 0]),
        ("learequest", "forward", [0, 0, 1, 0, 0]),
        // Multisets: 2 deleted + 1 changed in the cloud, 1 new + 1 edited on the desktop go in; the
        // changed one, the stray one, the edited one's old version and the deleted one go.
        ("jobtasks", "forward", [5, 0, 4, 0, 0]),
        ("jobtasks", "reverse", [1, 0, 0, 0, 0]),
        ("workdiary", "reverse", [1, 0, 0, 0, 0]),
    ])
}

/// The mobile-owned cloud rows of every table (see [`cloud_rows`]).
async fn mobile_rows(db: &TestDb, config: &Config) -> Vec<String> {
    let cloud = db.cloud().await;
    let mut out = Vec::new();
    for t in &config.tables {
        let found = cloud_rows(&cloud, t).await;
        let mobile = found.into_iter().filter(|r| r.ends_with(" M"));
        out.extend(mobile.map(|r| format!("{} {r}", t.table)));
    }
    out
}

#[tokio::test]
async fn injected_drift_is_repaired_both_ways() {
    let (db, config) = synced().await;
    let expected = inject_drift(&db).await;
    let mobile = mobile_rows(&db, &config).await;
    assert_eq!(mobile.len(), 5, "{mobile:?}");
    let report = reconcile_all(&config, false).await;
    assert!(report.complete(), "{:?}", report.skipped);
    assert_eq!(summary(&report), expected, "{:#?}", report.rows);
    assert_sides_equal(&db, &config).await;
    let untouched = mobile_rows(&db, &config).await == mobile;
    assert!(untouched, "mobile rows were written");
    let desktop = db.desktop().await;
    is(&desktop, "jobshead WHERE job_status = 'Done on phone'", 1).await;
    is(&db.cloud().await, "tandem.journal", 0).await;

    // A second reconcile right after writes nothing.
    let all_rows = every_row(&db, &config).await;
    let again = reconcile_all(&config, false).await;
    assert_eq!(summary(&again), with_the_orphans(&[]), "{:#?}", again.rows);
    let unwritten = every_row(&db, &config).await == all_rows;
    assert!(unwritten, "the second reconcile wrote rows");
}

/// What a reconcile may log or queue: outbox, conflicts, dead letters of both sides, the journal.
async fn bookkeeping(db: &TestDb) -> Vec<Vec<String>> {
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let letters = "id, table_name, attempts, failed_at, retried_at, resolved_at";
    vec![
        rows(&desktop, "tandem.outbox", "id", "true").await,
        rows(&desktop, "tandem.conflicts", "id", "true").await,
        rows(&desktop, "tandem.dead_letters", letters, "true").await,
        rows(&cloud, "tandem.conflicts", "id", "true").await,
        rows(&cloud, "tandem.dead_letters", letters, "true").await,
        rows(&cloud, "tandem.journal", "id", "true").await,
    ]
}

#[tokio::test]
async fn dry_run_writes_nothing_and_reports_the_drift() {
    let (db, config) = synced().await;
    let expected = inject_drift(&db).await;
    let all_rows = every_row(&db, &config).await;
    let logged = bookkeeping(&db).await;
    assert!(logged[0].is_empty(), "outbox: {:?}", logged[0]);
    assert_eq!(logged[4].len(), 3, "the orphans' dead letters");
    assert_eq!(
        logged[5].len(),
        3,
        "the phone's edit is in the journal, and its inserts into cloud-key tables"
    );

    let dry = reconcile_all(&config, true).await;
    assert!(dry.dry_run);
    assert!(
        every_row(&db, &config).await == all_rows,
        "the dry run wrote rows"
    );
    assert_eq!(
        bookkeeping(&db).await,
        logged,
        "the dry run logged or queued"
    );
    let retried = dry.dead_letters_retried;
    assert_eq!(retried.forward + retried.reverse, 0);
    let desktop = db.desktop().await;
    is(&desktop, "tandem.reconciles WHERE dry_run", 1).await;

    let real = reconcile_all(&config, false).await;
    assert_eq!(summary(&real), expected, "{:#?}", real.rows);
    let (dry, real) = (by_row(&dry), by_row(&real));
    let differ: Vec<_> = real
        .iter()
        .filter(|(k, c)| dry.get(*k) != Some(c))
        .collect();
    let differ: Vec<_> = differ
        .into_iter()
        .map(|(k, c)| (k, dry.get(k), c))
        .collect();
    assert_eq!(dry.len(), real.len());
    assert!(
        differ.is_empty(),
        "(row, dry run, reconcile) differ: {differ:#?}"
    );
}

#[tokio::test]
async fn a_mobile_row_colliding_with_a_desktop_key_is_a_conflict_settled_by_the_policy() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    let mut desktop = db.desktop().await;
    sample::seed(&mut desktop, &config, SCALE).await.unwrap();
    copy_like_the_old_sync(&db, &config).await;
    // A phone made job 7 while the desktop made its own job 7: the old sync's reverse pass skipped it
    // as "already there", and its forward pass never overwrote a mobile row.
    let cloud = as_tandem(&db).await;
    let phone_job =
        "UPDATE jobshead SET job_name = 'Made on a phone', job_status = 'Open', remarks = 'phone',
                            source = 'M' WHERE job_id = 7";
    exec(&cloud, phone_job).await;
    setup::init(&config, false).await.unwrap();
    let (job, phones) = (
        "xmin, job_name, job_status, remarks, job_uid",
        "xmin, job_name, source",
    );
    let desktop_job = rows(&desktop, "jobshead", job, "job_id = 7").await;
    let cloud_job = rows(&cloud, "jobshead", phones, "job_id = 7").await;
    assert_eq!(cloud_job.len(), 1);

    let conflict = with_the_orphans(&[("jobshead", "reverse", [0, 0, 0, 1, 0])]);
    let report = reconcile_all(&config, false).await;
    assert_eq!(summary(&report), conflict, "{:#?}", report.rows);
    // Two rows made without seeing each other, neither with a time to tell which came later: the
    // desktop's is kept (the policy `latest`), the phone's is kept in the record.
    let job_7 = |client, what| rows(client, "jobshead", what, "job_id = 7");
    assert_eq!(job_7(&desktop, job).await, desktop_job);
    let logged = "tandem.conflicts WHERE table_name = 'jobshead' AND row_key->>'job_id' = '7'";
    is(
        &desktop,
        &format!("{logged} AND kind = 'insert/insert' AND outcome = 'desktop' AND resolved_at IS NOT NULL AND mobile_row->>'job_name' = 'Made on a phone'"),
        1,
    )
    .await;
    is(&desktop, "tandem.conflicts", 1).await;
    // The desktop's version is on its way to the cloud; once there, both sides agree and a
    // reconcile finds nothing more.
    crate::causal::run_once(&config).await;
    assert_eq!(
        job_7(&cloud, "job_name, source").await,
        rows(&desktop, "jobshead", "job_name, 'D'", "job_id = 7").await
    );
    let again = reconcile_all(&config, false).await;
    is(&desktop, "tandem.conflicts", 1).await;
    assert_eq!(job_7(&desktop, job).await, desktop_job);
    assert_eq!(again.written(), 0, "{:#?}", again.rows);
}

#[tokio::test]
async fn a_desktop_row_the_cloud_refuses_in_a_renamed_table_is_a_dead_letter_not_a_write() {
    let (db, config) = synced().await;
    // A reminder for a staff member the cloud does not have: its foreign key refuses it.
    let orphan =
        "INSERT INTO mbreminder (rem_id, staff_id, rem_subject) VALUES (900002, 99999, 'Orphan')";
    exec(&uncaptured(&db).await, orphan).await;
    let report = reconcile_all(&config, false).await;
    let cloud = db.cloud().await;
    is(&cloud, "reminder WHERE rem_id = 900002", 0).await;
    let open = "tandem.dead_letters WHERE table_name = 'reminder' AND resolved_at IS NULL";
    is(&cloud, open, 1).await;
    let refused = with_the_orphans(&[("mbreminder", "forward", [0, 0, 0, 0, 1])]);
    assert_eq!(summary(&report), refused, "{:#?}", report.rows);
}

/// Runs the binary with `args` (split at spaces) on `config`: (exit code, stdout, stdout and stderr).
fn tandem(config: &std::path::Path, args: &str) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.arg("-c").arg(config).args(args.split(' '));
    let out = crate::support::output_of(
        cmd.env_remove("TANDEM_DESKTOP_URL")
            .env_remove("TANDEM_CLOUD_URL"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout, all)
}

/// A report row as `--json` prints it, `seconds` zeroed.
fn json_row(table: &str, direction: &str, [i, u, d, same]: [u64; 4]) -> serde_json::Value {
    json!({"table": table, "direction": direction, "inserted": i, "updated": u, "deleted": d,
           "unchanged": same, "conflicts": 0, "dead_letters": 0, "seconds": 0})
}

/// `--json` output, its (positive) `seconds` zeroed.
fn parse(out: &str) -> serde_json::Value {
    let mut report: serde_json::Value =
        serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut seconds = vec![report["seconds"].take()];
    for row in report["rows"].as_array_mut().expect("rows") {
        seconds.push(row["seconds"].take());
        row["seconds"] = json!(0);
    }
    assert!(
        seconds.iter().all(|s| s.as_f64().is_some_and(|s| s >= 0.0)),
        "{out}"
    );
    report["seconds"] = json!(0);
    report
}

#[tokio::test]
async fn the_cli_reconciles_one_table_as_json() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let jobs = "INSERT INTO orgmaster (org_id, org_name) VALUES (1, 'Org');
                INSERT INTO climaster (client_id, org_id, client_name) VALUES (1, 1, 'Client');
                INSERT INTO jobshead (job_id, client_id, org_id, job_name, job_status)
                     VALUES (1, 1, 1, 'GST return', 'Open'), (2, 1, 1, 'ITR', 'Open'), (3, 1, 1, 'Audit', 'Open');";
    exec(&desktop, jobs).await;
    setup::init(&config, false).await.unwrap();
    run_once(&config).await;
    let import = "UPDATE jobshead SET job_status = 'Closed' WHERE job_id = 2;
                  INSERT INTO orgmaster VALUES (2, 'Not asked for');";
    exec(&uncaptured(&db).await, import).await;
    let stray =
        "INSERT INTO jobshead (job_id, client_id, job_name, source) VALUES (50, 1, 'Stray', 'D')";
    exec(&as_tandem(&db).await, stray).await;
    let phone = "INSERT INTO jobshead (job_id, client_id, job_name) VALUES (60, 1, 'Phone job')";
    exec(&cloud, phone).await;
    let file = std::env::temp_dir().join(format!("{}-reconcile.toml", db.name));
    let text = sample::CONFIG.replace("${DESKTOP_URL}", &db.desktop_url);
    let text = text.replace("${CLOUD_URL}", &db.cloud_url);
    std::fs::write(
        &file,
        text.replace("slot = \"tandem\"", &format!("slot = \"{}\"", db.name)),
    )
    .unwrap();
    let run = |args: &'static str| {
        let file = file.clone();
        async move {
            tokio::task::spawn_blocking(move || tandem(&file, args))
                .await
                .unwrap()
        }
    };

    let (code, out, all) = run("reconcile --table jobshead --direction forward --json").await;
    assert_eq!(code, 0, "{all}");
    let rows = [json_row("jobshead", "forward", [0, 1, 1, 2])];
    let retried = json!({"forward": 0, "reverse": 0});
    let expected = json!({"dry_run": false, "direction": "forward", "seconds": 0, "rows": rows,
                          "skipped": [], "dead_letters_retried": retried});
    assert_eq!(parse(&out), expected, "{out}");
    is(&cloud, "jobshead WHERE job_status = 'Closed'", 1).await;
    is(&cloud, "jobshead WHERE job_id = 50", 0).await;
    // Forward only, one table: the phone's job is not brought, the other table is not repaired.
    is(&desktop, "jobshead WHERE job_id = 60", 0).await;
    is(&cloud, "orgmaster", 1).await;

    let (code, out, all) = run("reconcile --table jobshead --json").await;
    assert_eq!(code, 0, "{all}");
    let rows = [
        json_row("jobshead", "forward", [0, 0, 0, 3]),
        json_row("jobshead", "reverse", [1, 0, 0, 0]),
    ];
    let expected = json!({"dry_run": false, "direction": "both", "seconds": 0, "rows": rows,
                          "skipped": [], "dead_letters_retried": retried});
    assert_eq!(parse(&out), expected, "{out}");
    is(&desktop, "jobshead WHERE job_id = 60", 1).await;

    let (code, _, all) = run("reconcile --table nosuch").await;
    assert_ne!(code, 0, "{all}");
    for name in ["nosuch", "jobshead", "mbreminder", "workdiary"] {
        assert!(all.contains(name), "{name}: {all}");
    }
    std::fs::remove_file(&file).unwrap();
}

/// The journal holds what phones did that the desktop may not have received: a reconcile removes the
/// entries it read and those the table's horizon sees (the stream delivered them), so it does not grow
/// while the stream keeps up; an entry the desktop has not received stays until a reconcile reads it.
#[tokio::test]
async fn a_reconcile_prunes_the_journal_of_what_the_desktop_received() {
    let (db, config) = synced().await;
    let cloud = db.cloud().await;
    let jobs = jobs_with_tasks(&db.desktop().await, 1).await;
    exec(
        &cloud,
        &with(
            "INSERT INTO jobtasks (job_id, client_id, task_name) \
             SELECT job_id, client_id, 'phone task' FROM jobshead WHERE job_id = {0}; \
             UPDATE jobtasks SET task_name = 'phone edit' WHERE ctid = \
               (SELECT ctid FROM jobtasks WHERE job_id = {0} AND source = 'D' LIMIT 1)",
            &jobs,
        ),
    )
    .await;
    is(&cloud, "tandem.journal WHERE table_name = 'jobtasks'", 2).await;
    run_once(&config).await;
    // Received: the stream brought them, and the horizon moved past them.
    let report = reconcile_all(&config, false).await;
    assert!(report.complete(), "{:?}", report.skipped);
    is(&cloud, "tandem.journal", 0).await;
    assert_sides_equal(&db, &config).await;
}
