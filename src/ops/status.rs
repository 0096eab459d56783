//! `tandem status`: how both directions are doing, read from the two databases alone, so it works
//! while `run` is stopped (when it matters most). `run` sets its gauges from the same reading
//! (`ops::metrics`), and `/healthz` judges by the same rules.
//!
//! Health: `healthy` (exit 0), `degraded` (exit 1: a threshold of `[status]` crossed, a table parked,
//! the slot's WAL `unreserved`, conflicts waiting for a person), `broken` (exit 2: a side unreachable
//! or not set up, the slot missing or lost, the publication missing, or the slot's retained WAL past
//! the broken threshold). Every problem names its fix.

use serde::Serialize;
use tokio_postgres::Client;

use crate::change::Side;
use crate::config::Config;
use crate::db::{self, Context, DbError};

pub mod conflicts;

/// How the installation is doing, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Degraded,
    Broken,
}

impl Health {
    pub fn exit_code(self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Degraded => 1,
            Health::Broken => 2,
        }
    }
}

/// Something wrong, with what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub health: Health,
    pub subject: String,
    pub message: String,
    pub fix: String,
    /// Whether `/healthz` answers 503 for it: every broken problem, and the degraded ones that wait
    /// for a person (a parked table, conflicts to choose) or are about to lose the slot.
    #[serde(skip)]
    pub unhealthy: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Forward {
    /// Outbox rows waiting to be applied to the cloud.
    pub backlog_rows: i64,
    /// Age of the oldest of them, in seconds (0 when none).
    pub oldest_age_seconds: f64,
    /// When a batch was last applied to the cloud.
    pub last_applied_at: Option<String>,
    /// Whether a `tandem run` holds the forward applier lock now.
    pub applier_running: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Reverse {
    pub slot: String,
    /// Whether the slot exists.
    pub slot_exists: bool,
    /// Whether a walsender streams from it (a `tandem run` is connected).
    pub active: bool,
    /// `pg_replication_slots.wal_status` (`reserved`, `extended`, `unreserved`, `lost`), or `missing`.
    pub wal_status: String,
    /// `pg_replication_slots.safe_wal_size`: bytes that can still be written before the slot is in
    /// danger of being lost; null when the cloud sets no `max_slot_wal_keep_size`.
    pub safe_wal_size: Option<i64>,
    /// The cloud's `max_slot_wal_keep_size` in bytes; null when unlimited.
    pub max_slot_wal_keep_size: Option<i64>,
    /// The cloud's WAL insert position minus the slot's confirmed flush position, in bytes.
    pub slot_lag_bytes: Option<i64>,
    /// The cloud's WAL insert position minus the slot's restart position: the WAL it holds on disk.
    pub retained_wal_bytes: Option<i64>,
    /// 0 when nothing waits (the slot's confirmed position is the cloud's current WAL, or the running
    /// worker found itself caught up in the last 90 s: an idle walsender's keepalives come every
    /// `wal_sender_timeout` / 2, 30 s by default); otherwise the age of the last applied cloud commit,
    /// an upper bound of how far behind the desktop is; null when nothing was applied yet.
    pub lag_seconds: Option<f64>,
    /// Whether the publication exists.
    pub publication_exists: bool,
    /// End position of the last cloud transaction applied to the desktop, and when it was applied.
    pub last_applied_lsn: Option<String>,
    pub last_applied_at: Option<String>,
    /// That transaction's commit time on the cloud.
    pub last_commit_at: Option<String>,
    /// The running worker said it was caught up in the last 90 s.
    #[serde(skip)]
    caught_up_recently: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub table: String,
    /// `new`, `syncing`, `streaming` or `parked`.
    pub state: String,
    pub since: Option<String>,
    pub reason: Option<String>,
    pub fix: Option<String>,
    /// Open conflicts and dead letters of the table, both directions.
    pub conflicts: i64,
    pub dead_letters: i64,
}

/// Open items of `tandem.dead_letters`, per direction.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Open {
    pub open: i64,
    pub forward: i64,
    pub reverse: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastReconcile {
    pub started_at: String,
    pub finished_at: String,
    /// `command`, `schedule` or `sync` (a run's initial sync).
    pub trigger: String,
    pub dry_run: bool,
    /// Rows inserted, updated and deleted, both directions (in a dry run: that would have been).
    pub written: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub health: Health,
    pub problems: Vec<Problem>,
    /// When it was read (UTC, RFC 3339).
    pub read_at: String,
    pub forward: Forward,
    pub reverse: Reverse,
    pub tables: Vec<TableStatus>,
    pub conflicts: conflicts::Conflicts,
    pub dead_letters: Open,
    pub last_reconcile: Option<LastReconcile>,
}

const ISO: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";

fn iso(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', {ISO})")
}

/// Reads everything from both sides; a side it cannot read is a problem, not an error.
pub async fn collect(config: &Config) -> Status {
    let mut status = Status {
        health: Health::Healthy,
        problems: Vec::new(),
        read_at: String::new(),
        forward: Forward::default(),
        reverse: Reverse {
            slot: config.cloud.slot.clone(),
            wal_status: "missing".into(),
            ..Reverse::default()
        },
        tables: Vec::new(),
        conflicts: conflicts::Conflicts::default(),
        dead_letters: Open::default(),
        last_reconcile: None,
    };
    let (desktop, cloud) = tokio::join!(
        db::connect(Side::Desktop, &config.desktop.url),
        db::connect(Side::Cloud, &config.cloud.url)
    );
    let mut logs = Logs::default();
    match desktop {
        Ok(c) => {
            if let Err(e) = read_desktop(&c, config, &mut status, &mut logs).await {
                status.unreadable(Side::Desktop, &e);
            }
        }
        Err(e) => status.unreachable(Side::Desktop, &e),
    }
    match cloud {
        Ok(c) => {
            if let Err(e) = read_cloud(&c, config, &mut status, &mut logs).await {
                status.unreadable(Side::Cloud, &e);
            }
        }
        Err(e) => status.unreachable(Side::Cloud, &e),
    }
    for (direction, table, dead_letters) in logs.dead_letters {
        let d = if direction == "forward" {
            &mut status.dead_letters.forward
        } else {
            &mut status.dead_letters.reverse
        };
        *d += dead_letters;
        if let Some(t) = status.tables.iter_mut().find(|t| t.table == table) {
            t.dead_letters += dead_letters;
        }
    }
    for g in logs.conflicts.iter().filter(|g| g.open) {
        if let Some(t) = status.tables.iter_mut().find(|t| t.table == g.table) {
            t.conflicts += g.count;
        }
    }
    status.conflicts = conflicts::Conflicts::of(&logs.conflicts);
    status.dead_letters.open = status.dead_letters.forward + status.dead_letters.reverse;
    status.judge(config);
    status
}

/// What both sides' `tandem.dead_letters` and `tandem.conflicts` hold.
#[derive(Default)]
struct Logs {
    /// Open dead letters: (direction, table, count).
    dead_letters: Vec<(String, String, i64)>,
    conflicts: Vec<conflicts::Group>,
}

const OPEN_DEAD_LETTERS_SQL: &str = "SELECT direction, table_name, count(*)::int8
   FROM tandem.dead_letters WHERE resolved_at IS NULL GROUP BY 1, 2";

async fn read_logs(
    client: &Client,
    side: Side,
    config: &Config,
    logs: &mut Logs,
) -> Result<(), DbError> {
    for r in client
        .query(OPEN_DEAD_LETTERS_SQL, &[])
        .await
        .ctx(side, "reading open dead letters")?
    {
        logs.dead_letters.push((r.get(0), r.get(1), r.get(2)));
    }
    conflicts::read(client, side, &config.status, &mut logs.conflicts).await
}

async fn read_desktop(
    c: &Client,
    config: &Config,
    s: &mut Status,
    logs: &mut Logs,
) -> Result<(), DbError> {
    let side = Side::Desktop;
    let r = c
        .query_one(
            &format!(
                "SELECT {}, (SELECT count(*) FROM tandem.outbox),
                        coalesce(EXTRACT(epoch FROM now() - (SELECT min(captured_at) FROM tandem.outbox))::float8, 0),
                        EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                                  AND classid = {}::oid AND objid = {}::oid AND objsubid = 2)",
                iso("now()"),
                db::LOCK_CLASS,
                db::FORWARD_LOCK
            ),
            &[],
        )
        .await
        .ctx(side, "reading tandem.outbox")?;
    s.read_at = r.get(0);
    s.forward.backlog_rows = r.get(1);
    s.forward.oldest_age_seconds = r.get(2);
    s.forward.applier_running = r.get(3);
    if let Some(r) = c
        .query_opt(
            &format!(
                "SELECT lsn::text, {}, {}, EXTRACT(epoch FROM now() - GREATEST(committed_at, caught_up_at))::float8,
                        coalesce(caught_up_at > now() - interval '90 seconds' AND caught_up_at >= applied_at, false)
                   FROM tandem.progress WHERE direction = 'reverse'",
                iso("applied_at"),
                iso("committed_at")
            ),
            &[],
        )
        .await
        .ctx(side, "reading tandem.progress")?
    {
        s.reverse.last_applied_lsn = r.get(0);
        s.reverse.last_applied_at = r.get(1);
        s.reverse.last_commit_at = r.get(2);
        s.reverse.lag_seconds = r.get(3);
        s.reverse.caught_up_recently = r.get(4);
    }
    for r in c
        .query(
            &format!(
                "SELECT table_name, state, {}, reason, fix FROM tandem.table_state ORDER BY table_name",
                iso("since")
            ),
            &[],
        )
        .await
        .ctx(side, "reading tandem.table_state")?
    {
        s.tables.push(TableStatus {
            table: r.get(0),
            state: r.get(1),
            since: r.get(2),
            reason: r.get(3),
            fix: r.get(4),
            conflicts: 0,
            dead_letters: 0,
        });
    }
    if let Some(r) = c
        .query_opt(
            &format!(
                "SELECT {}, {}, trigger, dry_run,
                        (SELECT coalesce(sum(v::text::numeric), 0)::int8 FROM jsonb_path_query(report,
                            'strict $.**.inserted') v) +
                        (SELECT coalesce(sum(v::text::numeric), 0)::int8 FROM jsonb_path_query(report,
                            'strict $.**.updated') v) +
                        (SELECT coalesce(sum(v::text::numeric), 0)::int8 FROM jsonb_path_query(report,
                            'strict $.**.deleted') v)
                   FROM tandem.reconciles ORDER BY id DESC LIMIT 1",
                iso("started_at"),
                iso("finished_at")
            ),
            &[],
        )
        .await
        .ctx(side, "reading tandem.reconciles")?
    {
        s.last_reconcile = Some(LastReconcile {
            started_at: r.get(0),
            finished_at: r.get(1),
            trigger: r.get(2),
            dry_run: r.get(3),
            written: r.get(4),
        });
    }
    read_logs(c, side, config, logs).await
}

async fn read_cloud(
    c: &Client,
    config: &Config,
    s: &mut Status,
    logs: &mut Logs,
) -> Result<(), DbError> {
    let side = Side::Cloud;
    let r = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
                    nullif(pg_size_bytes(current_setting('max_slot_wal_keep_size')), -1)",
            &[&config.cloud.publication],
        )
        .await
        .ctx(side, "reading the publication and max_slot_wal_keep_size")?;
    s.reverse.publication_exists = r.get(0);
    s.reverse.max_slot_wal_keep_size = r.get(1);
    if let Some(r) = c
        .query_opt(
            "SELECT active, coalesce(wal_status, 'missing'), safe_wal_size,
                    pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn)::int8,
                    pg_wal_lsn_diff(pg_current_wal_insert_lsn(), restart_lsn)::int8
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.cloud.slot],
        )
        .await
        .ctx(side, "reading pg_replication_slots")?
    {
        s.reverse.slot_exists = true;
        s.reverse.active = r.get(0);
        s.reverse.wal_status = r.get(1);
        s.reverse.safe_wal_size = r.get(2);
        s.reverse.slot_lag_bytes = r.get(3);
        s.reverse.retained_wal_bytes = r.get(4);
        if s.reverse.slot_lag_bytes.is_some_and(|b| b <= 0)
            || (s.reverse.active && s.reverse.caught_up_recently)
        {
            s.reverse.lag_seconds = Some(0.0);
        }
    }
    let installed: bool = c
        .query_one("SELECT to_regclass('tandem.progress') IS NOT NULL", &[])
        .await
        .ctx(side, "looking for schema tandem")?
        .get(0);
    if installed {
        s.forward.last_applied_at = c
            .query_opt(
                &format!(
                    "SELECT {} FROM tandem.progress WHERE direction = 'forward'",
                    iso("applied_at")
                ),
                &[],
            )
            .await
            .ctx(side, "reading tandem.progress")?
            .and_then(|r| r.get(0));
        read_logs(c, side, config, logs).await?;
    }
    Ok(())
}

impl Status {
    fn problem(&mut self, health: Health, subject: &str, message: String, fix: String) {
        self.problems.push(Problem {
            health,
            subject: subject.to_string(),
            message,
            fix,
            unhealthy: health == Health::Broken,
        });
    }

    /// A degraded problem `/healthz` answers 503 for.
    fn unhealthy(&mut self, subject: &str, message: String, fix: String) {
        self.problem(Health::Degraded, subject, message, fix);
        if let Some(p) = self.problems.last_mut() {
            p.unhealthy = true;
        }
    }

    fn unreachable(&mut self, side: Side, e: &DbError) {
        let fix = format!(
            "start the {side} database or correct its address ([{side}] url or TANDEM_{}_URL); `tandem check` tells more",
            side.to_string().to_uppercase()
        );
        self.problem(
            Health::Broken,
            &side.to_string(),
            format!("unreachable: {e}"),
            fix,
        );
    }

    fn unreadable(&mut self, side: Side, e: &DbError) {
        self.problem(
            Health::Broken,
            &side.to_string(),
            format!("tandem's state cannot be read: {e}"),
            "run `tandem init` (tandem may not be set up there), then `tandem check`".into(),
        );
    }

    /// Applies the rules of the module's header; sets `health` to the worst problem's.
    fn judge(&mut self, config: &Config) {
        let limits = &config.status;
        let recover = "run `tandem init` (it creates the slot and the publication again), then `tandem reconcile` (it repairs what the stream missed meanwhile)";
        let slot = self.reverse.slot.clone();
        let reachable = !self.problems.iter().any(|p| p.subject == "cloud");
        if reachable && !self.reverse.slot_exists {
            self.problem(
                Health::Broken,
                "reverse",
                format!("replication slot {slot} does not exist: mobile changes are not streamed"),
                recover.into(),
            );
        } else if self.reverse.wal_status == "lost" {
            self.problem(
                Health::Broken,
                "reverse",
                format!("replication slot {slot} is lost (wal_status lost): the cloud removed WAL it still needed"),
                format!("drop it (SELECT pg_drop_replication_slot('{slot}')), then {recover}; raise max_slot_wal_keep_size to prevent it"),
            );
        } else if self.reverse.wal_status == "unreserved" {
            self.unhealthy(
                "reverse",
                format!("replication slot {slot} is past max_slot_wal_keep_size (wal_status unreserved): it is lost at the next checkpoint unless it catches up"),
                "make sure `tandem run` streams (see `reverse.active`); raise max_slot_wal_keep_size".into(),
            );
        }
        if reachable && !self.reverse.publication_exists {
            self.problem(
                Health::Broken,
                "reverse",
                format!("publication {} does not exist", config.cloud.publication),
                recover.into(),
            );
        }
        if let Some(retained) = self.reverse.retained_wal_bytes {
            let limit = self.reverse.max_slot_wal_keep_size.map(|l| l.max(0) as u64);
            let (warn, broken) = limits.retained_wal_thresholds(limit);
            let retained = retained.max(0) as u64;
            let health = if retained >= broken {
                Some(Health::Broken)
            } else if retained >= warn {
                Some(Health::Degraded)
            } else {
                None
            };
            if let Some(health) = health {
                self.problem(
                    health,
                    "reverse",
                    format!("the slot holds {retained} bytes of WAL on the cloud (degraded from {warn}, broken from {broken})"),
                    "make sure `tandem run` streams; see the README's runbook \"Disk growing on Supabase\"".into(),
                );
            }
        }
        if let Some(lag) = self.reverse.lag_seconds
            && lag > limits.reverse_lag_warn_seconds as f64
        {
            self.problem(
                Health::Degraded,
                "reverse",
                format!(
                    "the desktop is up to {lag:.0} s behind the cloud (threshold {} s)",
                    limits.reverse_lag_warn_seconds
                ),
                "start `tandem run` if it is stopped; otherwise see its log".into(),
            );
        }
        if self.forward.oldest_age_seconds > limits.outbox_age_warn_seconds as f64 {
            self.problem(
                Health::Degraded,
                "forward",
                format!(
                    "{} outbox row(s) wait, the oldest for {:.0} s (threshold {} s)",
                    self.forward.backlog_rows,
                    self.forward.oldest_age_seconds,
                    limits.outbox_age_warn_seconds
                ),
                "start `tandem run` if it is stopped; a parked table's rows wait until it resumes"
                    .into(),
            );
        }
        let parked: Vec<(String, String, String)> = self
            .tables
            .iter()
            .filter(|t| t.state == "parked")
            .map(|t| {
                (
                    t.table.clone(),
                    t.reason.clone().unwrap_or_default(),
                    t.fix.clone().unwrap_or_default(),
                )
            })
            .collect();
        for (table, reason, fix) in parked {
            self.unhealthy(&format!("table {table}"), format!("parked: {reason}"), fix);
        }
        if let Some((message, fix)) = conflicts::problem(&self.conflicts, limits) {
            self.unhealthy("conflicts", message, fix);
        }
        self.health = self
            .problems
            .iter()
            .map(|p| p.health)
            .max()
            .unwrap_or(Health::Healthy);
    }
}
