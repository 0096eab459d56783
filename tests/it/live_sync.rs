//! Live sync (issue 11): a reconcile beside a streaming `run` loses and reverts nothing, a table added
//! while `run` runs is synced and then streamed without a restart, and `run --once` beside a running
//! `run` waits for it instead of applying twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tandem::config::Config;
use tandem::ops::reconcile::{self, Direction, Request};
use tandem::pipeline::sync::Quiet;
use tandem::pipeline::{self, RunOptions};
use tandem::{sample, setup};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::any_schema::{OWNERSHIP, installed_with};
use crate::support::{Streaming, TestDb, count, rows};

/// Waits until `sql` (a boolean query) holds on `client`, with a deadline.
async fn until(client: &Client, what: &str, sql: &str) {
    let held = tandem::cluster::wait_until(Duration::from_secs(60), || async {
        client
            .query_one(sql, &[])
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    })
    .await;
    assert!(held, "timed out waiting for: {what} ({sql})");
}

/// Waits until `rows` (a table and a condition) is exactly one row on `client`.
async fn arrives(client: &Client, rows: &str) {
    until(client, rows, &format!("SELECT count(*) = 1 FROM {rows}")).await;
}

/// No conflict and no dead letter on either side.
async fn nothing_logged(desktop: &Client, cloud: &Client) {
    for client in [desktop, cloud] {
        let n = "SELECT (SELECT count(*) FROM tandem.conflicts) + (SELECT count(*) FROM tandem.dead_letters)";
        assert_eq!(count(client, n).await, 0);
    }
}

async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Runs `sql`, which must write one row.
async fn one(client: &Client, sql: &str) {
    let n = client.execute(sql, &[]).await;
    assert_eq!(n.unwrap_or_else(|e| panic!("{sql}: {e}")), 1, "{sql}");
}

async fn ints(client: &Client, sql: String) -> Vec<i32> {
    let rows = client.query(&sql, &[]).await;
    let rows = rows.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter().map(|r| r.get(0)).collect()
}

/// The texts of the first column `sql` returns.
async fn texts(client: &Client, sql: &str) -> Vec<String> {
    let rows = client.query(sql, &[]).await;
    let rows = rows.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter().map(|r| r.get(0)).collect()
}

/// Every configured table whose desktop rows differ from its cloud rows (by the text of the columns
/// that travel), with a sample of the difference. The seed's 3 orphan clients never reach the cloud
/// (their org is missing: forward dead letters), so they are left out.
async fn differing(desktop: &Client, cloud: &Client, config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for t in &config.tables {
        let (d, c) = (&t.table.desktop, &t.table.cloud);
        let names = texts(
            desktop,
            &format!(
                "SELECT column_name::text FROM information_schema.columns
                  WHERE table_schema = '{}' AND table_name = '{}' ORDER BY ordinal_position",
                d.schema, d.name
            ),
        )
        .await;
        let cols: Vec<String> = names
            .iter()
            .filter(|n| !t.skip_to_cloud.contains(n) && !t.skip_to_desktop.contains(n))
            .map(|n| format!("\"{n}\""))
            .collect();
        let cols = cols.join(", ");
        let filter = match d.name.as_str() {
            "climaster" => "org_id IN (SELECT org_id FROM orgmaster)",
            _ => "true",
        };
        let on_desktop = rows(desktop, &d.quoted(), &cols, filter).await;
        let on_cloud = rows(cloud, &c.quoted(), &cols, "true").await;
        if on_desktop != on_cloud {
            let only = |a: &[String], b: &[String]| -> Vec<String> {
                a.iter()
                    .filter(|r| !b.contains(r))
                    .take(3)
                    .cloned()
                    .collect()
            };
            out.push(format!(
                "{}: {} desktop rows, {} cloud rows; only on the desktop: {:?}; only in the cloud: {:?}",
                t.table,
                on_desktop.len(),
                on_cloud.len(),
                only(&on_desktop, &on_cloud),
                only(&on_cloud, &on_desktop)
            ));
        }
    }
    out
}

/// Waits (60 s) until every configured table holds the same rows on both sides.
async fn converged(desktop: &Client, cloud: &Client, config: &Config) {
    let same = tandem::cluster::wait_until(Duration::from_secs(60), || async {
        differing(desktop, cloud, config).await.is_empty()
    })
    .await;
    let left = differing(desktop, cloud, config).await;
    assert!(same, "the sides never converged: {left:#?}");
}

const BOTH: &[&str] = &["desktop", "cloud"];
const CLOUD: &[&str] = &["cloud"];

/// What must hold at the end, per row a writer wrote: a query naming the row, on which sides it runs,
/// and the one text it must return there. A later write of the same row replaces the check.
#[derive(Default)]
struct Last(HashMap<String, (&'static [&'static str], String)>);

impl Last {
    fn set(&mut self, sides: &'static [&'static str], sql: String, want: &str) {
        self.0.insert(sql, (sides, want.to_string()));
    }

    async fn verify(&self, desktop: &Client, cloud: &Client) {
        for (sql, (sides, want)) in &self.0 {
            for &side in *sides {
                let got = texts(if side == "desktop" { desktop } else { cloud }, sql).await;
                assert_eq!(got, vec![want.clone()], "on the {side}: {sql}");
            }
        }
    }
}

/// Copies job `from` as job `id` named `name` (the cloud's foreign keys hold).
fn new_job(id: i32, name: &str, from: i32) -> String {
    format!(
        "INSERT INTO jobshead (job_id, client_id, org_id, loc_id, jobm_id, job_name, job_status, job_date)
         SELECT {id}, client_id, org_id, loc_id, jobm_id, '{name}', job_status, job_date
           FROM jobshead WHERE job_id = {from}"
    )
}

fn job_name(job: i32) -> String {
    format!("SELECT job_name::text FROM jobshead WHERE job_id = {job}")
}

fn owner(job: i32) -> String {
    format!("SELECT coalesce(source, 'D')::text FROM jobshead WHERE job_id = {job}")
}

/// The task names of job `job` (those `LIKE like`), distinct.
fn task_names(job: i32, like: &str) -> String {
    format!(
        "SELECT string_agg(DISTINCT task_name, ',') FROM jobtasks
          WHERE job_id = {job} AND task_name LIKE '{like}'"
    )
}

/// How many rounds a writer made; set `stop` to end it.
#[derive(Clone, Default)]
struct Pace {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
}

impl Pace {
    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Counts a round; whether to go on.
    fn next(&self) -> bool {
        self.rounds.fetch_add(1, Ordering::SeqCst);
        !self.stop.load(Ordering::SeqCst)
    }
}

/// The desktop app, capture on, until stopped: edits the jobs `jobs` (jobshead), every task of the
/// jobs `task_jobs`, and inserts a job now and then.
async fn desktop_writer(c: Client, jobs: Vec<i32>, tjobs: Vec<i32>, pace: Pace) -> Last {
    let mut last = Last::default();
    for i in 0.. {
        let (job, tjob) = (jobs[i % jobs.len()], tjobs[i % tjobs.len()]);
        let (remarks, task) = (format!("desk remarks {i}"), format!("desk task {i}"));
        let sql = format!(
            "UPDATE jobshead SET remarks = '{remarks}' WHERE job_id = {job};
             UPDATE jobtasks SET task_name = '{task}' WHERE job_id = {tjob};"
        );
        exec(&c, &sql).await;
        let sql = format!("SELECT remarks FROM jobshead WHERE job_id = {job}");
        last.set(BOTH, sql, &remarks);
        last.set(CLOUD, owner(job), "D");
        last.set(BOTH, task_names(tjob, "%"), &task);
        if i % 10 == 0 {
            let (id, name) = (500_000 + i as i32, format!("desk new job {i}"));
            one(&c, &new_job(id, &name, jobs[0])).await;
            last.set(BOTH, job_name(id), &name);
            last.set(CLOUD, owner(id), "D");
        }
        if !pace.next() {
            break;
        }
    }
    last
}

/// A phone (plain cloud writes: they become 'M'), until stopped: edits the jobs `jobs` and the tasks
/// `tasks` (jt_id, job: one per job), and inserts a job and a task now and then.
async fn phone_writer(c: Client, jobs: Vec<i32>, tasks: Vec<(i64, i32)>, pace: Pace) -> Last {
    let mut last = Last::default();
    for i in 0.. {
        let (job, (jt_id, tjob)) = (jobs[i % jobs.len()], tasks[i % tasks.len()]);
        let (name, task) = (format!("phone name {i}"), format!("phone task {i}"));
        let sql = format!(
            "UPDATE jobshead SET job_name = '{name}' WHERE job_id = {job};
             UPDATE jobtasks SET task_name = '{task}' WHERE jt_id = {jt_id};"
        );
        exec(&c, &sql).await;
        last.set(BOTH, job_name(job), &name);
        last.set(CLOUD, owner(job), "M");
        last.set(BOTH, task_names(tjob, "phone task %"), &task);
        let sql = format!("SELECT task_name || ' ' || source FROM jobtasks WHERE jt_id = {jt_id}");
        last.set(CLOUD, sql, &format!("{task} M"));
        if i % 10 == 5 {
            let (id, name) = (600_000 + i as i32, format!("phone new job {i}"));
            let new = format!("phone new task {i}");
            one(&c, &new_job(id, &name, jobs[0])).await;
            let sql = format!(
                "INSERT INTO jobtasks (job_id, client_id, task_id, staff_id, task_name, task_status)
                 SELECT job_id, client_id, task_id, staff_id, '{new}', task_status
                   FROM jobtasks WHERE jt_id = {jt_id}"
            );
            one(&c, &sql).await;
            last.set(BOTH, job_name(id), &name);
            last.set(CLOUD, owner(id), "M");
            last.set(BOTH, task_names(tjob, &new), &new);
        }
        if !pace.next() {
            break;
        }
    }
    last
}

fn ids(jobs: &[i32]) -> String {
    jobs.iter()
        .map(|j| j.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test]
async fn a_reconcile_beside_streaming_loses_and_reverts_nothing() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    let mut desktop = db.desktop().await;
    sample::seed(&mut desktop, &config, 0.03).await.unwrap();
    setup::init(&config, false).await.unwrap();
    let cloud = db.cloud().await;

    // Distinct rows for every role. Childless jobs (no task, checklist or diary) for the jobshead rows
    // the phone writes or the drift deletes: no foreign key breaks, no jobtasks scope changes through
    // the lookup. Jobs with 2+ distinct tasks for the jobtasks roles (and the desktop's jobshead edits,
    // which change their tasks' scope through the lookup).
    let alone = "NOT EXISTS (SELECT 1 FROM taskchecklist c WHERE c.job_id = j.job_id)
                 AND NOT EXISTS (SELECT 1 FROM workdiary w WHERE w.job_id = j.job_id)";
    let sql = format!(
        "SELECT job_id FROM jobshead j WHERE {alone}
            AND NOT EXISTS (SELECT 1 FROM jobtasks t WHERE t.job_id = j.job_id) ORDER BY job_id"
    );
    let childless = ints(&desktop, sql).await;
    let sql = format!(
        "SELECT job_id FROM jobtasks j WHERE job_id % 1200 <> 600 AND {alone} GROUP BY job_id
          HAVING count(*) >= 2 AND count(DISTINCT j::text) = count(*) ORDER BY job_id"
    );
    let tasked = ints(&desktop, sql).await;
    assert!(childless.len() >= 18 && tasked.len() >= 21, "too few jobs");
    let (cloud_deleted, cloud_changed) = (&childless[0..3], &childless[3..6]);
    let (desk_changed, desk_deleted, from) = (&childless[6..9], childless[9], childless[0]);
    let phone_jobs = childless[10..18].to_vec();
    let (desk_task_jobs, phone_task_jobs) = (tasked[0..4].to_vec(), &tasked[4..8]);
    let t = &tasked[8..13];
    let desk_jobs = tasked[13..21].to_vec();

    let run = Streaming::start(&config);
    let synced = "SELECT count(*) = 15 AND bool_and(state = 'streaming' AND synced_at IS NOT NULL)
                    FROM tandem.table_state";
    until(&desktop, "the initial sync is done", synced).await;
    converged(&desktop, &cloud, &config).await;

    // Drift the stream cannot see. A phone's job and task reach the desktop, which then loses them and
    // changes rows, capture off; the cloud's desktop-owned rows are changed by hand as tandem would
    // (no 'M', no journal).
    let sql = format!(
        "{}; INSERT INTO jobtasks (job_id, client_id, task_id, staff_id, task_name, task_status)
           SELECT job_id, client_id, task_id, staff_id, 'phone task lost', task_status
             FROM jobtasks WHERE job_id = {} ORDER BY jt_id LIMIT 1",
        new_job(800_001, "phone job lost", from),
        t[4]
    );
    exec(&cloud, &sql).await;
    let lost = "SELECT (SELECT count(*) FROM jobshead WHERE job_id = 800001)
                     + (SELECT count(*) FROM jobtasks WHERE task_name = 'phone task lost') = 2";
    until(&desktop, "the phone's job and task arrive", lost).await;
    let sql = format!(
        "SET session_replication_role = replica;
         DELETE FROM jobshead WHERE job_id = 800001;
         DELETE FROM jobtasks WHERE task_name = 'phone task lost';
         UPDATE jobshead SET remarks = 'desk drift' WHERE job_id IN ({});
         DELETE FROM jobshead WHERE job_id = {desk_deleted};
         {};
         UPDATE jobtasks SET task_status = 'drift' WHERE job_id = {};
         DELETE FROM jobtasks WHERE ctid = (SELECT min(ctid) FROM jobtasks WHERE job_id = {});",
        ids(desk_changed),
        new_job(700_001, "desk drift job", from),
        t[2],
        t[3]
    );
    exec(&db.desktop().await, &sql).await;
    let sql = format!(
        "SELECT set_config('tandem.applying', 'on', false);
         DELETE FROM jobshead WHERE job_id IN ({});
         UPDATE jobshead SET job_name = 'cloud drift' WHERE job_id IN ({});
         DELETE FROM jobtasks WHERE job_id = {};
         UPDATE jobtasks SET task_name = 'cloud drift' WHERE job_id = {};
         SELECT set_config('tandem.applying', '', false);",
        ids(cloud_deleted),
        ids(cloud_changed),
        t[0],
        t[1]
    );
    exec(&cloud, &sql).await;
    let drift = differing(&desktop, &cloud, &config).await;
    assert_eq!(drift.len(), 2, "jobshead and jobtasks drifted: {drift:#?}");

    // The desktop app and a phone write; a reconcile starts while they do and they go on after it.
    let mut tasks = Vec::new();
    for &job in phone_task_jobs {
        let sql = format!("SELECT min(jt_id) FROM jobtasks WHERE job_id = {job}");
        tasks.push((cloud.query_one(&sql, &[]).await.unwrap().get(0), job));
    }
    let (desk_pace, phone_pace) = (Pace::default(), Pace::default());
    let desk = desktop_writer(
        db.desktop().await,
        desk_jobs,
        desk_task_jobs,
        desk_pace.clone(),
    );
    let phone = phone_writer(db.cloud().await, phone_jobs, tasks, phone_pace.clone());
    let (desk_writer, phone_writer) = (tokio::spawn(desk), tokio::spawn(phone));
    let going = |d: u64, p: u64| {
        let (desk_pace, phone_pace) = (desk_pace.clone(), phone_pace.clone());
        tandem::cluster::wait_until(Duration::from_secs(30), move || {
            let ok = desk_pace.rounds() >= d && phone_pace.rounds() >= p;
            async move { ok }
        })
    };
    assert!(going(20, 20).await, "the writers never got going");
    let request = Request {
        tables: Vec::new(),
        direction: Direction::Both,
        dry_run: false,
        trigger: "command",
    };
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        reconcile::reconcile(&config, &request, &Quiet),
    )
    .await
    .expect("the reconcile beside the running run did not return in 120 s")
    .unwrap();
    let went_on = going(desk_pace.rounds() + 30, phone_pace.rounds() + 30).await;
    desk_pace.stop.store(true, Ordering::SeqCst);
    phone_pace.stop.store(true, Ordering::SeqCst);
    let (desk, phone) = (desk_writer.await.unwrap(), phone_writer.await.unwrap());
    assert!(went_on, "the writers stalled after the reconcile");
    assert!(report.complete(), "{:?}", report.skipped);
    // Every row given to each writer was written, and both inserted rows too.
    let n = |last: &Last, part: &str| last.0.keys().filter(|k| k.contains(part)).count();
    let given = (
        n(&desk, "remarks"),
        n(&desk, "LIKE '%'"),
        n(&phone, "LIKE 'phone task %'"),
    );
    assert_eq!(given, (8, 4, 4));
    assert!(
        n(&desk, "= 500") > 0 && n(&phone, "new task") > 0,
        "nothing inserted"
    );

    // Both sides converge, and nothing written meanwhile was lost or reverted.
    converged(&desktop, &cloud, &config).await;
    desk.verify(&desktop, &cloud).await;
    phone.verify(&desktop, &cloud).await;

    // The drift is repaired (the convergence says so; these say which way): the rows the cloud lost
    // are back, as the desktop's; the desktop's edits made with capture off reached the cloud, the
    // cloud's hand edits are gone; the phone's rows the desktop lost are back, still the phone's.
    let summary = format!(
        "SELECT concat_ws(' ',
           (SELECT count(*) FROM jobshead WHERE job_id IN ({}, 700001, 800001)),
           (SELECT count(*) FROM jobshead WHERE job_id = {desk_deleted}),
           (SELECT count(*) FROM jobshead WHERE remarks = 'desk drift'),
           (SELECT count(*) FROM jobshead WHERE job_name = 'cloud drift'),
           (SELECT count(*) FROM jobtasks WHERE task_name = 'cloud drift'),
           (SELECT count(*) FROM jobtasks WHERE task_name = 'phone task lost'),
           (SELECT count(*) >= 2 FROM jobtasks WHERE task_status = 'drift' AND job_id = {}))",
        ids(cloud_deleted),
        t[2]
    );
    for client in [&desktop, &cloud] {
        assert_eq!(texts(client, &summary).await, vec!["5 0 3 0 0 1 t"]);
    }
    let owners = format!(
        "SELECT string_agg(coalesce(source, 'D'), '' ORDER BY job_id) FROM jobshead
          WHERE job_id IN ({}, 700001, 800001)",
        ids(cloud_deleted)
    );
    assert_eq!(texts(&cloud, &owners).await, vec!["DDDDM"]);
    // What the reconcile says it did covers at least the drift.
    let of = |table: &str, direction: &str| {
        let row = report
            .rows
            .iter()
            .find(|r| r.table == table && r.direction == direction);
        row.map(|r| r.counts)
            .unwrap_or_else(|| panic!("{table} {direction}: {:?}", report.rows))
    };
    let (f, r) = (of("jobshead", "forward"), of("jobshead", "reverse"));
    assert!(f.inserted >= 4 && f.updated >= 6 && f.deleted >= 1, "{f:?}");
    let (tf, tr) = (of("jobtasks", "forward"), of("jobtasks", "reverse"));
    let repaired = r.inserted >= 1 && tf.written() >= 3 && tr.inserted >= 1;
    assert!(repaired, "{r:?} {tf:?} {tr:?}");

    // Distinct rows per writer: no conflict; the only dead letters are the 3 orphan clients.
    for client in [&desktop, &cloud] {
        let conflicts = rows(client, "tandem.conflicts", "table_name, reason", "true").await;
        assert!(conflicts.is_empty(), "{conflicts:?}");
    }
    let open = "SELECT count(*) FROM tandem.dead_letters WHERE resolved_at IS NULL";
    assert_eq!(count(&desktop, open).await, 0);
    let open = texts(
        &cloud,
        "SELECT DISTINCT table_name || ' ' || row_key::text FROM tandem.dead_letters
          WHERE resolved_at IS NULL ORDER BY 1",
    )
    .await;
    assert_eq!(open.len(), 3, "{open:?}");
    assert!(open.iter().all(|r| r.starts_with("climaster ")), "{open:?}");
    let recorded = "SELECT count(*) FROM tandem.reconciles WHERE trigger = 'command'";
    assert_eq!(count(&desktop, recorded).await, 1);
    let done = run.stop().await;
    assert!(done.parked.is_empty(), "{:?}", done.parked);
}

/// A config file naming `tables`, with the test's URLs written in it (`run` reads it again on its
/// schema recheck).
fn write_config(path: &std::path::Path, db: &TestDb, tables: &str) {
    let (d, c, slot) = (&db.desktop_url, &db.cloud_url, &db.name);
    let text = format!(
        "[desktop]\nurl = \"{d}\"\n[cloud]\nurl = \"{c}\"\nslot = \"{slot}\"\n\
         [sync]\nschema_recheck_ms = 200\n{tables}"
    );
    std::fs::write(path, text).unwrap();
}

/// The rows of `table` (`columns`) on `client`, in byte order, as one text.
async fn all(client: &Client, table: &str, columns: &str) -> String {
    let mut rows = rows(client, table, columns, "true").await;
    rows.sort();
    rows.join(" ")
}

/// Waits until `table` holds the same rows (`columns`) on both sides; returns whether it did.
async fn same(desktop: &Client, cloud: &Client, table: &str, columns: &str) -> bool {
    tandem::cluster::wait_until(Duration::from_secs(60), || async {
        all(desktop, table, columns).await == all(cloud, table, columns).await
    })
    .await
}

const ITEM: &str = "[[tables]]\ndesktop = \"item\"\nkey = [\"id\"]\n";
const ADDED: &str = "[[tables]]\ndesktop = \"memo\"\nkey = [\"id\"]\n\
                     [[tables]]\ndesktop = \"entry\"\ncloud_key = \"entry_id\"\nscope = [\"grp\"]\n";

#[tokio::test]
async fn a_table_added_while_run_runs_is_synced_then_streamed_without_restart() {
    // `item` is configured; `memo` (desktop key) and `entry` (cloud key) exist on both sides, not yet.
    let (db, _) = installed_with(
        "CREATE TABLE item (id int PRIMARY KEY, name text);
         CREATE TABLE memo (id int PRIMARY KEY, body text);
         CREATE TABLE entry (grp int, body text); CREATE INDEX ON entry (grp);",
        &format!(
            "CREATE TABLE item (id int PRIMARY KEY, name text, {OWNERSHIP});
             CREATE TABLE memo (id int PRIMARY KEY, body text, {OWNERSHIP});
             CREATE TABLE entry (entry_id bigserial PRIMARY KEY, grp int, body text, {OWNERSHIP});
             CREATE INDEX ON entry (grp);"
        ),
        ITEM,
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    exec(
        &desktop,
        "INSERT INTO item VALUES (1, 'desk item');
                    INSERT INTO memo VALUES (1, 'desk one'), (2, 'desk two');
                    INSERT INTO entry VALUES (1, 'desk e1'), (1, 'desk e1 again'), (2, 'desk e2');",
    )
    .await;
    // Rows phones made before the tables were synced (no trigger marks them yet: written as 'M').
    exec(
        &cloud,
        "INSERT INTO memo (id, body, source) VALUES (10, 'phone ten', 'M');
                  INSERT INTO entry (grp, body, source) VALUES (10, 'phone e10', 'M');",
    )
    .await;
    let path = std::env::temp_dir().join(format!("{}-live.toml", db.name));
    write_config(&path, &db, ITEM);
    let config = Config::load(&path).unwrap();
    assert_eq!(config.origin, path.display().to_string());
    let run = Streaming::start(&config);
    arrives(&cloud, "item WHERE id = 1").await;
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM memo WHERE source = 'D'").await,
        0
    );

    // The tables are added to the file and set up; the run is not touched. Changes made right after
    // init, before the run picked the tables up, must not fall between.
    write_config(&path, &db, &format!("{ITEM}{ADDED}"));
    setup::init(&Config::load(&path).unwrap(), false)
        .await
        .unwrap();
    exec(
        &desktop,
        "INSERT INTO memo VALUES (3, 'desk three, after init');
                    UPDATE memo SET body = 'desk two, after init' WHERE id = 2;
                    INSERT INTO entry VALUES (3, 'desk e3, after init');",
    )
    .await;
    exec(
        &cloud,
        "INSERT INTO memo (id, body) VALUES (11, 'phone eleven, after init');
                  INSERT INTO entry (grp, body) VALUES (11, 'phone e11, after init');",
    )
    .await;
    let then = rows(
        &desktop,
        "tandem.table_state",
        "table_name, state, synced_at",
        "table_name <> 'item'",
    )
    .await;
    until(
        &desktop,
        "memo and entry are synced and stream",
        "SELECT count(*) = 2 AND bool_and(state = 'streaming' AND synced_at IS NOT NULL)
           FROM tandem.table_state WHERE table_name IN ('memo', 'entry')",
    )
    .await;
    let (memo, entry) = ("id, body", "grp, body");
    let both =
        same(&desktop, &cloud, "memo", memo).await && same(&desktop, &cloud, "entry", entry).await;
    let memo_s = "id, body, coalesce(source, 'D')";
    let entry_s = "grp, body, coalesce(source, 'D')";
    assert!(
        both,
        "tables right after init: {then:?}; memo: {} | {}; entry: {} | {}",
        all(&desktop, "memo", memo).await,
        all(&cloud, "memo", memo_s).await,
        all(&desktop, "entry", entry).await,
        all(&cloud, "entry", entry_s).await
    );
    assert_eq!(
        all(&cloud, "memo", memo_s).await,
        "(1,\"desk one\",D) (10,\"phone ten\",M) (11,\"phone eleven, after init\",M) \
         (2,\"desk two, after init\",D) (3,\"desk three, after init\",D)",
        "tables right after init: {then:?}"
    );
    assert_eq!(
        all(&cloud, "entry", entry_s).await,
        "(1,\"desk e1 again\",D) (1,\"desk e1\",D) (10,\"phone e10\",M) \
         (11,\"phone e11, after init\",M) (2,\"desk e2\",D) (3,\"desk e3, after init\",D)",
        "tables right after init: {then:?}"
    );

    // Then they stream both ways, in the same run (and `item` still does).
    exec(
        &desktop,
        "INSERT INTO memo VALUES (4, 'desk four'); INSERT INTO entry VALUES (4, 'desk e4');
                    UPDATE memo SET body = 'desk one, edited' WHERE id = 1;
                    INSERT INTO item VALUES (2, 'desk item two');",
    )
    .await;
    exec(
        &cloud,
        "INSERT INTO memo (id, body) VALUES (12, 'phone twelve');
                  UPDATE memo SET body = 'phone ten, edited' WHERE id = 10;
                  INSERT INTO entry (grp, body) VALUES (12, 'phone e12');",
    )
    .await;
    arrives(&cloud, "memo WHERE id = 4 AND source = 'D'").await;
    arrives(
        &cloud,
        "memo WHERE body = 'desk one, edited' AND source = 'D'",
    )
    .await;
    arrives(&cloud, "entry WHERE grp = 4 AND source = 'D'").await;
    arrives(&cloud, "item WHERE id = 2").await;
    arrives(&desktop, "memo WHERE id = 12 AND body = 'phone twelve'").await;
    arrives(
        &desktop,
        "memo WHERE id = 10 AND body = 'phone ten, edited'",
    )
    .await;
    arrives(&desktop, "entry WHERE grp = 12").await;
    until(
        &desktop,
        "the outbox drains",
        "SELECT count(*) = 0 FROM tandem.outbox",
    )
    .await;
    let report = run.stop().await;
    std::fs::remove_file(&path).unwrap();
    assert!(report.parked.is_empty(), "{:?}", report.parked);
    assert_eq!(
        all(&desktop, "memo", memo).await,
        all(&cloud, "memo", memo).await
    );
    assert_eq!(
        all(&desktop, "entry", entry).await,
        all(&cloud, "entry", entry).await
    );
    assert_eq!(count(&desktop, "SELECT count(*) FROM memo").await, 7);
    assert_eq!(count(&desktop, "SELECT count(*) FROM entry").await, 8);
    nothing_logged(&desktop, &cloud).await;
}

#[tokio::test]
async fn run_once_beside_a_running_run_waits_for_it_instead_of_applying_twice() {
    let (db, config) = installed_with(
        "CREATE TABLE item (id int PRIMARY KEY, name text);
         CREATE TABLE line (grp int, label text); CREATE INDEX ON line (grp);",
        &format!(
            "CREATE TABLE item (id int PRIMARY KEY, name text, {OWNERSHIP});
             CREATE TABLE line (line_id bigserial PRIMARY KEY, grp int, label text, {OWNERSHIP});
             CREATE INDEX ON line (grp);"
        ),
        "[[tables]]\ndesktop = \"item\"\nkey = [\"id\"]\n\
         [[tables]]\ndesktop = \"line\"\ncloud_key = \"line_id\"\nscope = [\"grp\"]\n",
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    exec(&desktop, "INSERT INTO item VALUES (0, 'warm-up')").await;
    let run = Streaming::start(&config);
    arrives(&cloud, "item WHERE id = 0").await;
    for round in 1..=3 {
        // A scope of two equal rows: applied twice it would be four in the cloud.
        exec(
            &desktop,
            &format!(
            "INSERT INTO line VALUES ({round}, 'desk line {round}'), ({round}, 'desk line {round}');
             INSERT INTO item VALUES ({round}, 'desk item {round}');
             UPDATE item SET name = 'edited in round {round}' WHERE id = 0;"
        ),
        )
        .await;
        let phone = 100 + round;
        exec(
            &cloud,
            &format!("INSERT INTO item (id, name) VALUES ({phone}, 'phone item {round}')"),
        )
        .await;
        let once = pipeline::run(&config, RunOptions { once: true }, CancellationToken::new());
        let Ok(once) = tokio::time::timeout(Duration::from_secs(60), once).await else {
            let lines = rows(&cloud, "line", "label", &format!("grp = {round}")).await;
            panic!(
                "round {round}: run --once beside a running run did not return in 60 s \
                 (the round's lines in the cloud by then: {lines:?})"
            );
        };
        let once = once.unwrap_or_else(|e| panic!("round {round}: run --once failed: {e}"));
        assert!(once.parked.is_empty(), "{:?}", once.parked);
        for stats in [&once.forward, &once.reverse] {
            let trouble = stats.outcome.conflicts + stats.outcome.dead_letters;
            assert_eq!(trouble, 0, "round {round}: {once:?}");
        }
        // Committed before it started: in the cloud when it returns, once.
        let lines = rows(&cloud, "line", "label", &format!("grp = {round}")).await;
        assert_eq!(
            lines,
            vec![format!("(\"desk line {round}\")"); 2],
            "round {round}"
        );
        let items = rows(&cloud, "item", "id, name", &format!("id IN (0, {round})")).await;
        let want = [
            format!("(0,\"edited in round {round}\")"),
            format!("({round},\"desk item {round}\")"),
        ];
        assert_eq!(items, want, "round {round}");
        arrives(&desktop, &format!("item WHERE id = {phone}")).await;
    }
    until(
        &desktop,
        "the outbox drains",
        "SELECT count(*) = 0 FROM tandem.outbox",
    )
    .await;
    let report = run.stop().await;
    assert!(report.parked.is_empty(), "{:?}", report.parked);
    // Nothing applied twice: each line once in the cloud, the sides equal.
    assert_eq!(count(&cloud, "SELECT count(*) FROM line").await, 6);
    assert_eq!(
        all(&desktop, "line", "grp, label").await,
        all(&cloud, "line", "grp, label").await
    );
    assert_eq!(
        all(&desktop, "item", "id, name").await,
        all(&cloud, "item", "id, name").await
    );
    assert_eq!(count(&desktop, "SELECT count(*) FROM item").await, 7);
    nothing_logged(&desktop, &cloud).await;
}
