//! How a reconcile is shown: a progress bar and a table on a terminal, plain lines otherwise, JSON
//! for scripts.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::ops::reconcile::Report;
use crate::pipeline::sync::{TableReport, Watch};

/// Progress of a reconcile on stderr: a bar per table on a terminal, a line per table otherwise,
/// nothing when `quiet`.
pub struct Progress {
    bar: Mutex<Option<ProgressBar>>,
    terminal: bool,
    quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Progress {
            bar: Mutex::new(None),
            terminal: std::io::stderr().is_terminal(),
            quiet,
        }
    }
}

impl Watch for Progress {
    fn start(&self, table: &str, rows: Option<u64>) {
        if self.quiet || !self.terminal {
            return;
        }
        let bar = match rows.filter(|&n| n > 0) {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{prefix:>16} [{bar:30}] {pos}/{len} rows compared ({per_sec}, {eta} left)",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{prefix:>16} {spinner} {pos} rows compared")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_prefix(table.to_string());
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn advance(&self, rows: u64) {
        if let Ok(slot) = self.bar.lock()
            && let Some(bar) = slot.as_ref()
        {
            bar.inc(rows);
        }
    }

    fn finish(&self, report: &TableReport) {
        if let Ok(mut slot) = self.bar.lock()
            && let Some(bar) = slot.take()
        {
            bar.finish_and_clear();
        }
        if self.quiet || self.terminal {
            return;
        }
        eprintln!(
            "reconcile: {} compared in {:.2} s: forward {} to write, reverse {} to write",
            report.table,
            report.seconds,
            report.forward.written(),
            report.reverse.written()
        );
    }
}

/// The report as a table (terminal) or as one line per table and direction.
pub fn print(report: &Report) {
    let terminal = std::io::stdout().is_terminal();
    let verb = if report.dry_run {
        "would write"
    } else {
        "wrote"
    };
    if terminal {
        println!(
            "{:<24} {:<8} {:>9} {:>9} {:>9} {:>10} {:>9} {:>12} {:>8}",
            "table",
            "way",
            "inserted",
            "updated",
            "deleted",
            "unchanged",
            "conflicts",
            "dead letters",
            "seconds"
        );
    }
    for row in &report.rows {
        let c = &row.counts;
        if terminal {
            println!(
                "{:<24} {:<8} {:>9} {:>9} {:>9} {:>10} {:>9} {:>12} {:>8.2}",
                row.table,
                row.direction,
                c.inserted,
                c.updated,
                c.deleted,
                c.unchanged,
                c.conflicts,
                c.dead_letters,
                row.seconds
            );
        } else {
            println!(
                "reconcile: {} {}: inserted {} updated {} deleted {} unchanged {} conflicts {} dead_letters {} seconds {:.3}",
                row.table,
                row.direction,
                c.inserted,
                c.updated,
                c.deleted,
                c.unchanged,
                c.conflicts,
                c.dead_letters,
                row.seconds
            );
        }
    }
    for s in &report.skipped {
        println!("reconcile: {} not reconciled: {}", s.table, s.reason);
    }
    let retried = report.dead_letters_retried;
    if retried.forward + retried.reverse > 0 {
        println!(
            "reconcile: dead letters retried first: {} forward, {} reverse",
            retried.forward, retried.reverse
        );
    }
    println!(
        "reconcile: {verb} {} row(s) in {} table(s) in {:.2} s{}",
        report.written(),
        report.rows.len()
            / if report.direction == crate::ops::reconcile::Direction::Both {
                2
            } else {
                1
            },
        report.seconds,
        if report.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        }
    );
}
