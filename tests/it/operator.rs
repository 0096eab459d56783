//! The operator's commands on real clusters: `tandem status` (known values while `run` is stopped,
//! zero after `run --once`, exit codes, a lost slot reads as broken), `tandem conflicts`, and no
//! command printing a password.

use std::process::Command;

use serde_json::Value;
use tokio_postgres::Client;

use crate::any_schema::{OWNERSHIP, installed_with, run_once};
use crate::support::{TestDb, count, output_of};

const ITEM: &str = "[[tables]]\ndesktop = \"item\"\nkey = [\"id\"]\n";

/// The config file a `tandem` command of the test reads.
pub fn config_file(db: &TestDb, name: &str, cloud_url: &str, extra: &str) -> std::path::PathBuf {
    config_file_of(db, name, cloud_url, &format!("{extra}\n{ITEM}"))
}

/// [`config_file`] with `rest` (settings and tables) instead of the `item` table.
pub fn config_file_of(db: &TestDb, name: &str, cloud_url: &str, rest: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}.toml", db.name));
    let text = format!(
        "[desktop]\nurl = \"{}\"\n[cloud]\nurl = \"{cloud_url}\"\nslot = \"{}\"\n{rest}",
        db.desktop_url, db.name
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Every conflict, open or not, records who resolved it with `tandem conflicts resolve`.
pub fn every_conflict_says_who_chose(file: &std::path::Path) {
    let (_, stdout, _) = tandem(file, &["conflicts", "list", "--all", "--json"]);
    let all: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        !all.as_array().unwrap().is_empty(),
        "no conflicts: {stdout}"
    );
    for c in all.as_array().unwrap() {
        assert!(
            c["resolved_by"]
                .as_str()
                .is_some_and(|b| b.contains("tandem conflicts resolve")),
            "{c:#}"
        );
    }
}

/// Runs `tandem -c FILE args...`: (exit code, stdout, stdout and stderr).
pub fn tandem(file: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = output_of(
        Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("-c")
            .arg(file)
            .args(args)
            .env_remove("TANDEM_DESKTOP_URL")
            .env_remove("TANDEM_CLOUD_URL"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout, all)
}

fn status(file: &std::path::Path) -> (i32, Value) {
    let (code, stdout, all) = tandem(file, &["status", "--json"]);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    (code, json)
}

async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn item_db() -> (TestDb, tandem::config::Config) {
    installed_with(
        "CREATE TABLE item (id int PRIMARY KEY, name text);",
        &format!("CREATE TABLE item (id int PRIMARY KEY, name text, {OWNERSHIP});"),
        ITEM,
    )
    .await
}

/// [`item_db`] with the cloud on a cluster of its own (see [`TestDb::with_quiet_cloud`]).
async fn quiet_item_db() -> (TestDb, tandem::config::Config) {
    let db = TestDb::with_quiet_cloud().await;
    exec(
        &db.desktop().await,
        "CREATE TABLE item (id int PRIMARY KEY, name text);",
    )
    .await;
    exec(
        &db.cloud().await,
        &format!("CREATE TABLE item (id int PRIMARY KEY, name text, {OWNERSHIP});"),
    )
    .await;
    let config = db.config(ITEM).unwrap();
    tandem::setup::init(&config, false).await.unwrap();
    (db, config)
}

#[tokio::test]
async fn status_reads_known_values_while_run_is_stopped_and_zero_after_run_once() {
    let made = std::time::Instant::now();
    let (db, config) = quiet_item_db().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    // Before anything was applied, a phone's row waits: the lag counts from the slot's making.
    exec(
        &cloud,
        "INSERT INTO item (id, name) VALUES (99, 'phone first')",
    )
    .await;
    let file = config_file(&db, "status", &db.cloud_url, "");
    let (_, s) = status(&file);
    let lag = s["reverse"]["lag_seconds"].as_f64();
    assert!(
        lag.is_some_and(|l| l > 0.0 && l < made.elapsed().as_secs_f64() + 1.0),
        "lag before the first commit: {s:#}"
    );
    run_once(&config).await;
    // A phone's row through the stream: the reverse position has a commit time.
    let applied = std::time::Instant::now();
    exec(
        &cloud,
        "INSERT INTO item (id, name) VALUES (100, 'phone before')",
    )
    .await;
    run_once(&config).await;
    let (code, s) = status(&file);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["health"], "healthy", "{s:#}");
    assert_eq!(s["forward"]["backlog_rows"], 0, "{s:#}");
    assert_eq!(s["tables"][0]["table"], "item", "{s:#}");
    assert_eq!(s["tables"][0]["state"], "streaming", "{s:#}");
    assert!(s["reverse"]["last_commit_at"].is_string(), "{s:#}");

    // tandem stopped: three desktop rows wait in the outbox, two phone rows in the slot.
    exec(
        &desktop,
        "INSERT INTO item VALUES (1, 'a'), (2, 'b'); INSERT INTO item VALUES (3, 'c')",
    )
    .await;
    exec(
        &cloud,
        "INSERT INTO item (id, name) VALUES (101, 'p1'), (102, 'p2')",
    )
    .await;
    let (code, s) = status(&file);
    let waited = applied.elapsed().as_secs_f64();
    assert_eq!(code, 0, "below every threshold: {s:#}");
    assert_eq!(s["forward"]["backlog_rows"], 3, "{s:#}");
    let oldest = s["forward"]["oldest_age_seconds"].as_f64().unwrap();
    assert!(
        oldest > 0.0 && oldest < waited + 1.0,
        "{oldest} vs {waited}: {s:#}"
    );
    assert_eq!(s["forward"]["applier_running"], false, "{s:#}");
    let r = &s["reverse"];
    assert!(r["slot_lag_bytes"].as_i64().unwrap() > 0, "{s:#}");
    assert!(
        r["retained_wal_bytes"].as_i64().unwrap() >= r["slot_lag_bytes"].as_i64().unwrap(),
        "{s:#}"
    );
    let lag = r["lag_seconds"].as_f64().unwrap();
    assert!(
        lag > 0.0 && lag < waited + 1.0,
        "lag {lag} vs {waited}: {s:#}"
    );
    assert_eq!(r["active"], false, "{s:#}");
    assert_eq!(r["wal_status"], "reserved", "{s:#}");
    assert_eq!(r["max_slot_wal_keep_size"], 64 << 20, "{s:#}");
    let safe = r["safe_wal_size"].as_i64().unwrap();
    assert!(safe > 0, "{s:#}");
    assert_eq!(r["publication_exists"], true, "{s:#}");
    assert_eq!(s["conflicts"]["open"], 0);
    assert_eq!(s["dead_letters"]["open"], 0);
    assert_eq!(s["last_reconcile"]["trigger"], "sync", "{s:#}");

    // A threshold crossed is degraded, exit 1, with the problem named.
    let strict = config_file(
        &db,
        "strict",
        &db.cloud_url,
        "[status]\noutbox_age_warn_seconds = 0\n",
    );
    let (code, s) = status(&strict);
    assert_eq!(code, 1, "{s:#}");
    assert_eq!(s["health"], "degraded");
    assert_eq!(s["problems"][0]["subject"], "forward", "{s:#}");
    let (code, text, _) = tandem(&strict, &["status"]);
    assert_eq!(code, 1);
    assert!(
        text.contains("DEGRADED") && text.contains("3 outbox row(s) wait"),
        "{text}"
    );

    run_once(&config).await;
    let (code, s) = status(&file);
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["forward"]["backlog_rows"], 0, "{s:#}");
    assert_eq!(s["forward"]["oldest_age_seconds"], 0.0, "{s:#}");
    assert_eq!(s["reverse"]["slot_lag_bytes"], 0, "{s:#}");
    assert_eq!(s["reverse"]["lag_seconds"], 0.0, "{s:#}");
    assert!(s["forward"]["last_applied_at"].is_string(), "{s:#}");

    // A lost slot is broken, exit 2, and the fix is named.
    exec(
        &cloud,
        &format!("SELECT pg_drop_replication_slot('{}')", db.name),
    )
    .await;
    let (code, s) = status(&file);
    assert_eq!(code, 2, "{s:#}");
    assert_eq!(s["health"], "broken");
    assert_eq!(s["reverse"]["wal_status"], "missing");
    let fix = s["problems"][0]["fix"].as_str().unwrap();
    assert!(
        fix.contains("tandem init") && fix.contains("tandem reconcile"),
        "{s:#}"
    );
    let (code, text, _) = tandem(&file, &["status"]);
    assert_eq!(code, 2);
    assert!(
        text.contains("BROKEN") && text.contains("does not exist"),
        "{text}"
    );
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_file(strict);
}

/// Under the `manual` policy both sides keep their own version of a row both changed until the operator
/// chooses; the listing shows both, and the choice reaches both sides.
#[tokio::test]
async fn conflicts_are_listed_and_resolved_by_the_operator_under_the_manual_policy() {
    const MANUAL: &str = "[conflicts]\npolicy = \"manual\"\n";
    let (db, config) = installed_with(
        "CREATE TABLE item (id int PRIMARY KEY, name text);",
        &format!("CREATE TABLE item (id int PRIMARY KEY, name text, {OWNERSHIP});"),
        &format!("{MANUAL}{ITEM}"),
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    exec(&desktop, "INSERT INTO item VALUES (1, 'desk'), (2, 'desk')").await;
    run_once(&config).await;
    // Both sides edit both rows while tandem is stopped.
    exec(
        &desktop,
        "UPDATE item SET name = 'desk edit' WHERE id IN (1, 2)",
    )
    .await;
    exec(
        &cloud,
        "UPDATE item SET name = 'phone edit' WHERE id IN (1, 2)",
    )
    .await;
    run_once(&config).await;
    let name = |client| crate::support::rows(client, "item", "name", "true");
    assert_eq!(name(&desktop).await, ["(\"desk edit\")", "(\"desk edit\")"]);
    assert_eq!(name(&cloud).await, ["(\"phone edit\")", "(\"phone edit\")"]);
    let file = config_file(&db, "conflicts", &db.cloud_url, MANUAL);
    let (code, text, all) = tandem(&file, &["conflicts"]);
    assert_eq!(code, 0, "{all}");
    assert!(
        text.contains("conflicts: 2 open")
            && text.contains("desk edit")
            && text.contains("phone edit"),
        "{text}"
    );
    let (code, stdout, all) = tandem(&file, &["conflicts", "--json"]);
    assert_eq!(code, 0, "{all}");
    let list: Value = serde_json::from_str(&stdout).unwrap();
    let of = |key: i64| -> String {
        let c = list
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["row_key"]["id"].as_i64() == Some(key))
            .unwrap_or_else(|| panic!("no conflict of row {key}: {stdout}"));
        assert_eq!(c["incoming"]["name"], "phone edit", "{c:#}");
        assert_eq!(c["current"]["name"], "desk edit", "{c:#}");
        c["id"].as_str().unwrap().to_string()
    };
    let (one, two) = (of(1), of(2));
    for (id, keep) in [(&two, "mobile"), (&one, "desktop")] {
        let (code, text, all) = tandem(&file, &["conflicts", "resolve", id, "--keep", keep]);
        assert_eq!(code, 0, "{all}");
        assert!(
            text.contains(&format!("{id} resolved: the {keep} version")),
            "{text}"
        );
    }
    run_once(&config).await;
    let both = ["(1,\"desk edit\")", "(2,\"phone edit\")"];
    for client in [&desktop, &cloud] {
        assert_eq!(
            crate::support::rows(client, "item", "id, name", "true").await,
            both
        );
    }
    // Nothing left open, and who chose is recorded.
    let (_, text, _) = tandem(&file, &["conflicts"]);
    assert!(text.contains("conflicts: 0 open"), "{text}");
    every_conflict_says_who_chose(&file);
    // The opposite choice afterwards reverses it on both sides.
    let (code, _, all) = tandem(&file, &["conflicts", "resolve", &one, "--keep", "mobile"]);
    assert_eq!(code, 0, "{all}");
    run_once(&config).await;
    for client in [&desktop, &cloud] {
        assert_eq!(
            count(
                client,
                "SELECT count(*) FROM item WHERE name = 'phone edit'"
            )
            .await,
            2
        );
    }
    let _ = std::fs::remove_file(file);
}

/// Every command, on success and on failure, with a password in both URLs: none prints it.
#[tokio::test]
async fn no_command_prints_a_password() {
    const SECRET: &str = "Pa55-w0rd-never-shown";
    let (db, _config) = item_db().await;
    let with_password = |url: &str| url.replace("postgres@", &format!("postgres:{SECRET}@"));
    let good = config_file(&db, "secret", &with_password(&db.cloud_url), "");
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace(&db.desktop_url, &with_password(&db.desktop_url));
    std::fs::write(&good, text).unwrap();
    // Nothing listens on port 1: every connection fails, and the errors name the URLs.
    let dead = |url: &str| {
        let port = url
            .split("127.0.0.1:")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        with_password(url).replace(&format!(":{port}/"), ":1/")
    };
    let bad = config_file(&db, "secret-down", &dead(&db.cloud_url), "");
    let text = std::fs::read_to_string(&bad)
        .unwrap()
        .replace(&db.desktop_url, &dead(&db.desktop_url));
    std::fs::write(&bad, text).unwrap();
    let commands: &[&[&str]] = &[
        &["check"],
        &["check", "--json"],
        &["init", "--dry-run"],
        &["init"],
        &["run", "--once"],
        &["--log-format", "json", "run", "--once"],
        &["status"],
        &["status", "--json"],
        &["reconcile", "--dry-run"],
        &["reconcile", "--json"],
        &["dead-letters"],
        &["dead-letters", "--retry"],
        &["conflicts"],
        &["conflicts", "resolve", "f1", "--keep", "desktop"],
        &["seed"],
        &["uninstall"],
    ];
    for file in [&good, &bad] {
        for args in commands {
            let (_, _, all) = tandem(file, args);
            assert!(
                !all.contains(SECRET),
                "tandem {args:?} printed the password:\n{all}"
            );
            if file == &bad {
                assert!(
                    all.contains("127.0.0.1:1")
                        || all.contains("unreachable")
                        || all.contains("error"),
                    "tandem {args:?} said nothing of the failure:\n{all}"
                );
            }
        }
    }
    let _ = std::fs::remove_file(good);
    let _ = std::fs::remove_file(bad);
}

/// `--watch` reads again and redraws until stopped.
#[tokio::test]
async fn status_watch_redraws_until_stopped() {
    let (db, _config) = item_db().await;
    let file = config_file(&db, "watch", &db.cloud_url, "");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("-c")
        .arg(&file)
        .args(["status", "--watch"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        while seen.matches("tandem status:").count() < 2 {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "status --watch ended by itself: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "status --watch did not redraw within 30 s: {seen}"
    );
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("status --watch stops on ctrl-c")
        .unwrap();
    assert_eq!(status.code(), Some(0), "healthy: {seen}");
    let _ = std::fs::remove_file(file);
}
