//! One forward applier at a time (`tandem::db::FORWARD_LOCK`): a `run --once` that finds the lock
//! taken waits for its holder, and applies by itself once the holder is gone.

use std::time::Duration;

use tandem::db::{FORWARD_LOCK, LOCK_CLASS};
use tandem::pipeline::{self, RunOptions};
use tokio_util::sync::CancellationToken;

use crate::any_schema::{OWNERSHIP, installed_with, run_once};
use crate::support::count;

/// The holder can be a session that is only ending: a closed connection's backend lets its locks go
/// a moment later, so a `run --once` right after an initial sync could find the sync's lock still
/// taken. It once waited for the holder to apply the outbox, forever (CI's hang of 2026-12-01).
#[tokio::test]
async fn run_once_applies_by_itself_when_the_applier_it_waits_for_ends() {
    let (db, config) = installed_with(
        "CREATE TABLE item (id int PRIMARY KEY, name text);",
        &format!("CREATE TABLE item (id int PRIMARY KEY, name text, {OWNERSHIP});"),
        "[[tables]]\ndesktop = \"item\"\nkey = [\"id\"]\n",
    )
    .await;
    run_once(&config).await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let holder = db.desktop().await;
    let holder_pid: i32 = holder
        .query_one(
            "SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock($1, $2)) AS locked",
            &[&LOCK_CLASS, &FORWARD_LOCK],
        )
        .await
        .unwrap()
        .get(0);
    desktop
        .batch_execute("INSERT INTO item VALUES (1, 'made while the lock was held')")
        .await
        .unwrap();
    let once = tokio::spawn({
        let config = config.clone();
        async move { pipeline::run(&config, RunOptions { once: true }, CancellationToken::new()).await }
    });
    // The run's forward worker found the lock taken and waits for its holder: its session's last
    // statement asks for the lock again or whether the outbox rows are applied yet.
    let asked = tandem::cluster::wait_until(Duration::from_secs(60), || async {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                AND pid NOT IN ({holder_pid}, pg_backend_pid())
                AND (query LIKE '%pg_try_advisory_lock%' OR query LIKE '%pg_visible_in_snapshot%')"
        );
        count(&desktop, &sql).await > 0
    })
    .await;
    assert!(asked, "run --once never asked for the forward applier lock");
    assert_eq!(count(&cloud, "SELECT count(*) FROM item").await, 0);
    drop(holder);
    let report = tokio::time::timeout(Duration::from_secs(60), once)
        .await
        .expect("run --once returns once the lock's holder is gone")
        .unwrap()
        .unwrap_or_else(|e| panic!("run --once: {e}"));
    assert_eq!(report.forward.outcome.written, 1, "{report:?}");
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM item WHERE id = 1").await,
        1
    );
}
