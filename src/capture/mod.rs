//! Seeing changes on each side: triggers into an outbox on the desktop ([`outbox`]), logical
//! replication on the cloud ([`logical`]).

pub mod logical;
pub mod outbox;
pub mod pgoutput;
mod relation_map;
pub mod rows;

/// The session setting tandem's own sessions set to `on`: the desktop capture trigger skips their writes
/// (nothing echoes back) and the cloud ownership trigger leaves their `source` as written.
pub const APPLYING_SETTING: &str = "tandem.applying";
