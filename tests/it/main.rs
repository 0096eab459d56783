//! Integration tests: tandem against real PostgreSQL clusters started for the run.

mod any_schema;
mod appliers;
mod check;
mod cli;
mod demo;
mod deploy;
mod forward;
mod generated;
mod generated_reconcile;
mod health;
mod init;
mod initial_sync;
mod live_sync;
mod lost_slot;
mod operator;
mod parking;
mod pgoutput;
mod property;
mod reconcile;
mod reverse;
mod reverse_retry;
mod seed;
mod support;
mod tls;
mod uninstall;
mod validation;
