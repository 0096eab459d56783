//! Conflicts as an operator sees them, on records written into `tandem.conflicts` as the engine
//! writes them (after `tandem init`): `tandem status` counts them per kind and is degraded while
//! conflicts wait for a person past `[status]`'s thresholds, healthy again once they are resolved;
//! `tandem conflicts` lists the open ones, `--all` the settled ones too, `--json` every field. Records
//! of the older shape (no kind, no versions) list and count too, on either side.

use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::any_schema::{OWNERSHIP, installed_with};
use crate::operator::{config_file, tandem};
use crate::support::TestDb;

const ITEM: &str = "[[tables]]\ndesktop = \"item\"\nkey = [\"id\"]\n";

/// The cloud commit of every phone change in the records written here.
pub const CLOUD_LSN: &str = "0/1A2B3C4";

/// A conflict by concurrency as the reverse direction records it on the desktop.
pub struct Record<'a> {
    /// The row's key (`item.id`).
    pub key: i32,
    /// `update/update`, `update/delete`, `delete/update`, `insert/insert`.
    pub kind: &'a str,
    pub policy: &'a str,
    /// What the policy settled it to; none: left for a person (open).
    pub outcome: Option<&'a str>,
    /// How long ago it was detected, in seconds.
    pub age_seconds: f64,
}

impl Record<'_> {
    /// The versions: (base, desktop, mobile, result), each column's text; none for a deleted row.
    fn versions(&self) -> (Option<Value>, Option<Value>, Option<Value>, Option<Value>) {
        let row = |name: &str| {
            Some(json!({"id": self.key.to_string(), "name": name, "price": "2000.00"}))
        };
        let base = (self.kind != "insert/insert")
            .then(|| json!({"id": self.key.to_string(), "name": "base", "price": "1000.00"}));
        let desktop = if self.kind.starts_with("delete/") {
            None
        } else {
            row("desk")
        };
        let mobile = if self.kind.ends_with("/delete") {
            None
        } else {
            row("phone")
        };
        let result = match self.outcome {
            Some("desktop") => desktop.clone(),
            Some("mobile") => mobile.clone(),
            Some(_) => row("merged"),
            None => None,
        };
        (base, desktop, mobile, result)
    }

    /// Writes it into the desktop's `tandem.conflicts`; returns its id as `tandem conflicts` names it.
    pub async fn write(&self, desktop: &Client) -> String {
        let (base, d, m, result) = self.versions();
        let reason = format!(
            "{}: the desktop and a phone changed this row without seeing each other",
            self.kind
        );
        let id: i64 = desktop
            .query_one(
                "INSERT INTO tandem.conflicts (detected_at, direction, table_name, row_key, incoming,
                        current, reason, kind, base, desktop_row, mobile_row, columns, desktop_at,
                        mobile_at, cloud_lsn, cloud_xid, desktop_xid, policy, outcome, result,
                        resolved_at, resolution, resolved_by)
                 SELECT at, 'reverse', 'item', jsonb_build_object('id', $1::int), $4, $3, $5, $6, $2,
                        $3, $4, ARRAY['name'], at - interval '2 s', at - interval '1 s',
                        $7::text::pg_lsn, 900, 812, $8, $9::text, $10,
                        CASE WHEN $9::text IS NOT NULL THEN at END, $9::text,
                        CASE WHEN $9::text IS NOT NULL THEN 'policy ' || $8 END
                   FROM (SELECT now() - make_interval(secs => $11) AS at) t
                 RETURNING id",
                &[
                    &self.key,
                    &base,
                    &d,
                    &m,
                    &reason,
                    &self.kind,
                    &CLOUD_LSN,
                    &self.policy,
                    &self.outcome,
                    &result,
                    &self.age_seconds,
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("recording a conflict: {e}"))
            .get(0);
        format!("r{id}")
    }
}

/// A record of the older shape (only `incoming`, `current` and `reason`), open, on `client`'s side
/// (`direction` forward in the cloud, reverse on the desktop). Returns its id.
pub async fn write_old(client: &Client, direction: &str, key: i32) -> String {
    let id: i64 = client
        .query_one(
            "INSERT INTO tandem.conflicts (direction, table_name, row_key, incoming, current, reason)
             VALUES ($1, 'item', jsonb_build_object('id', $2::int),
                     jsonb_build_object('id', $2::int, 'name', 'incoming'),
                     jsonb_build_object('id', $2::int, 'name', 'current'),
                     'the other side owns the row') RETURNING id",
            &[&direction, &key],
        )
        .await
        .unwrap_or_else(|e| panic!("recording an old conflict: {e}"))
        .get(0);
    let prefix = if direction == "forward" { "f" } else { "r" };
    format!("{prefix}{id}")
}

/// Marks conflict `id` (`r7`, `f12`) resolved by a person, as `tandem conflicts resolve` does.
pub async fn resolve(client: &Client, id: &str, keep: &str) {
    let number: i64 = id[1..].parse().unwrap();
    client
        .execute(
            "UPDATE tandem.conflicts SET resolved_at = now(), resolution = $2,
                    resolved_by = 'ana (tandem conflicts resolve)' WHERE id = $1",
            &[&number, &keep],
        )
        .await
        .unwrap();
}

pub async fn item_db() -> (TestDb, tandem::config::Config) {
    installed_with(
        "CREATE TABLE item (id int PRIMARY KEY, name text, price numeric(12,2));",
        &format!(
            "CREATE TABLE item (id int PRIMARY KEY, name text, price numeric(12,2), {OWNERSHIP});"
        ),
        ITEM,
    )
    .await
}

/// `tandem status --json` with `[status]` settings `settings`: (exit code, the status).
fn status(db: &TestDb, settings: &str) -> (i32, Value) {
    let file = config_file(
        db,
        "conflict-status",
        &db.cloud_url,
        &format!("[status]\n{settings}"),
    );
    let (code, stdout, all) = tandem(&file, &["status", "--json"]);
    let _ = std::fs::remove_file(file);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    (code, json)
}

/// The problems of a status whose subject is `conflicts`.
fn conflict_problems(s: &Value) -> Vec<&Value> {
    s["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["subject"] == "conflicts")
        .collect()
}

#[tokio::test]
async fn an_open_conflict_degrades_the_status_until_it_is_resolved() {
    let (db, _config) = item_db().await;
    let desktop = db.desktop().await;
    let (code, s) = status(&db, "");
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["conflicts"]["by_type"], json!({}), "{s:#}");

    // Settled by a policy: counted, nothing waits.
    for (key, kind, outcome) in [
        (1, "update/update", "mobile"),
        (2, "update/update", "desktop"),
        (3, "insert/insert", "merged"),
    ] {
        Record {
            key,
            kind,
            policy: "latest",
            outcome: Some(outcome),
            age_seconds: 600.0,
        }
        .write(&desktop)
        .await;
    }
    let (code, s) = status(&db, "");
    assert_eq!(code, 0, "settled conflicts wait for nobody: {s:#}");
    let c = &s["conflicts"];
    assert_eq!(
        (c["open"].as_i64(), c["settled"].as_i64()),
        (Some(0), Some(3)),
        "{s:#}"
    );
    assert_eq!(c["oldest_open_age_seconds"], Value::Null, "{s:#}");
    assert_eq!(
        c["by_type"],
        json!({"update/update": {"open": 0, "settled": 2}, "insert/insert": {"open": 0, "settled": 1}}),
        "{s:#}"
    );

    // One left for a person, two minutes ago: degraded, exit 1, saying how many, how long, the fix.
    let open = Record {
        key: 4,
        kind: "update/delete",
        policy: "manual",
        outcome: None,
        age_seconds: 120.0,
    }
    .write(&desktop)
    .await;
    let (code, s) = status(&db, "");
    assert_eq!(code, 1, "{s:#}");
    assert_eq!(s["health"], "degraded", "{s:#}");
    let c = &s["conflicts"];
    assert_eq!(
        (
            c["open"].as_i64(),
            c["reverse"].as_i64(),
            c["forward"].as_i64()
        ),
        (Some(1), Some(1), Some(0)),
        "{s:#}"
    );
    assert_eq!(
        (c["settled"].as_i64(), c["overdue"].as_i64()),
        (Some(3), Some(1)),
        "{s:#}"
    );
    let age = c["oldest_open_age_seconds"].as_f64().unwrap();
    assert!((120.0..180.0).contains(&age), "{s:#}");
    assert_eq!(
        c["by_type"]["update/delete"],
        json!({"open": 1, "settled": 0}),
        "{s:#}"
    );
    assert_eq!(s["tables"][0]["conflicts"], 1, "{s:#}");
    let problems = conflict_problems(&s);
    assert_eq!(problems.len(), 1, "{s:#}");
    let p = problems[0];
    assert_eq!(p["health"], "degraded", "{s:#}");
    let message = p["message"].as_str().unwrap();
    assert!(
        message.starts_with("1 conflict(s) wait for a person to choose, the oldest for 1"),
        "{message}"
    );
    let fix = p["fix"].as_str().unwrap();
    assert!(
        fix.contains("`tandem conflicts list`")
            && fix.contains("`tandem conflicts resolve ID --keep desktop|mobile`"),
        "{fix}"
    );
    let file = config_file(&db, "conflict-text", &db.cloud_url, "");
    let (code, text, _) = tandem(&file, &["status"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("DEGRADED")
            && text.contains("conflicts 1 open (0 forward, 1 reverse), 3 settled;")
            && text.contains("update/delete 1 open, 0 settled")
            && text.contains("[degraded] conflicts: 1 conflict(s) wait for a person"),
        "{text}"
    );
    let _ = std::fs::remove_file(file);

    // Resolved: healthy again; it counts as settled.
    resolve(&desktop, &open, "desktop").await;
    let (code, s) = status(&db, "");
    assert_eq!(code, 0, "{s:#}");
    assert!(conflict_problems(&s).is_empty(), "{s:#}");
    let c = &s["conflicts"];
    assert_eq!(
        (c["open"].as_i64(), c["settled"].as_i64()),
        (Some(0), Some(4)),
        "{s:#}"
    );
    assert_eq!(
        c["by_type"]["update/delete"],
        json!({"open": 0, "settled": 1}),
        "{s:#}"
    );
}

#[tokio::test]
async fn the_conflict_thresholds_of_status_are_respected() {
    let (db, _config) = item_db().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    // One conflict that just opened.
    Record {
        key: 1,
        kind: "update/update",
        policy: "manual",
        outcome: None,
        age_seconds: 0.0,
    }
    .write(&desktop)
    .await;
    let degraded = |s: &Value| !conflict_problems(s).is_empty();
    let (code, s) = status(&db, "");
    assert!(
        code == 1 && degraded(&s),
        "the default degrades on one: {s:#}"
    );
    let (code, s) = status(&db, "conflicts_warn_count = 2\n");
    assert!(code == 0 && !degraded(&s), "one of two: {s:#}");
    let (code, s) = status(&db, "conflicts_warn_count = 0\n");
    assert!(code == 0 && !degraded(&s), "0 never degrades: {s:#}");
    let (code, s) = status(&db, "conflicts_warn_age_seconds = 3600\n");
    assert!(code == 0 && !degraded(&s), "not an hour old: {s:#}");
    assert_eq!(s["conflicts"]["open"], 1, "{s:#}");
    assert_eq!(s["conflicts"]["overdue"], 0, "{s:#}");

    // An older one, of the older shape, in the cloud: two hours waiting.
    let old = write_old(&cloud, "forward", 2).await;
    cloud
        .execute(
            "UPDATE tandem.conflicts SET detected_at = now() - interval '2 hours' WHERE id = $1",
            &[&old[1..].parse::<i64>().unwrap()],
        )
        .await
        .unwrap();
    let (code, s) = status(&db, "conflicts_warn_age_seconds = 3600\n");
    assert!(code == 1 && degraded(&s), "one past an hour: {s:#}");
    assert_eq!(s["conflicts"]["overdue"], 1, "{s:#}");
    assert_eq!(s["conflicts"]["forward"], 1, "{s:#}");
    assert_eq!(
        s["conflicts"]["by_type"]["unknown"],
        json!({"open": 1, "settled": 0}),
        "{s:#}"
    );
    let message = conflict_problems(&s)[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("the oldest for 720"), "{message}");
    let (code, s) = status(
        &db,
        "conflicts_warn_count = 2\nconflicts_warn_age_seconds = 3600\n",
    );
    assert!(code == 0 && !degraded(&s), "one of two past an hour: {s:#}");
    let (code, s) = status(&db, "conflicts_warn_count = 2\n");
    assert!(code == 1 && degraded(&s), "two of two: {s:#}");
    assert!(
        conflict_problems(&s)[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("2 conflict(s) wait"),
        "{s:#}"
    );
}

/// `tandem -c FILE args...`'s stdout, which must exit 0.
fn listed(file: &std::path::Path, args: &[&str]) -> String {
    let (code, stdout, all) = tandem(file, args);
    assert_eq!(code, 0, "tandem {args:?}: {all}");
    stdout
}

#[tokio::test]
async fn conflicts_lists_the_open_ones_all_with_the_settled_and_every_field_as_json() {
    let (db, _config) = item_db().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let settled = Record {
        key: 1,
        kind: "update/update",
        policy: "latest",
        outcome: Some("mobile"),
        age_seconds: 60.0,
    }
    .write(&desktop)
    .await;
    let open = Record {
        key: 2,
        kind: "update/delete",
        policy: "manual",
        outcome: None,
        age_seconds: 30.0,
    }
    .write(&desktop)
    .await;
    let old_open = write_old(&cloud, "forward", 3).await;
    let old_resolved = write_old(&desktop, "reverse", 4).await;
    resolve(&desktop, &old_resolved, "mobile").await;
    let file = config_file(&db, "conflicts-list", &db.cloud_url, "");

    // The open ones, the same with or without `list`.
    let text = listed(&file, &["conflicts"]);
    assert_eq!(text, listed(&file, &["conflicts", "list"]));
    assert!(
        text.contains(&format!(
            "{open} reverse item {{\"id\":2}}: update/delete, policy manual, open: choose with \
             tandem conflicts resolve {open} --keep desktop|mobile\n"
        )),
        "{text}"
    );
    for line in [
        "    columns in conflict: name\n",
        " (desktop xid 812)\n",
        &format!(" (cloud commit LSN {CLOUD_LSN}, cloud xid 900)\n"),
        "    base:    {\"id\":\"2\",\"name\":\"base\",\"price\":\"1000.00\"}\n",
        "    desktop: {\"id\":\"2\",\"name\":\"desk\",\"price\":\"2000.00\"}\n",
        "    mobile:  deleted\n",
        "    result:  none yet (open)\n",
        &format!(
            "{old_open} forward item {{\"id\":3}}: kind unknown, policy -, open: choose with \
             tandem conflicts resolve {old_open} --keep desktop|mobile\n"
        ),
        "    incoming: {\"id\":3,\"name\":\"incoming\"}\n",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
    assert!(!text.contains(&format!("{settled} ")), "{text}");
    assert!(!text.contains(&format!("{old_resolved} ")), "{text}");
    assert!(text.ends_with("conflicts: 2 open\n"), "{text}");

    // --all: the settled ones too, before the subcommand or after it.
    let all = listed(&file, &["conflicts", "--all"]);
    assert_eq!(all, listed(&file, &["conflicts", "list", "--all"]));
    assert!(
        all.contains(&format!(
            "{settled} reverse item {{\"id\":1}}: update/update, policy latest, outcome mobile\n"
        )),
        "{all}"
    );
    assert!(all.contains(" by policy latest\n"), "{all}");
    assert!(
        all.contains("    result:  {\"id\":\"1\",\"name\":\"phone\",\"price\":\"2000.00\"}\n"),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "{old_resolved} reverse item {{\"id\":4}}: kind unknown, policy -, outcome mobile\n"
        )),
        "{all}"
    );
    assert!(all.ends_with("conflicts: 2 open, 2 settled\n"), "{all}");
    // --all chooses nothing.
    let (code, _, said) = tandem(
        &file,
        &["conflicts", "--all", "resolve", &open, "--keep", "desktop"],
    );
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("--all"), "{said}");

    // --json: every field.
    let json_of = |args: &[&str]| -> Vec<Value> {
        let stdout = listed(&file, args);
        serde_json::from_str::<Value>(&stdout)
            .unwrap_or_else(|e| panic!("{e}: {stdout}"))
            .as_array()
            .unwrap()
            .clone()
    };
    let by_id = |list: &[Value], id: &str| -> Value {
        list.iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {list:#?}"))
            .clone()
    };
    let list = json_of(&["conflicts", "--json"]);
    assert_eq!(list.len(), 2, "{list:#?}");
    let c = by_id(&list, &open);
    for (field, want) in [
        ("direction", json!("reverse")),
        ("table", json!("item")),
        ("row_key", json!({"id": 2})),
        ("kind", json!("update/delete")),
        ("policy", json!("manual")),
        ("outcome", Value::Null),
        ("result", Value::Null),
        ("resolved_at", Value::Null),
        (
            "base",
            json!({"id": "2", "name": "base", "price": "1000.00"}),
        ),
        (
            "desktop_row",
            json!({"id": "2", "name": "desk", "price": "2000.00"}),
        ),
        ("mobile_row", Value::Null),
        ("columns", json!(["name"])),
        ("cloud_lsn", json!(CLOUD_LSN)),
        ("cloud_xid", json!(900)),
        ("desktop_xid", json!(812)),
    ] {
        assert_eq!(c[field], want, "{field}: {c:#}");
    }
    for field in ["desktop_at", "mobile_at"] {
        let at = c[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {c:#}"));
        assert!(
            at.len() == 27 && at.ends_with('Z'),
            "{field} to the microsecond: {at}"
        );
    }
    assert!(c["desktop_at"].as_str() < c["mobile_at"].as_str(), "{c:#}");
    let old = by_id(&list, &old_open);
    assert_eq!(old["direction"], "forward", "{old:#}");
    assert_eq!(
        old["incoming"],
        json!({"id": 3, "name": "incoming"}),
        "{old:#}"
    );
    assert_eq!(old["reason"], "the other side owns the row", "{old:#}");
    for field in [
        "kind",
        "base",
        "desktop_row",
        "mobile_row",
        "columns",
        "desktop_at",
        "mobile_at",
        "cloud_lsn",
        "cloud_xid",
        "desktop_xid",
        "policy",
        "outcome",
        "result",
    ] {
        assert!(
            old.get(field).is_some_and(Value::is_null),
            "{field}: {old:#}"
        );
    }

    let list = json_of(&["conflicts", "list", "--all", "--json"]);
    assert_eq!(list.len(), 4, "{list:#?}");
    let s = by_id(&list, &settled);
    assert_eq!(s["outcome"], "mobile", "{s:#}");
    assert_eq!(s["resolution"], "mobile", "{s:#}");
    assert_eq!(s["resolved_by"], "policy latest", "{s:#}");
    assert!(s["resolved_at"].is_string(), "{s:#}");
    assert_eq!(s["result"], s["mobile_row"], "{s:#}");
    let r = by_id(&list, &old_resolved);
    assert_eq!(r["resolution"], "mobile", "{r:#}");
    assert_eq!(r["outcome"], Value::Null, "{r:#}");
    let _ = std::fs::remove_file(file);
}
