//! What operators run beside streaming: `check` (is everything in place?), `dead-letters` (the rows a
//! target refused: listed, retried) and `reconcile` (both sides made to share what they do not); and
//! `service`: streaming itself as a long-lived service (`tandem run`, the Windows service).

pub mod check;
pub mod dead_letters;
pub mod reconcile;
pub mod service;
