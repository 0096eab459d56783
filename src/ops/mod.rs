//! What operators run beside streaming: `check` (is everything in place?) and `dead-letters` (the
//! rows a target refused: listed, retried).

pub mod check;
pub mod dead_letters;
