//! What operators run beside streaming: `check` (is everything in place?), `status` (how both
//! directions are doing) and `metrics` (the same while `run` runs: /metrics, /healthz, the summary
//! log line), `dead-letters` (the rows a target refused: listed, retried), `conflicts` (listed,
//! resolved), `reconcile` (both sides made to share what they do not); and `service`: streaming itself
//! as a long-lived service (`tandem run`, the Windows service).

pub mod check;
pub mod conflicts;
pub mod dead_letters;
pub mod metrics;
pub mod reconcile;
pub mod service;
pub mod status;
