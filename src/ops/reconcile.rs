//! `tandem reconcile`: both sides made to share what they do not, per table and direction, writing
//! only what differs (see [`crate::pipeline::sync`] for how, and why it is safe beside streaming), with
//! the open dead letters of both directions retried first. Also run by `tandem run` on a schedule
//! (`[reconcile] at`). Every run is recorded in the desktop's `tandem.reconciles`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::change::Side;
use crate::config::Config;
use crate::db::{self, Context};
use crate::pipeline::sync::{self, Counts, Request as Scan, TableReport, Watch};
use crate::pipeline::{RunError, Tables};

/// Which way a reconcile repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Forward,
    Reverse,
    Both,
}

/// What to reconcile.
#[derive(Debug, Clone)]
pub struct Request {
    /// Desktop (or cloud) table names as an operator writes them; empty: every configured table.
    pub tables: Vec<String>,
    pub direction: Direction,
    pub dry_run: bool,
    /// What started it, as recorded: `command`, `schedule`.
    pub trigger: &'static str,
}

/// One row of the report: a table in one direction.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub table: String,
    pub direction: &'static str,
    #[serde(flatten)]
    pub counts: Counts,
    pub seconds: f64,
}

/// What a reconcile did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub direction: Direction,
    pub seconds: f64,
    /// Per table and direction.
    pub rows: Vec<Row>,
    /// Tables not reconciled, with why (parked, or their reconcile failed).
    pub skipped: Vec<Skipped>,
    /// Open dead letters the reconcile tried again (the scan compares their rows again and applies them
    /// through the commit engine; none in a dry run).
    pub dead_letters_retried: Retried,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub table: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Retried {
    pub forward: usize,
    pub reverse: usize,
}

impl Report {
    /// Rows written (or, in a dry run, to write), both directions.
    pub fn written(&self) -> u64 {
        self.rows.iter().map(|r| r.counts.written()).sum()
    }

    /// Whether every table was reconciled.
    pub fn complete(&self) -> bool {
        self.skipped.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(
        "no configured table is named {0}; the configured tables are: {1}\nfix: name a table of the config's [[table]] entries (its desktop or cloud name)"
    )]
    UnknownTable(String, String),
}

impl From<crate::db::DbError> for ReconcileError {
    fn from(e: crate::db::DbError) -> Self {
        ReconcileError::Run(e.into())
    }
}

/// Reconciles `request.tables` (all when empty).
pub async fn reconcile(
    config: &Config,
    request: &Request,
    watch: &dyn Watch,
) -> Result<Report, ReconcileError> {
    let started = Instant::now();
    let (tables, desktop, cloud) = tokio::try_join!(
        Tables::start(config),
        async { Ok(db::connect(Side::Desktop, &config.desktop.url).await?) },
        async { Ok(db::connect(Side::Cloud, &config.cloud.url).await?) },
    )?;
    let snapshot = tables.snapshot();
    let mapping = &snapshot.mapping;
    let mut selected = Vec::new();
    for name in &request.tables {
        let found = mapping.tables.iter().position(|t| {
            t.table.desktop.to_string() == *name
                || t.table.cloud.to_string() == *name
                || t.table.desktop.quoted() == *name
        });
        match found {
            Some(i) => selected.push(i),
            None => {
                let names: Vec<String> =
                    mapping.tables.iter().map(|t| t.table.to_string()).collect();
                return Err(ReconcileError::UnknownTable(name.clone(), names.join(", ")));
            }
        }
    }
    if selected.is_empty() {
        selected = mapping.parents_first.clone();
    } else {
        selected.sort_by_key(|i| mapping.parents_first.iter().position(|p| p == i));
        selected.dedup();
    }
    let scan = Scan {
        forward: request.direction != Direction::Reverse,
        reverse: request.direction != Direction::Forward,
        dry_run: request.dry_run,
    };
    // Open dead letters are retried by the scan itself: a refused row is a difference like any other,
    // compared again and applied through the commit engine, which resolves its dead letter once it
    // applies (no cloud row is re-saved for it).
    let names = |side: Side| -> Vec<String> {
        selected
            .iter()
            .map(|&i| match side {
                Side::Desktop => mapping.tables[i].table.desktop.to_string(),
                Side::Cloud => mapping.tables[i].table.cloud.to_string(),
            })
            .collect()
    };
    let (cloud_names, desktop_names) = (names(Side::Cloud), names(Side::Desktop));
    let retry = !request.dry_run;
    let (forward_open, reverse_open, since) = tokio::try_join!(
        open_by_table(
            &cloud,
            Side::Cloud,
            "forward",
            &cloud_names,
            scan.forward && retry
        ),
        open_by_table(
            &desktop,
            Side::Desktop,
            "reverse",
            &desktop_names,
            scan.reverse && retry
        ),
        async {
            let row = cloud.query_one("SELECT now()", &[]).await;
            let now: std::time::SystemTime =
                row.ctx(Side::Cloud, "reading the cloud's clock")?.get(0);
            Ok(now)
        },
    )?;
    let retried = Retried {
        forward: forward_open.values().sum::<u64>() as usize,
        reverse: reverse_open.values().sum::<u64>() as usize,
    };
    let mut reports: Vec<TableReport> = Vec::new();
    let mut skipped = Vec::new();
    let mut upto = None;
    let mut order = Vec::new();
    for &i in &selected {
        match snapshot.parked.get(&i) {
            Some(p) => skipped.push(Skipped {
                table: mapping.tables[i].table.to_string(),
                reason: format!("parked: {}; fix: {}", p.reason, p.fix),
            }),
            None => order.push(i),
        }
    }
    for (i, outcome) in sync::reconcile_all(config, mapping, &order, scan, watch).await? {
        let t = &mapping.tables[i];
        match outcome {
            Ok((report, h)) => {
                upto = upto.max(h.upto);
                reports.push(report);
            }
            Err(e) => {
                tracing::error!(table = %t.table, error = %e, "the table's reconcile failed; going on with the others");
                skipped.push(Skipped {
                    table: t.table.to_string(),
                    reason: format!("its reconcile failed: {e}"),
                });
            }
        }
    }
    // The forward keys handed to the outbox (and the dead letters queued again) are applied before
    // the report: by the running `run`, or here (the writers let the forward lock go).
    if scan.forward && !request.dry_run {
        let queued: Option<i64> = desktop
            .query_one("SELECT max(id) FROM tandem.outbox", &[])
            .await
            .ctx(Side::Desktop, "reading tandem.outbox")?
            .get(0);
        let reconciled: Vec<(String, String)> = reports
            .iter()
            .filter_map(|r| {
                mapping
                    .tables
                    .iter()
                    .find(|t| t.table.desktop.to_string() == r.table)
            })
            .map(|t| (t.table.desktop.schema.clone(), t.table.desktop.name.clone()))
            .collect();
        if let Some(upto) = queued.max(upto) {
            sync::forward_applied(config, &desktop, &reconciled, upto).await?;
        }
    }
    // What the targets refused (open dead letters: a dry run reports those a real run would meet
    // again) and, forward, what they found owned by phones; a refused row counts as a dead letter
    // only, not as written.
    let (forward_open, conflicts, reverse_open) = tokio::try_join!(
        open_by_table(&cloud, Side::Cloud, "forward", &cloud_names, scan.forward),
        conflicts_by_table(
            &cloud,
            &cloud_names,
            since,
            scan.forward && !request.dry_run
        ),
        open_by_table(
            &desktop,
            Side::Desktop,
            "reverse",
            &desktop_names,
            scan.reverse
        ),
    )?;
    for report in reports.iter_mut() {
        let Some(t) = mapping
            .tables
            .iter()
            .find(|t| t.table.desktop.to_string() == report.table)
        else {
            continue;
        };
        if scan.forward {
            let cloud_name = t.table.cloud.to_string();
            let f = &mut report.forward;
            f.dead_letters = forward_open.get(&cloud_name).copied().unwrap_or(0);
            if !request.dry_run {
                f.conflicts = conflicts.get(&cloud_name).copied().unwrap_or(0);
            }
            refused(f);
        }
        if scan.reverse {
            let r = &mut report.reverse;
            r.dead_letters = reverse_open.get(&report.table).copied().unwrap_or(0);
            refused(r);
        }
    }
    let mut rows = Vec::new();
    for r in &reports {
        if scan.forward {
            rows.push(Row {
                table: r.table.clone(),
                direction: "forward",
                counts: r.forward,
                seconds: r.seconds,
            });
        }
        if scan.reverse {
            rows.push(Row {
                table: r.table.clone(),
                direction: "reverse",
                counts: r.reverse,
                seconds: r.seconds,
            });
        }
    }
    let report = Report {
        dry_run: request.dry_run,
        direction: request.direction,
        seconds: started.elapsed().as_secs_f64(),
        rows,
        skipped,
        dead_letters_retried: retried,
    };
    sync::record(&desktop, request.trigger, started, &report).await?;
    Ok(report)
}

/// Takes the rows refused (`dead_letters`) off what was written: inserts first (the commonest refusal:
/// a parent missing), then updates, then deletes.
fn refused(c: &mut Counts) {
    let mut refused = c.dead_letters;
    for n in [&mut c.inserted, &mut c.updated, &mut c.deleted] {
        let less = refused.min(*n);
        *n -= less;
        refused -= less;
    }
}

/// Open dead letters of `direction` per table of `names`, on the side that keeps them (none asked
/// unless `wanted`).
async fn open_by_table(
    client: &tokio_postgres::Client,
    side: Side,
    direction: &str,
    names: &[String],
    wanted: bool,
) -> Result<HashMap<String, u64>, RunError> {
    if !wanted {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            "SELECT table_name, count(*) FROM tandem.dead_letters
              WHERE direction = $1 AND resolved_at IS NULL AND table_name = ANY($2)
              GROUP BY table_name",
            &[&direction, &names],
        )
        .await
        .ctx(side, "counting the open dead letters")?;
    Ok(by_table(&rows))
}

/// Forward conflicts logged since `since` per table of `names` (cloud names; none asked unless
/// `wanted`).
async fn conflicts_by_table(
    cloud: &tokio_postgres::Client,
    names: &[String],
    since: std::time::SystemTime,
    wanted: bool,
) -> Result<HashMap<String, u64>, RunError> {
    if !wanted {
        return Ok(HashMap::new());
    }
    let rows = cloud
        .query(
            "SELECT table_name, count(*) FROM tandem.conflicts
              WHERE direction = 'forward' AND table_name = ANY($1) AND detected_at >= $2
              GROUP BY table_name",
            &[&names, &since],
        )
        .await
        .ctx(Side::Cloud, "counting the forward conflicts")?;
    Ok(by_table(&rows))
}

fn by_table(rows: &[tokio_postgres::Row]) -> HashMap<String, u64> {
    rows.iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
        .collect()
}

/// Runs a whole reconcile every day at `at` (local time, `(hour, minute)`) until `shutdown`.
pub async fn scheduled(
    config: Config,
    at: (u8, u8),
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let wait = until_local(at);
        tracing::info!(in_seconds = wait.as_secs(), "next scheduled reconcile");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let request = Request {
            tables: Vec::new(),
            direction: Direction::Both,
            dry_run: false,
            trigger: "schedule",
        };
        match reconcile(&config, &request, &sync::Quiet).await {
            Ok(report) => tracing::info!(
                written = report.written(),
                skipped = report.skipped.len(),
                seconds = report.seconds,
                "scheduled reconcile done"
            ),
            Err(e) => {
                tracing::error!(error = %e, "the scheduled reconcile failed; it runs again tomorrow")
            }
        }
        // Never twice in the same minute.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(61)) => {}
        }
    }
}

/// How long until the next `(hour, minute)` of local time.
fn until_local(at: (u8, u8)) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    next_local(now, at).map_or(Duration::from_secs(3600), |t| {
        Duration::from_secs((t - now).max(1) as u64)
    })
}

/// The next instant (Unix seconds) after `now` whose local time is `(hour, minute)`.
#[cfg(unix)]
fn next_local(now: i64, (hour, minute): (u8, u8)) -> Option<i64> {
    // SAFETY: localtime_r and mktime write only into the `tm` given; `tm` is plain data.
    unsafe {
        let t: libc::time_t = now as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return None;
        }
        for day in 0..3 {
            let mut target = tm;
            target.tm_mday += day;
            target.tm_hour = i32::from(hour);
            target.tm_min = i32::from(minute);
            target.tm_sec = 0;
            target.tm_isdst = -1;
            let at = libc::mktime(&mut target) as i64;
            if at > now {
                return Some(at);
            }
        }
        None
    }
}

/// Elsewhere: `at` is read as UTC.
#[cfg(not(unix))]
fn next_local(now: i64, (hour, minute): (u8, u8)) -> Option<i64> {
    let day = now - now.rem_euclid(86_400);
    let at = day + i64::from(hour) * 3600 + i64::from(minute) * 60;
    Some(if at > now { at } else { at + 86_400 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_scheduled_time_is_ahead_and_within_a_day() {
        let now = 1_790_000_000;
        for at in [(0, 0), (2, 0), (23, 59), (12, 30)] {
            let next = next_local(now, at).expect("a time");
            assert!(next > now && next <= now + 86_400 + 3600, "{at:?}: {next}");
        }
    }
}
