//! The `tandem` binary: exit codes and messages an operator sees.

use std::process::{Command, Stdio};

use crate::support::TestDb;

fn tandem(args: &[&str], config: Option<&std::path::Path>) -> (i32, String) {
    tandem_with(args, config, &[])
}

fn tandem_with(
    args: &[&str],
    config: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.envs(env.iter().copied());
    if let Some(path) = config {
        cmd.arg("-c").arg(path);
    }
    let out = crate::support::output_of(
        cmd.args(args)
            .env_remove("TANDEM_DESKTOP_URL")
            .env_remove("TANDEM_CLOUD_URL"),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The sample config, written to a file, pointing at this test's databases.
fn config_file(db: &TestDb) -> std::path::PathBuf {
    config_file_with(db, |t| t)
}

fn config_file_with(db: &TestDb, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", db.name));
    let text = tandem::sample::CONFIG
        .replace("${DESKTOP_URL}", &db.desktop_url)
        .replace("${CLOUD_URL}", &db.cloud_url)
        .replace("slot = \"tandem\"", &format!("slot = \"{}\"", db.name));
    std::fs::write(&path, edit(text)).unwrap();
    path
}

#[test]
fn a_missing_config_file_is_named() {
    let (code, text) = tandem(
        &["check"],
        Some(std::path::Path::new("/nonexistent/tandem.toml")),
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("/nonexistent/tandem.toml"), "{text}");
}

#[tokio::test]
async fn init_check_uninstall_from_the_command_line() {
    let db = TestDb::sample().await;
    let file = config_file(&db);
    let run = |args: &'static [&'static str]| {
        let file = file.clone();
        tokio::task::spawn_blocking(move || tandem(args, Some(&file)))
    };
    let (code, text) = run(&["check"]).await.unwrap();
    assert_eq!(code, 1, "check before init must fail: {text}");
    assert!(text.contains("run `tandem init`"), "{text}");

    let (code, text) = run(&["init"]).await.unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("create trigger tandem_capture_insert on jobshead [job_id]"),
        "{text}"
    );
    assert!(text.contains("init: 101 change(s) made"), "{text}");
    assert!(!text.contains("password"), "{text}");

    let (code, text) = run(&["init"]).await.unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("nothing to do"), "{text}");

    let (code, text) = run(&["check"]).await.unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("check: all good"), "{text}");

    let (code, text) = run(&["check", "--json"]).await.unwrap();
    assert_eq!(code, 0, "{text}");
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        parsed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "ok")
    );

    // Without a terminal and without --yes, uninstall refuses and changes nothing.
    let (code, text) = run(&["uninstall"]).await.unwrap();
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("pass --yes"), "{text}");
    assert_eq!(run(&["check"]).await.unwrap().0, 0);

    let (code, text) = run(&["uninstall", "--yes"]).await.unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("drop replication slot"), "{text}");
    let (code, text) = run(&["uninstall", "--yes"]).await.unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("nothing to remove"), "{text}");
    std::fs::remove_file(&file).unwrap();
}

/// The desktop's rows and the cloud's desktop-owned rows of every sample table, as comparable multisets.
async fn both_sides(db: &TestDb) -> Vec<(Vec<String>, Vec<String>)> {
    let config = db.sample_config();
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let mut out = Vec::new();
    for t in &config.tables {
        let cols: Vec<String> = desktop
            .query(
                "SELECT quote_ident(column_name) FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                &[&t.table.desktop.name],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|c| !t.skip_to_cloud.contains(c))
            .collect();
        let cols = cols.join(", ");
        out.push((
            crate::support::rows(&desktop, &t.table.desktop.quoted(), &cols, "true").await,
            crate::support::rows(&cloud, &t.table.cloud.quoted(), &cols, "source = 'D'").await,
        ));
    }
    out
}

#[tokio::test]
async fn kill_9_between_the_cloud_commit_and_the_outbox_delete_loses_and_duplicates_nothing() {
    let db = TestDb::sample().await;
    let file = config_file_with(&db, |t| {
        t.replace("batch_max_rows = 50000", "batch_max_rows = 700")
    });
    let config = db.sample_config();
    tandem::setup::init(&config, false).await.unwrap();
    tandem::sample::seed(&mut db.desktop().await, &config, 0.05)
        .await
        .unwrap();
    let run = |env: &'static [(&'static str, &'static str)]| {
        let file = file.clone();
        tokio::task::spawn_blocking(move || tandem_with(&["run", "--once"], Some(&file), env))
    };
    // Dies right after its first cloud commit, before deleting those outbox rows: like kill -9.
    let (code, text) = run(&[("TANDEM_FAILPOINT", "after-cloud-commit")])
        .await
        .unwrap();
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("failpoint after-cloud-commit"), "{text}");
    let desktop = db.desktop().await;
    let pending = crate::support::count(&desktop, "SELECT count(*) FROM tandem.outbox").await;
    assert!(pending > 0);
    let partial = crate::support::count(&db.cloud().await, "SELECT count(*) FROM jobshead").await
        + crate::support::count(&db.cloud().await, "SELECT count(*) FROM jobtasks").await
        + crate::support::count(&db.cloud().await, "SELECT count(*) FROM orgmaster").await;
    assert!(partial > 0, "the first batch committed in the cloud");

    let (code, text) = run(&[]).await.unwrap();
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        crate::support::count(&desktop, "SELECT count(*) FROM tandem.outbox").await,
        0
    );
    let cloud = db.cloud().await;
    // The 3 orphan clients are dead letters, once each; everything else is equal, with no duplicate.
    assert_eq!(
        crate::support::count(&cloud, "SELECT count(*) FROM tandem.dead_letters").await,
        3
    );
    for (i, (d, c)) in both_sides(&db).await.into_iter().enumerate() {
        let name = &config.tables[i].table.desktop.name;
        if name == "climaster" {
            assert_eq!(d.len(), c.len() + 3, "{name}");
        } else {
            assert_eq!(d, c, "{name} differs after the crash and restart");
        }
    }
    std::fs::remove_file(&file).unwrap();
}

#[tokio::test]
async fn dead_letters_are_listed_and_retried() {
    let db = TestDb::sample().await;
    let file = config_file(&db);
    let config = db.sample_config();
    tandem::setup::init(&config, false).await.unwrap();
    db.desktop()
        .await
        .batch_execute("INSERT INTO orgmaster (org_id, org_name) VALUES (1, 'Org'); INSERT INTO climaster (client_id, org_id, client_name) VALUES (1, 1, 'Ok'), (2, 7, 'Orphan')")
        .await
        .unwrap();
    let run = |args: &'static [&'static str]| {
        let file = file.clone();
        tokio::task::spawn_blocking(move || tandem(args, Some(&file)))
    };
    let (code, text) = run(&["run", "--once"]).await.unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("1 dead letter(s)"), "{text}");

    let (code, text) = run(&["dead-letters", "--json"]).await.unwrap();
    assert_eq!(code, 0, "{text}");
    let letters: serde_json::Value = serde_json::from_str(&text).unwrap();
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{text}");
    assert_eq!(letters[0]["table"], "climaster");
    assert_eq!(letters[0]["row_key"]["client_id"], 2);
    assert_eq!(letters[0]["sqlstate"], "23503");
    assert_eq!(letters[0]["row_image"]["client_name"], "Orphan");
    let (_, text) = run(&["dead-letters"]).await.unwrap();
    assert!(
        text.contains("climaster {\"client_id\":2}: SQLSTATE 23503"),
        "{text}"
    );
    assert!(text.contains("dead-letters: 1 open"), "{text}");

    // Fixed on the desktop (the org arrives), retried, applied, resolved.
    db.desktop()
        .await
        .batch_execute("INSERT INTO orgmaster (org_id, org_name) VALUES (7, 'Found')")
        .await
        .unwrap();
    let (code, text) = run(&["dead-letters", "--retry"]).await.unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("1 forward dead letter(s) queued again, 0 reverse one(s) re-sent"),
        "{text}"
    );
    let (code, text) = run(&["run", "--once"]).await.unwrap();
    assert_eq!(code, 0, "{text}");
    let (_, text) = run(&["dead-letters"]).await.unwrap();
    assert!(text.contains("dead-letters: 0 open"), "{text}");
    assert_eq!(
        crate::support::count(&db.cloud().await, "SELECT count(*) FROM climaster").await,
        2
    );
    let (_, text) = run(&["dead-letters", "--all"]).await.unwrap();
    assert!(text.contains("resolved"), "{text}");
    std::fs::remove_file(&file).unwrap();
}

#[tokio::test]
async fn run_streams_until_sigterm_then_exits_cleanly() {
    let db = TestDb::sample().await;
    let file = config_file(&db);
    tandem::setup::init(&db.sample_config(), false)
        .await
        .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("-c")
        .arg(&file)
        .arg("run")
        .env_remove("TANDEM_DESKTOP_URL")
        .env_remove("TANDEM_CLOUD_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    db.desktop()
        .await
        .batch_execute("INSERT INTO orgmaster (org_id, org_name) VALUES (1, 'Org')")
        .await
        .unwrap();
    let cloud = db.cloud().await;
    let arrived = tandem::cluster::wait_until(std::time::Duration::from_secs(30), || async {
        crate::support::count(&cloud, "SELECT count(*) FROM orgmaster").await == 1
    })
    .await;
    assert!(
        arrived,
        "the change did not arrive while tandem run was running"
    );
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        child.wait().await.unwrap();
        let mut text = String::new();
        use tokio::io::AsyncReadExt;
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .await
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .await
            .unwrap();
        (child.try_wait().unwrap().unwrap(), text)
    })
    .await
    .expect("tandem run stops after SIGTERM");
    assert!(out.0.success(), "{}", out.1);
    assert!(
        out.1.contains("run: ") && out.1.contains("row(s) written"),
        "{}",
        out.1
    );
    std::fs::remove_file(&file).unwrap();
}

#[tokio::test]
async fn kill_9_mid_transaction_or_before_the_slot_is_told_loses_and_duplicates_nothing() {
    let db = TestDb::sample().await;
    // Small chunks, so a big cloud transaction is staged on the desktop in several pieces.
    let file = config_file_with(&db, |t| {
        t.replace("[sync]", "[sync]\nbatch_max_bytes = 65536")
    });
    tandem::setup::init(&db.sample_config(), false)
        .await
        .unwrap();
    // The initial sync (of empty tables) is done: from here on the phone's rows come by the stream only.
    let synced = tokio::task::spawn_blocking({
        let file = file.clone();
        move || tandem_with(&["run", "--once"], Some(&file), &[])
    })
    .await
    .unwrap();
    assert_eq!(synced.0, 0, "{}", synced.1);
    let cloud = db.cloud().await;
    // A phone's big transaction on a table without a desktop key: a duplicate would show.
    cloud
        .batch_execute("INSERT INTO jobtasks (task_name, est_hours) SELECT 'Task ' || g, g % 100 FROM generate_series(1, 20000) g")
        .await
        .unwrap();
    let run = |env: &'static [(&'static str, &'static str)]| {
        let file = file.clone();
        tokio::task::spawn_blocking(move || tandem_with(&["run", "--once"], Some(&file), env))
    };
    let desktop = db.desktop().await;
    let tasks = "SELECT count(*) FROM jobtasks";

    let (code, text) = run(&[("TANDEM_FAILPOINT", "reverse-mid-transaction")])
        .await
        .unwrap();
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("failpoint reverse-mid-transaction"), "{text}");
    assert_eq!(
        crate::support::count(&desktop, tasks).await,
        0,
        "half a transaction reached the desktop"
    );

    let (code, text) = run(&[("TANDEM_FAILPOINT", "reverse-after-commit")])
        .await
        .unwrap();
    assert_ne!(code, 0, "{text}");
    assert_eq!(crate::support::count(&desktop, tasks).await, 20_000);

    // The slot was never told: the transaction streams again, and is recognised as applied.
    cloud
        .batch_execute("INSERT INTO jobtasks (task_name) VALUES ('one more')")
        .await
        .unwrap();
    let (code, text) = run(&[]).await.unwrap();
    assert_eq!(code, 0, "{text}");
    assert_eq!(crate::support::count(&desktop, tasks).await, 20_001);
    assert_eq!(
        crate::support::count(&desktop, "SELECT count(*) FROM (SELECT task_name FROM jobtasks GROUP BY task_name HAVING count(*) > 1) d").await,
        0
    );
    std::fs::remove_file(&file).unwrap();
}

#[tokio::test]
async fn run_before_init_says_to_run_init() {
    let db = TestDb::sample().await;
    let file = config_file(&db);
    let (code, text) = tokio::task::spawn_blocking({
        let file = file.clone();
        move || tandem(&["run", "--once"], Some(&file))
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("tandem is not set up for this config"),
        "{text}"
    );
    assert!(text.contains("create logical replication slot"), "{text}");
    assert!(text.contains("fix: run `tandem init`"), "{text}");
    std::fs::remove_file(&file).unwrap();
}
