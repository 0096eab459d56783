//! Initial sync and reconcile benchmark: `cargo bench --bench sync`.
//!
//! Starts two throwaway clusters (both `wal_level = logical`, fsync on) and measures, each part on
//! fresh databases:
//! 1. the seeds-sized initial sync (the PowerCA sample, `sample::seed` at scale 1.0, ~92k rows) into an
//!    empty cloud: `setup::init`, then `pipeline::run(once)`, timed from the start of the run to its
//!    return, beside a plain COPY floor into the same cloud schema (with its foreign keys) in the same
//!    run, and a dry-run reconcile on the same state as the "scan only" part;
//! 2. a reconcile right after, when both sides are in sync (time, rows written, cloud xmins);
//! 3. a 1M-row desktop-key table: a reconcile when in sync and after 1% drift, each run as the release
//!    binary in a child process (`tandem reconcile --json`) so its peak RSS can be read, beside the raw
//!    hash stream floor (both sides' `(id, hash)` COPY streams, merged naively).
//!
//! Where tandem's time goes is measured from outside: the phases from `tandem.table_state.synced_at`
//! and the `sync` record in `tandem.reconciles`, the slowest statements from both servers' logs
//! (`log_min_duration_statement` turned on with ALTER SYSTEM around the run and the floor). Two
//! diagnostics on another fresh pair: the initial sync without the 3 orphan clients, and the floor into
//! a cloud with tandem installed.
//!
//! `RUST_LOG=tandem=info` prints tandem's per-table timings on stderr (the child inherits it).

#[allow(dead_code)] // the latency helpers are the other benches'
mod support;

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, pin_mut};
use support::{connect, section, thousands, verdict};
use tandem::cluster::LocalCluster;
use tandem::config::{Config, Identity};
use tandem::ops::reconcile::{self, Direction, Report, Request};
use tandem::pipeline::sync::Quiet;
use tandem::pipeline::{self, RunOptions, RunStats};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// The sample's scale: 1.0 is the seeds' 92,387 rows.
const SCALE: f64 = 1.0;
/// The seeded clients whose org is missing: the cloud refuses them (forward dead letters).
const ORPHANS: u64 = 3;
/// COPY floor repetitions (the median is reported).
const FLOOR_RUNS: usize = 3;
/// Reconciles in sync, back to back (the median is judged).
const IN_SYNC_RUNS: usize = 3;
/// Rows of the big table, and every how many ids one is changed by hand in the cloud (1%).
const BIG_ROWS: i32 = 1_000_000;
const DRIFT_EVERY: i32 = 100;

const GOAL_RATIO: f64 = 1.5;
const GOAL_IN_SYNC_S: f64 = 0.5;
const GOAL_RSS_MB: f64 = 64.0;

const OWNERSHIP: &str = "source char(1), created_at timestamptz NOT NULL DEFAULT now(), \
     updated_at timestamptz NOT NULL DEFAULT now()";
const BIG_COLUMNS: &str = "id int PRIMARY KEY, name text, qty int, price numeric(12,2), \
     at timestamptz, flag bool, note text, code varchar(20)";
/// The big table's rows, the same on both sides (deterministic in the id).
const BIG_SELECT: &str = "SELECT g, 'name ' || g, g % 1000, (g % 100000) * 0.01 + 1, \
     timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', g % 3 = 0, \
     CASE WHEN g % 10 = 0 THEN NULL ELSE repeat(md5(g::text), 2) END, 'C-' || (g % 5000)";
/// The raw hash stream of the big table (both sides: the same columns, ownership left out), in id
/// order (`{order}` = `id`) or in the order tandem's scan uses (the key's text, collation "C").
const BIG_HASHES: &str = "COPY (SELECT id, hashtextextended(ROW(name, qty, price, at, flag, note, code)::text, 0) \
     FROM big ORDER BY {order}) TO STDOUT";
const BY_ID: &str = "id";
const BY_TEXT: &str = "id::text COLLATE \"C\"";

/// Diagnostic: `TANDEM_BENCH_EXPLAIN=FILE` loads auto_explain into the cloud's sessions (plans of
/// statements over `TANDEM_BENCH_EXPLAIN_MS`, 200 ms unless set, nested ones too, with ANALYZE and
/// BUFFERS), copies the cloud's log of the seeds part to FILE and stops there.
const EXPLAIN_ENV: &str = "TANDEM_BENCH_EXPLAIN";
const EXPLAIN_MS_ENV: &str = "TANDEM_BENCH_EXPLAIN_MS";

fn main() -> Result<()> {
    let explain = std::env::var_os(EXPLAIN_ENV).is_some();
    let explain_ms = std::env::var(EXPLAIN_MS_ENV).unwrap_or_else(|_| "200".into());
    let explain_ms = format!("'{explain_ms}ms'");
    let settings = if explain {
        [
            ("session_preload_libraries", "'auto_explain'"),
            ("auto_explain.log_min_duration", explain_ms.as_str()),
            ("auto_explain.log_analyze", "on"),
            ("auto_explain.log_buffers", "on"),
            ("auto_explain.log_nested_statements", "on"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    } else {
        Vec::new()
    };
    let note = if explain {
        "; auto_explain on the cloud"
    } else {
        ""
    };
    support::with_clusters("sync", settings, note, |desktop, cloud| {
        Box::pin(bench(desktop, cloud))
    })
}

async fn bench(desktop: &LocalCluster, cloud: &LocalCluster) -> Result<()> {
    let admin = connect(&desktop.url("postgres")).await?;
    let row = admin
        .query_one(
            "SELECT current_setting('server_version'), to_char(now(), 'YYYY-MM-DD HH24:MI TZ')",
            &[],
        )
        .await?;
    let (version, date): (String, String) = (row.get(0), row.get(1));
    println!(
        "{date}; PostgreSQL {version}; {} CPU(s); init, run and the in-process reconciles run in this \
         process (tokio multi-thread runtime), the 1M-row reconciles as the release binary {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        env!("CARGO_BIN_EXE_tandem")
    );
    let mut env = Env {
        desktop,
        cloud,
        next: 0,
    };
    let seeds = seeds(&mut env).await?;
    if let Some(file) = std::env::var_os(EXPLAIN_ENV) {
        std::fs::copy(cloud.dir().join("server.log"), &file).with_context(|| {
            format!("copying the cloud's log to {}", Path::new(&file).display())
        })?;
        println!(
            "\nthe cloud's log (auto_explain): {}",
            Path::new(&file).display()
        );
        return Ok(());
    }
    let big = big(&mut env).await?;

    section(&format!("summary ({date})"));
    print_summary(&seeds, &big);
    println!("\n{}", one_line(&date, &seeds, &big));
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Databases

struct Env<'a> {
    desktop: &'a LocalCluster,
    cloud: &'a LocalCluster,
    next: u32,
}

/// A desktop + cloud database pair of the same name (or a cloud database alone).
struct Pair {
    name: String,
    desktop_url: String,
    cloud_url: String,
    desktop: Client,
    cloud: Client,
}

impl Env<'_> {
    async fn database(&mut self, cluster: &LocalCluster, label: &str) -> Result<String> {
        self.next += 1;
        let name = format!("s{}_{label}", self.next);
        connect(&cluster.url("postgres"))
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name} on the {} cluster", cluster.name()))?;
        Ok(name)
    }

    async fn pair(&mut self, label: &str) -> Result<Pair> {
        let name = self.database(self.desktop, label).await?;
        connect(&self.cloud.url("postgres"))
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name} on the cloud cluster"))?;
        let desktop_url = self.desktop.url(&name);
        let cloud_url = self.cloud.url(&name);
        Ok(Pair {
            desktop: connect(&desktop_url).await?,
            cloud: connect(&cloud_url).await?,
            name,
            desktop_url,
            cloud_url,
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// 1 and 2: the seeds-sized sample

#[derive(Debug, Default)]
struct Seeds {
    rows: i64,
    seed: Duration,
    init: Duration,
    /// Dry-run reconcile before the first run: both scans and the merge, nothing written.
    scan_only: Duration,
    /// `run --once`: the initial sync, then the drain.
    run: Duration,
    /// From the start of the run to the last table marked synced (the scans and the hand-over).
    sync_phase: Duration,
    run_written: u64,
    run_dead_letters: u64,
    floor: Vec<Duration>,
    floor_rows: u64,
    cloud_rows: i64,
    /// Reconciles right after, in sync: (seconds, rows written, dead letters).
    in_sync: Vec<(Duration, u64, u64)>,
    in_sync_dry: Duration,
    xmins_unchanged: bool,
    /// The diagnostic without the orphans: (run, sync phase).
    no_orphans: Option<(Duration, Duration)>,
    /// The floor into a cloud with tandem installed.
    floor_installed: Option<Duration>,
}

impl Seeds {
    fn floor_median(&self) -> Duration {
        median(&self.floor)
    }
    fn ratio(&self) -> f64 {
        self.run.as_secs_f64() / self.floor_median().as_secs_f64()
    }
    fn in_sync_median(&self) -> Duration {
        median(&self.in_sync.iter().map(|r| r.0).collect::<Vec<_>>())
    }
    fn in_sync_ok(&self) -> bool {
        self.in_sync_median().as_secs_f64() <= GOAL_IN_SYNC_S
            && self.in_sync.iter().all(|r| r.1 == 0)
            && self.xmins_unchanged
    }
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

fn sample_config(pair: &Pair) -> Result<Config> {
    let text = tandem::sample::CONFIG.replace(
        "slot = \"tandem\"",
        &format!("slot = \"bench_{}\"", pair.name),
    );
    let env = |var: &str| match var {
        "DESKTOP_URL" => Some(pair.desktop_url.clone()),
        "CLOUD_URL" => Some(pair.cloud_url.clone()),
        _ => None,
    };
    Ok(Config::parse("powerca.toml (bench)", &text, &env)?)
}

fn whole(dry_run: bool) -> Request {
    Request {
        tables: Vec::new(),
        direction: Direction::Both,
        dry_run,
        trigger: "command",
    }
}

/// The tables' own seconds (each table's scan, merge and repairs; one row per table and direction,
/// both rows of a table carry the table's seconds).
fn table_seconds(report: &Report) -> f64 {
    let mut seen = std::collections::HashSet::new();
    report
        .rows
        .iter()
        .filter(|r| seen.insert(r.table.clone()))
        .map(|r| r.seconds)
        .sum()
}

fn dead_letters(report: &Report) -> u64 {
    report.rows.iter().map(|r| r.counts.dead_letters).sum()
}

/// The slowest tables of a report: "jobtasks 0.41 s, jobshead 0.20 s, ...".
fn slowest(tables: impl Iterator<Item = (String, f64)>) -> String {
    let mut v: Vec<(String, f64)> = tables.collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.dedup_by(|a, b| a.0 == b.0);
    v.iter()
        .take(3)
        .map(|(t, s)| format!("{t} {s:.2} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn seeds(env: &mut Env<'_>) -> Result<Seeds> {
    let mut r = Seeds::default();
    let mut pair = env.pair("seeds").await?;
    tandem::sample::create_schemas(&pair.desktop, &pair.cloud).await?;
    let config = sample_config(&pair)?;
    let seeded = tandem::sample::seed(&mut pair.desktop, &config, SCALE).await?;
    r.rows = seeded.total();
    r.seed = seeded.elapsed;
    let cloud_tables: Vec<String> = config
        .tables
        .iter()
        .map(|t| t.table.cloud.quoted())
        .collect();

    section(&format!(
        "initial sync of the PowerCA sample (scale {SCALE}: {} desktop rows, generated in {:.1} s) into an \
         empty cloud",
        thousands(r.rows as f64),
        r.seed.as_secs_f64()
    ));
    let started = Instant::now();
    tandem::setup::init(&config, false)
        .await
        .context("tandem init")?;
    r.init = started.elapsed();
    println!(
        "  init (triggers, publication, slot, table_state): {:.3} s",
        r.init.as_secs_f64()
    );

    let started = Instant::now();
    let dry = reconcile::reconcile(&config, &whole(true), &Quiet).await?;
    r.scan_only = started.elapsed();
    ensure!(
        dry.complete(),
        "the dry run skipped tables: {:?}",
        dry.skipped
    );
    println!(
        "  scan only (reconcile --dry-run on the same state: both sides' hash scans and the merge, \
         nothing written): {:.3} s, {} rows to write; the tables' own seconds sum (two at a time) {:.3} s (slowest: {})",
        r.scan_only.as_secs_f64(),
        thousands(dry.written() as f64),
        table_seconds(&dry),
        slowest(dry.rows.iter().map(|x| (x.table.clone(), x.seconds)))
    );

    let logs = SlowLog::start(&[("desktop", env.desktop), ("cloud", env.cloud)]).await?;
    let timed = timed_run(&pair, &config).await;
    let slow = logs.stop().await?;
    let (run, sync_phase, f) = timed?;
    r.run = run;
    r.sync_phase = sync_phase;
    let sync_record: serde_json::Value = pair
        .desktop
        .query_one(
            "SELECT report FROM tandem.reconciles WHERE trigger = 'sync' ORDER BY started_at DESC LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    // Per table: (name, seconds, cloud rows the sync phase wrote itself or counted as handed on).
    let per_table: Vec<(String, f64, u64)> = sync_record["tables"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    let name = t["table"].as_str().unwrap_or("?").to_string();
                    let written = ["inserted", "updated", "deleted"]
                        .iter()
                        .map(|k| t["forward"][*k].as_u64().unwrap_or(0))
                        .sum();
                    (name, t["seconds"].as_f64().unwrap_or(0.0), written)
                })
                .collect()
        })
        .unwrap_or_default();
    let worker_written = f.outcome.written + f.outcome.deleted;
    let sync_written: u64 = per_table.iter().map(|t| t.2).sum();
    r.run_written = worker_written.max(sync_written);
    r.run_dead_letters = pair
        .cloud
        .query_one(
            "SELECT count(*) FROM tandem.dead_letters WHERE direction = 'forward' AND resolved_at IS NULL",
            &[],
        )
        .await?
        .get::<_, i64>(0) as u64;
    r.cloud_rows = cloud_total(&pair.cloud, &cloud_tables).await?;
    let complete = r.cloud_rows as u64 + ORPHANS == r.rows as u64;
    println!(
        "  tandem run --once (initial sync, then drain): {:.3} s = {} rows/s; rows to the cloud: {} \
         counted by the sync phase, {} written by the forward worker; {} open dead letters in the cloud \
         (expected the {ORPHANS} orphan clients); the cloud holds {} rows [{}]",
        r.run.as_secs_f64(),
        thousands(r.rows as f64 / r.run.as_secs_f64()),
        thousands(sync_written as f64),
        thousands(worker_written as f64),
        r.run_dead_letters,
        thousands(r.cloud_rows as f64),
        if complete {
            "all but the orphans"
        } else {
            "INCOMPLETE"
        }
    );
    println!(
        "      where the time goes: sync phase (`sync::due`: scans, merge, repairs written or handed to the \
         outbox; until the last table is marked synced) {:.3} s (tables' own seconds sum, two at a time, {:.3} s; \
         slowest: {}), then the drain (forward worker: {} batches, {} outbox rows, {} staged) {:.3} s",
        r.sync_phase.as_secs_f64(),
        per_table.iter().map(|t| t.1).sum::<f64>(),
        slowest(per_table.iter().map(|t| (t.0.clone(), t.1))),
        f.batches,
        thousands(f.outbox_rows as f64),
        bytes(f.outcome.staged_bytes),
        r.run.saturating_sub(r.sync_phase).as_secs_f64()
    );
    println!(
        "      the run's slowest statements (each server's log_min_duration_statement = {} ms during \
         the run; {} logged):",
        slow_ms(),
        slow.len()
    );
    for (side, ms, text) in slow.iter().take(SLOW_SHOWN) {
        println!("        {side:<7} {ms:>9.1} ms  {text}");
    }

    section(
        "reference: plain COPY floor into a fresh cloud database with the same schema and foreign keys \
         (per table, parents first: binary COPY of the mapped columns out of the desktop, jobtasks.client_id \
         joined from jobshead → COPY into a temp staging table → one INSERT … SELECT with source 'D'; one \
         transaction; the 3 orphan clients filtered out); no tandem triggers, no publication",
    );
    let floor_db = env.database(env.cloud, "floor").await?;
    let mut floor_cloud = connect(&env.cloud.url(&floor_db)).await?;
    floor_cloud
        .batch_execute(tandem::sample::CLOUD_SCHEMA)
        .await?;
    let plan = floor_plan(&config, &floor_cloud).await?;
    let mut floor_slow = Vec::new();
    for k in 0..FLOOR_RUNS {
        // The last run's slow statements are logged, to set beside tandem's.
        let logs = if k + 1 == FLOOR_RUNS {
            Some(SlowLog::start(&[("desktop", env.desktop), ("cloud", env.cloud)]).await?)
        } else {
            None
        };
        let (elapsed, moved) = copy_floor(&pair.desktop, &mut floor_cloud, &plan).await?;
        if let Some(logs) = logs {
            floor_slow = logs.stop().await?;
        }
        r.floor.push(elapsed);
        r.floor_rows = moved;
    }
    ensure!(
        r.floor_rows == r.cloud_rows as u64,
        "the floor moved {} rows, tandem {}",
        r.floor_rows,
        r.cloud_rows
    );
    println!(
        "  floor: {:.3} s median of {FLOOR_RUNS} ({}) = {} rows/s",
        r.floor_median().as_secs_f64(),
        r.floor
            .iter()
            .map(|d| format!("{:.3} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        thousands(r.floor_rows as f64 / r.floor_median().as_secs_f64())
    );
    println!(
        "  tandem / floor: {:.3} s / {:.3} s = {:.2}×   [goal ≤ {GOAL_RATIO}×: {}]",
        r.run.as_secs_f64(),
        r.floor_median().as_secs_f64(),
        r.ratio(),
        verdict(r.ratio() <= GOAL_RATIO)
    );
    println!("      the floor's slowest statements (its last run, logged the same way):");
    for (side, ms, text) in floor_slow.iter().take(SLOW_SHOWN / 2) {
        println!("        {side:<7} {ms:>9.1} ms  {text}");
    }
    let (run, sync_phase, rows, letters, installed) = without_orphans(env, &plan).await?;
    r.no_orphans = Some((run, sync_phase));
    r.floor_installed = Some(installed);
    println!(
        "  diagnostic, tandem on a fresh pair with the {ORPHANS} orphan clients deleted from the desktop \
         before init (no refused row to isolate): {:.3} s (sync phase {:.3} \
         s, drain {:.3} s), {} cloud rows, {letters} dead letters = {:.2}× the floor",
        run.as_secs_f64(),
        sync_phase.as_secs_f64(),
        run.saturating_sub(sync_phase).as_secs_f64(),
        thousands(rows as f64),
        run.as_secs_f64() / r.floor_median().as_secs_f64()
    );
    println!(
        "  diagnostic, the floor into that pair's cloud as tandem left it installed (TRUNCATEd; its BEFORE \
         INSERT OR UPDATE trigger on every table, REPLICA IDENTITY FULL, the publication; session \
         tandem.applying = on): {:.3} s",
        installed.as_secs_f64()
    );

    section(&format!(
        "reconcile --direction both right after, in sync ({IN_SYNC_RUNS} back to back, in this process; \
         the {ORPHANS} orphan clients' dead letters are retried each time)"
    ));
    let before = xmins(&pair.cloud, &cloud_tables).await?;
    // With TANDEM_BENCH_LOG, the in-sync reconciles' statements are logged too.
    let logs = match std::env::var_os(LOG_ENV) {
        Some(_) => Some(SlowLog::start(&[("desktop", env.desktop), ("cloud", env.cloud)]).await?),
        None => None,
    };
    for k in 0..IN_SYNC_RUNS {
        let started = Instant::now();
        let again = reconcile::reconcile(&config, &whole(false), &Quiet).await?;
        let elapsed = started.elapsed();
        ensure!(again.complete(), "skipped: {:?}", again.skipped);
        println!(
            "  #{}: {:.3} s (report {:.3} s), {} rows written, {} dead letters, {} retried; the tables' own \
             seconds sum {:.3} s (two tables at a time: the sum can pass the wall time; slowest: {})",
            k + 1,
            elapsed.as_secs_f64(),
            again.seconds,
            again.written(),
            dead_letters(&again),
            again.dead_letters_retried.forward + again.dead_letters_retried.reverse,
            table_seconds(&again),
            slowest(again.rows.iter().map(|x| (x.table.clone(), x.seconds))),
        );
        r.in_sync
            .push((elapsed, again.written(), dead_letters(&again)));
    }
    if let Some(logs) = logs {
        logs.stop().await?;
    }
    r.xmins_unchanged = xmins(&pair.cloud, &cloud_tables).await? == before;
    let started = Instant::now();
    let dry = reconcile::reconcile(&config, &whole(true), &Quiet).await?;
    r.in_sync_dry = started.elapsed();
    println!(
        "  the same as a dry run (scans and merge only, no dead letter retry): {:.3} s, of which the \
         tables' own seconds sum (two at a time) {:.3} s; {} rows to write (the {ORPHANS} orphan clients, which a dry run \
         does not try)",
        r.in_sync_dry.as_secs_f64(),
        table_seconds(&dry),
        dry.written()
    );
    println!(
        "  median {:.3} s [goal ≤ {GOAL_IN_SYNC_S} s: {}]; rows written {} [goal 0: {}]; cloud tables' \
         (ctid, xmin) unchanged: {} [{}]",
        r.in_sync_median().as_secs_f64(),
        verdict(r.in_sync_median().as_secs_f64() <= GOAL_IN_SYNC_S),
        r.in_sync.iter().map(|x| x.1).sum::<u64>(),
        verdict(r.in_sync.iter().all(|x| x.1 == 0)),
        r.xmins_unchanged,
        verdict(r.xmins_unchanged)
    );
    Ok(r)
}

/// Statements slower than this are logged by both servers during the initial sync's run.
const SLOW_MS: u32 = 100;
/// Diagnostic: `TANDEM_BENCH_LOG=DIR` logs every statement of the initial sync's run, the floor's and
/// the in-sync reconciles' (with its duration and the server's timestamp) and writes each server's log
/// of each to `DIR/<n>-<side>.log`.
const LOG_ENV: &str = "TANDEM_BENCH_LOG";

fn slow_ms() -> u32 {
    if std::env::var_os(LOG_ENV).is_some() {
        0
    } else {
        SLOW_MS
    }
}
const SLOW_SHOWN: usize = 8;
/// Characters of a logged statement shown.
const SLOW_TEXT: usize = 150;

/// Both servers' slow statement log, on for a while: where the log file stood when it was turned on.
struct SlowLog<'a> {
    logs: Vec<(&'static str, &'a LocalCluster, u64)>,
}

impl<'a> SlowLog<'a> {
    async fn start(clusters: &[(&'static str, &'a LocalCluster)]) -> Result<SlowLog<'a>> {
        let mut logs = Vec::new();
        for &(side, cluster) in clusters {
            let file = cluster.dir().join("server.log");
            let at = std::fs::metadata(&file).map_or(0, |m| m.len());
            set_slow_log(cluster, Some(slow_ms())).await?;
            logs.push((side, cluster, at));
        }
        Ok(SlowLog { logs })
    }

    /// Turns the log off; the statements logged meanwhile, slowest first: (side, ms, text).
    async fn stop(self) -> Result<Vec<(&'static str, f64, String)>> {
        let mut out = Vec::new();
        for (side, cluster, at) in self.logs {
            set_slow_log(cluster, None).await?;
            let log = std::fs::read(cluster.dir().join("server.log")).unwrap_or_default();
            let text = String::from_utf8_lossy(log.get(at as usize..).unwrap_or_default());
            if let Some(dir) = std::env::var_os(LOG_ENV) {
                let dir = Path::new(&dir);
                std::fs::create_dir_all(dir)?;
                let mut n = 1;
                while dir.join(format!("{n}-{side}.log")).exists() {
                    n += 1;
                }
                std::fs::write(dir.join(format!("{n}-{side}.log")), text.as_bytes())?;
            }
            // An entry starts with a timestamp line; a statement's further lines follow it.
            let mut entries: Vec<String> = Vec::new();
            for line in text.lines() {
                if line.starts_with("20") || entries.is_empty() {
                    entries.push(line.to_string());
                } else if let Some(last) = entries.last_mut() {
                    last.push(' ');
                    last.push_str(line.trim());
                }
            }
            for e in entries {
                let Some((_, rest)) = e.split_once("duration: ") else {
                    continue;
                };
                let Some((ms, statement)) = rest.split_once(" ms") else {
                    continue;
                };
                let Ok(ms) = ms.parse::<f64>() else { continue };
                let statement = statement.split_whitespace().collect::<Vec<_>>().join(" ");
                out.push((side, ms, statement.chars().take(SLOW_TEXT).collect()));
            }
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(out)
    }
}

async fn set_slow_log(cluster: &LocalCluster, ms: Option<u32>) -> Result<()> {
    let admin = connect(&cluster.url("postgres")).await?;
    let sql = match ms {
        Some(ms) => format!("ALTER SYSTEM SET log_min_duration_statement = '{ms}ms'"),
        None => "ALTER SYSTEM RESET log_min_duration_statement".to_string(),
    };
    admin.batch_execute(&sql).await?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    // The postmaster signals the backends; a new session sees the setting once it is read.
    let want = ms.map_or("-1".to_string(), |ms| ms.to_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now: String = connect(&cluster.url("postgres"))
            .await?
            .query_one(
                "SELECT setting FROM pg_settings WHERE name = 'log_min_duration_statement'",
                &[],
            )
            .await?
            .get(0);
        if now == want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "log_min_duration_statement stays {now}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `run --once` on a state `init` just made: (its time, the time to the last table marked synced, the
/// forward worker's totals).
async fn timed_run(pair: &Pair, config: &Config) -> Result<(Duration, Duration, RunStats)> {
    let clock: String = pair
        .desktop
        .query_one("SELECT clock_timestamp()::text", &[])
        .await?
        .get(0);
    let started = Instant::now();
    let report = pipeline::run(config, RunOptions { once: true }, CancellationToken::new())
        .await
        .context("run --once")?;
    let run = started.elapsed();
    ensure!(report.parked.is_empty(), "parked: {:?}", report.parked);
    let row = pair
        .desktop
        .query_one(
            "SELECT extract(epoch FROM max(synced_at) - $1::text::timestamptz)::float8,
                    count(*) FILTER (WHERE state <> 'streaming' OR synced_at IS NULL)
               FROM tandem.table_state",
            &[&clock],
        )
        .await?;
    ensure!(
        row.get::<_, i64>(1) == 0,
        "tables left unsynced after the run"
    );
    let sync_phase = Duration::from_secs_f64(row.get::<_, f64>(0).max(0.0));
    Ok((run, sync_phase, report.forward))
}

/// The same initial sync with the orphan clients deleted from the desktop first: no refusal, so no
/// batch applied again to isolate one. (time, sync phase, rows in the cloud, dead letters)
async fn without_orphans(
    env: &mut Env<'_>,
    plan: &[FloorTable],
) -> Result<(Duration, Duration, i64, u64, Duration)> {
    let mut pair = env.pair("no_orphans").await?;
    tandem::sample::create_schemas(&pair.desktop, &pair.cloud).await?;
    let config = sample_config(&pair)?;
    let seeded = tandem::sample::seed(&mut pair.desktop, &config, SCALE).await?;
    let deleted = pair
        .desktop
        .execute(
            "DELETE FROM climaster c WHERE c.org_id IS NOT NULL
                AND NOT EXISTS (SELECT 1 FROM orgmaster o WHERE o.org_id = c.org_id)",
            &[],
        )
        .await?;
    ensure!(deleted == ORPHANS, "deleted {deleted} orphan clients");
    tandem::setup::init(&config, false)
        .await
        .context("tandem init")?;
    let (run, sync_phase, _) = timed_run(&pair, &config).await?;
    let tables: Vec<String> = config
        .tables
        .iter()
        .map(|t| t.table.cloud.quoted())
        .collect();
    let rows = cloud_total(&pair.cloud, &tables).await?;
    ensure!(
        rows as u64 + ORPHANS == seeded.total() as u64,
        "the cloud holds {rows} rows"
    );
    // The floor again, into this cloud as tandem left it installed (its BEFORE trigger on every
    // table, REPLICA IDENTITY FULL, the publication), from a session marked as tandem's.
    let mut installed = connect(&pair.cloud_url).await?;
    installed
        .batch_execute("SELECT set_config('tandem.applying', 'on', false)")
        .await?;
    let (floor, moved) = copy_floor(&pair.desktop, &mut installed, plan).await?;
    ensure!(moved == rows as u64, "the floor moved {moved} rows");
    let letters: i64 = pair
        .cloud
        .query_one("SELECT count(*) FROM tandem.dead_letters", &[])
        .await?
        .get(0);
    Ok((run, sync_phase, rows, letters as u64, floor))
}

async fn cloud_total(cloud: &Client, tables: &[String]) -> Result<i64> {
    let mut total = 0;
    for t in tables {
        let n: i64 = cloud
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await?
            .get(0);
        total += n;
    }
    Ok(total)
}

/// Every cloud row's (ctid, xmin), per table, as digests: any write changes them.
async fn xmins(cloud: &Client, tables: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for t in tables {
        let d: String = cloud
            .query_one(
                &format!(
                    "SELECT count(*)::text || ' ' || coalesce(md5(string_agg(ctid::text || ':' || xmin::text, ',' \
                     ORDER BY ctid)), '') FROM {t}"
                ),
                &[],
            )
            .await?
            .get(0);
        out.push(d);
    }
    Ok(out)
}

/// One table of the COPY floor.
struct FloorTable {
    cloud: String,
    /// `COPY (SELECT ...) TO STDOUT (FORMAT binary)` on the desktop.
    copy_out: String,
    /// The staging table, its columns the cloud table's, and the statement creating it.
    staging: String,
    create_staging: String,
    insert: String,
}

/// The floor's statements, from the config (parents first, as configured) and the cloud's columns.
async fn floor_plan(config: &Config, cloud: &Client) -> Result<Vec<FloorTable>> {
    let mut plan = Vec::new();
    for (i, t) in config.tables.iter().enumerate() {
        let cloud_key = match &t.identity {
            Identity::CloudKey { column, .. } => Some(column.as_str()),
            Identity::Key(_) => None,
        };
        let cloud_table = t.table.cloud.quoted();
        let columns: Vec<String> = cloud
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 \
                 AND NOT attisdropped ORDER BY attnum",
                &[&cloud_table],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|c| {
                !["source", "created_at", "updated_at"].contains(&c.as_str())
                    && Some(c.as_str()) != cloud_key
            })
            .collect();
        let mut joins = String::new();
        let mut select = Vec::new();
        for c in &columns {
            match t.lookups.iter().position(|l| &l.column == c) {
                Some(k) => {
                    let l = &t.lookups[k];
                    let from = config
                        .tables
                        .iter()
                        .find(|o| o.table.desktop.name == l.from || o.table.cloud.name == l.from)
                        .with_context(|| format!("lookup table {}", l.from))?;
                    joins.push_str(&format!(
                        " LEFT JOIN {} l{k} ON l{k}.\"{}\" = t.\"{}\"",
                        from.table.desktop.quoted(),
                        l.on,
                        l.on
                    ));
                    select.push(format!("l{k}.\"{c}\""));
                }
                None => select.push(format!("t.\"{c}\"")),
            }
        }
        let list = columns
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let staging = format!("floor_staging_{i}");
        // The seeds' 3 orphan clients (org 3 does not exist) would fail the foreign key: left out.
        let filter = if t.table.cloud.name == "climaster" {
            " WHERE s.org_id IS NULL OR EXISTS (SELECT 1 FROM orgmaster o WHERE o.org_id = s.org_id)"
        } else {
            ""
        };
        plan.push(FloorTable {
            copy_out: format!(
                "COPY (SELECT {} FROM {} t{joins}) TO STDOUT (FORMAT binary)",
                select.join(", "),
                t.table.desktop.quoted()
            ),
            create_staging: format!(
                "CREATE TEMP TABLE {staging} ON COMMIT DROP AS SELECT {list} FROM {cloud_table} WITH NO DATA"
            ),
            insert: format!(
                "INSERT INTO {cloud_table} ({list}, source) SELECT {list}, 'D' FROM {staging} s{filter}"
            ),
            cloud: cloud_table,
            staging,
        });
    }
    Ok(plan)
}

/// The floor into the (emptied) floor cloud database: (time, rows inserted).
async fn copy_floor(
    desktop: &Client,
    cloud: &mut Client,
    plan: &[FloorTable],
) -> Result<(Duration, u64)> {
    let all = plan
        .iter()
        .map(|t| t.cloud.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    cloud.batch_execute(&format!("TRUNCATE {all}")).await?;
    let started = Instant::now();
    let tx = cloud.transaction().await?;
    let mut moved = 0;
    for t in plan {
        tx.batch_execute(&t.create_staging).await?;
        let source = desktop.copy_out(&t.copy_out).await?;
        let sink = tx
            .copy_in::<_, Bytes>(&format!("COPY {} FROM STDIN (FORMAT binary)", t.staging))
            .await?;
        pin_mut!(source, sink);
        while let Some(chunk) = source.next().await {
            sink.feed(chunk?).await?;
        }
        sink.as_mut().finish().await?;
        moved += tx
            .execute(&t.insert, &[])
            .await
            .with_context(|| t.insert.clone())?;
    }
    tx.commit().await?;
    Ok((started.elapsed(), moved))
}

// ---------------------------------------------------------------------------------------------------
// 3: the 1M-row table

#[derive(Debug, Default)]
struct Big {
    fill: Duration,
    in_sync: Option<Child>,
    in_sync_written: u64,
    drift: Option<Child>,
    drift_written: u64,
    /// Raw hash stream floor: in sync, drifted, after the repair.
    floors: Vec<HashFloor>,
    /// The in-sync floor in tandem's scan order.
    text_order: Option<HashFloor>,
}

#[derive(Debug, Clone, Copy)]
struct HashFloor {
    elapsed: Duration,
    desktop_rows: u64,
    cloud_rows: u64,
    differ: u64,
}

/// A `tandem` child process: its exit code, output, wall time and peak RSS.
#[derive(Debug, Clone)]
struct Child {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    max_rss_kb: i64,
}

impl Child {
    fn rss_mb(&self) -> f64 {
        self.max_rss_kb as f64 / 1024.0
    }
}

async fn big(env: &mut Env<'_>) -> Result<Big> {
    let mut r = Big::default();
    let pair = env.pair("big").await?;
    section(&format!(
        "a {}-row desktop-key table (8 columns: int key, text, int, numeric, timestamptz, bool, text, \
         varchar), equal on both sides; reconcile as the release binary (`tandem reconcile --json`), peak \
         RSS from wait4's ru_maxrss",
        thousands(f64::from(BIG_ROWS))
    ));
    let started = Instant::now();
    let desktop_fill = format!(
        "CREATE TABLE big ({BIG_COLUMNS}); \
         INSERT INTO big {BIG_SELECT} FROM generate_series(1, {BIG_ROWS}) g"
    );
    let cloud_fill = format!(
        "SELECT set_config('tandem.applying', 'on', false); \
         CREATE TABLE big ({BIG_COLUMNS}, {OWNERSHIP}); \
         INSERT INTO big (id, name, qty, price, at, flag, note, code, source) \
         SELECT *, 'D' FROM ({BIG_SELECT} FROM generate_series(1, {BIG_ROWS}) g) x"
    );
    tokio::try_join!(
        fill(&pair.desktop, desktop_fill),
        fill(&pair.cloud, cloud_fill)
    )?;
    r.fill = started.elapsed();
    let text = format!(
        "[desktop]\nurl = \"{}\"\n[cloud]\nurl = \"{}\"\nslot = \"bench_{}\"\n\
         [[tables]]\ndesktop = \"big\"\nkey = [\"id\"]\n",
        pair.desktop_url, pair.cloud_url, pair.name
    );
    let config = Config::parse("bench big config", &text, &|_| None)?;
    let file = std::env::temp_dir().join(format!("tandem-bench-sync-{}.toml", std::process::id()));
    std::fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
    let result = big_measure(&pair, &config, &file, &mut r).await;
    let _ = std::fs::remove_file(&file);
    result?;
    Ok(r)
}

/// Runs `sql` (a multi-statement string), then VACUUM ANALYZE big: VACUUM cannot run in a
/// multi-statement string (an implicit transaction).
async fn fill(client: &Client, sql: String) -> Result<()> {
    client.batch_execute(&sql).await?;
    client.batch_execute("VACUUM ANALYZE big").await?;
    Ok(())
}

async fn big_measure(pair: &Pair, config: &Config, file: &Path, r: &mut Big) -> Result<()> {
    let started = Instant::now();
    tandem::setup::init(config, false)
        .await
        .context("tandem init (big)")?;
    let init = started.elapsed();
    // Both sides were filled equal: no initial sync is due.
    pair.desktop
        .batch_execute(
            "UPDATE tandem.table_state SET state = 'streaming', since = now(), synced_at = now()",
        )
        .await?;
    println!(
        "  both sides filled (concurrently, with VACUUM ANALYZE) in {:.1} s; init {:.3} s; table_state \
         marked synced",
        r.fill.as_secs_f64(),
        init.as_secs_f64()
    );

    let floor = hash_floor(&pair.desktop, &pair.cloud, BY_ID).await?;
    print_floor("in sync", &floor);
    ensure!(
        floor.differ == 0,
        "the sides differ before the drift: {floor:?}"
    );
    r.floors.push(floor);
    let text_order = hash_floor(&pair.desktop, &pair.cloud, BY_TEXT).await?;
    println!(
        "      diagnostic, the same in the order tandem's scan reads (ORDER BY {BY_TEXT}: a sort, not \
         the primary key's index): {:.3} s, {} differ",
        text_order.elapsed.as_secs_f64(),
        thousands(text_order.differ as f64)
    );
    r.text_order = Some(text_order);
    let child = reconcile_child(file).await?;
    r.in_sync_written = written(&child)?;
    print_child("in sync", &child, r.in_sync_written, 0);
    r.in_sync = Some(child);

    let changed = {
        pair.cloud
            .batch_execute("SELECT set_config('tandem.applying', 'on', false)")
            .await?;
        let n = pair
            .cloud
            .execute(
                &format!(
                    "UPDATE big SET name = name || ' (drift)', qty = qty + 1 WHERE id % {DRIFT_EVERY} = 0"
                ),
                &[],
            )
            .await?;
        pair.cloud
            .batch_execute("SELECT set_config('tandem.applying', 'off', false)")
            .await?;
        n
    };
    let mobile: i64 = pair
        .cloud
        .query_one("SELECT count(*) FROM big WHERE source = 'M'", &[])
        .await?
        .get(0);
    ensure!(mobile == 0, "{mobile} drifted rows became mobile-owned");
    println!(
        "  drift: {} scattered cloud rows changed by hand as 'D' (every {DRIFT_EVERY}th id)",
        thousands(changed as f64)
    );
    let floor = hash_floor(&pair.desktop, &pair.cloud, BY_ID).await?;
    print_floor("drifted", &floor);
    r.floors.push(floor);
    let child = reconcile_child(file).await?;
    r.drift_written = written(&child)?;
    print_child("after 1% drift", &child, r.drift_written, changed);
    r.drift = Some(child);
    let floor = hash_floor(&pair.desktop, &pair.cloud, BY_ID).await?;
    print_floor("after the repair", &floor);
    ensure!(
        floor.differ == 0,
        "the sides still differ after the reconcile: {floor:?}"
    );
    r.floors.push(floor);
    Ok(())
}

fn print_floor(when: &str, f: &HashFloor) {
    println!(
        "  reference, raw hash stream floor ({when}: `COPY (SELECT id, hashtextextended(ROW(cols)::text, 0) \
         … ORDER BY id)` from both sides concurrently, merged naively): {:.3} s; {} + {} lines, {} differ",
        f.elapsed.as_secs_f64(),
        thousands(f.desktop_rows as f64),
        thousands(f.cloud_rows as f64),
        thousands(f.differ as f64)
    );
}

fn print_child(what: &str, c: &Child, written: u64, expected: u64) {
    println!(
        "  tandem reconcile, {what}: {:.3} s wall (report {:.3} s), exit {}, {} rows written [expected {}: \
         {}], peak RSS {:.1} MB [goal ≤ {GOAL_RSS_MB} MB: {}]",
        c.elapsed.as_secs_f64(),
        report_seconds(c),
        c.code,
        thousands(written as f64),
        thousands(expected as f64),
        verdict(written == expected),
        c.rss_mb(),
        verdict(c.rss_mb() <= GOAL_RSS_MB)
    );
}

fn report_seconds(c: &Child) -> f64 {
    serde_json::from_str::<serde_json::Value>(&c.stdout)
        .ok()
        .and_then(|v| v["seconds"].as_f64())
        .unwrap_or(f64::NAN)
}

/// Rows written according to the child's JSON report; fails when it did not succeed.
fn written(c: &Child) -> Result<u64> {
    if c.code != 0 {
        bail!(
            "tandem reconcile exited {}:\n{}\n{}",
            c.code,
            c.stdout,
            c.stderr
        );
    }
    let report: serde_json::Value = serde_json::from_str(&c.stdout)
        .with_context(|| format!("the reconcile's JSON report: {}", c.stdout))?;
    let rows = report["rows"].as_array().context("no rows in the report")?;
    Ok(rows
        .iter()
        .map(|r| {
            ["inserted", "updated", "deleted"]
                .iter()
                .map(|k| r[*k].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum())
}

/// `tandem reconcile --json -c FILE` as a child process, reaped with wait4 for its peak RSS.
async fn reconcile_child(file: &Path) -> Result<Child> {
    let file = file.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("-c")
            .arg(&file)
            .args(["reconcile", "--json"])
            .env_remove("TANDEM_DESKTOP_URL")
            .env_remove("TANDEM_CLOUD_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the tandem binary")?;
        let started = Instant::now();
        let mut err = child.stderr.take().context("stderr")?;
        let errors = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .context("stdout")?
            .read_to_string(&mut stdout)?;
        let pid = child.id() as libc::pid_t;
        let mut status: libc::c_int = 0;
        // SAFETY: all-zero is a valid rusage; wait4 fills it and `status` for our own child, which
        // nothing else reaps (Child::wait is never called on it).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let elapsed = started.elapsed();
        if reaped != pid {
            return Err(std::io::Error::last_os_error()).context("wait4 on the tandem child");
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        };
        Ok(Child {
            code,
            stdout,
            stderr: errors.join().unwrap_or_default(),
            elapsed,
            max_rss_kb: usage.ru_maxrss,
        })
    })
    .await?
}

/// Both sides' `(id, hash)` streams in `order` ([`BY_ID`] or [`BY_TEXT`]), started together and merged.
async fn hash_floor(desktop: &Client, cloud: &Client, order: &str) -> Result<HashFloor> {
    let sql = BIG_HASHES.replace("{order}", order);
    let by_text = order == BY_TEXT;
    let started = Instant::now();
    let (d, c) = tokio::try_join!(desktop.copy_out(&sql), cloud.copy_out(&sql))?;
    pin_mut!(d, c);
    let mut f = HashFloor {
        elapsed: Duration::ZERO,
        desktop_rows: 0,
        cloud_rows: 0,
        differ: 0,
    };
    // The backend sends one CopyData message per row: (id, hash, the id's text).
    type Line = (i32, i64, Bytes);
    fn parse(line: Option<Result<Bytes, tokio_postgres::Error>>) -> Result<Option<Line>> {
        let Some(line) = line else { return Ok(None) };
        let line = line?;
        let text = std::str::from_utf8(&line)?.trim_end();
        let (id, hash) = text.split_once('\t').context("a line without a tab")?;
        Ok(Some((id.parse()?, hash.parse()?, line.slice(..id.len()))))
    }
    let before = |x: &Line, y: &Line| {
        if by_text { x.2 < y.2 } else { x.0 < y.0 }
    };
    let mut a = parse(d.next().await)?;
    let mut b = parse(c.next().await)?;
    loop {
        match (&a, &b) {
            (None, None) => break,
            (Some(x), Some(y)) if x.0 == y.0 => {
                f.differ += u64::from(x.1 != y.1);
                f.desktop_rows += 1;
                f.cloud_rows += 1;
                a = parse(d.next().await)?;
                b = parse(c.next().await)?;
            }
            (Some(x), y) if y.as_ref().is_none_or(|y| before(x, y)) => {
                f.differ += 1;
                f.desktop_rows += 1;
                a = parse(d.next().await)?;
            }
            _ => {
                f.differ += 1;
                f.cloud_rows += 1;
                b = parse(c.next().await)?;
            }
        }
    }
    f.elapsed = started.elapsed();
    Ok(f)
}

// ---------------------------------------------------------------------------------------------------
// Printing

fn bytes(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1_048_576.0)
}

fn print_summary(s: &Seeds, b: &Big) {
    let row = |label: &str, figure: String, reference: String, goal: String| {
        println!("  {label:<52} {figure:>22} {reference:>26} {goal:>22}");
    };
    row("", "tandem".into(), "reference".into(), "goal".into());
    row(
        &format!(
            "initial sync, {} rows, empty cloud",
            thousands(s.rows as f64)
        ),
        format!("{:.3} s", s.run.as_secs_f64()),
        format!("COPY floor {:.3} s", s.floor_median().as_secs_f64()),
        format!(
            "≤ {GOAL_RATIO}× ({:.2}×: {})",
            s.ratio(),
            verdict(s.ratio() <= GOAL_RATIO)
        ),
    );
    row(
        "  of which sync phase / drain",
        format!(
            "{:.3} / {:.3} s",
            s.sync_phase.as_secs_f64(),
            s.run.saturating_sub(s.sync_phase).as_secs_f64()
        ),
        format!("scan only {:.3} s", s.scan_only.as_secs_f64()),
        "-".into(),
    );
    if let Some((run, sync_phase)) = s.no_orphans {
        row(
            "  diagnostic: without the 3 orphans (sync / drain)",
            format!(
                "{:.3} s ({:.3} / {:.3})",
                run.as_secs_f64(),
                sync_phase.as_secs_f64(),
                run.saturating_sub(sync_phase).as_secs_f64()
            ),
            s.floor_installed.map_or("-".to_string(), |f| {
                format!("floor, installed {:.3} s", f.as_secs_f64())
            }),
            format!(
                "({:.2}×)",
                run.as_secs_f64() / s.floor_median().as_secs_f64()
            ),
        );
    }
    row(
        "reconcile in sync (median), rows written",
        format!(
            "{:.3} s, {}",
            s.in_sync_median().as_secs_f64(),
            s.in_sync.iter().map(|x| x.1).sum::<u64>()
        ),
        format!("dry run {:.3} s", s.in_sync_dry.as_secs_f64()),
        format!("≤ {GOAL_IN_SYNC_S} s, 0 ({})", verdict(s.in_sync_ok())),
    );
    let floor = |i: usize| {
        b.floors.get(i).map_or("-".to_string(), |f| {
            format!("hash floor {:.3} s", f.elapsed.as_secs_f64())
        })
    };
    let child = |c: &Option<Child>, w: u64| {
        c.as_ref().map_or("-".to_string(), |c| {
            format!(
                "{:.3} s, {:.1} MB, {}",
                c.elapsed.as_secs_f64(),
                c.rss_mb(),
                thousands(w as f64)
            )
        })
    };
    let rss_ok = |c: &Option<Child>| c.as_ref().is_some_and(|c| c.rss_mb() <= GOAL_RSS_MB);
    row(
        "1M rows in sync: time, peak RSS, rows written",
        child(&b.in_sync, b.in_sync_written),
        floor(0),
        format!(
            "≤ {GOAL_RSS_MB} MB, 0 ({})",
            verdict(rss_ok(&b.in_sync) && b.in_sync_written == 0)
        ),
    );
    let expected = (BIG_ROWS / DRIFT_EVERY) as u64;
    row(
        "1M rows, 1% drift: time, peak RSS, rows written",
        child(&b.drift, b.drift_written),
        floor(1),
        format!(
            "≤ {GOAL_RSS_MB} MB, {} ({})",
            thousands(expected as f64),
            verdict(rss_ok(&b.drift) && b.drift_written == expected)
        ),
    );
}

fn one_line(date: &str, s: &Seeds, b: &Big) -> String {
    let child = |c: &Option<Child>| {
        c.as_ref().map_or("-".to_string(), |c| {
            format!("{:.2} s {:.0} MB", c.elapsed.as_secs_f64(), c.rss_mb())
        })
    };
    format!(
        "SUMMARY {date} sync: initial {} rows {:.2} s (sync {:.2} + drain {:.2}) vs COPY floor {:.2} s = {:.2}× \
         (without the orphans {:.2} s) | in sync {:.3} s, {} written | 1M in sync {}, 1% drift {} ({} written) vs hash floor {:.2} s \
         ({:.2} s in text order)",
        s.rows,
        s.run.as_secs_f64(),
        s.sync_phase.as_secs_f64(),
        s.run.saturating_sub(s.sync_phase).as_secs_f64(),
        s.floor_median().as_secs_f64(),
        s.ratio(),
        s.no_orphans.map_or(f64::NAN, |n| n.0.as_secs_f64()),
        s.in_sync_median().as_secs_f64(),
        s.in_sync.iter().map(|x| x.1).sum::<u64>(),
        child(&b.in_sync),
        child(&b.drift),
        b.drift_written,
        b.floors
            .first()
            .map_or(f64::NAN, |f| f.elapsed.as_secs_f64()),
        b.text_order.map_or(f64::NAN, |f| f.elapsed.as_secs_f64())
    )
}
