//! Both sides under write load on the same rows, then drained (issue 16): a `tandem run` streams
//! while desktop writers (the desktop app: captured by the triggers) and phone writers (plain cloud
//! sessions) update, insert and delete random rows of the same small set, in a desktop-key table and
//! a cloud-key table of the same shape, under the default policy (`latest`). Then the writers stop,
//! tandem drains, and both sides must hold exactly the same rows, with no dead letter and no open
//! conflict; every conflict recorded is settled as `latest` settles its two versions. It prints the
//! writes each side made and the conflicts by table, kind and outcome.
//!
//! It writes for `TANDEM_LOAD_SECONDS` (default 5, to keep CI fast). To run it longer:
//!
//! ```text
//! TANDEM_LOAD_SECONDS=60 cargo test --release --test it load:: -- --nocapture
//! ```

use std::time::{Duration, Instant};

use serde_json::Value;
use tandem::config::Config;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::any_schema::{OWNERSHIP, installed_with, run_once};
use crate::support::{Streaming, TestDb, count, rows};

/// Keys 1..=ROWS of the desktop-key table; the cloud-key table starts with as many rows, spread
/// over SCOPES scopes.
const ROWS: i32 = 200;
const SCOPES: i32 = 20;
const WRITERS_PER_SIDE: u64 = 2;

const ITEM: &str = r#""Load Item""#;
const ENTRY: &str = r#""Load Entry""#;
const COLUMNS: &str = "name text, qty int, amount numeric(12,2)";
const TABLES: &str = "[[tables]]\ndesktop = \"Load Item\"\nkey = [\"id\"]\n\
                      [[tables]]\ndesktop = \"Load Entry\"\ncloud_key = \"entry id\"\nscope = [\"grp\"]\n";

fn load_seconds() -> u64 {
    std::env::var("TANDEM_LOAD_SECONDS")
        .ok()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|e| panic!("TANDEM_LOAD_SECONDS={s}: {e}"))
        })
        .unwrap_or(5)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Desktop,
    Phone,
}

/// xorshift64*: writers need variety, not quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % n
    }

    fn int(&mut self, from: i32, to: i32) -> i32 {
        from + self.below((to - from + 1) as u64) as i32
    }
}

/// A statement's parameters: an int or a text.
enum Param {
    Int(i32),
    Text(String),
}

impl Param {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Int(i) => i,
            Param::Text(t) => t,
        }
    }
}

/// What a writer did.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    transactions: u64,
    statements: u64,
    /// Transactions the database aborted (a deadlock with another writer or with tandem).
    aborted: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.transactions += o.transactions;
        self.statements += o.statements;
        self.aborted += o.aborted;
    }
}

/// One desktop app or one phone, writing random changes of the shared rows.
struct Writer {
    side: Side,
    name: String,
    rng: Rng,
    client: Client,
    written: u64,
}

impl Writer {
    /// The row of the cloud-key table a statement changes: one of scope `$1`, found as each side can
    /// (the desktop has no key: by its place in the table).
    fn entry_row(&self) -> &'static str {
        match self.side {
            Side::Desktop => {
                r#"ctid = (SELECT ctid FROM "Load Entry" WHERE grp = $1 ORDER BY random() LIMIT 1)"#
            }
            Side::Phone => {
                r#""entry id" = (SELECT "entry id" FROM "Load Entry" WHERE grp = $1 ORDER BY random() LIMIT 1)"#
            }
        }
    }

    /// A random change: an update of one to three columns (the most), an insert or a delete, of
    /// either table.
    fn change(&mut self) -> (String, Vec<Param>) {
        self.written += 1;
        let value = format!("{} #{}", self.name, self.written);
        let item = self.rng.below(2) == 0;
        let (table, id, row) = if item {
            (ITEM, self.rng.int(1, ROWS), "id = $1")
        } else {
            (ENTRY, self.rng.int(1, SCOPES), self.entry_row())
        };
        let mut params = vec![Param::Int(id)];
        match self.rng.below(10) {
            0..=5 => {
                let mut sets = Vec::new();
                let columns = 1 + self.rng.below(7);
                if columns & 1 != 0 {
                    params.push(Param::Text(value));
                    sets.push(format!("name = ${}", params.len()));
                }
                if columns & 2 != 0 {
                    params.push(Param::Int(self.rng.int(0, 1000)));
                    sets.push(format!("qty = ${}", params.len()));
                }
                if columns & 4 != 0 {
                    params.push(Param::Text(self.amount()));
                    sets.push(format!("amount = ${}::text::numeric", params.len()));
                }
                let sql = format!("UPDATE {table} SET {} WHERE {row}", sets.join(", "));
                (sql, params)
            }
            6 | 7 => {
                params.push(Param::Text(value));
                params.push(Param::Int(self.rng.int(0, 1000)));
                params.push(Param::Text(self.amount()));
                let sql = if item {
                    format!(
                        "INSERT INTO {table} (id, name, qty, amount) VALUES ($1, $2, $3, $4::text::numeric) \
                         ON CONFLICT (id) DO NOTHING"
                    )
                } else {
                    format!(
                        "INSERT INTO {table} (grp, name, qty, amount) VALUES ($1, $2, $3, $4::text::numeric)"
                    )
                };
                (sql, params)
            }
            _ => (format!("DELETE FROM {table} WHERE {row}"), params),
        }
    }

    fn amount(&mut self) -> String {
        format!("{}.{:02}", self.rng.int(0, 99_999), self.rng.int(0, 99))
    }

    /// Transactions of one to three changes until `until`.
    async fn run(mut self, until: Instant) -> Tally {
        let mut tally = Tally::default();
        while Instant::now() < until {
            let changes: Vec<_> = (0..1 + self.rng.below(3)).map(|_| self.change()).collect();
            let tx = self.client.transaction().await.unwrap();
            let mut done = Ok(());
            for (sql, params) in &changes {
                let params: Vec<_> = params.iter().map(Param::sql).collect();
                if let Err(e) = tx.execute(sql.as_str(), &params).await {
                    done = Err((e, sql.clone()));
                    break;
                }
            }
            let done = match done {
                Ok(()) => tx.commit().await.map_err(|e| (e, "COMMIT".to_string())),
                Err(e) => Err(e),
            };
            match done {
                Ok(()) => {
                    tally.transactions += 1;
                    tally.statements += changes.len() as u64;
                }
                Err((e, _))
                    if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
                        || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) =>
                {
                    tally.aborted += 1
                }
                Err((e, sql)) => panic!("{}: {sql}: {e}", self.name),
            }
        }
        tally
    }
}

/// Databases with both tables, tandem installed, the rows written on the desktop and synced.
async fn loaded() -> (TestDb, Config) {
    let (db, config) = installed_with(
        &format!(
            r#"CREATE TABLE {ITEM} (id int PRIMARY KEY, {COLUMNS});
               CREATE TABLE {ENTRY} (grp int, {COLUMNS}); CREATE INDEX ON {ENTRY} (grp);"#
        ),
        &format!(
            r#"CREATE TABLE {ITEM} (id int PRIMARY KEY, {COLUMNS}, {OWNERSHIP});
               CREATE TABLE {ENTRY} ("entry id" bigserial PRIMARY KEY, grp int, {COLUMNS}, {OWNERSHIP});
               CREATE INDEX ON {ENTRY} (grp);"#
        ),
        TABLES,
    )
    .await;
    db.desktop()
        .await
        .batch_execute(&format!(
            "INSERT INTO {ITEM} SELECT i, 'seed ' || i, i, i * 1.5 FROM generate_series(1, {ROWS}) i;
             INSERT INTO {ENTRY} SELECT i % {SCOPES} + 1, 'seed ' || i, i, i * 1.5 FROM generate_series(1, {ROWS}) i;"
        ))
        .await
        .unwrap();
    run_once(&config).await;
    (db, config)
}

/// The cloud has sent everything up to `lsn` and the desktop applied it (the slot confirmed it),
/// and then the outbox is empty: every desktop change, and every settlement that must reach the
/// cloud, is there.
async fn drained(db: &TestDb, desktop: &Client, cloud: &Client, lsn: &str) -> bool {
    let confirmed = cloud
        .query_one(
            "SELECT coalesce(bool_and(confirmed_flush_lsn >= $1::text::pg_lsn), false)
               FROM pg_replication_slots WHERE slot_name = $2",
            &[&lsn, &db.name],
        )
        .await
        .unwrap()
        .get::<_, bool>(0);
    confirmed && count(desktop, "SELECT count(*) FROM tandem.outbox").await == 0
}

/// The conflicts of each side by direction, table, kind and outcome, as lines of a table.
async fn conflict_counts(client: &Client) -> Vec<(String, String, String, String, i64)> {
    let rows = client
        .query(
            "SELECT direction, table_name, coalesce(kind, 'unknown'), coalesce(outcome, 'open'), count(*)
               FROM tandem.conflicts GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// What `latest` makes of a conflict's versions: the desktop's edit against a delete, the phone's
/// against the desktop's delete; otherwise each column changed on one side only takes that side's
/// value, one changed on both (without a base: one that differs) the later writer's.
fn latest(
    kind: &str,
    base: Option<&Value>,
    desktop: &Value,
    mobile: &Value,
    desktop_later: bool,
) -> Value {
    match kind {
        "update/delete" => return desktop.clone(),
        "delete/update" => return mobile.clone(),
        _ => {}
    }
    let merged = desktop
        .as_object()
        .expect("a version is an object")
        .iter()
        .map(|(column, d)| {
            let m = &mobile[column];
            let b = base.map(|b| &b[column]);
            let both = b.is_none_or(|b| d != b && m != b) && d != m;
            let value = if both {
                if desktop_later { d } else { m }
            } else if b.is_some_and(|b| m != b) {
                m
            } else {
                d
            };
            (column.clone(), value.clone())
        })
        .collect();
    Value::Object(merged)
}

/// The conflicts the desktop recorded that did not get what `latest` makes of their versions, or
/// not the outcome that names it: each described.
async fn not_settled_as_latest(desktop: &Client) -> Vec<String> {
    let all = desktop
        .query(
            "SELECT id, kind, base, desktop_row, mobile_row, coalesce(desktop_at > mobile_at, false),
                    result, outcome FROM tandem.conflicts WHERE direction = 'reverse' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let mut wrong = Vec::new();
    for r in &all {
        let (id, kind): (i64, String) = (r.get(0), r.get(1));
        let base: Option<Value> = r.get(2);
        let (d, m): (Option<Value>, Option<Value>) = (r.get(3), r.get(4));
        let (result, outcome): (Option<Value>, Option<String>) = (r.get(6), r.get(7));
        let want = match (&d, &m) {
            (Some(d), Some(m)) => Some(latest(&kind, base.as_ref(), d, m, r.get(5))),
            (d, m) => d.clone().or(m.clone()),
        };
        let named = if want == d {
            "desktop"
        } else if want == m {
            "mobile"
        } else {
            "merged"
        };
        if (&result, outcome.as_deref()) != (&want, Some(named)) {
            wrong.push(format!(
                "conflict {id} ({kind}): base {base:?}, desktop {d:?}, mobile {m:?}: got {result:?} ({outcome:?}), \
                 not {want:?} ({named})"
            ));
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_under_write_load_on_the_same_rows_end_equal() {
    let seconds = load_seconds();
    let (db, config) = loaded().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    let run = Streaming::start(&config);
    let until = Instant::now() + Duration::from_secs(seconds);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut writers = Vec::new();
    for side in [Side::Desktop, Side::Phone] {
        for i in 0..WRITERS_PER_SIDE {
            let client = match side {
                Side::Desktop => db.desktop().await,
                Side::Phone => db.cloud().await,
            };
            let writer = Writer {
                side,
                name: format!("{side:?} {i}"),
                rng: Rng(
                    (seed ^ 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(writers.len() as u64 + 1)) | 1,
                ),
                client,
                written: 0,
            };
            writers.push((side, tokio::spawn(writer.run(until))));
        }
    }
    let (mut on_desktop, mut on_phones) = (Tally::default(), Tally::default());
    for (side, writer) in writers {
        let tally = writer.await.unwrap();
        match side {
            Side::Desktop => on_desktop += tally,
            Side::Phone => on_phones += tally,
        }
    }
    let stopped = Instant::now();
    let lsn: String = cloud
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let limit = Duration::from_secs(60 + 4 * seconds);
    let done = tandem::cluster::wait_until(limit, || drained(&db, &desktop, &cloud, &lsn)).await;
    assert!(
        done,
        "not drained {limit:?} after the writers stopped: outbox {} rows",
        count(&desktop, "SELECT count(*) FROM tandem.outbox").await
    );
    let drain = stopped.elapsed();
    let report = run.stop().await;
    assert!(report.parked.is_empty(), "{:?}", report.parked);
    // A second pass finds nothing left to apply, either way.
    let (forward, reverse) = run_once(&config).await;
    for (direction, stats) in [("forward", &forward), ("reverse", &reverse)] {
        let o = &stats.outcome;
        assert_eq!(
            (o.written, o.deleted, o.conflicts, o.dead_letters),
            (0, 0, 0, 0),
            "a second pass, {direction}: {stats:?}"
        );
    }

    println!("load: {seconds} s of writes, drained {drain:.1?} after the writers stopped");
    println!("  desktop writers: {on_desktop:?}");
    println!("  phone writers:   {on_phones:?}");
    println!("  tandem forward: {:?}", report.forward);
    println!("  tandem reverse: {:?}", report.reverse);
    println!(
        "  {:<10} {:<12} {:<16} {:<10} {:>6}",
        "direction", "table", "kind", "outcome", "count"
    );
    let (mine, theirs) = (
        conflict_counts(&desktop).await,
        conflict_counts(&cloud).await,
    );
    for (direction, table, kind, outcome, n) in mine.iter().chain(&theirs) {
        println!("  {direction:<10} {table:<12} {kind:<16} {outcome:<10} {n:>6}");
    }

    // Every record is what `latest` makes of its two versions.
    let wrong = not_settled_as_latest(&desktop).await;
    assert!(
        wrong.is_empty(),
        "{} recorded not as latest settles their versions, e.g. {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );

    let item = "id, name, qty, amount";
    let (on_desktop_rows, in_cloud_rows) = (
        rows(&desktop, ITEM, item, "true").await,
        rows(&cloud, ITEM, item, "true").await,
    );
    if on_desktop_rows != in_cloud_rows {
        println!("{}", explain_item(&desktop, &cloud).await);
    }
    assert_eq!(on_desktop_rows, in_cloud_rows, "{ITEM}");
    let entry = "grp, name, qty, amount";
    let (on_desktop_rows, in_cloud_rows) = (
        rows(&desktop, ENTRY, entry, "true").await,
        rows(&cloud, ENTRY, entry, "true").await,
    );
    if on_desktop_rows != in_cloud_rows {
        println!("{}", explain_entry(&desktop, &cloud).await);
    }
    assert_eq!(on_desktop_rows, in_cloud_rows, "{ENTRY}");
    for client in [&desktop, &cloud] {
        let dead = "SELECT count(*) FROM tandem.dead_letters";
        assert_eq!(count(client, dead).await, 0);
        let open =
            "SELECT count(*) FROM tandem.conflicts WHERE outcome IS NULL OR resolved_at IS NULL";
        assert_eq!(count(client, open).await, 0, "{mine:?} {theirs:?}");
    }
    assert!(on_desktop.transactions > 0 && on_phones.transactions > 0);
    let settled: i64 = mine.iter().map(|c| c.4).sum();
    assert!(settled > 0, "no conflict: the writers never met on a row");
}

/// What each side and tandem's tables say of the keys of the desktop-key table the sides disagree
/// about: each side's row (the cloud's with its owner and xmin), the conflicts, dead letters and
/// outbox rows of the key.
async fn explain_item(desktop: &Client, cloud: &Client) -> String {
    async fn all(client: &Client, columns: &str) -> std::collections::BTreeMap<i32, String> {
        let sql = format!("SELECT id, ({columns})::text FROM {ITEM}");
        client
            .query(&sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1)))
            .collect()
    }
    let d = all(desktop, "name, qty, amount").await;
    let c = all(cloud, "name, qty, amount, source, xmin").await;
    let mut out = String::from("the sides disagree:\n");
    let keys: std::collections::BTreeSet<i32> = d.keys().chain(c.keys()).copied().collect();
    for k in keys {
        let (dv, cv) = (d.get(&k), c.get(&k));
        if dv.is_some() && cv.is_some_and(|cv| cv.starts_with(dv.unwrap().trim_end_matches(')'))) {
            continue;
        }
        out.push_str(&format!("  key {k}: desktop {dv:?}, cloud {cv:?}\n"));
        let key = serde_json::json!({ "id": k });
        for r in desktop
            .query(
                "SELECT id, kind, outcome, desktop_row::text, mobile_row::text, result::text \
                   FROM tandem.conflicts WHERE row_key = $1 ORDER BY id",
                &[&key],
            )
            .await
            .unwrap()
        {
            out.push_str(&format!(
                "    conflict r{}: {:?} {:?} desktop {:?} mobile {:?} result {:?}\n",
                r.get::<_, i64>(0),
                r.get::<_, Option<String>>(1),
                r.get::<_, Option<String>>(2),
                r.get::<_, Option<String>>(3),
                r.get::<_, Option<String>>(4),
                r.get::<_, Option<String>>(5)
            ));
        }
        for client in [desktop, cloud] {
            for r in client
                .query(
                    "SELECT direction, message FROM tandem.dead_letters WHERE row_key = $1",
                    &[&key],
                )
                .await
                .unwrap()
            {
                out.push_str(&format!(
                    "    dead letter {}: {}\n",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1)
                ));
            }
        }
        let waiting = count(
            desktop,
            &format!("SELECT count(*) FROM tandem.outbox WHERE row_key = '{{{k}}}'"),
        )
        .await;
        out.push_str(&format!("    outbox rows: {waiting}\n"));
    }
    out
}

/// What each side and tandem's tables say of the scopes of the cloud-key table the sides disagree
/// about: each side's rows (the cloud's with key, owner and xmin), the scope's conflicts and outbox rows.
async fn explain_entry(desktop: &Client, cloud: &Client) -> String {
    async fn scopes(
        client: &Client,
        columns: &str,
    ) -> std::collections::BTreeMap<i32, Vec<String>> {
        let sql = format!("SELECT grp, ({columns})::text FROM {ENTRY} ORDER BY 2");
        let mut out = std::collections::BTreeMap::<i32, Vec<String>>::new();
        for r in client.query(&sql, &[]).await.unwrap() {
            out.entry(r.get(0)).or_default().push(r.get(1));
        }
        out
    }
    let d = scopes(desktop, "name, qty, amount").await;
    let c = scopes(cloud, "name, qty, amount").await;
    let mut out = String::from("the sides disagree:\n");
    for g in 1..=SCOPES {
        if d.get(&g) == c.get(&g) {
            continue;
        }
        out.push_str(&format!("  scope {g}:\n    desktop {:?}\n", d.get(&g)));
        let cloud_rows = cloud
            .query(
                &format!(
                    r#"SELECT ("entry id", name, qty, amount, source, xmin)::text FROM {ENTRY} WHERE grp = $1 ORDER BY 1"#
                ),
                &[&g],
            )
            .await
            .unwrap();
        for r in cloud_rows {
            out.push_str(&format!("    cloud {}\n", r.get::<_, String>(0)));
        }
        for r in desktop
            .query(
                "SELECT id, kind, outcome, row_key::text, desktop_row::text, mobile_row::text, result::text \
                   FROM tandem.conflicts WHERE $1 IN (row_key->>'grp', desktop_row->>'grp', mobile_row->>'grp') ORDER BY id",
                &[&g.to_string()],
            )
            .await
            .unwrap()
        {
            out.push_str(&format!(
                "    conflict r{}: {:?} {:?} key {:?} desktop {:?} mobile {:?} result {:?}\n",
                r.get::<_, i64>(0),
                r.get::<_, Option<String>>(1),
                r.get::<_, Option<String>>(2),
                r.get::<_, Option<String>>(3),
                r.get::<_, Option<String>>(4),
                r.get::<_, Option<String>>(5),
                r.get::<_, Option<String>>(6)
            ));
        }
        let waiting = count(
            desktop,
            &format!("SELECT count(*) FROM tandem.outbox WHERE row_key = '{{{g}}}'"),
        )
        .await;
        out.push_str(&format!("    outbox rows: {waiting}\n"));
    }
    out
}
