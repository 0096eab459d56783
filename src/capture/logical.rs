//! The cloud source: the logical replication stream (its connection settings), and the claim messages
//! the ownership trigger writes into it.
//!
//! The publication, the slot and the ownership trigger are installed by [`crate::setup::cloud`].

use serde_json::Value as Json;

use crate::change::{Horizon, Lsn, Side};
use crate::db::DbError;

/// The prefix of the logical messages the ownership trigger emits when a phone takes over or deletes a
/// desktop-owned row (payload: `{"op", "schema", "table", "names", "old"}`: the table's column names,
/// and the old row's text as a record, `(1,"a b",)`, which holds each column's exact text).
pub const CLAIM_PREFIX: &str = "tandem.claim";
/// The prefix of the transactional message that opens a cloud transaction of tandem's own whose
/// changes the reverse stream must not apply: a forward batch writing the desktop's version over a
/// phone's row the desktop had received (the publication's row filter, `source = 'M'`, sends a row
/// leaving `'M'` as a DELETE), `tandem conflicts resolve`. Its content (see [`Own`]) carries the
/// transaction's snapshot: the stream passing it has applied everything that snapshot sees.
pub const OWN_PREFIX: &str = "tandem.own";

/// What an [`OWN_PREFIX`] message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    /// The writing transaction's snapshot (none in messages of older versions).
    pub horizon: Option<Horizon>,
    /// A desktop change waits for the desktop to reach it (the forward batch held one back): record
    /// it at once rather than with the next group.
    pub wanted: bool,
}

impl Own {
    pub fn parse(content: &[u8]) -> Own {
        let v: Json = serde_json::from_slice(content).unwrap_or(Json::Null);
        Own {
            horizon: v
                .get("horizon")
                .and_then(Json::as_str)
                .and_then(Horizon::parse),
            wanted: v.get("wanted").and_then(Json::as_bool).unwrap_or(false),
        }
    }

    /// A statement that writes such a message first in the current transaction, with its snapshot;
    /// `$1` (boolean): whether a desktop change waits for it. Returns the snapshot's xmax (bigint): a
    /// desktop change held back now is taken again once the table's horizon reaches it.
    pub fn emit_sql() -> String {
        format!(
            "SELECT pg_catalog.pg_snapshot_xmax(x.s)::text::bigint,                     pg_catalog.pg_logical_emit_message(true, '{OWN_PREFIX}',                       pg_catalog.json_build_object('horizon', x.s::text, 'wanted', $1::boolean)::text)::text                FROM (SELECT pg_catalog.pg_current_snapshot() AS s) x"
        )
    }

    /// [`Own::emit_sql`], writing the message only when the stream needs it: `$1` (a desktop change
    /// waits for it), `$2` (the horizon is due: the desktop's was last moved a while ago), or the
    /// transaction changes phones' rows (the batch's lock found one: [`PHONE_ROWS_SETTING`]), whose
    /// update to a desktop row or delete the row filter sends the stream, which must skip them. A
    /// transaction that writes only desktop rows sends the stream nothing (PostgreSQL 15 leaves out
    /// a transaction the row filter empties): a message in each cost the single-row forward batches
    /// a walsender's decoding and a reverse worker's wake-up. Its second column is NULL when nothing
    /// was written.
    pub fn emit_when_sql() -> String {
        format!(
            "SELECT pg_catalog.pg_snapshot_xmax(x.s)::text::bigint, \
                    CASE WHEN $1::boolean OR $2::boolean \
                           OR pg_catalog.current_setting('{PHONE_ROWS_SETTING}', true) = 'on' \
                         THEN pg_catalog.pg_logical_emit_message(true, '{OWN_PREFIX}', \
                                pg_catalog.json_build_object('horizon', x.s::text, 'wanted', $1::boolean)::text)::text END \
               FROM (SELECT pg_catalog.pg_current_snapshot() AS s) x"
        )
    }
}

/// A transaction-local setting a forward batch's lock sets (`on`) when it locked a phone's row: the
/// batch may change or delete it, and says it is tandem's (see [`Own::emit_when_sql`]).
pub const PHONE_ROWS_SETTING: &str = "tandem.phone_rows";
/// The prefix of a reconcile's cut (a non-transactional message; its content is the cut's id).
pub const CUT_PREFIX: &str = "tandem.cut";

/// A claim: the row a phone took over (its update arrives next, as an insert) or deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub delete: bool,
    pub schema: String,
    pub table: String,
    /// The old row: each column's text (or null), by name.
    pub old: serde_json::Map<String, Json>,
}

impl Claim {
    /// Parses a claim message's content; `None` when it is not one of ours.
    pub fn parse(content: &[u8]) -> Option<Claim> {
        let v: Json = serde_json::from_slice(content).ok()?;
        let old = match (v.get("names"), v.get("old")?) {
            (Some(Json::Array(names)), Json::String(record)) => {
                let fields = parse_record(record)?;
                if fields.len() != names.len() {
                    return None;
                }
                names
                    .iter()
                    .zip(fields)
                    .map(|(name, field)| {
                        Some((
                            name.as_str()?.to_string(),
                            field.map_or(Json::Null, Json::String),
                        ))
                    })
                    .collect::<Option<_>>()?
            }
            // A claim written before tandem sent record text (still in the slot after an upgrade):
            // `to_jsonb` of the row, whose non-string values are kept as their JSON text.
            (_, Json::Object(old)) => old
                .iter()
                .map(|(name, value)| {
                    let text = match value {
                        Json::Null => Json::Null,
                        Json::String(s) => Json::String(s.clone()),
                        other => Json::String(other.to_string()),
                    };
                    (name.clone(), text)
                })
                .collect(),
            _ => return None,
        };
        Some(Claim {
            delete: v.get("op")?.as_str()? == "delete",
            schema: v.get("schema")?.as_str()?.to_string(),
            table: v.get("table")?.as_str()?.to_string(),
            old,
        })
    }
}

/// The fields of a record's text as `record_out` writes it: `None` for NULL (an empty unquoted field),
/// quoted fields unquoted (`""` is `"`, a backslash escapes the next character). `None` when the text
/// is not a record.
pub fn parse_record(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    let mut fields = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        let mut field = String::new();
        let mut quoted_any = false;
        let mut in_quotes = false;
        loop {
            match chars.next() {
                None if in_quotes => return None,
                None => {
                    fields.push((quoted_any || !field.is_empty()).then_some(field));
                    return Some(fields);
                }
                Some('\\') => field.push(chars.next()?),
                Some('"') if !in_quotes => {
                    in_quotes = true;
                    quoted_any = true;
                }
                Some('"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                Some('"') => in_quotes = false,
                Some(',') if !in_quotes => break,
                Some(c) => field.push(c),
            }
        }
        fields.push((quoted_any || !field.is_empty()).then_some(field));
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
        #[cfg(unix)]
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
        // The slot hears of what was applied within 100 ms: `run --once` waits for its last position to
        // be told before it stops (at 500 ms that wait was most of an idle `run --once`).
        .with_status_interval(std::time::Duration::from_millis(100))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_text_parses_into_exact_fields() {
        assert_eq!(
            parse_record("(1,,\"\",\"a \"\"b\"\"\",\"x\\\\y\",\"(1,2)\")").unwrap(),
            vec![
                Some("1".into()),
                None,
                Some(String::new()),
                Some("a \"b\"".into()),
                Some("x\\y".into()),
                Some("(1,2)".into()),
            ]
        );
        assert_eq!(parse_record("()").unwrap(), vec![None]);
        assert_eq!(parse_record("(\"\")").unwrap(), vec![Some(String::new())]);
        assert!(parse_record("1,2").is_none());
        assert!(parse_record("(\"open)").is_none());
    }

    #[test]
    fn own_messages_carry_a_horizon_or_none() {
        let own = Own::parse(br#"{"horizon": "10:12:10", "wanted": true}"#);
        assert_eq!(own.horizon.unwrap().xmax(), 12);
        assert!(own.wanted);
        // Older versions wrote plain text: no horizon.
        assert_eq!(
            Own::parse(b"conflicts resolve"),
            Own {
                horizon: None,
                wanted: false
            }
        );
        assert!(Own::emit_sql().contains("pg_current_snapshot()"));
    }

    #[test]
    fn claims_carry_each_columns_text_by_name() {
        let claim = Claim::parse(
            br#"{"op": "update", "schema": "public", "table": "t", "names": ["id", "doc", "n"], "old": "(1,\"{\"\"a\"\" :  1}\",)"}"#,
        )
        .unwrap();
        assert!(!claim.delete);
        assert_eq!(claim.old["id"], Json::String("1".into()));
        assert_eq!(claim.old["doc"], Json::String("{\"a\" :  1}".into()));
        assert_eq!(claim.old["n"], Json::Null);
        // Names and fields that do not pair up are not a claim.
        assert!(
            Claim::parse(
                br#"{"op": "update", "schema": "s", "table": "t", "names": ["a"], "old": "(1,2)"}"#
            )
            .is_none()
        );
    }
}
