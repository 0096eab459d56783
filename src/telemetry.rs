//! The series tandem exports, recorded through the `metrics` facade: a no-op until `tandem run
//! --metrics-addr` installs the Prometheus recorder (`ops::metrics`). The names live here, once; the
//! README's Operations section, `deploy/prometheus/alerts.yml` and `deploy/grafana/tandem.json` use
//! them. Series read from the databases (backlog, slot, conflicts) are set by `ops::metrics` from the
//! same reading `tandem status` prints.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

pub const UP: &str = "tandem_up";
pub const FORWARD_BACKLOG_ROWS: &str = "tandem_forward_backlog_rows";
pub const FORWARD_OLDEST_AGE: &str = "tandem_forward_oldest_age_seconds";
pub const SLOT_ACTIVE: &str = "tandem_reverse_slot_active";
pub const SLOT_LAG_BYTES: &str = "tandem_reverse_slot_lag_bytes";
pub const RETAINED_WAL_BYTES: &str = "tandem_reverse_retained_wal_bytes";
pub const SAFE_WAL_SIZE_BYTES: &str = "tandem_reverse_safe_wal_size_bytes";
pub const WAL_STATUS: &str = "tandem_reverse_wal_status";
pub const REVERSE_LAG_SECONDS: &str = "tandem_reverse_lag_seconds";
pub const APPLY_LATENCY: &str = "tandem_apply_latency_seconds";
pub const ROWS_APPLIED: &str = "tandem_rows_applied_total";
pub const CONFLICTS_OPEN: &str = "tandem_conflicts_open";
pub const CONFLICTS: &str = "tandem_conflicts_total";
pub const DEAD_LETTERS_OPEN: &str = "tandem_dead_letters_open";
pub const DEAD_LETTERS: &str = "tandem_dead_letters_total";
pub const RETRIES: &str = "tandem_retries_total";
pub const TABLES_PARKED: &str = "tandem_tables_parked";
pub const TABLE_PARKED: &str = "tandem_table_parked";
pub const LAST_RECONCILE: &str = "tandem_last_reconcile_timestamp_seconds";

/// Every series name, for the docs' and the deploy files' checks.
pub const ALL: &[&str] = &[
    UP,
    FORWARD_BACKLOG_ROWS,
    FORWARD_OLDEST_AGE,
    SLOT_ACTIVE,
    SLOT_LAG_BYTES,
    RETAINED_WAL_BYTES,
    SAFE_WAL_SIZE_BYTES,
    WAL_STATUS,
    REVERSE_LAG_SECONDS,
    APPLY_LATENCY,
    ROWS_APPLIED,
    CONFLICTS_OPEN,
    CONFLICTS,
    DEAD_LETTERS_OPEN,
    DEAD_LETTERS,
    RETRIES,
    TABLES_PARKED,
    TABLE_PARKED,
    LAST_RECONCILE,
];

/// The values of [`WAL_STATUS`]'s `status` label: PostgreSQL's, and `missing` for no slot.
pub const WAL_STATUSES: &[&str] = &["reserved", "extended", "unreserved", "lost", "missing"];

/// Rows a committed batch wrote or deleted in `table`, going `direction` (`forward` | `reverse`).
pub fn rows_applied(direction: &'static str, table: &str, rows: u64) {
    if rows > 0 {
        metrics::counter!(ROWS_APPLIED, "direction" => direction, "table" => table.to_string())
            .increment(rows);
    }
}

/// A committed batch's dead letters, and its latency: from `since` (when the oldest change in it
/// committed on its source) to now. (Its conflicts are counted from the databases: [`CONFLICTS`].)
pub fn batch_committed(direction: &'static str, dead_letters: u64, since: Option<SystemTime>) {
    if dead_letters > 0 {
        metrics::counter!(DEAD_LETTERS, "direction" => direction).increment(dead_letters);
    }
    if let Some(latency) = since.and_then(|s| SystemTime::now().duration_since(s).ok()) {
        metrics::histogram!(APPLY_LATENCY, "direction" => direction).record(latency.as_secs_f64());
    }
}

/// A session of `direction` ended by an error it retries, of `cause` (`connection`, `timeout`,
/// `server`, ...).
pub fn retried(direction: &'static str, cause: &'static str) {
    metrics::counter!(RETRIES, "direction" => direction, "cause" => cause).increment(1);
}

/// What this process knows of one direction (for `/healthz`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectionState {
    /// Connected and streaming.
    pub up: bool,
    /// Why it is not, when it stopped on an error.
    pub error: Option<String>,
}

static DIRECTIONS: Mutex<BTreeMap<&'static str, DirectionState>> = Mutex::new(BTreeMap::new());

fn set(direction: &'static str, state: DirectionState) {
    metrics::gauge!(UP, "direction" => direction).set(if state.up { 1.0 } else { 0.0 });
    if let Ok(mut all) = DIRECTIONS.lock() {
        all.insert(direction, state);
    }
}

/// `direction` is connected and streaming.
pub fn up(direction: &'static str) {
    set(
        direction,
        DirectionState {
            up: true,
            error: None,
        },
    );
}

/// `direction` stopped: on `error`, or (none) because the run ends.
pub fn down(direction: &'static str, error: Option<String>) {
    set(direction, DirectionState { up: false, error });
}

/// The state of `direction` in this process (down, with no error, before it first connects).
pub fn direction(direction: &str) -> DirectionState {
    DIRECTIONS
        .lock()
        .ok()
        .and_then(|all| all.get(direction).cloned())
        .unwrap_or_default()
}
