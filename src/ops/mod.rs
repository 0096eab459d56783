//! What operators run beside streaming: `check` (is everything in place?), `dead-letters` (the rows a
//! target refused: listed, retried) and `reconcile` (both sides made to share what they do not).

pub mod check;
pub mod conflicts;
pub mod dead_letters;
pub mod metrics;
pub mod reconcile;
pub mod status;
