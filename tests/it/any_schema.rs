//! Schemas that differ from the sample in ordinary ways: each failure tandem once had on them is a test
//! named after it (issue 10). Both directions run, on both table kinds.

use tandem::config::Config;
use tandem::pipeline::{self, RunOptions, RunStats};
use tandem::setup;
use tokio_util::sync::CancellationToken;

use crate::support::{TestDb, count, rows};

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

/// `tandem run --once`: both directions apply what was committed before the call.
pub async fn run_once(config: &Config) -> (RunStats, RunStats) {
    let report = pipeline::run(config, RunOptions { once: true }, CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("run --once: {e}"));
    assert!(report.parked.is_empty(), "parked: {:?}", report.parked);
    (report.forward, report.reverse)
}

fn no_trouble((forward, reverse): &(RunStats, RunStats)) {
    for (direction, stats) in [("forward", forward), ("reverse", reverse)] {
        assert_eq!(stats.outcome.conflicts, 0, "{direction}: {stats:?}");
        assert_eq!(stats.outcome.dead_letters, 0, "{direction}: {stats:?}");
    }
}

async fn nothing_logged(db: &TestDb) {
    for client in [db.desktop().await, db.cloud().await] {
        assert_eq!(
            count(&client, "SELECT count(*) FROM tandem.conflicts").await,
            0,
            "{:?}",
            rows(
                &client,
                "tandem.conflicts",
                "reason, incoming, current",
                "true"
            )
            .await
        );
        assert_eq!(
            count(&client, "SELECT count(*) FROM tandem.dead_letters").await,
            0,
            "{:?}",
            rows(&client, "tandem.dead_letters", "message", "true").await
        );
    }
}

#[tokio::test]
async fn failure_1_char_n_and_bit_n_columns_travel_both_ways() {
    let (db, config) = installed_with(
        "CREATE TABLE client (pan char(10) PRIMARY KEY, name text, flags bit(4), tags char(3)[]);
         CREATE TABLE visit (pan char(10), note varchar(20), mask bit(3));
         CREATE INDEX ON visit (pan);",
        &format!(
            "CREATE TABLE client (pan char(10) PRIMARY KEY, name text, flags bit(4), tags char(3)[], {OWNERSHIP});
             CREATE TABLE visit (visit_id bigserial PRIMARY KEY, pan char(10), note varchar(20), mask bit(3), {OWNERSHIP});
             CREATE INDEX ON visit (pan);"
        ),
        "[[tables]]\ndesktop = \"client\"\nkey = [\"pan\"]\n\
         [[tables]]\ndesktop = \"visit\"\ncloud_key = \"visit_id\"\nscope = [\"pan\"]\n",
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    desktop
        .batch_execute(
            "INSERT INTO client VALUES ('ABCPE1234F', 'Asha', B'1010', '{abc,de}');
             INSERT INTO visit VALUES ('ABCPE1234F', 'first', B'011');",
        )
        .await
        .unwrap();
    cloud
        .batch_execute(
            "INSERT INTO client (pan, name, flags, tags) VALUES ('XYZPQ9876K', 'Bala', B'0001', '{xyz}');
             INSERT INTO visit (pan, note, mask) VALUES ('XYZPQ9876K', 'phone', B'110');",
        )
        .await
        .unwrap();
    no_trouble(&run_once(&config).await);
    let both = "pan, name, flags, tags";
    assert_eq!(
        rows(&cloud, "client", both, "true").await,
        rows(&desktop, "client", both, "true").await
    );
    assert_eq!(rows(&desktop, "client", both, "true").await.len(), 2);
    assert_eq!(
        rows(&cloud, "visit", "pan, note, mask", "true").await,
        rows(&desktop, "visit", "pan, note, mask", "true").await
    );
    assert_eq!(rows(&desktop, "visit", "pan", "true").await.len(), 2);
    nothing_logged(&db).await;
}

/// Names tandem's statements once used as aliases or internal columns, and names PostgreSQL reserves.
const HOSTILE: [&str; 12] = [
    "c", "n", "d", "s", "k", "o", "p", "_n", "_seq", "_op", "ck", "order",
];

#[tokio::test]
async fn failure_2_columns_named_like_tandems_aliases_travel_both_ways() {
    let cols: Vec<String> = HOSTILE.iter().map(|n| format!("\"{n}\" text")).collect();
    let cols = cols.join(", ");
    let (db, config) = installed_with(
        &format!(
            "CREATE TABLE \"x\" (\"x\" int PRIMARY KEY, {cols});
             CREATE TABLE \"y\" (\"h\" int, {cols});
             CREATE INDEX ON \"y\" (\"h\");"
        ),
        &format!(
            "CREATE TABLE \"x\" (\"x\" int PRIMARY KEY, {cols}, {OWNERSHIP});
             CREATE TABLE \"y\" (\"tid\" bigserial PRIMARY KEY, \"h\" int, {cols}, {OWNERSHIP});
             CREATE INDEX ON \"y\" (\"h\");"
        ),
        "[[tables]]\ndesktop = \"x\"\nkey = [\"x\"]\n\
         [[tables]]\ndesktop = \"y\"\ncloud_key = \"tid\"\nscope = [\"h\"]\n",
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let names: Vec<String> = HOSTILE.iter().map(|n| format!("\"{n}\"")).collect();
    let names = names.join(", ");
    let values: Vec<String> = HOSTILE.iter().map(|n| format!("'{n} value'")).collect();
    let values = values.join(", ");
    desktop
        .batch_execute(&format!(
            "INSERT INTO \"x\" (\"x\", {names}) VALUES (1, {values});
             INSERT INTO \"y\" (\"h\", {names}) VALUES (1, {values});"
        ))
        .await
        .unwrap();
    cloud
        .batch_execute(&format!(
            "INSERT INTO \"x\" (\"x\", {names}) VALUES (2, {values});
             INSERT INTO \"y\" (\"h\", {names}) VALUES (2, {values});"
        ))
        .await
        .unwrap();
    no_trouble(&run_once(&config).await);
    // Both sides change what they have, so conflicts, updates and deletes are planned too.
    desktop
        .batch_execute("UPDATE \"x\" SET \"c\" = 'changed' WHERE \"x\" = 1; DELETE FROM \"y\" WHERE \"h\" = 1;")
        .await
        .unwrap();
    cloud
        .batch_execute("UPDATE \"x\" SET \"n\" = 'changed' WHERE \"x\" = 2; UPDATE \"y\" SET \"d\" = 'changed' WHERE \"h\" = 2;")
        .await
        .unwrap();
    no_trouble(&run_once(&config).await);
    let x = format!("\"x\", {names}");
    assert_eq!(
        rows(&cloud, "\"x\"", &x, "true").await,
        rows(&desktop, "\"x\"", &x, "true").await
    );
    let y = format!("\"h\", {names}");
    assert_eq!(
        rows(&cloud, "\"y\"", &y, "true").await,
        rows(&desktop, "\"y\"", &y, "true").await
    );
    assert_eq!(rows(&desktop, "\"y\"", "\"h\"", "true").await, vec!["(2)"]);
    nothing_logged(&db).await;
}

#[tokio::test]
async fn failure_3_json_xml_and_point_columns_travel_both_ways() {
    let cols = "doc json, page xml, spot point";
    let (db, config) = installed_with(
        &format!(
            "CREATE TABLE note (id int PRIMARY KEY, {cols});
             CREATE TABLE entry (grp int, {cols});
             CREATE INDEX ON entry (grp);"
        ),
        &format!(
            "CREATE TABLE note (id int PRIMARY KEY, {cols}, {OWNERSHIP});
             CREATE TABLE entry (entry_id bigserial PRIMARY KEY, grp int, {cols}, {OWNERSHIP});
             CREATE INDEX ON entry (grp);"
        ),
        "[[tables]]\ndesktop = \"note\"\nkey = [\"id\"]\n\
         [[tables]]\ndesktop = \"entry\"\ncloud_key = \"entry_id\"\nscope = [\"grp\"]\n",
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    // json keeps its text as written: spaces and a duplicate key.
    let values = r#"'{"a" :  1, "a": 2}', '<p>one</p>', '(1.5,-2)'"#;
    desktop
        .batch_execute(&format!(
            "INSERT INTO note VALUES (1, {values}); INSERT INTO entry VALUES (1, {values});"
        ))
        .await
        .unwrap();
    cloud
        .batch_execute(&format!(
            "INSERT INTO note (id, doc, page, spot) VALUES (2, {values});
             INSERT INTO entry (grp, doc, page, spot) VALUES (2, {values});"
        ))
        .await
        .unwrap();
    no_trouble(&run_once(&config).await);
    desktop
        .batch_execute(r#"UPDATE note SET doc = '{"a": 2}' WHERE id = 1; UPDATE entry SET spot = '(0,0)' WHERE grp = 1;"#)
        .await
        .unwrap();
    cloud
        .batch_execute(r#"UPDATE note SET page = '<p>two</p>' WHERE id = 2; UPDATE entry SET doc = '[]' WHERE grp = 2;"#)
        .await
        .unwrap();
    no_trouble(&run_once(&config).await);
    let all = "id, doc::text, page::text, spot::text";
    assert_eq!(
        rows(&cloud, "note", all, "true").await,
        rows(&desktop, "note", all, "true").await
    );
    let all = "grp, doc::text, page::text, spot::text";
    assert_eq!(
        rows(&cloud, "entry", all, "true").await,
        rows(&desktop, "entry", all, "true").await
    );
    assert_eq!(
        rows(&desktop, "note", "doc::text", "id = 2").await,
        vec![r#"("{""a"" :  1, ""a"": 2}")"#]
    );
    nothing_logged(&db).await;
}

#[tokio::test]
async fn failure_4_a_phone_edit_and_delete_of_a_row_holding_jsonb_or_a_box_apply() {
    let cols = "meta jsonb, area box";
    let (db, config) = installed_with(
        &format!(
            "CREATE TABLE job (id int PRIMARY KEY, {cols});
             CREATE TABLE diary (staff int, {cols});
             CREATE INDEX ON diary (staff);"
        ),
        &format!(
            "CREATE TABLE job (id int PRIMARY KEY, {cols}, {OWNERSHIP});
             CREATE TABLE diary (wd_id bigserial PRIMARY KEY, staff int, {cols}, {OWNERSHIP});
             CREATE INDEX ON diary (staff);"
        ),
        "[[tables]]\ndesktop = \"job\"\nkey = [\"id\"]\n\
         [[tables]]\ndesktop = \"diary\"\ncloud_key = \"wd_id\"\nscope = [\"staff\"]\n",
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let values = r#"'{"status": "open", "n": [1, 2]}', '((2,1),(0,0))'"#;
    cloud
        .batch_execute(&format!(
            "INSERT INTO job (id, meta, area) VALUES (1, {values}), (2, {values});
             INSERT INTO diary (staff, meta, area) VALUES (1, {values}), (2, {values});"
        ))
        .await
        .unwrap();
    no_trouble(&run_once(&config).await);
    // The phone edits: the new box has the same area as the old one (box `=` compares areas).
    cloud
        .batch_execute(
            r#"UPDATE job SET meta = '{"status": "done", "n": [1, 2]}' WHERE id = 1;
               UPDATE job SET area = '((1,2),(0,0))' WHERE id = 2;
               UPDATE diary SET meta = '{"status": "done"}' WHERE staff = 1;
               UPDATE diary SET area = '((1,2),(0,0))' WHERE staff = 2;"#,
        )
        .await
        .unwrap();
    no_trouble(&run_once(&config).await);
    let all = "meta::text, area::text";
    for table in ["job", "diary"] {
        assert_eq!(
            rows(&desktop, table, all, "true").await,
            rows(&cloud, table, all, "true").await,
            "{table}"
        );
    }
    assert_eq!(
        rows(&desktop, "job", "area::text", "id = 2").await,
        vec!["(\"(1,2),(0,0)\")"]
    );
    // Then deletes them: the desktop copies go too.
    cloud
        .batch_execute("DELETE FROM job; DELETE FROM diary;")
        .await
        .unwrap();
    no_trouble(&run_once(&config).await);
    assert_eq!(count(&desktop, "SELECT count(*) FROM job").await, 0);
    assert_eq!(count(&desktop, "SELECT count(*) FROM diary").await, 0);
    nothing_logged(&db).await;
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

/// Found by the generated-schema test (500 cases): a phone's edit of a row, then an edit of another of
/// its columns, in one group: the second change carries the first one's big (TOASTed) value as
/// "unchanged", and the desktop must get that value, not keep its own older one.
#[tokio::test]
async fn a_big_value_a_phone_wrote_survives_its_next_edit_of_another_column_in_the_same_group() {
    let (db, config) = installed_with(
        "CREATE TABLE doc (id int PRIMARY KEY, body text, n int);
         CREATE TABLE page (grp int, body text, n int); CREATE INDEX ON page (grp);",
        &format!(
            "CREATE TABLE doc (id int PRIMARY KEY, body text, n int, {OWNERSHIP});
             CREATE TABLE page (page_id bigserial PRIMARY KEY, grp int, body text, n int, {OWNERSHIP});
             CREATE INDEX ON page (grp);"
        ),
        "[[tables]]\ndesktop = \"doc\"\nkey = [\"id\"]\n\
         [[tables]]\ndesktop = \"page\"\ncloud_key = \"page_id\"\nscope = [\"grp\"]\n",
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    desktop
        .batch_execute(
            "INSERT INTO doc VALUES (1, repeat('ü', 100000), 0);
             INSERT INTO page VALUES (1, repeat('ü', 100000), 0);",
        )
        .await
        .unwrap();
    no_trouble(&run_once(&config).await);
    let big = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 3000) i)";
    for table in ["doc", "page"] {
        cloud
            .batch_execute(&format!(
                "UPDATE {table} SET body = {big}; UPDATE {table} SET n = 1;"
            ))
            .await
            .unwrap();
    }
    no_trouble(&run_once(&config).await);
    for table in ["doc", "page"] {
        let all = "md5(body), n";
        assert_eq!(
            rows(&desktop, table, all, "true").await,
            rows(&cloud, table, all, "true").await,
            "{table}"
        );
        assert_eq!(rows(&desktop, table, "n", "true").await, vec!["(1)"]);
    }
    nothing_logged(&db).await;
}
