//! A plan's vocabulary: the direction, the statements a plan builder hands the engine (each over its
//! whole staging or a range of it, and how its rows count), the batch they run for, and the outcome.

use std::collections::BTreeMap;

use crate::change::Side;

/// Which way rows travel. The target keeps the direction's conflicts, dead letters and progress in its
/// own schema `tandem`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Desktop → cloud.
    Forward,
    /// Cloud → desktop.
    Reverse,
}

impl Direction {
    /// How the direction is written in `tandem.conflicts`, `tandem.dead_letters`, `tandem.progress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }

    /// The database written.
    pub fn target(self) -> Side {
        match self {
            Direction::Forward => Side::Cloud,
            Direction::Reverse => Side::Desktop,
        }
    }
}

/// What one batch did to the target.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub staged_rows: u64,
    /// Bytes of binary COPY data staged (keys and rows).
    pub staged_bytes: u64,
    pub written: u64,
    pub deleted: u64,
    pub conflicts: u64,
    pub dead_letters: u64,
}

impl BatchOutcome {
    pub fn add(&mut self, other: &BatchOutcome) {
        self.staged_rows += other.staged_rows;
        self.staged_bytes += other.staged_bytes;
        self.written += other.written;
        self.deleted += other.deleted;
        self.conflicts += other.conflicts;
        self.dead_letters += other.dead_letters;
    }

    pub(super) fn tally(&mut self, count: Count, affected: u64) {
        match count {
            Count::Written => self.written += affected,
            Count::Deleted => self.deleted += affected,
            Count::Conflicts => self.conflicts += affected,
            Count::DeadLetters => self.dead_letters += affected,
            Count::Nothing => {}
        }
    }
}

/// How a step's affected rows are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Nothing,
    Written,
    Deleted,
    Conflicts,
    DeadLetters,
}

/// How a step's parameters are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Params {
    None,
    /// `$1`: the table's name (as conflicts and dead letters record it).
    Table,
    /// `$1`: the table's name, `$2`: the batch.
    TableAndBatch,
    /// `$1, $2`: a range of staging row numbers; the fast path passes the whole range.
    Range,
    /// `$1`: the table's name, `$2`: the batch, `$3`: why the table is parked.
    TableBatchAndReason,
}

/// How to set a refused row of a ranged step aside.
#[derive(Debug, Clone, Copy)]
pub struct Isolate<'a> {
    /// The staging table whose row numbers (`_n`) the step ranges over.
    pub numbered: &'a str,
    /// `SELECT row_key_jsonb, row_image_jsonb FROM .. WHERE _n = $1`.
    pub image: &'a str,
}

/// One statement of a plan.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// The configured table it concerns (an index into the mapping).
    pub table: usize,
    /// What it does, for errors: "upsert", "reverse delete", ...
    pub what: &'a str,
    pub sql: &'a str,
    pub params: Params,
    pub count: Count,
    /// Ranged steps (`Params::Range`) the careful path can isolate refused rows in.
    pub isolate: Option<Isolate<'a>>,
}

impl<'a> Step<'a> {
    /// A statement over everything staged for its table at once.
    pub fn whole(table: usize, what: &'a str, sql: &'a str, params: Params, count: Count) -> Self {
        Step {
            table,
            what,
            sql,
            params,
            count,
            isolate: None,
        }
    }

    /// A statement over a range of staging rows, whose refused rows the careful path isolates.
    pub fn ranged(
        table: usize,
        what: &'a str,
        sql: &'a str,
        count: Count,
        isolate: Isolate<'a>,
    ) -> Self {
        Step {
            table,
            what,
            sql,
            params: Params::Range,
            count,
            isolate: Some(isolate),
        }
    }
}

/// The statements of one batch, for each path. The careful path may differ from the fast one (the
/// reverse direction's new rows go through the full reduction there), in the same order of concerns.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    pub fast: Vec<Step<'a>>,
    pub careful: Vec<Step<'a>>,
}

/// What identifies a batch in the target's tandem tables.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Each configured table's name as conflicts and dead letters record it (by mapping index).
    pub names: &'a [String],
    /// The batch's label (`forward 12..40`, `reverse 0/16B3748`): its own dead letters stay open.
    pub id: &'a str,
    /// Why each parked table of the batch is parked (by mapping index).
    pub reasons: &'a BTreeMap<usize, String>,
}

impl<'a> Batch<'a> {
    pub(super) fn reason(&self, table: usize) -> &'a str {
        self.reasons.get(&table).map_or("", String::as_str)
    }
}
