//! Resolving a conflict of a cloud-key table. Its rows have no key of the desktop's: the cloud names
//! each by its cloud key, the desktop holds them as a multiset per scope. A reverse conflict is a
//! phone's edit of a row whose version it started from the desktop no longer holds (the desktop changed
//! or deleted its copy), so no desktop row can be named as the one the phone's replaces.
//! - `--keep desktop`: the phone's row (by its cloud key) becomes desktop-owned, in a transaction the
//!   reverse stream skips; the forward reconcile of the table then makes its scope the desktop's rows
//!   again, which removes it (the desktop's own version is already there, or goes with it).
//! - `--keep mobile`: the phone's row is brought to the desktop through the reverse plan, as a new row
//!   of its scope (a copy of the mobile row: never sent back as desktop-owned). The desktop's own
//!   version stays: which row it is only a person can tell, and nothing is deleted on a guess. The
//!   message says so and how to remove it (a desktop delete, which travels as any other).

use tokio_postgres::Client;

use super::{CLOUD_KEY, Choice, Choosing, Conflict, Keep, kept, key_texts};
use crate::capture::scan::{Key, ScanSql};
use crate::catalog::ValueType;
use crate::change::Side;
use crate::commit::reconcile::{self, Repair};
use crate::commit::reverse::Reverse;
use crate::commit::{Direction, Target};
use crate::config::{Config, owner};
use crate::db::{self, Context, DbError};
use crate::expr::{q, same_key};
use crate::transform::{Mapping, TableMapping};

/// Applies the side `ch.keep` names for conflict `c` of cloud-key table `i`.
pub(super) async fn choose(
    ch: &Choosing<'_>,
    c: &Conflict,
    i: usize,
    cloud_key: &str,
    cloud_key_type: &ValueType,
) -> anyhow::Result<Choice> {
    let t = &ch.mapping.tables[i];
    let Some(ck) = key_texts(c.row_key.as_ref(), [CLOUD_KEY].into_iter()) else {
        return Ok(Err("its row key names no cloud key".into()));
    };
    let ck = ck.into_iter().next().expect("one name, one value");
    let message = if ch.chosen.contains(&(i, vec![ck.clone()])) {
        Some(format!(
            "kept the {} row of {} {ck} (with another conflict of it)",
            kept(ch.keep),
            c.table
        ))
    } else {
        let row = ScopedRow {
            t,
            i,
            mapping: ch.mapping,
            cloud_key,
            cloud_key_type,
            value: &ck,
        };
        match ch.keep {
            Keep::Desktop => row.make_desktop_owned(ch.cloud).await?,
            Keep::Mobile => row.bring(ch.config, ch.cloud).await?,
        }
    };
    let phone_deleted = c.incoming.as_ref().is_none_or(serde_json::Value::is_null);
    if message.is_none() && ch.keep == Keep::Mobile && phone_deleted {
        return Ok(Err(format!(
            "the phone deleted its row {cloud_key} {ck}, and which desktop row of {} was its copy cannot be told (a cloud-key table's rows have no key): delete it on the desktop by hand (the phone had {}), then `tandem conflicts resolve {} --keep desktop` closes this",
            t.table.desktop,
            c.current
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default(),
            c.id
        )));
    }
    let Some(message) = message else {
        return Ok(Err(format!(
            "the cloud holds no mobile row of {} with {cloud_key} {ck} any more: nothing to choose between; `tandem reconcile --table {}` repairs what differs",
            c.table, t.table.desktop
        )));
    };
    Ok(Ok((vec![ck], message)))
}

/// The mobile row of a cloud-key table a conflict names.
struct ScopedRow<'a> {
    pub t: &'a TableMapping,
    pub i: usize,
    pub mapping: &'a Mapping,
    pub cloud_key: &'a str,
    pub cloud_key_type: &'a ValueType,
    /// The cloud key's value, as text.
    pub value: &'a str,
}

impl ScopedRow<'_> {
    /// `--keep desktop`: the phone's row becomes desktop-owned (the forward reconcile the caller runs
    /// then replaces the scope). `None` when the cloud holds no mobile row with that key any more.
    async fn make_desktop_owned(&self, cloud: &Client) -> Result<Option<String>, DbError> {
        let t = self.t;
        let update = format!(
            "UPDATE {} t SET {} WHERE {} AND {}",
            t.table.cloud.quoted(),
            owner::set_desktop(),
            owner::is_mobile(&owner::of("t")),
            self.is_the_row("t")
        );
        let what = format!(
            "making row {} {} of {} desktop-owned",
            self.cloud_key, self.value, t.table.cloud
        );
        if super::own_update(cloud, &update, &[&self.value], &what).await? > 0 {
            return Ok(Some(format!(
                "kept the desktop rows of {}: the phone's row {} {} is desktop-owned now, and the reconcile of {} made its scope the desktop's rows",
                t.table.desktop, self.cloud_key, self.value, t.table.desktop
            )));
        }
        // A phone deleted its row since: the desktop's rows stay, and the reconcile sends them.
        let gone = cloud
            .query_opt(
                &format!(
                    "SELECT 1 FROM {} t WHERE {}",
                    t.table.cloud.quoted(),
                    self.is_the_row("t")
                ),
                &[&self.value],
            )
            .await
            .ctx(Side::Cloud, &what)?
            .is_none();
        Ok(gone.then(|| {
            format!(
                "kept the desktop rows of {}: the phone's row {} {} is gone from the cloud (a phone deleted it), and the reconcile of {} made its scope the desktop's rows",
                t.table.desktop, self.cloud_key, self.value, t.table.desktop
            )
        }))
    }

    /// `--keep mobile`: brings the phone's row, as the cloud holds it now, to the desktop as a new row
    /// of its scope, through the reverse plan (under the reverse stream's lock). `None` when the cloud
    /// holds no mobile row with that key any more.
    async fn bring(&self, config: &Config, cloud: &Client) -> anyhow::Result<Option<String>> {
        let t = self.t;
        let repair = Repair::Bring {
            key: Key(Vec::new()),
            cloud_key: Some(self.value.to_string()),
            old: None,
        };
        if !apply(config, self.mapping, self.i, cloud, repair).await? {
            return Ok(None);
        }
        Ok(Some(format!(
            "brought the phone's row {} {} to {} as a row of its own; the desktop's own version of it stays (a cloud-key table's rows have no key to tell which one the phone's replaces): delete it on the desktop if it is not wanted",
            self.cloud_key, self.value, t.table.desktop
        )))
    }

    /// `alias`'s cloud key equal to parameter `$1` (text).
    fn is_the_row(&self, alias: &str) -> String {
        same_key(
            &format!("{alias}.{}", q(self.cloud_key)),
            &format!("CAST($1::text AS {})", self.cloud_key_type.base),
            self.cloud_key_type,
        )
    }
}

/// Applies one desktop repair of table `i` through the reverse plan, as a reconcile does: on a session
/// of its own (marked as tandem's: the capture triggers skip its write), under the reverse stream's
/// lock, the phone's row read from `cloud` as it is now. False when there was nothing to stage (the
/// phone's row is gone, or no longer mobile-owned). A row the desktop refuses is an error naming its
/// dead letter.
pub(super) async fn apply(
    config: &Config,
    mapping: &Mapping,
    i: usize,
    cloud: &Client,
    repair: Repair,
) -> anyhow::Result<bool> {
    let desktop = db::connect(Side::Desktop, &config.desktop.url).await?;
    let plan = Reverse::new(mapping);
    let sql = ScanSql::build(mapping, i);
    let mut target = Target::prepare(&desktop, Direction::Reverse, plan.staging()).await?;
    let mut on = reconcile::Desktop {
        target: &mut target,
        plan: &plan,
        desktop: &desktop,
        mapping,
        i,
    };
    if reconcile::stage(&mut on, cloud, &sql, &[repair]).await? == 0 {
        target.rollback(&desktop).await?;
        return Ok(false);
    }
    let outcome = reconcile::commit(&mut on, "", cloud).await?;
    db::drop_temp_tables(&desktop).await;
    let table = &mapping.tables[i].table.desktop;
    if outcome.dead_letters > 0 {
        anyhow::bail!(
            "the desktop refused the phone's row of {table}: it is a dead letter now (`tandem dead-letters list` says why); fix that, then `tandem reconcile --table {table}`"
        );
    }
    if outcome.conflicts > 0 {
        anyhow::bail!(
            "the desktop's row of {table} changed again while it was being resolved: a new conflict is logged (`tandem conflicts list`)"
        );
    }
    Ok(true)
}
