//! How far the cloud's clock is ahead of the desktop's, for the `latest` policy: it compares the
//! desktop change's time (the desktop's clock, at its transaction's start) with the phone's commit
//! (the cloud's clock, from the stream's BEGIN). Neither PostgreSQL needs `track_commit_timestamp`.
//!
//! Measured when the reverse worker connects: the desktop's clock read before and after one read of the
//! cloud's, three times, the tightest round trip kept. The cloud's reading was taken somewhere in
//! between, so the offset is known within half that round trip (a millisecond or so on a LAN, tens
//! of milliseconds over the internet); of the offsets it allows, the one closest to zero is recorded. It is recorded in the desktop's `tandem.installation`
//! (`cloud_ahead`), where every settlement reads it (the stream's, a reconcile's), and `status` shows
//! it. Two changes whose times differ by less than the uncertainty were simultaneous for any clock:
//! either side is a fair "later writer", and both sides still get the same row, since the settlement
//! is made once, on the desktop.

use std::time::Instant;

use tokio_postgres::Client;

use crate::change::Side;
use crate::commit::reverse::CLOUD_AHEAD_ITEM;
use crate::db::{Context, DbError};

/// The cloud's clock's lead from one reading `at` taken between the desktop's `before` and `after`
/// (microseconds): it was read somewhere in between, so the lead is known within half that interval
/// either way. Of the leads the reading allows, the one closest to zero: a loaded machine delays a
/// reading, and that delay must not pass for a skew (zero when the clocks may well agree).
fn offset(before: i64, at: i64, after: i64) -> i64 {
    let half = (after - before).max(0) / 2;
    let ahead = at - (before + half);
    ahead.signum() * (ahead.abs() - half).max(0)
}

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
        if best.is_none_or(|(r, _)| round_trip < r) {
            best = Some((round_trip, offset(before, at, after)));
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

#[cfg(test)]
mod tests {
    use super::offset;

    #[test]
    fn an_offset_is_the_lead_closest_to_zero_the_reading_allows() {
        // Clocks that agree, the cloud read late in a slow round trip: no skew.
        assert_eq!(offset(1_000, 1_900, 2_000), 0);
        assert_eq!(offset(1_000, 1_100, 2_000), 0);
        // The cloud an hour ahead (or behind), read in a 1 ms round trip: within half of it, the
        // half that is closer to zero.
        assert_eq!(offset(0, 3_600_000_500, 1_000), 3_599_999_500);
        assert_eq!(offset(0, -3_599_999_500, 1_000), -3_599_999_500);
        // A clock that went back between the readings counts as a zero round trip.
        assert_eq!(offset(2_000, 2_500, 1_000), 500);
    }
}
