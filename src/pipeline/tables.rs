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
    config: Config,
    state: watch::Sender<Snapshot>,
    /// Serializes rechecks.
    checks: Mutex<Checks>,
}

#[derive(Default)]
struct Checks {
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
            config: config.clone(),
            state,
            checks: Mutex::new(Checks::default()),
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
        let look = look(&self.config).await?;
        self.settle(&mut checks, look, None).await
    }

    /// A statement of `table` failed on the schema (or a value could not be staged): the table is
    /// parked unless its shape changed since its statements were built (then they are rebuilt).
    pub async fn failed(&self, table: usize, error: &CommitError) -> Result<(), RunError> {
        let mut checks = self.checks.lock().await;
        let look = look(&self.config).await?;
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
        let look = look(&self.config).await?;
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
            self.record(&look.mapping, &parked).await?;
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

    /// Writes every table's state into the desktop's `tandem.table_state` (a row changes only when its
    /// state does).
    async fn record(
        &self,
        mapping: &Mapping,
        parked: &BTreeMap<usize, Parked>,
    ) -> Result<(), RunError> {
        let desktop = db::connect(Side::Desktop, &self.config.desktop.url).await?;
        let names: Vec<String> = mapping
            .tables
            .iter()
            .map(|t| t.table.desktop.to_string())
            .collect();
        let states: Vec<&str> = (0..names.len())
            .map(|i| {
                if parked.contains_key(&i) {
                    "parked"
                } else {
                    "streaming"
                }
            })
            .collect();
        let reasons: Vec<Option<&str>> = (0..names.len())
            .map(|i| parked.get(&i).map(|p| p.reason.as_str()))
            .collect();
        let fixes: Vec<Option<&str>> = (0..names.len())
            .map(|i| parked.get(&i).map(|p| p.fix.as_str()))
            .collect();
        desktop
            .execute(
                "INSERT INTO tandem.table_state (table_name, state, reason, fix)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                 ON CONFLICT (table_name) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason,
                        fix = EXCLUDED.fix, since = now()
                  WHERE (tandem.table_state.state, tandem.table_state.reason)
                        IS DISTINCT FROM (EXCLUDED.state, EXCLUDED.reason)",
                &[&names, &states, &reasons, &fixes],
            )
            .await
            .ctx(Side::Desktop, "recording the tables' states in tandem.table_state")?;
        Ok(())
    }
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
