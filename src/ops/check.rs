//! `tandem check`: is everything in place for tandem to run? Each item says what holds or what is wrong
//! and how to fix it; the command succeeds only when no item failed.
//!
//! It never changes anything and never stops at the first problem: an operator fixing a new install
//! wants the whole list. What `init` would still do is reported as missing (run `tandem init`).

use std::fmt;

use serde::Serialize;
use tokio_postgres::Client;

use crate::catalog::validate::Severity;
use crate::change::{QualifiedName, Side};
use crate::config::Config;
use crate::db::{self, Context, DbError};
use crate::setup::cloud as logical;
use crate::setup::{self, Step};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckItem {
    pub status: Status,
    pub subject: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl fmt::Display for CheckItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "[{tag}] {}: {}", self.subject, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n       fix: {fix}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub items: Vec<CheckItem>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    pub fn failures(&self) -> impl Iterator<Item = &CheckItem> {
        self.items.iter().filter(|i| i.status == Status::Fail)
    }

    fn push(
        &mut self,
        status: Status,
        subject: impl Into<String>,
        message: impl Into<String>,
        fix: Option<String>,
    ) {
        self.items.push(CheckItem {
            status,
            subject: subject.into(),
            message: message.into(),
            fix,
        });
    }

    fn ok(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.push(Status::Ok, subject, message, None);
    }

    fn fail(
        &mut self,
        subject: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Status::Fail, subject, message, Some(fix.into()));
    }
}

/// Supabase's connection pooler cannot carry logical replication: tandem needs the direct address.
pub fn pooler_problem(url: &str) -> Option<String> {
    let target = db::ConnectTarget::parse(url).ok()?;
    let host = target.host();
    let port = target.config.get_ports().first().copied().unwrap_or(5432);
    (host.contains("pooler.supabase.com") || port == 6543).then(|| {
        format!(
            "{host}:{port} is Supabase's connection pooler, which cannot carry logical replication"
        )
    })
}

/// Runs every check; connection failures are items too.
pub async fn check(config: &Config) -> CheckReport {
    let mut report = CheckReport::default();
    if let Some(problem) = pooler_problem(config.cloud.url.expose()) {
        report.fail(
            "[cloud] url",
            problem,
            "use the direct connection (Supabase: Project Settings → Database → Connection string → Direct, \
             db.<project>.supabase.co:5432)",
        );
    }
    let desktop = connect(&mut report, Side::Desktop, config).await;
    let cloud = connect(&mut report, Side::Cloud, config).await;
    let (Some(desktop), Some(cloud)) = (desktop, cloud) else {
        return report;
    };
    if let Err(e) = check_connected(&mut report, config, &desktop, &cloud).await {
        let fix = if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            "grant the connecting role the privilege the message names"
        } else {
            "see the message; then run check again"
        };
        report.fail(format!("{} database", e.side()), e.to_string(), fix);
    }
    report
}

async fn connect(report: &mut CheckReport, side: Side, config: &Config) -> Option<Client> {
    let (url, setting) = match side {
        Side::Desktop => (&config.desktop.url, "[desktop] url / TANDEM_DESKTOP_URL"),
        Side::Cloud => (&config.cloud.url, "[cloud] url / TANDEM_CLOUD_URL"),
    };
    match db::connect(side, url).await {
        Ok(client) => {
            report.ok(format!("{side} connection"), format!("connected to {url}"));
            Some(client)
        }
        Err(e) => {
            report.fail(
                format!("{side} connection"),
                e.to_string(),
                format!("fix {setting}"),
            );
            None
        }
    }
}

async fn check_connected(
    report: &mut CheckReport,
    config: &Config,
    desktop: &Client,
    cloud: &Client,
) -> Result<(), DbError> {
    server_versions(report, desktop, cloud).await?;

    let findings = setup::load_and_validate(config, desktop, cloud).await?;
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    for f in &findings {
        let status = if f.severity == Severity::Error {
            Status::Fail
        } else {
            Status::Warn
        };
        report.push(
            status,
            f.subject.clone(),
            f.problem.clone(),
            Some(f.fix.clone()),
        );
    }
    if errors == 0 {
        report.ok(
            "config",
            format!("{} table(s) match both live schemas", config.tables.len()),
        );
    }

    privileges(report, Side::Desktop, desktop, config).await?;
    privileges(report, Side::Cloud, cloud, config).await?;
    own_role(report, Side::Desktop, desktop).await?;
    own_role(report, Side::Cloud, cloud).await?;
    // The install checks read schema tandem: only where the role may.
    let desktop_ok = tandem_access(report, Side::Desktop, desktop).await?;
    let cloud_ok = tandem_access(report, Side::Cloud, cloud).await?;

    if desktop_ok {
        let dplan = setup::plan_desktop(desktop, config).await?;
        missing_steps(report, Side::Desktop, &dplan.steps, || {
            format!(
                "outbox and capture triggers installed on {} table(s)",
                config.tables.len()
            )
        });
    }
    if !cloud_ok {
        return Ok(());
    }
    let cplan = setup::plan_cloud(cloud, config).await?;
    for b in &cplan.blockers {
        report.fail(b.subject.clone(), b.problem.clone(), b.fix.clone());
    }
    if !cplan
        .blockers
        .iter()
        .any(|b| b.subject.contains("wal_level"))
    {
        report.ok("cloud wal_level", "logical");
    }
    missing_steps(report, Side::Cloud, &cplan.steps, || {
        format!(
            "ownership triggers, replica identity, publication {} ({} table(s)) and slot {} in place",
            config.cloud.publication,
            config.reverse_tables().count(),
            config.cloud.slot
        )
    });
    if let Some(slot) = logical::slot_state(cloud, &config.cloud.slot).await?
        && slot.problem(&config.cloud.slot).is_none()
    {
        report.ok(
            "cloud slot",
            format!(
                "{} is a pgoutput slot of this database, wal_status {}{}",
                config.cloud.slot,
                slot.wal_status.as_deref().unwrap_or("unknown"),
                slot.active_pid
                    .map(|p| format!(", in use by process {p}"))
                    .unwrap_or_default()
            ),
        );
    }

    api_roles(report, cloud).await?;
    Ok(())
}

fn missing_steps(
    report: &mut CheckReport,
    side: Side,
    steps: &[Step],
    all_good: impl FnOnce() -> String,
) {
    if steps.is_empty() {
        report.ok(format!("{side} install"), all_good());
    }
    for step in steps {
        let subject = format!("{side} install");
        report.fail(subject, format!("missing: {step}"), "run `tandem init`");
    }
}

async fn server_versions(
    report: &mut CheckReport,
    desktop: &Client,
    cloud: &Client,
) -> Result<(), DbError> {
    // Transition tables (statement-level capture) need 10; row-filtered publications need 15.
    for (side, client, min, why) in [
        (
            Side::Desktop,
            desktop,
            100_000,
            "statement-level capture triggers need PostgreSQL 10",
        ),
        (
            Side::Cloud,
            cloud,
            150_000,
            "row-filtered publications need PostgreSQL 15",
        ),
    ] {
        let row = client
            .query_one("SELECT current_setting('server_version_num')::int, current_setting('server_version')", &[])
            .await
            .ctx(side, "reading server_version")?;
        let num: i32 = row.get(0);
        let text: String = row.get(1);
        if num < min {
            report.fail(
                format!("{side} server"),
                format!("PostgreSQL {text}: {why}"),
                "upgrade the server",
            );
        } else {
            report.ok(format!("{side} server"), format!("PostgreSQL {text}"));
        }
    }
    Ok(())
}

/// The connecting role can read every configured table, and write where tandem writes.
async fn privileges(
    report: &mut CheckReport,
    side: Side,
    client: &Client,
    config: &Config,
) -> Result<(), DbError> {
    let mut tables: Vec<(&QualifiedName, &str)> = Vec::new();
    for t in &config.tables {
        match side {
            // The forward direction reads; the reverse direction writes mobile rows back.
            Side::Desktop => tables.push((
                &t.table.desktop,
                if t.reverse {
                    "SELECT,INSERT,UPDATE,DELETE"
                } else {
                    "SELECT"
                },
            )),
            Side::Cloud => tables.push((&t.table.cloud, "SELECT,INSERT,UPDATE,DELETE")),
        }
    }
    let names: Vec<String> = tables.iter().map(|(t, _)| t.quoted()).collect();
    let wanted: Vec<&str> = tables.iter().map(|(_, p)| *p).collect();
    let rows = client
        .query(
            "SELECT t.name, p.privilege, current_user::text
               FROM unnest($1::text[], $2::text[]) AS t(name, privs)
               CROSS JOIN LATERAL unnest(string_to_array(t.privs, ',')) AS p(privilege)
              WHERE to_regclass(t.name) IS NOT NULL
                AND NOT has_table_privilege(t.name, p.privilege)",
            &[&names, &wanted],
        )
        .await
        .ctx(side, "checking table privileges")?;
    if rows.is_empty() {
        report.ok(
            format!("{side} privileges"),
            "the connecting role may read and write the configured tables",
        );
    }
    for row in rows {
        let table: String = row.get(0);
        let privilege: String = row.get(1);
        let user: String = row.get(2);
        report.fail(
            format!("{side} privileges"),
            format!("role {user} lacks {privilege} on {table}"),
            format!("GRANT {privilege} ON {table} TO {user} on the {side}"),
        );
    }
    Ok(())
}

/// tandem's own role must reach schema tandem (it does when it ran init). False when it cannot.
/// Only sessions of tandem's role that set `tandem.applying` count as tandem's own writes (they are
/// neither captured on the desktop nor marked as a phone's in the cloud): a role others log in as too
/// lets them pass for tandem. Warned about, with the fix: a role of tandem's own.
async fn own_role(report: &mut CheckReport, side: Side, client: &Client) -> Result<(), DbError> {
    let row = client
        .query_one(
            "SELECT session_user::text,
                    (SELECT count(*) FROM pg_stat_activity a
                      WHERE a.usename = session_user AND a.datname = current_database()
                        AND a.pid <> pg_backend_pid()
                        AND a.backend_type = 'client backend'
                        AND coalesce(a.application_name, '') NOT LIKE $1 || '%')",
            &[&db::APPLICATION_NAME],
        )
        .await
        .ctx(side, "reading who else uses tandem's role")?;
    let (role, others): (String, i64) = (row.get(0), row.get(1));
    let subject = format!("{side} role");
    let fix = format!(
        "give tandem a login role of its own on the {side} (CREATE ROLE tandem_sync LOGIN PASSWORD '...', \
         with the privileges `tandem check` lists), use it in [{side}] url, and run `tandem init`"
    );
    if others > 0 {
        report.push(
            Status::Warn,
            subject,
            format!(
                "tandem connects as {role}, which {others} other session(s) use too: only sessions of tandem's role \
                 that set tandem.applying count as tandem's own writes, and any of them could"
            ),
            Some(fix),
        );
    } else {
        report.ok(
            subject,
            format!(
                "tandem's own writes are those of role {role}, which no other session uses now"
            ),
        );
    }
    Ok(())
}

async fn tandem_access(
    report: &mut CheckReport,
    side: Side,
    client: &Client,
) -> Result<bool, DbError> {
    let row = client
        .query_one(
            "SELECT current_user::text,
                    to_regnamespace('tandem') IS NULL
                    OR (has_schema_privilege(to_regnamespace('tandem'), 'USAGE')
                        AND NOT EXISTS (SELECT 1 FROM pg_class c
                                         WHERE c.relnamespace = to_regnamespace('tandem') AND c.relkind = 'r'
                                           AND NOT has_table_privilege(c.oid, 'SELECT,INSERT,UPDATE,DELETE')))",
            &[],
        )
        .await
        .ctx(side, "checking access to schema tandem")?;
    let user: String = row.get(0);
    let ok: bool = row.get(1);
    if !ok {
        report.fail(
            format!("{side} schema tandem"),
            format!("role {user} cannot use schema tandem (init ran as another role)"),
            format!(
                "run tandem as the role that ran init, or GRANT USAGE ON SCHEMA tandem TO {user}; \
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA tandem TO {user} on the {side}"
            ),
        );
    }
    Ok(ok)
}

/// Supabase's API roles must not reach schema tandem.
async fn api_roles(report: &mut CheckReport, cloud: &Client) -> Result<(), DbError> {
    let rows = cloud
        .query(
            "SELECT r.rolname::text
               FROM pg_roles r
              WHERE r.rolname = ANY($1::text[])
                AND to_regnamespace('tandem') IS NOT NULL
                AND (has_schema_privilege(r.oid, to_regnamespace('tandem'), 'USAGE')
                     OR EXISTS (SELECT 1 FROM pg_class c
                                 WHERE c.relnamespace = to_regnamespace('tandem')
                                   AND c.relkind = 'r'
                                   AND has_table_privilege(r.oid, c.oid, 'SELECT,INSERT,UPDATE,DELETE')))",
            &[&logical::API_ROLES],
        )
        .await
        .ctx(Side::Cloud, "checking the API roles' access to schema tandem")?;
    for row in rows {
        let role: String = row.get(0);
        report.fail(
            "cloud schema tandem",
            format!("role {role} (Supabase's API) can reach schema tandem"),
            format!("REVOKE ALL ON SCHEMA tandem FROM {role}; REVOKE ALL ON ALL TABLES IN SCHEMA tandem FROM {role}"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pooler_is_recognised() {
        assert!(
            pooler_problem(
                "postgresql://postgres.x:pw@aws-0-eu-west-1.pooler.supabase.com:5432/postgres"
            )
            .is_some()
        );
        assert!(pooler_problem("postgresql://postgres@db.abc.supabase.co:6543/postgres").is_some());
        assert!(pooler_problem("postgresql://postgres@db.abc.supabase.co:5432/postgres").is_none());
    }
}
