//! The forward statements as built: names, and the two forms of the write statements in the plans.

use std::collections::BTreeSet;

use super::*;
use crate::commit::Plan;
use crate::commit::forward::Forward;
use crate::transform::testing::{int, json, scoped, table};
use crate::transform::{Kind, LookupColumn, MappedColumn, Mapping};

#[test]
fn user_names_appear_only_quoted_and_never_as_staging_columns() {
    let hostile = ["c", "_n", "s\"x", "order"];
    let columns: Vec<MappedColumn> = hostile.iter().map(|n| json(n)).collect();
    let t = scoped("c", json("c"), columns);
    let sql = ForwardSql::build(&t, 0);
    assert!(
        sql.create.contains("c1 json, c2 json, c3 json, c4 json"),
        "{}",
        sql.create
    );
    // A scope without a btree equality is matched by its text.
    let (plan, _) = sql.plan.as_ref().unwrap();
    assert!(
        plan.contains("(c.\"c\")::text OPERATOR(pg_catalog.=) (k.c1)::text"),
        "{plan}"
    );
    assert!(
        sql.write.ranged.sql.contains("\"s\"\"x\""),
        "{}",
        sql.write.ranged.sql
    );
}

/// A desktop-key parent `p (id, name)` and a cloud-key child `t (job_id, name)` scoped by `job_id`
/// with a lookup column `client_id` from the parent.
fn mapping() -> Mapping {
    let parent = table(
        "p",
        Kind::Key(vec![int("id")]),
        vec![int("id"), json("name")],
    );
    let mut child = scoped("t", int("job_id"), vec![int("job_id"), json("name")]);
    child.lookups.push(LookupColumn {
        column: int("client_id"),
        from: 0,
        on: "job_id".into(),
    });
    Mapping {
        tables: vec![parent, child],
        parents_first: vec![0, 1],
    }
}

fn writes(sql: &ForwardSql) -> Vec<&Write> {
    [
        Some(&sql.delete),
        Some(&sql.write),
        sql.lookup_update.as_ref(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[test]
fn only_the_fast_writes_let_the_foreign_key_checks_reuse_their_plans() {
    let mapping = mapping();
    for (i, t) in mapping.tables.iter().enumerate() {
        let sql = ForwardSql::build(t, i);
        let writes = writes(&sql);
        assert_eq!(writes.len(), if i == 0 { 2 } else { 3 });
        for w in writes {
            assert_eq!(w.fast.matches(GENERIC_CHECKS).count(), 1, "{}", w.fast);
            assert!(
                !w.ranged.sql.contains("plan_cache_mode"),
                "{}",
                w.ranged.sql
            );
            // The same statement otherwise: the condition right after the range.
            let after = "BETWEEN $1 AND $2";
            assert_eq!(
                w.fast.replacen(&format!(" AND {GENERIC_CHECKS}"), "", 1),
                w.ranged.sql
            );
            assert!(
                w.fast.contains(&format!("{after} AND {GENERIC_CHECKS}")),
                "{}",
                w.fast
            );
        }
    }
}

fn sqls<'a>(plan: &'a Plan<'a>, fast: bool) -> Vec<&'a str> {
    let steps = if fast { &plan.fast } else { &plan.careful };
    steps.iter().map(|s| s.sql).collect()
}

#[test]
fn every_fast_write_is_followed_by_custom_plans_again_and_big_tables_are_analyzed() {
    let mapping = mapping();
    let forward = Forward::new(&mapping);
    let order = [0, 1];
    let none = BTreeSet::new();
    let plan = forward.plan(&order, &BTreeSet::from([1]));
    let fast = sqls(&plan, true);
    let switched: Vec<usize> = (0..fast.len())
        .filter(|&n| fast[n].contains(GENERIC_CHECKS))
        .collect();
    // Only the big table's: its delete, its write, its pairs' update, its lookup update.
    assert_eq!(switched.len(), 4, "{fast:#?}");
    for &n in &switched {
        assert_eq!(fast[n + 1], CUSTOM_PLANS, "step {n}: {fast:#?}");
    }
    assert_eq!(fast.iter().filter(|s| **s == CUSTOM_PLANS).count(), 4);
    // The careful path: the same steps without the switch and its reset.
    let careful = sqls(&plan, false);
    assert!(
        careful.iter().all(|s| !s.contains("plan_cache_mode")),
        "{careful:#?}"
    );
    assert_eq!(careful.len() + 4, fast.len());
    // The big child's match (filled before the plan, see `Forward::prepare`) is analyzed first,
    // before anything reads it.
    let child = &forward.sql[1];
    let analyze = child.analyze_plan.as_deref().unwrap();
    assert!(
        !fast.iter().any(|s| *s == child.plan.as_ref().unwrap().0),
        "{fast:#?}"
    );
    let paired = fast
        .iter()
        .position(|s| *s == child.pair.as_deref().unwrap());
    assert_eq!(
        fast.iter().position(|s| *s == analyze),
        paired.map(|m| m - 1)
    );
    // A small batch runs the careful path's statements on its fast path too: nothing more to send.
    let small = forward.plan(&order, &none);
    assert!(sqls(&small, true).iter().all(|s| !s.starts_with("ANALYZE")));
    assert_eq!(sqls(&small, true), sqls(&small, false));
}

#[test]
fn the_staging_analyze_reads_the_range_and_key_columns_only() {
    let mapping = mapping();
    let parent = ForwardSql::build(&mapping.tables[0], 0);
    assert_eq!(
        parent.analyze_staged,
        "ANALYZE pg_temp.tandem_s_0 (_n, c1), pg_temp.tandem_k_0"
    );
    assert!(parent.analyze_plan.is_none());
    let child = ForwardSql::build(&mapping.tables[1], 1);
    assert_eq!(
        child.analyze_staged,
        "ANALYZE pg_temp.tandem_s_1 (_n, c1), pg_temp.tandem_k_1"
    );
    assert_eq!(
        child.analyze_plan.as_deref(),
        Some("ANALYZE pg_temp.tandem_p_1")
    );
}
