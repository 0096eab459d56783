//! Initial sync and reconcile: make both sides share what they do not, table by table, by reading
//! hashes ([`crate::capture::scan`]), deciding per key ([`crate::commit::reconcile`]) and writing only
//! what differs, through the commit engine.
//!
//! **Nothing falls between the copy and the stream, nothing changes twice.** A table is scanned only
//! once its capture triggers and its slot exist (`init` made them). A desktop change is then either
//! older than the desktop scan (the scan sees it) or in the outbox (the forward worker applies it); a
//! phone's change is older than the cloud scan or in the slot, or both. Forward repairs are keys put
//! in the outbox, so they are applied exactly as captured changes are: "make the cloud equal the
//! desktop's rows for these keys, as they are now". Applying a key twice writes it once (the second time
//! finds the cloud equal and writes nothing). Reverse repairs carry the old image the desktop must hold
//! and are committed under the lock the reverse stream's groups take. A change the stream brings again
//! after a repair finds the desktop already holding its new version and writes nothing. A repair
//! older than what the stream brought finds another row than its old image: it is not applied.
//!
//! **Memory** is bounded by the differences, not the tables: scan lines are merged as they stream, the
//! keys to send forward go to the outbox every [`FLUSH_KEYS`], and only the desktop repairs wait in
//! memory until the scan ends. A cloud-key table holds one scope at a time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use crate::capture::logical::CUT_PREFIX;
use crate::capture::outbox::NOTIFY_CHANNEL;
use crate::capture::scan::{Key, Line, Lines, ScanSql};
use crate::change::Side;
use crate::commit::reconcile::{self, CloudRow, Entry, KeyDecision, Repair, ScopeRepair};
use crate::commit::reverse::Reverse;
use crate::commit::{Direction, Target};
use crate::config::Config;
use crate::db::{self, Context, DbError};
use crate::transform::{Kind, Mapping};

use super::{RunError, RunOptions};

/// Keys sent forward per outbox insert.
const FLUSH_KEYS: usize = 10_000;
/// Desktop repairs fetched and staged at a time (all in one transaction).
const REPAIRS_PER_STAGE: usize = 5_000;
/// How long a reconcile waits for the running reverse worker to reach its cut.
const CUT_DEADLINE: Duration = Duration::from_secs(600);

/// What to reconcile.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub forward: bool,
    pub reverse: bool,
    /// Count the differences; write nothing.
    pub dry_run: bool,
}

/// What a reconcile found and did in one direction of one table.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub conflicts: u64,
    pub dead_letters: u64,
}

impl Counts {
    /// Rows written (or, in a dry run, to write).
    pub fn written(&self) -> u64 {
        self.inserted + self.updated + self.deleted
    }

    pub fn add(&mut self, other: &Counts) {
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.unchanged += other.unchanged;
        self.conflicts += other.conflicts;
        self.dead_letters += other.dead_letters;
    }
}

/// One table's reconcile.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// The desktop table, as an operator writes it.
    pub table: String,
    pub forward: Counts,
    pub reverse: Counts,
    pub seconds: f64,
    /// Why the table was not reconciled (parked), if it was not.
    pub skipped: Option<String>,
}

/// Told how a reconcile goes (a progress bar, log lines).
pub trait Watch: Send + Sync {
    /// Table `table` starts; about `rows` rows on the desktop (when known).
    fn start(&self, table: &str, rows: Option<u64>);
    /// `rows` more desktop rows were compared.
    fn advance(&self, rows: u64);
    fn finish(&self, report: &TableReport);
}

/// A [`Watch`] that says nothing.
pub struct Quiet;

impl Watch for Quiet {
    fn start(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn finish(&self, _: &TableReport) {}
}

/// What one table's scan left to finish: the outbox rows it added (applied by the forward applier).
#[derive(Debug, Clone, Copy, Default)]
pub struct Handed {
    /// The highest outbox id the scan added.
    pub upto: Option<i64>,
}

/// One table's connections and statements.
struct Scan<'a> {
    mapping: &'a Mapping,
    i: usize,
    sql: ScanSql,
    request: Request,
    /// The desktop session that writes (outbox rows, repairs).
    desktop: &'a Client,
    target: &'a mut Target,
    plan: &'a Reverse,
    report: TableReport,
    forward_now: Vec<Key>,
    /// Keys to send forward once the desktop repairs of their scope are committed.
    forward_after: Vec<Key>,
    repairs: Vec<Repair>,
    handed: Handed,
}

/// The desktop session a reconcile writes with: marked as tandem's, with the reverse staging tables.
pub struct Writer {
    pub desktop: Client,
    target: Target,
    plan: Reverse,
}

impl Writer {
    pub async fn connect(config: &Config, mapping: &Mapping) -> Result<Writer, RunError> {
        let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
        let plan = Reverse::new(mapping);
        let target = Target::prepare(&desktop, Direction::Reverse, plan.staging()).await?;
        Ok(Writer {
            desktop,
            target,
            plan,
        })
    }
}

/// Reconciles table `i`: scans both sides, writes the desktop repairs, hands the forward keys to the
/// outbox. The forward keys are applied by whoever applies the outbox (see [`forward_applied`]).
pub async fn table(
    config: &Config,
    mapping: &Mapping,
    i: usize,
    request: Request,
    writer: &mut Writer,
    watch: &dyn Watch,
) -> Result<(TableReport, Handed), RunError> {
    let started = Instant::now();
    let t = &mapping.tables[i];
    let name = t.table.desktop.to_string();
    let sql = ScanSql::build(mapping, i);
    let (desktop_scan, cloud_scan) = tokio::try_join!(
        db::connect(Side::Desktop, &config.desktop.url),
        db::connect(Side::Cloud, &config.cloud.url)
    )?;
    let estimate = desktop_scan
        .query_one(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = $1::text::regclass",
            &[&t.table.desktop.quoted()],
        )
        .await
        .ctx(Side::Desktop, format!("estimating the rows of {name}"))?
        .get::<_, i64>(0);
    watch.start(&name, u64::try_from(estimate).ok());
    // The journal and the cloud's rows in one snapshot: an entry describes a change the scan sees. A
    // reconcile that writes mobile rows cuts the reverse stream where that snapshot is.
    let cut = if request.reverse && !request.dry_run {
        Some(Cut::make(config, &writer.desktop, &cloud_scan, mapping, i).await?)
    } else {
        cloud_scan
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .ctx(
                Side::Cloud,
                format!("beginning the scan of {}", t.table.cloud),
            )?;
        None
    };
    let result = compare_and_repair(
        mapping,
        i,
        sql,
        request,
        writer,
        watch,
        &desktop_scan,
        &cloud_scan,
        cut.as_ref(),
    )
    .await;
    if let Some(cut) = &cut {
        cut.done(config).await?;
    }
    let (mut report, handed) = result?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok((report, handed))
}

/// [`table`] once both scans' snapshots are taken.
#[allow(clippy::too_many_arguments)]
async fn compare_and_repair(
    mapping: &Mapping,
    i: usize,
    sql: ScanSql,
    request: Request,
    writer: &mut Writer,
    watch: &dyn Watch,
    desktop_scan: &Client,
    cloud_scan: &Client,
    cut: Option<&Cut>,
) -> Result<(TableReport, Handed), RunError> {
    let t = &mapping.tables[i];
    let name = t.table.desktop.to_string();
    let entries = reconcile::journal(cloud_scan, &sql, &name).await?;
    let journal_upto = entries.iter().map(|e| e.id).max();
    let mut by_key: HashMap<&Key, Vec<&Entry>> = HashMap::new();
    for e in &entries {
        by_key.entry(&e.key).or_default().push(e);
    }
    let width = sql.width;
    let (scanning_desktop, scanning_cloud) = (
        format!("scanning {name}"),
        format!("scanning {}", t.table.cloud),
    );
    let (d, c) = tokio::try_join!(
        Lines::start(
            desktop_scan,
            Side::Desktop,
            &sql.desktop,
            width,
            &scanning_desktop
        ),
        Lines::start(cloud_scan, Side::Cloud, &sql.cloud, width, &scanning_cloud)
    )?;
    let mut scan = Scan {
        mapping,
        i,
        sql,
        request,
        desktop: &writer.desktop,
        target: &mut writer.target,
        plan: &writer.plan,
        report: TableReport {
            table: name.clone(),
            forward: Counts::default(),
            reverse: Counts::default(),
            seconds: 0.0,
            skipped: None,
        },
        forward_now: Vec::new(),
        forward_after: Vec::new(),
        repairs: Vec::new(),
        handed: Handed::default(),
    };
    let (mut d, mut c) = (Grouped::new(d), Grouped::new(c));
    let (mut dg, mut cg) = tokio::try_join!(d.next(), c.next())?;
    let mut seen = 0;
    while dg.is_some() || cg.is_some() {
        let order = match (&dg, &cg) {
            (Some(a), Some(b)) => a.0.cmp(&b.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let (desktop, cloud) = match order {
            std::cmp::Ordering::Less => (dg.take(), None),
            std::cmp::Ordering::Greater => (None, cg.take()),
            std::cmp::Ordering::Equal => (dg.take(), cg.take()),
        };
        let key = desktop
            .as_ref()
            .or(cloud.as_ref())
            .map(|g| g.0.clone())
            .expect("one side has the key");
        let journal = by_key.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let rows = desktop.as_ref().map_or(0, |g| g.1.len() as u64);
        scan.decide(
            key,
            desktop.map(|g| g.1).unwrap_or_default(),
            cloud.map(|g| g.1).unwrap_or_default(),
            journal,
        );
        if scan.forward_now.len() >= FLUSH_KEYS {
            scan.flush(false).await?;
        }
        seen += rows;
        if seen >= 10_000 {
            watch.advance(seen);
            seen = 0;
        }
        if dg.is_none() {
            dg = d.next().await?;
        }
        if cg.is_none() {
            cg = c.next().await?;
        }
    }
    watch.advance(seen);
    scan.flush(false).await?;
    // The mobile rows to bring are read in the scan's snapshot: what came after, the stream brings.
    scan.repair(cloud_scan, cut).await?;
    cloud_scan
        .batch_execute("COMMIT")
        .await
        .ctx(Side::Cloud, "ending the scan")?;
    scan.flush(true).await?;
    if request.reverse
        && !request.dry_run
        && let Some(upto) = journal_upto
    {
        cloud_scan.execute(&scan.sql.prune, &[&upto]).await.ctx(
            Side::Cloud,
            format!("pruning the journal of {}", t.table.cloud),
        )?;
    }
    let Scan { report, handed, .. } = scan;
    Ok((report, handed))
}

/// A reconcile's cut in the reverse stream (see `tandem.cuts`).
struct Cut {
    id: String,
    /// The cloud position of the scan's snapshot (`pg_lsn` text).
    position: String,
}

impl Cut {
    /// Takes the scan's snapshot on `scan` (a cloud connection) where the stream is cut: with the
    /// table locked against writes for a moment, no transaction writing it is in flight, so those that
    /// committed before the cut's message are exactly those the snapshot sees. When a reverse worker
    /// streams, waits until it has applied everything before the cut (it then waits for [`Cut::done`]).
    async fn make(
        config: &Config,
        desktop: &Client,
        scan: &Client,
        mapping: &Mapping,
        i: usize,
    ) -> Result<Cut, RunError> {
        let t = &mapping.tables[i];
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!("{}-{}-{i}", std::process::id(), since_epoch.as_nanos());
        let name = t.table.desktop.to_string();
        desktop
            .execute(
                "INSERT INTO tandem.cuts (id, table_name) VALUES ($1, $2)",
                &[&id, &name],
            )
            .await
            .ctx(Side::Desktop, "recording a reconcile's cut in tandem.cuts")?;
        let lock = db::connect(Side::Cloud, &config.cloud.url).await?;
        lock.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; LOCK TABLE {} IN SHARE MODE",
            t.table.cloud.quoted()
        ))
        .await
        .ctx(
            Side::Cloud,
            format!("locking {} for a moment to cut the stream", t.table.cloud),
        )?;
        let row = lock
            .query_one(
                "SELECT pg_export_snapshot(), pg_logical_emit_message(false, $1, $2)::text,
                        (SELECT active FROM pg_replication_slots WHERE slot_name = $3)",
                &[&CUT_PREFIX, &id, &config.cloud.slot],
            )
            .await
            .ctx(Side::Cloud, "cutting the reverse stream")?;
        let (snapshot, position, streaming): (String, String, Option<bool>) =
            (row.get(0), row.get(1), row.get(2));
        scan.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            crate::change::quote_literal(&snapshot)
        ))
        .await
        .ctx(
            Side::Cloud,
            format!("beginning the scan of {}", t.table.cloud),
        )?;
        lock.batch_execute("COMMIT")
            .await
            .ctx(Side::Cloud, "ending the cut")?;
        let cut = Cut { id, position };
        if streaming == Some(true) {
            let deadline = Instant::now() + CUT_DEADLINE;
            loop {
                let reached: bool = desktop
                    .query_one(
                        "SELECT reached_at IS NOT NULL FROM tandem.cuts WHERE id = $1",
                        &[&cut.id],
                    )
                    .await
                    .ctx(Side::Desktop, "reading tandem.cuts")?
                    .get(0);
                if reached {
                    break;
                }
                if Instant::now() > deadline {
                    cut.done(config).await?;
                    return Err(RunError::Worker(format!(
                        "the running `tandem run` did not reach the reconcile's cut of {name} in {} s: is its reverse direction stuck? (see its log, or stop it and reconcile again)",
                        CUT_DEADLINE.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(cut)
    }

    /// Lets the reverse worker go on past the cut.
    async fn done(&self, config: &Config) -> Result<(), RunError> {
        let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
        desktop
            .execute(
                "UPDATE tandem.cuts SET done_at = now() WHERE id = $1",
                &[&self.id],
            )
            .await
            .ctx(Side::Desktop, "recording a reconcile's cut as done")?;
        Ok(())
    }
}

impl Scan<'_> {
    /// Decides one key (or scope) from both sides' lines.
    fn decide(&mut self, key: Key, desktop: Vec<Line>, cloud: Vec<Line>, journal: &[&Entry]) {
        let (forward, reverse) = (self.request.forward, self.request.reverse);
        let f = &mut self.report.forward;
        let r = &mut self.report.reverse;
        match &self.mapping.tables[self.i].kind {
            Kind::Key(_) => {
                // Several desktop rows with one key: the forward statements sort them out as always.
                let decision = if desktop.len() > 1 {
                    KeyDecision::Update
                } else {
                    reconcile::decide_key(
                        desktop.first().map(|l| l.hashes),
                        cloud.first().map(|l| (l.hashes, l.mobile)),
                        journal,
                    )
                };
                let mobile = cloud.first().is_some_and(|l| l.mobile);
                match decision {
                    KeyDecision::Unchanged if mobile => r.unchanged += 1,
                    KeyDecision::Unchanged => f.unchanged += 1,
                    KeyDecision::Insert | KeyDecision::Update | KeyDecision::Delete => {
                        match decision {
                            KeyDecision::Insert => f.inserted += 1,
                            KeyDecision::Update => f.updated += 1,
                            _ => f.deleted += 1,
                        }
                        if forward {
                            self.forward_now.push(key);
                        }
                    }
                    KeyDecision::Bring { old } => {
                        if old.is_some() {
                            r.updated += 1;
                        } else {
                            r.inserted += 1;
                        }
                        if reverse {
                            self.repairs.push(Repair::Bring {
                                key,
                                cloud_key: None,
                                old,
                            });
                        }
                    }
                    KeyDecision::Collision { old } => {
                        // Staged all the same: the reverse plan logs the desktop's row and the phone's
                        // as a conflict and changes nothing.
                        r.conflicts += 1;
                        if reverse {
                            self.repairs.push(Repair::Bring {
                                key,
                                cloud_key: None,
                                old,
                            });
                        }
                    }
                    KeyDecision::Remove { old } => {
                        r.deleted += 1;
                        if reverse {
                            self.repairs.push(Repair::Remove {
                                cloud_key: None,
                                old,
                            });
                        }
                    }
                }
            }
            Kind::Scoped { .. } => {
                let d: Vec<_> = desktop.iter().map(|l| l.hashes).collect();
                let c: Vec<CloudRow> = cloud
                    .into_iter()
                    .map(|l| CloudRow {
                        hashes: l.hashes,
                        mobile: l.mobile,
                        cloud_key: l.cloud_key,
                    })
                    .collect();
                let out = reconcile::decide_scope(&d, &c, journal);
                f.unchanged += out.unchanged;
                r.unchanged += out.unchanged_mobile;
                f.inserted += out.inserts;
                f.deleted += out.deletes;
                let repaired = !out.repairs.is_empty();
                for repair in out.repairs {
                    match repair {
                        ScopeRepair::Bring {
                            cloud_key,
                            old,
                            contested,
                        } => {
                            if contested {
                                r.conflicts += 1;
                            } else if old.is_some() {
                                r.updated += 1;
                            } else {
                                r.inserted += 1;
                            }
                            self.repairs.push(Repair::Bring {
                                key: key.clone(),
                                cloud_key: Some(cloud_key),
                                old,
                            });
                        }
                        ScopeRepair::Remove { cloud_key, old } => {
                            r.deleted += 1;
                            self.repairs.push(Repair::Remove { cloud_key, old });
                        }
                    }
                }
                if !reverse {
                    self.repairs.clear();
                }
                if forward && out.inserts + out.deletes > 0 {
                    // A scope whose desktop rows a repair changes is replaced after it, from the rows
                    // the repair left (a forward-only reconcile leaves it for a whole one).
                    if !repaired {
                        self.forward_now.push(key);
                    } else if reverse {
                        self.forward_after.push(key);
                    }
                }
            }
        }
    }

    /// Hands the keys waiting to be sent forward to the outbox (`after`: those waiting for repairs).
    async fn flush(&mut self, after: bool) -> Result<(), RunError> {
        let keys = std::mem::take(if after {
            &mut self.forward_after
        } else {
            &mut self.forward_now
        });
        if keys.is_empty() || self.request.dry_run || !self.request.forward {
            return Ok(());
        }
        let t = &self.mapping.tables[self.i];
        let width = self.sql.width;
        let mut columns: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(keys.len()); width];
        for key in &keys {
            for (n, part) in key.texts().into_iter().enumerate() {
                columns[n].push(part);
            }
        }
        let args: Vec<String> = (0..width).map(|n| format!("${}::text[]", n + 3)).collect();
        let names: Vec<String> = (1..=width).map(|n| format!("u.k{n}")).collect();
        let sql = format!(
            "WITH added AS (INSERT INTO tandem.outbox (table_schema, table_name, op, row_key)
                SELECT $1, $2, 'U', ARRAY[{names}] FROM unnest({args}) AS u({aliases}) RETURNING id)
             SELECT max(id), pg_notify('{NOTIFY_CHANNEL}', '') FROM added",
            names = names.join(", "),
            args = args.join(", "),
            aliases = (1..=width)
                .map(|n| format!("k{n}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&t.table.desktop.schema, &t.table.desktop.name];
        for c in &columns {
            params.push(c);
        }
        let row = self.desktop.query_one(&sql, &params).await.ctx(
            Side::Desktop,
            format!("handing the keys of {} to tandem.outbox", t.table.desktop),
        )?;
        let upto: Option<i64> = row.get(0);
        self.handed.upto = self.handed.upto.max(upto);
        Ok(())
    }

    /// Writes the desktop repairs in one transaction, staged [`REPAIRS_PER_STAGE`] at a time, with the
    /// cut's position recorded as the table's sync point in the same transaction: the reverse stream
    /// skips the table's transactions from before it (the repairs brought them), whether this process
    /// crashes before or after the commit.
    async fn repair(&mut self, cloud: &Client, cut: Option<&Cut>) -> Result<(), RunError> {
        if self.request.dry_run || !self.request.reverse {
            return Ok(());
        }
        let i = self.i;
        for chunk in self.repairs.chunks(REPAIRS_PER_STAGE) {
            reconcile::stage(
                self.target,
                self.plan,
                self.desktop,
                cloud,
                self.mapping,
                i,
                &self.sql,
                chunk,
            )
            .await?;
        }
        let also = match cut {
            Some(cut) => format!(
                "UPDATE tandem.table_state SET sync_lsn = {}::pg_lsn WHERE table_name = {}",
                crate::change::quote_literal(&cut.position),
                crate::change::quote_literal(&self.mapping.tables[i].table.desktop.to_string()),
            ),
            None => String::new(),
        };
        let outcome =
            reconcile::commit(self.target, self.plan, self.desktop, self.mapping, i, &also).await?;
        self.report.reverse.conflicts = outcome.conflicts;
        self.report.reverse.dead_letters = outcome.dead_letters;
        Ok(())
    }
}

/// Scan lines grouped by key (a cloud-key table's scope, or a desktop key held by several rows).
struct Grouped {
    lines: Lines,
    pending: Option<Line>,
}

impl Grouped {
    fn new(lines: Lines) -> Self {
        Grouped {
            lines,
            pending: None,
        }
    }

    async fn next(&mut self) -> Result<Option<(Key, Vec<Line>)>, DbError> {
        let first = match self.pending.take() {
            Some(line) => line,
            None => match self.lines.next().await? {
                Some(line) => line,
                None => return Ok(None),
            },
        };
        let key = first.key.clone();
        let mut group = vec![first];
        while let Some(line) = self.lines.next().await? {
            if line.key == key {
                group.push(line);
            } else {
                self.pending = Some(line);
                break;
            }
        }
        Ok(Some((key, group)))
    }
}

/// Syncs the tables whose initial sync is due (`tandem.table_state.synced_at` is NULL: `init` added
/// them, or made a new slot) and that are not parked, both ways. A table is `syncing` while its scan
/// runs and `streaming` once its repairs are written and its forward keys handed to the outbox (the
/// forward worker applies those in order with every captured change). A table whose sync fails stays
/// due, and the others go on.
pub async fn due(
    config: &Config,
    tables: &super::Tables,
    watch: &dyn Watch,
) -> Result<Vec<TableReport>, RunError> {
    let snapshot = tables.snapshot();
    let mapping = &snapshot.mapping;
    let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let names: Vec<String> = desktop
        .query(
            "SELECT table_name FROM tandem.table_state WHERE synced_at IS NULL",
            &[],
        )
        .await
        .ctx(Side::Desktop, "reading which tables are due to sync")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let due: Vec<usize> = mapping
        .parents_first
        .iter()
        .copied()
        .filter(|&i| {
            !snapshot.is_parked(i) && names.contains(&mapping.tables[i].table.desktop.to_string())
        })
        .collect();
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let started = Instant::now();
    let mut writer = Writer::connect(config, mapping).await?;
    let request = Request {
        forward: true,
        reverse: true,
        dry_run: false,
    };
    let mut reports = Vec::new();
    for i in due {
        let name = mapping.tables[i].table.desktop.to_string();
        set_state(&desktop, &name, "syncing").await?;
        match table(config, mapping, i, request, &mut writer, watch).await {
            Ok((report, _)) => {
                watch.finish(&report);
                set_state(&desktop, &name, "streaming").await?;
                tracing::info!(
                    table = %name,
                    to_cloud = report.forward.written(),
                    to_desktop = report.reverse.written(),
                    unchanged = report.forward.unchanged + report.reverse.unchanged,
                    conflicts = report.reverse.conflicts,
                    seconds = report.seconds,
                    "initial sync done; the table streams"
                );
                reports.push(report);
            }
            Err(e) => {
                tracing::error!(table = %name, error = %e, "the table's initial sync failed; it is tried again on the next change of the tables or the next run");
                set_state(&desktop, &name, "new").await?;
                writer = Writer::connect(config, mapping).await?;
            }
        }
    }
    record(
        config,
        "sync",
        started,
        &serde_json::json!({ "dry_run": false, "tables": reports }),
    )
    .await?;
    Ok(reports)
}

async fn set_state(desktop: &Client, table: &str, state: &str) -> Result<(), RunError> {
    desktop
        .execute(
            "UPDATE tandem.table_state SET state = $2, since = now(),
                    synced_at = CASE WHEN $2 = 'streaming' THEN now() ELSE synced_at END
              WHERE table_name = $1 AND state <> 'parked'",
            &[&table, &state],
        )
        .await
        .ctx(
            Side::Desktop,
            format!("recording {table} as {state} in tandem.table_state"),
        )?;
    Ok(())
}

/// Syncs the tables that become due while `run` streams (a table `init` added, picked up by the
/// recheck), once both workers run with the tables that include them: a phone's change after the scan
/// is then received by a session that knows the table.
pub async fn syncing(
    config: Config,
    tables: std::sync::Arc<super::Tables>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut changes = tables.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let generation = changes.borrow_and_update().generation;
        if !tables.workers_at(generation, &shutdown).await {
            return;
        }
        if let Err(e) = due(&config, &tables, &Quiet).await {
            tracing::warn!(error = %e, "syncing the tables due failed; trying again on the next change");
        }
    }
}

/// Records a reconcile (or an initial sync) in the desktop's `tandem.reconciles`.
pub async fn record(
    config: &Config,
    trigger: &str,
    started: Instant,
    report: &impl Serialize,
) -> Result<(), RunError> {
    let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let json = serde_json::to_value(report).unwrap_or_default();
    let dry_run = json
        .get("dry_run")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let ago = started.elapsed().as_secs_f64();
    desktop
        .execute(
            "INSERT INTO tandem.reconciles (started_at, trigger, dry_run, report)
             VALUES (now() - make_interval(secs => $1), $2, $3, $4)",
            &[&ago, &trigger, &dry_run, &json],
        )
        .await
        .ctx(
            Side::Desktop,
            "recording the reconcile in tandem.reconciles",
        )?;
    Ok(())
}

/// Waits until the outbox rows up to `upto` of `tables` (desktop schema and name) are applied: by the
/// running forward applier if there is one, by this process otherwise.
pub async fn forward_applied(
    config: &Config,
    tables: &[(String, String)],
    upto: i64,
) -> Result<(), RunError> {
    let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let (schemas, names): (Vec<&str>, Vec<&str>) =
        tables.iter().map(|(s, n)| (s.as_str(), n.as_str())).unzip();
    let mut waited = Instant::now();
    let mut applied_here = false;
    loop {
        let pending: bool = desktop
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM tandem.outbox WHERE id <= $1
                    AND (table_schema, table_name) IN (SELECT * FROM unnest($2::text[], $3::text[])))",
                &[&upto, &schemas, &names],
            )
            .await
            .ctx(Side::Desktop, "reading what tandem.outbox still holds")?
            .get(0);
        if !pending {
            return Ok(());
        }
        if applied_here {
            return Err(RunError::Worker(format!(
                "the forward direction left outbox rows of {} unapplied (is a table parked? see `tandem check`)",
                names.join(", ")
            )));
        }
        let free: bool = desktop
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&db::LOCK_CLASS, &db::FORWARD_LOCK],
            )
            .await
            .ctx(Side::Desktop, "looking for a running forward applier")?
            .get(0);
        if free {
            desktop
                .execute(
                    "SELECT pg_advisory_unlock($1, $2)",
                    &[&db::LOCK_CLASS, &db::FORWARD_LOCK],
                )
                .await
                .ctx(Side::Desktop, "releasing the forward applier lock")?;
            super::run_forward(
                config,
                RunOptions { once: true },
                tokio_util::sync::CancellationToken::new(),
            )
            .await?;
            applied_here = true;
            continue;
        }
        if waited.elapsed() > Duration::from_secs(30) {
            tracing::info!("waiting for the running `tandem run` to apply the reconcile's keys");
            waited = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
