//! Each kind of conflict under each policy (issue 16): the row both sides end with, and the record.
//!
//! One database per table kind, one table per policy in it, one row (or, for a cloud-key table, one
//! scope) per case. tandem is stopped while both sides write, so no side sees the other's change:
//! `run --once` syncs first, the desktop and a phone (a plain cloud session) write, and the next
//! `run --once` finds the conflicts on the desktop and settles them. Every case is a line of
//! [`CASES`]: the statements each side runs, in which order, and what each policy makes of them.
//! Odd identifiers throughout: every statement tandem builds must quote them.

use std::collections::HashMap;

use serde_json::{Map, Value};
use tandem::config::Config;
use tokio_postgres::Client;

use crate::any_schema::{OWNERSHIP, installed_with, run_once};
use crate::support::{TestDb, count};

/// A version of a row: the texts of `"Note's A"`, `"b col"`, `"Amount"` (a `numeric(12,2)`).
type Row = [&'static str; 3];

const BASE: Row = ["a0", "b0", "1000.00"];
/// The desktop's edit: `"b col"` and `"Amount"`.
const DESK: Row = ["a0", "b desk", "3000.50"];
/// The phone's edit: `"Note's A"` and `"Amount"` (written `2000`: the column's type makes it `2000.00`).
const PHONE: Row = ["a phone", "b0", "2000.00"];

pub const DESK_EDIT: &str = r#"UPDATE {t} SET "b col" = 'b desk', "Amount" = 3000.5 WHERE {row}"#;
pub const PHONE_EDIT: &str =
    r#"UPDATE {t} SET "Note's A" = 'a phone', "Amount" = 2000 WHERE {row}"#;
const DELETE: &str = "DELETE FROM {t} WHERE {row}";

/// What each policy makes of a case: the outcome, and the row both sides get (None: deleted).
/// `manual` settles nothing: each side keeps its own version.
struct Case {
    /// The desktop key of its row, or the scope of its row in a cloud-key table.
    n: i32,
    what: &'static str,
    kind: &'static str,
    /// A desktop-key table only (a cloud-key table has no key two sides could both create).
    keyed_only: bool,
    /// Whether the row exists (as [`BASE`]) before the conflict.
    seeded: bool,
    /// The desktop's statement in a transaction that begins before the phone's commit and ends
    /// after it.
    early: Option<&'static str>,
    /// The desktop's statement before the phone's commit.
    before: Option<&'static str>,
    phone: &'static str,
    /// The desktop's statement after the phone's commit.
    after: Option<&'static str>,
    base: Option<Row>,
    desktop: Option<Row>,
    mobile: Option<Row>,
    /// `latest`'s outcome and row.
    latest: (&'static str, Option<Row>),
    /// The columns both changed (NULL: one side deleted the row).
    columns: Option<&'static [&'static str]>,
    /// Whether the desktop's time (its transaction's start) is after the phone's commit.
    desktop_later: bool,
}

const CASES: [Case; 6] = [
    Case {
        n: 1,
        what: "update/update, the desktop later",
        kind: "update/update",
        keyed_only: false,
        seeded: true,
        early: None,
        before: None,
        phone: PHONE_EDIT,
        after: Some(DESK_EDIT),
        base: Some(BASE),
        desktop: Some(DESK),
        mobile: Some(PHONE),
        latest: ("merged", Some(["a phone", "b desk", "3000.50"])),
        columns: Some(&["Amount"]),
        desktop_later: true,
    },
    Case {
        n: 2,
        what: "update/update, the phone later",
        kind: "update/update",
        keyed_only: false,
        seeded: true,
        early: None,
        before: Some(DESK_EDIT),
        phone: PHONE_EDIT,
        after: None,
        base: Some(BASE),
        desktop: Some(DESK),
        mobile: Some(PHONE),
        latest: ("merged", Some(["a phone", "b desk", "2000.00"])),
        columns: Some(&["Amount"]),
        desktop_later: false,
    },
    // The desktop commits last, but its time is its transaction's start: the phone is the later writer.
    Case {
        n: 3,
        what: "update/update, the desktop's transaction around the phone's commit",
        kind: "update/update",
        keyed_only: false,
        seeded: true,
        early: Some(DESK_EDIT),
        before: None,
        phone: PHONE_EDIT,
        after: None,
        base: Some(BASE),
        desktop: Some(DESK),
        mobile: Some(PHONE),
        latest: ("merged", Some(["a phone", "b desk", "2000.00"])),
        columns: Some(&["Amount"]),
        desktop_later: false,
    },
    // No base: every column that differs is changed on both sides, and the later writer's.
    Case {
        n: 4,
        what: "insert/insert, the phone later",
        kind: "insert/insert",
        keyed_only: true,
        seeded: false,
        early: None,
        before: Some(
            r#"INSERT INTO {t} ("Key", "Note's A", "b col", "Amount") VALUES (4, 'a desk', 'b new', 3000.5)"#,
        ),
        phone: r#"INSERT INTO {t} ("Key", "Note's A", "b col", "Amount") VALUES (4, 'a phone', 'b new', 2000)"#,
        after: None,
        base: None,
        desktop: Some(["a desk", "b new", "3000.50"]),
        mobile: Some(["a phone", "b new", "2000.00"]),
        latest: ("mobile", Some(["a phone", "b new", "2000.00"])),
        columns: Some(&["Note's A", "Amount"]),
        desktop_later: false,
    },
    // An edit is kept against a delete whichever came later.
    Case {
        n: 5,
        what: "update/delete, the phone's delete later",
        kind: "update/delete",
        keyed_only: false,
        seeded: true,
        early: None,
        before: Some(DESK_EDIT),
        phone: DELETE,
        after: None,
        base: Some(BASE),
        desktop: Some(DESK),
        mobile: None,
        latest: ("desktop", Some(DESK)),
        columns: None,
        desktop_later: false,
    },
    Case {
        n: 6,
        what: "delete/update, the desktop's delete later",
        kind: "delete/update",
        keyed_only: false,
        seeded: true,
        early: None,
        before: None,
        phone: PHONE_EDIT,
        after: Some(DELETE),
        base: Some(BASE),
        desktop: None,
        mobile: Some(PHONE),
        latest: ("mobile", Some(PHONE)),
        columns: None,
        desktop_later: true,
    },
];

const POLICIES: [&str; 4] = ["desktop", "mobile", "latest", "manual"];

impl Case {
    /// `policy`'s outcome (None: open) and the rows the desktop and the cloud end with.
    fn under(&self, policy: &str) -> (Option<&'static str>, Option<Row>, Option<Row>) {
        match policy {
            "desktop" => (Some("desktop"), self.desktop, self.desktop),
            "mobile" => (Some("mobile"), self.mobile, self.mobile),
            "latest" => (Some(self.latest.0), self.latest.1, self.latest.1),
            "manual" => (None, self.desktop, self.mobile),
            other => unreachable!("policy {other}"),
        }
    }
}

/// A table kind: one table per policy, named `"{prefix} {Policy}"`, and how a statement finds a case's
/// row (by its key, or its scope and content).
pub struct Kind {
    prefix: &'static str,
    /// The column naming a case: the key, or the scope.
    id: &'static str,
    keyed: bool,
    /// The desktop table's columns; the cloud's has these, the cloud key if any, and [`OWNERSHIP`].
    pub columns: &'static str,
    /// The cloud key column, with its type, for a cloud-key table.
    cloud_key: Option<&'static str>,
    /// The `[[tables]]` lines after the table's name.
    shape: &'static str,
}

pub const KEYED: Kind = Kind {
    prefix: "Item",
    id: "Key",
    keyed: true,
    columns: r#""Key" int PRIMARY KEY, "Note's A" text, "b col" text, "Amount" numeric(12,2)"#,
    cloud_key: None,
    shape: "key = [\"Key\"]\n",
};

pub const SCOPED: Kind = Kind {
    prefix: "Task",
    id: "Grp",
    keyed: false,
    columns: r#""Grp" int, "Note's A" text, "b col" text, "Amount" numeric(12,2)"#,
    cloud_key: Some(r#""task ID" bigserial PRIMARY KEY"#),
    shape: "cloud_key = \"task ID\"\nscope = [\"Grp\"]\n",
};

/// A row in every scope of a cloud-key table that no one changes: it keeps its content and cloud key.
const BYSTANDER: Row = ["bystander", "b0", "1.00"];

impl Kind {
    fn cases(&self) -> impl Iterator<Item = &'static Case> {
        let keyed = self.keyed;
        CASES.iter().filter(move |c| keyed || !c.keyed_only)
    }

    /// The table of `policy`, as the config and the conflicts name it.
    fn name(&self, policy: &str) -> String {
        let (first, rest) = policy.split_at(1);
        format!("{} {}{rest}", self.prefix, first.to_uppercase())
    }

    pub fn quoted(&self, policy: &str) -> String {
        format!("\"{}\"", self.name(policy))
    }

    /// Fresh databases with a table per policy, tandem installed, each case's row ([`BASE`]; in a
    /// cloud-key table with a [`BYSTANDER`]) written on the desktop and synced.
    pub async fn install(&self) -> (TestDb, Config) {
        let (mut desktop, mut cloud, mut tables, mut seed) =
            <(String, String, String, String)>::default();
        for policy in POLICIES {
            let (t, cols) = (self.quoted(policy), self.columns);
            let index = match self.keyed {
                true => String::new(),
                false => format!(r#"CREATE INDEX ON {t} ("{}");"#, self.id),
            };
            let cloud_key = self.cloud_key.map_or(String::new(), |k| format!("{k}, "));
            desktop.push_str(&format!("CREATE TABLE {t} ({cols}); {index}\n"));
            cloud.push_str(&format!(
                "CREATE TABLE {t} ({cloud_key}{cols}, {OWNERSHIP}); {index}\n"
            ));
            tables.push_str(&format!(
                "[[tables]]\ndesktop = \"{}\"\n{}policy = \"{policy}\"\n",
                self.name(policy),
                self.shape
            ));
            for case in self.cases().filter(|c| c.seeded) {
                let n = case.n;
                seed.push_str(&format!(
                    "INSERT INTO {t} VALUES ({n}, 'a0', 'b0', 1000);\n"
                ));
                if !self.keyed {
                    seed.push_str(&format!(
                        "INSERT INTO {t} VALUES ({n}, 'bystander', 'b0', 1);\n"
                    ));
                }
            }
        }
        let (db, config) = installed_with(&desktop, &cloud, &tables).await;
        exec(&db.desktop().await, &seed).await;
        run_once(&config).await;
        (db, config)
    }

    /// `sql` of `case` for the table of `policy`.
    fn statement(&self, sql: &str, case: &Case, policy: &str) -> String {
        let row = format!(r#""{}" = {} AND "Note's A" = 'a0'"#, self.id, case.n);
        sql.replace("{t}", &self.quoted(policy))
            .replace("{row}", &row)
    }

    /// Both sides write every case of every table, in the order the cases say, tandem stopped.
    async fn write_conflicts(&self, db: &TestDb) {
        let (desktop, early, cloud) = (db.desktop().await, db.desktop().await, db.cloud().await);
        let phase = |pick: fn(&Case) -> Option<&'static str>| {
            let mut sql = String::new();
            for policy in POLICIES {
                for case in self.cases() {
                    if let Some(s) = pick(case) {
                        sql.push_str(&self.statement(s, case, policy));
                        sql.push_str(";\n");
                    }
                }
            }
            sql
        };
        exec(&early, &format!("BEGIN;\n{}", phase(|c| c.early))).await;
        exec(&desktop, &phase(|c| c.before)).await;
        exec(&cloud, &phase(|c| Some(c.phone))).await;
        exec(&early, "COMMIT").await;
        exec(&desktop, &phase(|c| c.after)).await;
    }

    /// The versions of case `n`'s row in the table of `policy`, sorted; with the cloud key first
    /// when `ck` (in the cloud of a cloud-key table).
    pub async fn versions(
        &self,
        client: &Client,
        policy: &str,
        n: i32,
        ck: bool,
    ) -> Vec<Vec<String>> {
        let ck = if ck { r#""task ID"::text, "# } else { "" };
        let sql = format!(
            r#"SELECT ARRAY[{ck}"Note's A", "b col", "Amount"::text] FROM {} WHERE "{}" = $1 ORDER BY 1"#,
            self.quoted(policy),
            self.id
        );
        let rows = client.query(&sql, &[&n]).await;
        let rows = rows.unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Every conflict recorded on the desktop for the table of `policy`: one per case.
    async fn records(&self, desktop: &Client, policy: &str) -> Vec<Record> {
        let all = records(desktop, &self.name(policy)).await;
        assert_eq!(
            all.len(),
            self.cases().count(),
            "{}: {all:#?}",
            self.name(policy)
        );
        all
    }
}

pub async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn texts(row: Option<Row>) -> Vec<Vec<String>> {
    row.into_iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// A version as `tandem.conflicts` holds it: each column's text by name.
fn object(id: &str, n: i32, row: Option<Row>) -> Value {
    let Some(row) = row else {
        return Value::Null;
    };
    let mut map = Map::new();
    map.insert(id.to_string(), Value::String(n.to_string()));
    for (name, v) in ["Note's A", "b col", "Amount"].iter().zip(row) {
        map.insert(name.to_string(), Value::String(v.to_string()));
    }
    Value::Object(map)
}

/// One conflict record, the fields the cases decide.
#[derive(Debug)]
struct Record {
    row_key: Value,
    kind: String,
    policy: String,
    outcome: Option<String>,
    result: Option<Value>,
    base: Option<Value>,
    desktop_row: Option<Value>,
    mobile_row: Option<Value>,
    columns: Option<Vec<String>>,
    /// Whether each time (desktop, mobile) is there, and whether the desktop's is the later.
    times: (bool, bool, Option<bool>),
    /// Whether the cloud LSN, the cloud xid and the desktop xid are there.
    positions: (bool, bool, bool),
    resolved: (bool, Option<String>, Option<String>),
}

/// Every conflict recorded on the desktop for `table` (its name as the config writes it).
async fn records(desktop: &Client, table: &str) -> Vec<Record> {
    let sql =
        "SELECT row_key, kind, policy, outcome, result, base, desktop_row, mobile_row, columns,
                      desktop_at IS NOT NULL, mobile_at IS NOT NULL, desktop_at > mobile_at,
                      cloud_lsn IS NOT NULL, cloud_xid IS NOT NULL, desktop_xid IS NOT NULL,
                      resolved_at IS NOT NULL, resolution, resolved_by
                 FROM tandem.conflicts WHERE direction = 'reverse' AND table_name = $1 ORDER BY id";
    let rows = desktop.query(sql, &[&table]).await.unwrap();
    rows.iter()
        .map(|r| Record {
            row_key: r.get(0),
            kind: r.get(1),
            policy: r.get(2),
            outcome: r.get(3),
            result: r.get(4),
            base: r.get(5),
            desktop_row: r.get(6),
            mobile_row: r.get(7),
            columns: r.get(8),
            times: (r.get(9), r.get(10), r.get(11)),
            positions: (r.get(12), r.get(13), r.get(14)),
            resolved: (r.get(15), r.get(16), r.get(17)),
        })
        .collect()
}

/// Case `case` of the table of `policy` was recorded as `record`.
fn check_record(case: &Case, policy: &str, id: &str, record: &Record) {
    let at = format!("{} under {policy}: {record:#?}", case.what);
    let (outcome, result, _) = case.under(policy);
    let json = |row| Some(object(id, case.n, row)).filter(|v| !v.is_null());
    assert_eq!(record.kind, case.kind, "{at}");
    assert_eq!(record.policy, policy, "{at}");
    assert_eq!(record.outcome.as_deref(), outcome, "{at}");
    let settled = outcome.map(|_| json(result));
    assert_eq!(record.result, settled.flatten(), "{at}");
    assert_eq!(record.base, json(case.base), "{at}");
    assert_eq!(record.desktop_row, json(case.desktop), "{at}");
    assert_eq!(record.mobile_row, json(case.mobile), "{at}");
    let columns = case
        .columns
        .map(|c| c.iter().map(|s| s.to_string()).collect());
    assert_eq!(record.columns, columns, "{at}");
    // The desktop's change is the capture of the transaction that wrote its row; a cloud-key row the
    // desktop deleted is gone, and its scope's captures hold other rows' changes too: unknown.
    let known = id == KEYED.id || case.desktop.is_some();
    assert_eq!(
        record.times,
        (known, true, known.then_some(case.desktop_later)),
        "both times, in the order written: {at}"
    );
    assert_eq!(record.positions, (true, true, known), "{at}");
    let resolved = match outcome {
        Some(o) => (true, Some(o.to_string()), Some(format!("policy {policy}"))),
        None => (false, None, None),
    };
    assert_eq!(record.resolved, resolved, "{at}");
}

/// No dead letter anywhere, and no conflict recorded anywhere but on the desktop.
async fn nothing_else(db: &TestDb) {
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    for client in [&desktop, &cloud] {
        assert_eq!(
            count(client, "SELECT count(*) FROM tandem.dead_letters").await,
            0
        );
    }
    assert_eq!(
        count(&cloud, "SELECT count(*) FROM tandem.conflicts").await,
        0
    );
}

#[tokio::test]
async fn every_kind_of_conflict_of_a_desktop_key_table_under_every_policy() {
    let (db, config) = KEYED.install().await;
    KEYED.write_conflicts(&db).await;
    // Settled by the first run; the second changes nothing and records nothing again (a held
    // desktop change does not overwrite the phone's version).
    for run in 1..=2 {
        run_once(&config).await;
        let (desktop, cloud) = (db.desktop().await, db.cloud().await);
        for policy in POLICIES {
            let all = KEYED.records(&desktop, policy).await;
            for case in KEYED.cases() {
                let at = format!("run {run}: {} under {policy}", case.what);
                let (_, on_desktop, in_cloud) = case.under(policy);
                let desk = KEYED.versions(&desktop, policy, case.n, false).await;
                assert_eq!(desk, texts(on_desktop), "the desktop's row: {at}");
                let cld = KEYED.versions(&cloud, policy, case.n, false).await;
                assert_eq!(cld, texts(in_cloud), "the cloud's row: {at}");
                let record = all
                    .iter()
                    .find(|r| r.row_key == serde_json::json!({"Key": case.n}))
                    .unwrap_or_else(|| panic!("no record: {at}: {all:#?}"));
                check_record(case, policy, "Key", record);
            }
        }
    }
    nothing_else(&db).await;
}

#[tokio::test]
async fn every_kind_of_conflict_of_a_cloud_key_table_under_every_policy() {
    let (db, config) = SCOPED.install().await;
    // The cloud key of each row, by policy, scope and "Note's A".
    let cloud = db.cloud().await;
    let mut keys = HashMap::new();
    for policy in POLICIES {
        let sql = format!(
            r#"SELECT "Grp", "Note's A", "task ID"::text FROM {}"#,
            SCOPED.quoted(policy)
        );
        for r in cloud.query(&sql, &[]).await.unwrap() {
            let (n, a, ck): (i32, String, String) = (r.get(0), r.get(1), r.get(2));
            keys.insert((policy, n, a), ck);
        }
    }
    assert_eq!(keys.len(), POLICIES.len() * SCOPED.cases().count() * 2);
    SCOPED.write_conflicts(&db).await;
    for run in 1..=2 {
        run_once(&config).await;
        let (desktop, cloud) = (db.desktop().await, db.cloud().await);
        for policy in POLICIES {
            let all = SCOPED.records(&desktop, policy).await;
            for case in SCOPED.cases() {
                let at = format!("run {run}: {} under {policy}", case.what);
                let (_, on_desktop, in_cloud) = case.under(policy);
                let mut expected = texts(on_desktop);
                expected.extend(texts(Some(BYSTANDER)));
                expected.sort();
                let desk = SCOPED.versions(&desktop, policy, case.n, false).await;
                assert_eq!(desk, expected, "the desktop's rows: {at}");
                // The cloud's rows: the bystander as it was, and the case's row changed in place
                // where it survived the phone's change (one the phone deleted comes back as new).
                let original = &keys[&(policy, case.n, "a0".to_string())];
                let bystander = &keys[&(policy, case.n, "bystander".to_string())];
                let (bystanders, others): (Vec<_>, Vec<_>) = SCOPED
                    .versions(&cloud, policy, case.n, true)
                    .await
                    .into_iter()
                    .partition(|r| r[1] == "bystander");
                let mut kept = vec![bystander.to_string()];
                kept.extend(BYSTANDER.map(String::from));
                assert_eq!(bystanders, [kept], "{at}");
                let contents: Vec<Vec<String>> = others.iter().map(|r| r[1..].to_vec()).collect();
                assert_eq!(contents, texts(in_cloud), "the cloud's rows: {at}");
                if let Some(row) = others.first() {
                    assert_eq!(
                        &row[0] == original,
                        case.mobile.is_some(),
                        "the cloud key {} (was {original}): {at}",
                        row[0]
                    );
                }
                let record = all
                    .iter()
                    .find(|r| r.row_key == serde_json::json!({"cloud_key": original}))
                    .unwrap_or_else(|| panic!("no record: {at}: {all:#?}"));
                check_record(case, policy, "Grp", record);
            }
        }
    }
    nothing_else(&db).await;
}
