//! `tandem init`: what it installs, that it is idempotent, that it follows config changes.

use std::time::Duration;

use futures_util::StreamExt;
use tandem::setup::{self, SetupError, Step};

use crate::support::{TestDb, catalog_snapshot, count};

#[tokio::test]
async fn init_twice_changes_nothing_the_second_time() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    let first = setup::init(&config, false).await.unwrap();
    // Desktop: schema tandem, tandem's role recorded, 4 capture triggers on each of 15 tables.
    assert_eq!(first.desktop.len(), 1 + 1 + 4 * 15, "{:#?}", first.desktop);
    assert!(matches!(first.desktop[0], Step::Install { .. }));
    assert!(
        matches!(&first.desktop[1], Step::Record { item, .. } if item == "role"),
        "{:#?}",
        first.desktop[1]
    );
    // Cloud: schema, 15 ownership triggers (and 3 that journal inserts, on the cloud-key tables), 15
    // replica identities, publication, slot, 3 records (tandem's role, the publication, the slot).
    assert_eq!(
        first.cloud.len(),
        1 + 15 + 3 + 15 + 1 + 1 + 3,
        "{:#?}",
        first.cloud
    );
    assert!(first.warnings.is_empty(), "{:#?}", first.warnings);

    let desktop_after_first = catalog_snapshot(&db.desktop().await).await;
    let cloud_after_first = catalog_snapshot(&db.cloud().await).await;
    let second = setup::init(&config, false).await.unwrap();
    assert!(
        second.is_empty(),
        "second init planned {:#?} {:#?}",
        second.desktop,
        second.cloud
    );
    assert_eq!(
        catalog_snapshot(&db.desktop().await).await,
        desktop_after_first
    );
    assert_eq!(catalog_snapshot(&db.cloud().await).await, cloud_after_first);
}

#[tokio::test]
async fn init_dry_run_changes_nothing() {
    let db = TestDb::sample().await;
    let before = (
        catalog_snapshot(&db.desktop().await).await,
        catalog_snapshot(&db.cloud().await).await,
    );
    let planned = setup::init(&db.sample_config(), true).await.unwrap();
    assert!(!planned.is_empty());
    let after = (
        catalog_snapshot(&db.desktop().await).await,
        catalog_snapshot(&db.cloud().await).await,
    );
    assert_eq!(before, after);
}

#[tokio::test]
async fn init_refuses_a_config_that_does_not_match_and_changes_nothing() {
    let db = TestDb::sample().await;
    db.cloud()
        .await
        .batch_execute("ALTER TABLE climaster DROP COLUMN gstin")
        .await
        .unwrap();
    let err = setup::init(&db.sample_config(), false).await.unwrap_err();
    assert!(matches!(err, SetupError::Invalid(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("climaster.gstin"), "{msg}");
    assert!(msg.contains("skip_to_cloud"), "{msg}");
    assert_eq!(
        count(
            &db.desktop().await,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'tandem'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &db.cloud().await,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'tandem'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn capture_triggers_record_keys_not_rows() {
    let db = TestDb::sample().await;
    setup::init(&db.sample_config(), false).await.unwrap();
    let desktop = db.desktop().await;
    let outbox = || async {
        let rows = db
            .desktop()
            .await
            .query(
                "SELECT table_name, op::text, row_key FROM tandem.outbox ORDER BY id",
                &[],
            )
            .await
            .unwrap();
        rows.into_iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, Option<Vec<Option<String>>>>(2),
                )
            })
            .collect::<Vec<_>>()
    };
    let key = |vals: &[&str]| Some(vals.iter().map(|v| Some(v.to_string())).collect::<Vec<_>>());

    desktop
        .batch_execute("INSERT INTO jobshead (job_id, job_name, remarks) VALUES (1, 'a', repeat('x', 100000)), (2, 'b', NULL)")
        .await
        .unwrap();
    let rows = outbox().await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.contains(&("jobshead".into(), "I".into(), key(&["1"]))));
    assert!(rows.contains(&("jobshead".into(), "I".into(), key(&["2"]))));

    // An update that moves a row to another key records both keys; one that does not, one key.
    desktop
        .batch_execute("DELETE FROM tandem.outbox; UPDATE jobshead SET job_id = 3 WHERE job_id = 1")
        .await
        .unwrap();
    let mut rows = outbox().await;
    rows.sort();
    assert_eq!(
        rows,
        vec![
            ("jobshead".into(), "U".into(), key(&["1"])),
            ("jobshead".into(), "U".into(), key(&["3"]))
        ]
    );
    desktop
        .batch_execute("DELETE FROM tandem.outbox; UPDATE jobshead SET job_name = 'c'")
        .await
        .unwrap();
    assert_eq!(outbox().await.len(), 2);

    desktop
        .batch_execute("DELETE FROM tandem.outbox; DELETE FROM jobshead WHERE job_id = 2")
        .await
        .unwrap();
    assert_eq!(
        outbox().await,
        vec![("jobshead".into(), "D".into(), key(&["2"]))]
    );

    // Cloud-key tables record their scope, once per statement and scope, NULLs kept.
    desktop
        .batch_execute(
            "DELETE FROM tandem.outbox;
             INSERT INTO jobtasks (job_id, task_name) VALUES (7, 'a'), (7, 'a'), (7, 'b'), (NULL, 'c');
             INSERT INTO workdiary (staff_id, wd_date, hours) VALUES (4, '2025-01-02', 1.5), (4, '2025-01-02', 2)",
        )
        .await
        .unwrap();
    let mut rows = outbox().await;
    rows.sort();
    assert_eq!(
        rows,
        vec![
            ("jobtasks".into(), "I".into(), Some(vec![None])),
            ("jobtasks".into(), "I".into(), key(&["7"])),
            ("workdiary".into(), "I".into(), key(&["4", "2025-01-02"])),
        ]
    );

    desktop
        .batch_execute("DELETE FROM tandem.outbox; TRUNCATE taskchecklist")
        .await
        .unwrap();
    assert_eq!(
        outbox().await,
        vec![("taskchecklist".into(), "T".into(), None)]
    );

    // A statement that touches nothing records nothing.
    desktop
        .batch_execute("DELETE FROM tandem.outbox; UPDATE jobshead SET job_name = 'x' WHERE false")
        .await
        .unwrap();
    assert!(outbox().await.is_empty());
}

#[tokio::test]
async fn capture_notifies_listeners() {
    let db = TestDb::sample().await;
    setup::init(&db.sample_config(), false).await.unwrap();
    let (listener, mut connection) =
        tokio_postgres::connect(&db.desktop_url, tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.channel().to_string());
            }
        }
    });
    listener
        .batch_execute("LISTEN tandem_outbox")
        .await
        .unwrap();
    db.desktop()
        .await
        .batch_execute("INSERT INTO orgmaster (org_id, org_name) VALUES (9, 'n')")
        .await
        .unwrap();
    let channel = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification")
        .unwrap();
    assert_eq!(channel, "tandem_outbox");
}

#[tokio::test]
async fn tandem_sessions_are_not_captured() {
    let db = TestDb::sample().await;
    setup::init(&db.sample_config(), false).await.unwrap();
    let desktop = db.desktop().await;
    desktop
        .batch_execute(
            "SET tandem.applying = on;
             INSERT INTO mbreminder (rem_id, rem_subject) VALUES (1, 'from a phone');
             UPDATE mbreminder SET rem_subject = 'edited';
             DELETE FROM mbreminder;",
        )
        .await
        .unwrap();
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await,
        0
    );
    desktop
        .batch_execute("RESET tandem.applying; INSERT INTO mbreminder (rem_id) VALUES (2)")
        .await
        .unwrap();
    assert_eq!(
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await,
        1
    );
}

#[tokio::test]
async fn a_phone_write_is_always_mobile_owned() {
    let db = TestDb::sample().await;
    setup::init(&db.sample_config(), false).await.unwrap();
    let cloud = db.cloud().await;
    // tandem's session writes desktop-owned rows.
    cloud
        .batch_execute("SET tandem.applying = on; INSERT INTO orgmaster (org_id, org_name, source) VALUES (1, 'Desk', 'D'); RESET tandem.applying")
        .await
        .unwrap();
    // The phone inserts without saying, or claiming 'D': mobile-owned either way.
    cloud
        .batch_execute("INSERT INTO orgmaster (org_id, org_name) VALUES (2, 'Phone'); INSERT INTO orgmaster (org_id, org_name, source) VALUES (3, 'Sly', 'D')")
        .await
        .unwrap();
    // Seeds 003 scenario 2: the phone edits a desktop-made row; it becomes mobile-owned.
    cloud
        .batch_execute("UPDATE orgmaster SET org_city = 'Pune' WHERE org_id = 1")
        .await
        .unwrap();
    let rows = cloud
        .query(
            "SELECT org_id, source::text FROM orgmaster ORDER BY org_id",
            &[],
        )
        .await
        .unwrap();
    let owners: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        owners,
        vec![(1, "M".into()), (2, "M".into()), (3, "M".into())]
    );
}

/// The ownership function names everything by schema: a session whose search_path puts look-alike
/// functions and operators ahead of pg_catalog still gets its writes marked, and its takeover of a
/// desktop row still calls pg_catalog's claim function (the look-alike would fail the UPDATE).
#[tokio::test]
async fn a_phone_session_search_path_cannot_dodge_the_ownership_marking() {
    let db = TestDb::sample().await;
    setup::init(&db.sample_config(), false).await.unwrap();
    let cloud = db.cloud().await;
    cloud
        .batch_execute("SET tandem.applying = on; INSERT INTO orgmaster (org_id, org_name, source) VALUES (1, 'Desk', 'D'); RESET tandem.applying")
        .await
        .unwrap();
    cloud
        .batch_execute(
            "CREATE SCHEMA sly;
             CREATE FUNCTION sly.current_setting(text, boolean) RETURNS text LANGUAGE sql AS $$ SELECT 'on' $$;
             CREATE FUNCTION sly.texteq_always(text, text) RETURNS boolean LANGUAGE sql AS $$ SELECT true $$;
             CREATE OPERATOR sly.= (LEFTARG = text, RIGHTARG = text, FUNCTION = sly.texteq_always);
             CREATE FUNCTION sly.pg_logical_emit_message(boolean, text, text) RETURNS pg_lsn
                 LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'the look-alike was called'; END $$;
             SET search_path = sly, pg_catalog, public;
             INSERT INTO orgmaster (org_id, org_name, source) VALUES (2, 'Sly', 'D');
             UPDATE orgmaster SET org_city = 'Pune' WHERE org_id = 1;
             RESET search_path",
        )
        .await
        .unwrap();
    let rows = cloud
        .query(
            "SELECT org_id, source::text FROM orgmaster ORDER BY org_id",
            &[],
        )
        .await
        .unwrap();
    let owners: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(owners, vec![(1, "M".into()), (2, "M".into())]);
}
#[tokio::test]
async fn the_publication_carries_only_mobile_rows_of_full_identity_tables() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    setup::init(&config, false).await.unwrap();
    let cloud = db.cloud().await;
    let rows = cloud
        .query(
            "SELECT tablename::text, rowfilter FROM pg_publication_tables WHERE pubname = 'tandem'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 15);
    for r in &rows {
        let filter: String = r.get(1);
        assert!(
            filter.contains("source") && filter.contains("'M'"),
            "{filter}"
        );
    }
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' AND relreplident <> 'f'").await,
        0
    );
    let slot = cloud
        .query_one(
            "SELECT plugin::text, database::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap();
    assert_eq!(slot.get::<_, String>(0), "pgoutput");
    assert_eq!(slot.get::<_, String>(1), db.name);
    // The mobile app can still update and delete (a row filter without FULL identity would forbid it).
    cloud
        .batch_execute("INSERT INTO orgmaster (org_id, org_name) VALUES (1, 'o'); UPDATE orgmaster SET org_name = 'p'; DELETE FROM orgmaster")
        .await
        .unwrap();
}

#[tokio::test]
async fn supabase_api_roles_get_nothing_in_schema_tandem() {
    let db = TestDb::sample().await;
    let cloud = db.cloud().await;
    // Roles are per cluster: create them once, tolerating a parallel test doing the same.
    for role in ["anon", "authenticated"] {
        let _ = cloud
            .batch_execute(&format!("CREATE ROLE {role} NOLOGIN"))
            .await;
    }
    // Like Supabase, grant them everything new by default (per database).
    cloud
        .batch_execute(
            "ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO anon, authenticated;
             ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO anon, authenticated;
             ALTER DEFAULT PRIVILEGES GRANT USAGE ON SCHEMAS TO anon, authenticated;",
        )
        .await
        .unwrap();
    setup::init(&db.sample_config(), false).await.unwrap();
    for role in ["anon", "authenticated"] {
        let sql = format!(
            "SELECT count(*) FROM pg_class c WHERE c.relnamespace = 'tandem'::regnamespace
               AND (has_table_privilege('{role}', c.oid, 'SELECT') OR has_schema_privilege('{role}', 'tandem', 'USAGE'))"
        );
        assert_eq!(count(&cloud, &sql).await, 0, "{role} reaches schema tandem");
    }
    assert!(
        tandem::ops::check::check(&db.sample_config())
            .await
            .passed()
    );
}

#[tokio::test]
async fn init_follows_config_changes() {
    let db = TestDb::sample().await;
    setup::init(&db.sample_config(), false).await.unwrap();
    // Stop replicating workdiary, stop sending learequest back, change the jobtasks scope.
    let text = tandem::sample::CONFIG
        .replace("slot = \"tandem\"", &format!("slot = \"{}\"", db.name))
        .replace("[[tables]]\ndesktop = \"workdiary\"\ncloud_key = \"wd_id\"\nscope = [\"staff_id\", \"wd_date\"]\n", "")
        .replace("desktop = \"learequest\"\nkey = [\"lea_id\"]", "desktop = \"learequest\"\nkey = [\"lea_id\"]\nreverse = false")
        .replace("scope = [\"job_id\"]\nskip_to_cloud = [\"jt_uid\"]", "scope = [\"job_id\", \"task_id\"]\nskip_to_cloud = [\"jt_uid\"]");
    let changed = tandem::config::Config::parse("changed", &text, &db.env()).unwrap();
    assert_eq!(changed.tables.len(), 14);
    let report = setup::init(&changed, false).await.unwrap();
    let described: Vec<String> = report
        .desktop
        .iter()
        .chain(&report.cloud)
        .map(|s| s.to_string())
        .collect();
    let has = |needle: &str| described.iter().filter(|d| d.contains(needle)).count();
    assert_eq!(has("drop trigger tandem_capture_"), 4, "{described:#?}");
    assert_eq!(
        has("drop trigger tandem_mark_mobile on workdiary"),
        1,
        "{described:#?}"
    );
    assert_eq!(has("replace trigger tandem_capture_"), 3, "{described:#?}");
    assert_eq!(
        has("set the tables of publication tandem to the 13"),
        1,
        "{described:#?}"
    );
    assert_eq!(
        has("restore REPLICA IDENTITY DEFAULT on"),
        2,
        "{described:#?}"
    );
    assert!(setup::init(&changed, false).await.unwrap().is_empty());
    assert!(tandem::ops::check::check(&changed).await.passed());
    let cloud = db.cloud().await;
    assert_eq!(count(&cloud, "SELECT count(*) FROM pg_class WHERE relname IN ('workdiary', 'learequest') AND relreplident = 'd'").await, 2);
}

#[tokio::test]
async fn another_role_setting_tandem_applying_is_still_a_phone_and_the_desktop_application() {
    let db = TestDb::sample().await;
    setup::init(&db.sample_config(), false).await.unwrap();
    let role = format!("{}_app", db.name);
    let grant = format!(
        "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA public TO {role};
         GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"
    );
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    desktop.batch_execute(&grant).await.unwrap();
    cloud.batch_execute(&grant).await.unwrap();
    let as_role = |url: &str| url.replace("postgres@", &format!("{role}@"));
    let phone = crate::support::connect(&as_role(&db.cloud_url)).await;
    let app = crate::support::connect(&as_role(&db.desktop_url)).await;
    // Setting tandem's session setting does not make a session tandem's: only tandem's role counts.
    phone
        .batch_execute(
            "SET tandem.applying = on;
             INSERT INTO jobshead (job_id, job_name, source) VALUES (1, 'forged', 'D');
             UPDATE jobshead SET job_name = 'forged again' WHERE job_id = 1",
        )
        .await
        .unwrap();
    assert_eq!(
        crate::support::rows(&cloud, "jobshead", "job_id, source", "true").await,
        vec!["(1,M)"]
    );
    assert_eq!(
        count(
            &cloud,
            "SELECT count(*) FROM tandem.journal WHERE table_name = 'jobshead' AND op = 'U'
                AND xid IS NOT NULL AND key = '[1]'"
        )
        .await,
        1
    );
    app.batch_execute(
        "SET tandem.applying = on; INSERT INTO jobshead (job_id, job_name) VALUES (2, 'unseen?')",
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &desktop,
            "SELECT count(*) FROM tandem.outbox WHERE table_name = 'jobshead' AND row_key = '{2}'"
        )
        .await,
        1
    );
    // tandem's own role with the setting: not marked, not captured.
    cloud
        .batch_execute(
            "SET tandem.applying = on; INSERT INTO jobshead (job_id, job_name, source) VALUES (3, 'mine', 'D')",
        )
        .await
        .unwrap();
    assert_eq!(
        crate::support::rows(&cloud, "jobshead", "job_id, source", "job_id = 3").await,
        vec!["(3,D)"]
    );
    desktop
        .batch_execute(
            "SET tandem.applying = on; INSERT INTO jobshead (job_id, job_name) VALUES (4, 'mine')",
        )
        .await
        .unwrap();
    assert_eq!(
        count(
            &desktop,
            "SELECT count(*) FROM tandem.outbox WHERE row_key = '{4}'"
        )
        .await,
        0
    );
}
