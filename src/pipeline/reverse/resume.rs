//! When a parked table resumes: what it set aside comes back.

use crate::capture::logical::Claim;
use crate::change::Side;
use crate::commit::reverse::sql::PARKED_SQLSTATE;
use crate::commit::reverse::{Group, Origin, retry};
use crate::db::{APPLYING_SETTING, Context};

use crate::pipeline::{RunError, RunStats};

use super::Stream;

impl Stream<'_> {
    /// Brings back what tables that are not parked (any more) set aside while they were: each row
    /// the cloud still holds as mobile-owned is re-saved there (by `cloud`, tandem's session) so its
    /// current version streams again, and applies against the old image its dead letter kept; a row
    /// the cloud no longer holds was deleted meanwhile, and its delete is applied from that image; a
    /// row now desktop-owned, or one the desktop never had and the cloud no longer holds, needs nothing.
    pub(super) async fn resume(&mut self, stats: &mut RunStats) -> Result<(), RunError> {
        let mapping = self.mapping;
        let mut marked = false;
        let mut deleted = Vec::new();
        for (i, t) in mapping.tables.iter().enumerate() {
            if self.parked.contains_key(&i) || !t.reverse {
                continue;
            }
            let name = t.table.desktop.to_string();
            let open = retry::open(&self.desktop, &name, Some(PARKED_SQLSTATE)).await?;
            if open.is_empty() {
                continue;
            }
            if !marked {
                self.cloud
                    .execute("SELECT set_config($1, 'on', false)", &[&APPLYING_SETTING])
                    .await
                    .ctx(Side::Cloud, "marking the session as tandem's")?;
                marked = true;
            }
            let row = retry::CloudRow::new(t);
            let (mut resaved, mut settled) = (Vec::new(), Vec::new());
            for dl in open {
                let found = match &dl.row_key {
                    Some(key) => row.resave(&self.cloud, key).await?,
                    None => retry::Found::Gone,
                };
                match (found, dl.old_image) {
                    (retry::Found::Resaved, _) => resaved.push(dl.id),
                    (retry::Found::Gone, Some(serde_json::Value::Object(old))) => {
                        self.encoder.claim(
                            i,
                            Claim {
                                delete: true,
                                schema: t.table.cloud.schema.clone(),
                                table: t.table.cloud.name.clone(),
                                old,
                            },
                        );
                        deleted.push(dl.id);
                    }
                    _ => settled.push(dl.id),
                }
            }
            tracing::info!(
                table = %name,
                resaved = resaved.len(),
                deleted_meanwhile = deleted.len(),
                settled = settled.len(),
                "a resumed table's rows set aside while parked come back"
            );
            retry::mark(&self.desktop, &resaved, false).await?;
            retry::mark(&self.desktop, &settled, true).await?;
        }
        if deleted.is_empty() {
            return Ok(());
        }
        self.flush().await?;
        let complex = self.encoder.take_complex();
        let group = Group {
            end: self.stored.unwrap_or_default(),
            complex: &complex,
            parked: &self.parked,
            origin: Origin::Resumed,
            horizon: None,
            cloud: Some(&self.cloud),
        };
        let outcome = self
            .plan
            .commit(&mut self.target, &self.desktop, mapping, &group)
            .await?;
        stats.outcome.add(&outcome);
        Ok(())
    }
}
