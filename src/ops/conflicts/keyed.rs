//! Resolving a conflict of a desktop-key table: its row is named by the key on both sides.

use super::{Choice, Choosing, Conflict, Keep, apply, kept, key_match, key_texts, own_update};
use crate::capture::scan::Key;
use crate::change::Side;
use crate::commit::reconcile::Repair;
use crate::config::owner;
use crate::db::Context;
use crate::expr::q;
use crate::transform::MappedColumn;

/// Applies the side `ch.keep` names for conflict `c` of table `i`, whose key is `key`.
pub(super) async fn choose(
    ch: &Choosing<'_>,
    c: &Conflict,
    i: usize,
    key: &[MappedColumn],
) -> anyhow::Result<Choice> {
    let t = &ch.mapping.tables[i];
    let Some(values) = key_texts(c.row_key.as_ref(), key.iter().map(|k| k.name.as_str())) else {
        return Ok(Err("its row key does not name every key column".into()));
    };
    let cloud_match = key_match("t", key.iter().map(|k| (k.name.as_str(), &k.cloud)));
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        values.iter().map(|v| v as _).collect();
    let again = ch.chosen.contains(&(i, values.clone()));
    // A row of `alias` as an old image: each mapped column's text, as the stream writes images.
    let image = |alias: &str| crate::capture::outbox::image(t, alias);
    // The cloud's row now: mobile-owned, desktop-owned, or gone (a phone deleted it); with its key
    // as the cloud writes it (what the engine matches fetched rows by).
    let cloud_row = ch
        .cloud
        .query_opt(
            &format!(
                "SELECT {}, ({})::text, {} FROM {} t WHERE {}",
                owner::mobile_flag(&owner::text_of("t")),
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
    let old: Option<String> = ch
        .desktop
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
    if ch.keep == Keep::Mobile
        && !again
        && cloud_row == Some(false)
        && refused_delete
        && c.id.starts_with('r')
    {
        // A phone deleted the row and the desktop's edit put it back as desktop-owned: the phone's
        // side is the row gone, from the cloud first (in a transaction the stream skips).
        let what = format!("deleting the row of {} the phone deleted", t.table.cloud);
        let delete = format!(
            "DELETE FROM {} t WHERE {} AND {}",
            t.table.cloud.quoted(),
            owner::is_desktop(&owner::of("t")),
            cloud_match.join(" AND ")
        );
        own_update(ch.cloud, &delete, &params, &what).await?;
        cloud_row = None;
    }
    let changed = match ch.keep {
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
                apply(ch.config, ch.mapping, i, ch.cloud, remove).await?;
            }
            let what = format!("making the row of {} desktop-owned", t.table.cloud);
            let update = format!(
                "UPDATE {} t SET {} WHERE {} AND {}",
                t.table.cloud.quoted(),
                owner::set_desktop(),
                owner::is_mobile(&owner::of("t")),
                cloud_match.join(" AND ")
            );
            own_update(ch.cloud, &update, &params, &what).await?
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
                Some(repair) => u64::from(apply(ch.config, ch.mapping, i, ch.cloud, repair).await?),
                // Gone on both sides: nothing differs.
                None => 1,
            }
        }
    };
    if changed == 0 {
        return Ok(Err(format!(
            "the cloud holds no mobile row of {} under {:?} any more (or the desktop no row): nothing to choose between; `tandem reconcile --table {}` repairs what differs",
            c.table, values, t.table.desktop
        )));
    }
    let message = format!("kept the {} row of {} {:?}", kept(ch.keep), c.table, values);
    Ok(Ok((values, message)))
}
