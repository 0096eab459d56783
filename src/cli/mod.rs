//! The command line: clap derive, whose doc comments are the help text; and how reports are shown
//! ([`report`]).

pub mod report;
pub mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// tandem keeps a legacy desktop PostgreSQL database and a Supabase database in step, both ways, in
/// near real time: desktop changes through triggers and an outbox, mobile rows through logical
/// replication.
#[derive(Debug, Parser)]
#[command(name = "tandem", version)]
pub struct Cli {
    /// The config file (TOML; see config/example.toml).
    #[arg(
        short,
        long,
        env = "TANDEM_CONFIG",
        default_value = "tandem.toml",
        global = true
    )]
    pub config: PathBuf,

    /// How log lines are written (to stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReconcileDirection {
    /// Desktop rows to the cloud.
    Forward,
    /// Mobile rows to the desktop.
    Reverse,
    Both,
}

#[derive(Debug, Subcommand)]
pub enum ConflictsAction {
    /// The open conflicts (the default; also `tandem conflicts [--all]`): id, table, row key, kind,
    /// policy, outcome or how to choose, the columns in conflict, each side's transaction, the three
    /// versions (base, desktop, mobile) and the result. With --all, the settled ones too.
    List {
        /// Also the settled ones (by a policy or a person).
        #[arg(long)]
        all: bool,
    },
    /// Resolve conflicts by applying the chosen side's row through the commit engine: `desktop`
    /// writes the desktop's row to the cloud as desktop-owned, `mobile` the cloud's mobile row to the
    /// desktop. Records who chose, and when.
    Resolve {
        /// Conflict ids, as `tandem conflicts list` shows them (f12: forward, r7: reverse).
        #[arg(required = true)]
        ids: Vec<String>,
        #[arg(long, value_enum)]
        keep: Keep,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Keep {
    Desktop,
    Mobile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install what tandem needs in both databases: on the desktop the outbox and the capture triggers,
    /// in the cloud the ownership triggers, replica identity, the publication and the slot. Running it
    /// again changes nothing unless the config changed.
    Init {
        /// Print what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check the config against both live schemas and that everything tandem needs is in place. Exits 0
    /// only when every check holds; each failure names its fix.
    Check {
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove everything `init` installed (triggers, schema tandem, publication, slot; replica identities
    /// restored) and nothing else.
    Uninstall {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Stream changes both ways until stopped (ctrl-c or SIGTERM let the batch in flight finish):
    /// desktop changes to the cloud, mobile-owned cloud rows to the desktop.
    Run {
        /// Apply everything committed before the start, then exit.
        #[arg(long)]
        once: bool,
        /// Serve Prometheus metrics at http://HOST:PORT/metrics and health at /healthz (overrides
        /// `[metrics] addr`).
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
    },
    /// Compare both sides table by table and write only what differs: desktop rows to the cloud
    /// (missing ones inserted, changed ones updated, desktop-owned rows the desktop no longer has
    /// deleted; mobile-owned rows never touched), mobile rows to the desktop. Open dead letters of both
    /// directions are retried first. Safe while `tandem run` streams: it applies the forward repairs.
    /// Exits 1 when a table could not be reconciled (parked, or its reconcile failed).
    Reconcile {
        /// Only this table (desktop or cloud name); repeat for more. Default: every configured table.
        #[arg(long = "table", value_name = "TABLE")]
        tables: Vec<String>,
        /// Which way to repair.
        #[arg(long, value_enum, default_value_t = ReconcileDirection::Both)]
        direction: ReconcileDirection,
        /// Count the differences per table; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// How both directions are doing, read from the two databases (works while `run` is stopped):
    /// outbox backlog and age, slot lag in bytes and seconds, wal_status, safe_wal_size, table
    /// states, conflicts (open and settled, per kind) and open dead letters, the last reconcile.
    /// Exits 0 healthy, 1 degraded (conflicts waiting for a person among others), 2 broken
    /// (thresholds in `[status]`).
    Status {
        /// Print it as JSON (every field is documented in the README, Operations).
        #[arg(long)]
        json: bool,
        /// Read it again every 2 seconds, redrawn in place, until ctrl-c.
        #[arg(long)]
        watch: bool,
    },
    /// The conflicts tandem recorded (a change not applied because the other side owns the row, or
    /// both sides changed it): list them, or resolve them by choosing a side.
    Conflicts {
        #[command(subcommand)]
        action: Option<ConflictsAction>,
        /// Without a subcommand: list the settled ones too (as `list --all`).
        #[arg(long)]
        all: bool,
        /// Print them as JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// List the rows a target refused (foreign key, NOT NULL, too long, ...), with the error; retry them.
    DeadLetters {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
        /// Include the resolved ones.
        #[arg(long)]
        all: bool,
        /// Retry the open dead letters: forward ones are queued again (the desktop's current row is
        /// applied anew), reverse ones re-sent from the cloud (its current row streams again).
        #[arg(long)]
        retry: bool,
    },
    /// Create the PowerCA sample tables (with --schema) and fill the desktop with a seeds-sized data set.
    Seed {
        /// Also create the sample tables: sql/powerca/desktop.sql on the desktop, cloud.sql in the cloud.
        #[arg(long)]
        schema: bool,
        /// Multiply the row counts (1.0: ~92,000 rows, as in the seeds).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// Run `tandem run` as a Windows service (on Linux: the systemd unit deploy/systemd/tandem.service).
    Service {
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// With no other setup: start two throwaway local PostgreSQL clusters, load the sample and show
    /// tandem at work on it.
    Demo {
        /// Multiply the sample's row counts.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Leave the clusters running at the end, print their URLs and a config file for them, and
        /// remove them on ctrl-c.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum ServiceAction {
    /// Register the Windows service `tandem` ("tandem replicator", automatic start, restarted when it
    /// fails) that runs this executable with `-c <this config, absolute> service run`. Run it from an
    /// administrator prompt, then `sc start tandem`.
    Install,
    /// Stop the Windows service (the batch in flight finishes) and delete it.
    Uninstall,
    /// What the Windows service manager starts; from a console use `tandem run`.
    #[command(hide = true)]
    Run,
}
