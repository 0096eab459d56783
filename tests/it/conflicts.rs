//! `tandem conflicts resolve` for a cloud-key table: the phone's row is named by its cloud key;
//! keeping the desktop removes it from the cloud, keeping the phone's brings it to the desktop beside
//! the desktop's own version (no desktop row can be named as the one it replaces). Odd identifiers
//! throughout: the statements quote every name.

use serde_json::Value;

use crate::any_schema::{OWNERSHIP, installed_with, run_once};
use crate::operator::{config_file_of, every_conflict_says_who_chose, tandem};
use crate::support::{count, rows};

const ODD: &str = "[[tables]]\ndesktop = \"Odd Item\"\nkey = [\"the id\"]\n";

/// A desktop-key table with odd names on both sides, tandem installed.
async fn odd_items() -> (crate::support::TestDb, tandem::config::Config) {
    installed_with(
        r#"CREATE TABLE "Odd Item" ("the id" int PRIMARY KEY, "na'me" text);"#,
        &format!(
            r#"CREATE TABLE "Odd Item" ("the id" int PRIMARY KEY, "na'me" text, {OWNERSHIP});"#
        ),
        ODD,
    )
    .await
}

const TABLES: &str =
    "[[tables]]\ndesktop = \"Task List\"\ncloud_key = \"task ID\"\nscope = [\"Grp\"]\n";

#[tokio::test]
async fn a_cloud_key_tables_conflicts_are_resolved_by_cloud_key_keeping_either_side() {
    let (db, config) = installed_with(
        r#"CREATE TABLE "Task List" ("Grp" int, "what's" text, done bool);"#,
        &format!(
            r#"CREATE TABLE "Task List" ("task ID" bigserial PRIMARY KEY, "Grp" int, "what's" text, done bool, {OWNERSHIP});"#
        ),
        TABLES,
    )
    .await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    desktop
        .batch_execute(
            r#"INSERT INTO "Task List" VALUES (1, 'a', false), (1, 'b', false), (2, 'c', false), (3, 'e', false)"#,
        )
        .await
        .unwrap();
    run_once(&config).await;
    // tandem stopped: a phone and the desktop both edit 'a' (scope 1) and 'c' (scope 2); a phone
    // deletes 'e' (scope 3), which the desktop edits.
    cloud
        .batch_execute(
            r#"UPDATE "Task List" SET "what's" = "what's" || ' phone' WHERE "what's" IN ('a', 'c');
               DELETE FROM "Task List" WHERE "what's" = 'e'"#,
        )
        .await
        .unwrap();
    desktop
        .batch_execute(
            r#"UPDATE "Task List" SET "what's" = "what's" || ' desk' WHERE "what's" IN ('a', 'c', 'e')"#,
        )
        .await
        .unwrap();
    run_once(&config).await;
    let file = config_file_of(&db, "scoped-conflicts", &db.cloud_url, TABLES);
    let (code, stdout, all) = tandem(&file, &["conflicts", "--json"]);
    assert_eq!(code, 0, "{all}");
    let list: Value = serde_json::from_str(&stdout).unwrap();
    let of = |name: &str| -> String {
        let c = list
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["incoming"]["what's"] == name)
            .unwrap_or_else(|| panic!("no conflict for {name}: {stdout}"));
        assert!(c["row_key"]["cloud_key"].is_string() || c["row_key"]["cloud_key"].is_number());
        c["id"].as_str().unwrap().to_string()
    };
    let (a, c) = (of("a phone"), of("c phone"));
    // The phone's delete is recorded too (nothing dropped without a record).
    let e = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["current"]["what's"] == "e" && c["incoming"].is_null())
        .unwrap_or_else(|| panic!("no conflict for the phone's delete of e: {stdout}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Keeping the phone's side cannot name the desktop's copy: it says how, and changes nothing.
    let (code, text, _) = tandem(&file, &["conflicts", "resolve", &e, "--keep", "mobile"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("delete it on the desktop by hand"), "{text}");
    let (code, text, all) = tandem(&file, &["conflicts", "resolve", &e, "--keep", "desktop"]);
    assert_eq!(code, 0, "{all}");
    assert!(text.contains("a phone deleted it"), "{text}");
    let phone_c: i64 = cloud
        .query_one(
            r#"SELECT "task ID" FROM "Task List" WHERE "what's" = 'c phone'"#,
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // Scope 2: the desktop's. The phone's row leaves the cloud; the desktop's version is the scope.
    let (code, text, all) = tandem(&file, &["conflicts", "resolve", &c, "--keep", "desktop"]);
    assert_eq!(code, 0, "{all}");
    assert!(text.contains("resolved: kept the desktop rows"), "{text}");
    let scope = |n: i32| format!(r#""Grp" = {n}"#);
    assert_eq!(
        rows(&cloud, r#""Task List""#, r#""what's", source"#, &scope(2)).await,
        vec![r#"("c desk",D)"#.to_string()]
    );
    assert_eq!(
        count(
            &cloud,
            &format!(r#"SELECT count(*) FROM "Task List" WHERE "task ID" = {phone_c}"#)
        )
        .await,
        0
    );

    // Scope 1: the phone's. It is brought beside the desktop's own version, which stays.
    let (code, text, all) = tandem(&file, &["conflicts", "resolve", &a, "--keep", "mobile"]);
    assert_eq!(code, 0, "{all}");
    assert!(
        text.contains("resolved: brought the phone's row") && text.contains("stays"),
        "{text}"
    );
    let desktop_scope1 = vec![
        r#"("a desk")"#.to_string(),
        r#"("a phone")"#.to_string(),
        "(b)".to_string(),
    ];
    assert_eq!(
        rows(&desktop, r#""Task List""#, r#""what's""#, &scope(1)).await,
        desktop_scope1
    );

    // The streams afterwards: nothing comes back, nothing doubles, no new conflict.
    run_once(&config).await;
    assert_eq!(
        rows(&desktop, r#""Task List""#, r#""what's""#, &scope(1)).await,
        desktop_scope1
    );
    assert_eq!(
        rows(&desktop, r#""Task List""#, r#""what's""#, &scope(2)).await,
        vec![r#"("c desk")"#.to_string()]
    );
    for client in [&desktop, &cloud] {
        assert_eq!(
            rows(client, r#""Task List""#, r#""what's""#, &scope(3)).await,
            vec![r#"("e desk")"#.to_string()]
        );
    }
    assert_eq!(
        rows(&cloud, r#""Task List""#, r#""what's", source"#, &scope(1)).await,
        vec![
            r#"("a desk",D)"#.to_string(),
            r#"("a phone",M)"#.to_string(),
            "(b,D)".to_string()
        ]
    );
    let (_, text, _) = tandem(&file, &["conflicts"]);
    assert!(text.contains("conflicts: 0 open"), "{text}");
    // A reconcile finds both sides equal.
    let (code, stdout, all) = tandem(&file, &["reconcile", "--dry-run", "--json"]);
    assert_eq!(code, 0, "{all}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let (found, differing) = drift(&report);
    assert!(found >= 4, "no counts in {report:#}");
    assert_eq!(differing, 0, "{report:#}");
    // Who chose is recorded; a second resolve says it is done.
    every_conflict_says_who_chose(&file);
    let (code, text, _) = tandem(&file, &["conflicts", "resolve", &a, "--keep", "desktop"]);
    assert_eq!(code, 1);
    assert!(text.contains("already resolved, kept mobile"), "{text}");
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn a_desktop_key_tables_conflicts_with_odd_names_are_resolved_either_way() {
    let (db, config) = odd_items().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    desktop
        .batch_execute(r#"INSERT INTO "Odd Item" VALUES (1, 'desk'), (2, 'desk')"#)
        .await
        .unwrap();
    run_once(&config).await;
    cloud
        .batch_execute(r#"UPDATE "Odd Item" SET "na'me" = 'phone edit'"#)
        .await
        .unwrap();
    desktop
        .batch_execute(r#"UPDATE "Odd Item" SET "na'me" = 'desk edit'"#)
        .await
        .unwrap();
    run_once(&config).await;
    let file = config_file_of(&db, "odd-conflicts", &db.cloud_url, ODD);
    let (of, stdout) = open_by_key(&file);
    let (one, two) = (of(1), of(2));
    assert!(!one.is_empty() && !two.is_empty(), "{stdout}");
    let resolve = |ids: &[String], keep: &str| {
        let mut args = vec!["conflicts", "resolve"];
        args.extend(ids.iter().map(String::as_str));
        args.extend(["--keep", keep]);
        let (code, text, all) = tandem(&file, &args);
        assert_eq!(code, 0, "{all}");
        assert!(text.contains("resolved: kept"), "{text}");
    };
    resolve(&two, "mobile");
    resolve(&one, "desktop");
    run_once(&config).await;
    both_end_as(
        &desktop,
        &cloud,
        &file,
        &[r#"(1,"desk edit")"#, r#"(2,"phone edit")"#],
        &["(1,D)", "(2,M)"],
    )
    .await;
    let _ = std::fs::remove_file(file);
}

/// Deletes against edits: a phone deleted rows the desktop changed, the desktop deleted a row a phone
/// changed. Resolving either way applies the side chosen, the delete included.
#[tokio::test]
async fn conflicts_of_a_delete_against_an_edit_are_resolved_either_way() {
    let (db, config) = odd_items().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    desktop
        .batch_execute(
            r#"INSERT INTO "Odd Item" VALUES (1, 'desk'), (2, 'desk'), (3, 'desk'), (4, 'desk')"#,
        )
        .await
        .unwrap();
    run_once(&config).await;
    // Rows 1 and 2: a phone deletes, the desktop edits. Rows 3 and 4: the desktop deletes, a phone edits.
    cloud
        .batch_execute(
            r#"DELETE FROM "Odd Item" WHERE "the id" IN (1, 2);
               UPDATE "Odd Item" SET "na'me" = 'phone edit' WHERE "the id" IN (3, 4)"#,
        )
        .await
        .unwrap();
    desktop
        .batch_execute(
            r#"UPDATE "Odd Item" SET "na'me" = 'desk edit' WHERE "the id" IN (1, 2);
               DELETE FROM "Odd Item" WHERE "the id" IN (3, 4)"#,
        )
        .await
        .unwrap();
    run_once(&config).await;
    let file = config_file_of(&db, "delete-conflicts", &db.cloud_url, ODD);
    let (of, stdout) = open_by_key(&file);
    for key in 1..=4 {
        assert!(!of(key).is_empty(), "no conflict for row {key}: {stdout}");
    }
    let resolve = |ids: Vec<String>, keep: &str| {
        let mut args = vec!["conflicts", "resolve"];
        args.extend(ids.iter().map(String::as_str));
        args.extend(["--keep", keep]);
        let (code, text, all) = tandem(&file, &args);
        assert_eq!(code, 0, "{all}");
        assert!(text.contains("resolved: kept"), "{text}");
    };
    // The phone's side: row 1 deleted on the desktop too, row 3 back on the desktop as the phone has it.
    resolve([of(1), of(3)].concat(), "mobile");
    // The desktop's side: row 2 back in the cloud as the desktop has it, row 4 deleted in the cloud.
    resolve([of(2), of(4)].concat(), "desktop");
    run_once(&config).await;
    both_end_as(
        &desktop,
        &cloud,
        &file,
        &[r#"(2,"desk edit")"#, r#"(3,"phone edit")"#],
        &["(2,D)", "(3,M)"],
    )
    .await;
    let _ = std::fs::remove_file(file);
}

/// The open conflicts of "Odd Item" by the row's key: the ids of key `k` (and the listing).
fn open_by_key(file: &std::path::Path) -> (impl Fn(i64) -> Vec<String> + use<>, String) {
    let (_, stdout, all) = tandem(file, &["conflicts", "--json"]);
    let list: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    let of = move |key: i64| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .filter(|c| c["row_key"]["the id"].as_i64() == Some(key))
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    };
    (of, stdout)
}

/// Both sides hold exactly `expected` rows of "Odd Item" (`(key,name)`), the cloud's owned as
/// `sources` (`(key,source)`), and no conflict is open, each resolved by the command.
async fn both_end_as(
    desktop: &tokio_postgres::Client,
    cloud: &tokio_postgres::Client,
    file: &std::path::Path,
    expected: &[&str],
    sources: &[&str],
) {
    let both = |client| rows(client, r#""Odd Item""#, r#""the id", "na'me""#, "true");
    assert_eq!(both(desktop).await, expected);
    assert_eq!(both(cloud).await, expected);
    assert_eq!(
        rows(cloud, r#""Odd Item""#, r#""the id", source"#, "true").await,
        sources
    );
    let (_, text, _) = tandem(file, &["conflicts"]);
    assert!(text.contains("conflicts: 0 open"), "{text}");
    every_conflict_says_who_chose(file);
}

/// How many drift counts (`inserted`, `updated`, `deleted`, `conflicts`) a reconcile report holds,
/// and their sum.
fn drift(v: &Value) -> (usize, u64) {
    match v {
        Value::Object(map) => map.iter().fold((0, 0), |(n, sum), (k, v)| {
            if ["inserted", "updated", "deleted", "conflicts"].contains(&k.as_str())
                && let Some(x) = v.as_u64()
            {
                (n + 1, sum + x)
            } else {
                let (m, s) = drift(v);
                (n + m, sum + s)
            }
        }),
        Value::Array(items) => items.iter().fold((0, 0), |(n, sum), v| {
            let (m, s) = drift(v);
            (n + m, sum + s)
        }),
        _ => (0, 0),
    }
}
