//! `tandem init` and `tandem uninstall`: converge both databases to what the config needs, or back.
//!
//! Both are a plan of [`Step`]s computed by comparing what should exist with what does, then applied:
//! one transaction per side, the slot outside it (PostgreSQL will not create a logical slot in a
//! transaction that has written). A second `init` plans nothing, which is how it knows to say so; `check`
//! reports the same plan as what is missing. Problems a step cannot fix (wal_level, a lost slot) are
//! blockers: reported with their fix, nothing changed.

pub mod cloud;
pub mod desktop;
mod plan;
pub mod triggers;

use std::fmt;

use tokio_postgres::{Client, GenericClient};

use crate::catalog::validate::{Finding, Severity, validate};
use crate::change::{QualifiedName, Side, quote_ident};
use crate::config::{Config, SOURCE_COLUMN, owner};
use crate::db::{self, Context, DbError};

pub use plan::{Plan, plan_cloud, plan_desktop, plan_uninstall};
use triggers::TriggerChange;

/// The SQL that removes schema tandem, on either side.
pub const UNINSTALL_SQL: &str = include_str!("../../sql/uninstall/common.sql");

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the config does not match the live schemas ({} error(s)):\n{}", .0.iter().filter(|f| f.severity == Severity::Error).count(), list(.0))]
    Invalid(Vec<Finding>),
    #[error("cannot go on; nothing was changed:\n{}", list(.0))]
    Blocked(Vec<Finding>),
}

fn list(findings: &[Finding]) -> String {
    findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| format!("  - {f}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One change to one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Run the side's install SQL (schema tandem and its objects) and record its version.
    Install {
        side: Side,
        sql: &'static str,
        version: String,
        reason: String,
    },
    Trigger(TriggerChange),
    ReplicaIdentityFull {
        table: QualifiedName,
        was: char,
        index: Option<String>,
    },
    RestoreReplicaIdentity {
        table: QualifiedName,
        identity: char,
        index: Option<String>,
    },
    CreatePublication {
        name: String,
        tables: Vec<QualifiedName>,
    },
    SetPublicationTables {
        name: String,
        tables: Vec<QualifiedName>,
    },
    DropPublication {
        name: String,
    },
    /// Remember a name in `tandem.installation` (which slot and publication uninstall removes).
    Record {
        side: Side,
        item: String,
        value: String,
    },
    CreateSlot {
        name: String,
    },
    DropSlot {
        name: String,
    },
    DropSchema {
        side: Side,
    },
}

impl Step {
    pub fn side(&self) -> Side {
        match self {
            Step::Install { side, .. } | Step::Record { side, .. } | Step::DropSchema { side } => {
                *side
            }
            Step::Trigger(TriggerChange::Create(s) | TriggerChange::Replace(s)) => s.side,
            Step::Trigger(TriggerChange::Drop { side, .. }) => *side,
            _ => Side::Cloud,
        }
    }

    /// Slot operations cannot share a transaction with writes.
    fn outside_transaction(&self) -> bool {
        matches!(self, Step::CreateSlot { .. } | Step::DropSlot { .. })
    }

    async fn apply(&self, client: &impl GenericClient) -> Result<(), DbError> {
        let side = self.side();
        let run = |sql: String| async move {
            client
                .batch_execute(&sql)
                .await
                .ctx(side, format!("{self}: {sql}"))
        };
        match self {
            Step::Install { sql, version, .. } => {
                client
                    .batch_execute(sql)
                    .await
                    .ctx(side, format!("{self}"))?;
                record(client, side, "version", version).await?;
            }
            Step::Trigger(change) => {
                for sql in change.sql() {
                    run(sql).await?;
                }
            }
            Step::ReplicaIdentityFull { table, was, index } => {
                client
                    .execute(
                        "INSERT INTO tandem.replica_identity_before (table_schema, table_name, identity, index_name)
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        &[&table.schema, &table.name, &(*was as u8 as i8), index],
                    )
                    .await
                    .ctx(side, format!("recording the replica identity of {table}"))?;
                run(format!(
                    "ALTER TABLE {} REPLICA IDENTITY FULL",
                    table.quoted()
                ))
                .await?;
            }
            Step::RestoreReplicaIdentity {
                table,
                identity,
                index,
            } => {
                let how = match (identity, index) {
                    ('n', _) => "NOTHING".to_string(),
                    ('f', _) => "FULL".to_string(),
                    ('i', Some(index)) => format!("USING INDEX {}", quote_ident(index)),
                    _ => "DEFAULT".to_string(),
                };
                run(format!(
                    "ALTER TABLE {} REPLICA IDENTITY {how}",
                    table.quoted()
                ))
                .await?;
                client
                    .execute(
                        "DELETE FROM tandem.replica_identity_before WHERE table_schema = $1 AND table_name = $2",
                        &[&table.schema, &table.name],
                    )
                    .await
                    .ctx(side, format!("forgetting the replica identity of {table}"))?;
            }
            Step::CreatePublication { name, tables } => {
                run(cloud::create_publication_sql(name, tables)).await?;
            }
            Step::SetPublicationTables { name, tables } => {
                for sql in cloud::set_publication_tables_sql(name, tables) {
                    run(sql).await?;
                }
            }
            Step::DropPublication { name } => {
                run(format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name))).await?;
            }
            Step::Record { item, value, .. } => record(client, side, item, value).await?,
            Step::CreateSlot { name } => {
                client
                    .execute(
                        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                        &[name],
                    )
                    .await
                    .ctx(side, format!("{self}"))?;
            }
            Step::DropSlot { name } => drop_slot(client, side, name, self).await?,
            Step::DropSchema { .. } => run(UNINSTALL_SQL.to_string()).await?,
        }
        Ok(())
    }
}

/// Drops a slot, ending the walsender that streams from it first (a running `tandem run` reconnects
/// and finds what this init made); tried again for a few seconds while the walsender exits.
async fn drop_slot(
    client: &impl GenericClient,
    side: Side,
    name: &str,
    step: &Step,
) -> Result<(), DbError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        client
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                  WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&name],
            )
            .await
            .ctx(
                side,
                format!("{step}: ending the session that streams from it"),
            )?;
        match client
            .execute("SELECT pg_drop_replication_slot($1)", &[&name])
            .await
        {
            Ok(_) => return Ok(()),
            // object_in_use: its walsender is still exiting.
            Err(e)
                if e.code().map(|c| c.code()) == Some("55006")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).ctx(side, format!("{step}")),
        }
    }
}

async fn record(
    client: &impl GenericClient,
    side: Side,
    item: &str,
    value: &str,
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO tandem.installation (item, value) VALUES ($1, $2)
             ON CONFLICT (item) DO UPDATE SET value = EXCLUDED.value",
            &[&item, &value],
        )
        .await
        .ctx(side, format!("recording {item} in tandem.installation"))
        .map(|_| ())
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Install { reason, .. } => write!(f, "install schema tandem ({reason})"),
            Step::Trigger(change) => change.fmt(f),
            Step::ReplicaIdentityFull { table, was, .. } => {
                write!(
                    f,
                    "set REPLICA IDENTITY FULL on {table} (was {})",
                    identity_name(*was)
                )
            }
            Step::RestoreReplicaIdentity {
                table, identity, ..
            } => {
                write!(
                    f,
                    "restore REPLICA IDENTITY {} on {table}",
                    identity_name(*identity)
                )
            }
            Step::CreatePublication { name, tables } => write!(
                f,
                "create publication {name} over {} table(s), rows WHERE ({})",
                tables.len(),
                owner::is_mobile(SOURCE_COLUMN)
            ),
            Step::SetPublicationTables { name, tables } => write!(
                f,
                "set the tables of publication {name} to the {} configured table(s), rows WHERE ({})",
                tables.len(),
                owner::is_mobile(SOURCE_COLUMN)
            ),
            Step::DropPublication { name } => write!(f, "drop publication {name}"),
            Step::Record { item, value, .. } => write!(f, "record {item} = {value}"),
            Step::CreateSlot { name } => {
                write!(f, "create logical replication slot {name} (pgoutput)")
            }
            Step::DropSlot { name } => write!(f, "drop replication slot {name}"),
            Step::DropSchema { .. } => write!(f, "drop schema tandem and everything in it"),
        }
    }
}

fn identity_name(c: char) -> &'static str {
    match c {
        'n' => "NOTHING",
        'f' => "FULL",
        'i' => "USING INDEX",
        _ => "DEFAULT",
    }
}

/// Applies one side's steps: those that can share a transaction in one, then the slot operations.
pub async fn apply(client: &mut Client, steps: &[Step]) -> Result<(), DbError> {
    let Some(first) = steps.first() else {
        return Ok(());
    };
    let side = first.side();
    let (late, in_tx): (Vec<&Step>, Vec<&Step>) =
        steps.iter().partition(|s| s.outside_transaction());
    // Dropping a slot must come before the objects it reads are gone; creating one after they exist.
    let (early, late): (Vec<&Step>, Vec<&Step>) = late
        .into_iter()
        .partition(|s| matches!(s, Step::DropSlot { .. }));
    for step in early {
        step.apply(client).await?;
    }
    if !in_tx.is_empty() {
        let tx = client
            .transaction()
            .await
            .ctx(side, "beginning the setup transaction")?;
        for step in in_tx {
            step.apply(&tx).await?;
        }
        tx.commit()
            .await
            .ctx(side, "committing the setup transaction")?;
    }
    for step in late {
        step.apply(client).await?;
    }
    Ok(())
}

/// What `init` did (or, with `dry_run`, would do).
#[derive(Debug, Default)]
pub struct InitReport {
    pub desktop: Vec<Step>,
    pub cloud: Vec<Step>,
    pub warnings: Vec<Finding>,
}

impl InitReport {
    pub fn is_empty(&self) -> bool {
        self.desktop.is_empty() && self.cloud.is_empty()
    }
}

/// Connects to both sides and checks the config against their schemas; errors stop here.
pub async fn connect_and_validate(
    config: &Config,
) -> Result<(Client, Client, Vec<Finding>), SetupError> {
    let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let cloud = db::connect(Side::Cloud, &config.cloud.url).await?;
    let findings = load_and_validate(config, &desktop, &cloud).await?;
    if findings.iter().any(|f| f.severity == Severity::Error) {
        return Err(SetupError::Invalid(findings));
    }
    Ok((desktop, cloud, findings))
}

pub async fn load_and_validate(
    config: &Config,
    desktop: &Client,
    cloud: &Client,
) -> Result<Vec<Finding>, DbError> {
    let (dcat, ccat) = crate::catalog::load_for(config, desktop, cloud).await?;
    Ok(validate(config, &dcat, &ccat))
}

/// `tandem init`: validate, plan both sides, and (unless `dry_run`) apply.
pub async fn init(config: &Config, dry_run: bool) -> Result<InitReport, SetupError> {
    let (mut desktop, mut cloud, warnings) = connect_and_validate(config).await?;
    let dplan = plan_desktop(&desktop, config).await?;
    let cplan = plan_cloud(&cloud, config).await?;
    let blockers: Vec<Finding> = dplan.blockers.into_iter().chain(cplan.blockers).collect();
    if !blockers.is_empty() {
        return Err(SetupError::Blocked(blockers));
    }
    if !dry_run {
        apply(&mut desktop, &dplan.steps).await?;
        apply(&mut cloud, &cplan.steps).await?;
        let new_slot = cplan
            .steps
            .iter()
            .any(|s| matches!(s, Step::CreateSlot { .. }));
        register_tables(&desktop, config, new_slot).await?;
    }
    Ok(InitReport {
        desktop: dplan.steps,
        cloud: cplan.steps,
        warnings,
    })
}

/// Gives every configured table a row in `tandem.table_state`, once its triggers, the publication and the
/// slot exist: a table new to it is `new`, and the next `tandem run` (or the one running, which picks it
/// up) syncs it first. With a new slot (the first, or one made again after a lost slot) every table is
/// due again: what phones did while no slot kept their changes is found by the sync.
async fn register_tables(desktop: &Client, config: &Config, new_slot: bool) -> Result<(), DbError> {
    let names: Vec<String> = config
        .tables
        .iter()
        .map(|t| t.table.desktop.to_string())
        .collect();
    desktop
        .execute(
            "INSERT INTO tandem.table_state (table_name, state) SELECT unnest($1::text[]), 'new'
             ON CONFLICT (table_name) DO NOTHING",
            &[&names],
        )
        .await
        .ctx(
            Side::Desktop,
            "registering the tables in tandem.table_state",
        )?;
    if new_slot {
        desktop
            .execute(
                "UPDATE tandem.table_state SET synced_at = NULL, since = now(),
                        state = CASE WHEN state = 'parked' THEN state ELSE 'new' END
                  WHERE table_name = ANY($1)",
                &[&names],
            )
            .await
            .ctx(
                Side::Desktop,
                "marking the tables due to sync after a new slot",
            )?;
        // Nothing before a new slot is owed to the stream (the sync finds it): the reverse direction's
        // lag is counted from here until its first commit.
        desktop
            .execute(
                "INSERT INTO tandem.progress (direction, caught_up_at) VALUES ('reverse', now())
                 ON CONFLICT (direction) DO UPDATE SET caught_up_at = now()",
                &[],
            )
            .await
            .ctx(Side::Desktop, "recording when the new slot was made")?;
    }
    Ok(())
}

/// What `uninstall` will remove, and what is lost with it (pending changes, conflicts, dead letters).
#[derive(Debug, Default)]
pub struct UninstallPlan {
    pub desktop: Vec<Step>,
    pub cloud: Vec<Step>,
    pub losses: Vec<String>,
    pub blockers: Vec<Finding>,
}

impl UninstallPlan {
    pub fn is_empty(&self) -> bool {
        self.desktop.is_empty() && self.cloud.is_empty()
    }
}

/// Connects and plans `uninstall` without changing anything. The config is read only for the URLs and
/// the slot/publication names; everything else is found from what tandem recorded and installed.
pub async fn prepare_uninstall(
    config: &Config,
) -> Result<(Client, Client, UninstallPlan), SetupError> {
    let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let cloud = db::connect(Side::Cloud, &config.cloud.url).await?;
    let plan = plan_uninstall(&desktop, &cloud, config).await?;
    Ok((desktop, cloud, plan))
}

/// Applies a prepared uninstall plan.
pub async fn uninstall(
    desktop: &mut Client,
    cloud: &mut Client,
    plan: &UninstallPlan,
) -> Result<(), SetupError> {
    if !plan.blockers.is_empty() {
        return Err(SetupError::Blocked(plan.blockers.clone()));
    }
    apply(cloud, &plan.cloud).await?;
    apply(desktop, &plan.desktop).await?;
    Ok(())
}

/// FNV-1a of an install script: its version, recorded so init knows whether to run it again.
pub fn version_of(sql: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}
