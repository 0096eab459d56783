//! Schemas that differ from the sample in ordinary ways: each failure tandem once had on them is a test
//! named after it (issue 10). Both directions run, on both table kinds.

use tandem::config::Config;
use tandem::pipeline::{self, RunOptions};
use tandem::setup;
use tokio_util::sync::CancellationToken;

use crate::support::{TestDb, count};

/// The cloud columns every synced table has besides the desktop's.
pub const OWNERSHIP: &str = "source char(1), created_at timestamptz NOT NULL DEFAULT now(), \
                             updated_at timestamptz NOT NULL DEFAULT now()";

/// Fresh databases holding `desktop` and `cloud`, tandem installed for `tables`.
pub async fn installed_with(desktop: &str, cloud: &str, tables: &str) -> (TestDb, Config) {
    let db = TestDb::new().await;
    db.desktop()
        .await
        .batch_execute(desktop)
        .await
        .unwrap_or_else(|e| panic!("desktop schema: {e}"));
    db.cloud()
        .await
        .batch_execute(cloud)
        .await
        .unwrap_or_else(|e| panic!("cloud schema: {e}"));
    let config = db.config(tables).unwrap();
    setup::init(&config, false)
        .await
        .unwrap_or_else(|e| panic!("init: {e}"));
    (db, config)
}

#[tokio::test]
async fn failure_5_a_lasting_cloud_outage_after_a_batch_is_retried_with_growing_delays() {
    let tables = "[[tables]]\ndesktop = \"item\"\nkey = [\"id\"]\n";
    let (db, _) = installed_with(
        "CREATE TABLE item (id int PRIMARY KEY, name text);",
        &format!("CREATE TABLE item (id int PRIMARY KEY, name text, {OWNERSHIP});"),
        tables,
    )
    .await;
    let proxy = crate::support::Proxy::start(db.cloud_port()).await;
    let config = db.config_at(tables, &db.cloud_url_at(proxy.port));
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    desktop
        .batch_execute("INSERT INTO item VALUES (1, 'before the outage')")
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let worker = {
        let (config, shutdown) = (config.clone(), shutdown.clone());
        tokio::spawn(async move {
            pipeline::run_forward(&config, RunOptions { once: false }, shutdown).await
        })
    };
    let arrived = tandem::cluster::wait_until(std::time::Duration::from_secs(30), || async {
        count(&cloud, "SELECT count(*) FROM item").await == 1
    })
    .await;
    assert!(arrived, "the first batch never arrived");
    // A lasting outage: the worker's connection is cut and every reconnection fails.
    proxy.go_down();
    desktop
        .batch_execute("INSERT INTO item VALUES (2, 'during the outage')")
        .await
        .unwrap();
    let enough = tandem::cluster::wait_until(std::time::Duration::from_secs(60), || async {
        proxy.attempts_while_down().len() >= 6
    })
    .await;
    shutdown.cancel();
    let attempts = proxy.attempts_while_down();
    assert!(enough, "the worker stopped reconnecting: {attempts:?}");
    // Backoff from 100 ms, doubling: the waits between reconnections 1..5 add up to at least
    // 200 + 400 + 800 + 1600 ms. Restarting the backoff at every failure keeps each under 200 ms.
    let waited = attempts[5].duration_since(attempts[1]);
    assert!(
        waited >= std::time::Duration::from_millis(2500),
        "reconnections 1 to 5 came {waited:?} apart: the backoff does not grow"
    );
    tokio::time::timeout(std::time::Duration::from_secs(30), worker)
        .await
        .expect("the worker stops on shutdown")
        .unwrap()
        .unwrap();
}
