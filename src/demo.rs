//! `tandem demo`: tandem on the PowerCA sample with no setup at all.
//!
//! Starts two throwaway PostgreSQL clusters (a "desktop" and a "cloud" with `wal_level = logical`),
//! loads the sample schema, installs and checks tandem, fills the desktop with a seeds-sized data set
//! (which streams to the cloud through the outbox), then runs both directions and makes a desktop edit
//! and a phone's edits, printing how long each took to arrive on the other side.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::change::Side;
use crate::cluster::{ClusterOptions, LocalCluster, WalLevel, wait_until};
use crate::config::{Config, ConnUrl};
use crate::ops::check;
use crate::pipeline::{self, RunOptions};
use crate::{db, sample, setup};

const DEADLINE: Duration = Duration::from_secs(120);

async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// Runs `change` on one side, then waits until `arrived` holds on the other; returns the lag.
async fn timed(
    label: &str,
    change: impl std::future::Future<Output = anyhow::Result<()>>,
    target: &Client,
    arrived: &str,
) -> anyhow::Result<()> {
    change.await?;
    let started = Instant::now();
    let ok = wait_until(DEADLINE, || async { count(target, arrived).await == 1 }).await;
    anyhow::ensure!(ok, "{label}: did not arrive within {DEADLINE:?}");
    println!(
        "  {label}: arrived in {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

pub async fn run(scale: f64) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("starting two throwaway PostgreSQL clusters...");
    // synchronous_commit on, as on Supabase: a walsender only sends WAL once it is flushed, so with it
    // off a phone's change would wait for the WAL writer (up to 200 ms) before it could stream.
    let settings = vec![("synchronous_commit".to_string(), "on".to_string())];
    let (desktop_pg, cloud_pg) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
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
        Ok((desktop, cloud))
    })
    .await??;
    println!(
        "  desktop on 127.0.0.1:{}, cloud on 127.0.0.1:{} (wal_level=logical), in {:.1?}",
        desktop_pg.port(),
        cloud_pg.port(),
        started.elapsed()
    );
    for pg in [&desktop_pg, &cloud_pg] {
        let admin = db::connect(Side::Desktop, &ConnUrl::new(pg.url("postgres"))).await?;
        admin.batch_execute("CREATE DATABASE powerca").await?;
    }
    let urls = [
        ("DESKTOP_URL", desktop_pg.url("powerca")),
        ("CLOUD_URL", cloud_pg.url("powerca")),
    ];
    let config = Config::parse(
        "the demo's config (config/powerca.toml)",
        sample::CONFIG,
        &|var| urls.iter().find(|(k, _)| *k == var).map(|(_, v)| v.clone()),
    )?;
    let result = demo(&config, scale, started).await;
    tokio::task::spawn_blocking(move || drop((desktop_pg, cloud_pg))).await?;
    result
}

async fn demo(config: &Config, scale: f64, started: Instant) -> anyhow::Result<()> {
    let mut desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let cloud = db::connect(Side::Cloud, &config.cloud.url).await?;
    sample::create_schemas(&desktop, &cloud).await?;

    let t = Instant::now();
    let report = setup::init(config, false).await.context("tandem init")?;
    println!(
        "tandem init: {} change(s) on the desktop, {} in the cloud, in {:.2?}",
        report.desktop.len(),
        report.cloud.len(),
        t.elapsed()
    );
    let checked = check::check(config).await;
    anyhow::ensure!(
        checked.passed(),
        "tandem check failed on the demo clusters: {:#?}",
        checked.items
    );
    println!("tandem check: all {} checks hold", checked.items.len());

    let shutdown = CancellationToken::new();
    let worker = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        tokio::spawn(
            async move { pipeline::run(&config, RunOptions { once: false }, shutdown).await },
        )
    };

    let seeded = sample::seed(&mut desktop, config, scale).await?;
    let streaming = Instant::now();
    println!(
        "the desktop app writes the PowerCA sample: {} rows in {:.2?}",
        seeded.total(),
        seeded.elapsed
    );
    let expected = seeded.total() - 3;
    let tables: Vec<String> = config
        .tables
        .iter()
        .map(|t| format!("(SELECT count(*) FROM {})", t.table.cloud.quoted()))
        .collect();
    let total_sql = format!("SELECT {}", tables.join(" + "));
    let arrived = wait_until(DEADLINE, || async {
        count(&cloud, &total_sql).await >= expected
    })
    .await;
    anyhow::ensure!(
        arrived,
        "the sample did not reach the cloud within {DEADLINE:?}"
    );
    let letters = count(&cloud, "SELECT count(*) FROM tandem.dead_letters").await;
    println!(
        "  ... streamed to the cloud: {expected} rows in {:.2?}; {letters} dead letter(s): the seeds' 3 clients of an org that does not exist",
        streaming.elapsed()
    );

    println!("edits, each timed from its commit to its arrival on the other side:");
    timed(
        "the desktop puts job 1 on hold -> cloud",
        async {
            desktop
                .batch_execute("UPDATE jobshead SET job_status = 'On Hold', remarks = 'Waiting for the client''s bank statements' WHERE job_id = 1")
                .await?;
            Ok(())
        },
        &cloud,
        "SELECT count(*) FROM jobshead WHERE job_id = 1 AND remarks = 'Waiting for the client''s bank statements'",
    )
    .await?;
    timed(
        "a phone marks job 2 completed -> desktop",
        async {
            cloud
                .batch_execute("UPDATE jobshead SET job_status = 'Completed', remarks = 'Signed off on site' WHERE job_id = 2")
                .await?;
            Ok(())
        },
        &desktop,
        "SELECT count(*) FROM jobshead WHERE job_id = 2 AND remarks = 'Signed off on site'",
    )
    .await?;
    timed(
        "a phone adds a work-diary entry -> desktop",
        async {
            cloud
                .batch_execute("INSERT INTO workdiary (staff_id, wd_date, hours, narration) VALUES (1, '2026-11-22', 1.5, 'Logged on the phone')")
                .await?;
            Ok(())
        },
        &desktop,
        "SELECT count(*) FROM workdiary WHERE narration = 'Logged on the phone'",
    )
    .await?;
    timed(
        "the desktop edits job 2 again -> cloud keeps the phone's version, logs a conflict",
        async {
            desktop
                .batch_execute("UPDATE jobshead SET job_status = 'Open' WHERE job_id = 2")
                .await?;
            Ok(())
        },
        &cloud,
        "SELECT count(*) FROM tandem.conflicts WHERE row_key = '{\"job_id\": 2}'",
    )
    .await?;

    shutdown.cancel();
    let report = worker.await??;
    let (forward, reverse) = (report.forward, report.reverse);
    println!(
        "stopped: forward {} batch(es), {} rows written; reverse {} group(s), {} rows written. Total {:.1?}; removing the clusters.",
        forward.batches,
        forward.outcome.written,
        reverse.batches,
        reverse.outcome.written,
        started.elapsed()
    );
    Ok(())
}
