//! The cloud source: the logical replication stream (its connection settings), and the claim messages
//! the ownership trigger writes into it.
//!
//! The publication, the slot and the ownership trigger are installed by [`crate::setup::cloud`].

use serde_json::Value as Json;

use crate::change::{Lsn, Side};
use crate::db::DbError;

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
        // tandem's session settings: values arrive as the same text a tandem session would print, which
        // the desktop parses exactly (ISO dates, exact floats, money in the C locale, ...).
        .with_options(crate::db::session_options())
        .with_application_name("tandem");
    if let Some(ack) = ack {
        rc = rc.with_ack_lsn(pgwire_replication::Lsn::from_u64(ack.0));
    }
    Ok(rc)
}
