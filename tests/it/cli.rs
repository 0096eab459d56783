//! The `tandem` binary: exit codes and messages an operator sees.

use std::process::{Command, Stdio};

use crate::support::TestDb;

fn tandem(args: &[&str], config: Option<&std::path::Path>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    if let Some(path) = config {
        cmd.arg("-c").arg(path);
    }
    let out = cmd
        .args(args)
        .env_remove("TANDEM_DESKTOP_URL")
        .env_remove("TANDEM_CLOUD_URL")
        .stdin(Stdio::null())
        .output()
        .expect("running the tandem binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The sample config, written to a file, pointing at this test's databases.
fn config_file(db: &TestDb) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", db.name));
    let text = tandem::sample::CONFIG
        .replace("${DESKTOP_URL}", &db.desktop_url)
        .replace("${CLOUD_URL}", &db.cloud_url)
        .replace("slot = \"tandem\"", &format!("slot = \"{}\"", db.name));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn commands_not_built_yet_say_so() {
    for command in ["run", "reconcile", "status", "dead-letters"] {
        let (code, text) = tandem(&[command], None);
        assert_eq!(code, 2, "{command}: {text}");
        assert!(text.contains("is not built yet"), "{command}: {text}");
    }
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
    assert!(text.contains("init: 96 change(s) made"), "{text}");
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
