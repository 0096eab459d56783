//! Bringing a reverse dead letter's row to the desktop again: its cloud row is re-saved by tandem's
//! session, values unchanged, so its current version streams again, in order with every other change,
//! and applies (comparing with the old image the dead letter kept: what the desktop still holds).
//! A row the cloud no longer holds was deleted by a phone meanwhile: its delete is staged from the old
//! image. Used by `tandem dead-letters --retry`, and by the reverse worker when a parked table resumes.

use serde_json::Value as Json;
use tokio_postgres::Client;

use crate::change::Side;
use crate::config::owner;
use crate::db::{Context, DbError};
use crate::expr::{q, same_key};
use crate::transform::{Kind, TableMapping};

/// An open reverse dead letter.
#[derive(Debug, Clone)]
pub struct Open {
    pub id: i64,
    pub row_key: Option<Json>,
    /// What the desktop still holds (`Some(Json::Null)`: the row never reached it; `None`: unknown).
    pub old_image: Option<Json>,
}

/// What became of one dead letter's row in the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Re-saved: it streams again.
    Resaved,
    /// The cloud holds it as desktop-owned now: the desktop's version won, nothing to bring.
    DesktopOwned,
    /// The cloud does not hold it: a phone deleted it.
    Gone,
}

/// The open reverse dead letters of table `name` (all, or only a parked table's).
pub async fn open(
    desktop: &Client,
    name: &str,
    sqlstate: Option<&str>,
) -> Result<Vec<Open>, DbError> {
    let rows = desktop
        .query(
            "SELECT id, row_key, old_image FROM tandem.dead_letters
              WHERE direction = 'reverse' AND table_name = $1 AND resolved_at IS NULL
                AND ($2::text IS NULL OR sqlstate = $2) ORDER BY id",
            &[&name, &sqlstate],
        )
        .await
        .ctx(Side::Desktop, format!("reading the dead letters of {name}"))?;
    Ok(rows
        .iter()
        .map(|r| Open {
            id: r.get(0),
            row_key: r.get(1),
            old_image: r.get(2),
        })
        .collect())
}

/// The cloud columns identifying a dead letter's row (the desktop key, or the cloud key), with the
/// statements finding it by their texts (`$1`, `$2`, ...).
pub struct CloudRow {
    /// `row_key` fields, in parameter order.
    fields: Vec<String>,
    resave: String,
    owner: String,
}

impl CloudRow {
    pub fn new(t: &TableMapping) -> Self {
        let (fields, matching): (Vec<String>, Vec<String>) = match &t.kind {
            Kind::Key(key) => key
                .iter()
                .enumerate()
                .map(|(n, k)| {
                    let value = format!("CAST(${}::text AS {})", n + 1, k.cloud.base);
                    (
                        k.name.clone(),
                        same_key(&format!("c.{}", q(&k.name)), &value, &k.cloud),
                    )
                })
                .unzip(),
            Kind::Scoped {
                cloud_key,
                cloud_key_type,
                ..
            } => {
                let value = format!("CAST($1::text AS {})", cloud_key_type.base);
                (
                    vec!["cloud_key".to_string()],
                    vec![same_key(
                        &format!("c.{}", q(cloud_key)),
                        &value,
                        cloud_key_type,
                    )],
                )
            }
        };
        let target = t.table.cloud.quoted();
        let matching = matching.join(" AND ");
        let (source, of_c) = (owner::column(), owner::of("c"));
        CloudRow {
            fields,
            resave: format!(
                "UPDATE {target} c SET {source} = {of_c} WHERE {matching} AND {}",
                owner::is_mobile(&of_c)
            ),
            owner: format!(
                "SELECT {} FROM {target} c WHERE {matching} LIMIT 1",
                owner::text_of("c")
            ),
        }
    }

    /// The key texts of `row_key`, in parameter order; `None` when it lacks one.
    fn key(&self, row_key: &Json) -> Option<Vec<String>> {
        self.fields
            .iter()
            .map(|f| match row_key.get(f)? {
                Json::String(s) => Some(s.clone()),
                Json::Null => None,
                other => Some(other.to_string()),
            })
            .collect()
    }

    /// Re-saves the row of `row_key` in the cloud, in `cloud` (a session marked as tandem's, so the
    /// ownership trigger leaves it alone), if the cloud holds it as mobile-owned.
    pub async fn resave(&self, cloud: &Client, row_key: &Json) -> Result<Found, DbError> {
        let Some(key) = self.key(row_key) else {
            return Ok(Found::Gone);
        };
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = key
            .iter()
            .map(|k| k as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let n = cloud
            .execute(&self.resave, &params)
            .await
            .ctx(Side::Cloud, "re-saving a refused row in the cloud")?;
        if n > 0 {
            return Ok(Found::Resaved);
        }
        let owner = cloud
            .query_opt(&self.owner, &params)
            .await
            .ctx(Side::Cloud, "looking for a refused row in the cloud")?;
        Ok(match owner {
            Some(_) => Found::DesktopOwned,
            None => Found::Gone,
        })
    }
}

/// Marks dead letters as retried, or resolved.
pub async fn mark(desktop: &Client, ids: &[i64], resolved: bool) -> Result<(), DbError> {
    let sql = if resolved {
        "UPDATE tandem.dead_letters SET retried_at = now(), resolved_at = now() WHERE id = ANY($1)"
    } else {
        "UPDATE tandem.dead_letters SET retried_at = now() WHERE id = ANY($1)"
    };
    desktop
        .execute(sql, &[&ids])
        .await
        .ctx(Side::Desktop, "marking dead letters as retried")?;
    Ok(())
}
