//! The interleaving property's harness: a case's databases, its writes (each recorded with what it
//! changed, and whether a stream ran while it was made), its catch-ups, and the log a failure prints.

use std::future::Future;
use std::time::Duration;

use tandem::config::Config;
use tandem::ops::reconcile::{self, Direction, Request};
use tandem::pipeline::sync::Quiet;
use tandem::pipeline::{self, RunError, RunOptions, RunReport};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::generated::{self as g, SETTINGS, TYPES, TYPES_DDL, Table, join, q};
use crate::support::TestDb;

/// One row as the text of each column (`None`: NULL), under [`SETTINGS`].
pub(crate) type Row = Vec<Option<String>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    Latest,
    Desktop,
    Mobile,
    Manual,
}

impl Policy {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Policy::Latest => "latest",
            Policy::Desktop => "desktop",
            Policy::Mobile => "mobile",
            Policy::Manual => "manual",
        }
    }
}

/// The tables of a case (or a regression test), the project's policy and each table's own, if any.
#[derive(Debug, Clone)]
pub(crate) struct Schema {
    pub tables: Vec<Table>,
    pub policy: Policy,
    pub overrides: Vec<Option<Policy>>,
}

impl Schema {
    pub(crate) fn ddl(&self, cloud: bool) -> String {
        let citext = g::available().0.iter().any(|&i| TYPES[i].0 == "citext");
        let extension = ["", "CREATE EXTENSION IF NOT EXISTS citext;\n"][usize::from(citext)];
        let tables: String = self.tables.iter().map(|t| t.ddl(cloud)).collect();
        format!("{extension}{TYPES_DDL}{tables}")
    }

    pub(crate) fn toml(&self) -> String {
        let mut toml = format!("[conflicts]\npolicy = \"{}\"\n", self.policy.name());
        for (t, own) in self.tables.iter().zip(&self.overrides) {
            toml += &t.toml();
            if let Some(p) = own {
                toml += &format!("policy = \"{}\"\n", p.name());
            }
        }
        toml
    }

    /// The policy table `t` runs under.
    pub(crate) fn policy(&self, t: usize) -> Policy {
        self.overrides[t].unwrap_or(self.policy)
    }
}

/// A table's name as tandem writes it in `tandem.conflicts` and its reports.
pub(crate) fn table_name(t: &Table) -> String {
    match t.schema {
        "public" => t.name.to_string(),
        schema => format!("{schema}.{}", t.name),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    Insert,
    Update,
    Delete,
}

/// A write by the desktop application or a phone. `row` holds an SQL expression per column: the values
/// inserted, or the row updated or deleted (found by the text of every column; with duplicates, any).
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub phone: bool,
    pub table: usize,
    pub act: Act,
    pub row: Vec<String>,
    /// An update's column and its new value.
    pub set: Option<(usize, String)>,
}

/// What a case does, in order. `Stream` starts `tandem run` in the background; `Stop` stops it (its
/// shutdown token) and drains with `run --once`.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Write(Write),
    Once,
    Reconcile,
    Stream,
    Stop,
}

/// Which row a write changed: a desktop-key table's key; in a cloud-key table, the cloud row's key (a
/// phone's write), or none (the desktop's: its rows are told apart by content only).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ident {
    Key(Row),
    Cloud(String),
    Content,
}

/// A write made, with the row before it (`None`: inserted) and after it (`None`: deleted).
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub step: usize,
    /// The writes between two completed catch-ups form a segment.
    pub segment: usize,
    /// Made while a stream ran: what it had received then is not known.
    pub racy: bool,
    pub phone: bool,
    pub table: usize,
    pub ident: Ident,
    pub old: Option<Row>,
    pub new: Option<Row>,
}

struct Streaming {
    shutdown: CancellationToken,
    run: JoinHandle<Result<RunReport, RunError>>,
}

pub(crate) struct Harness<'a> {
    pub schema: &'a Schema,
    pub desktop: Client,
    /// A phone's session: a plain cloud connection.
    pub cloud: Client,
    pub config: Config,
    /// Per table and column, the text of each edge value (see [`Table::edges`]).
    pub edges: Vec<Vec<Vec<String>>>,
    pub steps: Vec<Step>,
    pub written: Vec<Written>,
    /// Per segment, the desktop's highest conflict id when it began.
    pub marks: Vec<i64>,
    /// Whether any write was made while a stream ran.
    pub streamed: bool,
    stream: Option<Streaming>,
    pub log: Vec<String>,
}

impl<'a> Harness<'a> {
    /// Fresh databases with the schema, tandem installed.
    pub(crate) async fn new(db: &TestDb, schema: &'a Schema) -> Result<Harness<'a>, String> {
        let (desktop, cloud) = (db.desktop().await, db.cloud().await);
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            format!(
                "{what}: {e}\n\n-- cloud schema\n{}\n-- config\n{}",
                schema.ddl(true),
                schema.toml()
            )
        };
        for (client, cloud) in [(&desktop, false), (&cloud, true)] {
            let ddl = format!("{SETTINGS}\n{}", schema.ddl(cloud));
            client
                .batch_execute(&ddl)
                .await
                .map_err(|e| fail("the schema", &e))?;
        }
        let config = db.config(&schema.toml()).map_err(|e| fail("config", &e))?;
        tandem::setup::init(&config, false)
            .await
            .map_err(|e| fail("init", &e))?;
        let mut edges = Vec::new();
        for t in &schema.tables {
            let mut cols = Vec::new();
            for c in 0..t.cols.len() {
                let ty = TYPES[t.cols[c].1].0;
                let sql = format!(
                    "SELECT {}",
                    join(t.edges(c), |e| format!("({e})::{ty}::text"))
                );
                let row = desktop.query_one(&sql, &[]).await;
                let row = row.map_err(|e| fail("the edge values", &e))?;
                cols.push((0..row.len()).map(|i| row.get(i)).collect());
            }
            edges.push(cols);
        }
        Ok(Harness {
            schema,
            desktop,
            cloud,
            config,
            edges,
            steps: Vec::new(),
            written: Vec::new(),
            marks: vec![0],
            streamed: false,
            stream: None,
            log: Vec::new(),
        })
    }

    pub(crate) fn report(&self, problem: &str) -> String {
        let steps = self.log.iter().enumerate();
        let steps: Vec<String> = steps.map(|(i, l)| format!("{:>3}. {l}", i + 1)).collect();
        format!(
            "{problem}\n\n-- cloud schema (the desktop's: without source, created_at, updated_at and cloud keys)\n{}\n-- config\n{}\n-- steps\n{}\n",
            self.schema.ddl(true),
            self.schema.toml(),
            steps.join("\n")
        )
    }

    pub(crate) fn segment(&self) -> usize {
        self.marks.len() - 1
    }

    /// Rows of table `t` as texts, sorted: the cloud's (with `extra` columns after the table's), or
    /// the desktop's.
    pub(crate) async fn rows(
        &self,
        cloud: bool,
        t: usize,
        extra: &str,
    ) -> Result<Vec<Row>, String> {
        let table = &self.schema.tables[t];
        let client = if cloud { &self.cloud } else { &self.desktop };
        let sql = format!("SELECT {}{extra} FROM {}", table.texts(), table.qualified());
        g::query_texts(client, &sql)
            .await
            .map_err(|e| self.report(&e))
    }

    /// A row's values as edge indices (`None`: NULL).
    pub(crate) fn vals(&self, t: usize, row: &Row) -> Result<Vec<Option<usize>>, String> {
        let edges = &self.edges[t];
        let val = |c: usize, text: &Option<String>| match text {
            None => Ok(None),
            Some(s) => match edges[c].iter().position(|e| e == s) {
                Some(i) => Ok(Some(i)),
                None => Err(self.report(&format!("column {c} holds {s:?}, no edge value"))),
            },
        };
        row.iter().enumerate().map(|(c, v)| val(c, v)).collect()
    }

    pub(crate) async fn step(&mut self, step: Step) -> Result<(), String> {
        self.steps.push(step.clone());
        match step {
            Step::Write(w) => self.write(&w).await,
            Step::Once => {
                self.once().await?;
                self.caught_up().await
            }
            Step::Reconcile => {
                self.reconcile().await?;
                self.caught_up().await
            }
            Step::Stream => self.start(),
            Step::Stop => self.stop().await,
        }
    }

    fn sql(&self, w: &Write) -> String {
        let t = &self.schema.tables[w.table];
        let mut returning = t.texts();
        if let (true, Some(ck)) = (w.phone, t.cloud_key) {
            returning += &format!(", {}::text", q(ck));
        }
        let table = t.qualified();
        let found = || {
            let values = join(&w.row, |v| format!("({v})::text"));
            format!(
                "WHERE ctid = (SELECT ctid FROM {table} WHERE ROW({}) IS NOT DISTINCT FROM ROW({values}) LIMIT 1)",
                t.texts()
            )
        };
        match (w.act, &w.set) {
            (Act::Insert, _) => {
                let names = join(&t.cols, |(n, _)| q(n));
                format!(
                    "INSERT INTO {table} ({names}) VALUES ({}) RETURNING {returning}",
                    w.row.join(", ")
                )
            }
            (Act::Update, Some((c, v))) => {
                let set = format!("{} = {v}", q(t.cols[*c].0));
                format!("UPDATE {table} SET {set} {} RETURNING {returning}", found())
            }
            (Act::Update, None) => unreachable!("an update sets a column"),
            (Act::Delete, _) => format!("DELETE FROM {table} {} RETURNING {returning}", found()),
        }
    }

    async fn write(&mut self, w: &Write) -> Result<(), String> {
        let (who, client) = match w.phone {
            true => ("phone", &self.cloud),
            false => ("desktop", &self.desktop),
        };
        let t = &self.schema.tables[w.table];
        let sql = self.sql(w);
        let old = match w.act {
            Act::Insert => None,
            _ => {
                let texts = format!("SELECT {}", join(&w.row, |v| format!("({v})::text")));
                let row = client.query_one(&texts, &[]).await;
                let row = row.map_err(|e| self.report(&format!("{texts}: {e}")))?;
                Some((0..t.cols.len()).map(|c| row.get(c)).collect::<Row>())
            }
        };
        let racy = self.stream.is_some();
        self.streamed |= racy;
        let result = client.query(&sql, &[]).await;
        let shown = sql.split(" RETURNING ").next().unwrap_or(&sql).to_string();
        let rows = match result {
            Ok(rows) => rows,
            // While a stream runs, tandem may have written the key meanwhile.
            Err(e)
                if racy && e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
            {
                self.log.push(format!("{who}: {shown}  -- refused: {e}"));
                return Ok(());
            }
            Err(e) => return Err(self.report(&format!("{who}'s statement failed: {e}\n{sql}"))),
        };
        let racy_mark = if racy { "  (stream running)" } else { "" };
        self.log.push(format!(
            "{who}: {shown}  -- {} row(s){racy_mark}",
            rows.len()
        ));
        let Some(row) = rows.first() else {
            return Ok(());
        };
        let n = t.cols.len();
        let texts: Row = (0..n).map(|c| row.get(c)).collect();
        let ident = match (t.cloud_key, w.phone) {
            (None, _) => Ident::Key(texts[..t.ident].to_vec()),
            (Some(_), true) => Ident::Cloud(row.get(n)),
            (Some(_), false) => Ident::Content,
        };
        let new = (w.act != Act::Delete).then_some(texts);
        self.written.push(Written {
            step: self.steps.len() - 1,
            segment: self.segment(),
            racy,
            phone: w.phone,
            table: w.table,
            ident,
            old,
            new,
        });
        Ok(())
    }

    /// `task` in a task of its own (a panic in tandem is reported with the case), within 60 s.
    async fn spawned<T, E>(
        &mut self,
        what: &str,
        task: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<T, String>
    where
        T: Send + 'static,
        E: std::fmt::Display + Send + 'static,
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

    /// Whether `run --once` did anything; what it did goes to the log.
    pub(crate) async fn once(&mut self) -> Result<bool, String> {
        let config = self.config.clone();
        let task = async move {
            pipeline::run(&config, RunOptions { once: true }, CancellationToken::new()).await
        };
        let report = self.spawned("run --once", task).await?;
        self.ran(&report)
    }

    fn ran(&mut self, report: &RunReport) -> Result<bool, String> {
        if !report.parked.is_empty() {
            return Err(self.report(&format!("tables parked: {:?}", report.parked)));
        }
        let (f, r) = (&report.forward.outcome, &report.reverse.outcome);
        self.log.last_mut().expect("logged").push_str(&format!(
            ": forward wrote {} deleted {} conflicts {}, reverse wrote {} deleted {} conflicts {}",
            f.written, f.deleted, f.conflicts, r.written, r.deleted, r.conflicts
        ));
        Ok(f.written + f.deleted + r.written + r.deleted + r.conflicts > 0)
    }

    async fn reconcile(&mut self) -> Result<(), String> {
        let config = self.config.clone();
        let request = Request {
            tables: Vec::new(),
            direction: Direction::Both,
            dry_run: false,
            trigger: "command",
        };
        let task = async move { reconcile::reconcile(&config, &request, &Quiet).await };
        let report = self.spawned("reconcile", task).await?;
        let rows = report.rows.iter().filter(|r| r.counts.written() > 0);
        let rows = join(rows, |r| {
            format!("{} {}: {:?}", r.table, r.direction, r.counts)
        });
        let line = self.log.last_mut().expect("logged");
        line.push_str(&format!(": wrote {} ({rows})", report.written()));
        if !report.complete() {
            return Err(self.report(&format!("reconcile skipped tables: {:?}", report.skipped)));
        }
        Ok(())
    }

    fn start(&mut self) -> Result<(), String> {
        if self.stream.is_some() {
            return Err(self.report("a stream runs already"));
        }
        let shutdown = CancellationToken::new();
        let (config, stop) = (self.config.clone(), shutdown.clone());
        let run =
            tokio::spawn(
                async move { pipeline::run(&config, RunOptions { once: false }, stop).await },
            );
        self.stream = Some(Streaming { shutdown, run });
        self.log.push("run (streaming) started".into());
        Ok(())
    }

    /// Stops the stream (within 30 s), then drains with `run --once`: a segment's catch-up.
    async fn stop(&mut self) -> Result<(), String> {
        let Some(stream) = self.stream.take() else {
            return Err(self.report("no stream runs"));
        };
        self.log.push("run (streaming) stopped".into());
        if stream.run.is_finished() {
            return Err(self.report(&format!(
                "the stream ended before it was stopped: {:?}",
                stream.run.await
            )));
        }
        stream.shutdown.cancel();
        let report = match tokio::time::timeout(Duration::from_secs(30), stream.run).await {
            Err(_) => return Err(self.report("the stream did not stop within 30 s")),
            Ok(Err(panic)) => return Err(self.report(&format!("the stream: {panic}"))),
            Ok(Ok(Err(e))) => return Err(self.report(&format!("the stream failed: {e}"))),
            Ok(Ok(Ok(report))) => report,
        };
        self.ran(&report)?;
        self.once().await?;
        self.caught_up().await
    }

    /// A catch-up completed: the segment's phone writes are checked, the next segment begins.
    async fn caught_up(&mut self) -> Result<(), String> {
        let mut problems = self.phone_writes_arrived(Some(self.segment())).await?;
        problems.extend(self.desktop_writes_arrived(Some(self.segment())).await?);
        if !problems.is_empty() {
            return Err(self.report(&problems.join("\n")));
        }
        let mark = self.max_conflict().await?;
        self.marks.push(mark);
        Ok(())
    }

    pub(crate) async fn max_conflict(&self) -> Result<i64, String> {
        let sql = "SELECT coalesce(max(id), 0) FROM tandem.conflicts";
        match self.desktop.query_one(sql, &[]).await {
            Ok(row) => Ok(row.get(0)),
            Err(e) => Err(self.report(&format!("{sql}: {e}"))),
        }
    }

    /// The end of a case: a running stream stopped, then `run --once` until one does nothing (at most
    /// five times).
    pub(crate) async fn drain(&mut self) -> Result<(), String> {
        if self.stream.is_some() {
            self.steps.push(Step::Stop);
            self.stop().await?;
        }
        for _ in 0..5 {
            if !self.once().await? {
                return Ok(());
            }
        }
        Err(self.report("five runs of run --once in a row each did something: no rest"))
    }
}

/// A case that fails while a stream runs ends it, so that its slot is free to be dropped.
impl Drop for Harness<'_> {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            stream.shutdown.cancel();
            stream.run.abort();
        }
    }
}
