//! Property: reconcile works on any schema the commit engine accepts. On the schemas of
//! [`crate::generated`] (1 to 3 tables of both kinds, every kind of type with its edge values, hostile
//! names), a random state is built with nothing streaming: desktop rows inserted before `init` or
//! with capture bypassed (`session_replication_role = replica`, or the triggers disabled); cloud rows
//! an old sync wrote ('D' or NULL, through a `tandem.applying` session: copies of desktop rows, other
//! versions of them, strays) and phones' rows ('M': copies of desktop rows, other rows with a desktop
//! row's key or scope, new rows). After `init`, then `reconcile` (both ways), `run --once` (which
//! syncs the new tables, then streams what the slot holds), or both:
//! - the desktop holds its rows and every phone row it lacked (as multisets in cloud-key tables);
//! - the cloud's desktop-owned rows are the desktop's minus those a phone row stands for (an equal
//!   copy, or in a desktop-key table a phone row holding the key);
//! - every phone row is untouched (same xmin, same text), but those whose key the desktop holds with
//!   other content: two rows made under one key without seeing each other, a conflict (`insert/insert`)
//!   settled by the default policy (`latest`; neither side's time is known, so the desktop's row wins
//!   and goes to the cloud) and recorded once in the desktop's `tandem.conflicts`; no other conflict
//!   and no dead letter is recorded (every value fits);
//! - the first reconcile's report counts what the state called for;
//! - a second reconcile right after writes nothing and changes no row's xmin on either side.
//!
//! Rows are compared by the text of every column under fixed settings. 8 cases by default (every case
//! runs on fresh databases); more with `TANDEM_PROPTEST_CASES=50 cargo test --test it generated_reconcile`.

use std::fmt::{self, Display};
use std::future::Future;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use tandem::config::Config;
use tandem::ops::reconcile::{self, Direction, Report, Request};
use tandem::pipeline::sync::{Counts, Quiet};
use tandem::pipeline::{self, RunOptions};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::generated::{self as g, MAX_COLUMNS, SETTINGS, TYPES, TYPES_DDL, Table, Texts};
use crate::support::TestDb;

const MAX_DESKTOP: usize = 10;
const MAX_CLOUD: usize = 10;
/// Aliases no generated name can be.
const ROW: &str = "\"tandem test row\"";

type Vals = Vec<Option<usize>>;

/// A cloud row of the state: an old sync's ('D' or NULL) or a phone's ('M').
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A copy of a desktop row.
    Same,
    /// A desktop row's key (scope), other values.
    Differs,
    /// A key (scope) of its own.
    Stray,
    PhoneCopy,
    /// A collision in a desktop-key table, a new row in a cloud-key table.
    PhoneDiffers,
    PhoneNew,
}

/// Which key, row and values a row takes, picked from what the state holds then. `flag`: a desktop
/// row is inserted before `init`; an old sync's row has source NULL rather than 'D'.
#[derive(Debug, Clone)]
struct Pick {
    unit: Index,
    row: Index,
    values: [Index; MAX_COLUMNS],
    flag: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Reconcile,
    Run,
    ReconcileThenRun,
}

#[derive(Debug, Clone)]
struct TableCase {
    table: Table,
    desktop: Vec<Pick>,
    cloud: Vec<(Kind, Pick)>,
}

#[derive(Clone)]
struct Case {
    tables: Vec<TableCase>,
    mode: Mode,
    /// Desktop rows after `init` bypass capture by `session_replication_role`, else by disabled triggers.
    replica_role: bool,
}

impl Case {
    fn ddl(&self, cloud: bool) -> String {
        let citext = g::available().0.iter().any(|&i| TYPES[i].0 == "citext");
        let extension = ["", "CREATE EXTENSION IF NOT EXISTS citext;\n"][usize::from(citext)];
        let tables: String = self.tables.iter().map(|t| t.table.ddl(cloud)).collect();
        format!("{extension}{TYPES_DDL}{tables}")
    }

    fn toml(&self) -> String {
        self.tables.iter().map(|t| t.table.toml()).collect()
    }
}

/// The schema and the shape of the state only: the failure message lists every statement.
impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\n{}{:?}", self.ddl(true), self.mode)?;
        for t in &self.tables {
            let kinds: Vec<Kind> = t.cloud.iter().map(|(k, _)| *k).collect();
            let (name, n) = (t.table.qualified(), t.desktop.len());
            write!(f, "\n{name}: {n} desktop rows, cloud {kinds:?}")?;
        }
        Ok(())
    }
}

fn pick() -> impl Strategy<Value = Pick> {
    let parts = (
        any::<[Index; 2]>(),
        any::<[Index; MAX_COLUMNS]>(),
        any::<bool>(),
    );
    parts.prop_map(|([unit, row], values, flag)| Pick {
        unit,
        row,
        values,
        flag,
    })
}

fn table_case() -> impl Strategy<Value = TableCase> {
    let kind = prop_oneof![
        3 => Just(Kind::Same),
        2 => Just(Kind::Differs),
        2 => Just(Kind::Stray),
        2 => Just(Kind::PhoneCopy),
        2 => Just(Kind::PhoneDiffers),
        3 => Just(Kind::PhoneNew),
    ];
    let desktop = prop::collection::vec(pick(), 0..=MAX_DESKTOP);
    let cloud = prop::collection::vec((kind, pick()), 0..=MAX_CLOUD);
    (g::table(), desktop, cloud).prop_map(|(table, desktop, cloud)| TableCase {
        table,
        desktop,
        cloud,
    })
}

fn case() -> impl Strategy<Value = Case> {
    let modes = vec![Mode::Reconcile, Mode::Run, Mode::ReconcileThenRun];
    let tables = prop::collection::vec(table_case(), 1..=3);
    (
        tables,
        any::<bool>(),
        prop::sample::select(modes),
        any::<bool>(),
    )
        .prop_map(|(mut tables, same_name, mode, replica_role)| {
            if same_name && tables.len() > 1 {
                tables[1].table.name = tables[0].table.name;
            }
            // The same name twice in one schema: the later table moves to the next schema.
            for i in 1..tables.len() {
                let at = |t: &TableCase| (t.table.schema, t.table.name);
                while tables[..i].iter().any(|t| at(t) == at(&tables[i])) {
                    let s = g::SCHEMAS.iter().position(|s| *s == tables[i].table.schema);
                    tables[i].table.schema = g::SCHEMAS[(s.unwrap() + 1) % g::SCHEMAS.len()];
                }
            }
            Case {
                tables,
                mode,
                replica_role,
            }
        })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Owner {
    D,
    Null,
    M,
}

/// A table's state: desktop rows (with whether inserted before `init`), cloud rows in insert order.
struct Placed {
    desktop: Vec<(Vals, bool)>,
    cloud: Vec<(Vals, Owner)>,
}

fn place(t: &Table, tc: &TableCase) -> Placed {
    let values = |unit: usize, p: &Pick| -> Vals {
        let mut vals = t.decode(unit);
        vals.extend((t.ident..t.cols.len()).map(|c| t.value(c, p.values[c])));
        vals
    };
    // Whether a desktop-key table's key `u` is held by one of `rows`.
    fn held<T>(t: &Table, u: usize, rows: &[(Vals, T)]) -> bool {
        t.cloud_key.is_none() && rows.iter().any(|(v, _)| t.unit(v) == u)
    }
    let mut desktop: Vec<(Vals, bool)> = Vec::new();
    for p in &tc.desktop {
        let free = (0..t.units()).filter(|&u| !held(t, u, &desktop)).collect();
        if let Some(unit) = g::pick(free, p.unit) {
            desktop.push((values(unit, p), p.flag));
        }
    }
    let mut cloud: Vec<(Vals, Owner)> = Vec::new();
    for (kind, p) in &tc.cloud {
        let owner = match kind {
            Kind::PhoneCopy | Kind::PhoneDiffers | Kind::PhoneNew => Owner::M,
            _ if p.flag => Owner::Null,
            _ => Owner::D,
        };
        let vals = if matches!(kind, Kind::Stray | Kind::PhoneNew) {
            let free = (0..t.units()).filter(|&u| !held(t, u, &desktop) && !held(t, u, &cloud));
            g::pick(free.collect(), p.unit).map(|u| values(u, p))
        } else {
            let free = (0..desktop.len()).filter(|&i| !held(t, t.unit(&desktop[i].0), &cloud));
            g::pick(free.collect(), p.row).map(|i| {
                let of = &desktop[i].0;
                if !matches!(kind, Kind::Differs | Kind::PhoneDiffers) {
                    return of.clone();
                }
                let mut v = values(t.unit(of), p);
                // Other values than the desktop's, when the table has columns besides its key.
                if v == *of && t.cols.len() > t.ident {
                    let n = t.edges(t.ident).len();
                    v[t.ident] = match v[t.ident] {
                        Some(e) if e + 1 < n => Some(e + 1),
                        Some(_) => None,
                        None => Some(0),
                    };
                }
                v
            })
        };
        cloud.extend(vals.map(|v| (v, owner)));
    }
    Placed { desktop, cloud }
}

/// What a reconcile of a table's state must leave, and count.
#[derive(Default)]
struct Expect {
    desktop: Vec<Vals>,
    cloud_d: Vec<Vals>,
    /// Desktop rows whose key a phone row holds with other content.
    collisions: Vec<Vals>,
    forward: Counts,
    reverse: Counts,
}

/// Removes one row equal to `v` from `from`, if there is one.
fn take(from: &mut Vec<Vals>, v: &Vals) -> bool {
    let at = from.iter().position(|x| x == v);
    at.map(|at| from.remove(at)).is_some()
}

fn expect(t: &Table, p: &Placed) -> Expect {
    let desktop: Vec<Vals> = p.desktop.iter().map(|(v, _)| v.clone()).collect();
    let of = |mobile: bool| -> Vec<Vals> {
        let rows = p.cloud.iter().filter(|(_, o)| (*o == Owner::M) == mobile);
        rows.map(|(v, _)| v.clone()).collect()
    };
    let (mobile, owned) = (of(true), of(false));
    let mut e = Expect {
        desktop: desktop.clone(),
        ..Expect::default()
    };
    let (f, r) = (&mut e.forward, &mut e.reverse);
    if t.cloud_key.is_none() {
        let find = |rows: &[Vals], d: &Vals| rows.iter().find(|x| t.unit(x) == t.unit(d)).cloned();
        for d in &desktop {
            match (find(&mobile, d), find(&owned, d)) {
                (Some(m), _) if m == *d => r.unchanged += 1,
                (Some(_), _) => {
                    r.conflicts += 1;
                    e.collisions.push(d.clone());
                }
                (None, None) => f.inserted += 1,
                (None, Some(c)) if c == *d => f.unchanged += 1,
                (None, Some(_)) => f.updated += 1,
            }
            match find(&mobile, d) {
                None => e.cloud_d.push(d.clone()),
                // The collision settled for the desktop: its row is the cloud's now.
                Some(m) if m != *d => e.cloud_d.push(d.clone()),
                Some(_) => {}
            }
        }
        f.deleted = owned.iter().filter(|c| find(&desktop, c).is_none()).count() as u64;
        for m in mobile.iter().filter(|m| find(&desktop, m).is_none()) {
            r.inserted += 1;
            e.desktop.push(m.clone());
        }
    } else {
        // Desktop rows are matched with the phones' rows first, then with the old sync's.
        let mut left = desktop.clone();
        for m in &mobile {
            if take(&mut left, m) {
                r.unchanged += 1;
            } else {
                r.inserted += 1;
                e.desktop.push(m.clone());
            }
        }
        e.cloud_d = left.clone();
        for c in &owned {
            match take(&mut left, c) {
                true => f.unchanged += 1,
                false => f.deleted += 1,
            }
        }
        f.inserted = left.len() as u64;
    }
    e
}

/// A table's name as a reconcile report writes it.
fn report_name(t: &Table) -> String {
    match t.schema {
        "public" => t.name.to_string(),
        schema => format!("{schema}.{}", t.name),
    }
}

/// An old sync's row is inserted with its source; a phone's gets 'M' from the ownership trigger.
fn insert(t: &Table, vals: &Vals, owner: Owner) -> String {
    let sql = t.insert(vals);
    let source = match owner {
        Owner::M => return sql,
        Owner::D => "'D'",
        Owner::Null => "NULL",
    };
    let at = sql.find(") VALUES (").expect("an INSERT");
    let values = &sql[at..sql.len() - 1];
    format!("{}, source{values}, {source})", &sql[..at])
}

struct Harness<'a> {
    case: &'a Case,
    placed: Vec<Placed>,
    expected: Vec<Expect>,
    desktop: Client,
    /// A phone's session.
    cloud: Client,
    /// The old sync's session: `tandem.applying` on.
    applying: Client,
    config: Option<Config>,
    log: Vec<String>,
}

impl Harness<'_> {
    fn report(&self, problem: &str) -> String {
        let ops = self.log.iter().enumerate();
        let ops: Vec<String> = ops.map(|(i, l)| format!("{:>3}. {l}", i + 1)).collect();
        format!(
            "{problem}\n\n-- desktop schema\n{}\n-- cloud schema\n{}\n-- config\n{}\n-- statements\n{}\n",
            self.case.ddl(false),
            self.case.ddl(true),
            self.case.toml(),
            ops.join("\n")
        )
    }

    async fn exec(&mut self, who: &str, sql: String) -> Result<(), String> {
        let client = match who {
            "desktop" => &self.desktop,
            "phone" => &self.cloud,
            _ => &self.applying,
        };
        let result = client.batch_execute(&sql).await;
        self.log.push(format!("{who}: {sql}"));
        result.map_err(|e| self.report(&format!("{who}'s statement failed: {e}")))
    }

    async fn texts(&self, client: &Client, sql: &str) -> Result<Texts, String> {
        g::query_texts(client, sql)
            .await
            .map_err(|e| self.report(&e))
    }

    /// The texts of the model's `rows` of `t`.
    async fn texts_of(&self, t: &Table, rows: &[Vals]) -> Result<Texts, String> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let selects: Vec<String> = rows
            .iter()
            .map(|v| format!("SELECT {}", t.texts_of(v)))
            .collect();
        self.texts(&self.cloud, &selects.join(" UNION ALL ")).await
    }

    async fn count(&self, client: &Client, sql: &str) -> Result<i64, String> {
        match client.query_one(sql, &[]).await {
            Ok(row) => Ok(row.get(0)),
            Err(e) => Err(self.report(&format!("{sql}: {e}"))),
        }
    }

    /// Every row (xmin and text) of every table: on the desktop and the cloud, or with `filter` on
    /// the cloud only.
    async fn xmins(&self, filter: Option<&str>) -> Result<Vec<Texts>, String> {
        let mut all = Vec::new();
        for tc in &self.case.tables {
            let table = tc.table.qualified();
            let select = format!("SELECT {ROW}.xmin::text, {ROW}::text FROM {table} AS {ROW}");
            if filter.is_none() {
                all.push(self.texts(&self.desktop, &select).await?);
            }
            let filtered = format!("{select} {}", filter.unwrap_or(""));
            all.push(self.texts(&self.cloud, &filtered).await?);
        }
        Ok(all)
    }

    /// `task` in a task of its own, so that a panic in tandem is reported with the case.
    async fn spawned<T, E>(
        &mut self,
        what: &str,
        task: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<T, String>
    where
        T: Send + 'static,
        E: Display + Send + 'static,
    {
        self.log.push(what.into());
        let mut task = tokio::spawn(task);
        let outcome = tokio::time::timeout(Duration::from_secs(60), &mut task).await;
        task.abort();
        match outcome {
            Err(_) => Err(self.report(&format!("{what} did not finish within 60 s"))),
            Ok(Err(panic)) => Err(self.report(&format!("{what}: {panic}"))),
            Ok(Ok(Err(e))) => Err(self.report(&format!("{what} failed: {e}"))),
            Ok(Ok(Ok(done))) => Ok(done),
        }
    }

    async fn reconcile(&mut self) -> Result<Report, String> {
        let config = self.config.clone().expect("installed");
        let request = Request {
            tables: Vec::new(),
            direction: Direction::Both,
            dry_run: false,
            trigger: "command",
        };
        let task = async move { reconcile::reconcile(&config, &request, &Quiet).await };
        let report = self.spawned("reconcile --direction both", task).await?;
        let rows = report
            .rows
            .iter()
            .map(|r| format!("\n       {} {}: {:?}", r.table, r.direction, r.counts));
        let rows: String = rows.collect();
        self.log
            .last_mut()
            .expect("logged")
            .push_str(&format!(": wrote {}{rows}", report.written()));
        match report.complete() {
            true => Ok(report),
            false => Err(self.report(&format!("reconcile skipped tables: {:?}", report.skipped))),
        }
    }

    async fn run(&mut self) -> Result<(), String> {
        let config = self.config.clone().expect("installed");
        let task = async move {
            pipeline::run(&config, RunOptions { once: true }, CancellationToken::new()).await
        };
        let report = self.spawned("run --once", task).await?;
        match report.parked.is_empty() {
            true => Ok(()),
            false => Err(self.report(&format!("run --once parked tables: {:?}", report.parked))),
        }
    }

    /// The first reconcile's report against what each table's state called for.
    fn counted(&self, report: &Report) -> Vec<String> {
        let mut problems = Vec::new();
        let retried = report.dead_letters_retried;
        if retried.forward + retried.reverse > 0 {
            problems.push(format!("the reconcile retried dead letters: {retried:?}"));
        }
        for (tc, e) in self.case.tables.iter().zip(&self.expected) {
            let name = report_name(&tc.table);
            for (direction, want) in [("forward", e.forward), ("reverse", e.reverse)] {
                match report
                    .rows
                    .iter()
                    .find(|r| r.table == name && r.direction == direction)
                {
                    Some(row) if row.counts == want => {}
                    Some(row) => problems.push(format!(
                        "{name} {direction}: the report counts {:?}, the state called for {want:?}",
                        row.counts
                    )),
                    None => problems.push(format!("{name} {direction}: not in the report")),
                }
            }
        }
        problems
    }

    /// Every way the databases differ from what the state calls for.
    async fn problems(&self, mobile_before: &[Texts]) -> Result<Vec<String>, String> {
        let mut problems = Vec::new();
        let mut collisions = 0;
        for (tc, e) in self.case.tables.iter().zip(&self.expected) {
            let (t, name) = (&tc.table, tc.table.qualified());
            let select = format!("SELECT {} FROM {name}", t.texts());
            let desktop = self.texts(&self.desktop, &select).await?;
            let want = self.texts_of(t, &e.desktop).await?;
            if desktop != want {
                let diff = g::diff("expected", &want, "on the desktop", &desktop);
                problems.push(format!("{name}: the desktop's rows\n{diff}"));
            }
            let owned = format!("{select} WHERE source IS DISTINCT FROM 'M'");
            let owned = self.texts(&self.cloud, &owned).await?;
            let want = self.texts_of(t, &e.cloud_d).await?;
            if owned != want {
                let diff = g::diff("expected", &want, "in the cloud", &owned);
                problems.push(format!("{name}: the cloud's desktop-owned rows\n{diff}"));
            }
            let logged = format!(
                "SELECT count(*) FROM tandem.conflicts {ROW} WHERE {ROW}.direction = 'reverse'
                   AND {ROW}.table_name = {} AND {ROW}.kind = 'insert/insert' AND {ROW}.outcome = 'desktop'
                   AND {ROW}.policy = 'latest' AND {ROW}.resolved_at IS NOT NULL",
                tandem::change::quote_literal(&report_name(t))
            );
            let n = self.count(&self.desktop, &logged).await? as usize;
            if n != e.collisions.len() {
                problems.push(format!(
                    "{name}: {} collision(s) of a phone's row with the desktop's are recorded {n} time(s) as settled",
                    e.collisions.len()
                ));
            }
            collisions += e.collisions.len();
        }
        let mobile = self.xmins(Some("WHERE source = 'M'")).await?;
        for (i, (before, after)) in mobile_before.iter().zip(&mobile).enumerate() {
            // A phone row whose key collided is the desktop's now: it is gone from the phones' rows.
            let collided = self.expected[i].collisions.len();
            if before.len() == after.len() + collided && after.iter().all(|a| before.contains(a)) {
                continue;
            }
            if before != after {
                let diff = g::diff("before", before, "after", after);
                let t = self.case.tables[i].table.qualified();
                problems.push(format!("{t}: the phones' rows (xmin, row) changed\n{diff}"));
            }
        }
        let sides = [
            ("desktop", &self.desktop, collisions),
            ("cloud", &self.cloud, 0),
        ];
        for (side, client, conflicts) in sides {
            for (log, want) in [("conflicts", conflicts), ("dead_letters", 0)] {
                let rows = self
                    .texts(client, &format!("SELECT l::text FROM tandem.{log} l"))
                    .await?;
                if rows.len() != want {
                    let n = rows.len();
                    let rows: String = rows
                        .iter()
                        .map(|r| format!("\n    {}", g::show(&r[0], 1000)))
                        .collect();
                    problems.push(format!(
                        "{side}'s tandem.{log} holds {n} row(s), not {want}:{rows}"
                    ));
                }
            }
        }
        Ok(problems)
    }

    /// The state, built with nothing streaming; `init` in the middle.
    async fn build(&mut self, db: &TestDb) -> Result<(), String> {
        let case = self.case;
        let applying = format!("{SETTINGS} SELECT set_config('tandem.applying', 'on', false);");
        if let Err(e) = self.applying.batch_execute(&applying).await {
            return Err(self.report(&format!("the old sync's session: {e}")));
        }
        for (side, client, cloud) in [
            ("desktop", &self.desktop, false),
            ("cloud", &self.cloud, true),
        ] {
            if let Err(e) = client
                .batch_execute(&format!("{SETTINGS}\n{}", case.ddl(cloud)))
                .await
            {
                return Err(self.report(&format!("the {side} schema: {e}")));
            }
        }
        let config = db
            .config(&case.toml())
            .map_err(|e| self.report(&format!("config: {e}")))?;
        let mut desktop: [Vec<(usize, String)>; 2] = Default::default();
        let mut cloud = Vec::new();
        for (i, (tc, p)) in case.tables.iter().zip(&self.placed).enumerate() {
            for (vals, before) in &p.desktop {
                desktop[usize::from(*before)].push((i, tc.table.insert(vals)));
            }
            for (vals, owner) in &p.cloud {
                let who = ["old sync", "phone"][usize::from(*owner == Owner::M)];
                cloud.push((who, insert(&tc.table, vals, *owner)));
            }
        }
        let [after, before] = desktop;
        for (_, sql) in before {
            self.exec("desktop", sql).await?;
        }
        if let Err(e) = tandem::setup::init(&config, false).await {
            return Err(self.report(&format!("init: {e}")));
        }
        self.log.push("init".into());
        self.config = Some(config);
        // Desktop rows capture does not see: a bulk import.
        if case.replica_role {
            self.exec("desktop", "SET session_replication_role = replica".into())
                .await?;
        }
        for (i, sql) in after {
            let t = case.tables[i].table.qualified();
            let sql = match case.replica_role {
                true => sql,
                false => format!(
                    "BEGIN; ALTER TABLE {t} DISABLE TRIGGER USER; {sql}; ALTER TABLE {t} ENABLE TRIGGER USER; COMMIT"
                ),
            };
            self.exec("desktop", sql).await?;
        }
        if case.replica_role {
            let reset = "RESET session_replication_role".to_string();
            self.exec("desktop", reset).await?;
        }
        for (who, sql) in cloud {
            self.exec(who, sql).await?;
        }
        // The premise: nothing was captured; the phones' rows, and only they, are mobile-owned.
        let outbox = self
            .count(&self.desktop, "SELECT count(*) FROM tandem.outbox")
            .await?;
        let phones = self
            .placed
            .iter()
            .flat_map(|p| &p.cloud)
            .filter(|c| c.1 == Owner::M)
            .count();
        let mut owned = 0;
        for tc in &case.tables {
            let sql = format!(
                "SELECT count(*) FROM {} WHERE source = 'M'",
                tc.table.qualified()
            );
            owned += self.count(&self.cloud, &sql).await?;
        }
        if outbox != 0 || owned != phones as i64 {
            return Err(self.report(&format!(
                "the state is not as built: {outbox} outbox rows, {owned} mobile-owned rows for {phones} phone rows"
            )));
        }
        Ok(())
    }
}

async fn exercise(db: &TestDb, case: &Case) -> Result<(), String> {
    let placed: Vec<Placed> = case.tables.iter().map(|tc| place(&tc.table, tc)).collect();
    let expected = case
        .tables
        .iter()
        .zip(&placed)
        .map(|(tc, p)| expect(&tc.table, p));
    let mut h = Harness {
        case,
        expected: expected.collect(),
        placed,
        desktop: db.desktop().await,
        cloud: db.cloud().await,
        applying: db.cloud().await,
        config: None,
        log: Vec::new(),
    };
    h.build(db).await?;
    let mobile_before = h.xmins(Some("WHERE source = 'M'")).await?;
    let mut problems = Vec::new();
    if case.mode != Mode::Run {
        let report = h.reconcile().await?;
        problems.extend(h.counted(&report));
    }
    if case.mode != Mode::Reconcile {
        h.run().await?;
    }
    problems.extend(h.problems(&mobile_before).await?);
    if !problems.is_empty() {
        return Err(h.report(&problems.join("\n")));
    }
    // A second reconcile right after: nothing to write, and nothing written.
    let before = h.xmins(None).await?;
    let again = h.reconcile().await?;
    let after = h.xmins(None).await?;
    if again.written() != 0 {
        problems.push(format!(
            "the second reconcile wrote {} rows",
            again.written()
        ));
    }
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if b != a {
            let (t, side) = (
                case.tables[i / 2].table.qualified(),
                ["desktop", "cloud"][i % 2],
            );
            let diff = g::diff("before", b, "after", a);
            problems.push(format!(
                "{t} on the {side}: the second reconcile changed rows (xmin, row)\n{diff}"
            ));
        }
    }
    problems.extend(h.problems(&mobile_before).await?);
    match problems.is_empty() {
        true => Ok(()),
        false => Err(h.report(&problems.join("\n"))),
    }
}

fn cases() -> u32 {
    let cases = std::env::var("TANDEM_PROPTEST_CASES").ok();
    cases.and_then(|v| v.parse().ok()).unwrap_or(8)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn reconcile_makes_any_generated_state_whole_and_then_writes_nothing(case in case()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let db = TestDb::new().await;
            let result = exercise(&db, &case).await;
            result.and(g::remove(db).await)
        }).map_err(TestCaseError::fail)?;
    }
}
