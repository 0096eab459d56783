//! `tandem conflicts`: the changes tandem did not apply because the other side owns the row or both
//! sides changed it, listed from both sides, and resolved by an operator's choice.
//!
//! A conflict is resolved through the same engine that refused it, for the side chosen as it is now:
//! - `--keep desktop`: the cloud row becomes desktop-owned (`source = 'D'`, in a transaction the
//!   reverse stream skips); the forward reconcile of the table then writes the desktop's row over it,
//!   or deletes it when the desktop no longer has the row (a desktop delete the phone's edit blocked).
//! - `--keep mobile`: the phone's row is applied to the desktop for that key alone, through the
//!   reverse plan as a reconcile's repair (under the reverse stream's lock): over the desktop's row, as
//!   a new row, or, when the phone deleted it, as the desktop row's delete (first removing the copy a
//!   desktop edit put back in the cloud).
//!
//! Each conflict is then marked resolved with the side kept and who chose (the operating system user).
//! A cloud-key table's conflict names the phone's row by its cloud key: see [`scoped`].

use std::fmt;

use serde::Serialize;
use tokio_postgres::Client;

use crate::change::Side;
use crate::config::Config;
use crate::db::{self, Context, DbError};
use crate::expr::{q, same_key};
use crate::ops::reconcile::{self, Direction, Request};
use crate::pipeline::Tables;
use crate::transform::Kind;

mod keyed;
mod scoped;
mod show;
use scoped::apply;

/// What choosing for one conflict came to: its row (the key's texts, or the cloud key) and what was
/// done, or why nothing was.
type Choice = Result<(Vec<String>, String), String>;

/// What a choice is made with.
struct Choosing<'a> {
    config: &'a Config,
    mapping: &'a crate::transform::Mapping,
    cloud: &'a Client,
    desktop: &'a Client,
    keep: Keep,
    /// Rows already chosen for in this call: a row's forward and reverse conflicts are one choice.
    chosen: &'a [(usize, Vec<String>)],
}

pub use crate::commit::resolve::Chosen as Keep;

/// One conflict. Its id is the side it is recorded on and its number there: `f12` (forward, in the
/// cloud's `tandem.conflicts`), `r7` (reverse, in the desktop's).
///
/// A conflict by concurrency (a desktop change and a phone change of one row, neither made seeing the
/// other) has `kind` and the fields after it; a record of the older shape has them null and only
/// `incoming`, `current` and `reason`. Versions are objects of each column's exact text.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    pub id: String,
    pub direction: String,
    pub table: String,
    pub detected_at: String,
    pub row_key: Option<serde_json::Value>,
    pub incoming: Option<serde_json::Value>,
    pub current: Option<serde_json::Value>,
    pub reason: String,
    pub resolved_at: Option<String>,
    pub resolution: Option<String>,
    pub resolved_by: Option<String>,
    /// `update/update`, `update/delete`, `delete/update` or `insert/insert`: the desktop's change,
    /// then the phone's.
    pub kind: Option<String>,
    /// The version both sides last agreed on (null: unknown, or none for `insert/insert`).
    pub base: Option<serde_json::Value>,
    /// Each side's version (null: that side deleted the row).
    pub desktop_row: Option<serde_json::Value>,
    pub mobile_row: Option<serde_json::Value>,
    /// The columns both sides changed (every differing column for `insert/insert`).
    pub columns: Option<Vec<String>>,
    /// The desktop transaction's time (its capture), and the phone's commit in the cloud.
    pub desktop_at: Option<String>,
    pub mobile_at: Option<String>,
    /// The phone's transaction in the cloud: its commit LSN and xid; and the desktop's xid.
    pub cloud_lsn: Option<String>,
    pub cloud_xid: Option<i64>,
    pub desktop_xid: Option<i64>,
    /// The table's policy when it was recorded.
    pub policy: Option<String>,
    /// What both sides were given: `desktop`, `mobile` or `merged` (null while a person must decide).
    pub outcome: Option<String>,
    /// That row (null: deleted, or not decided yet).
    pub result: Option<serde_json::Value>,
}

/// A time as UTC RFC 3339, to the second.
const SECONDS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";
/// A time as UTC RFC 3339, to the microsecond: the two sides' times of a conflict, which `latest`
/// compares.
const MICROSECONDS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";

fn list_sql() -> String {
    let utc =
        |column: &str, format: &str| format!("to_char({column} AT TIME ZONE 'UTC', {format})");
    format!(
        "SELECT id, direction, table_name, {}, row_key, incoming, current, reason, {}, resolution,
                resolved_by, kind, base, desktop_row, mobile_row, columns, {}, {}, cloud_lsn::text,
                cloud_xid, desktop_xid, policy, outcome, result
           FROM tandem.conflicts WHERE $1 OR resolved_at IS NULL ORDER BY detected_at, id",
        utc("detected_at", SECONDS),
        utc("resolved_at", SECONDS),
        utc("desktop_at", MICROSECONDS),
        utc("mobile_at", MICROSECONDS),
    )
}

async fn read(client: &Client, side: Side, all: bool) -> Result<Vec<Conflict>, DbError> {
    let prefix = if side == Side::Cloud { "f" } else { "r" };
    let rows = client
        .query(&list_sql(), &[&all])
        .await
        .ctx(side, "reading tandem.conflicts")?;
    Ok(rows
        .iter()
        .map(|r| Conflict {
            id: format!("{prefix}{}", r.get::<_, i64>(0)),
            direction: r.get(1),
            table: r.get(2),
            detected_at: r.get(3),
            row_key: r.get(4),
            incoming: r.get(5),
            current: r.get(6),
            reason: r.get(7),
            resolved_at: r.get(8),
            resolution: r.get(9),
            resolved_by: r.get(10),
            kind: r.get(11),
            base: r.get(12),
            desktop_row: r.get(13),
            mobile_row: r.get(14),
            columns: r.get(15),
            desktop_at: r.get(16),
            mobile_at: r.get(17),
            cloud_lsn: r.get(18),
            cloud_xid: r.get(19),
            desktop_xid: r.get(20),
            policy: r.get(21),
            outcome: r.get(22),
            result: r.get(23),
        })
        .collect())
}

/// The open conflicts of both sides (with `all`, the settled ones too), oldest first.
pub async fn list(config: &Config, all: bool) -> Result<Vec<Conflict>, DbError> {
    let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let cloud = db::connect(Side::Cloud, &config.cloud.url).await?;
    let mut out = read(&cloud, Side::Cloud, all).await?;
    out.extend(read(&desktop, Side::Desktop, all).await?);
    out.sort_by(|a, b| a.detected_at.cmp(&b.detected_at));
    Ok(out)
}

/// What resolving one conflict did.
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    pub id: String,
    pub resolved: bool,
    /// What was applied, or why nothing was.
    pub message: String,
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = if self.resolved {
            "resolved"
        } else {
            "NOT resolved"
        };
        write!(f, "{} {tag}: {}", self.id, self.message)
    }
}

fn chooser() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown user".into());
    format!("{user} (tandem conflicts resolve)")
}

/// Resolves conflicts `ids` (as [`list`] names them) keeping `keep`'s row.
pub async fn resolve(config: &Config, ids: &[String], keep: Keep) -> anyhow::Result<Vec<Resolved>> {
    let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let cloud = db::connect(Side::Cloud, &config.cloud.url).await?;
    // tandem's session: the ownership trigger leaves `source` as written.
    cloud
        .batch_execute(&format!("SET {} = on", db::APPLYING_SETTING))
        .await
        .ctx(Side::Cloud, "marking the session as tandem's")?;
    let tables = Tables::start(config).await?;
    let snapshot = tables.snapshot();
    let mapping = &snapshot.mapping;
    let open: Vec<Conflict> = [
        read(&cloud, Side::Cloud, true).await?,
        read(&desktop, Side::Desktop, true).await?,
    ]
    .concat();
    let mut out = Vec::new();
    let mut reconcile_tables: Vec<String> = Vec::new();
    // Keys already chosen for in this call: a row's forward and reverse conflicts are one choice.
    let mut chosen: Vec<(usize, Vec<String>)> = Vec::new();
    for id in ids {
        let no = |message: String| Resolved {
            id: id.clone(),
            resolved: false,
            message,
        };
        let Some(c) = open.iter().find(|c| &c.id == id) else {
            out.push(no(
                "no such conflict (ids look like f12 or r7: see `tandem conflicts list`)".into(),
            ));
            continue;
        };
        // A conflict by concurrency (recorded with both versions): the chosen version is written on
        // the desktop and travels from there, whether the conflict is open or a policy settled it.
        let recorded = match c.id.strip_prefix('r').and_then(|n| n.parse().ok()) {
            Some(number) => crate::commit::resolve::recorded(&desktop, number).await?,
            None => None,
        };
        if let Some(r) = recorded {
            let Some(t) = mapping
                .tables
                .iter()
                .find(|t| t.table.desktop.to_string() == c.table)
            else {
                out.push(no(format!("table {} is not configured any more", c.table)));
                continue;
            };
            out.push(
                match crate::commit::resolve::choose(&desktop, t, &r, keep, &chooser()).await? {
                    Ok(message) => Resolved {
                        id: id.clone(),
                        resolved: true,
                        message,
                    },
                    Err(why) => no(why),
                },
            );
            continue;
        }
        if c.resolved_at.is_some() {
            out.push(no(format!(
                "already resolved, kept {}",
                c.resolution.as_deref().unwrap_or("?")
            )));
            continue;
        }
        let Some(i) = mapping.tables.iter().position(|t| {
            t.table.desktop.to_string() == c.table || t.table.cloud.to_string() == c.table
        }) else {
            out.push(no(format!("table {} is not configured any more", c.table)));
            continue;
        };
        let ch = Choosing {
            config,
            mapping,
            cloud: &cloud,
            desktop: &desktop,
            keep,
            chosen: &chosen,
        };
        let choice = match &mapping.tables[i].kind {
            Kind::Key(key) => keyed::choose(&ch, c, i, key).await?,
            Kind::Scoped {
                cloud_key,
                cloud_key_type,
                ..
            } => scoped::choose(&ch, c, i, cloud_key, cloud_key_type).await?,
        };
        let (row, message) = match choice {
            Ok(done) => done,
            Err(why) => {
                out.push(no(why));
                continue;
            }
        };
        chosen.push((i, row));
        // Keeping the desktop's side: the forward reconcile of the table applies it (the phone's side
        // was applied above, for its row alone).
        if keep == Keep::Desktop {
            queue(
                &mut reconcile_tables,
                mapping.tables[i].table.desktop.to_string(),
            );
        }
        mark_resolved(&cloud, &desktop, c, keep).await?;
        out.push(Resolved {
            id: id.clone(),
            resolved: true,
            message,
        });
    }
    if !reconcile_tables.is_empty() {
        let request = Request {
            tables: reconcile_tables,
            direction: Direction::Forward,
            dry_run: false,
            trigger: "conflict",
        };
        let report = reconcile::reconcile(config, &request, &crate::pipeline::sync::Quiet).await?;
        if let Some(s) = report.skipped.first() {
            anyhow::bail!(
                "the choice is recorded, but applying it failed for {}: {}; run `tandem reconcile --table {}` once that is fixed",
                s.table,
                s.reason,
                s.table
            );
        }
    }
    Ok(out)
}

/// How a cloud-key table's conflict names its row (`row_key`).
const CLOUD_KEY: &str = "cloud_key";

fn kept(keep: Keep) -> &'static str {
    keep.as_str()
}

fn queue(tables: &mut Vec<String>, table: String) {
    if !tables.contains(&table) {
        tables.push(table);
    }
}

/// Records on conflict `c`'s side that it was resolved keeping `keep`, and who chose.
async fn mark_resolved(
    cloud: &Client,
    desktop: &Client,
    c: &Conflict,
    keep: Keep,
) -> Result<(), DbError> {
    let (client, side) = if c.id.starts_with('f') {
        (cloud, Side::Cloud)
    } else {
        (desktop, Side::Desktop)
    };
    let number: i64 = c.id[1..].parse().unwrap_or_default();
    client
        .execute(
            "UPDATE tandem.conflicts SET resolved_at = now(), resolution = $2, resolved_by = $3 WHERE id = $1",
            &[&number, &kept(keep), &chooser()],
        )
        .await
        .ctx(side, "marking the conflict resolved")?;
    Ok(())
}

/// See [`crate::commit::resolve::own_cloud_update`].
async fn own_update(
    cloud: &Client,
    update: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
) -> Result<u64, DbError> {
    crate::commit::resolve::own_cloud_update(cloud, update, params, what)
        .await
        .map_err(|e| e.source)
}

/// `alias`'s key columns equal to the parameters `$1..`, by each type's btree equality (or text).
fn key_match<'a>(
    alias: &str,
    columns: impl Iterator<Item = (&'a str, &'a crate::catalog::ValueType)>,
) -> Vec<String> {
    columns
        .enumerate()
        .map(|(n, (name, t))| {
            same_key(
                &format!("{alias}.{}", q(name)),
                &format!("CAST(${}::text AS {})", n + 1, t.base),
                t,
            )
        })
        .collect()
}

/// The key's values as text, in key order, from a conflict's `row_key` object.
fn key_texts<'a>(
    row_key: Option<&serde_json::Value>,
    names: impl Iterator<Item = &'a str>,
) -> Option<Vec<String>> {
    let object = row_key?.as_object()?;
    names
        .map(|n| match object.get(n)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_texts_come_in_key_order_and_all_or_none() {
        let key = serde_json::json!({"b": "x y", "a": 7});
        assert_eq!(
            super::key_texts(Some(&key), ["a", "b"].into_iter()),
            Some(vec!["7".to_string(), "x y".to_string()])
        );
        assert_eq!(super::key_texts(Some(&key), ["a", "c"].into_iter()), None);
        assert_eq!(super::key_texts(None, ["a"].into_iter()), None);
    }
}
