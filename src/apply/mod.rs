//! Writing a batch: staging by binary COPY, then one set-based transaction on the target.
//!
//! Forward (desktop → cloud): the desktop's current rows for the batch's keys are piped by binary COPY
//! from the desktop's snapshot straight into session temp tables on the cloud (no row is decoded in
//! between, so memory does not grow with the batch), then a fixed sequence of statements makes the
//! cloud's desktop-owned rows equal to them: keys the desktop no longer has are deleted (children
//! first), rows are upserted (parents first) only where a value differs, cloud-key scopes are replaced
//! as a multiset diff, mobile-owned rows are never touched and a blocked change is logged as a conflict.

pub mod forward_sql;
pub mod isolate;

use std::collections::BTreeSet;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, pin_mut};
use tokio_postgres::{Client, Transaction};

use crate::capture::APPLYING_SETTING;
use crate::change::Side;
use crate::db::{self, Context, DbError};
use crate::transform::Mapping;
use forward_sql::ForwardSql;
use isolate::{DeadLetterSite, run_ranged};

/// What one batch did to the target.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub staged_rows: u64,
    pub written: u64,
    pub deleted: u64,
    pub conflicts: u64,
    pub dead_letters: u64,
}

impl BatchOutcome {
    pub fn add(&mut self, other: &BatchOutcome) {
        self.staged_rows += other.staged_rows;
        self.written += other.written;
        self.deleted += other.deleted;
        self.conflicts += other.conflicts;
        self.dead_letters += other.dead_letters;
    }
}

/// Above this many staged rows, the staging tables are analyzed so the planner sizes its joins.
const ANALYZE_ABOVE: u64 = 5_000;

/// Pipes one binary COPY from `from` (the desktop snapshot) into `to` (the cloud transaction).
pub async fn pipe(
    from: &Transaction<'_>,
    out_sql: &str,
    to: &Transaction<'_>,
    in_sql: &str,
) -> Result<u64, DbError> {
    let source = from
        .copy_out(out_sql)
        .await
        .ctx(Side::Desktop, "reading the batch (COPY TO STDOUT)")?;
    let sink = to
        .copy_in::<_, Bytes>(in_sql)
        .await
        .ctx(Side::Cloud, "staging the batch (COPY FROM STDIN)")?;
    pin_mut!(source, sink);
    while let Some(chunk) = source.next().await {
        let chunk = chunk.ctx(Side::Desktop, "reading the batch (COPY TO STDOUT)")?;
        sink.send(chunk)
            .await
            .ctx(Side::Cloud, "staging the batch (COPY FROM STDIN)")?;
    }
    sink.finish()
        .await
        .ctx(Side::Cloud, "staging the batch (COPY FROM STDIN)")
}

/// The cloud side of the forward direction: per-table statements, built once.
#[derive(Debug, Clone)]
pub struct ForwardApplier {
    sql: Vec<ForwardSql>,
}

impl ForwardApplier {
    pub fn new(mapping: &Mapping) -> Self {
        ForwardApplier {
            sql: mapping
                .tables
                .iter()
                .enumerate()
                .map(|(i, t)| ForwardSql::build(t, i))
                .collect(),
        }
    }

    pub fn sql(&self, i: usize) -> &ForwardSql {
        &self.sql[i]
    }

    /// Once per cloud connection: mark the session as tandem's (the ownership trigger leaves its
    /// `source` alone) and create the staging tables.
    pub async fn prepare(&self, cloud: &Client) -> Result<(), DbError> {
        cloud
            .execute("SELECT set_config($1, 'on', false)", &[&APPLYING_SETTING])
            .await
            .ctx(Side::Cloud, "marking the session as tandem's")?;
        let create: Vec<&str> = self.sql.iter().map(|s| s.create.as_str()).collect();
        cloud
            .batch_execute(&create.join("\n"))
            .await
            .ctx(Side::Cloud, "creating the staging tables")
    }

    /// Stages table `i`'s keys and rows from the desktop snapshot.
    pub async fn stage(
        &self,
        i: usize,
        read: &crate::capture::outbox::ReadSql,
        desktop: &Transaction<'_>,
        cloud: &Transaction<'_>,
    ) -> Result<u64, DbError> {
        let sql = &self.sql[i];
        let keys = pipe(desktop, &read.copy_keys, cloud, &sql.copy_keys_in).await?;
        let rows = pipe(desktop, &read.copy_rows, cloud, &sql.copy_rows_in).await?;
        if rows + keys > ANALYZE_ABOVE {
            cloud
                .batch_execute(&format!("ANALYZE {}, {}", sql.rows, sql.keys))
                .await
                .ctx(Side::Cloud, "analyzing the staging tables")?;
        }
        Ok(rows)
    }

    /// The statements of one batch, in the cloud transaction `tx`, after staging. `careful` isolates
    /// refused rows into dead letters; without it the first refused row fails the batch.
    pub async fn commit(
        &self,
        tx: &Transaction<'_>,
        mapping: &Mapping,
        tables: &BTreeSet<usize>,
        truncated: &BTreeSet<usize>,
        batch: &str,
        careful: bool,
    ) -> Result<BatchOutcome, DbError> {
        let mut out = BatchOutcome::default();
        let order: Vec<usize> = mapping
            .parents_first
            .iter()
            .copied()
            .filter(|i| tables.contains(i))
            .collect();
        let names: Vec<String> = mapping
            .tables
            .iter()
            .map(|t| t.table.cloud.to_string())
            .collect();
        let cloud = Side::Cloud;

        for &i in &order {
            let (t, sql, name) = (&mapping.tables[i], &self.sql[i], &names[i]);
            if truncated.contains(&i) {
                tx.execute(&sql.truncate_keys, &[])
                    .await
                    .ctx(cloud, format!("applying a TRUNCATE of {name}"))?;
            }
            if let (Some(find), Some(drop)) = (&sql.duplicate_rows, &sql.drop_duplicates) {
                let dups = tx
                    .query(find, &[])
                    .await
                    .ctx(cloud, format!("looking for duplicate keys of {name}"))?;
                if !dups.is_empty() {
                    let image = sql.dead_letter_image(t, forward_sql::Numbered::Rows);
                    let site = site(name, batch, &image, &sql.rows);
                    let mut ns: Vec<i64> = Vec::new();
                    for row in &dups {
                        let (same_key, count): (Vec<i64>, i64) = (row.get(0), row.get(1));
                        let message = format!(
                            "the desktop holds {count} rows with this key, the cloud can hold one: remove the \
                             duplicates on the desktop (the cloud row is left as it was)"
                        );
                        isolate::record_dead_letter(tx, &site, same_key[0], "21000", &message)
                            .await?;
                        ns.extend(same_key);
                    }
                    out.dead_letters += dups.len() as u64;
                    for stmt in drop {
                        tx.execute(stmt, &[&ns])
                            .await
                            .ctx(cloud, format!("setting aside duplicate keys of {name}"))?;
                    }
                }
            }
            if let (Some(has_null), Some((plain, with_null))) = (&sql.keys_have_null, &sql.plan) {
                let null: bool = tx
                    .query_one(has_null, &[])
                    .await
                    .ctx(cloud, format!("reading {name}'s scopes"))?
                    .get(0);
                let plan = if null { with_null } else { plain };
                tx.execute(plan, &[]).await.ctx(
                    cloud,
                    format!("matching {name}'s rows in the touched scopes"),
                )?;
            }
            for conflict in &sql.conflicts {
                out.conflicts += tx
                    .execute(conflict, &[name])
                    .await
                    .ctx(cloud, format!("logging conflicts of {name}"))?;
            }
        }
        // Deletes children first, writes parents first.
        for &i in order.iter().rev() {
            let sql = &self.sql[i];
            let image = sql.dead_letter_image(&mapping.tables[i], sql.delete.numbered);
            let site = site(
                &names[i],
                batch,
                &image,
                sql.numbered_table(sql.delete.numbered),
            );
            let done = run_ranged(tx, sql.delete.what, &sql.delete.sql, &site, careful).await?;
            out.deleted += done.affected;
            out.dead_letters += done.dead_letters;
        }
        for &i in &order {
            let sql = &self.sql[i];
            for stmt in std::iter::once(&sql.write).chain(sql.lookup_update.as_ref()) {
                let image = sql.dead_letter_image(&mapping.tables[i], stmt.numbered);
                let site = site(&names[i], batch, &image, sql.numbered_table(stmt.numbered));
                let done = run_ranged(tx, stmt.what, &stmt.sql, &site, careful).await?;
                out.written += done.affected;
                out.dead_letters += done.dead_letters;
            }
            tx.execute(&sql.resolve, &[&names[i], &batch]).await.ctx(
                cloud,
                format!("resolving dead letters of {} that now applied", names[i]),
            )?;
        }
        tx.execute(
            "INSERT INTO tandem.progress (direction, applied_at) VALUES ('forward', now())
             ON CONFLICT (direction) DO UPDATE SET applied_at = EXCLUDED.applied_at",
            &[],
        )
        .await
        .ctx(cloud, "recording forward progress")?;
        Ok(out)
    }
}

fn site<'a>(
    table: &'a str,
    batch: &'a str,
    image: &'a str,
    numbered: &'a str,
) -> DeadLetterSite<'a> {
    DeadLetterSite {
        side: Side::Cloud,
        direction: "forward",
        table_name: table,
        batch,
        image_sql: image,
        numbered_table: numbered,
    }
}

/// Whether a batch failure should be retried in careful mode (a row was refused).
pub fn is_refused_row(e: &DbError) -> bool {
    e.kind() == db::ErrorKind::BadRow
}
