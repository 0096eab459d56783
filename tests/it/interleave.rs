//! Property: random interleavings of desktop and phone writes of the *same* rows, with random
//! catch-up points, end as the conflict rules say (conflicts by concurrency, issue 16).
//!
//! **Cases.** The schemas of [`crate::generated`] (1 or 2 tables of both kinds, every kind of type
//! with its edge values, hostile names), a random policy for the project and for some tables their
//! own. Up to 20 operations: first up to 4 inserts and a `run --once` (rows both sides share), then
//! inserts, updates and deletes by either side of random rows of one small key space (4 keys, or 2
//! scopes in a cloud-key table; at most 12 rows a table), and catch-up points: `run --once`, a
//! `reconcile` (both directions), or a streaming `run` in the background (two runtime workers) while
//! the next 1 to 4 operations happen, then stopped by its shutdown token and drained with `run
//! --once`. A write picks its row among what its side holds then, finds it by the text of every
//! column, and always changes it. At the end `run --once` repeats until one does nothing (5 at most).
//!
//! **Checked.**
//! - *Phones' writes arrive*: after every catch-up for the writes since the one before, and at the
//!   end for every row's last phone write. A phone write that is the last a phone made of its row (a
//!   desktop-key table's key, a cloud-key table's cloud row) is the `mobile_row` of a conflict
//!   recorded since its segment began (of that key); or else the cloud's row still holds it (nothing
//!   but a conflict may change a phone's version the desktop has not received; in a cloud-key table
//!   a row of the same content counts: equal rows are told apart by nothing the desktop has, so which
//!   of them a desktop edit changed is not known) and so does the
//!   desktop (that key holds that version, none for a delete; in a cloud-key table a row of that
//!   content). A phone's delete in a cloud-key table is told only where one write alone ever made the
//!   deleted content (and no conflict's result is it): the desktop no longer holds it, and if the
//!   desktop edited that row in the same segment, never through content a phone write made, a
//!   conflict recorded the delete (through a phone's row's content, which of the equal rows the
//!   desktop edited is not known). Not checked: a phone
//!   write followed, while a stream ran, by a desktop write of the same row (whether the desktop had
//!   received it then is a matter of timing), and at the end one the desktop wrote over in a later
//!   segment (having received it), and in a cloud-key table one whose version a phone's delete of
//!   another row in the same segment started from, and in a desktop-key table a phone's delete of a
//!   key it made in the segment while the desktop made it too (the known limitations below). It fails if a phone
//!   write is dropped or overwritten without a record, or undone later.
//! - *Desktop writes arrive*, the same way round, in desktop-key tables: the desktop's last write of
//!   a key in a segment is in the cloud after the catch-up (and at the end), or the `desktop_row` of
//!   a conflict of that key recorded since, or waits behind an open conflict of that key; unless a
//!   phone wrote the key after receiving it, or the desktop's edits of the segment ended at the
//!   version a phone's write of the segment started from (conflicts are found by content: an edit
//!   undone is no change), or both deleted the same version (a row a phone made of the key since is
//!   a new one). (A cloud-key table's desktop rows have no identity to
//!   follow; the two runs' comparison below covers them.)
//! - *Both sides settle*: after the last run, in every table under `latest`, `desktop` or `mobile`,
//!   both sides hold the same multiset of rows (each column's text under fixed settings) and no
//!   conflict is open. Under `manual`, every key whose rows differ has an open conflict of that key
//!   (desktop-key tables); every row on one side only is an open conflict's desktop or phone version,
//!   each counted once (cloud-key tables; a desktop version as the desktop's later edits made it).
//!   Never a dead letter (same types both sides, every value fits), never an open conflict in the
//!   cloud's `tandem.conflicts`.
//! - *Stream and reconcile agree*: when no write was made while a stream ran, the same writes run
//!   again on fresh databases with every catch-up a `reconcile` (then the same drain). That run must
//!   pass the checks above too, and end in the same state — both sides' rows, the cloud's `source` of
//!   each, and the open conflicts (kind, key, both versions) — in every table not under `latest`.
//!   Exact there, because which changes are conflicts, and what `desktop`, `mobile` and `manual` make
//!   of them, follows from the order of writes and catch-ups alone, which both runs share. Not under
//!   `latest`: it settles by the two writers' times, and a reconcile knows a phone's commit time only
//!   when the stream brings it (the rows may differ, both right). Not after a stream ran beside the
//!   writes: whether a write saw the other side's change there is timing, so what was a conflict in
//!   one run may be an ordinary edit in the other. Nor in a cloud-key table where two writes made
//!   rows of the same content: the desktop tells such rows apart by nothing, so a stream (one phone
//!   transaction at a time) and a scan (the rows as they are) may pair a phone's row with a different
//!   one of the equal desktop rows, each pairing by the rules; both runs still pass the checks above.
//!
//! Every case runs on fresh databases, twice when compared: 24 cases by default (about 3 minutes in a debug
//! build on 2 cores); more with `TANDEM_PROPTEST_CASES=500 cargo test --release --test it interleave`.
//! The tests after the property are failures it found, written out step by step; two, known
//! limitations, are ignored with their reasons, and the checks above leave their cases out: two equal
//! rows of a cloud-key scope, one changed and the other deleted by a phone, reaching the desktop in
//! two groups (a phone's write whose version a phone's delete of another row of the same segment
//! started from); and a desktop-key table's key a phone made and deleted while the desktop made it,
//! caught up by a reconcile (which sees no phone insert there; the two runs are not compared for that
//! table either).

use std::fmt;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use crate::generated::{self as g, MAX_COLUMNS};
use crate::support::TestDb;

mod checks;
mod harness;

use checks::{TableState, compare};
use harness::{Act, Harness, Policy, Row, Schema, Step, Write};

const MAX_ROWS: usize = 12;
const MAX_OPS: usize = 20;
/// At most this many of them are inserts before the first catch-up.
const SEED: usize = 4;
/// The keys (desktop-key tables) and scopes (cloud-key tables) both sides write: few, so they meet.
const KEYS: usize = 4;
const SCOPES: usize = 2;

/// What to do; the row, column, key and values are picked from what the writing side holds then.
#[derive(Debug, Clone)]
enum Op {
    Write {
        phone: bool,
        act: Act,
        table: Index,
        row: Index,
        col: Index,
        unit: Index,
        values: [Index; MAX_COLUMNS],
    },
    Once,
    Reconcile,
    /// A stream while the next this many steps happen (catch-ups among them are skipped).
    Stream(usize),
}

#[derive(Clone)]
struct Case {
    schema: Schema,
    /// Without it, a stream's catch-up is a `run --once`: the runs can be compared exactly.
    streaming: bool,
    ops: Vec<Op>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops: Vec<String> = self
            .ops
            .iter()
            .map(|o| match o {
                Op::Write {
                    phone, act, table, ..
                } => {
                    let who = ["desktop", "phone"][usize::from(*phone)];
                    format!("{who} {act:?} t{}", table.index(self.schema.tables.len()))
                }
                other => format!("{other:?}"),
            })
            .collect();
        let streaming = self.streaming;
        write!(
            f,
            "\n{}{}streaming: {streaming}\n{ops:?}",
            self.schema.ddl(true),
            self.schema.toml()
        )
    }
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        Just(Policy::Latest),
        Just(Policy::Desktop),
        Just(Policy::Mobile),
        Just(Policy::Manual)
    ]
}

fn write(act: impl Strategy<Value = Act>) -> impl Strategy<Value = Op> {
    (
        any::<bool>(),
        act,
        any::<[Index; 4]>(),
        any::<[Index; MAX_COLUMNS]>(),
    )
        .prop_map(|(phone, act, [table, row, col, unit], values)| Op::Write {
            phone,
            act,
            table,
            row,
            col,
            unit,
            values,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let act = prop_oneof![
        3 => Just(Act::Insert),
        5 => Just(Act::Update),
        2 => Just(Act::Delete)
    ];
    prop_oneof![
        12 => write(act),
        2 => Just(Op::Once),
        2 => Just(Op::Reconcile),
        2 => (1..=4usize).prop_map(Op::Stream),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let tables = prop::collection::vec(g::table(), 1..=2);
    let overrides = prop::collection::vec(prop::option::weighted(0.25, policy()), 2);
    // Rows both sides have before the interleaving begins: inserts, then a catch-up.
    let seed = prop::collection::vec(write(Just(Act::Insert)), 0..=SEED);
    let rest = prop::collection::vec(op(), MAX_OPS / 2..=MAX_OPS - SEED - 1);
    let ops = (seed, rest).prop_map(|(mut seed, ops)| {
        seed.push(Op::Once);
        seed.extend(ops);
        seed
    });
    (
        tables,
        any::<bool>(),
        policy(),
        overrides,
        any::<bool>(),
        ops,
    )
        .prop_map(
            |(mut tables, same_name, policy, mut overrides, streaming, ops)| {
                if same_name && tables.len() > 1 {
                    tables[1].name = tables[0].name;
                }
                // The same name twice in one schema: the later table moves to the next schema.
                for i in 1..tables.len() {
                    let at = |t: &g::Table| (t.schema, t.name);
                    while tables[..i].iter().any(|t| at(t) == at(&tables[i])) {
                        let s = g::SCHEMAS.iter().position(|s| *s == tables[i].schema);
                        tables[i].schema = g::SCHEMAS[(s.unwrap() + 1) % g::SCHEMAS.len()];
                    }
                }
                overrides.truncate(tables.len());
                Case {
                    schema: Schema {
                        tables,
                        policy,
                        overrides,
                    },
                    streaming,
                    ops,
                }
            },
        )
}

/// The write `op` makes on what its side holds now; `None` when there is nothing to make it on.
async fn resolve(h: &Harness<'_>, op: &Op) -> Result<Option<Write>, String> {
    let Op::Write {
        phone,
        act,
        table,
        row,
        col,
        unit,
        values,
    } = op
    else {
        return Ok(None);
    };
    let t = table.index(h.schema.tables.len());
    let tb = &h.schema.tables[t];
    let rows = h.rows(*phone, t, "").await?;
    let literals = |vals: &[Option<usize>]| -> Vec<String> {
        (0..vals.len()).map(|c| tb.literal(c, vals[c])).collect()
    };
    let write = |row: Vec<String>, set| Write {
        phone: *phone,
        table: t,
        act: *act,
        row,
        set,
    };
    if *act == Act::Insert {
        if rows.len() >= MAX_ROWS {
            return Ok(None);
        }
        let mut held = Vec::new();
        for r in &rows {
            held.push(tb.unit(&h.vals(t, r)?));
        }
        let (scoped, pool) = match tb.cloud_key {
            Some(_) => (true, SCOPES),
            None => (false, KEYS),
        };
        let free = (0..tb.units().min(pool)).filter(|u| scoped || !held.contains(u));
        let Some(u) = g::pick(free.collect(), *unit) else {
            return Ok(None);
        };
        let mut vals = tb.decode(u);
        vals.extend((tb.ident..tb.cols.len()).map(|c| tb.value(c, values[c])));
        return Ok(Some(write(literals(&vals), None)));
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let texts = &rows[row.index(rows.len())];
    let vals = h.vals(t, texts)?;
    let set = match act {
        Act::Update => {
            let others = tb.cols.len() - tb.ident;
            if others == 0 {
                return Ok(None);
            }
            // Another value than the row's: every update changes the row.
            let c = tb.ident + col.index(others);
            let n = tb.edges(c).len();
            let now = vals[c].unwrap_or(n);
            let j = values[c].index(n);
            let j = if j >= now { j + 1 } else { j };
            Some((c, tb.literal(c, (j < n).then_some(j))))
        }
        _ => None,
    };
    Ok(Some(write(literals(&vals), set)))
}

/// How a run of an interleaving ended.
struct Ran {
    steps: Vec<Step>,
    state: Vec<TableState>,
    streamed: bool,
    log: Vec<String>,
    /// Per table: a cloud-key table in which two writes made rows of the same content, or a key a
    /// phone made and deleted while the desktop made it (see `Harness::made_on_both`).
    twins: Vec<bool>,
}

/// The checks at the end of a run.
async fn finish(mut h: Harness<'_>) -> Result<Ran, String> {
    h.drain().await?;
    let mut problems = h.phone_writes_arrived(None).await?;
    problems.extend(h.desktop_writes_arrived(None).await?);
    problems.extend(h.settled().await?);
    if !problems.is_empty() {
        return Err(h.report(&problems.join("\n")));
    }
    let twins = (0..h.schema.tables.len())
        .map(|t| {
            let made: Vec<&Row> = h
                .written
                .iter()
                .filter(|w| w.table == t)
                .filter_map(|w| w.new.as_ref())
                .collect();
            (h.schema.tables[t].cloud_key.is_some()
                && made.iter().enumerate().any(|(i, r)| made[..i].contains(r)))
                || h.written
                    .iter()
                    .any(|w| w.table == t && h.made_on_both(t, w))
        })
        .collect();
    Ok(Ran {
        twins,
        state: h.state().await?,
        steps: std::mem::take(&mut h.steps),
        streamed: h.streamed,
        log: std::mem::take(&mut h.log),
    })
}

/// `case` as generated.
async fn generated(db: &TestDb, case: &Case) -> Result<Ran, String> {
    let mut h = Harness::new(db, &case.schema).await?;
    let mut streaming = 0;
    for op in &case.ops {
        let step = match op {
            Op::Write { .. } => resolve(&h, op).await?.map(Step::Write),
            _ if streaming > 0 => None,
            Op::Once => Some(Step::Once),
            Op::Reconcile => Some(Step::Reconcile),
            Op::Stream(_) if !case.streaming => Some(Step::Once),
            Op::Stream(n) => {
                streaming = *n + 1;
                Some(Step::Stream)
            }
        };
        if let Some(step) = step {
            h.step(step).await?;
        }
        if streaming > 0 {
            streaming -= 1;
            if streaming == 0 {
                h.step(Step::Stop).await?;
            }
        }
    }
    finish(h).await
}

/// The same writes as `steps`, every catch-up a `reconcile`.
async fn by_reconcile(db: &TestDb, schema: &Schema, steps: &[Step]) -> Result<Ran, String> {
    let mut h = Harness::new(db, schema).await?;
    for step in steps {
        match step {
            Step::Write(w) => h.step(Step::Write(w.clone())).await?,
            _ => h.step(Step::Reconcile).await?,
        }
    }
    finish(h).await
}

/// `run` on fresh databases, dropped after.
async fn fresh(run: impl AsyncFnOnce(&TestDb) -> Result<Ran, String>) -> Result<Ran, String> {
    let db = TestDb::new().await;
    let ran = run(&db).await;
    let removed = g::remove(db).await;
    let ran = ran?;
    removed.map(|()| ran)
}

/// Runs `steps` (or `case`), then the same writes with every catch-up a reconcile, and compares.
async fn both_ways(schema: &Schema, first: Result<Ran, String>) -> Result<(), String> {
    let a = first?;
    if a.streamed {
        return Ok(());
    }
    let b = fresh(async |db| by_reconcile(db, schema, &a.steps).await)
        .await
        .map_err(|e| format!("with every catch-up a reconcile: {e}"))?;
    let mut problems = Vec::new();
    for (t, table) in schema.tables.iter().enumerate() {
        if schema.policy(t) == Policy::Latest || a.twins[t] || b.twins[t] {
            continue;
        }
        problems.extend(compare(&table.qualified(), &a.state[t], &b.state[t]));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let steps = |log: &[String]| -> String {
        let lines = log.iter().enumerate();
        lines.map(|(i, l)| format!("\n{:>3}. {l}", i + 1)).collect()
    };
    Err(format!(
        "{}\n\n-- cloud schema\n{}\n-- config\n{}\n-- as generated{}\n-- by reconcile{}",
        problems.join("\n"),
        schema.ddl(true),
        schema.toml(),
        steps(&a.log),
        steps(&b.log)
    ))
}

fn cases() -> u32 {
    let cases = std::env::var("TANDEM_PROPTEST_CASES").ok();
    cases.and_then(|v| v.parse().ok()).unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn interleaved_writes_of_the_same_rows_on_both_sides_end_as_the_conflict_rules_say(case in case()) {
        // Two workers: a stream runs beside the writes, not only while they wait.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let first = fresh(async |db| generated(db, &case).await).await;
            both_ways(&case.schema, first).await
        }).map_err(TestCaseError::fail)?;
    }
}

/// A regression test's table: `public.t (k int4, v text, w text)`, keyed by `k`, or with a cloud key
/// and `k` as the scope.
fn plain(cloud_key: bool) -> g::Table {
    let ty = |name: &str| g::TYPES.iter().position(|t| t.0 == name).expect("a type");
    g::Table {
        schema: "public",
        name: "t",
        cols: vec![("k", ty("int4")), ("v", ty("text")), ("w", ty("text"))],
        ident: 1,
        cloud_key: cloud_key.then_some("id"),
    }
}

/// A write of table 0 by a phone or the desktop: `row` the values (SQL) inserted, or of the row
/// changed; `set` an update's column and value.
fn by(phone: bool, act: Act, row: &[&str], set: Option<(usize, &str)>) -> Step {
    Step::Write(Write {
        phone,
        table: 0,
        act,
        row: row.iter().map(|v| v.to_string()).collect(),
        set: set.map(|(c, v)| (c, v.to_string())),
    })
}

/// `steps` on fresh databases, checked as a generated case is, then compared with the same writes
/// caught up by reconcile.
async fn regression(table: g::Table, policy: Policy, steps: Vec<Step>) {
    let schema = Schema {
        tables: vec![table],
        policy,
        overrides: vec![None],
    };
    let ran = run_steps(&schema, steps).await;
    if let Err(e) = both_ways(&schema, ran).await {
        panic!("{e}");
    }
}

/// `steps` on fresh databases for `schema`, checked at the end as a generated case is.
async fn run_steps(schema: &Schema, steps: Vec<Step>) -> Result<Ran, String> {
    fresh(async |db| {
        let mut h = Harness::new(db, schema).await?;
        for step in steps {
            h.step(step).await?;
        }
        finish(h).await
    })
    .await
}

/// [`run_steps`] on `plain(cloud_key)` under `policy`, which must pass the checks.
async fn ended(cloud_key: bool, policy: Policy, steps: Vec<Step>) -> Ran {
    let schema = Schema {
        tables: vec![plain(cloud_key)],
        policy,
        overrides: vec![None],
    };
    run_steps(&schema, steps)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Found by the property (fixed): the desktop edits a row it received from a phone while the phone
/// deletes it; a reconcile catches up. The reconcile sent the desktop's row to the cloud as new
/// (`decide_key`: the desktop holds the key, the cloud does not, and no journal entry deletes the
/// version the desktop holds) and records no conflict: the phone's delete is lost, under every policy
/// (under `mobile` it should have won; under `manual` both versions should have stayed, the conflict
/// open). `run --once` records an `update/delete` conflict here.
#[tokio::test]
async fn a_phones_delete_of_a_row_the_desktop_edited_meanwhile_is_a_conflict_for_reconcile() {
    use Act::*;
    let steps = vec![
        by(true, Insert, &["1", "'a'", "NULL"], None),
        Step::Reconcile,
        by(false, Update, &["1", "'a'", "NULL"], Some((2, "'desk'"))),
        by(true, Delete, &["1", "'a'", "NULL"], None),
        Step::Reconcile,
    ];
    regression(plain(false), Policy::Manual, steps).await;
}

/// The same in a cloud-key table, under `mobile`: the phone's delete should win; the reconcile sends
/// the desktop's edit to the cloud as a new row instead (`decide_scope`: a desktop row left over that
/// no journal entry deletes is sent forward), and records nothing.
#[tokio::test]
async fn a_phones_delete_of_a_cloud_key_row_the_desktop_edited_meanwhile_is_a_conflict_for_reconcile()
 {
    use Act::*;
    let steps = vec![
        by(true, Insert, &["1", "'a'", "NULL"], None),
        Step::Reconcile,
        by(false, Update, &["1", "'a'", "NULL"], Some((2, "'desk'"))),
        by(true, Delete, &["1", "'a'", "NULL"], None),
        Step::Reconcile,
    ];
    regression(plain(true), Policy::Mobile, steps).await;
}
/// Found by the property (fixed): in a cloud-key table under `manual`, an open conflict held back
/// every later desktop change of its scope, not only its row: a row the desktop adds to the scope
/// never reaches the cloud while the conflict waits for a person, and no conflict names it. The
/// forward's hold (`commit/forward/sql/scoped.rs`, `hold`) takes a scope whole while it holds a phone
/// row the desktop may not change; a phone row in an open conflict stays so until it is resolved.
/// In a desktop-key table only the conflict's key waits.
#[tokio::test]
async fn an_open_conflict_in_a_cloud_key_table_holds_back_only_its_own_row() {
    use Act::*;
    let steps = vec![
        by(false, Insert, &["1", "'a'", "NULL"], None),
        Step::Once,
        by(true, Update, &["1", "'a'", "NULL"], Some((2, "'phone'"))),
        by(false, Update, &["1", "'a'", "NULL"], Some((2, "'desk'"))),
        Step::Once,
        by(false, Insert, &["1", "'x'", "NULL"], None),
        Step::Once,
    ];
    regression(plain(true), Policy::Manual, steps).await;
}
/// Found by the property (fixed): in a cloud-key table a phone adds a row equal to one of its rows the
/// desktop received, while the desktop has a change of the same scope waiting; a reconcile catches
/// up. It matched the desktop's copy with the new phone row (mobile rows first, by content), leaves
/// the received one unmatched and, the desktop's change pending, not to be brought back; the forward
/// replace then turns the new phone row into the desktop's edited row and deletes the old one. The
/// phone's new row is overwritten without a conflict: both sides end with one copy where the phone
/// made two. `run --once` brings the second copy to the desktop. Likely in
/// `commit/reconcile.rs` (`decide_scope`: the order rows of equal content are matched in).
#[tokio::test]
async fn a_phones_second_equal_row_survives_a_reconcile_while_the_desktop_edits_its_scope() {
    use Act::*;
    let a = || by(true, Insert, &["1", "'a'", "NULL"], None);
    let steps = vec![
        by(false, Insert, &["1", "'x'", "NULL"], None),
        a(),
        Step::Once,
        by(false, Update, &["1", "'x'", "NULL"], Some((2, "'y'"))),
        a(),
        Step::Reconcile,
    ];
    regression(plain(true), Policy::Desktop, steps).await;
}

/// The same before the table's first run: a reconcile catches up, then the first `run --once` syncs
/// the table (a reconcile leaves it `new`) and its sync overwrites the phone's second row alike.
#[tokio::test]
async fn a_phones_second_equal_row_survives_the_first_run_after_a_reconcile() {
    use Act::*;
    let a = || by(true, Insert, &["1", "'a'", "NULL"], None);
    let steps = vec![
        by(false, Insert, &["1", "'x'", "NULL"], None),
        a(),
        Step::Reconcile,
        by(false, Update, &["1", "'x'", "NULL"], Some((2, "'y'"))),
        a(),
        Step::Once,
    ];
    regression(plain(true), Policy::Desktop, steps).await;
}
/// Found by the property (fixed): the desktop deletes a row while a phone edits it, and a reconcile
/// catches up. It brought the phone's row to the desktop as new (`decide_key` in
/// `commit/reconcile.rs`: a phone's row the desktop lacks is brought, with no look at a desktop
/// delete of it waiting in the outbox; `decide_scope` likewise) and records no conflict: under
/// `desktop` the desktop's delete should have won, under `manual` stayed open. `run --once` records a
/// `delete/update` conflict and deletes the row on both sides.
#[tokio::test]
async fn a_desktop_delete_of_a_row_a_phone_edited_meanwhile_is_a_conflict_for_reconcile() {
    use Act::*;
    for cloud_key in [false, true] {
        let steps = vec![
            by(true, Insert, &["1", "'a'", "NULL"], None),
            Step::Once,
            by(false, Delete, &["1", "'a'", "NULL"], None),
            by(true, Update, &["1", "'a'", "NULL"], Some((2, "'phone'"))),
            Step::Reconcile,
        ];
        regression(plain(cloud_key), Policy::Desktop, steps).await;
    }
}

/// Found by the property (fixed): a phone makes a row and edits it, while the desktop adds a row of
/// the same scope; a reconcile catches up. It took the desktop's new row for the phone's row edited
/// on the desktop (both sides changed it: an `update/update` the `desktop` policy settled by writing
/// the desktop's row over the phone's), where the desktop never had the phone's row. Only INSERTs of
/// the scope wait on the desktop, so every row of it the desktop had received is still there: the
/// phone's is new to it (`commit::reconcile::Waiting`).
#[tokio::test]
async fn a_phones_new_row_edited_before_a_reconcile_is_not_taken_for_a_desktop_rows_copy() {
    use Act::*;
    for cloud_key in [false, true] {
        let steps = vec![
            Step::Once,
            by(true, Insert, &["1", "'a'", "NULL"], None),
            by(true, Update, &["1", "'a'", "NULL"], Some((2, "'phone'"))),
            by(false, Insert, &["1", "'x'", "NULL"], None),
            Step::Reconcile,
        ];
        regression(plain(cloud_key), Policy::Desktop, steps).await;
    }
}

/// Found by the property (fixed): a phone deletes a row the desktop has and makes its key again; a
/// reconcile catches up. It took the phone's new row for one made beside the desktop's
/// (`insert/insert`, settled under `desktop` by writing the desktop's old row over it), where the
/// stream applies the delete, then the new row.
#[tokio::test]
async fn a_phones_delete_and_new_row_of_a_key_reach_the_desktop_by_reconcile() {
    use Act::*;
    let steps = vec![
        by(false, Insert, &["1", "'a'", "NULL"], None),
        Step::Once,
        by(true, Delete, &["1", "'a'", "NULL"], None),
        by(true, Insert, &["1", "'b'", "NULL"], None),
        Step::Reconcile,
    ];
    regression(plain(false), Policy::Desktop, steps).await;
}

/// Found by the property, a known limitation: a phone changes one of two rows of a scope into a copy
/// of the other (which the desktop changed meanwhile), then deletes that other; `run --once` catches
/// up. The phone's version of the first row should end on both sides (under `mobile` the delete wins
/// over the desktop's edit). When the stream brings the phone's two transactions in one group it does
/// (a desktop row another change of the group holds is not a candidate for the delete); in two groups
/// the delete's old image matches the row the phone's change just made on the desktop, which is
/// deleted, and the forward then writes the desktop's edited row over the phone's. Equal rows of a
/// scope are told apart by content alone on the desktop: telling them apart needs a map of cloud keys
/// to desktop rows. The property's checks leave this case out (a phone's write whose version a phone's
/// delete of another row of the segment started from); this test states what should happen.
#[tokio::test]
#[ignore = "a known limitation: passes or fails by whether the phone's two transactions reach the desktop in one group (equal rows of a cloud-key scope are told apart by content alone)"]
async fn a_phones_change_of_a_row_into_its_deleted_twin_survives() {
    use Act::*;
    let steps = vec![
        by(false, Insert, &["1", "'a'", "'{}'"], None),
        Step::Once,
        by(false, Insert, &["1", "'b'", "'{}'"], None),
        Step::Once,
        by(false, Update, &["1", "'a'", "'{}'"], Some((2, "NULL"))),
        by(true, Update, &["1", "'b'", "'{}'"], Some((1, "'a'"))),
        by(true, Delete, &["1", "'a'", "'{}'"], None),
        Step::Once,
    ];
    let ran = ended(true, Policy::Mobile, steps).await;
    let phones = vec![vec![
        Some("1".to_string()),
        Some("a".to_string()),
        Some("{}".to_string()),
    ]];
    let state = &ran.state[0];
    assert_eq!(state.desktop, phones, "{}", ran.log.join("\n"));
    assert_eq!(state.cloud, phones, "{}", ran.log.join("\n"));
}

/// Found by the property (fixed): under `manual`, a phone changes a row twice while the desktop
/// changes it, then once more after the catch-up. The stream recorded one open conflict per phone
/// transaction (three records of one row, two of versions the phone itself replaced), where a
/// reconcile, seeing only the row as it is, recorded one; and the first run after the reconcile
/// brought the phone's later version to the desktop as a new row beside the conflict's (the row an
/// open conflict keeps was taken for a phone's row the desktop never had). A row waiting for a person
/// has one open conflict, brought up to date by the phone's later changes.
#[tokio::test]
async fn a_phones_later_change_of_a_row_in_an_open_conflict_updates_that_conflict() {
    use Act::*;
    for cloud_key in [true, false] {
        let steps = vec![
            by(false, Insert, &["1", "'c'", "NULL"], None),
            Step::Once,
            by(true, Update, &["1", "'c'", "NULL"], Some((2, "'p'"))),
            by(true, Update, &["1", "'c'", "'p'"], Some((1, "'a'"))),
            by(false, Update, &["1", "'c'", "NULL"], Some((2, "'d'"))),
            Step::Once,
            by(true, Update, &["1", "'a'", "'p'"], Some((1, "'c'"))),
        ];
        regression(plain(cloud_key), Policy::Manual, steps).await;
    }
}

/// Found by the property: the desktop edits a row and puts it back while a phone edits it and
/// deletes it. Conflicts are found by content: the desktop's row is the version the phone started
/// from, so the delete applies, with no conflict (the stream's net change has that first old image).
/// The check took the desktop's edit for a change (too strict, now an edit undone is none), and a
/// reconcile recorded an `update/delete` conflict: it compared the desktop's row with the delete's
/// old image only, not with the version the phone's changes started from.
#[tokio::test]
async fn a_desktop_edit_undone_before_a_phones_delete_arrives_is_no_conflict() {
    use Act::*;
    for policy in [Policy::Manual, Policy::Desktop] {
        let steps = vec![
            by(false, Insert, &["1", "'a'", "NULL"], None),
            Step::Once,
            by(true, Update, &["1", "'a'", "NULL"], Some((1, "'b'"))),
            by(true, Delete, &["1", "'b'", "NULL"], None),
            by(false, Update, &["1", "'a'", "NULL"], Some((2, "'x'"))),
            by(false, Update, &["1", "'a'", "'x'"], Some((2, "NULL"))),
            Step::Once,
        ];
        regression(plain(false), policy, steps).await;
    }
}

/// Found by the property (fixed): in a cloud-key table a phone makes a row and edits it while the
/// desktop edits another row of the scope; a reconcile catches up. It sees the phone's row with an
/// edit the desktop has not received (not its insert), finds no desktop row holding the version it
/// started from, and took the row for one the desktop deleted: a `delete/update` conflict (under
/// `manual` held, under `desktop` deleted in the cloud), where the stream brings the new row. A
/// `delete/update` needs a delete of the scope waiting in the outbox.
#[tokio::test]
async fn a_phones_new_and_edited_row_is_not_a_conflict_for_reconcile_beside_a_desktop_edit() {
    use Act::*;
    for policy in [Policy::Manual, Policy::Desktop] {
        let steps = vec![
            by(false, Insert, &["1", "'x'", "NULL"], None),
            Step::Once,
            by(false, Update, &["1", "'x'", "NULL"], Some((2, "'d'"))),
            by(true, Insert, &["1", "'p'", "NULL"], None),
            by(true, Update, &["1", "'p'", "NULL"], Some((2, "'q'"))),
            Step::Once,
        ];
        regression(plain(true), policy, steps).await;
    }
}

/// Found by the property (fixed): a phone makes a key and deletes it, unseen, while the desktop makes
/// the same key with the same content. Rows equal on both sides are one version made on both: the
/// phone's delete is of the row the desktop holds, and applies. The stream decided by how the phone's
/// two transactions were grouped: in two groups so (the insert taken for the desktop's row, then the
/// delete of it), in one an `update/delete` conflict (the net delete had no old image), holding the
/// desktop's row back under `manual`; a reconcile deletes it. A net change of a row made and deleted
/// in one group keeps its delete's old image.
#[tokio::test]
async fn a_row_a_phone_made_and_deleted_unseen_deletes_the_desktops_equal_row_however_grouped() {
    use Act::*;
    for policy in [Policy::Manual, Policy::Mobile] {
        let steps = vec![
            by(false, Insert, &["1", "'a'", "NULL"], None),
            Step::Once,
            by(true, Insert, &["2", "'b'", "NULL"], None),
            by(true, Delete, &["2", "'b'", "NULL"], None),
            by(false, Insert, &["2", "'b'", "NULL"], None),
            Step::Once,
        ];
        regression(plain(false), policy, steps).await;
    }
}

/// Found by the property (fixed): a phone deletes a row and makes its key again while the desktop
/// deletes the row. Both deleted the row; the phone's new one is new for the desktop. The stream
/// decided by how the phone's two transactions were grouped: in two groups so, in one a
/// `delete/update` conflict (its net change replaced the version both had); a reconcile brought the
/// row. A net change of a key deleted and made again is `_remade`: a new row where the desktop lacks
/// the key.
#[tokio::test]
async fn a_phones_delete_and_new_row_of_a_key_the_desktop_deleted_is_a_new_row_however_grouped() {
    use Act::*;
    for policy in [Policy::Manual, Policy::Desktop] {
        let steps = vec![
            by(false, Insert, &["1", "'a'", "NULL"], None),
            Step::Once,
            by(true, Delete, &["1", "'a'", "NULL"], None),
            by(true, Insert, &["1", "'b'", "NULL"], None),
            by(false, Delete, &["1", "'a'", "NULL"], None),
            Step::Once,
        ];
        regression(plain(false), policy, steps).await;
    }
}

/// Found by the property (fixed): under `manual` a phone edits and deletes a row the desktop edits;
/// a reconcile records the `update/delete` conflict. The first run after only reconciles syncs the
/// table (a reconcile leaves it `new`), and its scan sent the desktop's row to the cloud over the
/// phone's delete while the conflict waited for a person. A key an open conflict keeps is the
/// person's: the scan moves nothing of it (a phone's later change goes through the reverse plan).
#[tokio::test]
async fn a_tables_first_sync_leaves_a_key_an_open_conflict_keeps_alone() {
    use Act::*;
    let steps = vec![
        by(false, Insert, &["1", "'a'", "NULL"], None),
        Step::Once,
        by(true, Update, &["1", "'a'", "NULL"], Some((2, "'p'"))),
        by(false, Update, &["1", "'a'", "NULL"], Some((2, "'d'"))),
        by(true, Delete, &["1", "'a'", "'p'"], None),
        Step::Reconcile,
    ];
    regression(plain(false), Policy::Manual, steps).await;
}

/// Found by the property (fixed): under `manual` a phone deletes a row the desktop edits (an open
/// `update/delete` conflict), then makes the key again. The stream brings the conflict up to date as
/// `insert/insert` (the phone's row is new: no old image); a reconcile brought it over the deleted
/// version's image, `update/update`. A reconcile takes a key made again after a journaled delete
/// for a new row too.
#[tokio::test]
async fn a_key_a_phone_makes_again_while_its_delete_waits_in_a_conflict_is_new_both_ways() {
    use Act::*;
    let steps = vec![
        by(true, Insert, &["1", "'a'", "NULL"], None),
        Step::Once,
        by(true, Delete, &["1", "'a'", "NULL"], None),
        by(false, Update, &["1", "'a'", "NULL"], Some((2, "'d'"))),
        Step::Reconcile,
        by(true, Insert, &["1", "'b'", "NULL"], None),
        Step::Once,
    ];
    regression(plain(false), Policy::Manual, steps).await;
}

/// Found by the property (fixed): in a cloud-key table a phone makes a row and deletes it while the
/// desktop edits a row of the scope into one like it (or equal to it); `run --once` catches up (the
/// phone's row comes and goes; the desktop's edit reaches the cloud), a reconcile did not. The
/// delete's row is not on the desktop, and the journal had no word of its insert: the reconcile took
/// the desktop's edited row for the phone's, changed on the desktop (an `update/delete` conflict,
/// under `mobile` deleting the desktop's edit), or, equal, for the phone's row itself (deleted, no
/// record). A phone's inserts into a cloud-key table are journaled: a row made after the last version
/// the desktop received is none of the desktop's.
#[tokio::test]
async fn a_phones_row_made_and_deleted_unseen_is_not_taken_for_a_desktop_row_by_reconcile() {
    use Act::*;
    for made in [["1", "'a'", "'q'"], ["1", "'a'", "'p'"]] {
        let steps = vec![
            by(false, Insert, &["1", "'x'", "'y'"], None),
            Step::Once,
            by(true, Insert, &made, None),
            by(true, Delete, &made, None),
            by(false, Update, &["1", "'x'", "'y'"], Some((1, "'a'"))),
            by(false, Update, &["1", "'a'", "'y'"], Some((2, "'p'"))),
            Step::Once,
        ];
        regression(plain(true), Policy::Mobile, steps).await;
    }
}

/// Found by the property (fixed): in a cloud-key table under `manual`, the desktop edits a row while a
/// phone edits it too and makes a new row of the scope, as like the desktop's edit as the row's old
/// version is. `run --once` records the `update/update` conflict (the phone's new row reaches the
/// desktop first, or in the same group); a reconcile brings the new row in the same plan as the edit,
/// counted the new row among the rows the desktop changed (cloud rows no desktop row matches), found
/// the desktop's edit no more like the old version than like it, and took the phone's edit for a row
/// new to the desktop: both versions on both sides, no record. The new versions of the plan's changes
/// are set aside, as the lost changes' were.
#[tokio::test]
async fn a_phones_new_row_beside_its_edit_of_a_row_the_desktop_edited_leaves_the_conflict_to_be_found()
 {
    use Act::*;
    let steps = vec![
        by(false, Insert, &["1", "'a'", "'x'"], None),
        Step::Once,
        by(false, Update, &["1", "'a'", "'x'"], Some((2, "'y'"))),
        by(true, Insert, &["1", "'q'", "'y'"], None),
        by(true, Update, &["1", "'a'", "'x'"], Some((2, "'p'"))),
        Step::Once,
    ];
    regression(plain(true), Policy::Manual, steps).await;
}

/// Found by the property, a known limitation: in a desktop-key table a phone makes a key and deletes
/// it while the desktop makes the same key (another row). The key was made on both sides without
/// either seeing the other: the stream records the conflict (the phone's net change deletes a row
/// the desktop holds another version of) and the policy settles it; under `mobile` the desktop's row
/// goes. A reconcile sees only the phone's delete (a desktop-key table's phone inserts are not
/// journaled) of a version the desktop never held, beside a key the desktop made since: it sends the
/// desktop's row, with no record. The property's checks leave this case out; this test states what
/// should happen.
#[tokio::test]
#[ignore = "a known limitation: a reconcile does not see a phone's insert into a desktop-key table, so a key a phone made and deleted while the desktop made it is not a conflict for it"]
async fn a_key_a_phone_made_and_deleted_while_the_desktop_made_it_is_a_conflict_for_reconcile() {
    use Act::*;
    let steps = vec![
        by(false, Insert, &["1", "'a'", "NULL"], None),
        Step::Once,
        by(false, Insert, &["2", "'d'", "NULL"], None),
        by(true, Insert, &["2", "'p'", "NULL"], None),
        by(true, Delete, &["2", "'p'", "NULL"], None),
        Step::Reconcile,
    ];
    let ran = ended(false, Policy::Mobile, steps).await;
    // The phone's version wins: the key is gone on both sides.
    let kept = vec![vec![Some("1".to_string()), Some("a".to_string()), None]];
    let state = &ran.state[0];
    assert_eq!(state.desktop, kept, "{}", ran.log.join("\n"));
    let mut cloud = kept.clone();
    cloud[0].push(Some("D".to_string()));
    assert_eq!(state.cloud, cloud, "{}", ran.log.join("\n"));
}

/// Found by the property in CI (fixed): in a cloud-key table under `manual`, the desktop edits a row
/// into a copy of another it then makes, while a phone deletes the row; the delete is a conflict
/// with the edit (open). The forward kept back every desktop row equal to the conflict's desktop
/// version, the new copy too, which then reached the cloud never and was named by no record. A
/// conflict keeps back one copy (`capture::outbox::not_kept`).
#[tokio::test]
async fn a_desktop_copy_of_a_rows_version_in_an_open_conflict_still_travels() {
    use Act::*;
    let steps = vec![
        by(false, Insert, &["1", "'y'", "NULL"], None),
        Step::Once,
        by(false, Update, &["1", "'y'", "NULL"], Some((1, "NULL"))),
        by(false, Insert, &["1", "NULL", "NULL"], None),
        by(true, Update, &["1", "'y'", "NULL"], Some((1, "NULL"))),
        by(true, Delete, &["1", "NULL", "NULL"], None),
        Step::Once,
        Step::Once,
    ];
    regression(plain(true), Policy::Manual, steps).await;
}

/// Found by the property in CI (fixed): under `manual`, both sides make a key (an open
/// `insert/insert`); the phone then changes its row twice while the desktop edits its own into the
/// phone's first version. The phone's change started from the version the desktop now holds, so it
/// applied as a sequential edit: the desktop's edit went unrecorded (the conflict still named its
/// older version), where a reconcile refreshed the conflict. A key with an open conflict waits for
/// a person; equal content is no sign the desktop received the phone's version
/// (`commit::reverse::sql::settle::kind`).
#[tokio::test]
async fn a_key_in_an_open_conflict_holds_a_phones_change_from_the_desktops_version() {
    use Act::*;
    let steps = vec![
        Step::Once,
        by(false, Insert, &["1", "'x'", "NULL"], None),
        by(true, Insert, &["1", "'p'", "NULL"], None),
        Step::Once,
        by(true, Update, &["1", "'p'", "NULL"], Some((1, "'q'"))),
        by(true, Update, &["1", "'q'", "NULL"], Some((1, "'r'"))),
        by(false, Update, &["1", "'x'", "NULL"], Some((1, "'p'"))),
        Step::Once,
    ];
    for ck in [false, true] {
        regression(plain(ck), Policy::Manual, steps.clone()).await;
    }
}

/// Found by the property, a known limitation of the same kind: a phone makes a row like the version
/// another row of its scope had before the phone edited it, while the desktop edited that row too;
/// `run --once` catches up. The phone's new row should end on both sides (and its edit meet the
/// desktop's, here to the same version). When the stream brings the phone's two transactions in one
/// group it does; in two, the edit's old image matches the row the first group just made on the
/// desktop, which takes the edit, and the forward then writes it over the phone's new row in the
/// cloud. The property's checks leave this case out (a phone's write whose version the phone's change
/// of another row of the segment started from); this test states what should happen.
#[tokio::test]
#[ignore = "a known limitation: passes or fails by whether the phone's two transactions reach the desktop in one group (equal rows of a cloud-key scope are told apart by content alone)"]
async fn a_phones_new_row_like_the_old_version_of_a_row_it_edits_survives() {
    use Act::*;
    let steps = vec![
        by(true, Insert, &["1", "'a'", "NULL"], None),
        Step::Once,
        by(false, Update, &["1", "'a'", "NULL"], Some((1, "'b'"))),
        by(true, Insert, &["1", "'a'", "NULL"], None),
        by(true, Update, &["1", "'a'", "NULL"], Some((1, "'b'"))),
        Step::Once,
    ];
    let ran = ended(true, Policy::Desktop, steps).await;
    let row = |v: &str| vec![Some("1".to_string()), Some(v.to_string()), None];
    let both = vec![row("a"), row("b")];
    let state = &ran.state[0];
    assert_eq!(state.desktop, both, "{}", ran.log.join("\n"));
    assert_eq!(state.cloud, both, "{}", ran.log.join("\n"));
}

/// Found by the property (the checks were wrong, tandem right): in a cloud-key table under `manual`,
/// the desktop makes a row and edits a phone's row into a copy of it, then deletes one of the two,
/// while the phone edits its row. The catch-up records `update/update` with the copy left as the
/// desktop's version; the checks followed the desktop's writes from that version on, through the
/// delete made before the conflict was recorded, and took the version for deleted. They now follow
/// only the desktop's writes from the segment that recorded the conflict on.
#[tokio::test]
async fn a_desktop_delete_of_one_of_two_equal_rows_before_a_conflict_leaves_the_conflicts_version()
{
    use Act::*;
    let steps = vec![
        by(true, Insert, &["1", "'z'", "NULL"], None),
        Step::Once,
        by(true, Update, &["1", "'z'", "NULL"], Some((1, "'o'"))),
        by(false, Insert, &["1", "'big'", "NULL"], None),
        by(false, Update, &["1", "'z'", "NULL"], Some((1, "'big'"))),
        by(false, Delete, &["1", "'big'", "NULL"], None),
        Step::Once,
        Step::Once,
    ];
    regression(plain(true), Policy::Manual, steps).await;
}
