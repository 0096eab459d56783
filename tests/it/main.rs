//! Integration tests: tandem against real PostgreSQL clusters started for the run.

mod check;
mod cli;
mod forward;
mod init;
mod property;
mod seed;
mod support;
mod uninstall;
mod validation;
