//! The demo's steps on the clusters' config, each under its heading: the data before tandem, `init`
//! and `check`, the initial sync, streaming, edits both ways, a conflict, `tandem status`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::{DEADLINE, count, heading};
use crate::change::Side;
use crate::cli::report::Progress;
use crate::cluster::wait_until;
use crate::config::Config;
use crate::ops::conflicts::{self, Keep};
use crate::ops::{check, status};
use crate::pipeline::{self, RunOptions, RunReport, Tables};
use crate::{db, sample, setup};

/// The job both sides change at once in the conflict step (steps 5 edits jobs 1 and 2).
const CONFLICT_PHONE: &str = "UPDATE jobshead SET job_status = 'Completed', remarks = 'Closed on the phone at the client''s office' WHERE job_id = 3";
const CONFLICT_DESKTOP: &str = "UPDATE jobshead SET job_status = 'On Hold', remarks = 'Held on the desktop: fees unpaid' WHERE job_id = 3";
/// Job 3 as a side holds it.
const CONFLICT_ROW: &str = "SELECT job_status || ' / ' || remarks FROM jobshead WHERE job_id = 3";

/// Steps 1 (from the schema on) to 7.
pub(super) async fn tell(config: &Config, scale: f64) -> anyhow::Result<()> {
    let mut desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let mut cloud = db::connect(Side::Cloud, &config.cloud.url).await?;
    sample::create_schemas(&desktop, &cloud).await?;
    let seeded = sample::seed(&mut desktop, config, scale).await?;
    println!(
        "  the sample schema on both sides; the desktop app has written its data: {} rows in {} tables, in {:.2?}",
        seeded.total(),
        seeded.counts.len(),
        seeded.elapsed
    );
    println!("  the cloud is empty, and tandem is not installed yet");

    heading(1);
    let t = Instant::now();
    let report = setup::init(config, false).await.context("tandem init")?;
    println!(
        "  tandem init: {} step(s) ({} on the desktop, {} in the cloud), in {:.2?}",
        report.desktop.len() + report.cloud.len(),
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
    println!("  tandem check: all {} checks hold", checked.items.len());

    heading(2);
    initial_sync(config, &desktop, &cloud).await?;

    heading(3);
    let shutdown = CancellationToken::new();
    // The run stops however this function ends.
    let _stop = shutdown.clone().drop_guard();
    let worker = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        tokio::spawn(
            async move { pipeline::run(&config, RunOptions { once: false }, shutdown).await },
        )
    };
    let steps = async {
        let t = Instant::now();
        let up = wait_until(DEADLINE, || async {
            let s = status::collect(config).await;
            s.forward.applier_running && s.reverse.active
        })
        .await;
        anyhow::ensure!(
            up,
            "tandem run did not start streaming within {DEADLINE:?}"
        );
        println!(
            "  tandem run streams both ways (the forward applier holds its lock, slot {} is active), after {:.2?}; the initial sync is not done again",
            config.cloud.slot,
            t.elapsed()
        );
        // The slot starts before the initial sync's cloud writes: the stream reads past them (they
        // are tandem's own, nothing to apply) before a phone's change made now can arrive.
        let t = Instant::now();
        let (end, behind): (String, i64) = {
            let r = cloud
                .query_one(
                    "SELECT pg_current_wal_insert_lsn()::text,
                            coalesce(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn), 0)::int8
                       FROM pg_replication_slots WHERE slot_name = $1",
                    &[&config.cloud.slot],
                )
                .await
                .context("reading the slot's position")?;
            (r.get(0), r.get(1))
        };
        let past = wait_until(DEADLINE, || async {
            cloud
                .query_one(
                    "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&config.cloud.slot, &end],
                )
                .await
                .is_ok_and(|r| r.get(0))
        })
        .await;
        anyhow::ensure!(
            past,
            "the reverse stream did not read past the initial sync's WAL within {DEADLINE:?}"
        );
        println!(
            "  the reverse stream read past the initial sync's {:.1} MiB of cloud WAL (tandem's own writes: nothing to apply) in {:.2?}",
            behind as f64 / (1024.0 * 1024.0),
            t.elapsed()
        );
        heading(4);
        edits(&desktop, &cloud).await?;
        heading(5);
        conflict(config, &mut desktop, &mut cloud).await?;
        heading(6);
        print!("{}", crate::cli::status::render(&status::collect(config).await));
        Ok(())
    }
    .await;
    shutdown.cancel();
    let run = worker.await.context("the tandem run task")?;
    match (steps, run) {
        (Ok(()), Ok(report)) => {
            stopped(&report);
            Ok(())
        }
        (Err(e), Err(run)) => Err(e.context(format!("tandem run had stopped: {run}"))),
        (Err(e), Ok(_)) => Err(e),
        (Ok(()), Err(run)) => Err(anyhow::Error::new(run).context("tandem run")),
    }
}

/// Step 3: the tables' initial sync, with a progress bar per table, before `run` starts (which then
/// finds nothing due).
async fn initial_sync(config: &Config, desktop: &Client, cloud: &Client) -> anyhow::Result<()> {
    let t = Instant::now();
    let tables = Tables::start(config).await?;
    let reports = pipeline::sync::due(config, &tables, &Progress::new(false)).await?;
    anyhow::ensure!(
        reports.len() == config.tables.len(),
        "the initial sync finished {} of {} tables (the log above names the others and why)",
        reports.len(),
        config.tables.len()
    );
    let sum = |f: &dyn Fn(&pipeline::sync::TableReport) -> u64| reports.iter().map(f).sum::<u64>();
    let open = "SELECT count(*) FROM tandem.dead_letters WHERE resolved_at IS NULL";
    let letters = count(cloud, open, &[]).await + count(desktop, open, &[]).await;
    println!(
        "  synced {} tables in {:.2?}: {} rows sent to the cloud ({letters} refused: dead letters), {} to the desktop",
        reports.len(),
        t.elapsed(),
        sum(&|r| r.forward.written()),
        sum(&|r| r.reverse.written())
    );
    let total = |side: Side| {
        let counts: Vec<String> = config
            .tables
            .iter()
            .map(|t| {
                let name = match side {
                    Side::Desktop => t.table.desktop.quoted(),
                    Side::Cloud => t.table.cloud.quoted(),
                };
                format!("(SELECT count(*) FROM {name})")
            })
            .collect();
        format!("SELECT {}", counts.join(" + "))
    };
    println!(
        "  the desktop holds {} rows, the cloud {}",
        count(desktop, &total(Side::Desktop), &[]).await,
        count(cloud, &total(Side::Cloud), &[]).await
    );
    if letters > 0 {
        println!(
            "  the dead letters are rows the cloud refused (`tandem dead-letters` lists them): the seeds' clients of an org that does not exist"
        );
    }
    Ok(())
}

/// Runs `change` on `source`, then waits until `arrived` (a count) is 1 on `target`; prints the lag.
async fn timed(
    label: &str,
    source: &Client,
    change: &str,
    target: &Client,
    arrived: &str,
) -> anyhow::Result<()> {
    source
        .batch_execute(change)
        .await
        .with_context(|| format!("{label}: {change}"))?;
    let lag = until_one(target, label, arrived, &[]).await?;
    println!("  {label}: arrived in {:.1} ms", ms(lag));
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Step 5: a desktop edit to the cloud, a phone's edit and a phone's new row to the desktop.
async fn edits(desktop: &Client, cloud: &Client) -> anyhow::Result<()> {
    timed(
        "the desktop puts job 1 on hold -> cloud",
        desktop,
        "UPDATE jobshead SET job_status = 'On Hold', remarks = 'Waiting for the client''s bank statements' WHERE job_id = 1",
        cloud,
        "SELECT count(*) FROM jobshead WHERE job_id = 1 AND remarks = 'Waiting for the client''s bank statements'",
    )
    .await?;
    timed(
        "a phone marks job 2 completed -> desktop",
        cloud,
        "UPDATE jobshead SET job_status = 'Completed', remarks = 'Signed off on site' WHERE job_id = 2",
        desktop,
        "SELECT count(*) FROM jobshead WHERE job_id = 2 AND remarks = 'Signed off on site'",
    )
    .await?;
    timed(
        "a phone adds a work-diary entry -> desktop",
        cloud,
        "INSERT INTO workdiary (staff_id, wd_date, hours, narration) VALUES (1, '2026-11-22', 1.5, 'Logged on the phone')",
        desktop,
        "SELECT count(*) FROM workdiary WHERE narration = 'Logged on the phone'",
    )
    .await
}

/// The one text `sql` yields on `client`, if any.
async fn text_of(client: &Client, sql: &str) -> Option<String> {
    client
        .query_opt(sql, &[])
        .await
        .ok()
        .flatten()
        .and_then(|r| r.get(0))
}

/// Step 6: the desktop and a phone change job 3 at once, while `run` streams. The desktop's edit is in
/// a transaction open while the phone's commits, so neither saw the other's: a conflict, whichever
/// direction meets it first. The default policy `latest` settles it on both sides: each side's changes,
/// and where both changed a column the later writer's, the phone (the desktop's change counts from its
/// transaction's start). The operator then reverses that with `tandem conflicts resolve --keep desktop`.
async fn conflict(config: &Config, desktop: &mut Client, cloud: &mut Client) -> anyhow::Result<()> {
    let office = desktop
        .transaction()
        .await
        .context("beginning the desktop's edit")?;
    office
        .batch_execute(CONFLICT_DESKTOP)
        .await
        .context("the desktop's edit of job 3")?;
    let phone = cloud
        .transaction()
        .await
        .context("beginning the phone's edit")?;
    phone
        .batch_execute(CONFLICT_PHONE)
        .await
        .context("the phone's edit of job 3")?;
    // A WAL position inside the phone's transaction: below its commit, above every earlier one.
    let inside: String = phone
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .context("reading the cloud's WAL position")?
        .get(0);
    phone
        .commit()
        .await
        .context("committing the phone's edit")?;
    let phone_at = Instant::now();
    office
        .commit()
        .await
        .context("committing the desktop's edit")?;
    println!(
        "  the desktop puts job 3 on hold while a phone marks it completed; the phone commits first, the desktop {:.1} ms later",
        ms(phone_at.elapsed())
    );
    let (desktop, cloud) = (&*desktop, &*cloud);
    let job_3 = async || {
        let d = text_of(desktop, CONFLICT_ROW).await;
        (
            d.clone(),
            d.is_some() && d == text_of(cloud, CONFLICT_ROW).await,
        )
    };
    let settled = wait_until(DEADLINE, || async {
        let forward_done = count(desktop, "SELECT count(*) FROM tandem.outbox", &[]).await == 0;
        let reverse_done = count(
            desktop,
            "SELECT count(*) FROM tandem.progress WHERE direction = 'reverse' AND lsn > $1::text::pg_lsn",
            &[&inside],
        )
        .await
            == 1;
        let logged = count(desktop, "SELECT count(*) FROM tandem.conflicts", &[]).await > 0;
        forward_done && reverse_done && logged && job_3().await.1
    })
    .await;
    anyhow::ensure!(
        settled,
        "no conflict was settled within {DEADLINE:?} (or a direction did not apply both edits)"
    );
    println!(
        "  tandem found and settled it by its policy in {:.1} ms; both sides hold {} (`tandem conflicts list --all`):",
        ms(phone_at.elapsed()),
        text_of(desktop, CONFLICT_ROW).await.unwrap_or_default()
    );
    let recorded = conflicts::list(config, true).await?;
    for c in &recorded {
        println!("  {}", c.to_string().replace('\n', "\n  "));
    }
    let ids: Vec<String> = recorded.iter().map(|c| c.id.clone()).collect();
    println!(
        "  the office knows better: `tandem conflicts resolve {} --keep desktop`:",
        ids.join(" ")
    );
    let done = conflicts::resolve(config, &ids, Keep::Desktop).await?;
    for r in &done {
        println!("  {r}");
    }
    anyhow::ensure!(
        done.iter().all(|r| r.resolved),
        "resolving the conflict failed (see above)"
    );
    let agree = wait_until(DEADLINE, || async {
        let (d, same) = job_3().await;
        same && d.is_some_and(|d| d.starts_with("On Hold"))
    })
    .await;
    anyhow::ensure!(
        agree,
        "after the resolution, the two sides do not both hold the desktop's job 3 within {DEADLINE:?}"
    );
    println!(
        "  both sides now agree on job 3: {}",
        text_of(desktop, CONFLICT_ROW).await.unwrap_or_default()
    );
    Ok(())
}

/// The run's totals once stopped.
fn stopped(report: &RunReport) {
    let (f, r) = (&report.forward, &report.reverse);
    println!(
        "\nstopped tandem run: forward {} batch(es), {} rows written, {} conflict(s); reverse {} group(s), {} rows written, {} conflict(s)",
        f.batches,
        f.outcome.written,
        f.outcome.conflicts,
        r.batches,
        r.outcome.written,
        r.outcome.conflicts
    );
}

/// Waits until `sql` (a count) is 1 on `client`; the error names `what`.
async fn until_one(
    client: &Client,
    what: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let ok = wait_until(DEADLINE, || async { count(client, sql, params).await == 1 }).await;
    anyhow::ensure!(ok, "{what}: not there within {DEADLINE:?}");
    Ok(started.elapsed())
}
