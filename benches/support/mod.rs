//! Helpers both benchmarks use: connections, percentiles, number formatting, peak RSS.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tandem::change::Side;
use tandem::cluster::{ClusterOptions, LocalCluster, WalLevel};
use tandem::config::ConnUrl;
use tandem::pipeline::RunStats;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// A bench body: given the desktop and cloud clusters.
pub type Body = for<'a> fn(
    &'a LocalCluster,
    &'a LocalCluster,
) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// Starts a desktop and a cloud cluster (both `wal_level = logical`, durable: fsync, synchronous_commit
/// and full_page_writes on, as a real desktop runs; the cloud gets
/// `cloud_settings` too), runs `body` on a tokio runtime, then stops and removes both on every path.
/// `note` completes the line that reports the clusters.
pub fn with_clusters(
    name: &str,
    cloud_settings: Vec<(String, String)>,
    note: &str,
    body: Body,
) -> Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let started = Instant::now();
    let options = |settings: Vec<(String, String)>| ClusterOptions {
        wal_level: WalLevel::Logical,
        durable: true,
        settings,
        ..ClusterOptions::default()
    };
    let desktop = LocalCluster::start(&format!("{name}-desktop"), &options(Vec::new()))
        .context("starting the desktop cluster")?;
    let cloud = LocalCluster::start(&format!("{name}-cloud"), &options(cloud_settings))
        .context("starting the cloud cluster")?;
    println!(
        "clusters started in {:.2} s (desktop port {}, cloud port {}; wal_level = logical, fsync, \
         synchronous_commit and full_page_writes on{note})",
        started.elapsed().as_secs_f64(),
        desktop.port(),
        cloud.port()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let result = runtime.block_on(body(&desktop, &cloud));
    // Tasks, connections and child processes go first, then the servers (dropping a cluster stops
    // and removes it).
    drop(runtime);
    drop(cloud);
    drop(desktop);
    println!(
        "\nwhole bench: {:.1} s (clusters created and removed)",
        started.elapsed().as_secs_f64()
    );
    result
}

/// How long the last row of a latency run may take to arrive before the run fails.
pub const ARRIVAL_DEADLINE: Duration = Duration::from_secs(30);

pub async fn connect(url: &str) -> Result<Client> {
    tandem::db::connect(Side::Desktop, &ConnUrl::new(url))
        .await
        .with_context(|| format!("connecting to {url}"))
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// VmHWM from /proc/self/status.
pub fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown (no /proc/self/status)".to_string())
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn section(title: &str) {
    println!("\n== {title}");
}

/// 123456.7 → "123,457".
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

#[derive(Debug, Clone)]
pub struct Latency {
    pub target_rate: u32,
    pub commits: usize,
    pub arrived: usize,
    pub achieved_rate: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// The writer's INSERT (autocommit) round trip, p50.
    pub commit_p50: Duration,
    pub stats: Option<RunStats>,
}

/// `commits` single-row autocommit INSERTs (`insert`, `$1` the id) made with `writer`, paced at `rate` per
/// second; each row's arrival is a NOTIFY on `channel` (the payload its id) received on a connection to
/// `listen_url` (the other side), delivered when the transaction that wrote the row there commits.
/// `there` names that side in messages.
/// What one latency run writes where, and what it waits for.
pub struct LatencyRun<'a> {
    pub writer: &'a Client,
    pub listen_url: &'a str,
    pub there: &'a str,
    pub channel: &'a str,
    pub insert: &'a str,
    pub table: &'a str,
    pub rate: u32,
    pub commits: usize,
    pub first_id: i32,
}

pub async fn latency(run: LatencyRun<'_>) -> Result<Latency> {
    let LatencyRun {
        writer,
        listen_url,
        there,
        channel,
        insert,
        table,
        rate,
        commits,
        first_id,
    } = run;
    let (listener, mut connection) = tokio_postgres::connect(listen_url, NoTls)
        .await
        .with_context(|| format!("connecting the {there} listener"))?;
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<(i32, Instant)>();
    // The arrival time is taken in the task driving the connection, as each message is read.
    let driver = tokio::spawn(async move {
        while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = message? {
                let at = Instant::now();
                if let Ok(id) = n.payload().parse::<i32>() {
                    let _ = arrivals_tx.send((id, at));
                }
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    });
    listener.batch_execute(&format!("LISTEN {channel}")).await?;

    let insert = writer.prepare(insert).await?;
    let mut committed: Vec<Instant> = Vec::with_capacity(commits);
    let mut round_trips: Vec<Duration> = Vec::with_capacity(commits);
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    for k in 0..commits {
        ticker.tick().await;
        let id = first_id + k as i32;
        let sent = Instant::now();
        writer.execute(&insert, &[&id]).await?;
        let done = Instant::now();
        committed.push(done);
        round_trips.push(done - sent);
    }
    let last_commit = *committed.last().expect("commits > 0");

    let mut arrived: Vec<Option<Instant>> = vec![None; commits];
    let mut count = 0;
    let deadline = tokio::time::Instant::from_std(last_commit + ARRIVAL_DEADLINE);
    while count < commits {
        match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Some((id, at))) => {
                let index = usize::try_from(id - first_id).ok();
                if let Some(slot) = index.and_then(|i| arrived.get_mut(i))
                    && slot.is_none()
                {
                    *slot = Some(at);
                    count += 1;
                }
            }
            Ok(None) => bail!("the {there} listener connection ended"),
            Err(_) => break,
        }
    }
    drop(listener);
    driver.await??;

    // A notification read before the bench's writer task recorded its commit counts as 0.
    let mut latencies: Vec<Duration> = committed
        .iter()
        .zip(&arrived)
        .filter_map(|(c, a)| a.map(|a| a.saturating_duration_since(*c)))
        .collect();
    if latencies.is_empty() {
        bail!("no row of {table} arrived {there} within {ARRIVAL_DEADLINE:?}");
    }
    latencies.sort();
    round_trips.sort();
    let span = (last_commit - committed[0]).as_secs_f64();
    Ok(Latency {
        target_rate: rate,
        commits,
        arrived: count,
        achieved_rate: (commits - 1) as f64 / span,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: *latencies.last().expect("not empty"),
        commit_p50: percentile(&round_trips, 0.50),
        stats: None,
    })
}
