//! Property: any sequence of desktop inserts, updates, key moves, deletes and truncates, over every kind
//! of table, applied in batches cut at random, converges to cloud = the desktop's rows (as desktop-owned
//! rows), while rows phones made, which the desktop (forward direction alone) never received, are never
//! touched: their keys, and the scopes holding them, wait in the outbox until it has.

use proptest::prelude::*;
use tandem::config::Config;
use tandem::pipeline::{self, RunOptions};
use tokio_util::sync::CancellationToken;

use crate::support::{TestDb, rows};

const DESKTOP: &str = "
    CREATE TABLE item (id int PRIMARY KEY, name text, qty int);
    CREATE TABLE pair (a int, b int, v text, PRIMARY KEY (a, b));
    CREATE TABLE line (grp int, label text, n int);
    CREATE INDEX ON line (grp);";
const CLOUD: &str = "
    CREATE TABLE item (id int PRIMARY KEY, name text, qty int, source char(1),
                       created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE pair (a int, b int, v text, source char(1), PRIMARY KEY (a, b));
    CREATE TABLE line (line_id bigserial PRIMARY KEY, grp int, label text, n int, source char(1),
                       created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
    CREATE INDEX ON line (grp);";
const TABLES: &str = "
    [[tables]]
    desktop = \"item\"
    key = [\"id\"]
    [[tables]]
    desktop = \"pair\"
    key = [\"a\", \"b\"]
    [[tables]]
    desktop = \"line\"
    cloud_key = \"line_id\"
    scope = [\"grp\"]";
/// Rows the phones made before the desktop started: one shares a key the desktop will use.
const MOBILE: &str = "
    INSERT INTO item (id, name, qty) VALUES (5, 'phone', 1), (100, 'phone only', 2);
    INSERT INTO pair (a, b, v) VALUES (1, 1, 'phone');
    INSERT INTO line (grp, label, n) VALUES (1, 'mobile', 0), (NULL, 'mobile', 0), (1, 'mobile', 0);";

#[derive(Debug, Clone)]
enum Op {
    InsertItem(i32, &'static str, i32),
    UpdateItem(i32, i32),
    MoveItem(i32, i32),
    DeleteItem(i32),
    UpsertPair(i32, i32, &'static str),
    DeletePair(i32, i32),
    InsertLine(Option<i32>, &'static str, i32),
    DeleteOneLine(Option<i32>, &'static str),
    UpdateLines(Option<i32>, i32),
    MoveLines(Option<i32>, Option<i32>),
    TruncateLines,
    /// Apply what is pending, in batches of at most this many outbox rows.
    Sync(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..8i32;
    let grp = proptest::option::weighted(0.85, 0..4i32);
    let word = prop::sample::select(vec!["a", "b", "c"]);
    prop_oneof![
        3 => (id.clone(), word.clone(), 0..3i32).prop_map(|(i, w, q)| Op::InsertItem(i, w, q)),
        2 => (id.clone(), 0..3i32).prop_map(|(i, q)| Op::UpdateItem(i, q)),
        1 => (id.clone(), id.clone()).prop_map(|(a, b)| Op::MoveItem(a, b)),
        1 => id.clone().prop_map(Op::DeleteItem),
        2 => (0..3i32, 0..3i32, word.clone()).prop_map(|(a, b, w)| Op::UpsertPair(a, b, w)),
        1 => (0..3i32, 0..3i32).prop_map(|(a, b)| Op::DeletePair(a, b)),
        4 => (grp.clone(), word.clone(), 0..2i32).prop_map(|(g, w, n)| Op::InsertLine(g, w, n)),
        2 => (grp.clone(), word).prop_map(|(g, w)| Op::DeleteOneLine(g, w)),
        1 => (grp.clone(), 0..2i32).prop_map(|(g, n)| Op::UpdateLines(g, n)),
        1 => (grp.clone(), grp).prop_map(|(a, b)| Op::MoveLines(a, b)),
        1 => Just(Op::TruncateLines),
        2 => (1..6usize).prop_map(Op::Sync),
    ]
}

async fn desktop_op(client: &tokio_postgres::Client, op: &Op) {
    let result = match op {
        Op::InsertItem(id, name, qty) => {
            client.execute("INSERT INTO item VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", &[id, name, qty]).await
        }
        Op::UpdateItem(id, qty) => client.execute("UPDATE item SET qty = $2 WHERE id = $1", &[id, qty]).await,
        Op::MoveItem(from, to) => {
            client
                .execute("UPDATE item SET id = $2 WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM item WHERE id = $2)", &[from, to])
                .await
        }
        Op::DeleteItem(id) => client.execute("DELETE FROM item WHERE id = $1", &[id]).await,
        Op::UpsertPair(a, b, v) => {
            client
                .execute("INSERT INTO pair VALUES ($1, $2, $3) ON CONFLICT (a, b) DO UPDATE SET v = EXCLUDED.v", &[a, b, v])
                .await
        }
        Op::DeletePair(a, b) => client.execute("DELETE FROM pair WHERE a = $1 AND b = $2", &[a, b]).await,
        Op::InsertLine(g, label, n) => client.execute("INSERT INTO line VALUES ($1, $2, $3)", &[g, label, n]).await,
        Op::DeleteOneLine(g, label) => {
            client
                .execute(
                    "DELETE FROM line WHERE ctid = (SELECT ctid FROM line WHERE grp IS NOT DISTINCT FROM $1 AND label = $2 LIMIT 1)",
                    &[g, label],
                )
                .await
        }
        Op::UpdateLines(g, n) => client.execute("UPDATE line SET n = $2 WHERE grp IS NOT DISTINCT FROM $1", &[g, n]).await,
        Op::MoveLines(from, to) => {
            client.execute("UPDATE line SET grp = $2 WHERE grp IS NOT DISTINCT FROM $1", &[from, to]).await
        }
        Op::TruncateLines => client.execute("TRUNCATE line", &[]).await,
        Op::Sync(_) => Ok(0),
    };
    result.unwrap_or_else(|e| panic!("{op:?}: {e}"));
}

async fn sync(db: &TestDb, batch_rows: usize) {
    let mut config: Config = db.config(TABLES).unwrap();
    config.sync.batch_max_rows = batch_rows;
    let stats = pipeline::run_forward(&config, RunOptions { once: true }, CancellationToken::new())
        .await
        .expect("forward run");
    assert_eq!(stats.outcome.dead_letters, 0, "{stats:?}");
}

async fn check_case(ops: Vec<Op>) {
    let db = TestDb::new().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    desktop.batch_execute(DESKTOP).await.unwrap();
    cloud.batch_execute(CLOUD).await.unwrap();
    tandem::setup::init(&db.config(TABLES).unwrap(), false)
        .await
        .unwrap();
    cloud.batch_execute(MOBILE).await.unwrap();
    let mobile_before = (
        rows(&cloud, "item", "item.*", "source = 'M'").await,
        rows(&cloud, "pair", "pair.*", "source = 'M'").await,
        rows(&cloud, "line", "line.*", "source = 'M'").await,
    );
    for op in &ops {
        match op {
            Op::Sync(n) => sync(&db, *n).await,
            other => desktop_op(&desktop, other).await,
        }
    }
    sync(&db, 10_000).await;

    let mobile_after = (
        rows(&cloud, "item", "item.*", "source = 'M'").await,
        rows(&cloud, "pair", "pair.*", "source = 'M'").await,
        rows(&cloud, "line", "line.*", "source = 'M'").await,
    );
    assert_eq!(mobile_after, mobile_before, "mobile-owned rows changed");
    // Keys a phone owns stay the phone's; every other desktop row is in the cloud, and nothing else.
    assert_eq!(
        rows(&cloud, "item", "id, name, qty", "source = 'D'").await,
        rows(&desktop, "item", "id, name, qty", "id NOT IN (5, 100)").await
    );
    assert_eq!(
        rows(&cloud, "pair", "a, b, v", "source = 'D'").await,
        rows(&desktop, "pair", "a, b, v", "(a, b) <> (1, 1)").await
    );
    let own_scopes = "grp IS NOT NULL AND grp <> 1";
    assert_eq!(
        rows(
            &cloud,
            "line",
            "grp, label, n",
            &format!("source = 'D' AND {own_scopes}")
        )
        .await,
        rows(&desktop, "line", "grp, label, n", own_scopes).await
    );
    // What waits is exactly what the phones' rows hold back: their keys and scopes, nothing else.
    let waiting = rows(&desktop, "tandem.outbox", "table_name, row_key", "true").await;
    for w in &waiting {
        assert!(
            [
                "(item,{5})",
                "(item,{100})",
                "(pair,\"{1,1}\")",
                "(line,{1})",
                "(line,{NULL})"
            ]
            .contains(&w.as_str()),
            "{waiting:?}"
        );
    }
    let mut distinct = waiting.clone();
    distinct.dedup();
    assert_eq!(distinct, waiting, "a key waits once");
    drop((desktop, cloud));
    db.remove().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_desktop_changes_in_random_batches_converge(ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(check_case(ops));
    }
}
