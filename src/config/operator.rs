//! The operator's settings: `[metrics]` (what `run` serves) and `[status]` (when `tandem status`,
//! `/healthz` and the exit codes call things degraded or broken).

use serde::Deserialize;

/// `[metrics]`: with `addr`, `tandem run` serves `/metrics` and `/healthz` there (as `--metrics-addr`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `HOST:PORT` to listen on (e.g. `127.0.0.1:9187`); nothing served when absent.
    pub addr: Option<String>,
    /// How often `run` reads the backlog and the slot for the gauges, and logs its summary line.
    pub interval_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            addr: None,
            interval_ms: 15_000,
        }
    }
}

/// `[status]`: thresholds. A threshold crossed makes the status `degraded` (exit 1); `broken` (exit 2)
/// is kept for what stops a direction (a side unreachable, the slot or the publication lost) and for
/// retained WAL past `retained_wal_broken_bytes`, where the slot is about to be lost.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// The oldest outbox row older than this: degraded.
    pub outbox_age_warn_seconds: u64,
    /// The reverse lag longer than this: degraded.
    pub reverse_lag_warn_seconds: u64,
    /// WAL the slot holds on the cloud above this: degraded. Default: half of the cloud's
    /// `max_slot_wal_keep_size` when it sets one, else 1 GiB.
    pub retained_wal_warn_bytes: Option<u64>,
    /// Above this: broken. Default: 80 % of `max_slot_wal_keep_size` (less than a fifth of the room left
    /// before the cloud invalidates the slot), else 4 GiB.
    pub retained_wal_broken_bytes: Option<u64>,
    /// Degraded when at least this many conflicts wait for a person (open), each for
    /// `conflicts_warn_age_seconds` or longer. 0 never degrades for conflicts.
    pub conflicts_warn_count: u64,
    pub conflicts_warn_age_seconds: u64,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            outbox_age_warn_seconds: 300,
            reverse_lag_warn_seconds: 300,
            retained_wal_warn_bytes: None,
            retained_wal_broken_bytes: None,
            conflicts_warn_count: 1,
            conflicts_warn_age_seconds: 0,
        }
    }
}

const GIB: u64 = 1 << 30;

impl StatusConfig {
    /// The retained-WAL thresholds `(degraded, broken)` in bytes, given the slot's WAL limit (the
    /// cloud's `max_slot_wal_keep_size`, when it sets one).
    pub fn retained_wal_thresholds(&self, limit: Option<u64>) -> (u64, u64) {
        let warn = self
            .retained_wal_warn_bytes
            .unwrap_or_else(|| limit.map_or(GIB, |l| l / 2));
        let broken = self
            .retained_wal_broken_bytes
            .unwrap_or_else(|| limit.map_or(4 * GIB, |l| l / 5 * 4));
        (warn, broken.max(warn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_thresholds_follow_the_slots_limit_unless_set() {
        let status = StatusConfig::default();
        assert_eq!(status.retained_wal_thresholds(None), (GIB, 4 * GIB));
        assert_eq!(
            status.retained_wal_thresholds(Some(1000 * 1024 * 1024)),
            (500 * 1024 * 1024, 800 * 1024 * 1024)
        );
        let set = StatusConfig {
            retained_wal_warn_bytes: Some(10),
            retained_wal_broken_bytes: Some(5),
            ..StatusConfig::default()
        };
        assert_eq!(set.retained_wal_thresholds(Some(GIB)), (10, 10));
    }
}
