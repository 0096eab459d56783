//! How far the cloud's clock is ahead of the desktop's, for the `latest` policy: it compares the
//! desktop change's time (the desktop's clock, at its transaction's start) with the phone's commit
//! (the cloud's clock, from the stream's BEGIN). Neither PostgreSQL needs `track_commit_timestamp`.
//!
//! Measured when the reverse worker connects: the desktop's clock read before and after one read of the
//! cloud's, three times, the tightest round trip kept. The cloud's reading is taken to be at the
//! midpoint, so the offset is known within half that round trip (a millisecond or so on a LAN, tens
//! of milliseconds over the internet). It is recorded in the desktop's `tandem.installation`
//! (`cloud_ahead`), where every settlement reads it (the stream's, a reconcile's), and `status` shows
//! it. Two changes whose times differ by less than the uncertainty were simultaneous for any clock:
//! either side is a fair "later writer", and both sides still get the same row, since the settlement
//! is made once, on the desktop.

use std::time::Instant;

use tokio_postgres::Client;

use crate::change::Side;
use crate::commit::reverse::CLOUD_AHEAD_ITEM;
use crate::db::{Context, DbError};

/// Read and record `cloud_ahead`; returns it in microseconds (negative: the cloud's clock is behind).
pub async fn record_cloud_ahead(desktop: &Client, cloud: &Client) -> Result<i64, DbError> {
    const NOW: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint";
    let mut best: Option<(u128, i64)> = None;
    for _ in 0..3 {
        let started = Instant::now();
        let before: i64 = desktop
            .query_one(NOW, &[])
            .await
            .ctx(Side::Desktop, "reading the desktop's clock")?
            .get(0);
        let at: i64 = cloud
            .query_one(NOW, &[])
            .await
            .ctx(Side::Cloud, "reading the cloud's clock")?
            .get(0);
        let after: i64 = desktop
            .query_one(NOW, &[])
            .await
            .ctx(Side::Desktop, "reading the desktop's clock")?
            .get(0);
        let round_trip = started.elapsed().as_micros();
        let ahead = at - (before + (after - before) / 2);
        if best.is_none_or(|(r, _)| round_trip < r) {
            best = Some((round_trip, ahead));
        }
    }
    let (_, ahead) = best.expect("three readings");
    desktop
        .execute(
            "INSERT INTO tandem.installation (item, value) VALUES ($1, $2) \
             ON CONFLICT (item) DO UPDATE SET value = EXCLUDED.value",
            &[&CLOUD_AHEAD_ITEM, &format!("{ahead} microseconds")],
        )
        .await
        .ctx(
            Side::Desktop,
            "recording how far the cloud's clock is ahead (tandem.installation)",
        )?;
    Ok(ahead)
}
