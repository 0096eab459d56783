//! `tandem conflicts resolve`: a person's choice for a conflict by concurrency. Tables under the
//! `manual` policy hold both sides' versions until someone chooses; the version chosen becomes the
//! desktop's row and travels to the cloud like any desktop change. A conflict a policy settled is
//! reversed the same way. Odd identifiers throughout: the statements quote every name.

use serde_json::Value;

use crate::any_schema::{OWNERSHIP, installed_with, run_once};
use crate::operator::{config_file_of, every_conflict_says_who_chose, tandem};
use crate::support::{count, rows};

const ODD: &str = "[[tables]]\ndesktop = \"Odd Item\"\nkey = [\"the id\"]\npolicy = \"manual\"\n";

/// A desktop-key table with odd names on both sides, tandem installed with `tables`.
async fn odd_items(tables: &str) -> (crate::support::TestDb, tandem::config::Config) {
    installed_with(
        r#"CREATE TABLE "Odd Item" ("the id" int PRIMARY KEY, "na'me" text);"#,
        &format!(
            r#"CREATE TABLE "Odd Item" ("the id" int PRIMARY KEY, "na'me" text, {OWNERSHIP});"#
        ),
        tables,
    )
    .await
}

const TABLES: &str = "[[tables]]\ndesktop = \"Task List\"\ncloud_key = \"task ID\"\nscope = [\"Grp\"]\npolicy = \"manual\"\n";

#[tokio::test]
async fn a_cloud_key_tables_conflicts_are_resolved_keeping_either_side_in_place() {
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
            r#"INSERT INTO "Task List" VALUES (1, 'a', false), (1, 'b', false), (2, 'c', false),
                                              (3, 'e', false), (4, 'f', false)"#,
        )
        .await
        .unwrap();
    run_once(&config).await;
    let id_of = async |what: &str| -> i64 {
        cloud
            .query_one(
                r#"SELECT "task ID" FROM "Task List" WHERE "what's" = $1"#,
                &[&what],
            )
            .await
            .unwrap()
            .get(0)
    };
    let (id_a, id_c) = (id_of("a").await, id_of("c").await);
    // tandem stopped: a phone and the desktop both edit 'a' (scope 1) and 'c' (scope 2); a phone
    // deletes 'e' (scope 3) and 'f' (scope 4), which the desktop edits.
    cloud
        .batch_execute(
            r#"UPDATE "Task List" SET "what's" = "what's" || ' phone' WHERE "what's" IN ('a', 'c');
               DELETE FROM "Task List" WHERE "what's" IN ('e', 'f')"#,
        )
        .await
        .unwrap();
    desktop
        .batch_execute(
            r#"UPDATE "Task List" SET "what's" = "what's" || ' desk' WHERE "what's" IN ('a', 'c', 'e', 'f')"#,
        )
        .await
        .unwrap();
    run_once(&config).await;
    // Nothing applied either way while a person decides: each side keeps its own version.
    let scope = |n: i32| format!(r#""Grp" = {n}"#);
    assert_eq!(
        rows(&cloud, r#""Task List""#, r#""what's""#, &scope(1)).await,
        vec![r#"("a phone")"#.to_string(), "(b)".to_string()]
    );
    assert_eq!(
        rows(&desktop, r#""Task List""#, r#""what's""#, &scope(1)).await,
        vec![r#"("a desk")"#.to_string(), "(b)".to_string()]
    );
    let file = config_file_of(&db, "scoped-conflicts", &db.cloud_url, TABLES);
    let (code, stdout, all) = tandem(&file, &["conflicts", "--json"]);
    assert_eq!(code, 0, "{all}");
    let list: Value = serde_json::from_str(&stdout).unwrap();
    let of = |desk: &str| -> String {
        let c = list
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["current"]["what's"] == desk)
            .unwrap_or_else(|| panic!("no conflict for {desk}: {stdout}"));
        assert!(c["row_key"]["cloud_key"].is_string() || c["row_key"]["cloud_key"].is_number());
        c["id"].as_str().unwrap().to_string()
    };
    let (a, c, e, f) = (of("a desk"), of("c desk"), of("e desk"), of("f desk"));
    let resolve = |id: &str, keep: &str| {
        let (code, text, all) = tandem(&file, &["conflicts", "resolve", id, "--keep", keep]);
        assert_eq!(code, 0, "{all}");
        assert!(text.contains(&format!("the {keep} version")), "{text}");
    };
    resolve(&a, "mobile");
    resolve(&c, "desktop");
    resolve(&e, "mobile");
    resolve(&f, "desktop");
    run_once(&config).await;
    let expected = [
        (1, vec![r#"("a phone")"#, "(b)"]),
        (2, vec![r#"("c desk")"#]),
        (3, vec![]),
        (4, vec![r#"("f desk")"#]),
    ];
    for (n, rows_of_scope) in expected {
        for client in [&desktop, &cloud] {
            assert_eq!(
                rows(client, r#""Task List""#, r#""what's""#, &scope(n)).await,
                rows_of_scope,
                "scope {n}"
            );
        }
    }
    // Each phone row stays the row it was, changed in place: no copy, no new cloud key.
    assert_eq!(id_of("a phone").await, id_a);
    assert_eq!(id_of("c desk").await, id_c);
    let (_, text, _) = tandem(&file, &["conflicts"]);
    assert!(text.contains("conflicts: 0 open"), "{text}");
    // A reconcile finds both sides equal.
    let (code, stdout, all) = tandem(&file, &["reconcile", "--dry-run", "--json"]);
    assert_eq!(code, 0, "{all}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let (found, differing) = drift(&report);
    assert!(found >= 4, "no counts in {report:#}");
    assert_eq!(differing, 0, "{report:#}");
    // Who chose is recorded; the same choice again says it is made.
    every_conflict_says_who_chose(&file);
    let (code, text, _) = tandem(&file, &["conflicts", "resolve", &a, "--keep", "mobile"]);
    assert_eq!(code, 1);
    assert!(
        text.contains("already resolved, keeping the mobile version"),
        "{text}"
    );
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn a_desktop_key_tables_conflicts_with_odd_names_are_resolved_either_way() {
    let (db, config) = odd_items(ODD).await;
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
    assert!(one.len() == 1 && two.len() == 1, "{stdout}");
    resolve(&file, &two, "mobile");
    resolve(&file, &one, "desktop");
    run_once(&config).await;
    both_end_as(
        &desktop,
        &cloud,
        &file,
        &[r#"(1,"desk edit")"#, r#"(2,"phone edit")"#],
    )
    .await;
    let _ = std::fs::remove_file(file);
}

/// Deletes against edits: a phone deleted rows the desktop changed, the desktop deleted a row a phone
/// changed. Resolving either way applies the side chosen, the delete included.
#[tokio::test]
async fn conflicts_of_a_delete_against_an_edit_are_resolved_either_way() {
    let (db, config) = odd_items(ODD).await;
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
        assert_eq!(of(key).len(), 1, "row {key}: {stdout}");
    }
    // The phone's side: row 1 deleted on the desktop too, row 3 back on the desktop as the phone has it.
    resolve(&file, &[of(1), of(3)].concat(), "mobile");
    // The desktop's side: row 2 back in the cloud as the desktop has it, row 4 deleted in the cloud.
    resolve(&file, &[of(2), of(4)].concat(), "desktop");
    run_once(&config).await;
    both_end_as(
        &desktop,
        &cloud,
        &file,
        &[r#"(2,"desk edit")"#, r#"(3,"phone edit")"#],
    )
    .await;
    let _ = std::fs::remove_file(file);
}

/// A conflict a policy settled, chosen again by a person: the other side's version is written over
/// the policy's result on both sides. A row changed since is not guessed over.
#[tokio::test]
async fn a_settled_conflict_is_reversed_by_a_persons_choice_unless_the_row_changed_since() {
    let tables = "[[tables]]\ndesktop = \"Odd Item\"\nkey = [\"the id\"]\npolicy = \"desktop\"\n";
    let (db, config) = odd_items(tables).await;
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
    // Settled by the policy: the desktop's version on both sides, both conflicts recorded as resolved.
    let file = config_file_of(&db, "settled-conflicts", &db.cloud_url, tables);
    let (_, stdout, _) = tandem(&file, &["conflicts", "list", "--all", "--json"]);
    let list: Value = serde_json::from_str(&stdout).unwrap();
    let settled: Vec<(i64, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["resolved_by"], "policy desktop", "{c:#}");
            assert_eq!(c["resolution"], "desktop", "{c:#}");
            (
                c["row_key"]["the id"].as_i64().unwrap(),
                c["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(settled.len(), 2, "{stdout}");
    for client in [&desktop, &cloud] {
        assert_eq!(
            count(
                client,
                r#"SELECT count(*) FROM "Odd Item" WHERE "na'me" = 'desk edit'"#
            )
            .await,
            2
        );
    }
    let id = |key: i64| settled.iter().find(|s| s.0 == key).unwrap().1.clone();
    // Row 2 changed on the desktop since: reversing its conflict is refused, nothing written.
    desktop
        .batch_execute(r#"UPDATE "Odd Item" SET "na'me" = 'desk again' WHERE "the id" = 2"#)
        .await
        .unwrap();
    let (code, text, _) = tandem(&file, &["conflicts", "resolve", &id(2), "--keep", "mobile"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("changed since") && text.contains("desk again"),
        "{text}"
    );
    resolve(&file, &[id(1)], "mobile");
    run_once(&config).await;
    for client in [&desktop, &cloud] {
        assert_eq!(
            rows(client, r#""Odd Item""#, r#""the id", "na'me""#, "true").await,
            [r#"(1,"phone edit")"#, r#"(2,"desk again")"#]
        );
    }
    let (_, stdout, _) = tandem(&file, &["conflicts", "list", "--all", "--json"]);
    let list: Value = serde_json::from_str(&stdout).unwrap();
    let one = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id(1).as_str())
        .unwrap();
    assert_eq!(one["resolution"], "mobile", "{one:#}");
    assert!(
        one["resolved_by"]
            .as_str()
            .unwrap()
            .contains("tandem conflicts resolve"),
        "{one:#}"
    );
    let _ = std::fs::remove_file(file);
}

/// `tandem conflicts resolve IDS --keep KEEP`, which must resolve every one.
fn resolve(file: &std::path::Path, ids: &[String], keep: &str) {
    let mut args = vec!["conflicts", "resolve"];
    args.extend(ids.iter().map(String::as_str));
    args.extend(["--keep", keep]);
    let (code, text, all) = tandem(file, &args);
    assert_eq!(code, 0, "{all}");
    assert_eq!(text.matches("resolved: the").count(), ids.len(), "{text}");
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

/// Both sides hold exactly `expected` rows of "Odd Item" (`(key,name)`), and no conflict is open,
/// each resolved by the command.
async fn both_end_as(
    desktop: &tokio_postgres::Client,
    cloud: &tokio_postgres::Client,
    file: &std::path::Path,
    expected: &[&str],
) {
    let both = |client| rows(client, r#""Odd Item""#, r#""the id", "na'me""#, "true");
    assert_eq!(both(desktop).await, expected);
    assert_eq!(both(cloud).await, expected);
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
