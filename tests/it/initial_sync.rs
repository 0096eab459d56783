//! Initial sync: the first `run` after `init` brings a desktop full of data across, and a second
//! reconcile right after writes nothing.

use tandem::ops::reconcile::{self, Direction, Request};
use tandem::pipeline::sync::Quiet;
use tandem::sample;
use tandem::setup;

use crate::any_schema::run_once;
use crate::support::{TestDb, count};

fn whole(dry_run: bool) -> Request {
    Request {
        tables: Vec::new(),
        direction: Direction::Both,
        dry_run,
        trigger: "command",
    }
}

#[tokio::test]
async fn a_seeded_desktop_comes_across_on_the_first_run_and_a_second_reconcile_writes_nothing() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    let mut desktop = db.desktop().await;
    sample::seed(&mut desktop, &config, 0.05).await.unwrap();
    setup::init(&config, false).await.unwrap();
    run_once(&config).await;
    let cloud = db.cloud().await;
    for (d, c) in [
        ("jobshead", "jobshead"),
        ("jobtasks", "jobtasks"),
        ("mbreminder", "reminder"),
    ] {
        let nd = count(&desktop, &format!("SELECT count(*) FROM {d}")).await;
        let nc = count(&cloud, &format!("SELECT count(*) FROM {c}")).await;
        assert!(nd > 0);
        assert_eq!(nd, nc, "{d}");
    }
    let states = count(
        &desktop,
        "SELECT count(*) FROM tandem.table_state WHERE state <> 'streaming' OR synced_at IS NULL",
    )
    .await;
    assert_eq!(states, 0);
    let again = reconcile::reconcile(&config, &whole(false), &Quiet)
        .await
        .unwrap();
    assert_eq!(again.written(), 0, "{:#?}", again.rows);
    assert!(again.complete(), "{:?}", again.skipped);
}
