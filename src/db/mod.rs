//! Connections to the two databases, and the one place database errors are classified.
//!
//! A connection string is a libpq URL (or keyword/value string). tokio-postgres understands most of
//! it; the TLS settings it does not (`sslmode=verify-ca|verify-full`, `sslrootcert`) are taken out and
//! handled here with rustls. Passwords come from the URL, `PGPASSWORD` or the libpq password file, and
//! never appear in a message: errors carry the redacted URL.

mod tls;
mod url;

use futures_util::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use tokio::sync::mpsc;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, Statement};

use crate::change::Side;
use crate::config::{ConnUrl, redact_url};

pub use url::{ConnectTarget, RootCerts, SslMode};

/// The session setting tandem's own sessions set to `on`: the desktop capture trigger skips their writes
/// (nothing echoes back) and the cloud ownership trigger leaves their `source` as written.
pub const APPLYING_SETTING: &str = "tandem.applying";

/// The advisory locks of tandem's appliers, `(class, object)`, on the desktop. One class of tandem's own
/// (`'tand'` in ASCII), so an application's advisory locks cannot meet them.
pub const LOCK_CLASS: i32 = 0x7461_6e64;
/// Held by the forward applier (a run's forward worker) for its whole session: one at a time, so two
/// appliers never read the same keys at different moments and commit them in the other order. A
/// reconcile that finds it taken hands its keys to that applier through the outbox.
pub const FORWARD_LOCK: i32 = 1;
/// Taken by every desktop transaction that applies mobile rows (the reverse worker's groups, a
/// reconcile's repairs), until it commits: each compares the desktop's rows with what it brings under
/// the lock, so the two never interleave.
pub const REVERSE_LOCK: i32 = 2;

/// Drops the session's temporary (staging) tables now, best effort. A closing connection's backend
/// drops them after the client has gone, writing catalog WAL at a moment nobody waits for: on the
/// cloud, after `run --once`'s final marker, where the slot would hold it as lag.
pub async fn drop_temp_tables(client: &Client) {
    if let Err(e) = client.batch_execute("DISCARD TEMP").await {
        tracing::debug!(error = %e, "dropping the session's staging tables (its end drops them anyway)");
    }
}

/// Takes tandem's session-level advisory lock `object` (see [`LOCK_CLASS`]) if it is free; it is held
/// until the session ends.
pub async fn try_lock(client: &Client, side: Side, object: i32) -> Result<bool, DbError> {
    Ok(client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&LOCK_CLASS, &object],
        )
        .await
        .ctx(side, "taking tandem's applier lock")?
        .get(0))
}

/// The settings every tandem session runs with, so a value's text is the same in every session of
/// either side: it is what tandem compares and hashes values by (see `commit::sql`). Dates and times
/// in ISO style at UTC, intervals in the `postgres` style, floats in their shortest exact form, bytea
/// in hex, money in the C locale (its text depends on `lc_monetary`), XML parsed as content. Set in
/// the startup packet: no round trip. (A user trigger that formats times runs with them too.)
///
/// And JIT off: tandem's statements read staging tables without statistics, so the planner's cost
/// estimates run far past `jit_above_cost` on batches it then runs in milliseconds. Measured
/// 2026-12-07 (1M-row initial sync, PostgreSQL 15): compiling one conflict-finding statement took
/// 5.0 s of its 5.4 s. `jit` exists from PostgreSQL 11 on, tandem's oldest supported desktop.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO,MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
    ("xmloption", "content"),
    ("jit", "off"),
];

/// The `application_name` of tandem's sessions (unless the URL sets one).
pub const APPLICATION_NAME: &str = "tandem";

/// [`SESSION_SETTINGS`] as a startup `options` string (`-c name=value ...`).
pub fn session_options() -> String {
    SESSION_SETTINGS
        .iter()
        .map(|(name, value)| format!("-c {name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What to do about an error: decided once, here, for every caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection or the server had a passing problem: retry with backoff.
    Transient,
    /// The data was refused (constraint, type, length): set the row aside as a dead letter.
    BadRow,
    /// A statement does not fit the schema any more (a table, column or type missing or changed, a
    /// privilege taken away): the table it concerns is parked until its schema fits again.
    Schema,
    /// Retrying cannot help (bad config, a lost slot): stop and say why.
    Fatal,
}

/// Classifies an SQLSTATE (or its absence: an I/O error or a closed connection is transient).
pub fn classify(code: Option<&SqlState>) -> ErrorKind {
    let Some(code) = code else {
        return ErrorKind::Transient;
    };
    let c = code.code();
    match c {
        // serialization_failure, deadlock_detected, admin/crash shutdown, cannot_connect_now,
        // lock_not_available, query_canceled (statement_timeout under load).
        "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "55P03" | "57014" => ErrorKind::Transient,
        _ if c.starts_with("08") || c.starts_with("53") || c.starts_with("58") => {
            ErrorKind::Transient
        }
        // Data refused: a data exception, a constraint, or a user trigger raising an error.
        _ if c.starts_with("22") || c.starts_with("23") || c == "P0001" => ErrorKind::BadRow,
        // Undefined or changed objects, privileges, a cached plan whose table changed shape.
        _ if c.starts_with("42") || c == "0A000" || c == "3F000" => ErrorKind::Schema,
        _ => ErrorKind::Fatal,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{side}: bad connection string {url}: {message}")]
    BadUrl {
        side: Side,
        url: String,
        message: String,
    },
    #[error("{side}: TLS for {url}: {message}")]
    Tls {
        side: Side,
        url: String,
        message: String,
    },
    #[error(
        "{side}: cannot connect to {url}: {}{}",
        describe(source),
        connect_hint(source)
    )]
    Connect {
        side: Side,
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{side}: {context}: {}", describe(source))]
    Query {
        side: Side,
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Data from the server tandem could not read (a COPY stream cut or malformed).
    #[error("{side}: {message}")]
    Protocol { side: Side, message: String },
}

impl DbError {
    /// The SQLSTATE, when the server sent one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            DbError::Connect { source, .. } | DbError::Query { source, .. } => source.code(),
            _ => None,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            DbError::BadUrl { .. } | DbError::Tls { .. } => ErrorKind::Fatal,
            DbError::Connect { source, .. } => match source.code() {
                // Authentication and unknown database do not fix themselves.
                Some(code)
                    if code.code().starts_with("28") || code == &SqlState::INVALID_CATALOG_NAME =>
                {
                    ErrorKind::Fatal
                }
                // Neither does a server certificate that fails verification.
                None if is_certificate_error(&describe(source)) => ErrorKind::Fatal,
                code => classify(code),
            },
            DbError::Query { source, .. } => classify(source.code()),
            DbError::Protocol { .. } => ErrorKind::Transient,
        }
    }

    pub fn side(&self) -> Side {
        match self {
            DbError::BadUrl { side, .. }
            | DbError::Tls { side, .. }
            | DbError::Connect { side, .. }
            | DbError::Query { side, .. }
            | DbError::Protocol { side, .. } => *side,
        }
    }
}

/// The server's message with its detail and hint, or the client error's own text.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                s.push_str(&format!("; detail: {detail}"));
            }
            if let Some(hint) = db.hint() {
                s.push_str(&format!("; hint: {hint}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                s.push_str(&format!(": {c}"));
                cause = c.source();
            }
            s
        }
    }
}

/// Whether an error without SQLSTATE is a TLS certificate verification failure (configuration, not
/// an outage: retrying cannot help).
pub fn is_certificate_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("certificate") || m.contains("unknownissuer") || m.contains("notvalidforname")
}

fn connect_hint(e: &tokio_postgres::Error) -> &'static str {
    if e.code().is_none() && is_certificate_error(&describe(e)) {
        return "; the server's certificate failed verification: check sslrootcert (the CA that signed it) and that \
                the URL's host is a name the certificate holds (sslmode=verify-ca does not check the name)";
    }
    match e.code() {
        Some(code) if code.code().starts_with("28") => {
            "; fix the user or password (URL, PGPASSWORD or the password file ~/.pgpass)"
        }
        Some(code) if code == &SqlState::INVALID_CATALOG_NAME => {
            "; fix the database name in the URL"
        }
        Some(_) => "",
        None => "; is the server running and the host and port in the URL right?",
    }
}

/// The prepared statements of one connection, by SQL text: each statement of the data path is parsed
/// once per session and then costs one round trip per execution.
#[derive(Debug)]
pub struct StatementCache {
    side: Side,
    statements: HashMap<String, Statement>,
}

impl StatementCache {
    pub fn new(side: Side) -> Self {
        StatementCache {
            side,
            statements: HashMap::new(),
        }
    }

    pub async fn get(
        &mut self,
        client: &impl GenericClient,
        sql: &str,
    ) -> Result<Statement, DbError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client
            .prepare(sql)
            .await
            .ctx(self.side, format!("preparing {}", first_line(sql)))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

/// The first line of `sql`, at most 120 characters (names may be any UTF-8).
fn first_line(sql: &str) -> &str {
    let line = sql.lines().next().unwrap_or(sql);
    match line.char_indices().nth(120) {
        Some((end, _)) => &line[..end],
        None => line,
    }
}

/// Runs `futures` as one pipeline: each is polled once, in order — which makes tokio-postgres send its
/// request — and then all are awaited, in order. The server executes the requests in the order sent, so
/// a sequence of statements costs one round trip instead of one each. (`join!` rotates which future it
/// polls first, and `join_all` stops keeping order above 30 futures: neither fits.)
pub async fn pipelined<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = Vec::with_capacity(futures.len());
    for future in &mut futures {
        let first = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
        outputs.push(match first {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        });
    }
    for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
        if output.is_none() {
            *output = Some(future.await);
        }
    }
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

/// Adds which side and what was being done to a query error.
pub trait Context<T> {
    fn ctx(self, side: Side, context: impl Into<String>) -> Result<T, DbError>;
}

impl<T> Context<T> for Result<T, tokio_postgres::Error> {
    fn ctx(self, side: Side, context: impl Into<String>) -> Result<T, DbError> {
        self.map_err(|source| DbError::Query {
            side,
            context: context.into(),
            source,
        })
    }
}

/// Opens a connection; its driver task runs in the background until the client is dropped.
pub async fn connect(side: Side, url: &ConnUrl) -> Result<Client, DbError> {
    connect_with(side, url, None).await
}

/// A notification received on a connection made by [`connect_listener`].
pub type Notifications = mpsc::UnboundedReceiver<tokio_postgres::Notification>;

/// Opens a connection whose NOTIFY messages arrive on the returned channel; the channel closes when the
/// connection is lost.
pub async fn connect_listener(
    side: Side,
    url: &ConnUrl,
) -> Result<(Client, Notifications), DbError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = connect_with(side, url, Some(tx)).await?;
    Ok((client, rx))
}

async fn connect_with(
    side: Side,
    url: &ConnUrl,
    notify: Option<mpsc::UnboundedSender<tokio_postgres::Notification>>,
) -> Result<Client, DbError> {
    let target = ConnectTarget::parse(url.expose()).map_err(|message| DbError::BadUrl {
        side,
        url: url.redacted(),
        message,
    })?;
    let mut target = target;
    let options = match target.config.get_options() {
        Some(own) if !own.is_empty() => format!("{own} {}", session_options()),
        _ => session_options(),
    };
    target.config.options(&options);
    // tandem's sessions say so in pg_stat_activity (`check` tells them from others of the same role).
    if target.config.get_application_name().is_none() {
        target.config.application_name(APPLICATION_NAME);
    }
    connect_target(side, &target, url.expose(), notify).await
}

async fn connect_target(
    side: Side,
    target: &ConnectTarget,
    raw: &str,
    notify: Option<mpsc::UnboundedSender<tokio_postgres::Notification>>,
) -> Result<Client, DbError> {
    let redacted = redact_url(raw);
    let connect_err = |source| DbError::Connect {
        side,
        url: redacted.clone(),
        source,
    };
    if target.ssl_mode == SslMode::Disable {
        let (client, connection) = target
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(connect_err)?;
        spawn_driver(side, connection, notify);
        return Ok(client);
    }
    let tls = tls::make_connector(target).map_err(|message| DbError::Tls {
        side,
        url: redacted.clone(),
        message,
    })?;
    let (client, connection) = target.config.connect(tls).await.map_err(connect_err)?;
    spawn_driver(side, connection, notify);
    Ok(client)
}

fn spawn_driver<S, T>(
    side: Side,
    mut connection: tokio_postgres::Connection<S, T>,
    notify: Option<mpsc::UnboundedSender<tokio_postgres::Notification>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if let Some(tx) = &notify {
                        let _ = tx.send(n);
                    }
                }
                Ok(tokio_postgres::AsyncMessage::Notice(notice)) => {
                    tracing::debug!(%side, notice = %notice.message(), "server notice");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%side, error = %describe(&e), "connection closed");
                    break;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_shortened_on_character_boundaries() {
        let sql = format!("{}日付 VALUES (1)\nmore", "x".repeat(119));
        let short = first_line(&sql);
        assert_eq!(short.chars().count(), 120);
        assert!(short.ends_with('日'), "{short}");
        assert_eq!(first_line("SELECT 1\nFROM t"), "SELECT 1");
    }

    #[test]
    fn sqlstates_are_classified_once() {
        let kind = |code: &str| classify(Some(&SqlState::from_code(code)));
        assert_eq!(classify(None), ErrorKind::Transient);
        assert_eq!(kind("40001"), ErrorKind::Transient);
        assert_eq!(kind("40P01"), ErrorKind::Transient);
        assert_eq!(kind("57P01"), ErrorKind::Transient);
        assert_eq!(kind("08006"), ErrorKind::Transient);
        assert_eq!(kind("53300"), ErrorKind::Transient);
        assert_eq!(kind("23503"), ErrorKind::BadRow);
        assert_eq!(kind("23502"), ErrorKind::BadRow);
        assert_eq!(kind("22001"), ErrorKind::BadRow);
        assert_eq!(kind("23514"), ErrorKind::BadRow);
        assert_eq!(kind("42P01"), ErrorKind::Schema);
        assert_eq!(kind("42703"), ErrorKind::Schema);
        assert_eq!(kind("42501"), ErrorKind::Schema);
        assert_eq!(kind("55000"), ErrorKind::Fatal);
    }
}
