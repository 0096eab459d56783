//! A reconcile's cut in the reverse stream: where the cloud scan's snapshot is, in the stream's order.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::capture::logical::CUT_PREFIX;
use crate::change::Side;
use crate::config::Config;
use crate::db::Context;
use crate::transform::Mapping;

use super::super::RunError;

/// How long a reconcile waits for the running reverse worker to reach its cut.
const CUT_DEADLINE: Duration = Duration::from_secs(600);

/// A reconcile's cut in the reverse stream (see `tandem.cuts`).
pub(super) struct Cut {
    id: String,
    /// The cloud position of the scan's snapshot (`pg_lsn` text).
    pub(super) position: String,
    /// The scan's snapshot: once the repairs are written, the table's horizon (every transaction it
    /// sees is then on the desktop, or kept as a conflict).
    pub(super) horizon: String,
}

impl Cut {
    /// Takes the scan's snapshot on `scan` (a cloud connection) where the stream is cut: with the
    /// table locked against writes for a moment, no transaction writing it is in flight, so those that
    /// committed before the cut's message are exactly those the snapshot sees. When a reverse worker
    /// streams, waits until it has applied everything before the cut (it then waits for [`Cut::done`]).
    pub(super) async fn make(
        config: &Config,
        writer: &super::Writer,
        mapping: &Mapping,
        i: usize,
    ) -> Result<Cut, RunError> {
        let (desktop, scan, lock) = (&writer.desktop, &writer.scan_cloud, &writer.cutter);
        let t = &mapping.tables[i];
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!("{}-{}-{i}", std::process::id(), since_epoch.as_nanos());
        let name = t.table.desktop.to_string();
        desktop
            .execute(
                "INSERT INTO tandem.cuts (id, table_name) VALUES ($1, $2)",
                &[&id, &name],
            )
            .await
            .ctx(Side::Desktop, "recording a reconcile's cut in tandem.cuts")?;
        lock.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; LOCK TABLE {} IN SHARE MODE",
            t.table.cloud.quoted()
        ))
        .await
        .ctx(
            Side::Cloud,
            format!("locking {} for a moment to cut the stream", t.table.cloud),
        )?;
        let row = lock
            .query_one(
                "SELECT pg_export_snapshot(), pg_logical_emit_message(false, $1, $2)::text,
                        (SELECT active FROM pg_replication_slots WHERE slot_name = $3),
                        pg_current_snapshot()::text",
                &[&CUT_PREFIX, &id, &config.cloud.slot],
            )
            .await
            .ctx(Side::Cloud, "cutting the reverse stream")?;
        let (snapshot, position, streaming, horizon): (String, String, Option<bool>, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        scan.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            crate::change::quote_literal(&snapshot)
        ))
        .await
        .ctx(
            Side::Cloud,
            format!("beginning the scan of {}", t.table.cloud),
        )?;
        // A running stream reaches the cut once the WAL holding it is flushed: the message alone is
        // not (it belongs to no transaction), and the WAL writer flushes it up to `wal_writer_delay`
        // later (200 ms by default, per table). A transaction id and a synchronous commit flush it now.
        let end = match streaming {
            Some(true) => {
                "SET LOCAL synchronous_commit = on; SELECT pg_catalog.pg_current_xact_id(); COMMIT"
            }
            _ => "COMMIT",
        };
        lock.batch_execute(end)
            .await
            .ctx(Side::Cloud, "ending the cut")?;
        let cut = Cut {
            id,
            position,
            horizon,
        };
        if streaming == Some(true) {
            let deadline = Instant::now() + CUT_DEADLINE;
            loop {
                let reached: bool = desktop
                    .query_one(
                        "SELECT reached_at IS NOT NULL FROM tandem.cuts WHERE id = $1",
                        &[&cut.id],
                    )
                    .await
                    .ctx(Side::Desktop, "reading tandem.cuts")?
                    .get(0);
                if reached {
                    break;
                }
                if Instant::now() > deadline {
                    cut.done(desktop).await?;
                    return Err(RunError::Worker(format!(
                        "the running `tandem run` did not reach the reconcile's cut of {name} in {} s: is its reverse direction stuck? (see its log, or stop it and reconcile again)",
                        CUT_DEADLINE.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(cut)
    }

    /// The statement that records, in the repairs' transaction, the cut's position as table `name`'s
    /// sync point (the stream skips its transactions from before it) and the scan's snapshot as its
    /// horizon, where that is later than the one it has.
    pub(super) fn record_sql(&self, name: &str) -> String {
        let (position, horizon, name) = (
            crate::change::quote_literal(&self.position),
            crate::change::quote_literal(&self.horizon),
            crate::change::quote_literal(name),
        );
        format!(
            "UPDATE tandem.table_state SET sync_lsn = {position}::pg_lsn, \
                    horizon = CASE WHEN horizon IS NULL \
                                     OR split_part(horizon, ':', 2)::bigint < split_part({horizon}, ':', 2)::bigint \
                                   THEN {horizon} ELSE horizon END \
              WHERE table_name = {name}"
        )
    }

    /// Lets the reverse worker go on past the cut.
    pub(super) async fn done(&self, desktop: &Client) -> Result<(), RunError> {
        desktop
            .execute(
                "UPDATE tandem.cuts SET done_at = now() WHERE id = $1",
                &[&self.id],
            )
            .await
            .ctx(Side::Desktop, "recording a reconcile's cut as done")?;
        Ok(())
    }
}
