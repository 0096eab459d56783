//! The retry policy, in one place: which errors are retried (see [`crate::db::classify`]) and how long
//! to wait between attempts (exponential backoff with jitter, capped, never giving up: a replicator
//! outlives any outage of either database).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The delays between reconnection attempts: 100 ms doubling to 30 s, with jitter, forever.
pub fn backoff() -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(30))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_never_ends() {
        let delays: Vec<Duration> = backoff().take(20).collect();
        assert_eq!(delays.len(), 20);
        assert!(
            delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200),
            "{delays:?}"
        );
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(60)),
            "{delays:?}"
        );
        assert!(delays[19] >= Duration::from_secs(30), "{delays:?}");
    }
}
