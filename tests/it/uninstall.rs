//! `tandem uninstall`: removes exactly what init installed.

use tandem::setup;

use crate::support::{TestDb, catalog_snapshot};

#[tokio::test]
async fn uninstall_leaves_both_databases_as_they_were_before_init() {
    let db = TestDb::sample().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    // Identities init must put back: one USING INDEX, one NOTHING; the rest DEFAULT.
    cloud
        .batch_execute(
            "ALTER TABLE reminder REPLICA IDENTITY USING INDEX reminder_pkey;
             ALTER TABLE jobmaster REPLICA IDENTITY NOTHING;",
        )
        .await
        .unwrap();
    let before = (
        catalog_snapshot(&desktop).await,
        catalog_snapshot(&cloud).await,
    );

    let config = db.sample_config();
    setup::init(&config, false).await.unwrap();
    // Some activity, so the outbox is not empty.
    desktop
        .batch_execute("INSERT INTO orgmaster (org_id, org_name) VALUES (1, 'a')")
        .await
        .unwrap();
    assert_ne!(catalog_snapshot(&cloud).await, before.1);

    let (mut d, mut c, plan) = setup::prepare_uninstall(&config).await.unwrap();
    assert!(
        plan.losses
            .iter()
            .any(|l| l.contains("desktop tandem.outbox")),
        "{:?}",
        plan.losses
    );
    setup::uninstall(&mut d, &mut c, &plan).await.unwrap();
    let after = (
        catalog_snapshot(&desktop).await,
        catalog_snapshot(&cloud).await,
    );
    assert_eq!(after.0, before.0, "desktop catalog differs after uninstall");
    assert_eq!(after.1, before.1, "cloud catalog differs after uninstall");

    let (_, _, again) = setup::prepare_uninstall(&config).await.unwrap();
    assert!(again.is_empty(), "{again:#?}");
}

#[tokio::test]
async fn uninstall_finds_what_init_installed_even_after_the_config_changed() {
    let db = TestDb::sample().await;
    let cloud = db.cloud().await;
    let before = catalog_snapshot(&cloud).await;
    setup::init(&db.sample_config(), false).await.unwrap();
    // The operator renames the slot and publication in the config before uninstalling.
    let text = tandem::sample::CONFIG
        .replace("slot = \"tandem\"", "slot = \"renamed\"")
        .replace("publication = \"tandem\"", "publication = \"renamed\"")
        .replace("[[tables]]\ndesktop = \"workdiary\"\ncloud_key = \"wd_id\"\nscope = [\"staff_id\", \"wd_date\"]\n", "");
    let changed = tandem::config::Config::parse("changed", &text, &db.env()).unwrap();
    let (mut d, mut c, plan) = setup::prepare_uninstall(&changed).await.unwrap();
    setup::uninstall(&mut d, &mut c, &plan).await.unwrap();
    assert_eq!(catalog_snapshot(&cloud).await, before);
    let slots: i64 = cloud
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
}
