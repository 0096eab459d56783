//! tandem: two-way change-data-capture between a legacy desktop PostgreSQL and Supabase.
//!
//! The modules follow the data flow: [`capture`] sees changes on each side, [`change`] is the vocabulary
//! every stage speaks, [`config`] says which tables travel and how they map, [`catalog`] reads both live
//! schemas and checks the config against them, [`setup`] installs and removes what tandem needs in each
//! database.

pub mod apply;
pub mod capture;
pub mod catalog;
pub mod change;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod db;
pub mod deadletters;
pub mod demo;
pub mod pipeline;
pub mod retry;
pub mod sample;
pub mod setup;
pub mod transform;
