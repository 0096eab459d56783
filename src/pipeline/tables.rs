//! Which tables stream and which are parked, shared by both workers of a run.
//!
//! A table whose schema does not fit its statements any more (a column renamed or dropped on either
//! side, a type tandem cannot stage, a privilege taken away) is *parked*: marked with the reason and
//! the fix, logged once at error level, and left alone while every other table streams. Nothing of it is
//! lost: the forward worker leaves its outbox rows queued, the reverse worker keeps its incoming rows as
//! dead letters on the desktop. The schema is checked again on a timer and whenever a statement fails
//! on it; once the table fits again it resumes by itself: its queued changes apply and its dead letters
//! are brought back. A change that still fits (a cloud column added with a default, a type widened) parks
//! nothing: the mapping is rebuilt and the workers pick the new shape up.
//!
//! The state lives here ([`Snapshot`], watched by the workers) and in the desktop's
//! `tandem.table_state`, so it can be read while `run` is stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use crate::catalog::validate::{Finding, Severity};
use crate::change::Side;
use crate::commit::CommitError;
use crate::config::Config;
use crate::db::{self, Context};
use crate::transform::Mapping;

use super::RunError;

/// Why a table is parked, and what fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub reason: String,
    pub fix: String,
}

/// The tables as the workers see them.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Changes whenever the mapping is rebuilt: the workers rebuild their statements.
    pub generation: u64,
    pub mapping: Arc<Mapping>,
    /// By mapping index.
    pub parked: Arc<BTreeMap<usize, Parked>>,
}

impl Snapshot {
    pub fn is_parked(&self, table: usize) -> bool {
        self.parked.contains_key(&table)
    }
}

/// The table states of one run.
pub struct Tables {
    state: watch::Sender<Snapshot>,
    /// Serializes rechecks.
    checks: Mutex<Checks>,
    /// The generation each worker's current session runs with (forward, reverse); `None` before its
    /// first session.
    sessions: watch::Sender<[Option<u64>; 2]>,
    /// With `run --once` of both directions: whether the forward worker is done (`None`: no forward
    /// worker in this run).
    forward_done: watch::Sender<Option<bool>>,
    /// `run --once`: whether the reverse worker has applied everything before the start (`None`: no
    /// reverse worker runs beside the forward one).
    reverse_caught: watch::Sender<Option<bool>>,
}

/// A worker of a run, as [`Tables::running`] is told.
#[derive(Debug, Clone, Copy)]
pub enum WorkerId {
    Forward = 0,
    Reverse = 1,
}

struct Checks {
    /// The config as this run knows it: the file is read again on rechecks, and a table `init` added
    /// is picked up.
    config: Config,
    /// Each table's schema fingerprint (both sides) when the mapping was built.
    fingerprints: Vec<u64>,
    /// Tables parked because a statement failed although the schema seemed to fit, with the
    /// fingerprint then: they are tried again once it changes.
    failed: BTreeMap<usize, (u64, Parked)>,
    /// Findings already warned about that do not park a table.
    warned: BTreeSet<String>,
}

/// What one look at both schemas found.
struct Look {
    mapping: Mapping,
    findings: Vec<Finding>,
    fingerprints: Vec<u64>,
}

impl Tables {
    /// Reads both schemas and parks the tables that do not fit.
    pub async fn start(config: &Config) -> Result<Arc<Tables>, RunError> {
        let look = look(config).await?;
        let mapping = Arc::new(look.mapping.clone());
        let (state, _) = watch::channel(Snapshot {
            generation: 0,
            mapping,
            parked: Arc::new(BTreeMap::new()),
        });
        let tables = Arc::new(Tables {
            state,
            checks: Mutex::new(Checks {
                config: config.clone(),
                fingerprints: Vec::new(),
                failed: BTreeMap::new(),
                warned: BTreeSet::new(),
            }),
            sessions: watch::channel([None, None]).0,
            forward_done: watch::channel(None).0,
            reverse_caught: watch::channel(None).0,
        });
        {
            let mut checks = tables.checks.lock().await;
            checks.fingerprints = look.fingerprints.clone();
            tables.settle(&mut checks, look, None).await?;
        }
        Ok(tables)
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.state.subscribe()
    }

    /// A worker's session started with the tables of `generation`.
    pub fn running(&self, worker: WorkerId, generation: u64) {
        self.sessions
            .send_modify(|s| s[worker as usize] = Some(generation));
    }

    /// A forward worker runs beside the reverse one (`done` false), or ended (`done` true).
    pub fn forward_running(&self, done: bool) {
        self.forward_done.send_replace(Some(done));
    }

    /// `run --once`: a reverse worker runs beside the forward one and has not reached the start yet
    /// (`caught` false), or has applied everything committed before it (or ended: `caught` true).
    pub fn reverse_caught_up(&self, caught: bool) {
        self.reverse_caught.send_replace(Some(caught));
    }

    /// `run --once`: waits until the reverse worker of this run has applied what phones committed
    /// before the start, so that a desktop change made after receiving one of them is known as such;
    /// at once when there is none. False on shutdown.
    pub async fn reverse_caught_up_wait(&self, shutdown: &CancellationToken) -> bool {
        let mut caught = self.reverse_caught.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            done = caught.wait_for(|c| c.is_none_or(|c| c)) => done.is_ok(),
        }
    }

    /// Waits until the forward worker of this run ended; at once when there is none. False on
    /// shutdown.
    pub async fn forward_ended(&self, shutdown: &CancellationToken) -> bool {
        let mut done = self.forward_done.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            ended = done.wait_for(|d| d.is_none_or(|d| d)) => ended.is_ok(),
        }
    }

    /// Waits until both workers run sessions of `generation` or later; false on shutdown.
    pub async fn workers_at(&self, generation: u64, shutdown: &CancellationToken) -> bool {
        let mut sessions = self.sessions.subscribe();
        let at = |s: &[Option<u64>; 2]| s.iter().all(|g| g.is_some_and(|g| g >= generation));
        tokio::select! {
            _ = shutdown.cancelled() => false,
            done = sessions.wait_for(at) => done.is_ok(),
        }
    }

    /// The config as this run knows it now.
    pub async fn config(&self) -> Config {
        self.checks.lock().await.config.clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.state.borrow().clone()
    }

    /// The parked tables, by desktop name, with why.
    pub fn parked(&self) -> Vec<(String, Parked)> {
        let snapshot = self.snapshot();
        snapshot
            .parked
            .iter()
            .map(|(&i, p)| (snapshot.mapping.tables[i].table.to_string(), p.clone()))
            .collect()
    }

    /// Looks at both schemas again: parks what no longer fits, resumes what fits again, rebuilds the
    /// mapping when a table's shape changed.
    pub async fn recheck(&self) -> Result<(), RunError> {
        let mut checks = self.checks.lock().await;
        if let Some(config) = reloaded(&checks.config).await? {
            tracing::info!(
                tables = config.tables.len(),
                "the config names tables `tandem init` set up since this run started; picking them up"
            );
            // Tables may have moved in the config: what was found by position is found again.
            checks.failed.clear();
            checks.config = config;
        }
        let look = look(&checks.config).await?;
        self.settle(&mut checks, look, None).await
    }

    /// A statement of `table` failed on the schema (or a value could not be staged): the table is
    /// parked unless its shape changed since its statements were built (then they are rebuilt).
    pub async fn failed(&self, table: usize, error: &CommitError) -> Result<(), RunError> {
        let mut checks = self.checks.lock().await;
        let look = look(&checks.config).await?;
        let name = &look.mapping.tables[table].table;
        let parked = Parked {
            reason: format!("its statement failed: {}", error.source),
            fix: format!(
                "make {name} on both sides fit the config (then tandem resumes it by itself), or change the \
                 config and run `tandem init`"
            ),
        };
        self.settle(&mut checks, look, Some((table, parked))).await
    }

    /// Parks `table` for a reason a worker found (the stream's relation lacks its columns).
    pub async fn park(&self, table: usize, parked: Parked) -> Result<(), RunError> {
        let mut checks = self.checks.lock().await;
        let look = look(&checks.config).await?;
        self.settle(&mut checks, look, Some((table, parked))).await
    }

    /// Rechecks every `every` until `shutdown`; a recheck that fails is tried again next time.
    pub async fn rechecking(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.recheck().await {
                tracing::warn!(error = %e, "the schema recheck failed; trying again later");
            }
        }
    }

    /// Decides every table's state from `look` (and a failure just seen), records and announces what
    /// changed.
    async fn settle(
        &self,
        checks: &mut Checks,
        look: Look,
        failure: Option<(usize, Parked)>,
    ) -> Result<(), RunError> {
        if let Some((table, parked)) = failure {
            checks
                .failed
                .insert(table, (look.fingerprints[table], parked));
        }
        // A table parked on a failed statement is tried again once its schema changed.
        checks
            .failed
            .retain(|&i, (fingerprint, _)| look.fingerprints[i] == *fingerprint);
        let mut parked = BTreeMap::new();
        for i in 0..look.mapping.tables.len() {
            let breaking: Vec<&Finding> = look
                .findings
                .iter()
                .filter(|f| f.table == Some(i) && f.severity == Severity::Error && f.parks)
                .collect();
            if !breaking.is_empty() {
                let reason = breaking
                    .iter()
                    .map(|f| f.problem.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                let fix = breaking
                    .iter()
                    .map(|f| f.fix.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                parked.insert(i, Parked { reason, fix });
            } else if let Some((_, p)) = checks.failed.get(&i) {
                parked.insert(i, p.clone());
            }
        }
        for f in &look.findings {
            if f.severity == Severity::Error && !f.parks && checks.warned.insert(f.to_string()) {
                tracing::warn!(finding = %f, "the schema does not match the config, but the table streams on");
            }
        }
        let old = self.snapshot();
        let reshaped = look.fingerprints != checks.fingerprints;
        checks.fingerprints = look.fingerprints;
        let first = old.generation == 0 && !reshaped && old.parked.is_empty();
        for (i, t) in look.mapping.tables.iter().enumerate() {
            match (old.parked.get(&i), parked.get(&i)) {
                (None, Some(p)) => tracing::error!(
                    table = %t.table,
                    reason = %p.reason,
                    fix = %p.fix,
                    "table parked: its changes wait (outbox rows stay, mobile rows are kept as dead letters) while the other tables stream"
                ),
                (Some(_), None) => {
                    tracing::info!(table = %t.table, "table resumed: its schema fits again")
                }
                _ => {}
            }
        }
        if first || reshaped || parked != *old.parked {
            record(&checks.config, &look.mapping, &parked).await?;
        }
        if reshaped || parked != *old.parked {
            let mapping = if reshaped {
                Arc::new(look.mapping)
            } else {
                old.mapping
            };
            self.state.send_replace(Snapshot {
                generation: old.generation + u64::from(reshaped),
                mapping,
                parked: Arc::new(parked),
            });
        }
        Ok(())
    }
}

/// Writes every table's state into the desktop's `tandem.table_state` (a row changes only when its
/// state does). A table not parked is `new` until its initial sync finished (`synced_at`), `syncing`
/// while it runs ([`crate::pipeline::sync`] writes those), `streaming` after.
async fn record(
    config: &Config,
    mapping: &Mapping,
    parked: &BTreeMap<usize, Parked>,
) -> Result<(), RunError> {
    let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let names: Vec<String> = mapping
        .tables
        .iter()
        .map(|t| t.table.desktop.to_string())
        .collect();
    let parked_now: Vec<bool> = (0..names.len()).map(|i| parked.contains_key(&i)).collect();
    let reasons: Vec<Option<&str>> = (0..names.len())
        .map(|i| parked.get(&i).map(|p| p.reason.as_str()))
        .collect();
    let fixes: Vec<Option<&str>> = (0..names.len())
        .map(|i| parked.get(&i).map(|p| p.fix.as_str()))
        .collect();
    desktop
        .execute(
            "WITH now AS (
                SELECT u.name, u.reason, u.fix,
                       CASE WHEN u.parked THEN 'parked'
                            WHEN s.synced_at IS NOT NULL THEN 'streaming'
                            WHEN s.state = 'syncing' THEN 'syncing'
                            ELSE 'new' END AS state
                  FROM unnest($1::text[], $2::bool[], $3::text[], $4::text[]) AS u(name, parked, reason, fix)
                  LEFT JOIN tandem.table_state s ON s.table_name = u.name)
             INSERT INTO tandem.table_state (table_name, state, reason, fix)
             SELECT name, state, reason, fix FROM now
             ON CONFLICT (table_name) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason,
                    fix = EXCLUDED.fix, since = now()
              WHERE (tandem.table_state.state, tandem.table_state.reason)
                    IS DISTINCT FROM (EXCLUDED.state, EXCLUDED.reason)",
            &[&names, &parked_now, &reasons, &fixes],
        )
        .await
        .ctx(Side::Desktop, "recording the tables' states in tandem.table_state")?;
    Ok(())
}

/// The config file again, when it names tables this run does not have yet and `init` has set every one
/// of them up (each has a row in `tandem.table_state`, which `init` writes after its triggers, the
/// publication and the slot). The connection settings stay the run's.
async fn reloaded(current: &Config) -> Result<Option<Config>, RunError> {
    let path = std::path::Path::new(&current.origin);
    if !path.is_file() {
        return Ok(None);
    }
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "the config file no longer loads; this run goes on with the config it started with");
            return Ok(None);
        }
    };
    let known: BTreeSet<String> = current
        .tables
        .iter()
        .map(|t| t.table.desktop.to_string())
        .collect();
    let added: Vec<String> = config
        .tables
        .iter()
        .map(|t| t.table.desktop.to_string())
        .filter(|n| !known.contains(n))
        .collect();
    if added.is_empty() {
        return Ok(None);
    }
    let desktop = db::connect(Side::Desktop, &current.desktop.url).await?;
    let registered: i64 = desktop
        .query_one(
            "SELECT count(*) FROM tandem.table_state WHERE table_name = ANY($1)",
            &[&added],
        )
        .await
        .ctx(Side::Desktop, "reading tandem.table_state")?
        .get(0);
    if registered < added.len() as i64 {
        return Ok(None);
    }
    config.desktop = current.desktop.clone();
    config.cloud = current.cloud.clone();
    config.sync = current.sync.clone();
    Ok(Some(config))
}

/// Both schemas now.
async fn look(config: &Config) -> Result<Look, RunError> {
    let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let cloud = db::connect(Side::Cloud, &config.cloud.url).await?;
    let (dcat, ccat) = crate::catalog::load_for(config, &desktop, &cloud).await?;
    let findings = crate::catalog::validate::validate(config, &dcat, &ccat);
    let fingerprints = config
        .tables
        .iter()
        .map(|t| {
            let d = dcat.table(&t.table.desktop).map(|t| t.fingerprint());
            let c = ccat.table(&t.table.cloud).map(|t| t.fingerprint());
            d.unwrap_or(0).rotate_left(1) ^ c.unwrap_or(0)
        })
        .collect();
    Ok(Look {
        mapping: Mapping::build(config, &dcat, &ccat),
        findings,
        fingerprints,
    })
}
