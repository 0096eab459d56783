//! `tandem dead-letters`: the rows a target refused, kept with the error, listed and retried.
//!
//! Forward dead letters live in the cloud's `tandem.dead_letters` (written in the same transaction as the
//! batch), reverse ones in the desktop's. Retrying a forward dead letter puts its key back into the
//! desktop outbox: the worker then applies the desktop's *current* row for it, and resolves the dead
//! letter when that succeeds (or records the new error on it). Retrying a reverse one re-saves the
//! cloud's row as it is, by tandem's session, values unchanged: its current version streams to the
//! desktop again, in order with every other change, and the worker applies it (as a new row where the
//! desktop does not hold it) and resolves the dead letter, or records the new error on it. Any later
//! version of a refused row (a phone's edit or delete) resolves its dead letter the same way.

use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Client;

use crate::capture::outbox::NOTIFY_CHANNEL;
use crate::change::Side;
use crate::commit::reverse::retry;
use crate::config::Config;
use crate::db::{self, APPLYING_SETTING, Context, DbError};
use crate::transform::Mapping;

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    /// The database holding it (the target that refused the row).
    pub stored_on: String,
    pub direction: String,
    pub table: String,
    pub row_key: Option<Value>,
    pub row_image: Option<Value>,
    pub sqlstate: String,
    pub message: String,
    pub batch: Option<String>,
    pub attempts: i32,
    pub failed_at: String,
    pub retried_at: Option<String>,
    pub resolved_at: Option<String>,
}

async fn read(
    client: &Client,
    side: Side,
    include_resolved: bool,
) -> Result<Vec<DeadLetter>, DbError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('tandem.dead_letters') IS NOT NULL", &[])
        .await
        .ctx(side, "looking for tandem.dead_letters")?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT id, direction, table_name, row_key, row_image, sqlstate, message, batch, attempts,
                    failed_at::text, retried_at::text, resolved_at::text
               FROM tandem.dead_letters WHERE $1 OR resolved_at IS NULL ORDER BY id",
            &[&include_resolved],
        )
        .await
        .ctx(side, "reading tandem.dead_letters")?;
    Ok(rows
        .into_iter()
        .map(|r| DeadLetter {
            id: r.get(0),
            stored_on: side.to_string(),
            direction: r.get(1),
            table: r.get(2),
            row_key: r.get(3),
            row_image: r.get(4),
            sqlstate: r.get(5),
            message: r.get(6),
            batch: r.get(7),
            attempts: r.get(8),
            failed_at: r.get(9),
            retried_at: r.get(10),
            resolved_at: r.get(11),
        })
        .collect())
}

/// Open dead letters of both sides (all of them with `include_resolved`), oldest first per side.
pub async fn list(config: &Config, include_resolved: bool) -> Result<Vec<DeadLetter>, DbError> {
    let cloud = db::connect(Side::Cloud, &config.cloud.url).await?;
    let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let mut all = read(&cloud, Side::Cloud, include_resolved).await?;
    all.extend(read(&desktop, Side::Desktop, include_resolved).await?);
    Ok(all)
}

fn key_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Puts the keys of open forward dead letters back into the desktop outbox. Returns how many.
pub async fn retry_forward(config: &Config) -> Result<usize, DbError> {
    let cloud = db::connect(Side::Cloud, &config.cloud.url).await?;
    let mut desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let open: Vec<DeadLetter> = read(&cloud, Side::Cloud, false)
        .await?
        .into_iter()
        .filter(|d| d.direction == "forward")
        .collect();
    let tx = desktop
        .transaction()
        .await
        .ctx(Side::Desktop, "beginning the retry")?;
    let mut retried = Vec::new();
    for dl in &open {
        let Some(table) = config
            .tables
            .iter()
            .find(|t| t.table.cloud.to_string() == dl.table)
        else {
            tracing::warn!(table = %dl.table, id = dl.id, "dead letter of a table no longer configured; left as is");
            continue;
        };
        let key: Vec<Option<String>> = table
            .identity
            .capture_columns()
            .iter()
            .map(|col| {
                dl.row_key
                    .as_ref()
                    .and_then(|k| k.get(col))
                    .and_then(key_text)
            })
            .collect();
        tx.execute(
            "INSERT INTO tandem.outbox (table_schema, table_name, op, row_key) VALUES ($1, $2, 'U', $3)",
            &[&table.table.desktop.schema, &table.table.desktop.name, &key],
        )
        .await
        .ctx(Side::Desktop, format!("queueing dead letter {} again", dl.id))?;
        retried.push(dl.id);
    }
    tx.execute("SELECT pg_notify($1, '')", &[&NOTIFY_CHANNEL])
        .await
        .ctx(Side::Desktop, "notifying the worker")?;
    tx.commit()
        .await
        .ctx(Side::Desktop, "committing the retry")?;
    cloud
        .execute(
            "UPDATE tandem.dead_letters SET retried_at = now() WHERE id = ANY($1)",
            &[&retried],
        )
        .await
        .ctx(Side::Cloud, "marking dead letters as retried")?;
    Ok(retried.len())
}

/// What retrying the open reverse dead letters did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReverseRetry {
    /// Rows re-saved in the cloud: `tandem run` brings them to the desktop.
    pub resent: usize,
    /// Dead letters left open: the cloud no longer holds their row as a mobile-owned row (it was
    /// deleted, or a desktop version replaced it), or their table is no longer configured.
    pub left: Vec<i64>,
}

/// Re-saves in the cloud the rows of the open reverse dead letters (see the module's documentation).
pub async fn retry_reverse(config: &Config) -> Result<ReverseRetry, DbError> {
    let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let cloud = db::connect(Side::Cloud, &config.cloud.url).await?;
    // tandem's session: the ownership trigger leaves the rows' `source` alone.
    cloud
        .execute("SELECT set_config($1, 'on', false)", &[&APPLYING_SETTING])
        .await
        .ctx(Side::Cloud, "marking the session as tandem's")?;
    let (mapping, _) = Mapping::load_lenient(config, &desktop, &cloud).await?;
    let mut report = ReverseRetry::default();
    let mut resent = Vec::new();
    let mut configured = Vec::new();
    for t in &mapping.tables {
        let name = t.table.desktop.to_string();
        let row = retry::CloudRow::new(t);
        for dl in retry::open(&desktop, &name, None).await? {
            let found = match &dl.row_key {
                Some(key) => row.resave(&cloud, key).await?,
                None => retry::Found::Gone,
            };
            if found == retry::Found::Resaved {
                resent.push(dl.id);
            } else {
                tracing::warn!(table = %name, id = dl.id, "the cloud no longer holds this row as mobile-owned; dead letter left open");
                report.left.push(dl.id);
            }
        }
        configured.push(name);
    }
    for dl in read(&desktop, Side::Desktop, false).await? {
        if dl.direction == "reverse" && !configured.contains(&dl.table) {
            tracing::warn!(table = %dl.table, id = dl.id, "dead letter of a table no longer configured; left as is");
            report.left.push(dl.id);
        }
    }
    report.left.sort_unstable();
    retry::mark(&desktop, &resent, false).await?;
    report.resent = resent.len();
    Ok(report)
}
