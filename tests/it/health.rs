//! What `run` shows while it runs: `/metrics` (valid for promtool), `/healthz` (200, then 503 when a
//! table parks, when conflicts wait for a person and when the cloud goes away), the conflicts recorded
//! on both sides counted on `/metrics`, and a broken direction that stops alone and resumes after
//! `tandem init`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem::cluster::wait_until;
use tandem::ops::reconcile::{self, Direction, Request};
use tandem::ops::status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

use crate::any_schema::{OWNERSHIP, installed_with, run_once};
use crate::operator::config_file;
use crate::status_conflicts::{Record, item_db, resolve, write_old};
use crate::support::{Proxy, Streaming, count};

const ITEM: &str = "[[tables]]\ndesktop = \"item\"\nkey = [\"id\"]\n";

async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `GET path` on `addr`: (status code, body).
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

/// Whether `sql` (a count) reaches 1 within a minute.
async fn wait(client: &Client, sql: String) -> bool {
    wait_until(Duration::from_secs(60), || async {
        count(client, &sql).await == 1
    })
    .await
}

async fn healthz_becomes(addr: &str, code: u16, what: &str) -> String {
    let last = Arc::new(Mutex::new(String::new()));
    let seen = wait_until(Duration::from_secs(90), || {
        let last = last.clone();
        async move {
            match get(addr, "/healthz").await {
                Some((c, body)) => {
                    *last.lock().unwrap() = format!("{c} {body}");
                    c == code
                }
                None => false,
            }
        }
    })
    .await;
    let last = last.lock().unwrap().clone();
    assert!(
        seen,
        "/healthz never answered {code} ({what}); last: {last}"
    );
    last
}

/// A `tandem run --metrics-addr 127.0.0.1:0` of config `file`: the process, its log (stderr) as it
/// grows, and the address it serves at (read from its log).
struct Served {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
    addr: String,
}

async fn serve(file: &std::path::Path) -> Served {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("-c")
        .arg(file)
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .env_remove("TANDEM_DESKTOP_URL")
        .env_remove("TANDEM_CLOUD_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let shared = log.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            shared
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let addr = Arc::new(Mutex::new(None::<String>));
    let found = wait_until(Duration::from_secs(60), || {
        let (log, addr) = (log.clone(), addr.clone());
        async move {
            let text = log.lock().unwrap().clone();
            let line = text.lines().find(|l| l.contains("serving /metrics"));
            let bound = line
                .and_then(|l| l.split("addr=").nth(1))
                .map(|a| a.trim().to_string());
            *addr.lock().unwrap() = bound.clone();
            bound.is_some()
        }
    })
    .await;
    assert!(
        found,
        "run never said where it serves: {}",
        log.lock().unwrap()
    );
    let addr = addr.lock().unwrap().clone().unwrap();
    Served { child, log, addr }
}

/// `/metrics` once it holds every line of `lines` (within 30 s); fails with the last body otherwise.
async fn metrics_with(addr: &str, lines: &[String]) -> String {
    let last = Arc::new(Mutex::new(String::new()));
    let complete = wait_until(Duration::from_secs(30), || {
        let last = last.clone();
        async move {
            let Some((200, body)) = get(addr, "/metrics").await else {
                return false;
            };
            *last.lock().unwrap() = body.clone();
            lines.iter().all(|l| body.contains(l.as_str()))
        }
    })
    .await;
    let body = last.lock().unwrap().clone();
    assert!(complete, "/metrics never held all of {lines:#?}:\n{body}");
    body
}

/// `promtool check metrics` accepts `body`.
fn promtool_accepts(body: &str) {
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut promtool = promtool.expect("promtool not found: install Debian's prometheus package");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn run_serves_metrics_promtool_accepts_and_healthz_follows_parking_and_the_cloud() {
    let (db, config) = installed_with(
        "CREATE TABLE item (id int PRIMARY KEY, name text);",
        &format!("CREATE TABLE item (id int PRIMARY KEY, name text, {OWNERSHIP});"),
        ITEM,
    )
    .await;
    run_once(&config).await;
    let proxy = Proxy::start(db.cloud_port()).await;
    let extra =
        "[sync]\nschema_recheck_ms = 300\nbroken_retry_ms = 300\n[metrics]\ninterval_ms = 200\n";
    let file = config_file(&db, "metrics", &db.cloud_url_at(proxy.port), extra);
    let Served {
        mut child,
        log,
        addr,
    } = serve(&file).await;
    assert!(
        !log.lock().unwrap().contains('\u{1b}'),
        "colour codes in a log that is no terminal"
    );
    // One summary line per [metrics] interval.
    let summarized = wait_until(Duration::from_secs(30), || {
        let log = log.clone();
        async move {
            let text = log.lock().unwrap().clone();
            text.lines()
                .any(|l| l.contains("summary") && l.contains("forward_backlog="))
        }
    })
    .await;
    assert!(summarized, "no summary line: {}", log.lock().unwrap());

    healthz_becomes(&addr, 200, "both directions streaming").await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    exec(&desktop, "INSERT INTO item VALUES (1, 'desk')").await;
    exec(&cloud, "INSERT INTO item (id, name) VALUES (2, 'phone')").await;
    let arrived = wait_until(Duration::from_secs(30), || async {
        count(&cloud, "SELECT count(*) FROM item WHERE id = 1").await == 1
            && count(&desktop, "SELECT count(*) FROM item WHERE id = 2").await == 1
    })
    .await;
    assert!(arrived, "the rows did not travel");
    let metrics = Arc::new(Mutex::new(String::new()));
    let complete = wait_until(Duration::from_secs(30), || {
        let metrics = metrics.clone();
        let addr = addr.clone();
        async move {
            let Some((200, body)) = get(&addr, "/metrics").await else {
                return false;
            };
            *metrics.lock().unwrap() = body.clone();
            body.contains("tandem_rows_applied_total{direction=\"reverse\",table=\"item\"} 1")
                && body
                    .contains("tandem_rows_applied_total{direction=\"forward\",table=\"item\"} 1")
        }
    })
    .await;
    let body = metrics.lock().unwrap().clone();
    assert!(complete, "{body}");
    for series in [
        "tandem_up{direction=\"forward\"} 1",
        "tandem_up{direction=\"reverse\"} 1",
        "tandem_forward_backlog_rows ",
        "tandem_reverse_slot_lag_bytes ",
        "tandem_reverse_wal_status{status=\"reserved\"} 1",
        "tandem_apply_latency_seconds_bucket{direction=\"forward\"",
        "tandem_apply_latency_seconds_bucket{direction=\"reverse\"",
        "tandem_tables_parked 0",
    ] {
        assert!(body.contains(series), "{series} missing:\n{body}");
    }
    // Every series the deploy files read is served (the safe WAL size only where the cloud limits
    // the slot's WAL: not on the test clusters; the conflicts' counters from the first conflict
    // recorded: see the next test).
    for name in tandem::telemetry::ALL {
        if ![
            tandem::telemetry::SAFE_WAL_SIZE_BYTES,
            tandem::telemetry::CONFLICTS,
        ]
        .contains(name)
        {
            assert!(
                body.contains(&format!("\n{name}")),
                "{name} missing:\n{body}"
            );
        }
    }
    promtool_accepts(&body);

    // A table parks: 503, naming it.
    exec(&cloud, "ALTER TABLE item RENAME COLUMN name TO label").await;
    exec(&desktop, "UPDATE item SET name = 'parks it' WHERE id = 1").await;
    let said = healthz_becomes(&addr, 503, "a table parked").await;
    assert!(said.contains("item"), "{said}");
    exec(&cloud, "ALTER TABLE item RENAME COLUMN label TO name").await;
    healthz_becomes(&addr, 200, "the table resumed").await;

    // The cloud goes away: 503.
    proxy.go_down();
    let said = healthz_becomes(&addr, 503, "the cloud gone").await;
    assert!(said.contains("cloud"), "{said}");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let _ = std::fs::remove_file(file);
}

/// `tandem_conflicts_total{table="item",type,outcome} n`.
fn recorded(kind: &str, outcome: &str, n: u64) -> String {
    format!("tandem_conflicts_total{{table=\"item\",type=\"{kind}\",outcome=\"{outcome}\"}} {n}\n")
}

#[tokio::test]
async fn metrics_count_every_conflict_recorded_and_healthz_follows_the_waiting_ones() {
    let (db, _config) = item_db().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let settled = |key: i32, kind: &'static str, outcome: &'static str| Record {
        key,
        kind,
        policy: "latest",
        outcome: Some(outcome),
        age_seconds: 60.0,
    };
    for (key, kind, outcome) in [
        (1, "update/update", "mobile"),
        (2, "update/update", "mobile"),
        (3, "insert/insert", "merged"),
    ] {
        settled(key, kind, outcome).write(&desktop).await;
    }
    let open = Record {
        key: 4,
        kind: "update/delete",
        policy: "manual",
        outcome: None,
        age_seconds: 60.0,
    }
    .write(&desktop)
    .await;
    // Older records, one on each side: one still open, one a person resolved.
    let old_open = write_old(&cloud, "forward", 5).await;
    let old_resolved = write_old(&desktop, "reverse", 6).await;
    resolve(&desktop, &old_resolved, "desktop").await;

    let file = config_file(
        &db,
        "conflict-metrics",
        &db.cloud_url,
        "[sync]\nbroken_retry_ms = 300\n[metrics]\ninterval_ms = 200\n",
    );
    let Served {
        mut child,
        log: _log,
        addr,
    } = serve(&file).await;
    let body = metrics_with(
        &addr,
        &[
            recorded("update/update", "mobile", 2),
            recorded("insert/insert", "merged", 1),
            recorded("update/delete", "open", 1),
            // Left for a person when recorded, both: the one resolved since stays there.
            recorded("unknown", "open", 2),
            "\ntandem_conflicts_open 2\n".into(),
        ],
    )
    .await;
    assert!(
        body.contains("# TYPE tandem_conflicts_total counter"),
        "{body}"
    );
    assert_eq!(
        body.matches("\ntandem_conflicts_total{").count(),
        4,
        "one series per table, type and outcome, no other:\n{body}"
    );
    promtool_accepts(&body);

    // Conflicts wait for a person: 503, saying what to do.
    let said = healthz_becomes(&addr, 503, "conflicts waiting").await;
    assert!(
        said.contains("conflicts: 2 conflict(s) wait for a person")
            && said.contains("tandem conflicts resolve ID --keep desktop|mobile"),
        "{said}"
    );
    // Resolved: 200 again; the counters do not move (each conflict stays where it was recorded).
    resolve(&desktop, &open, "mobile").await;
    resolve(&cloud, &old_open, "desktop").await;
    healthz_becomes(&addr, 200, "no conflict waits").await;
    metrics_with(
        &addr,
        &[
            "\ntandem_conflicts_open 0\n".into(),
            recorded("update/delete", "open", 1),
            recorded("unknown", "open", 2),
        ],
    )
    .await;
    // A conflict recorded while it runs is counted at the next reading.
    settled(7, "update/update", "mobile").write(&desktop).await;
    metrics_with(&addr, &[recorded("update/update", "mobile", 3)]).await;

    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn a_dropped_publication_stops_only_the_reverse_direction_which_resumes_after_init() {
    let (db, config) = installed_with(
        "CREATE TABLE item (id int PRIMARY KEY, name text);",
        &format!("CREATE TABLE item (id int PRIMARY KEY, name text, {OWNERSHIP});"),
        &format!("[sync]\nbroken_retry_ms = 300\n{ITEM}"),
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let run = Streaming::start(&config);
    exec(
        &cloud,
        "INSERT INTO item (id, name) VALUES (100, 'phone warm-up')",
    )
    .await;
    assert!(wait(&desktop, "SELECT count(*) FROM item WHERE id = 100".into()).await);
    exec(
        &cloud,
        &format!("DROP PUBLICATION {}", config.cloud.publication),
    )
    .await;
    exec(
        &cloud,
        "INSERT INTO item (id, name) VALUES (101, 'phone while no publication')",
    )
    .await;
    // The forward direction goes on.
    for id in 1..=3 {
        exec(
            &desktop,
            &format!("INSERT INTO item VALUES ({id}, 'desk {id}')"),
        )
        .await;
        assert!(
            wait(&cloud, format!("SELECT count(*) FROM item WHERE id = {id}")).await,
            "desktop row {id} did not reach the cloud while the reverse direction was broken"
        );
    }
    let s = status::collect(&config).await;
    assert_eq!(s.health, status::Health::Broken, "{s:#?}");
    let problem = s
        .problems
        .iter()
        .find(|p| p.message.contains("publication"))
        .expect("named");
    assert!(problem.fix.contains("tandem init"), "{problem:?}");
    let down = wait_until(Duration::from_secs(30), || async {
        !tandem::telemetry::direction("reverse").up
    })
    .await;
    assert!(down, "the reverse direction never said it stopped");

    // Recovery as documented: init, then reconcile. The run resumes by itself.
    tandem::setup::init(&config, false).await.unwrap();
    let request = Request {
        tables: Vec::new(),
        direction: Direction::Both,
        dry_run: false,
        trigger: "command",
    };
    let report = reconcile::reconcile(&config, &request, &tandem::pipeline::sync::Quiet)
        .await
        .unwrap();
    assert!(report.complete(), "{report:?}");
    assert!(wait(&desktop, "SELECT count(*) FROM item WHERE id = 101".into()).await);
    exec(
        &cloud,
        "INSERT INTO item (id, name) VALUES (102, 'phone after init')",
    )
    .await;
    assert!(
        wait(&desktop, "SELECT count(*) FROM item WHERE id = 102".into()).await,
        "the reverse direction did not resume after init"
    );
    exec(&desktop, "INSERT INTO item VALUES (4, 'desk after')").await;
    assert!(wait(&cloud, "SELECT count(*) FROM item WHERE id = 4".into()).await);
    let report = run.stop().await;
    assert!(report.parked.is_empty());
    assert_eq!(count(&desktop, "SELECT count(*) FROM item").await, 7);
}
