//! A table whose schema breaks its statements is parked, not the whole run: the other tables keep
//! streaming both ways, nothing of the parked table is lost, and it resumes by itself once it fits.

use std::time::Duration;

use tandem::config::Config;
use tandem::pipeline::{self, RunOptions};
use tokio_util::sync::CancellationToken;

use crate::any_schema::{OWNERSHIP, installed_with};
use crate::support::{Streaming, TestDb, count, rows};

const TABLES: &str = "[[tables]]\ndesktop = \"note\"\nkey = [\"id\"]\n\
                      [[tables]]\ndesktop = \"item\"\nkey = [\"id\"]\n\
                      [[tables]]\ndesktop = \"line\"\ncloud_key = \"line_id\"\nscope = [\"grp\"]\n";

/// `note` (the one that will break), `item` and `line` (which must not), and tandem installed.
async fn three_tables() -> (TestDb, Config) {
    installed_with(
        "CREATE TABLE note (id int PRIMARY KEY, body text, tag text);
         CREATE TABLE item (id int PRIMARY KEY, name text);
         CREATE TABLE line (grp int, label text); CREATE INDEX ON line (grp);",
        &format!(
            "CREATE TABLE note (id int PRIMARY KEY, body text, tag text, {OWNERSHIP});
             CREATE TABLE item (id int PRIMARY KEY, name text, {OWNERSHIP});
             CREATE TABLE line (line_id bigserial PRIMARY KEY, grp int, label text, {OWNERSHIP});
             CREATE INDEX ON line (grp);"
        ),
        TABLES,
    )
    .await
}

/// Waits until `sql` (a boolean query) holds on `client`, with a deadline.
async fn until(client: &tokio_postgres::Client, what: &str, sql: &str) {
    let held = tandem::cluster::wait_until(Duration::from_secs(60), || async {
        client
            .query_one(sql, &[])
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    })
    .await;
    assert!(held, "timed out waiting for: {what} ({sql})");
}

#[tokio::test]
async fn a_cloud_column_renamed_while_run_streams_parks_its_table_alone_and_every_change_arrives_once_undone()
 {
    let (db, mut config) = three_tables().await;
    config.sync.schema_recheck_ms = 200;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    desktop
        .batch_execute(
            "INSERT INTO note VALUES (1, 'desk one', 'a'), (2, 'desk two', 'b');
             INSERT INTO item VALUES (1, 'desk item');",
        )
        .await
        .unwrap();
    cloud
        .batch_execute(
            "INSERT INTO note (id, body, tag) VALUES (10, 'phone ten', 'x'), (11, 'phone eleven', 'y'),
                                                     (12, 'phone twelve', 'z');",
        )
        .await
        .unwrap();
    let run = Streaming::start(&config);
    until(
        &cloud,
        "the desktop's notes arrive",
        "SELECT count(*) = 2 FROM note WHERE source = 'D'",
    )
    .await;
    until(
        &desktop,
        "the phone's notes arrive",
        "SELECT count(*) = 5 FROM note",
    )
    .await;

    // The cloud renames a column of `note`: its statements no longer fit, in both directions.
    cloud
        .batch_execute("ALTER TABLE note RENAME COLUMN tag TO tag2")
        .await
        .unwrap();
    desktop
        .batch_execute(
            "INSERT INTO note VALUES (3, 'desk three', 'c'); UPDATE note SET body = 'desk one, edited' WHERE id = 1;
             DELETE FROM note WHERE id = 2;
             INSERT INTO item VALUES (2, 'desk item two');",
        )
        .await
        .unwrap();
    cloud
        .batch_execute(
            "INSERT INTO note (id, body, tag2) VALUES (13, 'phone thirteen', 'w');
             UPDATE note SET body = 'phone ten, edited', tag2 = 'xx' WHERE id = 10;
             DELETE FROM note WHERE id = 11;
             INSERT INTO note (id, body, tag2) VALUES (14, 'phone fourteen', 'v'); DELETE FROM note WHERE id = 14;
             INSERT INTO item (id, name) VALUES (20, 'phone item');
             INSERT INTO line (grp, label) VALUES (1, 'phone line');",
        )
        .await
        .unwrap();
    desktop
        .batch_execute("INSERT INTO line VALUES (2, 'desk line')")
        .await
        .unwrap();
    // The other tables flow both ways meanwhile.
    until(
        &cloud,
        "the desktop's item arrives",
        "SELECT count(*) = 1 FROM item WHERE id = 2",
    )
    .await;
    until(
        &desktop,
        "the phone's item arrives",
        "SELECT count(*) = 1 FROM item WHERE id = 20",
    )
    .await;
    until(
        &desktop,
        "the phone's line arrives",
        "SELECT count(*) = 1 FROM line WHERE grp = 1",
    )
    .await;
    until(
        &cloud,
        "the desktop's line arrives",
        "SELECT count(*) = 1 FROM line WHERE grp = 2 AND source = 'D'",
    )
    .await;
    // `note` is parked, with why and the fix, and nothing of it is lost or applied.
    until(
        &desktop,
        "note is parked",
        "SELECT count(*) = 1 FROM tandem.table_state WHERE table_name = 'note' AND state = 'parked'
            AND reason LIKE '%tag%' AND fix <> ''",
    )
    .await;
    until(
        &desktop,
        "the phone's changes of note are kept as dead letters",
        "SELECT count(*) = 4 FROM tandem.dead_letters WHERE table_name = 'note' AND resolved_at IS NULL",
    )
    .await;
    assert!(
        count(
            &desktop,
            "SELECT count(*) FROM tandem.outbox WHERE table_name = 'note'"
        )
        .await
            > 0
    );
    assert_eq!(
        rows(&desktop, "note", "id, body", "id >= 10").await,
        vec![
            "(10,\"phone ten\")",
            "(11,\"phone eleven\")",
            "(12,\"phone twelve\")"
        ]
    );
    assert_eq!(
        rows(
            &desktop,
            "tandem.table_state",
            "table_name, state",
            "table_name <> 'note'"
        )
        .await,
        vec!["(item,streaming)", "(line,streaming)"]
    );

    // Undone: the table resumes by itself, and every change made meanwhile arrives.
    cloud
        .batch_execute("ALTER TABLE note RENAME COLUMN tag2 TO tag")
        .await
        .unwrap();
    until(
        &desktop,
        "note resumes",
        "SELECT count(*) = 1 FROM tandem.table_state WHERE table_name = 'note' AND state = 'streaming'",
    )
    .await;
    until(
        &desktop,
        "the phone's changes of note arrive",
        "SELECT count(*) = 1 FROM note WHERE id = 13",
    )
    .await;
    until(
        &desktop,
        "the phone's delete arrives",
        "SELECT count(*) = 0 FROM note WHERE id = 11",
    )
    .await;
    until(
        &cloud,
        "the desktop's queued changes arrive",
        "SELECT count(*) = 1 FROM note WHERE id = 3",
    )
    .await;
    until(
        &cloud,
        "the desktop's delete arrives",
        "SELECT count(*) = 0 FROM note WHERE id = 2",
    )
    .await;
    until(
        &desktop,
        "the phone's edit arrives whole",
        "SELECT count(*) = 1 FROM note WHERE id = 10 AND body = 'phone ten, edited' AND tag = 'xx'",
    )
    .await;
    until(
        &desktop,
        "the dead letters are settled",
        "SELECT count(*) = 0 FROM tandem.dead_letters WHERE resolved_at IS NULL",
    )
    .await;
    let report = run.stop().await;
    assert!(report.parked.is_empty(), "{:?}", report.parked);
    let all = "id, body, tag";
    assert_eq!(
        rows(&desktop, "note", all, "true").await,
        rows(&cloud, "note", all, "true").await
    );
    assert_eq!(
        rows(&desktop, "note", "id", "true").await,
        vec!["(1)", "(10)", "(12)", "(13)", "(3)"]
    );
    for client in [&desktop, &cloud] {
        assert_eq!(
            count(client, "SELECT count(*) FROM tandem.conflicts").await,
            0
        );
    }
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await,
        0
    );
}

#[tokio::test]
async fn run_once_reports_a_parked_table_and_fails_while_the_others_apply() {
    let (db, config) = three_tables().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    cloud
        .batch_execute("ALTER TABLE note RENAME COLUMN body TO text")
        .await
        .unwrap();
    desktop
        .batch_execute(
            "INSERT INTO note VALUES (1, 'desk', 'a'); INSERT INTO item VALUES (1, 'desk item');",
        )
        .await
        .unwrap();
    let report = pipeline::run(&config, RunOptions { once: true }, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.parked.len(), 1, "{:?}", report.parked);
    let (table, parked) = &report.parked[0];
    assert_eq!(table, "note");
    assert!(parked.reason.contains("body"), "{parked:?}");
    assert!(parked.fix.contains("skip_to_cloud"), "{parked:?}");
    assert_eq!(
        rows(&cloud, "item", "id, name", "true").await,
        vec!["(1,\"desk item\")"]
    );
    assert_eq!(
        count(
            &desktop,
            "SELECT count(*) FROM tandem.outbox WHERE table_name = 'note'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_desktop_column_renamed_parks_its_table_and_the_phones_rows_wait_as_dead_letters() {
    let (db, config) = three_tables().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    cloud
        .batch_execute("INSERT INTO note (id, body, tag) VALUES (10, 'phone', 'x'); INSERT INTO item (id, name) VALUES (20, 'phone item');")
        .await
        .unwrap();
    desktop
        .batch_execute("ALTER TABLE note RENAME COLUMN tag TO label")
        .await
        .unwrap();
    let report = pipeline::run(&config, RunOptions { once: true }, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        report
            .parked
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>(),
        vec!["note"]
    );
    assert_eq!(rows(&desktop, "item", "id", "true").await, vec!["(20)"]);
    assert_eq!(
        rows(
            &desktop,
            "tandem.dead_letters",
            "table_name, sqlstate",
            "resolved_at IS NULL"
        )
        .await,
        vec!["(note,TPARK)"]
    );
    // Fixed on the desktop: the next run brings the row.
    desktop
        .batch_execute("ALTER TABLE note RENAME COLUMN label TO tag")
        .await
        .unwrap();
    let report = pipeline::run(&config, RunOptions { once: true }, CancellationToken::new())
        .await
        .unwrap();
    assert!(report.parked.is_empty(), "{:?}", report.parked);
    // The re-saved row streams in the run after the one that re-saved it.
    pipeline::run(&config, RunOptions { once: true }, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        rows(&desktop, "note", "id, body, tag", "true").await,
        vec!["(10,phone,x)"]
    );
    assert_eq!(
        count(
            &desktop,
            "SELECT count(*) FROM tandem.dead_letters WHERE resolved_at IS NULL"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_cloud_column_added_with_a_default_while_run_streams_parks_nothing() {
    let (db, mut config) = three_tables().await;
    config.sync.schema_recheck_ms = 100;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    desktop
        .batch_execute("INSERT INTO note VALUES (1, 'desk', 'a')")
        .await
        .unwrap();
    let run = Streaming::start(&config);
    until(
        &cloud,
        "the first note arrives",
        "SELECT count(*) = 1 FROM note",
    )
    .await;
    cloud
        .batch_execute("ALTER TABLE note ADD COLUMN rating int NOT NULL DEFAULT 3")
        .await
        .unwrap();
    desktop
        .batch_execute("INSERT INTO note VALUES (2, 'desk two', 'b')")
        .await
        .unwrap();
    cloud
        .batch_execute("INSERT INTO note (id, body, tag, rating) VALUES (10, 'phone', 'x', 5)")
        .await
        .unwrap();
    until(
        &cloud,
        "a desktop note made after the change arrives",
        "SELECT count(*) = 1 FROM note WHERE id = 2 AND rating = 3",
    )
    .await;
    until(
        &desktop,
        "a phone note made after the change arrives",
        "SELECT count(*) = 1 FROM note WHERE id = 10",
    )
    .await;
    // Picked up again once the recheck saw the new shape: still streaming, nothing parked.
    desktop
        .batch_execute("UPDATE note SET body = 'desk two, edited' WHERE id = 2")
        .await
        .unwrap();
    until(
        &cloud,
        "a later edit arrives",
        "SELECT count(*) = 1 FROM note WHERE body = 'desk two, edited'",
    )
    .await;
    let report = run.stop().await;
    assert!(report.parked.is_empty(), "{:?}", report.parked);
    assert_eq!(
        report.forward.retries + report.reverse.retries,
        0,
        "{report:?}"
    );
    assert_eq!(
        rows(&desktop, "tandem.table_state", "state", "true").await,
        vec!["(streaming)"; 3]
    );
    assert_eq!(
        rows(&cloud, "note", "id, rating", "true").await,
        vec!["(1,3)", "(10,5)", "(2,3)"]
    );
}

#[tokio::test]
async fn the_tandem_binary_names_the_parked_table_its_reason_and_fix_and_exits_non_zero() {
    let (db, _) = three_tables().await;
    db.cloud()
        .await
        .batch_execute("ALTER TABLE note DROP COLUMN tag")
        .await
        .unwrap();
    let path = std::env::temp_dir().join(format!("{}-parked.toml", db.name));
    let text = format!(
        "[desktop]\nurl = \"{}\"\n[cloud]\nurl = \"{}\"\nslot = \"{}\"\n{TABLES}",
        db.desktop_url, db.cloud_url, db.name
    );
    std::fs::write(&path, text).unwrap();
    let out = tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            crate::support::output_of(
                std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
                    .arg("-c")
                    .arg(&path)
                    .args(["run", "--once"])
                    .env_remove("TANDEM_DESKTOP_URL")
                    .env_remove("TANDEM_CLOUD_URL"),
            )
        }
    })
    .await
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let parked: Vec<&str> = stdout.lines().filter(|l| l.contains("is parked")).collect();
    assert_eq!(parked.len(), 1, "{stdout}");
    assert!(parked[0].contains("table note is parked"), "{stdout}");
    assert!(
        parked[0].contains("tag") && parked[0].contains("fix:"),
        "{stdout}"
    );
}
