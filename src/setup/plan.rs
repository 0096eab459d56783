//! Comparing what should exist with what does, one side at a time.

use tokio_postgres::Client;

use super::cloud as logical;
use super::desktop as outbox;
use crate::catalog::validate::{Finding, Severity};
use crate::change::{QualifiedName, Side};
use crate::config::Config;
use crate::db::{Context, DbError};

use super::triggers::{self, TriggerChange};
use super::{Step, UninstallPlan, version_of};

/// The steps that bring one side to the config, and what no step can fix.
#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub blockers: Vec<Finding>,
}

fn blocker(subject: &str, problem: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        table: None,
        parks: false,
        severity: Severity::Error,
        subject: subject.to_string(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The install step, when schema tandem is missing, incomplete or from another version of tandem.
async fn install_step(
    client: &Client,
    side: Side,
    sql: &'static str,
    relations: &[&str],
    functions: &[&str],
) -> Result<Option<Step>, DbError> {
    let row = client
        .query_one(
            "SELECT to_regnamespace('tandem') IS NOT NULL,
                    ARRAY(SELECT r FROM unnest($1::text[]) AS r WHERE to_regclass(r) IS NULL)
                    || ARRAY(SELECT f FROM unnest($2::text[]) AS f WHERE to_regprocedure(f) IS NULL)",
            &[&relations, &functions],
        )
        .await
        .ctx(side, "looking for schema tandem")?;
    let schema_exists: bool = row.get(0);
    let missing: Vec<String> = row.get(1);
    let version = version_of(sql);
    let reason = if !schema_exists {
        Some("new".to_string())
    } else if !missing.is_empty() {
        Some(format!("incomplete: {} missing", missing.join(", ")))
    } else {
        let installed: Option<String> = client
            .query_opt(
                "SELECT value FROM tandem.installation WHERE item = 'version'",
                &[],
            )
            .await
            .ctx(side, "reading tandem.installation")?
            .map(|r| r.get(0));
        (installed.as_deref() != Some(version.as_str()))
            .then(|| "installed by another version of tandem: upgrading".to_string())
    };
    Ok(reason.map(|reason| Step::Install {
        side,
        sql,
        version,
        reason,
    }))
}

async fn recorded(client: &Client, side: Side, item: &str) -> Result<Option<String>, DbError> {
    if !relation_exists(client, side, "tandem.installation").await? {
        return Ok(None);
    }
    Ok(client
        .query_opt(
            "SELECT value FROM tandem.installation WHERE item = $1",
            &[&item],
        )
        .await
        .ctx(side, format!("reading {item} from tandem.installation"))?
        .map(|r| r.get(0)))
}

/// The role this session logged in as: tandem's own on this side.
async fn session_role(client: &Client, side: Side) -> Result<String, DbError> {
    Ok(client
        .query_one("SELECT session_user::text", &[])
        .await
        .ctx(side, "reading the role tandem connects as")?
        .get(0))
}

/// Records the role tandem connects as (`tandem.installation.role`), when it is not recorded yet or
/// changed: the capture and ownership triggers take only that role's writes for tandem's own.
async fn role_step(client: &Client, side: Side) -> Result<Option<Step>, DbError> {
    let role = session_role(client, side).await?;
    let recorded = recorded(client, side, "role").await?;
    Ok(
        (recorded.as_deref() != Some(role.as_str())).then(|| Step::Record {
            side,
            item: "role".to_string(),
            value: role,
        }),
    )
}

async fn relation_exists(client: &Client, side: Side, name: &str) -> Result<bool, DbError> {
    Ok(client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .ctx(side, format!("looking for {name}"))?
        .get(0))
}

/// Desktop: schema tandem, and the capture triggers on exactly the configured tables.
pub async fn plan_desktop(client: &Client, config: &Config) -> Result<Plan, DbError> {
    let mut plan = Plan::default();
    plan.steps.extend(
        install_step(
            client,
            Side::Desktop,
            outbox::INSTALL_SQL,
            outbox::REQUIRED_RELATIONS,
            outbox::REQUIRED_FUNCTIONS,
        )
        .await?,
    );
    plan.steps.extend(role_step(client, Side::Desktop).await?);
    let installed = triggers::installed(client, Side::Desktop, outbox::CAPTURE_FUNCTION).await?;
    let desired = outbox::capture_triggers(config);
    plan.steps.extend(
        triggers::diff(Side::Desktop, &desired, &installed)
            .into_iter()
            .map(Step::Trigger),
    );
    Ok(plan)
}

/// Cloud: server settings, schema tandem, ownership triggers, replica identity, publication, slot.
pub async fn plan_cloud(client: &Client, config: &Config) -> Result<Plan, DbError> {
    let mut plan = Plan::default();
    preflight_cloud(client, config, &mut plan.blockers).await?;
    plan.steps.extend(
        install_step(
            client,
            Side::Cloud,
            logical::INSTALL_SQL,
            logical::REQUIRED_RELATIONS,
            logical::REQUIRED_FUNCTIONS,
        )
        .await?,
    );
    let role = session_role(client, Side::Cloud).await?;
    plan.steps.extend(role_step(client, Side::Cloud).await?);
    let installed = triggers::installed(client, Side::Cloud, logical::MARK_FUNCTION).await?;
    plan.steps.extend(
        triggers::diff(
            Side::Cloud,
            &logical::mark_triggers(config, &role),
            &installed,
        )
        .into_iter()
        .map(Step::Trigger),
    );

    // Replica identity FULL on the published tables, before the publication carries their row filter.
    let published: Vec<QualifiedName> = config
        .reverse_tables()
        .map(|t| t.table.cloud.clone())
        .collect();
    for (table, identity, index) in replica_identities(client, &published).await? {
        if identity != 'f' {
            plan.steps.push(Step::ReplicaIdentityFull {
                table,
                was: identity,
                index,
            });
        }
    }

    let pub_name = &config.cloud.publication;
    let old_pub = recorded(client, Side::Cloud, "publication").await?;
    if let Some(old) = old_pub.as_ref().filter(|old| *old != pub_name)
        && logical::publication_state(client, old).await?.is_some()
    {
        plan.steps.push(Step::DropPublication { name: old.clone() });
    }
    match logical::publication_state(client, pub_name).await? {
        None => plan.steps.push(Step::CreatePublication {
            name: pub_name.clone(),
            tables: published.clone(),
        }),
        Some(state) if state.all_tables || !state.publishes_everything => {
            plan.steps.push(Step::DropPublication {
                name: pub_name.clone(),
            });
            plan.steps.push(Step::CreatePublication {
                name: pub_name.clone(),
                tables: published.clone(),
            });
        }
        Some(state) if !state.matches(&published) => plan.steps.push(Step::SetPublicationTables {
            name: pub_name.clone(),
            tables: published.clone(),
        }),
        Some(_) => {}
    }

    // Tables init once set to FULL that are no longer published get their identity back.
    for (table, identity, index) in recorded_identities(client).await? {
        if !published.contains(&table) {
            plan.steps.push(Step::RestoreReplicaIdentity {
                table,
                identity,
                index,
            });
        }
    }

    let slot = &config.cloud.slot;
    let old_slot = recorded(client, Side::Cloud, "slot").await?;
    if let Some(old) = old_slot.as_ref().filter(|old| *old != slot)
        && logical::slot_state(client, old).await?.is_some()
    {
        plan.blockers.push(blocker(
            "[cloud] slot",
            format!("the slot name changed from {old} to {slot}, and slot {old} still exists: it keeps the cloud's WAL forever"),
            format!("drop it (SELECT pg_drop_replication_slot('{old}')) or set [cloud] slot back to {old:?}"),
        ));
    }
    // A slot whose publication is gone cannot decode past the moment it went (pgoutput looks the
    // publication up as of each change): made again, like a lost one; `tandem reconcile` repairs what
    // it missed. Only when this install made the publication before (it is recorded).
    let publication_lost = old_pub.as_ref() == Some(pub_name)
        && plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::CreatePublication { name, .. } if name == pub_name))
        && !plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::DropPublication { name } if name == pub_name));
    match logical::slot_state(client, slot).await? {
        None => plan.steps.push(Step::CreateSlot { name: slot.clone() }),
        Some(_) if publication_lost => {
            plan.steps.push(Step::DropSlot { name: slot.clone() });
            plan.steps.push(Step::CreateSlot { name: slot.clone() });
        }
        Some(state) => {
            if let Some((problem, fix)) = state.problem(slot) {
                plan.blockers.push(blocker("[cloud] slot", problem, fix));
            }
        }
    }
    for (item, value) in [("publication", pub_name), ("slot", slot)] {
        let current = if item == "slot" { &old_slot } else { &old_pub };
        if current.as_ref() != Some(value) {
            plan.steps.push(Step::Record {
                side: Side::Cloud,
                item: item.to_string(),
                value: value.clone(),
            });
        }
    }
    Ok(plan)
}

/// wal_level, the right to replicate, a free slot: what init needs of the cloud server itself.
async fn preflight_cloud(
    client: &Client,
    config: &Config,
    blockers: &mut Vec<Finding>,
) -> Result<(), DbError> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'),
                    (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user),
                    current_setting('max_replication_slots')::int,
                    (SELECT count(*)::int FROM pg_replication_slots),
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                    current_user::text",
            &[&config.cloud.slot],
        )
        .await
        .ctx(Side::Cloud, "reading wal_level and replication settings")?;
    let wal_level: String = row.get(0);
    let can_replicate: bool = row.get::<_, Option<bool>>(1).unwrap_or(false);
    let max_slots: i32 = row.get(2);
    let used_slots: i32 = row.get(3);
    let slot_exists: bool = row.get(4);
    let user: String = row.get(5);
    if wal_level != "logical" {
        blockers.push(blocker(
            "cloud wal_level",
            format!("wal_level is {wal_level}; logical replication needs logical"),
            "set wal_level = logical in the cloud's postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart it; \
             Supabase projects already have it",
        ));
    }
    if !can_replicate {
        blockers.push(blocker(
            "cloud role",
            format!("role {user} may not replicate (neither REPLICATION nor superuser)"),
            format!("ALTER ROLE {user} REPLICATION, or connect as a role that has it (Supabase: postgres)"),
        ));
    }
    if !slot_exists && used_slots >= max_slots {
        blockers.push(blocker(
            "cloud max_replication_slots",
            format!("all {max_slots} replication slots are in use"),
            "raise max_replication_slots and restart, or drop an unused slot",
        ));
    }
    Ok(())
}

type Identity = (QualifiedName, char, Option<String>);

/// The replica identity of each of `tables` that exists (and its index, for USING INDEX).
async fn replica_identities(
    client: &Client,
    tables: &[QualifiedName],
) -> Result<Vec<Identity>, DbError> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(
            "SELECT t.s, t.n, c.relreplident::text,
                    (SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                      WHERE i.indrelid = c.oid AND i.indisreplident)
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(s, n, ord)
               JOIN pg_namespace ns ON ns.nspname = t.s
               JOIN pg_class c ON c.relnamespace = ns.oid AND c.relname = t.n
              ORDER BY t.ord",
            &[&schemas, &names],
        )
        .await
        .ctx(Side::Cloud, "reading replica identities")?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let ident: String = r.get(2);
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                ident.chars().next().unwrap_or('d'),
                r.get(3),
            )
        })
        .collect())
}

/// The identities init replaced by FULL, for tables that still exist.
async fn recorded_identities(client: &Client) -> Result<Vec<Identity>, DbError> {
    if !relation_exists(client, Side::Cloud, "tandem.replica_identity_before").await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT b.table_schema, b.table_name, b.identity::text, b.index_name
               FROM tandem.replica_identity_before b
              WHERE to_regclass(format('%I.%I', b.table_schema, b.table_name)) IS NOT NULL
              ORDER BY 1, 2",
            &[],
        )
        .await
        .ctx(Side::Cloud, "reading tandem.replica_identity_before")?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let ident: String = r.get(2);
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                ident.chars().next().unwrap_or('d'),
                r.get(3),
            )
        })
        .collect())
}

/// Everything tandem installed, found from the catalogs and what init recorded, not from the config
/// (which may have changed since): triggers by the function they call, the recorded slot, publication
/// and replica identities. The config's names are used when nothing was recorded.
pub async fn plan_uninstall(
    desktop: &Client,
    cloud: &Client,
    config: &Config,
) -> Result<UninstallPlan, DbError> {
    let mut plan = UninstallPlan::default();

    // Cloud: slot first (it reads the publication), then publication, identities, triggers, schema.
    let slot = recorded(cloud, Side::Cloud, "slot")
        .await?
        .unwrap_or_else(|| config.cloud.slot.clone());
    if let Some(state) = logical::slot_state(cloud, &slot).await? {
        if let Some(pid) = state.active_pid {
            plan.blockers.push(blocker(
                "[cloud] slot",
                format!("replication slot {slot} is in use (by server process {pid})"),
                "stop `tandem run` first, then uninstall again",
            ));
        }
        if state.in_this_database {
            plan.cloud.push(Step::DropSlot { name: slot });
        }
    }
    let publication = recorded(cloud, Side::Cloud, "publication")
        .await?
        .unwrap_or_else(|| config.cloud.publication.clone());
    if logical::publication_state(cloud, &publication)
        .await?
        .is_some()
    {
        plan.cloud.push(Step::DropPublication { name: publication });
    }
    for (table, identity, index) in recorded_identities(cloud).await? {
        plan.cloud.push(Step::RestoreReplicaIdentity {
            table,
            identity,
            index,
        });
    }
    for t in triggers::installed(cloud, Side::Cloud, logical::MARK_FUNCTION).await? {
        plan.cloud.push(Step::Trigger(TriggerChange::Drop {
            side: Side::Cloud,
            table: t.table,
            name: t.name,
        }));
    }
    if schema_exists(cloud, Side::Cloud).await? {
        plan.losses
            .extend(counts(cloud, Side::Cloud, &["conflicts", "dead_letters"]).await?);
        plan.cloud.push(Step::DropSchema { side: Side::Cloud });
    }

    for t in triggers::installed(desktop, Side::Desktop, outbox::CAPTURE_FUNCTION).await? {
        plan.desktop.push(Step::Trigger(TriggerChange::Drop {
            side: Side::Desktop,
            table: t.table,
            name: t.name,
        }));
    }
    if schema_exists(desktop, Side::Desktop).await? {
        plan.losses.extend(
            counts(
                desktop,
                Side::Desktop,
                &["outbox", "conflicts", "dead_letters"],
            )
            .await?,
        );
        plan.desktop.push(Step::DropSchema {
            side: Side::Desktop,
        });
    }
    Ok(plan)
}

async fn schema_exists(client: &Client, side: Side) -> Result<bool, DbError> {
    Ok(client
        .query_one("SELECT to_regnamespace('tandem') IS NOT NULL", &[])
        .await
        .ctx(side, "looking for schema tandem")?
        .get(0))
}

/// "12 row(s) in desktop tandem.outbox" for each non-empty table of tandem's own that exists.
async fn counts(client: &Client, side: Side, tables: &[&str]) -> Result<Vec<String>, DbError> {
    let mut out = Vec::new();
    for table in tables {
        let qualified = format!("tandem.{table}");
        if !relation_exists(client, side, &qualified).await? {
            continue;
        }
        // tandem's own table names, not config values: safe to write into the SQL.
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {qualified}"), &[])
            .await
            .ctx(side, format!("counting {qualified}"))?
            .get(0);
        if n > 0 {
            out.push(format!("{n} row(s) in {side} {qualified}"));
        }
    }
    Ok(out)
}
