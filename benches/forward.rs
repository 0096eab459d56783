//! Forward (desktop → cloud) benchmark: `cargo bench --bench forward`.
//!
//! Starts two throwaway clusters (both `wal_level = logical`, fsync on) and measures, each figure on
//! fresh databases: tandem's throughput for one 100k-row transaction and for 100 × 1,000-row
//! transactions (at two batch sizes), and tandem's commit → visible latency for paced single-row
//! commits. In the same run, on the same clusters, two references: a plain COPY floor and PostgreSQL's
//! own logical replication. Bucardo's figures are quoted from the project's notes, not measured.
//!
//! `RUST_LOG=tandem=debug` prints tandem's per-batch timings on stderr.

mod support;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, pin_mut};
use support::{Latency, connect, ms, peak_rss, section, thousands, verdict};
use tandem::cluster::LocalCluster;
use tandem::config::Config;
use tandem::pipeline::{RunError, RunOptions, RunStats, run_forward};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// Rows of the one-transaction throughput figures.
const BULK_ROWS: i32 = 100_000;
/// 100 transactions of 1,000 rows.
const MANY_TX: i32 = 100;
const MANY_TX_ROWS: i32 = 1_000;
/// Batch sizes the throughput figures are run with.
const BATCH_SIZES: [usize; 2] = [10_000, 50_000];
/// Batch size of the latency figures (tandem's default).
const LATENCY_BATCH: usize = 50_000;
/// (commits per second, commits) of the latency figures.
const LATENCY_RUNS: [(u32, usize); 2] = [(1_000, 5_000), (200, 2_000)];
/// How often visibility is polled in the throughput figures, and for how long at most.
const POLL_EVERY: Duration = Duration::from_millis(2);
const POLL_DEADLINE: Duration = Duration::from_secs(120);
/// COPY floor repetitions (the median is reported).
const FLOOR_RUNS: usize = 3;

const GOAL_P50_MS: f64 = 5.0;
const GOAL_P99_MS: f64 = 10.0;
const GOAL_ROWS_PER_S: f64 = 100_000.0;

const DESKTOP_TABLE: &str = "(id int PRIMARY KEY, name text, qty int, note text)";
const CLOUD_TABLE: &str = "(id int PRIMARY KEY, name text, qty int, note text, source char(1), \
     created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now())";
const ARRIVAL_CHANNEL: &str = "bench_arrived";
const ARRIVAL_FUNCTION: &str = "CREATE FUNCTION bench_arrived() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN PERFORM pg_notify('bench_arrived', NEW.id::text); RETURN NULL; END $$";

/// Quoted from ../shared/notes/measurements.md; not measured by this bench.
const BUCARDO: [&str; 4] = [
    "Bucardo 5.6 (trigger-based), tuned to 1 ms loop sleeps, single-row commits at 200–500/s | p50 5.1–6.1 ms, p99 7.4–10.8 ms",
    "Bucardo 5.6 stock settings | p50 ≈ 255 ms",
    "Bucardo, 100k rows one transaction / 100 × 1,000 | ≈ 29k rows/s / ≈ 46k rows/s",
    "(same notes) PostgreSQL's own subscription, 200–1,000 commits/s: p50 0.8–1.0 ms, p99 1.5–5.6 ms; 100k rows one transaction: 184k–234k rows/s",
];

fn main() -> Result<()> {
    support::with_clusters(
        "bench",
        Vec::new(),
        "; the bench's desktop writer sessions SET synchronous_commit = on",
        |desktop, cloud| Box::pin(bench(desktop, cloud)),
    )
}

// ---------------------------------------------------------------------------------------------------
// Results

#[derive(Debug, Clone, Copy)]
struct Throughput {
    rows: i32,
    /// From the (first) desktop commit returning to all rows visible in the cloud.
    elapsed: Duration,
    /// Time the desktop spent writing (INSERT + COMMIT, all transactions).
    desktop_write: Duration,
    stats: Option<RunStats>,
}

impl Throughput {
    fn rows_per_s(&self) -> f64 {
        f64::from(self.rows) / self.elapsed.as_secs_f64()
    }
}

/// One move of the COPY floor.
#[derive(Debug, Clone, Copy)]
struct FloorRun {
    /// COPY out + COPY in + INSERT … SELECT + COMMIT.
    total: Duration,
    /// The COPY part alone.
    copy: Duration,
}

impl FloorRun {
    fn rows_per_s(&self) -> f64 {
        f64::from(BULK_ROWS) / self.total.as_secs_f64()
    }
}

#[derive(Debug, Default)]
struct Results {
    one_tx: Vec<(usize, Throughput)>,
    many_tx: Vec<(usize, Throughput)>,
    latency: Vec<Latency>,
    floor: Vec<FloorRun>,
    floor_flushed: Option<FloorRun>,
    native_one_tx: Option<Throughput>,
    native_latency: Vec<Latency>,
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
        "PostgreSQL {version}; {} CPU(s); tandem's forward worker runs in this process (tokio multi-thread runtime)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut env = Env {
        desktop,
        cloud,
        next: 0,
    };
    let mut results = Results::default();
    let bulk = thousands(f64::from(BULK_ROWS));

    for batch in BATCH_SIZES {
        section(&format!(
            "tandem throughput, batch_max_rows = {} (desktop commit → all rows visible in the cloud, \
             polled with SELECT count(*) every 2 ms)",
            thousands(batch as f64)
        ));
        let t = tandem_one_tx(&mut env, batch).await?;
        print_throughput(&format!("one {bulk}-row transaction"), &t);
        results.one_tx.push((batch, t));
        let t = tandem_many_tx(&mut env, batch).await?;
        print_throughput(
            &format!(
                "{MANY_TX} transactions of {} (from the first commit)",
                thousands(f64::from(MANY_TX_ROWS))
            ),
            &t,
        );
        results.many_tx.push((batch, t));
    }

    section(&format!(
        "tandem latency, single-row autocommit INSERTs, desktop commit → cloud commit (NOTIFY from an AFTER \
         INSERT trigger), batch_max_rows = {}; paced by tokio::time::interval with MissedTickBehavior::Burst",
        thousands(LATENCY_BATCH as f64)
    ));
    let mut first_id = 1;
    for (rate, commits) in LATENCY_RUNS {
        let l = tandem_latency(&mut env, rate, commits, first_id).await?;
        print_latency("tandem", &l);
        results.latency.push(l);
        first_id += commits as i32;
    }

    section(&format!(
        "reference: plain COPY floor, no tandem, no worker running ({bulk} rows: binary COPY out of the \
         desktop → COPY into a cloud temp staging table → one INSERT … SELECT; empty target, no triggers)"
    ));
    let mut pair = floor_pair(&mut env).await?;
    for _ in 0..FLOOR_RUNS {
        results.floor.push(copy_floor(&mut pair, false).await?);
    }
    let floor = median_floor(&results.floor);
    println!(
        "  floor: {:.3} s median of {FLOOR_RUNS} ({}) = {} rows/s; of which COPY {:.3} s",
        floor.total.as_secs_f64(),
        results
            .floor
            .iter()
            .map(|r| format!("{:.3} s", r.total.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        thousands(floor.rows_per_s()),
        floor.copy.as_secs_f64()
    );
    let flushed = copy_floor(&mut pair, true).await?;
    println!(
        "  diagnostic, the same with one flush per COPY chunk (SinkExt::send per chunk = per row; \
         tandem's commit::pipe uses feed, which batches them): {:.3} s = {} rows/s; of which COPY {:.3} s",
        flushed.total.as_secs_f64(),
        thousands(flushed.rows_per_s()),
        flushed.copy.as_secs_f64()
    );
    results.floor_flushed = Some(flushed);
    drop(pair);

    section(
        "reference: PostgreSQL native logical replication (publication + subscription between the same \
         clusters, table native_item, arrival trigger ENABLE ALWAYS)",
    );
    native(&mut env, &mut results).await?;

    section(
        "reference: Bucardo 5.6 — NOT MEASURED IN THIS RUN, quoted from ../shared/notes/measurements.md",
    );
    for line in BUCARDO {
        println!("  \"{line}\"");
    }

    let rss = peak_rss();
    section("summary");
    print_summary(&results);
    println!(
        "\npeak RSS of the bench process (VmHWM; includes the tandem worker and the bench's own bookkeeping): {rss}"
    );
    println!("\n{}", one_line_summary(&results, &rss));
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
    cloud_url: String,
    /// The bench's desktop writer.
    desktop: Client,
    cloud: Client,
}

impl Env<'_> {
    /// Fresh, empty databases on both clusters.
    async fn pair(&mut self, label: &str) -> Result<Pair> {
        self.next += 1;
        let name = format!("b{}_{label}", self.next);
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
        let cloud_url = self.cloud.url(&name);
        let desktop = connect(&desktop_url).await?;
        // The clusters commit durably already; said here too, since without it a walsender sends WAL
        // only once the WAL writer flushed it (wal_writer_delay, 200 ms): the native reference would
        // measure that delay, not replication.
        desktop.batch_execute("SET synchronous_commit = on").await?;
        Ok(Pair {
            desktop,
            cloud: connect(&cloud_url).await?,
            name,
            desktop_url,
            cloud_url,
        })
    }

    /// Fresh databases holding `bench_item` on both sides, tandem installed, its worker running and
    /// warmed up (one row went through), the outbox empty.
    async fn tandem(
        &mut self,
        label: &str,
        batch_max_rows: usize,
        arrival_trigger: bool,
    ) -> Result<(Pair, Worker)> {
        let pair = self.pair(label).await?;
        pair.desktop
            .batch_execute(&format!("CREATE TABLE bench_item {DESKTOP_TABLE}"))
            .await?;
        pair.cloud
            .batch_execute(&format!("CREATE TABLE bench_item {CLOUD_TABLE}"))
            .await?;
        if arrival_trigger {
            pair.cloud.batch_execute(ARRIVAL_FUNCTION).await?;
            pair.cloud
                .batch_execute(
                    "CREATE TRIGGER bench_arrived AFTER INSERT ON bench_item FOR EACH ROW EXECUTE FUNCTION bench_arrived()",
                )
                .await?;
        }
        let text = format!(
            "[desktop]\nurl = \"{}\"\n[cloud]\nurl = \"{}\"\nslot = \"bench_{}\"\n[sync]\nbatch_max_rows = {batch_max_rows}\n\
             [[tables]]\ndesktop = \"bench_item\"\nkey = [\"id\"]\n",
            pair.desktop_url, pair.cloud_url, pair.name
        );
        let config = Config::parse(&format!("bench config {}", pair.name), &text, &|_| None)?;
        tandem::setup::init(&config, false)
            .await
            .with_context(|| format!("tandem init on {}", pair.name))?;
        let worker = Worker::start(config);
        // Warm-up: the worker connects, loads the mapping and makes its staging tables on the first batch.
        let warm_up = async {
            pair.desktop
                .batch_execute("INSERT INTO bench_item VALUES (0, 'warm-up', 0, 'warm-up')")
                .await?;
            wait_count(&pair.cloud, "bench_item", 1)
                .await
                .context("the warm-up row")?;
            wait_until_idle(&pair.desktop).await
        };
        let worker = worker.during(warm_up).await?.1;
        Ok((pair, worker))
    }
}

/// tandem's forward worker, in a spawned task.
struct Worker {
    token: CancellationToken,
    handle: JoinHandle<Result<RunStats, RunError>>,
}

impl Worker {
    fn start(config: Config) -> Worker {
        let token = CancellationToken::new();
        let shutdown = token.clone();
        let handle = tokio::spawn(async move {
            run_forward(&config, RunOptions { once: false }, shutdown).await
        });
        Worker { token, handle }
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
            Ok(Ok(_)) => anyhow!("the tandem forward worker stopped on its own"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the tandem forward worker failed"),
            Err(e) => anyhow::Error::new(e).context("the tandem forward worker panicked"),
        })
    }

    async fn stop(self) -> Result<RunStats> {
        self.token.cancel();
        let stats = self
            .handle
            .await
            .context("the tandem forward worker panicked")??;
        Ok(stats)
    }
}

/// Waits until tandem deleted every outbox row (it does so right after the cloud commit).
async fn wait_until_idle(desktop: &Client) -> Result<()> {
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        let n: i64 = desktop
            .query_one("SELECT count(*) FROM tandem.outbox", &[])
            .await?
            .get(0);
        if n == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the outbox still holds {n} rows after {POLL_DEADLINE:?}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls `SELECT count(*)` every 2 ms until it reaches `target`; returns when it saw it.
async fn wait_count(cloud: &Client, table: &str, target: i64) -> Result<Instant> {
    let stmt = cloud
        .prepare(&format!("SELECT count(*) FROM {table}"))
        .await?;
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        let n: i64 = cloud.query_one(&stmt, &[]).await?.get(0);
        let seen = Instant::now();
        if n >= target {
            return Ok(seen);
        }
        if seen > deadline {
            bail!("{table} in the cloud holds {n} of {target} rows after {POLL_DEADLINE:?}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn bulk_insert(table: &str, first: i32, last: i32) -> String {
    format!(
        "INSERT INTO {table} (id, name, qty, note) SELECT g, 'name '||g, g % 100, repeat('x', 40) \
         FROM generate_series({first}, {last}) g"
    )
}

/// One transaction of `BULK_ROWS` rows (ids from 1); the cloud already holds `baseline` rows.
async fn one_tx(
    desktop: &mut Client,
    cloud: &Client,
    table: &str,
    baseline: i64,
) -> Result<Throughput> {
    let started = Instant::now();
    let tx = desktop.transaction().await?;
    tx.execute(&bulk_insert(table, 1, BULK_ROWS), &[]).await?;
    tx.commit().await?;
    let committed = Instant::now();
    let visible = wait_count(cloud, table, baseline + i64::from(BULK_ROWS)).await?;
    Ok(Throughput {
        rows: BULK_ROWS,
        elapsed: visible - committed,
        desktop_write: committed - started,
        stats: None,
    })
}

/// `MANY_TX` transactions of `MANY_TX_ROWS` rows each, back to back (ids from 1).
async fn many_tx(
    desktop: &mut Client,
    cloud: &Client,
    table: &str,
    baseline: i64,
) -> Result<Throughput> {
    let started = Instant::now();
    let mut first_commit = None;
    for n in 0..MANY_TX {
        let tx = desktop.transaction().await?;
        let first = 1 + n * MANY_TX_ROWS;
        tx.execute(&bulk_insert(table, first, first + MANY_TX_ROWS - 1), &[])
            .await?;
        tx.commit().await?;
        first_commit.get_or_insert_with(Instant::now);
    }
    let written = Instant::now();
    let visible = wait_count(cloud, table, baseline + i64::from(MANY_TX * MANY_TX_ROWS)).await?;
    Ok(Throughput {
        rows: MANY_TX * MANY_TX_ROWS,
        elapsed: visible - first_commit.expect("at least one transaction"),
        desktop_write: written - started,
        stats: None,
    })
}

async fn tandem_one_tx(env: &mut Env<'_>, batch: usize) -> Result<Throughput> {
    let (mut pair, worker) = env.tandem(&format!("one_tx_{batch}"), batch, false).await?;
    let (mut t, worker) = worker
        .during(one_tx(&mut pair.desktop, &pair.cloud, "bench_item", 1))
        .await?;
    t.stats = Some(worker.stop().await?);
    Ok(t)
}

async fn tandem_many_tx(env: &mut Env<'_>, batch: usize) -> Result<Throughput> {
    let (mut pair, worker) = env
        .tandem(&format!("many_tx_{batch}"), batch, false)
        .await?;
    let (mut t, worker) = worker
        .during(many_tx(&mut pair.desktop, &pair.cloud, "bench_item", 1))
        .await?;
    t.stats = Some(worker.stop().await?);
    Ok(t)
}

async fn tandem_latency(
    env: &mut Env<'_>,
    rate: u32,
    commits: usize,
    first_id: i32,
) -> Result<Latency> {
    let (pair, worker) = env
        .tandem(&format!("latency_{rate}"), LATENCY_BATCH, true)
        .await?;
    let (mut l, worker) = worker
        .during(latency(
            &pair.desktop,
            &pair.cloud_url,
            "bench_item",
            rate,
            commits,
            first_id,
        ))
        .await?;
    l.stats = Some(worker.stop().await?);
    Ok(l)
}

fn median_floor(runs: &[FloorRun]) -> FloorRun {
    let mut sorted = runs.to_vec();
    sorted.sort_by_key(|r| r.total);
    sorted[sorted.len() / 2]
}

/// Fresh databases for the floor: the desktop table filled, the cloud table empty.
async fn floor_pair(env: &mut Env<'_>) -> Result<Pair> {
    let pair = env.pair("floor").await?;
    pair.desktop
        .batch_execute(&format!(
            "CREATE TABLE bench_item {DESKTOP_TABLE}; {}",
            bulk_insert("bench_item", 1, BULK_ROWS)
        ))
        .await?;
    pair.desktop
        .batch_execute("VACUUM ANALYZE bench_item")
        .await?;
    pair.cloud
        .batch_execute(&format!("CREATE TABLE bench_item {CLOUD_TABLE}"))
        .await?;
    Ok(pair)
}

/// The floor: moving the rows with nothing but COPY and one set-based INSERT, into an empty target
/// without triggers. `flush_per_chunk` sends each COPY chunk with `SinkExt::send` (a flush per chunk;
/// PostgreSQL's COPY TO sends one CopyData message per row) instead of `feed` (tokio-postgres then
/// packs up to 4 KiB per message).
async fn copy_floor(pair: &mut Pair, flush_per_chunk: bool) -> Result<FloorRun> {
    pair.cloud.batch_execute("TRUNCATE bench_item").await?;
    let started = Instant::now();
    let cloud_tx = pair.cloud.transaction().await?;
    cloud_tx
        .batch_execute(
            "CREATE TEMP TABLE staging (id int, name text, qty int, note text) ON COMMIT DROP",
        )
        .await?;
    let source = pair
        .desktop
        .copy_out("COPY (SELECT id, name, qty, note FROM bench_item) TO STDOUT (FORMAT binary)")
        .await?;
    let sink = cloud_tx
        .copy_in::<_, Bytes>("COPY staging FROM STDIN (FORMAT binary)")
        .await?;
    pin_mut!(source, sink);
    while let Some(chunk) = source.next().await {
        if flush_per_chunk {
            sink.send(chunk?).await?;
        } else {
            sink.feed(chunk?).await?;
        }
    }
    let staged = sink.as_mut().finish().await?;
    let copy = started.elapsed();
    let inserted = cloud_tx
        .execute(
            "INSERT INTO bench_item (id, name, qty, note, source) SELECT id, name, qty, note, 'D' FROM staging",
            &[],
        )
        .await?;
    cloud_tx.commit().await?;
    let total = started.elapsed();
    if staged != BULK_ROWS as u64 || inserted != BULK_ROWS as u64 {
        bail!("the COPY floor moved {staged} / {inserted} rows, not {BULK_ROWS}");
    }
    Ok(FloorRun { total, copy })
}

/// PostgreSQL's own logical replication over `native_item`: throughput of one 100k-row transaction,
/// then the latency runs. The subscription and its slot are removed whatever happens.
async fn native(env: &mut Env<'_>, results: &mut Results) -> Result<()> {
    let mut pair = env.pair("native").await?;
    let name = format!("{}_sub", pair.name);
    pair.desktop
        .batch_execute(&format!(
            "CREATE TABLE native_item {DESKTOP_TABLE}; CREATE PUBLICATION {name} FOR TABLE native_item"
        ))
        .await?;
    // The arrival trigger stays disabled during the throughput figure (tandem's throughput tables
    // have none either).
    pair.cloud
        .batch_execute(&format!(
            "CREATE TABLE native_item {CLOUD_TABLE}; {ARRIVAL_FUNCTION}; \
             CREATE TRIGGER bench_arrived AFTER INSERT ON native_item FOR EACH ROW EXECUTE FUNCTION bench_arrived(); \
             ALTER TABLE native_item DISABLE TRIGGER bench_arrived"
        ))
        .await?;
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname={} user=postgres",
        env.desktop.port(),
        pair.name
    );
    pair.cloud
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION {name} CONNECTION '{conninfo}' PUBLICATION {name}"
        ))
        .await
        .context("CREATE SUBSCRIPTION")?;
    let measured = native_measure(&mut pair, results).await;
    let dropped = drop_subscription(&pair, &name).await;
    measured?;
    dropped
}

async fn native_measure(pair: &mut Pair, results: &mut Results) -> Result<()> {
    // Ready: the table's initial sync is done and a warm-up row went through.
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        let ready: bool = pair
            .cloud
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
            bail!("the subscription's initial sync did not finish in {POLL_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pair.desktop
        .batch_execute("INSERT INTO native_item VALUES (0, 'warm-up', 0, 'warm-up')")
        .await?;
    wait_count(&pair.cloud, "native_item", 1)
        .await
        .context("the warm-up row")?;

    let t = one_tx(&mut pair.desktop, &pair.cloud, "native_item", 1).await?;
    print_throughput(
        &format!("one {}-row transaction", thousands(f64::from(BULK_ROWS))),
        &t,
    );
    results.native_one_tx = Some(t);

    pair.cloud
        .batch_execute("ALTER TABLE native_item ENABLE ALWAYS TRIGGER bench_arrived")
        .await?;
    let mut first_id = 1_000_001;
    for (rate, commits) in LATENCY_RUNS {
        let l = latency(
            &pair.desktop,
            &pair.cloud_url,
            "native_item",
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

async fn drop_subscription(pair: &Pair, name: &str) -> Result<()> {
    for sql in [
        format!("ALTER SUBSCRIPTION {name} DISABLE"),
        format!("ALTER SUBSCRIPTION {name} SET (slot_name = NONE)"),
        format!("DROP SUBSCRIPTION {name}"),
    ] {
        pair.cloud
            .batch_execute(&sql)
            .await
            .with_context(|| sql.clone())?;
    }
    // The desktop's walsender lets go of the slot shortly after the apply worker stops.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match pair
            .desktop
            .execute("SELECT pg_drop_replication_slot($1)", &[&name])
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "the native slot is still in use; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(e).context("dropping the native subscription's slot on the desktop");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Printing

fn print_throughput(what: &str, t: &Throughput) {
    let rate = t.rows_per_s();
    println!(
        "  {what}: {:.3} s → {} rows/s   [goal ≥ {} rows/s: {}]",
        t.elapsed.as_secs_f64(),
        thousands(rate),
        thousands(GOAL_ROWS_PER_S),
        verdict(rate >= GOAL_ROWS_PER_S)
    );
    let mut detail = format!(
        "      desktop write (INSERT … SELECT + COMMIT{}) {:.3} s",
        if t.stats.is_some() {
            ", incl. tandem's capture trigger"
        } else {
            ", no triggers"
        },
        t.desktop_write.as_secs_f64()
    );
    if let Some(s) = t.stats {
        detail.push_str(&format!(
            "; worker: {} batches, {} outbox rows, {} rows written, {} retries (warm-up row included)",
            s.batches,
            thousands(s.outbox_rows as f64),
            thousands(s.outcome.written as f64),
            s.retries
        ));
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
        "      desktop INSERT round trip (autocommit) p50 {:.2} ms",
        ms(l.commit_p50)
    );
    if let Some(s) = l.stats {
        detail.push_str(&format!(
            "; worker: {} batches for {} outbox rows = {:.2} rows/batch (warm-up row included)",
            s.batches,
            s.outbox_rows,
            s.outbox_rows as f64 / s.batches.max(1) as f64
        ));
    }
    println!("{detail}");
}

fn latency_cell(ls: &[Latency], target: u32) -> String {
    ls.iter()
        .find(|l| l.target_rate == target)
        .map_or("-".to_string(), |l| {
            format!("{:.2} / {:.2} / {:.1}", ms(l.p50), ms(l.p99), ms(l.max))
        })
}

fn print_summary(r: &Results) {
    let rate = |t: Option<&Throughput>| t.map_or("-".to_string(), |t| thousands(t.rows_per_s()));
    let row = |label: &str, a: &str, b: &str, c: &str, d: &str| {
        println!("  {label:<46} {a:>14} {b:>14} {c:>24} {d:>24}");
    };
    row(
        "",
        "100k × 1 tx",
        "100 × 1k tx",
        "1,000/s p50/p99/max",
        "200/s p50/p99/max",
    );
    row("", "rows/s", "rows/s", "ms", "ms");
    for (i, (batch, one)) in r.one_tx.iter().enumerate() {
        let (l1000, l200) = if *batch == LATENCY_BATCH {
            (
                latency_cell(&r.latency, 1_000),
                latency_cell(&r.latency, 200),
            )
        } else {
            ("(not run)".to_string(), "(not run)".to_string())
        };
        row(
            &format!("tandem, batch_max_rows {}", thousands(*batch as f64)),
            &rate(Some(one)),
            &rate(r.many_tx.get(i).map(|(_, t)| t)),
            &l1000,
            &l200,
        );
    }
    let goal_rate = format!("≥ {}", thousands(GOAL_ROWS_PER_S));
    let goal_latency = format!("≤ {GOAL_P50_MS} / ≤ {GOAL_P99_MS} / -");
    row("goal", &goal_rate, &goal_rate, &goal_latency, &goal_latency);
    if !r.floor.is_empty() {
        row(
            "plain COPY floor (median)",
            &thousands(median_floor(&r.floor).rows_per_s()),
            "-",
            "-",
            "-",
        );
    }
    if let Some(f) = r.floor_flushed {
        row(
            "  same, one flush per COPY row (diagnostic)",
            &thousands(f.rows_per_s()),
            "-",
            "-",
            "-",
        );
    }
    row(
        "PostgreSQL native logical replication",
        &rate(r.native_one_tx.as_ref()),
        "-",
        &latency_cell(&r.native_latency, 1_000),
        &latency_cell(&r.native_latency, 200),
    );
    row(
        "Bucardo 5.6 tuned (notes, NOT measured here)",
        "≈ 29,000",
        "≈ 46,000",
        "5.1–6.1 / 7.4–10.8 / -",
        "(at 200–500/s)",
    );
}

fn one_line_summary(r: &Results, rss: &str) -> String {
    let rates = |v: &[(usize, Throughput)]| {
        v.iter()
            .map(|(b, t)| {
                format!(
                    "{} (batch {})",
                    thousands(t.rows_per_s()),
                    thousands(*b as f64)
                )
            })
            .collect::<Vec<_>>()
            .join(" / ")
    };
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
    format!(
        "SUMMARY tandem: 100k×1tx {} rows/s; 100×1k {} rows/s; {} | native: 100k×1tx {} rows/s, {} | COPY floor {} rows/s | peak RSS {rss}",
        rates(&r.one_tx),
        rates(&r.many_tx),
        lat(&r.latency),
        r.native_one_tx
            .map_or("-".to_string(), |t| thousands(t.rows_per_s())),
        lat(&r.native_latency),
        if r.floor.is_empty() {
            "-".to_string()
        } else {
            thousands(median_floor(&r.floor).rows_per_s())
        },
    )
}

/// Latency of desktop INSERTs reaching the cloud (see [`support::latency`]).
async fn latency(
    desktop: &Client,
    cloud_url: &str,
    table: &str,
    rate: u32,
    commits: usize,
    first_id: i32,
) -> Result<Latency> {
    let insert = format!(
        "INSERT INTO {table} (id, name, qty, note) VALUES ($1::int, 'name ' || $1::int, $1::int % 100, repeat('x', 40))"
    );
    support::latency(support::LatencyRun {
        writer: desktop,
        listen_url: cloud_url,
        there: "in the cloud",
        channel: ARRIVAL_CHANNEL,
        insert: &insert,
        table,
        rate,
        commits,
        first_id,
    })
    .await
}
