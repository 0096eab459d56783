//! The conflicts of `tandem status`, read from both sides' `tandem.conflicts`: how many wait for a
//! person (open) and how many were settled, per kind; whether the waiting ones make the status
//! degraded (a pure function of the counts and `[status]`); and every record counted by table, kind
//! and outcome for the `tandem_conflicts_total` counters of `/metrics`.
//!
//! Those counters only grow (a Prometheus counter that went down would read as a restart): records
//! are never deleted, and each is counted under what it came to when it was recorded, which does not
//! change: the policy's outcome (`desktop`, `mobile`, `merged`), or `open` when it was left for a
//! person (policy `manual`; every record of the older shape, whose kind is `unknown`). A person's
//! later choice does not move it; `tandem_conflicts_open` is how many wait now.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;

use crate::change::Side;
use crate::config::StatusConfig;
use crate::db::{Context, DbError};

/// The kind of a record of the older shape (before conflicts had kinds).
pub const UNKNOWN: &str = "unknown";
/// The outcome of a conflict left for a person.
pub const OPEN: &str = "open";

/// Open and settled conflicts of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub open: i64,
    pub settled: i64,
}

/// `status.conflicts`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Conflicts {
    /// Conflicts waiting for a person, both sides, and where they are recorded.
    pub open: i64,
    pub forward: i64,
    pub reverse: i64,
    /// Conflicts settled, by a policy or a person, both sides.
    pub settled: i64,
    /// Open ones that have waited `[status] conflicts_warn_age_seconds` or longer.
    pub overdue: i64,
    /// How long the oldest open one has waited, in seconds (null when none is open).
    pub oldest_open_age_seconds: Option<f64>,
    /// Per kind (`update/update`, `update/delete`, `delete/update`, `insert/insert`; `unknown` for
    /// records of the older shape): open and settled.
    pub by_type: BTreeMap<String, Counts>,
    /// Every record, by (table, kind, outcome when recorded): the `/metrics` counters.
    #[serde(skip)]
    pub recorded: BTreeMap<(String, String, String), u64>,
}

/// One group of records of one side: where, which table and kind, whether open, the outcome when
/// recorded, how many, how many of them are overdue, and the age of the oldest.
#[derive(Debug, Clone)]
pub struct Group {
    pub direction: String,
    pub table: String,
    pub kind: String,
    pub open: bool,
    pub recorded_as: String,
    pub count: i64,
    pub overdue: i64,
    pub oldest_age_seconds: f64,
}

/// `$1`: the age from which an open conflict is overdue, in seconds. A record settled by a policy
/// has `resolved_by` `policy <name>`; any other was left for a person. The kind of a record of the
/// older shape is [`UNKNOWN`], the outcome of one left for a person [`OPEN`].
const GROUPS_SQL: &str = "SELECT direction, table_name, coalesce(kind, 'unknown'), resolved_at IS NULL,
        CASE WHEN resolved_by LIKE 'policy %' THEN coalesce(outcome, resolution, 'unknown') ELSE 'open' END,
        count(*)::int8,
        count(*) FILTER (WHERE detected_at <= now() - make_interval(secs => $1))::int8,
        EXTRACT(epoch FROM now() - min(detected_at))::float8
   FROM tandem.conflicts GROUP BY 1, 2, 3, 4, 5";

/// Reads one side's records into `groups`.
pub async fn read(
    client: &Client,
    side: Side,
    limits: &StatusConfig,
    groups: &mut Vec<Group>,
) -> Result<(), DbError> {
    let age = limits.conflicts_warn_age_seconds as f64;
    for r in client
        .query(GROUPS_SQL, &[&age])
        .await
        .ctx(side, "reading tandem.conflicts")?
    {
        groups.push(Group {
            direction: r.get(0),
            table: r.get(1),
            kind: r.get(2),
            open: r.get(3),
            recorded_as: r.get(4),
            count: r.get(5),
            overdue: r.get(6),
            oldest_age_seconds: r.get(7),
        });
    }
    Ok(())
}

impl Conflicts {
    /// Sums both sides' groups.
    pub fn of(groups: &[Group]) -> Conflicts {
        let mut c = Conflicts::default();
        for g in groups {
            let counts = c.by_type.entry(g.kind.clone()).or_default();
            if g.open {
                counts.open += g.count;
                c.open += g.count;
                if g.direction == "forward" {
                    c.forward += g.count;
                } else {
                    c.reverse += g.count;
                }
                c.overdue += g.overdue;
                c.oldest_open_age_seconds = Some(
                    c.oldest_open_age_seconds
                        .map_or(g.oldest_age_seconds, |a| a.max(g.oldest_age_seconds)),
                );
            } else {
                counts.settled += g.count;
                c.settled += g.count;
            }
            *c.recorded
                .entry((g.table.clone(), g.kind.clone(), g.recorded_as.clone()))
                .or_default() += g.count.max(0) as u64;
        }
        c
    }
}

/// Whether the conflicts waiting for a person make the status degraded: at least
/// `conflicts_warn_count` of them waited `conflicts_warn_age_seconds` or longer (`overdue`); a count
/// of 0 never does.
pub fn degrades(overdue: i64, limits: &StatusConfig) -> bool {
    limits.conflicts_warn_count > 0 && overdue.max(0) as u64 >= limits.conflicts_warn_count
}

/// The problem's message and fix, when [`degrades`].
pub fn problem(c: &Conflicts, limits: &StatusConfig) -> Option<(String, String)> {
    if !degrades(c.overdue, limits) {
        return None;
    }
    let message = format!(
        "{} conflict(s) wait for a person to choose, the oldest for {:.0} s (degraded from {} waiting {} s or longer)",
        c.overdue,
        c.oldest_open_age_seconds.unwrap_or_default(),
        limits.conflicts_warn_count,
        limits.conflicts_warn_age_seconds
    );
    let fix = "see them with `tandem conflicts list`, then choose for each: `tandem conflicts resolve ID --keep desktop|mobile`".to_string();
    Some((message, fix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(direction: &str, kind: &str, open: bool, recorded_as: &str, count: i64) -> Group {
        Group {
            direction: direction.into(),
            table: "public.item".into(),
            kind: kind.into(),
            open,
            recorded_as: recorded_as.into(),
            count,
            overdue: if open { count } else { 0 },
            oldest_age_seconds: if open { 60.0 } else { 3600.0 },
        }
    }

    fn limits(count: u64, age: u64) -> StatusConfig {
        StatusConfig {
            conflicts_warn_count: count,
            conflicts_warn_age_seconds: age,
            ..StatusConfig::default()
        }
    }

    #[test]
    fn both_sides_sum_by_kind_and_direction() {
        let c = Conflicts::of(&[
            group("reverse", "update/update", false, "mobile", 3),
            group("reverse", "update/update", true, OPEN, 1),
            group("reverse", "insert/insert", false, "merged", 2),
            group("forward", UNKNOWN, true, OPEN, 2),
            group("reverse", UNKNOWN, false, OPEN, 1),
        ]);
        assert_eq!((c.open, c.forward, c.reverse, c.settled), (3, 2, 1, 6));
        assert_eq!(c.overdue, 3);
        assert_eq!(c.oldest_open_age_seconds, Some(60.0));
        assert_eq!(
            c.by_type["update/update"],
            Counts {
                open: 1,
                settled: 3
            }
        );
        assert_eq!(
            c.by_type[UNKNOWN],
            Counts {
                open: 2,
                settled: 1
            }
        );
        let key = |kind: &str, outcome: &str| ("public.item".into(), kind.into(), outcome.into());
        assert_eq!(c.recorded[&key("update/update", "mobile")], 3);
        assert_eq!(c.recorded[&key("update/update", OPEN)], 1);
        // Left for a person, then resolved: still counted as open when recorded (the counter only grows).
        assert_eq!(c.recorded[&key(UNKNOWN, OPEN)], 3);
    }

    #[test]
    fn no_conflicts_no_oldest_age() {
        let c = Conflicts::of(&[group("reverse", "update/update", false, "desktop", 1)]);
        assert_eq!((c.open, c.overdue, c.oldest_open_age_seconds), (0, 0, None));
        assert!(problem(&c, &limits(1, 0)).is_none());
    }

    #[test]
    fn one_overdue_conflict_degrades_by_default() {
        assert!(degrades(1, &StatusConfig::default()));
        assert!(!degrades(0, &StatusConfig::default()));
    }

    #[test]
    fn the_count_threshold_is_respected() {
        assert!(!degrades(1, &limits(2, 0)));
        assert!(degrades(2, &limits(2, 0)));
    }

    #[test]
    fn a_count_of_zero_never_degrades() {
        assert!(!degrades(1_000, &limits(0, 0)));
    }

    #[test]
    fn the_problem_names_how_many_wait_the_oldest_and_the_fix() {
        let c = Conflicts::of(&[group("reverse", "update/delete", true, OPEN, 2)]);
        let (message, fix) = problem(&c, &limits(1, 30)).expect("degraded");
        assert_eq!(
            message,
            "2 conflict(s) wait for a person to choose, the oldest for 60 s (degraded from 1 waiting 30 s or longer)"
        );
        assert!(fix.contains("tandem conflicts list"), "{fix}");
        assert!(
            fix.contains("tandem conflicts resolve ID --keep desktop|mobile"),
            "{fix}"
        );
    }
}
