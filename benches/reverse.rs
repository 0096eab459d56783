//! Reverse (cloud → desktop) benchmark: `cargo bench --bench reverse`.
//!
//! Starts two throwaway clusters (both `wal_level = logical`, fsync on; the cloud with
//! `wal_sender_timeout = '10s'`) and measures how fast rows a phone makes in the cloud (plain INSERTs,
//! which tandem's ownership trigger marks `source = 'M'`) reach the desktop through tandem's reverse
//! worker: commit → visible latency for paced single-row commits, and 100k-row transactions (five, one
//! after the other; their median counts). In the
//! same run, on the same clusters, PostgreSQL's own logical replication (a subscription on the desktop to
//! a publication in the cloud) does the same. Last, the peak RSS of `tandem run --once`, run as a
//! separate process, through one 1M-row cloud transaction.
//!
//! `RUST_LOG=tandem=debug` prints the reverse worker's per-group timings on stderr (the `run --once`
//! child inherits it).

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use support::{Latency, connect, ms, peak_rss, section, thousands, verdict};
use tandem::cluster::LocalCluster;
use tandem::config::Config;
use tandem::pipeline::{RunError, RunOptions, RunStats, run_reverse};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// Rows of the one-transaction throughput figure, the first id they take, and how many such
/// transactions each side runs (in turn with the other side's; the figure is their median: on two
/// shared cores a single run swings by ±20%, and the machine's speed drifts within a minute).
const BULK_ROWS: i32 = 100_000;
const BULK_FIRST_ID: i32 = 1_000_001;
const BULK_RUNS: i32 = 5;
/// Rows of the one-transaction memory figure (`tandem run --once` in its own process).
const RSS_ROWS: i32 = 1_000_000;
/// (commits per second, commits) of the latency figures.
const LATENCY_RUNS: [(u32, usize); 2] = [(1_000, 5_000), (200, 2_000)];
/// How often visibility is polled in the throughput figure, and for how long at most.
const POLL_EVERY: Duration = Duration::from_millis(2);
const POLL_DEADLINE: Duration = Duration::from_secs(120);
/// How long `tandem run --once` may take before it is killed.
const CHILD_DEADLINE: Duration = Duration::from_secs(150);

const GOAL_P50_MS: f64 = 5.0;
const GOAL_P99_MS: f64 = 10.0;
/// tandem's median 100k-row transaction rate divided by native replication's, at least.
const GOAL_BULK_RATIO: f64 = 1.0;
const GOAL_RSS_MB: f64 = 128.0;

const DESKTOP_TABLE: &str = "(id int PRIMARY KEY, name text, qty int, note text)";
const CLOUD_TABLE: &str = "(id int PRIMARY KEY, name text, qty int, note text, source char(1), \
     created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())";
/// The columns the desktop has; native replication publishes only these (see `native`).
const DESKTOP_COLUMNS: &str = "id, name, qty, note";
const ARRIVAL_CHANNEL: &str = "rev_arrived";
const ARRIVAL_FUNCTION: &str = "CREATE FUNCTION rev_arrived() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN PERFORM pg_notify('rev_arrived', NEW.id::text); RETURN NULL; END $$";
const ARRIVAL_TRIGGER: &str = "rev_arrived";
/// tandem's slot for the in-process figures, and the one of the memory figure's own databases (slots
/// belong to the cluster, not to a database).
const SLOT: &str = "bench_rev";
const RSS_SLOT: &str = "bench_rev_rss";
const INITIAL_SLOT: &str = "bench_rev_initial";
const NATIVE_PUB: &str = "native_pub";
const NATIVE_SUB: &str = "native_sub";
/// The second native reference: all seven columns, no column list (its slot is named after it).
const NATIVE_FULL_SUB: &str = "native_full_sub";

fn main() -> Result<()> {
    support::with_clusters(
        "bench-rev",
        vec![("wal_sender_timeout".into(), "'10s'".into())],
        ", cloud wal_sender_timeout = 10s; the bench's cloud writer sessions SET synchronous_commit = on",
        |desktop, cloud| Box::pin(bench(desktop, cloud)),
    )
}

// ---------------------------------------------------------------------------------------------------
// Results

#[derive(Debug, Clone, Copy)]
struct Throughput {
    rows: i32,
    /// From the cloud COMMIT returning to all rows visible on the desktop.
    elapsed: Duration,
    /// Time the cloud spent writing (INSERT … SELECT + COMMIT).
    cloud_write: Duration,
    stats: Option<RunStats>,
}

impl Throughput {
    fn rows_per_s(&self) -> f64 {
        f64::from(self.rows) / self.elapsed.as_secs_f64()
    }
}

/// The median run by rows/s.
fn median(runs: &[Throughput]) -> Option<&Throughput> {
    let mut sorted: Vec<&Throughput> = runs.iter().collect();
    sorted.sort_by(|a, b| a.rows_per_s().total_cmp(&b.rows_per_s()));
    sorted.get(sorted.len() / 2).copied()
}

/// `tandem run --once` through one big transaction, in its own process.
#[derive(Debug, Clone)]
struct RssRun {
    rows: i32,
    /// The cloud's INSERT … SELECT + COMMIT, before tandem started.
    cloud_write: Duration,
    /// From spawning `tandem run --once` to its exit.
    elapsed: Duration,
    /// tandem's own peak RSS in kB: ru_maxrss of the rusage wait4() returned for its pid.
    maxrss_kb: i64,
    /// getrusage(RUSAGE_CHILDREN) ru_maxrss in kB, before spawning tandem and after waiting for it: the
    /// largest of all children waited for so far, initdb's included.
    children_before_kb: i64,
    children_after_kb: i64,
    desktop_rows: i64,
    /// What `run --once` printed.
    stdout: String,
}

impl RssRun {
    fn rows_per_s(&self) -> f64 {
        f64::from(self.rows) / self.elapsed.as_secs_f64()
    }

    fn peak_mb(&self) -> f64 {
        self.maxrss_kb as f64 / 1024.0
    }

    fn complete(&self) -> bool {
        self.desktop_rows == i64::from(self.rows)
    }
}

#[derive(Debug, Default)]
struct Results {
    latency: Vec<Latency>,
    bulk: Vec<Throughput>,
    native_latency: Vec<Latency>,
    native_bulk: Vec<Throughput>,
    native_full_bulk: Vec<Throughput>,
    rss: Option<RssRun>,
    /// The same rows brought by an initial sync.
    initial: Option<RssRun>,
}

// ---------------------------------------------------------------------------------------------------
// The bench

async fn bench(desktop: &LocalCluster, cloud: &LocalCluster) -> Result<()> {
    let version: String = connect(&desktop.url("postgres"))
        .await?
        .query_one("SHOW server_version", &[])
        .await?
        .get(0);
    println!(
        "PostgreSQL {version}; {} CPU(s); tandem's reverse worker runs in this process (on its own thread, \
         as in `tandem run`) except for the memory figure",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut env = Env {
        desktop,
        cloud,
        next: 0,
    };
    let mut results = Results::default();

    section(&format!(
        "tandem reverse worker (run_reverse), one database pair, slot {SLOT}, tandem's defaults; a fresh \
         worker per figure, each warmed up by one row"
    ));
    println!(
        "  latency: single-row autocommit INSERTs in the cloud, cloud commit → desktop commit (NOTIFY from an \
         AFTER INSERT trigger, read by a LISTEN connection on the desktop); paced by tokio::time::interval \
         with MissedTickBehavior::Burst"
    );
    let mut tandem_side = tandem_latency(&mut env, &mut results).await?;

    section(&format!(
        "reference: PostgreSQL native logical replication (publication {NATIVE_PUB} in the cloud, \
         subscription {NATIVE_SUB} on the desktop, table native_m, no row filter, arrival trigger ENABLE \
         ALWAYS), same clusters, same latency measurements; then the 100k-row transactions of both"
    ));
    native(&mut env, &mut tandem_side, &mut results).await?;

    section("tandem / native, same run");
    print_ratios(&results);

    section(&format!(
        "memory: tandem run --once as its own process through one {}-row cloud transaction (fresh \
         databases, slot {RSS_SLOT}); peak RSS = ru_maxrss of the rusage wait4() returns for its pid",
        thousands(f64::from(RSS_ROWS))
    ));
    let rss = rss_figure(&mut env, true).await?;
    print_rss(&rss);
    results.rss = Some(rss);

    section(&format!(
        "the same {}-row table as an initial sync: tandem run --once on a table new since init (the \
         cloud's rows reach the desktop through the reconcile's reverse repairs, then the stream reads \
         past them); fresh databases, slot {INITIAL_SLOT}",
        thousands(f64::from(RSS_ROWS))
    ));
    let initial = rss_figure(&mut env, false).await?;
    print_rss(&initial);
    results.initial = Some(initial);

    let own = peak_rss();
    section("summary");
    print_summary(&results);
    println!(
        "\npeak RSS of the bench process (VmHWM; includes the in-process reverse workers and the bench's \
         own bookkeeping): {own}"
    );
    println!("\n{}", one_line_summary(&results));
    Ok(())
}

/// Where the bench makes its databases.
struct Env<'a> {
    desktop: &'a LocalCluster,
    cloud: &'a LocalCluster,
    next: u32,
}

/// A desktop + cloud database pair of the same name.
struct Pair {
    name: String,
    desktop_url: String,
    desktop: Client,
    /// The bench's cloud writer (the "phone").
    cloud: Client,
}

impl Env<'_> {
    /// Fresh, empty databases on both clusters.
    async fn pair(&mut self, label: &str) -> Result<Pair> {
        self.next += 1;
        let name = format!("r{}_{label}", self.next);
        for cluster in [self.desktop, self.cloud] {
            connect(&cluster.url("postgres"))
                .await?
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .with_context(|| {
                    format!("CREATE DATABASE {name} on the {} cluster", cluster.name())
                })?;
        }
        let desktop_url = self.desktop.url(&name);
        let cloud = connect(&self.cloud.url(&name)).await?;
        // The clusters commit durably already; said here too, since without it a walsender sends WAL
        // only once the WAL writer flushed it (wal_writer_delay, 200 ms): both tandem's slot and the
        // native subscription would measure that delay, not replication.
        cloud.batch_execute("SET synchronous_commit = on").await?;
        Ok(Pair {
            desktop: connect(&desktop_url).await?,
            cloud,
            name,
            desktop_url,
        })
    }

    /// Fresh databases holding `bench_m` on both sides (on the desktop with the arrival trigger,
    /// disabled, when asked), tandem installed with `slot`. Returns the config and its text.
    async fn tandem(
        &mut self,
        label: &str,
        slot: &str,
        arrival_trigger: bool,
    ) -> Result<(Pair, Config, String)> {
        let pair = self.pair(label).await?;
        pair.cloud
            .batch_execute(&format!("CREATE TABLE bench_m {CLOUD_TABLE}"))
            .await?;
        pair.desktop
            .batch_execute(&format!("CREATE TABLE bench_m {DESKTOP_TABLE}"))
            .await?;
        if arrival_trigger {
            pair.desktop
                .batch_execute(&format!(
                    "{ARRIVAL_FUNCTION}; CREATE TRIGGER {ARRIVAL_TRIGGER} AFTER INSERT ON bench_m FOR EACH ROW \
                     EXECUTE FUNCTION rev_arrived(); ALTER TABLE bench_m DISABLE TRIGGER {ARRIVAL_TRIGGER}"
                ))
                .await?;
        }
        let text = format!(
            "[desktop]\nurl = \"{}\"\n[cloud]\nurl = \"{}\"\nslot = \"{slot}\"\n\
             [[tables]]\ndesktop = \"bench_m\"\nkey = [\"id\"]\n",
            pair.desktop_url,
            self.cloud.url(&pair.name)
        );
        let config = Config::parse(&format!("bench config {}", pair.name), &text, &|_| None)?;
        tandem::setup::init(&config, false)
            .await
            .with_context(|| format!("tandem init on {}", pair.name))?;
        Ok((pair, config, text))
    }
}

/// tandem's reverse worker, in a spawned task.
struct Worker {
    token: CancellationToken,
    handle: JoinHandle<Result<RunStats, RunError>>,
}

impl Worker {
    /// Starts the worker once the slot is free (the previous worker's walsender may still hold it),
    /// and waits until one row (`warm_up_id`) went through: it connected, loaded the mapping, made its
    /// staging tables and streams.
    async fn start(config: &Config, pair: &Pair, table: &str, warm_up_id: i32) -> Result<Worker> {
        wait_slot_free(&pair.cloud, &config.cloud.slot).await?;
        let token = CancellationToken::new();
        let shutdown = token.clone();
        let config = config.clone();
        let handle = tokio::spawn(async move {
            run_reverse(&config, RunOptions { once: false }, shutdown).await
        });
        let worker = Worker { token, handle };
        let warm_up = async {
            pair.cloud
                .execute(
                    &format!(
                        "INSERT INTO {table} (id, name, qty, note, source) VALUES ($1, 'warm-up', 0, 'warm-up', 'M')"
                    ),
                    &[&warm_up_id],
                )
                .await?;
            wait_row(&pair.desktop, table, warm_up_id)
                .await
                .context("the warm-up row")
        };
        Ok(worker.during(warm_up).await?.1)
    }

    /// Runs `measure` while the worker runs; fails at once with the worker's error if it stops first.
    async fn during<T>(mut self, measure: impl Future<Output = Result<T>>) -> Result<(T, Worker)> {
        let stopped = tokio::select! {
            measured = measure => match measured {
                Ok(value) => return Ok((value, self)),
                Err(e) => {
                    self.token.cancel();
                    return Err(e);
                }
            },
            stopped = &mut self.handle => stopped,
        };
        Err(match stopped {
            Ok(Ok(_)) => anyhow!("the tandem reverse worker stopped on its own"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the tandem reverse worker failed"),
            Err(e) => anyhow::Error::new(e).context("the tandem reverse worker panicked"),
        })
    }

    async fn stop(self) -> Result<RunStats> {
        self.token.cancel();
        let stats = self
            .handle
            .await
            .context("the tandem reverse worker panicked")??;
        Ok(stats)
    }
}

/// Waits until no walsender holds `slot`.
async fn wait_slot_free(cloud: &Client, slot: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active: Option<bool> = cloud
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .map(|r| r.get(0));
        if active != Some(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("replication slot {slot} is still in use after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls until the desktop has the row `id`.
/// Polls (an index probe) until row `id` is visible; returns when it was seen.
async fn wait_row(desktop: &Client, table: &str, id: i32) -> Result<Instant> {
    let stmt = desktop
        .prepare(&format!("SELECT count(*) FROM {table} WHERE id = $1"))
        .await?;
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        let n: i64 = desktop.query_one(&stmt, &[&id]).await?.get(0);
        let seen = Instant::now();
        if n > 0 {
            return Ok(seen);
        }
        if seen > deadline {
            bail!("row {id} of {table} did not reach the desktop in {POLL_DEADLINE:?}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

async fn count(client: &Client, table: &str) -> Result<i64> {
    Ok(client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0))
}

/// The phone's rows. `source` is written as 'M' for native_m too (tandem's ownership trigger sets it
/// on bench_m anyway), so both tables hold the same rows.
fn bulk_insert(table: &str, first: i32, last: i32) -> String {
    format!(
        "INSERT INTO {table} (id, name, qty, note, source) SELECT g, 'name '||g, g % 100, repeat('x', 40), 'M' \
         FROM generate_series({first}, {last}) g"
    )
}

/// One cloud transaction of `BULK_ROWS` rows from id `first`; the desktop already holds `baseline`
/// rows.
async fn one_tx(
    cloud: &mut Client,
    desktop: &Client,
    table: &str,
    first: i32,
    baseline: i64,
) -> Result<Throughput> {
    let started = Instant::now();
    let tx = cloud.transaction().await?;
    tx.execute(&bulk_insert(table, first, first + BULK_ROWS - 1), &[])
        .await?;
    tx.commit().await?;
    let committed = Instant::now();
    // The rows come in one desktop transaction (tandem's, or the subscription's apply of the cloud's
    // one), so the last row visible means all are: polling for it is an index probe, where counting
    // would cost the desktop a scan of a growing table every 2 ms. The count checks it afterwards.
    let visible = wait_row(desktop, table, first + BULK_ROWS - 1).await?;
    let n = count(desktop, table).await?;
    let target = baseline + i64::from(BULK_ROWS);
    if n != target {
        bail!(
            "{table} on the desktop holds {n} rows once row {} is there, not {target}",
            first + BULK_ROWS - 1
        );
    }
    Ok(Throughput {
        rows: BULK_ROWS,
        elapsed: visible - committed,
        cloud_write: committed - started,
        stats: None,
    })
}

/// tandem's side of the bench: its databases, config, and the last warm-up id used.
struct TandemSide {
    pair: Pair,
    config: Config,
    warm_up_id: i32,
}

/// tandem's latency runs on one pair, each with a fresh worker. Returns the pair for the 100k-row
/// transactions (see [`bulk`]).
async fn tandem_latency(env: &mut Env<'_>, results: &mut Results) -> Result<TandemSide> {
    let (pair, config, _) = env.tandem("tandem", SLOT, true).await?;
    pair.desktop
        .batch_execute(&format!(
            "ALTER TABLE bench_m ENABLE TRIGGER {ARRIVAL_TRIGGER}"
        ))
        .await?;
    let mut warm_up_id = 0;
    let mut first_id = 1;
    for (rate, commits) in LATENCY_RUNS {
        warm_up_id -= 1;
        let worker = Worker::start(&config, &pair, "bench_m", warm_up_id).await?;
        let (mut l, worker) = worker
            .during(latency(
                &pair.cloud,
                &pair.desktop_url,
                "bench_m",
                rate,
                commits,
                first_id,
            ))
            .await?;
        l.stats = Some(worker.stop().await?);
        print_latency("tandem", &l);
        results.latency.push(l);
        first_id += commits as i32;
    }
    Ok(TandemSide {
        pair,
        config,
        warm_up_id,
    })
}

/// One native reference: its databases and its subscription's name (also its slot's).
struct Native {
    pair: Pair,
    sub: &'static str,
}

/// PostgreSQL's own logical replication over `native_m`, cloud → desktop: the latency runs, then the
/// 100k-row transactions of tandem and two native references in turn (see [`bulk`]). The
/// subscriptions and their slots are removed whatever happens.
///
/// The first reference is what a native user would set up for the desktop's table: the publication has
/// no row filter (every row of native_m is the phone's anyway) but a column list, since the desktop
/// table lacks `source`, `created_at` and `updated_at` and a subscriber refuses a publication that
/// sends columns its table does not have. tandem cannot do that: its tables are REPLICA IDENTITY FULL
/// (the phone's old row tells a conflict), and PostgreSQL refuses a column list without the identity
/// columns, so tandem receives all seven columns and drops the three itself. The second reference
/// receives the same seven columns as tandem (its desktop table has them all): the same stream.
async fn native(env: &mut Env<'_>, tandem: &mut TandemSide, results: &mut Results) -> Result<()> {
    let mut columns = native_setup(env, "native", NATIVE_SUB, false).await?;
    let mut full = match native_setup(env, "native_full", NATIVE_FULL_SUB, true).await {
        Ok(full) => full,
        Err(e) => {
            let _ = drop_subscription(&columns).await;
            return Err(e);
        }
    };
    let measured = async {
        native_latency(&mut columns.pair, results).await?;
        bulk(
            (env.desktop, env.cloud),
            tandem,
            [&mut columns, &mut full],
            results,
        )
        .await
    }
    .await;
    let dropped = drop_subscription(&columns).await;
    let dropped_full = drop_subscription(&full).await;
    measured?;
    dropped?;
    dropped_full
}

/// Fresh databases with `native_m`, a publication of it (with the desktop's columns, or all of them)
/// and a subscription `sub` on the desktop (the seven-column one created disabled: it runs only in
/// its bulk turns).
async fn native_setup(
    env: &mut Env<'_>,
    label: &str,
    sub: &'static str,
    all_columns: bool,
) -> Result<Native> {
    let pair = env.pair(label).await?;
    let (published, desktop_table, enabled) = if all_columns {
        (String::new(), CLOUD_TABLE, false)
    } else {
        (format!(" ({DESKTOP_COLUMNS})"), DESKTOP_TABLE, true)
    };
    pair.cloud
        .batch_execute(&format!(
            "CREATE TABLE native_m {CLOUD_TABLE}; \
             CREATE PUBLICATION {NATIVE_PUB} FOR TABLE native_m{published}"
        ))
        .await?;
    // The subscription's apply worker runs with session_replication_role = replica: only an ALWAYS
    // trigger fires there.
    pair.desktop
        .batch_execute(&format!(
            "CREATE TABLE native_m {desktop_table}; {ARRIVAL_FUNCTION}; \
             CREATE TRIGGER {ARRIVAL_TRIGGER} AFTER INSERT ON native_m FOR EACH ROW EXECUTE FUNCTION rev_arrived(); \
             ALTER TABLE native_m ENABLE ALWAYS TRIGGER {ARRIVAL_TRIGGER}"
        ))
        .await?;
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname={} user=postgres",
        env.cloud.port(),
        pair.name
    );
    pair.desktop
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION {sub} CONNECTION '{conninfo}' PUBLICATION {NATIVE_PUB} \
             WITH (copy_data = false, enabled = {enabled})"
        ))
        .await
        .with_context(|| format!("CREATE SUBSCRIPTION {sub}"))?;
    Ok(Native { pair, sub })
}

async fn native_latency(pair: &mut Pair, results: &mut Results) -> Result<()> {
    // Ready: the table's sync state is 'r' and a warm-up row went through.
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        let ready: bool = pair
            .desktop
            .query_one(
                "SELECT count(*) > 0 AND bool_and(srsubstate = 'r') FROM pg_subscription_rel",
                &[],
            )
            .await?
            .get(0);
        if ready {
            break;
        }
        if Instant::now() > deadline {
            bail!("the subscription's table did not become ready in {POLL_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pair.cloud
        .batch_execute(
            "INSERT INTO native_m (id, name, qty, note, source) VALUES (0, 'warm-up', 0, 'warm-up', 'M')",
        )
        .await?;
    wait_row(&pair.desktop, "native_m", 0)
        .await
        .context("the warm-up row")?;

    let mut first_id = 1;
    for (rate, commits) in LATENCY_RUNS {
        let l = latency(
            &pair.cloud,
            &pair.desktop_url,
            "native_m",
            rate,
            commits,
            first_id,
        )
        .await?;
        print_latency("native", &l);
        results.native_latency.push(l);
        first_id += commits as i32;
    }
    Ok(())
}

/// The 100k-row transactions: tandem's and the two native references' in turn, `BULK_RUNS` each, so
/// that the machine's drift over a minute (two shared cores) falls on all alike. Only one side
/// replicates at a time: the others' worker is stopped (tandem) or subscription disabled (native), and
/// each turn begins by waiting for a warm-up row, so its walsender has caught up with the others'
/// transactions before the clock starts. Arrival triggers are off. Prints where the CPU went.
async fn bulk(
    clusters: (&LocalCluster, &LocalCluster),
    tandem: &mut TandemSide,
    natives: [&mut Native; 2],
    results: &mut Results,
) -> Result<()> {
    section(&format!(
        "{BULK_RUNS} transactions of {} rows each side, in turns: tandem, native (the desktop's four \
         columns), native (all seven, as tandem receives them); each timed from the cloud COMMIT to its \
         last row visible on the desktop (looked up every 2 ms; the count checked after)",
        thousands(f64::from(BULK_ROWS))
    ));
    tandem
        .pair
        .desktop
        .batch_execute(&format!(
            "ALTER TABLE bench_m DISABLE TRIGGER {ARRIVAL_TRIGGER}"
        ))
        .await?;
    for native in &natives {
        native
            .pair
            .desktop
            .batch_execute(&format!(
                "ALTER TABLE native_m DISABLE TRIGGER {ARRIVAL_TRIGGER}"
            ))
            .await?;
        subscription(native, false).await?;
    }
    let [columns, full] = natives;
    let mut cpu: [CpuTotals; 3] = Default::default();
    for run in 0..BULK_RUNS {
        let first = BULK_FIRST_ID + run * BULK_ROWS;

        tandem.warm_up_id -= 1;
        let worker =
            Worker::start(&tandem.config, &tandem.pair, "bench_m", tandem.warm_up_id).await?;
        let pair = &mut tandem.pair;
        let baseline = count(&pair.desktop, "bench_m").await?;
        let before = CpuSample::take(clusters.0, clusters.1)?;
        let (mut t, worker) = worker
            .during(one_tx(
                &mut pair.cloud,
                &pair.desktop,
                "bench_m",
                first,
                baseline,
            ))
            .await?;
        cpu[0].add(
            &CpuSample::take(clusters.0, clusters.1)?.since(&before),
            t.cloud_write + t.elapsed,
        );
        t.stats = Some(worker.stop().await?);
        results.bulk.push(t);

        let n = native_turn(clusters, columns, first, -(run + 1), &mut cpu[1]).await?;
        results.native_bulk.push(n);
        let f = native_turn(clusters, full, first, -(run + 1), &mut cpu[2]).await?;
        results.native_full_bulk.push(f);

        println!(
            "  run {}/{BULK_RUNS}: tandem {:.3} s → {} rows/s; native {:.3} s → {} rows/s; native, seven \
             columns {:.3} s → {} rows/s",
            run + 1,
            t.elapsed.as_secs_f64(),
            thousands(t.rows_per_s()),
            n.elapsed.as_secs_f64(),
            thousands(n.rows_per_s()),
            f.elapsed.as_secs_f64(),
            thousands(f.rows_per_s()),
        );
    }
    print_throughput("tandem", &results.bulk);
    cpu[0].print();
    print_throughput("native", &results.native_bulk);
    cpu[1].print();
    print_throughput("native, seven columns", &results.native_full_bulk);
    cpu[2].print();
    Ok(())
}

/// One native turn: enable the subscription, wait for a warm-up row, time one transaction, disable.
async fn native_turn(
    clusters: (&LocalCluster, &LocalCluster),
    native: &mut Native,
    first: i32,
    warm_up_id: i32,
    cpu: &mut CpuTotals,
) -> Result<Throughput> {
    subscription(native, true).await?;
    let pair = &mut native.pair;
    pair.cloud
        .execute(
            "INSERT INTO native_m (id, name, qty, note, source) VALUES ($1, 'warm-up', 0, 'warm-up', 'M')",
            &[&warm_up_id],
        )
        .await?;
    wait_row(&pair.desktop, "native_m", warm_up_id)
        .await
        .with_context(|| format!("the warm-up row of {}", native.sub))?;
    let baseline = count(&pair.desktop, "native_m").await?;
    let before = CpuSample::take(clusters.0, clusters.1)?;
    let n = one_tx(&mut pair.cloud, &pair.desktop, "native_m", first, baseline).await?;
    cpu.add(
        &CpuSample::take(clusters.0, clusters.1)?.since(&before),
        n.cloud_write + n.elapsed,
    );
    subscription(native, false).await?;
    Ok(n)
}

/// Enables or disables the native subscription; disabled, waits until its walsender let go of the
/// slot (the apply worker stops shortly after).
async fn subscription(native: &Native, enabled: bool) -> Result<()> {
    let (pair, sub) = (&native.pair, native.sub);
    let verb = if enabled { "ENABLE" } else { "DISABLE" };
    pair.desktop
        .batch_execute(&format!("ALTER SUBSCRIPTION {sub} {verb}"))
        .await
        .with_context(|| format!("ALTER SUBSCRIPTION {sub} {verb}"))?;
    if !enabled {
        wait_slot_free(&pair.cloud, sub).await?;
    }
    Ok(())
}

async fn drop_subscription(native: &Native) -> Result<()> {
    let (pair, sub) = (&native.pair, native.sub);
    for sql in [
        format!("ALTER SUBSCRIPTION {sub} DISABLE"),
        format!("ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)"),
        format!("DROP SUBSCRIPTION {sub}"),
    ] {
        pair.desktop
            .batch_execute(&sql)
            .await
            .with_context(|| sql.clone())?;
    }
    // The cloud's walsender lets go of the slot shortly after the apply worker stops.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match pair
            .cloud
            .execute("SELECT pg_drop_replication_slot($1)", &[&sub])
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "the native slot is still in use; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(e).context("dropping the native subscription's slot in the cloud");
            }
        }
    }
}

/// Fresh databases, tandem installed, one `RSS_ROWS`-row transaction committed in the cloud; then
/// `tandem run --once` as a child process, alone.
async fn rss_figure(env: &mut Env<'_>, synced: bool) -> Result<RssRun> {
    let (mut pair, _, text) = env
        .tandem(
            if synced { "rss" } else { "initial" },
            if synced { RSS_SLOT } else { INITIAL_SLOT },
            false,
        )
        .await?;
    if synced {
        // The table streams from init on (as after its initial sync): the stream brings the rows.
        pair.desktop
            .batch_execute(
                "UPDATE tandem.table_state SET state = 'streaming', since = now(), synced_at = now()",
            )
            .await?;
    }
    let started = Instant::now();
    let tx = pair.cloud.transaction().await?;
    tx.execute(&bulk_insert("bench_m", 1, RSS_ROWS), &[])
        .await?;
    tx.commit().await?;
    let cloud_write = started.elapsed();

    let path = std::env::temp_dir().join(format!(
        "tandem-bench-reverse-{}-{}.toml",
        std::process::id(),
        pair.name
    ));
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    let ran = run_once(&path).await;
    let _ = std::fs::remove_file(&path);
    let child = ran?;
    let desktop_rows = count(&pair.desktop, "bench_m").await?;
    Ok(RssRun {
        rows: RSS_ROWS,
        cloud_write,
        elapsed: child.elapsed,
        maxrss_kb: child.maxrss_kb,
        children_before_kb: child.children_before_kb,
        children_after_kb: child.children_after_kb,
        desktop_rows,
        stdout: child.stdout,
    })
}

/// What `run_once` saw of the child.
struct ChildRun {
    elapsed: Duration,
    maxrss_kb: i64,
    children_before_kb: i64,
    children_after_kb: i64,
    stdout: String,
}

/// Runs the release binary `tandem -c <config> run --once` and reaps it with wait4(), which gives the
/// rusage of that one process (killed after `CHILD_DEADLINE`). getrusage(RUSAGE_CHILDREN) alone cannot
/// tell it apart: its ru_maxrss is the largest of every child waited for, and LocalCluster::start's
/// initdb (whose bootstrap backends it waited for) is one of them.
async fn run_once(config: &Path) -> Result<ChildRun> {
    let out_path = config.with_extension("out");
    let out = std::fs::File::create(&out_path)
        .with_context(|| format!("creating {}", out_path.display()))?;
    // Its log lines (stderr) show only with RUST_LOG set, or when it fails.
    let log_path = config.with_extension("log");
    let log: Stdio = if std::env::var_os("RUST_LOG").is_some() {
        Stdio::inherit()
    } else {
        std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?
            .into()
    };
    let children_before_kb = children_maxrss_kb()?;
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("-c")
        .arg(config)
        .args(["run", "--once"])
        // The config file names the databases; these would override it.
        .env_remove("TANDEM_CONFIG")
        .env_remove("TANDEM_DESKTOP_URL")
        .env_remove("TANDEM_CLOUD_URL")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(log)
        .spawn()
        .context("starting tandem run --once")?;
    let pid = libc::pid_t::try_from(child.id()).context("the child's pid")?;
    let deadline = started + CHILD_DEADLINE;
    let mut killed = false;
    let (status, usage) = loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain old data; wait4 only writes into it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our own child, not reaped yet (std's Child is never waited on); valid pointers.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == pid {
            break (status, usage);
        }
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // ECHILD: it is not ours to kill any more.
            return Err(e).context("wait4 on tandem run --once");
        }
        if !killed && Instant::now() > deadline {
            child.kill().context("killing tandem run --once")?;
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let elapsed = started.elapsed();
    let children_after_kb = children_maxrss_kb()?;
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&log_path);
    if killed {
        bail!(
            "tandem run --once did not finish in {CHILD_DEADLINE:?}; it printed:\n{stdout}{stderr}"
        );
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("tandem run --once failed (wait status {status:#x}); it printed:\n{stdout}{stderr}");
    }
    Ok(ChildRun {
        elapsed,
        maxrss_kb: usage.ru_maxrss,
        children_before_kb,
        children_after_kb,
        stdout,
    })
}

/// getrusage(RUSAGE_CHILDREN) ru_maxrss: the largest peak RSS (kB) of the children waited for so far.
fn children_maxrss_kb() -> Result<i64> {
    // SAFETY: rusage is plain old data; getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a valid pointer to a rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage(RUSAGE_CHILDREN)");
    }
    Ok(usage.ru_maxrss)
}

// ---------------------------------------------------------------------------------------------------
// CPU accounting (Linux /proc)

/// CPU ticks (user + system) of every process of both clusters and of this process's threads, at one
/// moment. Two of them give where the CPU went in between: the clusters' walsenders, backends, apply
/// workers, and tandem's reverse thread.
struct CpuSample {
    /// pid → (what it is, ticks); processes of both clusters.
    servers: HashMap<u32, (String, u64)>,
    /// thread name → ticks, this process's threads.
    threads: HashMap<String, u64>,
}

impl CpuSample {
    fn take(desktop: &LocalCluster, cloud: &LocalCluster) -> Result<Self> {
        let mut servers = HashMap::new();
        let postmasters = [
            (postmaster_pid(desktop)?, "desktop"),
            (postmaster_pid(cloud)?, "cloud"),
        ];
        for entry in std::fs::read_dir("/proc").context("reading /proc")? {
            let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Some((ppid, ticks)) = read_stat(&format!("/proc/{pid}/stat")) else {
                continue; // gone meanwhile
            };
            if let Some((_, side)) = postmasters.iter().find(|(pm, _)| *pm == ppid) {
                let title =
                    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                servers.insert(pid, (format!("{side} {}", server_role(&title)), ticks));
            }
        }
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")? {
            let task = entry?.path();
            let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if let Some((_, ticks)) = read_stat(&task.join("stat").to_string_lossy()) {
                *threads.entry(name.trim().to_string()).or_default() += ticks;
            }
        }
        Ok(CpuSample { servers, threads })
    }

    /// CPU seconds per kind of process since `before`, largest first. A server process that began and
    /// ended in between is not seen.
    fn since(&self, before: &CpuSample) -> Vec<(String, f64)> {
        // SAFETY: sysconf only reads a constant.
        let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut by_role: HashMap<String, u64> = HashMap::new();
        for (pid, (role, ticks)) in &self.servers {
            let start = before.servers.get(pid).map_or(0, |(_, t)| *t);
            *by_role.entry(role.clone()).or_default() += ticks.saturating_sub(start);
        }
        let mut reverse = 0;
        let mut rest = 0;
        for (name, ticks) in &self.threads {
            let spent = ticks.saturating_sub(before.threads.get(name).copied().unwrap_or(0));
            if name == "tandem-reverse" {
                reverse += spent;
            } else {
                rest += spent;
            }
        }
        if reverse > 0 {
            by_role.insert("tandem-reverse thread".into(), reverse);
        }
        by_role.insert("bench process, other threads".into(), rest);
        let mut out: Vec<(String, f64)> = by_role
            .into_iter()
            .filter(|(_, t)| *t > 0)
            .map(|(role, t)| (role, t as f64 / per_s))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

fn postmaster_pid(cluster: &LocalCluster) -> Result<u32> {
    let path = cluster.dir().join("data").join("postmaster.pid");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow!("{} does not start with a pid", path.display()))
}

/// (parent pid, user + system ticks) from a /proc stat file.
fn read_stat(path: &str) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: state is the first.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// What a server process is, from the title PostgreSQL gives it.
fn server_role(title: &str) -> &'static str {
    let title = title.replace('\0', " ");
    if title.contains("walsender") {
        "walsender"
    } else if title.contains("logical replication") {
        "apply worker"
    } else if title.contains("autovacuum") {
        "autovacuum"
    } else if ["checkpointer", "background writer", "walwriter", "archiver"]
        .iter()
        .any(|p| title.contains(p))
    {
        "background writers"
    } else {
        "backends"
    }
}

/// CPU seconds per kind of process, summed over the transactions (from the cloud's first INSERT to the
/// last row visible on the desktop), and the wall clock they took.
#[derive(Debug, Default)]
struct CpuTotals {
    spent: HashMap<String, f64>,
    wall: Duration,
}

impl CpuTotals {
    fn add(&mut self, spent: &[(String, f64)], wall: Duration) {
        for (role, s) in spent {
            *self.spent.entry(role.clone()).or_default() += s;
        }
        self.wall += wall;
    }

    fn print(&self) {
        let mut spent: Vec<(&String, &f64)> = self.spent.iter().collect();
        spent.sort_by(|a, b| b.1.total_cmp(a.1));
        let parts: Vec<String> = spent
            .iter()
            .map(|(role, s)| format!("{role} {s:.2} s"))
            .collect();
        let total: f64 = self.spent.values().sum();
        println!(
            "      CPU from each cloud INSERT to its last row on the desktop ({:.2} s of wall clock in all, \
             {total:.2} CPU s): {}",
            self.wall.as_secs_f64(),
            parts.join(", ")
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Printing

fn print_stats(s: &RunStats) -> String {
    format!(
        "worker: {} group(s) for {} cloud transaction(s) = {:.2} tx/group, {} rows written, {} conflicts, \
         {} dead letters, {} retries (warm-up row included)",
        s.batches,
        thousands(s.outbox_rows as f64),
        s.outbox_rows as f64 / s.batches.max(1) as f64,
        thousands(s.outcome.written as f64),
        s.outcome.conflicts,
        s.outcome.dead_letters,
        s.retries
    )
}

/// The median of the runs, and tandem's worker counters of the last one.
fn print_throughput(who: &str, runs: &[Throughput]) {
    let (Some(t), Some(last)) = (median(runs), runs.last()) else {
        return;
    };
    let rates: Vec<f64> = runs.iter().map(Throughput::rows_per_s).collect();
    println!(
        "  {who}, {} transactions of {} rows: median {:.3} s → {} rows/s (runs from {} to {} rows/s)",
        runs.len(),
        thousands(f64::from(t.rows)),
        t.elapsed.as_secs_f64(),
        thousands(t.rows_per_s()),
        thousands(rates.iter().copied().fold(f64::INFINITY, f64::min)),
        thousands(rates.iter().copied().fold(0.0, f64::max)),
    );
    let mut detail = format!(
        "      cloud write (INSERT … SELECT + COMMIT{}) {:.3} s",
        if last.stats.is_some() {
            ", incl. tandem's ownership trigger"
        } else {
            ", no triggers"
        },
        t.cloud_write.as_secs_f64()
    );
    if let Some(s) = &last.stats {
        detail.push_str("; ");
        detail.push_str(&print_stats(s));
    }
    println!("{detail}");
}

fn print_latency(who: &str, l: &Latency) {
    println!(
        "  {who} at {}/s: {} commits, achieved {:.0} commits/s, {} of {} arrived: p50 {:.2} ms [goal ≤ {GOAL_P50_MS} ms: {}], \
         p99 {:.2} ms [goal ≤ {GOAL_P99_MS} ms: {}], max {:.2} ms",
        thousands(f64::from(l.target_rate)),
        thousands(l.commits as f64),
        l.achieved_rate,
        l.arrived,
        l.commits,
        ms(l.p50),
        verdict(ms(l.p50) <= GOAL_P50_MS),
        ms(l.p99),
        verdict(ms(l.p99) <= GOAL_P99_MS),
        ms(l.max),
    );
    let mut detail = format!(
        "      cloud INSERT round trip (autocommit, synchronous_commit on) p50 {:.2} ms",
        ms(l.commit_p50)
    );
    if let Some(s) = &l.stats {
        detail.push_str("; ");
        detail.push_str(&print_stats(s));
    }
    println!("{detail}");
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "-".to_string()
    }
}

/// tandem's median rows/s over a native reference's.
fn bulk_ratio_to(r: &Results, native: &[Throughput]) -> Option<f64> {
    match (median(&r.bulk), median(native)) {
        (Some(t), Some(n)) => Some(t.rows_per_s() / n.rows_per_s()),
        _ => None,
    }
}

/// The goal's ratio: to native with the desktop's columns.
fn bulk_ratio(r: &Results) -> Option<f64> {
    bulk_ratio_to(r, &r.native_bulk)
}

/// In how many turns tandem was the faster.
fn turns_won(r: &Results, native: &[Throughput]) -> String {
    let won = r
        .bulk
        .iter()
        .zip(native)
        .filter(|(t, n)| t.rows_per_s() > n.rows_per_s())
        .count();
    format!("{won} of {}", r.bulk.len().min(native.len()))
}

fn print_ratios(r: &Results) {
    for l in &r.latency {
        let Some(n) = r
            .native_latency
            .iter()
            .find(|n| n.target_rate == l.target_rate)
        else {
            continue;
        };
        println!(
            "  latency at {}/s, tandem / native (> 1 = tandem slower): p50 {}, p99 {}, max {}",
            thousands(f64::from(l.target_rate)),
            ratio(ms(l.p50), ms(n.p50)),
            ratio(ms(l.p99), ms(n.p99)),
            ratio(ms(l.max), ms(n.max)),
        );
    }
    if let Some(q) = bulk_ratio(r) {
        println!(
            "  one {}-row transaction, tandem median rows/s / native median rows/s (> 1 = tandem faster): {q:.2}× \
             [goal ≥ {GOAL_BULK_RATIO:.1}×: {}]",
            thousands(f64::from(BULK_ROWS)),
            verdict(q >= GOAL_BULK_RATIO)
        );
        println!(
            "      tandem was the faster in {} turns",
            turns_won(r, &r.native_bulk)
        );
    }
    if let Some(q) = bulk_ratio_to(r, &r.native_full_bulk) {
        println!(
            "  the same, to native receiving all seven columns as tandem does (the same stream): {q:.2}×; \
             tandem the faster in {} turns",
            turns_won(r, &r.native_full_bulk)
        );
    }
}

fn print_rss(r: &RssRun) {
    println!(
        "  cloud: one {}-row INSERT … SELECT + COMMIT (through tandem's ownership trigger) {:.2} s, \
         before tandem started",
        thousands(f64::from(r.rows)),
        r.cloud_write.as_secs_f64()
    );
    println!(
        "  tandem run --once: {:.2} s from spawn to exit → {} rows/s; peak RSS {:.1} MB ({} kB, ru_maxrss of \
         wait4 on its pid) [goal ≤ {GOAL_RSS_MB} MB: {}]",
        r.elapsed.as_secs_f64(),
        thousands(r.rows_per_s()),
        r.peak_mb(),
        thousands(r.maxrss_kb as f64),
        verdict(r.peak_mb() <= GOAL_RSS_MB),
    );
    println!(
        "      getrusage(RUSAGE_CHILDREN) ru_maxrss, the largest of all children waited for: {} kB before \
         spawning tandem (initdb's bootstrap backends), {} kB after reaping it",
        thousands(r.children_before_kb as f64),
        thousands(r.children_after_kb as f64)
    );
    println!(
        "      desktop bench_m afterwards: {} rows [{} {}]",
        thousands(r.desktop_rows as f64),
        if r.complete() { "ok, =" } else { "WRONG, ≠" },
        thousands(f64::from(r.rows))
    );
    for line in r.stdout.lines() {
        println!("      tandem: {line}");
    }
}

fn latency_cell(ls: &[Latency], target: u32) -> String {
    ls.iter()
        .find(|l| l.target_rate == target)
        .map_or("-".to_string(), |l| {
            format!("{:.2} / {:.2} / {:.1}", ms(l.p50), ms(l.p99), ms(l.max))
        })
}

fn latency_ratio_cell(r: &Results, target: u32) -> String {
    let find = |ls: &[Latency]| ls.iter().find(|l| l.target_rate == target).cloned();
    match (find(&r.latency), find(&r.native_latency)) {
        (Some(t), Some(n)) => format!(
            "{} / {} / {}",
            ratio(ms(t.p50), ms(n.p50)),
            ratio(ms(t.p99), ms(n.p99)),
            ratio(ms(t.max), ms(n.max))
        ),
        _ => "-".to_string(),
    }
}

fn print_summary(r: &Results) {
    let rate =
        |runs: &[Throughput]| median(runs).map_or("-".to_string(), |t| thousands(t.rows_per_s()));
    let row = |label: &str, a: &str, b: &str, c: &str| {
        println!("  {label:<40} {a:>24} {b:>24} {c:>16}");
    };
    row(
        "",
        "1,000/s p50/p99/max",
        "200/s p50/p99/max",
        "100k × 1 tx, median",
    );
    row("", "ms", "ms", "rows/s");
    row(
        "tandem reverse worker",
        &latency_cell(&r.latency, 1_000),
        &latency_cell(&r.latency, 200),
        &rate(&r.bulk),
    );
    row(
        "PostgreSQL native logical replication",
        &latency_cell(&r.native_latency, 1_000),
        &latency_cell(&r.native_latency, 200),
        &rate(&r.native_bulk),
    );
    row(
        "tandem / native",
        &latency_ratio_cell(r, 1_000),
        &latency_ratio_cell(r, 200),
        &bulk_ratio(r).map_or("-".to_string(), |q| format!("{q:.2}×")),
    );
    row(
        "native, all seven columns",
        "-",
        "-",
        &rate(&r.native_full_bulk),
    );
    row(
        "tandem / native, all seven columns",
        "-",
        "-",
        &bulk_ratio_to(r, &r.native_full_bulk).map_or("-".to_string(), |q| format!("{q:.2}×")),
    );
    let goal_latency = format!("≤ {GOAL_P50_MS} / ≤ {GOAL_P99_MS} / -");
    row(
        "goal",
        &goal_latency,
        &goal_latency,
        &format!("≥ {GOAL_BULK_RATIO:.1}× native"),
    );
    if let Some(m) = &r.rss {
        println!(
            "\n  tandem run --once, one {}-row transaction, own process: peak RSS {:.1} MB [goal ≤ {GOAL_RSS_MB} MB: {}], \
             {:.2} s = {} rows/s, desktop count {}",
            thousands(f64::from(m.rows)),
            m.peak_mb(),
            verdict(m.peak_mb() <= GOAL_RSS_MB),
            m.elapsed.as_secs_f64(),
            thousands(m.rows_per_s()),
            if m.complete() { "ok" } else { "WRONG" }
        );
    }
}

fn one_line_summary(r: &Results) -> String {
    let lat = |ls: &[Latency]| {
        ls.iter()
            .map(|l| {
                format!(
                    "@{}/s p50 {:.2} p99 {:.2} ms",
                    l.target_rate,
                    ms(l.p50),
                    ms(l.p99)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rss = r.rss.as_ref().map_or("-".to_string(), |m| {
        format!(
            "1M×1tx run --once peak RSS {:.1} MB, {:.1} s = {} rows/s{}",
            m.peak_mb(),
            m.elapsed.as_secs_f64(),
            thousands(m.rows_per_s()),
            if m.complete() {
                ""
            } else {
                " (desktop count WRONG)"
            }
        )
    });
    let initial = r.initial.as_ref().map_or("-".to_string(), |m| {
        format!(
            "as an initial sync {:.1} MB, {:.1} s{}",
            m.peak_mb(),
            m.elapsed.as_secs_f64(),
            if m.complete() {
                ""
            } else {
                " (desktop count WRONG)"
            }
        )
    });
    format!(
        "SUMMARY reverse: tandem {}; 100k×1tx median {} rows/s | native {}; 100k×1tx median {} rows/s \
         (seven columns: {}) | bulk tandem/native {} (seven columns: {}) | {rss}; {initial}",
        lat(&r.latency),
        median(&r.bulk).map_or("-".to_string(), |t| thousands(t.rows_per_s())),
        lat(&r.native_latency),
        median(&r.native_bulk).map_or("-".to_string(), |t| thousands(t.rows_per_s())),
        median(&r.native_full_bulk).map_or("-".to_string(), |t| thousands(t.rows_per_s())),
        bulk_ratio(r).map_or("-".to_string(), |q| format!("{q:.2}×")),
        bulk_ratio_to(r, &r.native_full_bulk).map_or("-".to_string(), |q| format!("{q:.2}×")),
    )
}

/// Latency of cloud INSERTs (a phone's) reaching the desktop (see [`support::latency`]).
async fn latency(
    cloud: &Client,
    desktop_url: &str,
    table: &str,
    rate: u32,
    commits: usize,
    first_id: i32,
) -> Result<Latency> {
    let insert = format!(
        "INSERT INTO {table} (id, name, qty, note, source) \
         VALUES ($1::int, 'name ' || $1::int, $1::int % 100, repeat('x', 40), 'M')"
    );
    support::latency(support::LatencyRun {
        writer: cloud,
        listen_url: desktop_url,
        there: "on the desktop",
        channel: ARRIVAL_CHANNEL,
        insert: &insert,
        table,
        rate,
        commits,
        first_id,
    })
    .await
}
