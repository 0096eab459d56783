//! Filling a target that holds no row (an initial sync, a cloud table emptied): once the target is
//! locked against other writers until the transaction ends (a phone's write waits a moment; readers
//! go on) and found empty, every staged row is a new desktop-owned row, written as the plain COPY
//! floor writes it: no row to match, update, delete or log as a conflict, so no multiset plan, no
//! `ON CONFLICT` (no speculative insertion: two WAL records less per row for the reverse stream to
//! read past) and no statistics of the staging tables. On the seeds' initial sync this spared a tenth
//! of its time.

use std::collections::BTreeMap;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::change::Side;
use crate::db::Context;
use crate::transform::Mapping;

use super::super::{Batch, BatchOutcome, CommitError, Count, Plan, Target};
use super::sql::{Numbered, Write};
use super::{ANALYZE_ABOVE, Forward};

/// The insert of every staged row of `rows` into `target` (`cols` and `vals`: the insert's columns
/// and the staged values for them), and the statement that locks `target` and reads whether it holds
/// no row.
pub(super) fn statements(target: &str, rows: &str, cols: String, vals: String) -> (Write, String) {
    let fill = Write::new("insert", Numbered::Rows, |checks| {
        format!(
            "INSERT INTO {target} ({cols}) SELECT {vals} FROM {rows} s WHERE s._n BETWEEN $1 AND $2{checks}"
        )
    });
    // SHARE ROW EXCLUSIVE conflicts with every writer's lock, not with readers'.
    let lock_empty = format!(
        "LOCK TABLE {target} IN SHARE ROW EXCLUSIVE MODE; SELECT NOT EXISTS (SELECT FROM {target})"
    );
    (fill, lock_empty)
}

impl Forward {
    /// Applies table `i`'s staged rows (the open cloud transaction's) to a target that holds none (see
    /// the module). Refused rows become dead letters through the careful path, as always; keys the
    /// desktop holds twice, too (checked unless the desktop's unique key is of the cloud's type).
    /// `None` when the target holds rows: nothing done, [`Forward::apply`] then.
    pub async fn fill(
        &self,
        target: &mut Target,
        cloud: &Client,
        mapping: &Mapping,
        i: usize,
        batch_id: &str,
    ) -> Result<Option<BatchOutcome>, CommitError> {
        let of_table = |e| CommitError::of_table(e, i);
        let sql = &self.sql[i];
        let empty = cloud
            .simple_query(&sql.lock_empty)
            .await
            .ctx(Side::Cloud, format!("locking {} to fill it", self.names[i]))
            .map_err(of_table)?
            .into_iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).map(|v| v == "t"),
                _ => None,
            })
            .unwrap_or(false);
        if !empty {
            return Ok(None);
        }
        let none = BTreeMap::new();
        let batch = Batch {
            names: &self.names,
            id: batch_id,
            reasons: &none,
        };
        let t = &mapping.tables[i];
        let same_types = t
            .key_columns()
            .iter()
            .all(|k| k.desktop.shaped == k.cloud.shaped);
        let mut dead_letters = 0;
        if let Some(check) = sql.duplicate_rows.as_ref()
            && !(t.desktop_key_unique && same_types)
        {
            let statement = target
                .statements
                .get(cloud, check)
                .await
                .map_err(of_table)?;
            let duplicates = cloud
                .query(&statement, &[])
                .await
                .ctx(
                    Side::Cloud,
                    format!("reading the staged keys of {}", self.names[i]),
                )
                .map_err(of_table)?;
            if !duplicates.is_empty() {
                dead_letters += self
                    .set_aside_duplicates(cloud, i, batch, &duplicates)
                    .await
                    .map_err(of_table)?;
            }
        }
        // As in `apply`: only a big batch's checks reuse their plans.
        let big = target.staging.staged(i) > ANALYZE_ABOVE;
        let steps = |fast: bool| {
            let mut steps = Vec::new();
            self.write(&mut steps, i, &sql.fill, Count::Written, fast && big);
            steps.push(self.resolving(i));
            steps
        };
        let plan = Plan {
            fast: steps(true),
            careful: steps(false),
        };
        let mut outcome = target.apply(cloud, &plan, batch).await?;
        outcome.dead_letters += dead_letters;
        Ok(Some(outcome))
    }
}
