//! `tandem status` for a person: a few aligned lines per direction, the tables that are not simply
//! streaming, and the problems with their fixes.

use std::fmt::Write as _;

use crate::ops::status::{Health, Status};

fn or_dash<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".to_string(), |v| v.to_string())
}

fn bytes(v: Option<i64>) -> String {
    match v {
        None => "-".into(),
        Some(b) if b.abs() >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) if b.abs() >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        Some(b) if b.abs() >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        Some(b) => format!("{b} B"),
    }
}

/// The status as text.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let health = match s.health {
        Health::Healthy => "healthy",
        Health::Degraded => "DEGRADED",
        Health::Broken => "BROKEN",
    };
    let _ = writeln!(o, "tandem status: {health}   (read at {})", s.read_at);
    let f = &s.forward;
    let _ = writeln!(
        o,
        "forward  desktop -> cloud   backlog {} row(s), oldest {:.0} s, last applied {}, applier {}",
        f.backlog_rows,
        f.oldest_age_seconds,
        or_dash(&f.last_applied_at),
        if f.applier_running {
            "running"
        } else {
            "stopped"
        }
    );
    let r = &s.reverse;
    let _ = writeln!(
        o,
        "reverse  cloud -> desktop   slot {} ({}, wal_status {}), lag {} / {}, retained WAL {}, safe WAL size {}",
        r.slot,
        if !r.slot_exists {
            "missing"
        } else if r.active {
            "active"
        } else {
            "inactive"
        },
        r.wal_status,
        bytes(r.slot_lag_bytes),
        r.lag_seconds
            .map_or("-".to_string(), |l| format!("{l:.1} s")),
        bytes(r.retained_wal_bytes),
        bytes(r.safe_wal_size)
    );
    let _ = writeln!(
        o,
        "                            last applied {} at {} (committed on the cloud {}), publication {}",
        or_dash(&r.last_applied_lsn),
        or_dash(&r.last_applied_at),
        or_dash(&r.last_commit_at),
        if r.publication_exists {
            "present"
        } else {
            "MISSING"
        }
    );
    let streaming = s.tables.iter().filter(|t| t.state == "streaming").count();
    let _ = writeln!(
        o,
        "tables   {} configured, {streaming} streaming; conflicts {} open, dead letters {} open",
        s.tables.len(),
        s.conflicts.open,
        s.dead_letters.open
    );
    let c = &s.conflicts;
    if c.open + c.settled > 0 {
        let by_type: Vec<String> = c
            .by_type
            .iter()
            .map(|(kind, n)| format!("{kind} {} open, {} settled", n.open, n.settled))
            .collect();
        let _ = write!(
            o,
            "conflicts {} open ({} forward, {} reverse), {} settled; {}",
            c.open,
            c.forward,
            c.reverse,
            c.settled,
            by_type.join("; ")
        );
        if let Some(age) = c.oldest_open_age_seconds {
            let _ = write!(o, "; the oldest open waits for {age:.0} s");
        }
        o.push('\n');
    }
    for t in &s.tables {
        if t.state == "streaming" && t.conflicts == 0 && t.dead_letters == 0 {
            continue;
        }
        let _ = write!(
            o,
            "  {:<24} {:<10} since {}, {} conflict(s), {} dead letter(s)",
            t.table,
            t.state,
            or_dash(&t.since),
            t.conflicts,
            t.dead_letters
        );
        if let Some(reason) = &t.reason {
            let _ = write!(
                o,
                "\n  {:<24} reason: {reason}; fix: {}",
                "",
                or_dash(&t.fix)
            );
        }
        o.push('\n');
    }
    match &s.last_reconcile {
        Some(l) => {
            let _ = writeln!(
                o,
                "reconcile last {} ({}{}), finished {}, {} row(s) written",
                l.started_at,
                l.trigger,
                if l.dry_run { ", dry run" } else { "" },
                l.finished_at,
                l.written
            );
        }
        None => {
            let _ = writeln!(o, "reconcile never run");
        }
    }
    for p in &s.problems {
        let level = match p.health {
            Health::Broken => "BROKEN",
            _ => "degraded",
        };
        let _ = writeln!(
            o,
            "[{level}] {}: {}\n    fix: {}",
            p.subject, p.message, p.fix
        );
    }
    o
}
