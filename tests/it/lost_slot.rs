//! After a lost slot (the cloud removed WAL the slot still needed): `run` says how to recover, and
//! drop slot + `init` + `reconcile` brings both sides together without resurrecting a row a phone
//! deleted, without deleting a desktop row the cloud never saw, and without silently overwriting a row
//! both sides changed. The slot is really lost: the cloud is a cluster of its own that keeps at most
//! 1 MB of WAL for a slot, and the tests generate WAL and checkpoint until `wal_status` says `lost`.

use std::time::Duration;

use tandem::config::Config;
use tandem::ops::reconcile::{self, Direction, Report, Request};
use tandem::pipeline::sync::{Counts, Quiet};
use tandem::pipeline::{self, RunOptions};
use tandem::setup;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::any_schema::{OWNERSHIP, run_once};
use crate::support::{TestDb, count, rows};

/// Slots of the small-slot cluster share its WAL: one test's junk WAL would lose another's slot.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const TABLES: &str = "[[tables]]\ndesktop = \"item\"\nkey = [\"id\"]\n\
                      [[tables]]\ndesktop = \"diary\"\ncloud_key = \"diary_id\"\nscope = [\"grp\"]\n";
const ITEM: &str = "id, name, n";
const DIARY: &str = "grp, note, hours";

/// Databases on the small-slot cloud with a desktop-key table (`item`) and a cloud-key one (`diary`),
/// the desktop holding `seed`, tandem installed.
async fn installed(seed: &str) -> (TestDb, Config) {
    let db = TestDb::with_small_slot_cloud().await;
    db.desktop()
        .await
        .batch_execute(&format!(
            "CREATE TABLE item (id int PRIMARY KEY, name text, n int);
             CREATE TABLE diary (grp int, note text, hours numeric(4,1)); CREATE INDEX ON diary (grp);
             {seed}"
        ))
        .await
        .unwrap_or_else(|e| panic!("desktop schema: {e}"));
    let cloud = db.cloud().await;
    cloud
        .batch_execute(&format!(
            "CREATE TABLE item (id int PRIMARY KEY, name text, n int, {OWNERSHIP});
             CREATE TABLE diary (diary_id bigserial PRIMARY KEY, grp int, note text, hours numeric(4,1), {OWNERSHIP});
             CREATE INDEX ON diary (grp);"
        ))
        .await
        .unwrap_or_else(|e| panic!("cloud schema: {e}"));
    let config = db.config(TABLES).unwrap();
    setup::init(&config, false)
        .await
        .unwrap_or_else(|e| panic!("init: {e}"));
    (db, config)
}

async fn wal_status(cloud: &Client, slot: &str) -> Option<String> {
    cloud
        .query_opt(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

/// Generates WAL and checkpoints until the cloud has invalidated this test's slot.
async fn lose_slot(db: &TestDb) {
    let cloud = db.cloud().await;
    assert_ne!(wal_status(&cloud, &db.name).await.as_deref(), Some("lost"));
    let lost = tandem::cluster::wait_until(Duration::from_secs(180), || async {
        cloud
            .batch_execute(
                "CREATE TABLE lost_slot_junk AS
                   SELECT g, repeat('x', 200) AS filler FROM generate_series(1, 160000) g;
                 DROP TABLE lost_slot_junk;
                 SELECT pg_switch_wal(); CHECKPOINT; SELECT pg_switch_wal(); CHECKPOINT;",
            )
            .await
            .unwrap();
        wal_status(&cloud, &db.name).await.as_deref() == Some("lost")
    })
    .await;
    assert!(
        lost,
        "slot {} never became lost: wal_status {:?}",
        db.name,
        wal_status(&cloud, &db.name).await
    );
}

/// `run --once` on the lost slot: fails, naming the recovery.
async fn run_fails_naming_the_recovery(config: &Config) {
    let result = pipeline::run(config, RunOptions { once: true }, CancellationToken::new()).await;
    let text = match result {
        Ok(report) => panic!("run --once on a lost slot succeeded: {report:?}"),
        Err(e) => e.to_string(),
    };
    println!("run --once on the lost slot: {text}");
    assert!(text.contains("lost"), "{text}");
    assert!(
        text.contains("init") && text.contains("reconcile"),
        "the error does not name the recovery (init, reconcile): {text}"
    );
    // `tandem status` reads it as broken, naming the same recovery.
    let status = tandem::ops::status::collect(config).await;
    assert_eq!(
        status.health,
        tandem::ops::status::Health::Broken,
        "{status:?}"
    );
    assert_eq!(status.reverse.wal_status, "lost", "{status:?}");
    assert!(
        status
            .problems
            .iter()
            .any(|p| p.fix.contains("init") && p.fix.contains("reconcile")),
        "{:?}",
        status.problems
    );
}

/// Drops the lost slot and runs `init`: the slot is new and every table is due to sync again.
async fn recreate_slot(db: &TestDb, config: &Config) {
    let cloud = db.cloud().await;
    cloud
        .execute("SELECT pg_drop_replication_slot($1)", &[&db.name])
        .await
        .unwrap();
    setup::init(config, false)
        .await
        .unwrap_or_else(|e| panic!("init after the lost slot: {e}"));
    assert_eq!(
        wal_status(&cloud, &db.name).await.as_deref(),
        Some("reserved")
    );
    let due = count(
        &db.desktop().await,
        "SELECT count(*) FROM tandem.table_state WHERE state = 'new' AND synced_at IS NULL",
    )
    .await;
    assert_eq!(due, 2, "init with a new slot marks every table due");
}

/// `tandem reconcile` (both directions, every table); checks the journal was pruned by it.
async fn reconcile_all(db: &TestDb, config: &Config) -> Report {
    let cloud = db.cloud().await;
    let since: String = cloud
        .query_one("SELECT now()::text", &[])
        .await
        .unwrap()
        .get(0);
    let request = Request {
        tables: Vec::new(),
        direction: Direction::Both,
        dry_run: false,
        trigger: "command",
    };
    let report = reconcile::reconcile(config, &request, &Quiet)
        .await
        .unwrap_or_else(|e| panic!("reconcile: {e}"));
    assert!(report.complete(), "{:?}", report.skipped);
    let old = count(
        &cloud,
        &format!(
            "SELECT count(*) FROM tandem.journal
              WHERE table_name IN ('item', 'diary') AND at < '{since}'::timestamptz"
        ),
    )
    .await;
    assert_eq!(
        old,
        0,
        "the reconcile left journal entries older than itself: {:?}",
        rows(&cloud, "tandem.journal", "table_name, op, old", "true").await
    );
    report
}

fn counts(report: &Report, table: &str, direction: &str) -> Counts {
    report
        .rows
        .iter()
        .find(|r| r.table == table && r.direction == direction)
        .unwrap_or_else(|| panic!("no {direction} row for {table}: {:#?}", report.rows))
        .counts
}

/// Inserted, updated, deleted and conflicts of a table in one direction.
fn tally(report: &Report, table: &str, direction: &str) -> [u64; 4] {
    let c = counts(report, table, direction);
    [c.inserted, c.updated, c.deleted, c.conflicts]
}

/// `columns` of `table` on `client`, as sorted texts.
async fn texts(client: &Client, table: &str, columns: &str, filter: &str) -> Vec<String> {
    let mut v = rows(client, table, columns, filter).await;
    v.sort();
    v
}

/// A VALUES list as the same texts (typed like the tables' columns).
async fn expected(client: &Client, values: &str, columns: &str) -> Vec<String> {
    texts(
        client,
        &format!("(VALUES {values}) AS v({columns})"),
        columns,
        "true",
    )
    .await
}

/// Both tables hold the same rows on both sides; returns them (desktop's).
async fn same_on_both_sides(desktop: &Client, cloud: &Client) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    for (table, columns) in [("item", ITEM), ("diary", DIARY)] {
        let d = texts(desktop, table, columns, "true").await;
        assert_eq!(
            texts(cloud, table, columns, "true").await,
            d,
            "{table} differs (cloud left, desktop right)"
        );
        out.push(d);
    }
    let diary = out.pop().unwrap();
    (out.pop().unwrap(), diary)
}

async fn no_conflicts_or_dead_letters(desktop: &Client, cloud: &Client) {
    for (side, client) in [("desktop", desktop), ("cloud", cloud)] {
        for (table, columns) in [
            ("tandem.conflicts", "direction, table_name, row_key, reason"),
            (
                "tandem.dead_letters",
                "direction, table_name, row_key, message",
            ),
        ] {
            let all = rows(client, table, columns, "true").await;
            assert!(all.is_empty(), "{side} {table}: {all:?}");
        }
    }
}

#[tokio::test]
async fn a_lost_slot_is_repaired_by_init_and_reconcile_without_resurrecting_or_losing_rows() {
    let _serial = SERIAL.lock().await;
    let (db, config) = installed(
        "INSERT INTO item SELECT i, 'd' || i, i FROM generate_series(1, 10) i;
         INSERT INTO diary VALUES (1, 'd-a', 1), (1, 'd-b', 2), (1, 'd-c', 3), (2, 'd-e', 1), (2, 'd-f', 2);",
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    // Initial sync, then streaming both ways.
    run_once(&config).await;
    same_on_both_sides(&desktop, &cloud).await;
    assert_eq!(count(&cloud, "SELECT count(*) FROM item").await, 10);
    cloud
        .batch_execute(
            "INSERT INTO item (id, name, n) SELECT i, 'm' || i, i FROM generate_series(101, 104) i;
             INSERT INTO diary (grp, note, hours) VALUES (1, 'm-a', 8), (3, 'm-x', 9), (3, 'm-y', 10);",
        )
        .await
        .unwrap();
    desktop
        .batch_execute("INSERT INTO item VALUES (12, 'd12', 12)")
        .await
        .unwrap();
    run_once(&config).await;
    same_on_both_sides(&desktop, &cloud).await;
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM item WHERE id > 100").await,
        4
    );
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM item WHERE id = 12").await,
        1
    );
    no_conflicts_or_dead_letters(&desktop, &cloud).await;

    // No run streams. Phones insert, edit desktop-made and mobile rows, delete both kinds.
    cloud
        .batch_execute(
            "INSERT INTO item (id, name, n) VALUES (105, 'm105', 105), (106, 'm106', 106);
             UPDATE item SET name = 'phone edit of 1' WHERE id = 1;
             UPDATE item SET name = 'phone edit of 101', n = 1010 WHERE id = 101;
             DELETE FROM item WHERE id IN (2, 102);
             INSERT INTO diary (grp, note, hours) VALUES (1, 'm-new', 4), (4, 'm-z', 5);
             UPDATE diary SET note = 'd-e phone' WHERE grp = 2 AND note = 'd-e';
             UPDATE diary SET note = 'm-x phone' WHERE grp = 3 AND note = 'm-x';
             DELETE FROM diary WHERE note IN ('m-y', 'd-f');",
        )
        .await
        .unwrap();
    // The desktop edits, inserts and deletes; capture is on, so they wait in the outbox.
    desktop
        .batch_execute(
            "UPDATE item SET name = 'desk edit of 3' WHERE id = 3;
             INSERT INTO item VALUES (11, 'd11', 11);
             DELETE FROM item WHERE id = 4;
             UPDATE diary SET note = 'd-b desk' WHERE grp = 1 AND note = 'd-b';
             INSERT INTO diary VALUES (1, 'd-new', 6), (5, 'd-g', 7);
             DELETE FROM diary WHERE grp = 1 AND note = 'd-c';",
        )
        .await
        .unwrap();
    assert!(count(&desktop, "SELECT count(*) FROM tandem.outbox").await > 0);

    lose_slot(&db).await;
    run_fails_naming_the_recovery(&config).await;
    assert!(
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await > 0,
        "the failed run must not have consumed the outbox"
    );
    recreate_slot(&db, &config).await;
    let journaled = "SELECT count(*) FROM tandem.journal WHERE table_name IN ('item', 'diary')";
    assert!(
        count(&cloud, journaled).await >= 8,
        "the phones' edits and deletes are journaled"
    );
    let report = reconcile_all(&db, &config).await;
    println!("reconcile after the lost slot: {report:#?}");

    // Every phone insert and edit is on the desktop, every phone delete gone from both sides; every
    // desktop insert and edit is in the cloud, and no desktop-made row was deleted.
    let (items, diary) = same_on_both_sides(&desktop, &cloud).await;
    let want_items = expected(
        &desktop,
        "(1, 'phone edit of 1', 1), (3, 'desk edit of 3', 3), (5, 'd5', 5), (6, 'd6', 6), (7, 'd7', 7),
         (8, 'd8', 8), (9, 'd9', 9), (10, 'd10', 10), (11, 'd11', 11), (12, 'd12', 12),
         (101, 'phone edit of 101', 1010), (103, 'm103', 103), (104, 'm104', 104),
         (105, 'm105', 105), (106, 'm106', 106)",
        ITEM,
    )
    .await;
    assert_eq!(items, want_items, "item");
    let want_diary = expected(
        &desktop,
        "(1, 'd-a', 1.0), (1, 'd-b desk', 2.0), (1, 'm-a', 8.0), (1, 'm-new', 4.0), (1, 'd-new', 6.0),
         (2, 'd-e phone', 1.0), (3, 'm-x phone', 9.0), (4, 'm-z', 5.0), (5, 'd-g', 7.0)",
        DIARY,
    )
    .await;
    assert_eq!(diary, want_diary, "diary");
    // Mobile rows as the phone left them; the desktop's rows desktop-owned.
    assert_eq!(
        texts(&cloud, "item", "id, source", "source = 'M'").await,
        expected(
            &cloud,
            "(1, 'M'), (101, 'M'), (103, 'M'), (104, 'M'), (105, 'M'), (106, 'M')",
            "id, source"
        )
        .await
    );
    assert_eq!(
        texts(&cloud, "diary", DIARY, "source = 'M'").await,
        expected(
            &cloud,
            "(1, 'm-a', 8.0), (1, 'm-new', 4.0), (2, 'd-e phone', 1.0), (3, 'm-x phone', 9.0), (4, 'm-z', 5.0)",
            DIARY
        )
        .await
    );
    assert_eq!(
        count(
            &cloud,
            "SELECT count(*) FROM item WHERE source IS DISTINCT FROM 'M' AND id > 100"
        )
        .await,
        0
    );
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await,
        0
    );
    no_conflicts_or_dead_letters(&desktop, &cloud).await;
    // What the reconcile wrote, per table and direction: [inserted, updated, deleted, conflicts].
    let rows_of = format!("{:#?}", report.rows);
    // 105 and 106 brought, 1 and 101 edited, 2 and 102 removed.
    assert_eq!(tally(&report, "item", "reverse"), [2, 2, 2, 0], "{rows_of}");
    // 11 sent, 3 updated, 4 deleted.
    assert_eq!(tally(&report, "item", "forward"), [1, 1, 1, 0], "{rows_of}");
    // m-new and m-z brought, d-e and m-x edited, m-y and d-f removed.
    assert_eq!(
        tally(&report, "diary", "reverse"),
        [2, 2, 2, 0],
        "{rows_of}"
    );
    // d-b desk, d-new and d-g sent, d-b and d-c deleted (a scope's rows are matched as a multiset).
    assert_eq!(
        tally(&report, "diary", "forward"),
        [3, 0, 2, 0],
        "{rows_of}"
    );

    // Streaming again: a new phone insert and a new desktop insert arrive.
    cloud
        .batch_execute("INSERT INTO item (id, name, n) VALUES (107, 'm107', 107)")
        .await
        .unwrap();
    desktop
        .batch_execute("INSERT INTO item VALUES (13, 'd13', 13)")
        .await
        .unwrap();
    run_once(&config).await;
    assert_eq!(
        texts(&desktop, "item", ITEM, "id = 107").await,
        vec!["(107,m107,107)"]
    );
    assert_eq!(
        texts(&cloud, "item", "id, source", "id = 13").await,
        vec!["(13,D)"]
    );
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM item WHERE id IN (2, 4, 102)").await,
        0,
        "a deleted row came back"
    );
    assert_eq!(
        count(
            &desktop,
            "SELECT count(*) FROM tandem.table_state WHERE state <> 'streaming' OR synced_at IS NULL"
        )
        .await,
        0
    );
    same_on_both_sides(&desktop, &cloud).await;
    let again = reconcile_all(&db, &config).await;
    assert_eq!(again.written(), 0, "{:#?}", again.rows);
    no_conflicts_or_dead_letters(&desktop, &cloud).await;
}

#[tokio::test]
async fn a_desktop_row_the_cloud_never_saw_is_sent_not_deleted() {
    let _serial = SERIAL.lock().await;
    let (db, config) = installed(
        "INSERT INTO item VALUES (1, 'd1', 1), (2, 'd2', 2), (3, 'd3', 3);
         INSERT INTO diary VALUES (1, 'd-a', 1), (1, 'd-b', 2);",
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    run_once(&config).await;
    same_on_both_sides(&desktop, &cloud).await;

    lose_slot(&db).await;
    // While no slot works, a phone deletes item 3; a bulk import on the desktop (capture off) loads
    // item 3 again with new content, item 20 and a diary row.
    cloud
        .batch_execute("DELETE FROM item WHERE id = 3")
        .await
        .unwrap();
    let import = |sql: &str| {
        format!(
            "ALTER TABLE item DISABLE TRIGGER USER; ALTER TABLE diary DISABLE TRIGGER USER;
             {sql}
             ALTER TABLE item ENABLE TRIGGER USER; ALTER TABLE diary ENABLE TRIGGER USER;"
        )
    };
    desktop
        .batch_execute(&import(
            "UPDATE item SET name = 'imported 3', n = 30 WHERE id = 3;
             INSERT INTO item VALUES (20, 'imported 20', 20);
             INSERT INTO diary VALUES (1, 'imported a', 5);",
        ))
        .await
        .unwrap();
    run_fails_naming_the_recovery(&config).await;
    // And after the slot is made again, before the reconcile: more of the import.
    recreate_slot(&db, &config).await;
    desktop
        .batch_execute(&import(
            "INSERT INTO item VALUES (21, 'imported 21', 21);
             INSERT INTO diary VALUES (9, 'imported b', 6);",
        ))
        .await
        .unwrap();
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await,
        0,
        "the import was captured: the test does not test what it means to"
    );
    let report = reconcile_all(&db, &config).await;
    println!("reconcile: {report:#?}");

    let (items, diary) = same_on_both_sides(&desktop, &cloud).await;
    assert_eq!(
        items,
        expected(
            &desktop,
            "(1, 'd1', 1), (2, 'd2', 2), (3, 'imported 3', 30), (20, 'imported 20', 20), (21, 'imported 21', 21)",
            ITEM
        )
        .await
    );
    assert_eq!(
        diary,
        expected(
            &desktop,
            "(1, 'd-a', 1.0), (1, 'd-b', 2.0), (1, 'imported a', 5.0), (9, 'imported b', 6.0)",
            DIARY
        )
        .await
    );
    assert_eq!(
        count(
            &cloud,
            "SELECT count(*) FROM item WHERE source IS NOT DISTINCT FROM 'M'"
        )
        .await
            + count(
                &cloud,
                "SELECT count(*) FROM diary WHERE source IS NOT DISTINCT FROM 'M'"
            )
            .await,
        0,
        "the desktop's rows are desktop-owned in the cloud"
    );
    // [inserted, updated, deleted, conflicts]: 20 and 21 sent; item 3, which a phone deleted while
    // the desktop changed it without seeing the delete, an update/delete conflict the default policy
    // settles by keeping the edit (sent as the conflict's result); the two diary rows sent; nothing
    // of the desktop's removed.
    let rows_of = format!("{:#?}", report.rows);
    assert_eq!(tally(&report, "item", "forward"), [2, 0, 0, 0], "{rows_of}");
    assert_eq!(tally(&report, "item", "reverse"), [0, 0, 0, 1], "{rows_of}");
    assert_eq!(
        tally(&report, "diary", "forward"),
        [2, 0, 0, 0],
        "{rows_of}"
    );
    assert_eq!(
        tally(&report, "diary", "reverse"),
        [0, 0, 0, 0],
        "{rows_of}"
    );
    let settled = rows(
        &desktop,
        "tandem.conflicts",
        "table_name, row_key, kind, policy, outcome, resolved_at IS NOT NULL",
        "true",
    )
    .await;
    assert_eq!(
        settled,
        vec![r#"(item,"{""id"": 3}",update/delete,latest,desktop,t)"#],
        "{:?}",
        conflicts(&desktop, &cloud).await
    );
    assert!(conflicts_of(&cloud).await.is_empty());
    let again = reconcile_all(&db, &config).await;
    assert_eq!(again.written(), 0, "{:#?}", again.rows);
}

/// The cloud's conflicts (none is ever recorded there for a table that syncs both ways).
async fn conflicts_of(cloud: &Client) -> Vec<String> {
    rows(cloud, "tandem.conflicts", "table_name, row_key", "true").await
}

/// The conflicts both sides logged, as text.
async fn conflicts(desktop: &Client, cloud: &Client) -> Vec<String> {
    let mut all = Vec::new();
    for (side, client) in [("desktop", desktop), ("cloud", cloud)] {
        for r in rows(
            client,
            "tandem.conflicts",
            "direction, table_name, row_key, incoming, current, reason, mobile_row, desktop_row",
            "true",
        )
        .await
        {
            all.push(format!("{side}: {r}"));
        }
    }
    all
}

#[tokio::test]
async fn a_row_both_sides_changed_while_the_slot_was_lost_is_a_conflict() {
    let _serial = SERIAL.lock().await;
    let (db, config) = installed(
        "INSERT INTO item VALUES (1, 'd1', 1), (2, 'd2', 2), (3, 'd3', 3);
         INSERT INTO diary VALUES (1, 'd-a', 1), (1, 'd-b', 2);",
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    run_once(&config).await;
    same_on_both_sides(&desktop, &cloud).await;

    // No run streams: a phone and the desktop edit the same rows (item 2; diary row d-a).
    cloud
        .batch_execute(
            "UPDATE item SET name = 'phone 2' WHERE id = 2;
             UPDATE diary SET note = 'phone a' WHERE note = 'd-a';",
        )
        .await
        .unwrap();
    desktop
        .batch_execute(
            "UPDATE item SET name = 'desk 2' WHERE id = 2;
             UPDATE diary SET note = 'desk a' WHERE note = 'd-a';",
        )
        .await
        .unwrap();
    lose_slot(&db).await;
    run_fails_naming_the_recovery(&config).await;
    recreate_slot(&db, &config).await;
    let report = reconcile_all(&db, &config).await;

    let logged = conflicts(&desktop, &cloud).await;
    let desktop_2 = texts(&desktop, "item", "name", "id = 2").await;
    let cloud_2 = texts(&cloud, "item", "name, source", "id = 2").await;
    let desktop_diary = texts(&desktop, "diary", "note", "grp = 1").await;
    let cloud_diary = texts(&cloud, "diary", "note, source", "grp = 1").await;
    println!(
        "item 2: desktop holds {desktop_2:?}, cloud holds {cloud_2:?}\n\
         diary grp 1: desktop holds {desktop_diary:?}, cloud holds {cloud_diary:?}\n\
         conflicts: {logged:#?}\nreconcile: {:#?}",
        report.rows
    );
    // Both sides changed item 2 without seeing each other: a conflict, settled by the default
    // policy (`latest`; the reconcile knows the desktop's change's time only: the desktop's wins),
    // recorded with the phone's version, and both sides end with the desktop's.
    assert_eq!(desktop_2, vec!["(\"desk 2\")"]);
    assert_eq!(cloud_2, vec!["(\"desk 2\",D)"]);
    let of_item: Vec<&String> = logged
        .iter()
        .filter(|c| c.contains("item") && c.contains("phone 2") && c.contains("desk 2"))
        .collect();
    assert_eq!(of_item.len(), 1, "{logged:#?}");
    assert!(
        counts(&report, "item", "reverse").conflicts >= 1,
        "the reconcile does not report the conflict: {:#?}",
        report.rows
    );
    // The cloud-key row the same way: the desktop's version replaces the phone's in place (the
    // desktop's copy of d-a, the only desktop row of the scope the cloud lacks, is its version), and
    // the phone's is in the record.
    assert!(
        logged
            .iter()
            .any(|c| c.contains("diary") && c.contains("phone a") && c.contains("desk a")),
        "no conflict recorded for diary's row edited on both sides: {logged:?}"
    );
    assert!(
        counts(&report, "diary", "reverse").conflicts >= 1,
        "{:#?}",
        report.rows
    );
    assert_eq!(desktop_diary, vec!["(\"desk a\")", "(d-b)"]);
    assert_eq!(cloud_diary, vec!["(\"desk a\",D)", "(d-b,D)"]);
    // The untouched rows agree.
    assert_eq!(
        texts(&desktop, "item", ITEM, "id <> 2").await,
        texts(&cloud, "item", ITEM, "id <> 2").await
    );
}
