//! Sources only: where changes are read from. The desktop's outbox ([`outbox`]), the cloud's logical
//! replication stream ([`logical`], decoded by [`pgoutput`]), and the reconcile's table scan of both
//! sides ([`scan`]). What produces them (triggers, the
//! publication, the slot) is installed by [`crate::setup`].

pub mod logical;
pub mod outbox;
pub mod pgoutput;
pub mod scan;
