//! What `tandem run` tells an operator while it runs: Prometheus text at `/metrics`, a real `/healthz`,
//! and one summary line in the log per `[metrics] interval_ms`.
//!
//! The exporter is `metrics-exporter-prometheus` with its default features off (no push gateway, no
//! HTTP stack of its own): the two routes are served here by a small HTTP/1.1 responder on tokio,
//! one request per connection, which is all Prometheus and a load balancer's probe need. The series
//! that live in the databases (backlog, slot, conflicts) are set from [`status::collect`], the reading
//! `tandem status` prints; the other counters and the latency histogram are recorded where the work
//! happens (`crate::telemetry`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::status::{self, Health, Status};
use crate::config::Config;
use crate::telemetry as t;

/// The latency histogram's buckets, in seconds: from a millisecond to ten minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0,
];

/// Installs the Prometheus recorder for this process and serves `/metrics` and `/healthz` on `addr`
/// until `shutdown`. Returns the address bound (port 0 picks a free one).
pub async fn serve(
    addr: &str,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(t::APPLY_LATENCY.to_string()),
            LATENCY_BUCKETS,
        )
        .context("setting the latency histogram's buckets")?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    describe();
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("listening on {addr} for /metrics ([metrics] addr or --metrics-addr): is the port taken?")
    })?;
    let bound = listener.local_addr()?;
    let config = Arc::new(config.clone());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else { continue };
            let (handle, config) = (handle.clone(), config.clone());
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &handle, &config).await {
                    tracing::debug!(error = %e, "a metrics request failed");
                }
            });
        }
    });
    tracing::info!(addr = %bound, "serving /metrics and /healthz");
    Ok(bound)
}

fn describe() {
    metrics::describe_gauge!(t::UP, "1 while the direction is connected and streaming");
    metrics::describe_gauge!(t::FORWARD_BACKLOG_ROWS, "outbox rows waiting for the cloud");
    metrics::describe_gauge!(
        t::FORWARD_OLDEST_AGE,
        "age of the oldest outbox row, seconds"
    );
    metrics::describe_gauge!(t::SLOT_ACTIVE, "1 while a walsender streams from the slot");
    metrics::describe_gauge!(
        t::SLOT_LAG_BYTES,
        "current WAL minus the slot's confirmed flush, bytes"
    );
    metrics::describe_gauge!(
        t::RETAINED_WAL_BYTES,
        "WAL the slot holds on the cloud, bytes"
    );
    metrics::describe_gauge!(
        t::SAFE_WAL_SIZE_BYTES,
        "WAL that can still be written before the slot is lost"
    );
    metrics::describe_gauge!(t::WAL_STATUS, "1 for the slot's current wal_status");
    metrics::describe_gauge!(
        t::REVERSE_LAG_SECONDS,
        "how far behind the desktop is, seconds (upper bound)"
    );
    metrics::describe_histogram!(
        t::APPLY_LATENCY,
        "from the source's commit to the target's, seconds"
    );
    metrics::describe_counter!(
        t::ROWS_APPLIED,
        "rows written or deleted, per table and direction"
    );
    metrics::describe_gauge!(t::CONFLICTS_OPEN, "conflicts waiting for a person");
    metrics::describe_counter!(
        t::CONFLICTS,
        "conflicts recorded on both sides, by table, type and outcome when recorded (open: left for a person)"
    );
    metrics::describe_gauge!(t::DEAD_LETTERS_OPEN, "open dead letters");
    metrics::describe_counter!(t::DEAD_LETTERS, "dead letters recorded by this process");
    metrics::describe_counter!(t::RETRIES, "sessions retried, by cause");
    metrics::describe_gauge!(t::TABLES_PARKED, "tables parked");
    metrics::describe_gauge!(t::TABLE_PARKED, "1 per parked table");
    metrics::describe_gauge!(
        t::LAST_RECONCILE,
        "when the last reconcile finished, unix seconds"
    );
    // Counters exist from the start, at 0: `increase()` sees the first dead letter. (The conflicts'
    // series appear with their first record: their labels come from the records.)
    for direction in ["forward", "reverse"] {
        metrics::counter!(t::DEAD_LETTERS, "direction" => direction).increment(0);
        metrics::counter!(t::RETRIES, "direction" => direction, "cause" => "connection")
            .increment(0);
        if !t::direction(direction).up {
            t::down(direction, None);
        }
    }
}

/// Reads one request's head and answers it.
async fn answer(
    mut stream: tokio::net::TcpStream,
    handle: &PrometheusHandle,
    config: &Config,
) -> anyhow::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (code, kind, body) = match (method, path) {
        ("GET", "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        ("GET", "/healthz") => {
            let health = healthz(config).await;
            let code = if health.healthy { 200 } else { 503 };
            (code, "application/json", serde_json::to_string(&health)?)
        }
        ("GET", _) => (
            404,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
        _ => (405, "text/plain", "only GET\n".into()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// `/healthz`'s answer.
#[derive(Debug, Serialize)]
pub struct Healthz {
    pub healthy: bool,
    /// Why not, one line each (empty when healthy).
    pub reasons: Vec<String>,
}

/// Healthy only when both directions are connected, the slot is there and not lost, the publication
/// is there, no table is parked, and no conflicts wait for a person past `[status]`'s thresholds: the
/// status's problems marked `unhealthy`.
pub async fn healthz(config: &Config) -> Healthz {
    let mut reasons = Vec::new();
    for direction in ["forward", "reverse"] {
        let state = t::direction(direction);
        if !state.up {
            reasons.push(match state.error {
                Some(e) => format!("{direction}: not connected: {e}"),
                None => format!("{direction}: not connected"),
            });
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), status::collect(config)).await {
        Err(_) => reasons.push("the databases did not answer within 10 s".into()),
        Ok(s) => {
            for p in &s.problems {
                if p.unhealthy {
                    reasons.push(format!("{}: {} (fix: {})", p.subject, p.message, p.fix));
                }
            }
        }
    }
    Healthz {
        healthy: reasons.is_empty(),
        reasons,
    }
}

/// Every `[metrics] interval_ms` until `shutdown`: reads the status, sets the gauges from it and logs
/// one summary line (at info; a warning when degraded or broken).
pub async fn monitor(config: Config, shutdown: CancellationToken) {
    let every = Duration::from_millis(config.metrics.interval_ms.max(100));
    loop {
        let s = status::collect(&config).await;
        set_gauges(&s);
        summary(&s);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

fn gauge(name: &'static str, v: f64) {
    metrics::gauge!(name).set(v);
}

/// Sets the database-read gauges from a status reading.
pub fn set_gauges(s: &Status) {
    gauge(t::FORWARD_BACKLOG_ROWS, s.forward.backlog_rows as f64);
    gauge(t::FORWARD_OLDEST_AGE, s.forward.oldest_age_seconds);
    let r = &s.reverse;
    gauge(t::SLOT_ACTIVE, if r.active { 1.0 } else { 0.0 });
    if let Some(v) = r.slot_lag_bytes {
        gauge(t::SLOT_LAG_BYTES, v as f64);
    }
    if let Some(v) = r.retained_wal_bytes {
        gauge(t::RETAINED_WAL_BYTES, v as f64);
    }
    if let Some(v) = r.safe_wal_size {
        gauge(t::SAFE_WAL_SIZE_BYTES, v as f64);
    }
    if let Some(v) = r.lag_seconds {
        gauge(t::REVERSE_LAG_SECONDS, v);
    }
    for &status in t::WAL_STATUSES {
        let on = if r.wal_status == status { 1.0 } else { 0.0 };
        metrics::gauge!(t::WAL_STATUS, "status" => status).set(on);
    }
    gauge(t::CONFLICTS_OPEN, s.conflicts.open as f64);
    // Counts of records, which are never deleted: each series only grows (`absolute` keeps the
    // highest value seen, so a side unreadable for one reading lowers nothing).
    for ((table, kind, outcome), n) in &s.conflicts.recorded {
        metrics::counter!(t::CONFLICTS, "table" => table.clone(), "type" => kind.clone(), "outcome" => outcome.clone())
            .absolute(*n);
    }
    for (direction, n) in [
        ("forward", s.dead_letters.forward),
        ("reverse", s.dead_letters.reverse),
    ] {
        metrics::gauge!(t::DEAD_LETTERS_OPEN, "direction" => direction).set(n as f64);
    }
    let mut parked = 0;
    for table in &s.tables {
        let is = table.state == "parked";
        parked += usize::from(is);
        metrics::gauge!(t::TABLE_PARKED, "table" => table.table.clone()).set(if is {
            1.0
        } else {
            0.0
        });
    }
    gauge(t::TABLES_PARKED, parked as f64);
    if let Some(at) = s
        .last_reconcile
        .as_ref()
        .and_then(|l| unix_seconds(&l.finished_at))
    {
        gauge(t::LAST_RECONCILE, at);
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` as unix seconds.
fn unix_seconds(iso: &str) -> Option<f64> {
    let (date, time) = iso.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut tm = time.split(':');
    let (h, min) = (
        tm.next()?.parse::<i64>().ok()?,
        tm.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = tm.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + sec)
}

fn summary(s: &Status) {
    let r = &s.reverse;
    let parked = s.tables.iter().filter(|t| t.state == "parked").count();
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                health = ?s.health,
                forward_backlog = s.forward.backlog_rows,
                forward_oldest_s = s.forward.oldest_age_seconds.round(),
                reverse_lag_bytes = r.slot_lag_bytes,
                reverse_lag_s = r.lag_seconds,
                wal_status = %r.wal_status,
                conflicts = s.conflicts.open,
                dead_letters = s.dead_letters.open,
                parked,
                "summary"
            )
        };
    }
    if s.health == Health::Healthy {
        line!(info);
    } else {
        line!(warn);
        for p in &s.problems {
            tracing::warn!(subject = %p.subject, fix = %p.fix, "{}", p.message);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_times_read_as_unix_seconds() {
        assert_eq!(super::unix_seconds("1970-01-01T00:00:00.000Z"), Some(0.0));
        assert_eq!(
            super::unix_seconds("2026-12-01T15:30:00.500Z"),
            Some(1_796_139_000.5)
        );
        assert_eq!(super::unix_seconds("not a time"), None);
    }
}
