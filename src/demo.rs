//! `tandem demo`: the migration story on the PowerCA sample, with no setup at all.
//!
//! A real installation starts with a desktop database the app has filled for years and an empty cloud,
//! so the demo does too: two throwaway PostgreSQL clusters (a "desktop" and a "cloud" with
//! `wal_level = logical`), the sample schema on both and the seeds-sized data set on the desktop
//! *before* tandem is installed. Then `init` and `check`, the initial sync with a progress bar, `run`
//! streaming in the background, edits both ways timed from commit to arrival, a conflict (a phone and
//! the desktop changing the same row at once) listed and resolved, and `tandem status`. The clusters
//! are removed at the end, on an error and on ctrl-c; `--keep` leaves them up until ctrl-c, with a
//! config file pointing at them.
//!
//! The edits are the sample's (its tables, its jobs): this module is the one place that tells a story
//! about that schema, as `sql/powerca/` holds its facts.

mod story;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_postgres::Client;

use crate::change::Side;
use crate::cluster::{ClusterOptions, LocalCluster, WalLevel};
use crate::config::{Config, ConnUrl};
use crate::{db, sample};

/// Every step's heading, in order (the integration test looks for each).
pub const STEPS: [&str; 7] = [
    "1/7 two throwaway clusters, the sample schema, and the desktop app's data (before tandem)",
    "2/7 tandem init, then tandem check",
    "3/7 the initial sync: what the desktop already holds, to the cloud",
    "4/7 streaming: tandem run in the background",
    "5/7 edits both ways, each timed from its commit to its arrival on the other side",
    "6/7 a conflict: a phone and the desktop change the same job at once",
    "7/7 tandem status",
];

/// How long the demo waits for anything to arrive before it gives up.
const DEADLINE: Duration = Duration::from_secs(60);

fn heading(step: usize) {
    println!("\n== {} ==", STEPS[step]);
}

/// `SELECT count(*) ...` on `client`, or -1 when it fails (a wait polls it again).
async fn count(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    client
        .query_one(sql, params)
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// Resolves on ctrl-c or SIGTERM.
async fn interrupted() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The demo's two clusters; dropping them stops both servers and removes their directories (on
/// success, on an error, on ctrl-c).
struct Clusters {
    desktop: LocalCluster,
    cloud: LocalCluster,
}

impl Clusters {
    async fn start() -> anyhow::Result<Clusters> {
        // synchronous_commit on, as on Supabase: a walsender only sends WAL once it is flushed, so with
        // it off a phone's change would wait for the WAL writer (up to 200 ms) before it could stream.
        let settings = vec![("synchronous_commit".to_string(), "on".to_string())];
        let clusters = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let desktop = LocalCluster::start(
                "desktop",
                &ClusterOptions {
                    wal_level: WalLevel::Replica,
                    settings: settings.clone(),
                    ..Default::default()
                },
            )?;
            let cloud = LocalCluster::start(
                "cloud",
                &ClusterOptions {
                    settings,
                    ..Default::default()
                },
            )?;
            Ok(Clusters { desktop, cloud })
        })
        .await??;
        Ok(clusters)
    }

    /// Stops and removes both clusters off the async threads (pg_ctl waits for the servers).
    async fn remove(self) {
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }
}

/// The sample's config, pointing at the demo's clusters.
fn config_text(clusters: &Clusters) -> String {
    sample::CONFIG
        .replace("${DESKTOP_URL}", &clusters.desktop.url("powerca"))
        .replace("${CLOUD_URL}", &clusters.cloud.url("powerca"))
}

/// Runs the demo at `scale` (1.0: the seeds' ~92,000 rows); with `keep`, leaves the clusters up until
/// ctrl-c.
pub async fn run(scale: f64, keep: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        scale > 0.0 && scale.is_finite(),
        "--scale must be a positive number (1.0: the seeds' ~92,000 rows)"
    );
    let started = Instant::now();
    heading(0);
    let clusters = Clusters::start().await?;
    println!(
        "  desktop on 127.0.0.1:{}, cloud on 127.0.0.1:{} (wal_level=logical), started in {:.1?}",
        clusters.desktop.port(),
        clusters.cloud.port(),
        started.elapsed()
    );
    let outcome = tokio::select! {
        result = demo(&clusters, scale) => result,
        _ = interrupted() => Err(anyhow::anyhow!("interrupted; the demo's clusters are removed")),
    };
    let outcome = match outcome {
        Ok(config) if keep => keep_until_interrupted(&config, &clusters).await,
        other => other.map(drop),
    };
    clusters.remove().await;
    outcome?;
    println!(
        "\ndemo done in {:.1?}; the clusters are removed",
        started.elapsed()
    );
    Ok(())
}

/// The story on the clusters; returns the config pointing at them.
async fn demo(clusters: &Clusters, scale: f64) -> anyhow::Result<Config> {
    for pg in [&clusters.desktop, &clusters.cloud] {
        let admin = db::connect(Side::Desktop, &ConnUrl::new(pg.url("postgres"))).await?;
        admin
            .batch_execute("CREATE DATABASE powerca")
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "creating database powerca on the {} cluster: {e}",
                    pg.name()
                )
            })?;
    }
    let config = Config::parse(
        "the demo's config (config/powerca.toml)",
        &config_text(clusters),
        &|_| None,
    )?;
    story::tell(&config, scale).await?;
    Ok(config)
}

/// `--keep`: the clusters' URLs and a config file for them, until ctrl-c (then the file is removed).
async fn keep_until_interrupted(config: &Config, clusters: &Clusters) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("tandem-demo-{}.toml", std::process::id()));
    std::fs::write(&path, config_text(clusters))
        .with_context(|| format!("writing the demo's config file {}", path.display()))?;
    println!("\n== --keep: the clusters stay up until ctrl-c ==");
    println!("  desktop  {}", config.desktop.url.redacted());
    println!("  cloud    {}", config.cloud.url.redacted());
    println!("  config   {}", path.display());
    println!(
        "  try: tandem -c {p} status; tandem -c {p} run, then edit either side with psql",
        p = path.display()
    );
    interrupted().await;
    let removed = std::fs::remove_file(&path);
    println!("  ctrl-c: removing the clusters");
    removed.with_context(|| format!("removing {}", path.display()))
}
