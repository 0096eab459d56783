//! Initial sync and reconcile: make both sides share what they do not, table by table, by reading
//! hashes ([`crate::capture::scan`]), deciding per key ([`crate::commit::reconcile`]) and writing only
//! what differs, through the commit engine.
//!
//! **Nothing falls between the copy and the stream, and nothing changes a row twice.** A table is
//! scanned only once its capture triggers and its slot exist (`init` made them, and registered the
//! table after them).
//! - *Forward.* A desktop change is older than the desktop scan (the scan sees it) or in the outbox (the
//!   forward applier applies it), or both. Forward repairs are applied exactly as captured changes are:
//!   "make the cloud equal the desktop's rows for these keys, as they are now", by the one forward
//!   applier ([`Direct`] when this process holds the forward lock, else the running `run` through the
//!   outbox). Applying a key a second time finds the cloud equal and writes nothing, and an older
//!   version can never follow a newer one: both read the desktop when they apply, one after the other.
//! - *Reverse.* The cloud scan's snapshot is taken at a cut ([`cut`]): with the table locked against
//!   writes for a moment, the transactions that wrote it before the cut's position are exactly those
//!   the snapshot sees. A running reverse worker applies everything before the cut, then waits; the
//!   repairs bring the desktop to the snapshot, and the cut's position is recorded as the table's
//!   `sync_lsn` in the repairs' own transaction, so the stream skips the table's transactions from
//!   before it (still in the slot when no worker ran) and applies those after it, once. A repair is
//!   compared with the desktop's row as it is under the lock the stream's groups take: a desktop
//!   change made meanwhile is a conflict, never overwritten.
//! - *A table the cloud holds no row of* (and its journal no entry of), in the scan's snapshot, needs
//!   no comparison: every desktop row is an insert and nothing comes back. With [`Direct`], no hash is
//!   read; the whole desktop table goes through the forward plan as it is when applied (the same
//!   argument as above), into a target filled plainly if it is still empty once locked
//!   ([`crate::commit::forward::Forward::fill`]); the cut is taken and recorded as for any table, so
//!   a phone's row the cloud gained since comes back through the stream.
//!
//! **Two tables at a time** ([`lanes`]), each on its own sessions, a table's writes after those of the
//! tables its rows reference.
//!
//! **Memory** is bounded by the differences, not the tables: scan lines are merged as they stream, the
//! keys to send forward are listed on the desktop (or handed to the outbox) every [`FLUSH_KEYS`], and
//! only the desktop repairs wait in memory until the scan ends. A cloud-key table holds one scope at a
//! time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use crate::capture::scan::{Key, Lines, ScanSql};
use crate::change::Side;
use crate::commit::reconcile::{self, Entry};
use crate::config::Config;
use crate::db::{self, Context};
use crate::transform::Mapping;

use super::{RunError, RunOptions};

mod cut;
mod due;
mod lanes;
mod scan;
mod writer;

use cut::Cut;
pub use due::{due, syncing};
pub use lanes::{Outcome, reconcile_all};
use scan::{Grouped, Scan};
pub use writer::Writer;
use writer::{Direct, prepared};

/// Keys sent forward per outbox insert.
const FLUSH_KEYS: usize = 10_000;
/// Desktop repairs fetched and staged at a time (all in one transaction).
pub(super) const REPAIRS_PER_STAGE: usize = 5_000;

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
    let estimate = writer
        .scan_desktop
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
        Some(Cut::make(config, writer, mapping, i).await?)
    } else {
        writer
            .scan_cloud
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .ctx(
                Side::Cloud,
                format!("beginning the scan of {}", t.table.cloud),
            )?;
        None
    };
    // The table's horizon, for the scan: a phone's row the desktop has received compares as its own.
    let horizon: Option<String> = writer
        .desktop
        .query_opt(
            "SELECT horizon FROM tandem.table_state WHERE table_name = $1",
            &[&name],
        )
        .await
        .ctx(Side::Desktop, format!("reading the horizon of {name}"))?
        .and_then(|r| r.get(0));
    writer
        .scan_cloud
        .execute(
            "SELECT pg_catalog.set_config($1, $2, true)",
            &[
                &crate::config::owner::horizon_setting(i),
                &horizon.clone().unwrap_or_default(),
            ],
        )
        .await
        .ctx(Side::Cloud, "setting the scan's horizon")?;
    let result = compare_and_repair(
        mapping,
        i,
        sql,
        (request, horizon),
        writer,
        watch,
        cut.as_ref(),
    )
    .await;
    if let Some(cut) = &cut {
        // After a failure the writer's session may be in a failed transaction: a session of its own.
        match &result {
            Ok(_) => cut.done(&writer.desktop).await?,
            Err(_) => {
                let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
                cut.done(&desktop).await?;
            }
        }
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
    (request, horizon): (Request, Option<String>),
    writer: &mut Writer,
    watch: &dyn Watch,
    cut: Option<&Cut>,
) -> Result<(TableReport, Handed), RunError> {
    let received_known = horizon.is_some();
    let Writer {
        desktop,
        target,
        plan,
        direct,
        scan_desktop: desktop_scan,
        scan_cloud: cloud_scan,
        gate,
        ..
    } = writer;
    let (desktop_scan, cloud_scan) = (&*desktop_scan, &*cloud_scan);
    let t = &mapping.tables[i];
    let name = t.table.desktop.to_string();
    // What the cloud holds, in the scan's snapshot: applied here, a table the cloud holds no row of
    // (and no journal entry of) needs no comparison; without mobile rows (and journal entries), no
    // desktop row is compared by its reverse hash.
    let (entries, held) = tokio::try_join!(reconcile::journal(cloud_scan, &sql, &name), async {
        let row = cloud_scan.query_one(&sql.cloud_holds, &[]).await;
        let row = row.ctx(Side::Cloud, format!("reading what {} holds", t.table.cloud))?;
        Ok((row.get::<_, bool>(0), row.get::<_, bool>(1)))
    })?;
    let (cloud_empty, mobile) = held;
    // A desktop change waiting in the outbox decides its key when it is applied, not here; what it
    // was (see `reconcile::Waiting`) tells a row the desktop changed from one it never had.
    let mut pending = scan::Pending::default();
    let waiting = desktop_scan
        .query(
            "SELECT row_key, (array_agg(op ORDER BY id))[1] = 'I', bool_or(op <> 'I') FROM tandem.outbox \
              WHERE table_schema = $1 AND table_name = $2 GROUP BY row_key",
            &[&t.table.desktop.schema, &t.table.desktop.name],
        )
        .await
        .ctx(Side::Desktop, format!("reading the outbox of {name}"))?;
    for r in &waiting {
        match r.get::<_, Option<Vec<Option<String>>>>(0) {
            // A TRUNCATE: every key of the table may have changed.
            None => pending.truncated = true,
            Some(key) => {
                pending.keys.insert(key, (r.get(1), r.get(2)));
            }
        }
    }
    // The rows open conflicts by concurrency keep while a person decides: their keys (cloud keys).
    let named: Vec<String> = match &t.kind {
        crate::transform::Kind::Key(key) => key
            .iter()
            .map(|k| format!("x.row_key ->> {}", crate::expr::lit(&k.name)))
            .collect(),
        crate::transform::Kind::Scoped { .. } => vec!["x.row_key ->> 'cloud_key'".to_string()],
    };
    let conflicted: std::collections::HashSet<Vec<Option<String>>> = desktop_scan
        .query(
            &format!(
                "SELECT ARRAY[{}]::text[] FROM tandem.conflicts x WHERE x.resolved_at IS NULL \
                 AND x.direction = 'reverse' AND x.table_name = $1 AND x.kind IS NOT NULL",
                named.join(", ")
            ),
            &[&name],
        )
        .await
        .ctx(
            Side::Desktop,
            format!("reading the open conflicts of {name}"),
        )?
        .iter()
        .map(|r| r.get::<_, Vec<Option<String>>>(0))
        .collect();
    // An empty cloud takes the desktop's rows whole, unless an open conflict keeps one of them (a
    // phone deleted its row while the desktop changed it: the person decides, not the copy).
    let whole = cloud_empty
        && entries.is_empty()
        && conflicted.is_empty()
        && direct.is_some()
        && request.forward
        && !request.dry_run;
    let forward_only = !mobile && entries.is_empty();
    let journal_read: Vec<i64> = entries.iter().map(|e| e.id).collect();
    let mut by_key: HashMap<&Key, Vec<&Entry>> = HashMap::new();
    // A cloud-key table's rows a phone made that the desktop has not received (their inserts are
    // journaled): what a phone did with them since is new to the desktop, whatever content it holds.
    // Not on a table's first sync (no horizon): an old sync may have copied them.
    let mut made = std::collections::HashSet::new();
    for e in &entries {
        if e.inserted {
            if received_known && let Some(ck) = &e.cloud_key {
                made.insert(ck.clone());
            }
        } else {
            by_key.entry(&e.key).or_default().push(e);
        }
    }
    let mut scan = Scan {
        mapping,
        i,
        sql,
        request,
        desktop,
        target,
        plan,
        direct: direct.as_mut(),
        listed: 0,
        report: TableReport {
            table: name.clone(),
            forward: Counts::default(),
            reverse: Counts::default(),
            seconds: 0.0,
            skipped: None,
        },
        forward_now: Vec::new(),
        forward_after: Vec::new(),
        repairs: Default::default(),
        handed: Handed::default(),
        pending,
        conflicted,
        received_known,
        made,
        gate: gate.take(),
    };
    if whole {
        return scan.whole(cloud_scan, cut, watch).await;
    }
    let width = scan.sql.width;
    let (scanning_desktop, scanning_cloud) = (
        format!("scanning {name}"),
        format!("scanning {}", t.table.cloud),
    );
    let (d, c) = tokio::try_join!(
        Lines::start(
            desktop_scan,
            Side::Desktop,
            match forward_only {
                true => &scan.sql.desktop_forward,
                false => &scan.sql.desktop,
            },
            width,
            &scanning_desktop
        ),
        Lines::start(
            cloud_scan,
            Side::Cloud,
            &scan.sql.cloud,
            width,
            &scanning_cloud
        )
    )?;
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
    scan.parents_synced().await;
    // The mobile rows to bring are read in the scan's snapshot: what came after, the stream brings.
    scan.repair(cloud_scan, cut).await?;
    cloud_scan
        .batch_execute("COMMIT")
        .await
        .ctx(Side::Cloud, "ending the scan")?;
    scan.flush(true).await?;
    scan.apply_listed().await?;
    // The entries read are applied; those the horizon sees (the desktop received their changes) are
    // of no further use: without them the journal would only grow while the stream keeps up.
    // (Only those read: one with a lower id may have committed after the scan's snapshot.)
    if request.reverse && !request.dry_run && (!journal_read.is_empty() || horizon.is_some()) {
        cloud_scan
            .execute(&scan.sql.prune, &[&journal_read, &horizon])
            .await
            .ctx(
                Side::Cloud,
                format!("pruning the journal of {}", t.table.cloud),
            )?;
    }
    let Scan { report, handed, .. } = scan;
    Ok((report, handed))
}

/// Records a reconcile (or an initial sync) in the desktop's `tandem.reconciles`.
pub async fn record(
    desktop: &Client,
    trigger: &str,
    started: Instant,
    report: &impl Serialize,
) -> Result<(), RunError> {
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
    desktop: &Client,
    tables: &[(String, String)],
    upto: i64,
) -> Result<(), RunError> {
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
        if db::try_lock(desktop, Side::Desktop, db::FORWARD_LOCK).await? {
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
