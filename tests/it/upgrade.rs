//! An upgrade is the new binary's `tandem init` over an installation an earlier tandem made, with
//! changes waiting on both sides: desktop changes in the outbox, phone changes in the slot, dead
//! letters and open conflicts. Nothing of them is lost or applied twice.
//!
//! The earlier installation is made from its own install SQL and trigger definitions, kept as a
//! fixture (`tests/fixtures/install-2026-12-01/`: the install SQL of 2026-12-01 and the triggers its
//! `init` made on the sample schema), never from today's code.

use tandem::config::Config;
use tandem::pipeline::{self, RunOptions};
use tokio_util::sync::CancellationToken;

use crate::support::{TestDb, count, rows};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/install-2026-12-01"
);

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURE}/{name}")).unwrap()
}

/// What `tandem init` of 2026-12-01 left on the sample schema: its schema tandem, triggers, replica
/// identities, publication and slot, every table synced and streaming.
async fn old_installation(db: &TestDb, config: &Config) {
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    desktop
        .batch_execute(&(fixture("common.sql") + &fixture("desktop.sql")))
        .await
        .unwrap();
    desktop
        .batch_execute(&fixture("desktop-triggers.sql"))
        .await
        .unwrap();
    cloud
        .batch_execute(&(fixture("common.sql") + &fixture("cloud.sql")))
        .await
        .unwrap();
    cloud
        .batch_execute(&fixture("cloud-triggers.sql"))
        .await
        .unwrap();
    let tables: Vec<String> = config
        .tables
        .iter()
        .map(|t| t.table.desktop.to_string())
        .collect();
    let mut published = Vec::new();
    for t in config.reverse_tables() {
        let name = t.table.cloud.quoted();
        cloud
            .batch_execute(&format!(
                "INSERT INTO tandem.replica_identity_before VALUES ({}, {}, 'd', NULL);
                 ALTER TABLE {name} REPLICA IDENTITY FULL",
                tandem::change::quote_literal(&t.table.cloud.schema),
                tandem::change::quote_literal(&t.table.cloud.name),
            ))
            .await
            .unwrap();
        published.push(format!("{name} WHERE (source = 'M')"));
    }
    let slot = &config.cloud.slot;
    cloud
        .batch_execute(&format!(
            "CREATE PUBLICATION tandem FOR TABLE {} WITH (publish = 'insert, update, delete, truncate');
             INSERT INTO tandem.installation VALUES ('version', 'cbde9c62c87a613a'), ('publication', 'tandem'),
                    ('slot', '{slot}')",
            published.join(", ")
        ))
        .await
        .unwrap();
    cloud
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[slot],
        )
        .await
        .unwrap();
    desktop
        .execute(
            "INSERT INTO tandem.installation VALUES ('version', 'd1b853caa7234e98');
             ",
            &[],
        )
        .await
        .unwrap();
    desktop
        .execute(
            "INSERT INTO tandem.table_state (table_name, state, synced_at)
             SELECT unnest($1::text[]), 'streaming', now()",
            &[&tables],
        )
        .await
        .unwrap();
}

/// The same rows on both sides, as the earlier tandem left them (desktop-owned in the cloud).
async fn in_step(db: &TestDb) {
    let rows = "INSERT INTO orgmaster (org_id, org_name) VALUES (1, 'Org');
        INSERT INTO climaster (client_id, org_id, client_name) VALUES (1, 1, 'Asha Traders'), (2, 1, 'Bala & Co');
        INSERT INTO mbstaff (staff_id, org_id, staff_name) VALUES (1, 1, 'Ravi');
        INSERT INTO jobshead (job_id, client_id, job_name, job_status) VALUES (100, 1, 'Audit', 'Open'), (101, 2, 'GST', 'Open');";
    // tandem's own sessions, as the earlier version knew them: nothing captured, nothing marked.
    db.desktop()
        .await
        .batch_execute(&format!("SET tandem.applying = on; {rows}"))
        .await
        .unwrap();
    let cloud_rows = rows
        .replace(") VALUES", ", source) VALUES")
        .replace("'Org')", "'Org', 'D')")
        .replace("'Asha Traders')", "'Asha Traders', 'D')")
        .replace("'Bala & Co')", "'Bala & Co', 'D')")
        .replace("'Ravi')", "'Ravi', 'D')")
        .replace("'Open')", "'Open', 'D')");
    db.cloud()
        .await
        .batch_execute(&format!("SET tandem.applying = on; {cloud_rows}"))
        .await
        .unwrap();
}

async fn run_once(config: &Config) -> pipeline::RunReport {
    pipeline::run(config, RunOptions { once: true }, CancellationToken::new())
        .await
        .expect("run --once")
}

#[tokio::test]
async fn init_upgrades_an_installation_of_2026_12_01_with_changes_waiting_on_both_sides() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    old_installation(&db, &config).await;
    in_step(&db).await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);

    // Waiting on the desktop: two changes in the outbox, a dead letter and an open conflict.
    desktop
        .batch_execute(
            "UPDATE climaster SET client_name = 'Asha Traders Pvt' WHERE client_id = 1;
             INSERT INTO climaster (client_id, org_id, client_name) VALUES (3, 1, 'Chitra Stores');
             INSERT INTO tandem.dead_letters (direction, table_name, row_key, row_image, sqlstate, message, batch)
             VALUES ('reverse', 'mbreminder', '{\"rem_id\": 9}', '{\"rem_id\": \"9\"}', '23503', 'no such staff', 'reverse 0/1');
             INSERT INTO tandem.conflicts (direction, table_name, row_key, incoming, current, reason)
             VALUES ('reverse', 'jobshead', '{\"job_id\": 101}', '{\"job_id\": \"101\"}', '{\"job_id\": 101}', 'both changed it');",
        )
        .await
        .unwrap();
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await,
        2
    );
    // Waiting in the cloud: a phone's new row and a phone's edit of a desktop row in the slot, a
    // dead letter and an open conflict.
    cloud
        .batch_execute(
            "INSERT INTO reminder (rem_id, staff_id, rem_subject) VALUES (7, 1, 'Call Asha');
             UPDATE jobshead SET job_status = 'Done' WHERE job_id = 100;
             INSERT INTO tandem.dead_letters (direction, table_name, row_key, row_image, sqlstate, message, batch)
             VALUES ('forward', 'jobshead', '{\"job_id\": 555}', '{\"job_id\": 555}', '23503', 'no such client', 'forward 1..1');
             INSERT INTO tandem.conflicts (direction, table_name, row_key, incoming, current, reason)
             VALUES ('forward', 'jobshead', '{\"job_id\": 101}', '{\"job_id\": 101}', '{\"job_id\": 101}', 'mobile-owned');",
        )
        .await
        .unwrap();

    let report = tandem::setup::init(&config, false).await.unwrap();
    let said: Vec<String> = report
        .desktop
        .iter()
        .chain(&report.cloud)
        .map(|s| s.to_string())
        .collect();
    assert!(
        said.iter()
            .any(|s| s.contains("installed by another version of tandem: upgrading")),
        "{said:#?}"
    );
    // The ownership triggers now name tandem's role.
    assert!(
        said.iter()
            .any(|s| s.contains("replace trigger tandem_mark_mobile")),
        "{said:#?}"
    );
    // A cloud-key table's phone inserts are journaled since (see `tandem.journal`).
    assert!(
        said.iter()
            .any(|s| s.contains("create trigger tandem_journal_inserts on jobtasks")),
        "{said:#?}"
    );
    // Nothing waiting was touched by the upgrade itself.
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await,
        2
    );
    let behind = count(
        &cloud,
        &format!(
            "SELECT count(*) FROM pg_replication_slots
              WHERE slot_name = '{}' AND confirmed_flush_lsn < pg_current_wal_lsn()",
            config.cloud.slot
        ),
    )
    .await;
    assert_eq!(behind, 1, "the phone's changes wait in the slot");

    let run = run_once(&config).await;
    assert_eq!(
        rows(
            &cloud,
            "climaster",
            "client_id, client_name, source",
            "true"
        )
        .await,
        vec![
            "(1,\"Asha Traders Pvt\",D)",
            "(2,\"Bala & Co\",D)",
            "(3,\"Chitra Stores\",D)"
        ],
        "{run:?}"
    );
    assert_eq!(
        rows(&desktop, "mbreminder", "rem_id, rem_subject", "true").await,
        vec!["(7,\"Call Asha\")"]
    );
    assert_eq!(
        rows(&desktop, "jobshead", "job_id, job_status", "true").await,
        vec!["(100,Done)", "(101,Open)"]
    );
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await,
        0
    );
    // The dead letters and conflicts of before are still there, open, and listed.
    let conflicts = tandem::ops::conflicts::list(&config, false).await.unwrap();
    assert_eq!(conflicts.len(), 2, "{conflicts:#?}");
    let letters = tandem::ops::dead_letters::list(&config, false)
        .await
        .unwrap();
    assert_eq!(letters.len(), 2, "{letters:#?}");

    // A phone's new task after the upgrade: journaled (the cloud-key table's inserts are), and
    // brought to the desktop.
    cloud
        .batch_execute(
            "INSERT INTO jobtasks (job_id, client_id, task_id, task_name) VALUES (100, 1, NULL, 'Photo')",
        )
        .await
        .unwrap();
    assert_eq!(
        count(
            &cloud,
            "SELECT count(*) FROM tandem.journal WHERE table_name = 'jobtasks' AND op = 'I'"
        )
        .await,
        1
    );
    let brought = run_once(&config).await;
    assert_eq!(
        rows(&desktop, "jobtasks", "job_id, task_id, task_name", "true").await,
        vec!["(100,,Photo)"],
        "{brought:?}"
    );

    // Applied once: a second run writes nothing, a second init has nothing to do.
    let again = run_once(&config).await;
    assert_eq!(again.forward.outcome.written, 0, "{again:?}");
    assert_eq!(again.reverse.outcome.written, 0, "{again:?}");
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM climaster WHERE client_id = 3").await,
        1
    );
    let second = tandem::setup::init(&config, false).await.unwrap();
    assert!(second.is_empty(), "{:?}", second);
}
