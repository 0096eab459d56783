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

use crate::capture::scan::Key;
use crate::change::Side;
use crate::commit::reconcile::Repair;
use crate::config::Config;
use crate::db::{self, Context, DbError};
use crate::expr::{output_text, q, same_key};
use crate::ops::reconcile::{self, Direction, Request};
use crate::pipeline::Tables;
use crate::transform::Kind;

mod scoped;
use scoped::{ScopedRow, apply};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    Desktop,
    Mobile,
}

/// One conflict. Its id is the side it is recorded on and its number there: `f12` (forward, in the
/// cloud's `tandem.conflicts`), `r7` (reverse, in the desktop's).
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
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self
            .row_key
            .as_ref()
            .map(|k| k.to_string())
            .unwrap_or_default();
        write!(
            f,
            "{} {} {} {key}: {} (detected {}",
            self.id, self.direction, self.table, self.reason, self.detected_at
        )?;
        match (&self.resolved_at, &self.resolution) {
            (Some(at), Some(kept)) => write!(
                f,
                "; resolved {at}, kept {kept}, by {})",
                self.resolved_by.as_deref().unwrap_or("?")
            ),
            _ => write!(f, "; open)"),
        }?;
        if self.resolved_at.is_none() {
            let incoming = self
                .incoming
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default();
            let current = self
                .current
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default();
            write!(f, "\n    incoming: {incoming}\n    current:  {current}")?;
        }
        Ok(())
    }
}

const LIST_SQL: &str = "SELECT id, direction, table_name,
        to_char(detected_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
        row_key, incoming, current, reason,
        to_char(resolved_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), resolution, resolved_by
   FROM tandem.conflicts WHERE $1 OR resolved_at IS NULL ORDER BY detected_at, id";

async fn read(client: &Client, side: Side, all: bool) -> Result<Vec<Conflict>, DbError> {
    let prefix = if side == Side::Cloud { "f" } else { "r" };
    let rows = client
        .query(LIST_SQL, &[&all])
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
        })
        .collect())
}

/// The open conflicts of both sides (with `all`, the resolved ones too), oldest first.
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
        let t = &mapping.tables[i];
        let key = match &t.kind {
            Kind::Key(key) => key,
            Kind::Scoped {
                cloud_key,
                cloud_key_type,
                ..
            } => {
                let Some(ck) = key_texts(c.row_key.as_ref(), [CLOUD_KEY].into_iter()) else {
                    out.push(no("its row key names no cloud key".into()));
                    continue;
                };
                let ck = ck.into_iter().next().expect("one name, one value");
                let message = if chosen.contains(&(i, vec![ck.clone()])) {
                    Some(format!(
                        "kept the {} row of {} {ck} (with another conflict of it)",
                        kept(keep),
                        c.table
                    ))
                } else {
                    let row = ScopedRow {
                        t,
                        i,
                        mapping,
                        cloud_key,
                        cloud_key_type,
                        value: &ck,
                    };
                    match keep {
                        Keep::Desktop => row.make_desktop_owned(&cloud).await?,
                        Keep::Mobile => row.bring(config, &cloud).await?,
                    }
                };
                let phone_deleted = c.incoming.as_ref().is_none_or(serde_json::Value::is_null);
                if message.is_none() && keep == Keep::Mobile && phone_deleted {
                    out.push(no(format!(
                        "the phone deleted its row {cloud_key} {ck}, and which desktop row of {} was its copy cannot be told (a cloud-key table's rows have no key): delete it on the desktop by hand (the phone had {}), then `tandem conflicts resolve {id} --keep desktop` closes this",
                        t.table.desktop,
                        c.current.as_ref().map(|v| v.to_string()).unwrap_or_default()
                    )));
                    continue;
                }
                let Some(message) = message else {
                    out.push(no(format!(
                        "the cloud holds no mobile row of {} with {cloud_key} {ck} any more: nothing to choose between; `tandem reconcile --table {}` repairs what differs",
                        c.table, t.table.desktop
                    )));
                    continue;
                };
                chosen.push((i, vec![ck]));
                // Keeping the desktop's rows: the forward reconcile removes the phone's.
                let table = t.table.desktop.to_string();
                let done = Resolved {
                    id: id.clone(),
                    resolved: true,
                    message,
                };
                record(
                    &cloud,
                    &desktop,
                    c,
                    keep,
                    table,
                    done,
                    &mut reconcile_tables,
                    &mut out,
                )
                .await?;
                continue;
            }
        };
        let Some(values) = key_texts(c.row_key.as_ref(), key.iter().map(|k| k.name.as_str()))
        else {
            out.push(no("its row key does not name every key column".into()));
            continue;
        };
        let cloud_match = key_match("t", key.iter().map(|k| (k.name.as_str(), &k.cloud)));
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            values.iter().map(|v| v as _).collect();
        let again = chosen.contains(&(i, values.clone()));
        // A row of `alias` as an old image: each mapped column's text, as the stream writes images.
        let image = |alias: &str| {
            let pairs: Vec<(String, String)> = t
                .reverse_columns
                .iter()
                .map(|col| {
                    (
                        col.name.clone(),
                        output_text(&format!("{alias}.{}", q(&col.name))),
                    )
                })
                .collect();
            crate::expr::json_object(&pairs)
        };
        // The cloud's row now: mobile-owned, desktop-owned, or gone (a phone deleted it); with its key
        // as the cloud writes it (what the engine matches fetched rows by).
        let cloud_row = cloud
            .query_opt(
                &format!(
                    "SELECT coalesce(t.source::text = 'M', false), ({})::text, {} FROM {} t WHERE {}",
                    image("t"),
                    key.iter()
                        .map(|k| format!("(t.{})::text", q(&k.name)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    t.table.cloud.quoted(),
                    cloud_match.join(" AND ")
                ),
                &params,
            )
            .await
            .ctx(Side::Cloud, format!("reading the row of {}", t.table.cloud))?;
        let cloud_key = Key(match &cloud_row {
            Some(r) => (2..=key.len() + 1)
                .map(|n| r.get::<_, Option<String>>(n).map(|v| v.into_bytes().into()))
                .collect(),
            None => Vec::new(),
        });
        let cloud_image: Option<String> = cloud_row.as_ref().map(|r| r.get(1));
        let mut cloud_row: Option<bool> = cloud_row.map(|r| r.get(0));
        // The desktop's row as an old image (each column's text): what the engine must find on the
        // desktop to replace or delete it.
        let desktop_match = key_match("d", key.iter().map(|k| (k.name.as_str(), &k.desktop)));
        let old: Option<String> = desktop
            .query_opt(
                &format!(
                    "SELECT ({})::text FROM {} d WHERE {}",
                    image("d"),
                    t.table.desktop.quoted(),
                    desktop_match.join(" AND ")
                ),
                &params,
            )
            .await
            .ctx(
                Side::Desktop,
                format!("reading the row of {}", t.table.desktop),
            )?
            .map(|r| r.get(0));
        // The change the conflict refused was a delete (the phone's, for a reverse conflict).
        let refused_delete = c.incoming.as_ref().is_none_or(serde_json::Value::is_null);
        if keep == Keep::Mobile
            && !again
            && cloud_row == Some(false)
            && refused_delete
            && c.id.starts_with('r')
        {
            // A phone deleted the row and the desktop's edit put it back as desktop-owned: the phone's
            // side is the row gone, from the cloud first (in a transaction the stream skips).
            let what = format!("deleting the row of {} the phone deleted", t.table.cloud);
            let delete = format!(
                "DELETE FROM {} t WHERE source = 'D' AND {}",
                t.table.cloud.quoted(),
                cloud_match.join(" AND ")
            );
            own_update(&cloud, &delete, &params, &what).await?;
            cloud_row = None;
        }
        let changed = match keep {
            _ if again => 1,
            // The forward reconcile makes the cloud's row the desktop's (or removes it).
            Keep::Desktop if cloud_row != Some(true) => 1,
            Keep::Desktop => {
                // The desktop deleted the row, the phone's edit kept it, and the stream brought that
                // edit back to the desktop: the desktop's side is the row deleted, so the copy goes
                // first (only while it is the phone's row unchanged; a row the desktop made again is
                // the desktop's, kept).
                if c.id.starts_with('f') && refused_delete && old.is_some() && old == cloud_image {
                    let old = old.clone().expect("checked");
                    let remove = Repair::Remove {
                        cloud_key: None,
                        old,
                    };
                    apply(config, mapping, i, &cloud, remove).await?;
                }
                let what = format!("making the row of {} desktop-owned", t.table.cloud);
                let update = format!(
                    "UPDATE {} t SET source = 'D' WHERE source = 'M' AND {}",
                    t.table.cloud.quoted(),
                    cloud_match.join(" AND ")
                );
                own_update(&cloud, &update, &params, &what).await?
            }
            // Desktop-owned now, and the phone's version is not there any more to keep.
            Keep::Mobile if cloud_row == Some(false) => 0,
            Keep::Mobile => {
                // Only this key, through the reverse plan: the phone's row over the desktop's (or as
                // a new row), or the desktop's deleted as the phone deleted it.
                let repair = match (cloud_row, old) {
                    (Some(_), old) => Some(Repair::Bring {
                        key: cloud_key,
                        cloud_key: None,
                        old,
                    }),
                    (None, Some(old)) => Some(Repair::Remove {
                        cloud_key: None,
                        old,
                    }),
                    (None, None) => None,
                };
                match repair {
                    Some(repair) => u64::from(apply(config, mapping, i, &cloud, repair).await?),
                    // Gone on both sides: nothing differs.
                    None => 1,
                }
            }
        };
        if changed == 0 {
            out.push(no(format!(
                "the cloud holds no mobile row of {} under {:?} any more (or the desktop no row): nothing to choose between; `tandem reconcile --table {}` repairs what differs",
                c.table, values, t.table.desktop
            )));
            continue;
        }
        chosen.push((i, values.clone()));
        // Keeping the desktop's row: the forward reconcile writes it over the cloud's (or removes the
        // cloud's). The phone's was applied above, for its key alone.
        let done = Resolved {
            id: id.clone(),
            resolved: true,
            message: format!("kept the {} row of {} {:?}", kept(keep), c.table, values),
        };
        let table = t.table.desktop.to_string();
        record(
            &cloud,
            &desktop,
            c,
            keep,
            table,
            done,
            &mut reconcile_tables,
            &mut out,
        )
        .await?;
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
    match keep {
        Keep::Desktop => "desktop",
        Keep::Mobile => "mobile",
    }
}

fn queue(tables: &mut Vec<String>, table: String) {
    if !tables.contains(&table) {
        tables.push(table);
    }
}

/// Records conflict `c` resolved (`done` says how) and, keeping the desktop, queues the forward
/// reconcile of `table` that applies it.
#[allow(clippy::too_many_arguments)]
async fn record(
    cloud: &Client,
    desktop: &Client,
    c: &Conflict,
    keep: Keep,
    table: String,
    done: Resolved,
    reconcile_tables: &mut Vec<String>,
    out: &mut Vec<Resolved>,
) -> Result<(), DbError> {
    if keep == Keep::Desktop {
        queue(reconcile_tables, table);
    }
    mark_resolved(cloud, desktop, c, keep).await?;
    out.push(done);
    Ok(())
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

/// Runs `update` (a change of mobile rows' ownership) in a cloud transaction the reverse stream skips:
/// a row leaving `source = 'M'` is published as a DELETE, and the message first in the transaction
/// tells the stream it is tandem's own, not a phone's delete. Returns the rows changed.
async fn own_update(
    cloud: &Client,
    update: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
) -> Result<u64, DbError> {
    cloud
        .batch_execute(&format!(
            "BEGIN; SELECT pg_logical_emit_message(true, {}, 'conflicts resolve')",
            crate::expr::lit(crate::capture::logical::OWN_PREFIX)
        ))
        .await
        .ctx(Side::Cloud, what)?;
    let n = cloud.execute(update, params).await.ctx(Side::Cloud, what);
    let end = if n.is_ok() { "COMMIT" } else { "ROLLBACK" };
    cloud.batch_execute(end).await.ctx(Side::Cloud, what)?;
    n
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
