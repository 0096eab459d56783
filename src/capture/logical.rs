//! Cloud capture: the publication over the synced tables, the logical replication slot, and the
//! ownership trigger that makes every write not made by tandem mobile-owned.
//!
//! Only mobile-owned rows travel back, so the publication carries a row filter on `source`. PostgreSQL
//! lets a row filter name only replica-identity columns once UPDATE and DELETE are published, and with a
//! filter in place every UPDATE and DELETE on a table whose identity does not cover it fails: the synced
//! tables get `REPLICA IDENTITY FULL` before the publication exists (which also gives updates and deletes
//! their whole old row, what cloud-key tables need to find a row on the desktop).

use serde_json::Value as Json;
use tokio_postgres::Client;

use crate::capture::APPLYING_SETTING;
use crate::change::{Lsn, QualifiedName, Side, quote_ident};
use crate::config::{Config, SOURCE_COLUMN};
use crate::db::{Context, DbError};
use crate::setup::triggers::{TriggerSpec, tgtype};

/// tandem's objects in the cloud (schema, progress, conflicts, dead letters, ownership function).
pub const INSTALL_SQL: &str = concat!(
    include_str!("../../sql/install/common.sql"),
    include_str!("../../sql/install/cloud.sql")
);

pub const REQUIRED_RELATIONS: &[&str] = &[
    "tandem.installation",
    "tandem.progress",
    "tandem.conflicts",
    "tandem.dead_letters",
    "tandem.replica_identity_before",
];
pub const MARK_FUNCTION: &str = "tandem.mark_mobile()";
pub const REQUIRED_FUNCTIONS: &[&str] = &[MARK_FUNCTION];

/// The prefix of the logical messages the ownership trigger emits when a phone takes over or deletes a
/// desktop-owned row (payload: `{"op", "schema", "table", "old"}`).
pub const CLAIM_PREFIX: &str = "tandem.claim";

/// A claim: the row a phone took over (its update arrives next, as an insert) or deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub delete: bool,
    pub schema: String,
    pub table: String,
    pub old: Json,
}

impl Claim {
    /// Parses a claim message's content; `None` when it is not one of ours.
    pub fn parse(content: &[u8]) -> Option<Claim> {
        let v: Json = serde_json::from_slice(content).ok()?;
        Some(Claim {
            delete: v.get("op")?.as_str()? == "delete",
            schema: v.get("schema")?.as_str()?.to_string(),
            table: v.get("table")?.as_str()?.to_string(),
            old: v.get("old")?.clone(),
        })
    }
}

/// Supabase's API roles: they must get nothing in schema tandem.
pub const API_ROLES: &[&str] = &["anon", "authenticated"];

/// The ownership trigger on every configured cloud table.
pub fn mark_triggers(config: &Config) -> Vec<TriggerSpec> {
    config
        .tables
        .iter()
        .map(|t| TriggerSpec {
            side: Side::Cloud,
            table: t.table.cloud.clone(),
            name: "tandem_mark_mobile".to_string(),
            function: "\"tandem\".\"mark_mobile\"".to_string(),
            tgtype: tgtype::ROW | tgtype::BEFORE | tgtype::INSERT | tgtype::UPDATE | tgtype::DELETE,
            args: Vec::new(),
            old_table: None,
            new_table: None,
            // tandem's own writes skip the function call altogether (it checks again, as a defence).
            when: Some(format!(
                "current_setting('{APPLYING_SETTING}', true) IS DISTINCT FROM 'on'"
            )),
        })
        .collect()
}

/// `"schema"."table" WHERE ("source" = 'M')`: one entry of the publication's table list.
pub fn publication_entry(table: &QualifiedName) -> String {
    format!(
        "{} WHERE ({} = 'M')",
        table.quoted(),
        quote_ident(SOURCE_COLUMN)
    )
}

/// `CREATE PUBLICATION` over `tables` (may be empty), publishing every kind of change.
pub fn create_publication_sql(name: &str, tables: &[QualifiedName]) -> String {
    let list = if tables.is_empty() {
        String::new()
    } else {
        let entries: Vec<String> = tables.iter().map(publication_entry).collect();
        format!(" FOR TABLE {}", entries.join(", "))
    };
    format!(
        "CREATE PUBLICATION {}{list} WITH (publish = 'insert, update, delete, truncate')",
        quote_ident(name)
    )
}

/// `ALTER PUBLICATION .. SET TABLE ..`: the whole list at once.
pub fn set_publication_tables_sql(name: &str, tables: &[QualifiedName]) -> Vec<String> {
    if tables.is_empty() {
        // SET TABLE needs at least one table; drop and re-create instead.
        return vec![
            format!("DROP PUBLICATION {}", quote_ident(name)),
            create_publication_sql(name, tables),
        ];
    }
    let entries: Vec<String> = tables.iter().map(publication_entry).collect();
    vec![format!(
        "ALTER PUBLICATION {} SET TABLE {}",
        quote_ident(name),
        entries.join(", ")
    )]
}

/// Whether a row filter as PostgreSQL prints it (`(source = 'M'::bpchar)`, or
/// `((source)::text = 'M'::text)` for a varchar column) is ours: casts, quotes, parentheses and
/// spaces are ignored.
pub fn filter_is_ours(rowfilter: &str) -> bool {
    let mut bare = String::with_capacity(rowfilter.len());
    let mut rest = rowfilter;
    while let Some(pos) = rest.find("::") {
        bare.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let type_len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c == ' '))
            .unwrap_or(after.len());
        rest = &after[type_len..];
    }
    bare.push_str(rest);
    bare.retain(|c| !matches!(c, '"' | '(' | ')' | ' '));
    bare == format!("{SOURCE_COLUMN}='M'")
}

#[derive(Debug, Clone)]
pub struct PublicationState {
    pub all_tables: bool,
    /// Publishes insert, update, delete and truncate.
    pub publishes_everything: bool,
    pub tables: Vec<(QualifiedName, Option<String>)>,
}

impl PublicationState {
    /// Whether it publishes exactly `wanted`, each with our row filter.
    pub fn matches(&self, wanted: &[QualifiedName]) -> bool {
        !self.all_tables
            && self.publishes_everything
            && self.tables.len() == wanted.len()
            && wanted.iter().all(|w| {
                self.tables
                    .iter()
                    .any(|(t, f)| t == w && f.as_deref().is_some_and(filter_is_ours))
            })
    }
}

pub async fn publication_state(
    client: &Client,
    name: &str,
) -> Result<Option<PublicationState>, DbError> {
    let Some(row) = client
        .query_opt(
            "SELECT puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate
               FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .ctx(Side::Cloud, format!("reading publication {name}"))?
    else {
        return Ok(None);
    };
    let tables = client
        .query(
            "SELECT schemaname::text, tablename::text, rowfilter FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await
        .ctx(Side::Cloud, format!("reading the tables of publication {name}"))?
        .into_iter()
        .map(|r| (QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)), r.get(2)))
        .collect();
    Ok(Some(PublicationState {
        all_tables: row.get(0),
        publishes_everything: row.get(1),
        tables,
    }))
}

#[derive(Debug, Clone)]
pub struct SlotState {
    pub plugin: Option<String>,
    pub database: Option<String>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    pub active_pid: Option<i32>,
    /// Whether it belongs to the database we are connected to.
    pub in_this_database: bool,
}

impl SlotState {
    /// Why tandem cannot use this slot, with the fix; `None` when it can.
    pub fn problem(&self, slot: &str) -> Option<(String, String)> {
        if self.plugin.as_deref() != Some("pgoutput") || !self.in_this_database {
            return Some((
                format!(
                    "replication slot {slot} exists but is not a pgoutput slot of this database (plugin {}, database {})",
                    self.plugin.as_deref().unwrap_or("none"),
                    self.database.as_deref().unwrap_or("none")
                ),
                "choose another name in [cloud] slot, or drop that slot if nothing uses it"
                    .to_string(),
            ));
        }
        if self.wal_status.as_deref() == Some("lost") {
            return Some((
                format!(
                    "replication slot {slot} is invalidated (wal_status lost): the cloud removed WAL it still \
                     needed, so changes made meanwhile cannot be streamed"
                ),
                format!(
                    "drop it (SELECT pg_drop_replication_slot('{slot}')), run `tandem init` to create it again, \
                     then `tandem reconcile` to repair what was missed; raise max_slot_wal_keep_size to prevent it"
                ),
            ));
        }
        None
    }
}

pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, DbError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text, wal_status, active_pid, database = current_database()
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ctx(Side::Cloud, format!("reading replication slot {slot}"))?;
    Ok(row.map(|r| SlotState {
        plugin: r.get(0),
        database: r.get(1),
        wal_status: r.get(2),
        active_pid: r.get(3),
        in_this_database: r.get::<_, Option<bool>>(4).unwrap_or(false),
    }))
}

/// Session settings of the replication connection, so values arrive as text the desktop parses the same
/// way (ISO dates, the default interval style, exact floats).
const STREAM_OPTIONS: &str =
    "-c datestyle=ISO,MDY -c intervalstyle=postgres -c extra_float_digits=3";

/// The replication connection for `config`'s cloud URL: same host, user, password and TLS settings as
/// the ordinary connections, streaming from `start` (the slot's own position when zero) and reporting
/// `ack` as already applied until the worker reports more.
pub fn replication_config(
    config: &crate::config::Config,
    start: Lsn,
    ack: Option<Lsn>,
) -> Result<pgwire_replication::ReplicationConfig, DbError> {
    use pgwire_replication::config::{SslMode as Mode, TlsConfig};
    use tokio_postgres::config::Host;

    let url = &config.cloud.url;
    let bad = |message: String| DbError::BadUrl {
        side: Side::Cloud,
        url: url.redacted(),
        message,
    };
    let target = crate::db::ConnectTarget::parse(url.expose()).map_err(bad)?;
    let c = &target.config;
    let user = c.get_user().unwrap_or("postgres").to_string();
    let password = match c.get_password() {
        Some(p) => {
            String::from_utf8(p.to_vec()).map_err(|_| bad("the password is not UTF-8".into()))?
        }
        None => String::new(),
    };
    let database = c.get_dbname().map_or_else(|| user.clone(), str::to_string);
    let slot = config.cloud.slot.clone();
    let publication = config.cloud.publication.clone();
    let port = c.get_ports().first().copied().unwrap_or(5432);
    let mut rc = match c.get_hosts().first() {
        Some(Host::Unix(dir)) => pgwire_replication::ReplicationConfig::unix(
            dir.display().to_string(),
            port,
            user,
            password,
            database,
            slot,
            publication,
        ),
        Some(Host::Tcp(host)) => pgwire_replication::ReplicationConfig::new(
            host.clone(),
            user,
            password,
            database,
            slot,
            publication,
        ),
        None => pgwire_replication::ReplicationConfig::new(
            "localhost",
            user,
            password,
            database,
            slot,
            publication,
        ),
    }
    .with_port(port);
    let roots = match &target.root_certs {
        Some(crate::db::RootCerts::File(path)) => Some(path.clone()),
        // The crate's own trust store (Mozilla's roots) stands in for the system's.
        Some(crate::db::RootCerts::System) | None => None,
    };
    let tls = match (target.ssl_mode, &target.root_certs) {
        (crate::db::SslMode::Disable, _) => TlsConfig::disabled(),
        (crate::db::SslMode::Prefer, _) => TlsConfig {
            mode: Mode::Prefer,
            ..TlsConfig::disabled()
        },
        (crate::db::SslMode::Require, None) => TlsConfig::require(),
        (crate::db::SslMode::Require | crate::db::SslMode::VerifyCa, _) => {
            TlsConfig::verify_ca(roots)
        }
        (crate::db::SslMode::VerifyFull, _) => TlsConfig::verify_full(roots),
    };
    rc = rc
        .with_tls(tls)
        .with_start_lsn(pgwire_replication::Lsn::from_u64(start.0))
        .with_status_interval(std::time::Duration::from_millis(500))
        .with_wakeup_interval(std::time::Duration::from_secs(1))
        .with_options(STREAM_OPTIONS)
        .with_application_name("tandem");
    if let Some(ack) = ack {
        rc = rc.with_ack_lsn(pgwire_replication::Lsn::from_u64(ack.0));
    }
    Ok(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_filters_as_postgres_prints_them_are_recognised() {
        assert!(filter_is_ours("(source = 'M'::bpchar)"));
        assert!(filter_is_ours("(source = 'M'::text)"));
        assert!(filter_is_ours("((source)::text = 'M'::text)"));
        assert!(filter_is_ours("(\"source\" = 'M'::character varying)"));
        assert!(!filter_is_ours("(source = 'D'::bpchar)"));
        assert!(!filter_is_ours("((source = 'M'::bpchar) AND (job_id > 0))"));
    }

    #[test]
    fn publication_ddl_quotes_and_filters() {
        let t = QualifiedName::new("public", "jobs\"head");
        assert_eq!(
            create_publication_sql("tan dem", std::slice::from_ref(&t)),
            "CREATE PUBLICATION \"tan dem\" FOR TABLE \"public\".\"jobs\"\"head\" WHERE (\"source\" = 'M') \
             WITH (publish = 'insert, update, delete, truncate')"
        );
        assert_eq!(
            create_publication_sql("p", &[]),
            "CREATE PUBLICATION \"p\" WITH (publish = 'insert, update, delete, truncate')"
        );
    }
}
