//! Integration tests: tandem against real PostgreSQL clusters started for the run.

mod any_schema;
mod appliers;
mod check;
mod cli;
mod forward;
mod generated;
mod generated_reconcile;
mod init;
mod initial_sync;
mod live_sync;
mod lost_slot;
mod parking;
mod pgoutput;
mod property;
mod reconcile;
mod reverse;
mod reverse_retry;
mod seed;
mod support;
mod sync_whole;
mod tls;
mod uninstall;
mod validation;
