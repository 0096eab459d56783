//! `tandem demo`: tandem on the PowerCA sample with no setup at all.
//!
//! Starts two throwaway PostgreSQL clusters (a "desktop" and a "cloud" with `wal_level = logical`), loads
//! the sample schema and a seeds-sized data set, installs tandem and checks it. Streaming (`tandem run`)
//! is not built yet; when it is, the demo goes on to sync both ways and show edits arrive.

use std::time::Instant;

use anyhow::Context as _;

use crate::change::Side;
use crate::cluster::{ClusterOptions, LocalCluster, WalLevel};
use crate::config::Config;
use crate::{check, db, sample, setup};

pub async fn run(scale: f64) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("starting two throwaway PostgreSQL clusters...");
    let (desktop_pg, cloud_pg) = tokio::task::spawn_blocking(|| -> anyhow::Result<_> {
        let desktop = LocalCluster::start(
            "desktop",
            &ClusterOptions {
                wal_level: WalLevel::Replica,
                ..Default::default()
            },
        )?;
        let cloud = LocalCluster::start("cloud", &ClusterOptions::default())?;
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
        let admin = db::connect(
            Side::Desktop,
            &crate::config::ConnUrl::new(pg.url("postgres")),
        )
        .await?;
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

    let mut desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let cloud = db::connect(Side::Cloud, &config.cloud.url).await?;
    sample::create_schemas(&desktop, &cloud).await?;
    let seeded = sample::seed(&mut desktop, &config, scale).await?;
    println!(
        "loaded the PowerCA sample: {} desktop rows in {:.2?}",
        seeded.total(),
        seeded.elapsed
    );
    for (table, n) in &seeded.counts {
        println!("  {table:<16} {n:>8}");
    }

    let t = Instant::now();
    let report = setup::init(&config, false).await.context("tandem init")?;
    println!(
        "tandem init: {} change(s) on the desktop, {} in the cloud, in {:.2?}",
        report.desktop.len(),
        report.cloud.len(),
        t.elapsed()
    );
    let again = setup::init(&config, false).await?;
    println!(
        "tandem init again: {} change(s) (it is idempotent)",
        again.desktop.len() + again.cloud.len()
    );

    let checked = check::check(&config).await;
    for item in &checked.items {
        println!("  {item}");
    }
    anyhow::ensure!(checked.passed(), "tandem check failed on the demo clusters");
    println!("tandem check: all good");
    println!(
        "streaming (tandem run) is not built yet: the demo stops here. Total {:.1?}; removing the clusters.",
        started.elapsed()
    );
    drop((desktop, cloud));
    tokio::task::spawn_blocking(move || drop((desktop_pg, cloud_pg))).await?;
    Ok(())
}
