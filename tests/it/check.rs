//! `tandem check`: passes after init, and fails naming the fix when something is missing.

use tandem::ops::check::{CheckReport, Status, check};
use tandem::setup::{self, SetupError};

use crate::support::TestDb;

fn failure_with<'a>(report: &'a CheckReport, needle: &str) -> &'a tandem::ops::check::CheckItem {
    report
        .failures()
        .find(|i| i.message.contains(needle) || i.subject.contains(needle))
        .unwrap_or_else(|| panic!("no failure mentions {needle:?}: {:#?}", report.items))
}

#[tokio::test]
async fn check_passes_after_init() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    setup::init(&config, false).await.unwrap();
    let report = check(&config).await;
    assert!(report.passed(), "{:#?}", report.items);
    assert!(
        report.items.iter().all(|i| i.status == Status::Ok),
        "{:#?}",
        report.items
    );
}

#[tokio::test]
async fn check_before_init_says_to_run_init() {
    let db = TestDb::sample().await;
    let report = check(&db.sample_config()).await;
    assert!(!report.passed());
    let item = failure_with(&report, "install schema tandem");
    assert_eq!(item.fix.as_deref(), Some("run `tandem init`"));
    failure_with(&report, "create logical replication slot");
}

#[tokio::test]
async fn check_fails_when_the_slot_is_dropped() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    setup::init(&config, false).await.unwrap();
    db.cloud()
        .await
        .execute("SELECT pg_drop_replication_slot($1)", &[&db.name])
        .await
        .unwrap();
    let report = check(&config).await;
    assert!(!report.passed());
    let item = failure_with(
        &report,
        &format!("create logical replication slot {}", db.name),
    );
    assert_eq!(item.fix.as_deref(), Some("run `tandem init`"));
    // And init repairs it.
    let again = setup::init(&config, false).await.unwrap();
    assert_eq!(again.cloud.len(), 1, "{:#?}", again.cloud);
    assert!(check(&config).await.passed());
}

#[tokio::test]
async fn check_fails_when_wal_level_is_replica() {
    let db = TestDb::with_replica_cloud().await;
    tandem::sample::create_schemas(&db.desktop().await, &db.cloud().await)
        .await
        .unwrap();
    let config = db.sample_config();
    let report = check(&config).await;
    let item = failure_with(&report, "wal_level is replica");
    assert!(
        item.fix.as_deref().unwrap().contains("wal_level = logical"),
        "{item:?}"
    );
    // init refuses before changing anything.
    let err = setup::init(&config, false).await.unwrap_err();
    assert!(matches!(err, SetupError::Blocked(_)), "{err}");
    assert!(err.to_string().contains("wal_level = logical"), "{err}");
    let desktop = db.desktop().await;
    let installed: i64 = desktop
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'tandem'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(installed, 0);
}

#[tokio::test]
async fn check_fails_when_a_configured_column_is_missing() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    setup::init(&config, false).await.unwrap();
    db.cloud()
        .await
        .batch_execute("ALTER TABLE jobshead DROP COLUMN remarks")
        .await
        .unwrap();
    let report = check(&config).await;
    let item = failure_with(&report, "jobshead.remarks");
    assert!(item.subject.contains("column remarks"), "{item:?}");
    assert!(
        item.fix.as_deref().unwrap().contains("skip_to_cloud"),
        "{item:?}"
    );
    // A key column the config names, gone from the desktop.
    db.desktop()
        .await
        .batch_execute("ALTER TABLE learequest DROP COLUMN lea_id")
        .await
        .unwrap();
    let report = check(&config).await;
    let item = failure_with(&report, "`key` names column \"lea_id\"");
    assert!(
        item.fix
            .as_deref()
            .unwrap()
            .contains("add the column on the desktop"),
        "{item:?}"
    );
}

#[tokio::test]
async fn check_fails_when_a_capture_trigger_is_disabled() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    setup::init(&config, false).await.unwrap();
    db.desktop()
        .await
        .batch_execute("ALTER TABLE climaster DISABLE TRIGGER tandem_capture_update")
        .await
        .unwrap();
    let report = check(&config).await;
    failure_with(
        &report,
        "replace trigger tandem_capture_update on climaster",
    );
    setup::init(&config, false).await.unwrap();
    assert!(check(&config).await.passed());
}

#[tokio::test]
async fn check_fails_when_the_role_lacks_privileges() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    setup::init(&config, false).await.unwrap();
    let role = format!("{}_reader", db.name);
    let desktop = db.desktop().await;
    desktop
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"
        ))
        .await
        .unwrap();
    let as_reader = db.desktop_url.replace("postgres@", &format!("{role}@"));
    let limited = db.sample_config_at(&as_reader, &db.cloud_url);
    let report = check(&limited).await;
    let item = failure_with(
        &report,
        &format!("role {role} lacks INSERT on \"public\".\"mbreminder\""),
    );
    assert!(
        item.fix.as_deref().unwrap().starts_with("GRANT INSERT ON"),
        "{item:?}"
    );
}

#[tokio::test]
async fn check_reports_a_database_it_cannot_reach() {
    let db = TestDb::sample().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap().port();
    drop(listener);
    let text = tandem::sample::CONFIG.replace(
        "${CLOUD_URL}",
        &format!("postgresql://postgres@127.0.0.1:{closed}/x?sslmode=disable&connect_timeout=5"),
    );
    let config = tandem::config::Config::parse("t", &text, &db.env()).unwrap();
    let report = check(&config).await;
    let item = failure_with(&report, "cannot connect");
    assert_eq!(item.subject, "cloud connection");
    assert!(
        item.fix.as_deref().unwrap().contains("TANDEM_CLOUD_URL"),
        "{item:?}"
    );
}

#[tokio::test]
async fn check_warns_when_tandems_role_is_one_others_use_too() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    setup::init(&config, false).await.unwrap();
    let item = |report: &CheckReport, subject: &str| {
        report
            .items
            .iter()
            .find(|i| i.subject == subject)
            .cloned()
            .unwrap_or_else(|| panic!("no item {subject}: {:#?}", report.items))
    };
    // Nobody else in the database logs in as tandem's role: fine.
    let report = check(&config).await;
    assert_eq!(item(&report, "cloud role").status, Status::Ok);
    // Someone else logged in as it (a dashboard, an editor): a warning, not a failure.
    let (_editor, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname={} application_name=editor",
            db.cloud_port(),
            db.name
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let report = check(&config).await;
    assert!(report.passed(), "{:#?}", report.items);
    let cloud = item(&report, "cloud role");
    assert_eq!(cloud.status, Status::Warn, "{cloud:?}");
    assert!(cloud.message.contains("1 other session(s)"), "{cloud:?}");
    assert!(
        cloud
            .fix
            .as_deref()
            .unwrap()
            .contains("a login role of its own"),
        "{cloud:?}"
    );
}
