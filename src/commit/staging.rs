//! The staging lifecycle, the same for every direction: session temp tables created once per
//! connection, emptied before a table's first use in a transaction, given their space back after many
//! rows (temp tables are never vacuumed: DELETE leaves dead rows every later statement reads again),
//! and the COPYs that fill them.

use std::collections::BTreeMap;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, pin_mut};
use tokio_postgres::{Client, CopyInSink, Statement};

use crate::change::Side;
use crate::db::{Context, DbError};

/// After this many rows staged through a table since it was last truncated, it is truncated again.
const TRUNCATE_AFTER: u64 = 50_000;

/// Where a COPY of the reverse direction's rows goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dest {
    /// Straight into the target table (COPY of its own columns): new rows of a table whose rows
    /// can be told apart on the desktop (a unique index on the desktop key, or a cloud-key table), while
    /// nothing else of that table is staged in the group. A row the desktop refuses (a key it already
    /// holds, a constraint) fails the COPY; the group is then received again with everything staged.
    Direct,
    /// Into the table's staging table, applied set-based at the end of the batch.
    Staging,
}

/// Where [`StagingTables::send`] sends rows.
pub struct CopyInto<'a> {
    pub table: usize,
    pub dest: Dest,
    /// The prepared `COPY ... FROM STDIN`.
    pub statement: &'a Statement,
    /// What the COPY does, for errors (called when it starts).
    pub what: &'a (dyn Fn() -> String + Sync),
}

/// One configured table's staging tables.
#[derive(Debug, Clone)]
struct TableStaging {
    /// `CREATE TEMP TABLE IF NOT EXISTS ...` of all of them.
    create: String,
    /// Their names (`pg_temp....`).
    names: Vec<String>,
    since_truncate: u64,
}

/// A COPY in progress on the connection (one at a time): its table, destination and sink. Kept open
/// while that table's rows keep coming, so the connection sends them while the source is read.
struct OpenCopy {
    table: usize,
    dest: Dest,
    what: String,
    sink: Pin<Box<CopyInSink<Bytes>>>,
}

/// The staging tables of one connection, by mapping index, and what the open transaction put in them.
pub struct StagingTables {
    side: Side,
    tables: Vec<TableStaging>,
    /// Rows staged per table in the open transaction (a table is here once it was emptied for it).
    used: BTreeMap<usize, u64>,
    copy: Option<OpenCopy>,
    /// Rows written straight into target tables in the open transaction: sent, and confirmed by
    /// finished COPYs.
    direct_sent: u64,
    direct_written: u64,
    /// `direct_written` per table (by mapping index).
    direct_tables: Vec<(usize, u64)>,
}

impl std::fmt::Debug for StagingTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagingTables")
            .field("used", &self.used)
            .field("copying", &self.copy.as_ref().map(|c| (c.table, c.dest)))
            .field("direct_sent", &self.direct_sent)
            .finish()
    }
}

impl StagingTables {
    /// The staging tables of every configured table, in mapping order: their names and the SQL
    /// creating them.
    pub fn declared(side: Side, tables: impl IntoIterator<Item = (Vec<String>, String)>) -> Self {
        StagingTables {
            side,
            tables: tables
                .into_iter()
                .map(|(names, create)| TableStaging {
                    create,
                    names,
                    since_truncate: 0,
                })
                .collect(),
            used: BTreeMap::new(),
            copy: None,
            direct_sent: 0,
            direct_written: 0,
            direct_tables: Vec::new(),
        }
    }

    pub fn create_sql(&self) -> String {
        self.tables
            .iter()
            .map(|t| t.create.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The SQL to run before table `i` is staged into in the open transaction: nothing if it already
    /// was; otherwise emptying its staging tables (TRUNCATE after many rows, DELETE otherwise: TRUNCATE
    /// of a temp table costs a new file each time).
    pub fn first_use(&mut self, i: usize) -> String {
        if self.used.contains_key(&i) {
            return String::new();
        }
        self.used.insert(i, 0);
        let t = &mut self.tables[i];
        if t.since_truncate > TRUNCATE_AFTER {
            t.since_truncate = 0;
            format!("TRUNCATE {};", t.names.join(", "))
        } else {
            t.names
                .iter()
                .map(|n| format!("DELETE FROM {n};"))
                .collect()
        }
    }

    /// Counts `rows` staged into table `i`.
    pub fn add(&mut self, i: usize, rows: u64) {
        *self.used.entry(i).or_default() += rows;
        self.tables[i].since_truncate += rows;
    }

    /// Rows staged into table `i` in the open transaction.
    pub fn staged(&self, i: usize) -> u64 {
        self.used.get(&i).copied().unwrap_or(0)
    }

    /// Whether table `i` was staged into in the open transaction.
    pub fn is_used(&self, i: usize) -> bool {
        self.used.contains_key(&i)
    }

    /// Whether the open transaction wrote rows straight into target tables: a row the target refused
    /// there can only be handled by bringing the batch again with everything staged.
    pub fn wrote_direct(&self) -> bool {
        self.direct_sent > 0 || self.copy.as_ref().is_some_and(|c| c.dest == Dest::Direct)
    }

    /// Rows written straight into target tables in the open transaction, confirmed: in all, and per
    /// table (by mapping index).
    pub fn take_direct_written(&mut self) -> (u64, Vec<(usize, u64)>) {
        self.direct_sent = 0;
        (
            std::mem::take(&mut self.direct_written),
            std::mem::take(&mut self.direct_tables),
        )
    }

    pub(super) fn end_transaction(&mut self) {
        self.used.clear();
        self.copy = None;
        self.direct_sent = 0;
        self.direct_written = 0;
        self.direct_tables.clear();
    }

    /// Sends `data` (COPY text, `rows` rows) through the COPY in progress if it goes where `into` says,
    /// else ending it and starting `into`'s. Returns
    /// without waiting for the target to take them. The transaction must be open and, for
    /// `Dest::Staging`, the table emptied ([`StagingTables::first_use`]).
    pub async fn send(
        &mut self,
        client: &Client,
        into: CopyInto<'_>,
        data: Vec<u8>,
        rows: u64,
    ) -> Result<(), DbError> {
        let CopyInto {
            table: i,
            dest,
            statement,
            what,
        } = into;
        if self.copying().is_some_and(|c| c != (i, dest)) {
            self.finish_copy().await.map_err(|(_, e)| e)?;
        }
        if self.copy.is_none() {
            let what = what();
            let sink = client
                .copy_in::<_, Bytes>(statement)
                .await
                .ctx(self.side, what.clone())?;
            self.copy = Some(OpenCopy {
                table: i,
                dest,
                what,
                sink: Box::pin(sink),
            });
        }
        let open = self.copy.as_mut().expect("opened above");
        open.sink
            .as_mut()
            .feed(Bytes::from(data))
            .await
            .ctx(self.side, open.what.clone())?;
        match dest {
            Dest::Staging => self.add(i, rows),
            Dest::Direct => self.direct_sent += rows,
        }
        Ok(())
    }

    /// Ends the COPY in progress, if any; `Err` names its table.
    pub async fn finish_copy(&mut self) -> Result<(), (usize, DbError)> {
        if let Some(mut open) = self.copy.take() {
            let n = open
                .sink
                .as_mut()
                .finish()
                .await
                .ctx(self.side, open.what.clone())
                .map_err(|e| (open.table, e))?;
            if open.dest == Dest::Direct {
                self.direct_written += n;
                self.direct_tables.push((open.table, n));
            }
        }
        Ok(())
    }

    /// The table and destination of the COPY in progress.
    pub fn copying(&self) -> Option<(usize, Dest)> {
        self.copy.as_ref().map(|c| (c.table, c.dest))
    }
}

/// Rows and bytes moved by one COPY.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    pub rows: u64,
    pub bytes: u64,
}

/// Pipes one binary COPY from the desktop (the batch snapshot) into the cloud (the batch transaction).
pub async fn pipe(
    desktop: &Client,
    out: &Statement,
    cloud: &Client,
    into: &Statement,
) -> Result<Staged, DbError> {
    let reading = "reading the batch (COPY TO STDOUT)";
    let staging = "staging the batch (COPY FROM STDIN)";
    let source = desktop.copy_out(out).await.ctx(Side::Desktop, reading)?;
    let sink = cloud
        .copy_in::<_, Bytes>(into)
        .await
        .ctx(Side::Cloud, staging)?;
    pin_mut!(source, sink);
    let mut bytes = 0;
    while let Some(chunk) = source.next().await {
        let chunk = chunk.ctx(Side::Desktop, reading)?;
        bytes += chunk.len() as u64;
        // feed, not send: send flushes every message, and COPY TO sends one message per row.
        sink.feed(chunk).await.ctx(Side::Cloud, staging)?;
    }
    let rows = sink.finish().await.ctx(Side::Cloud, staging)?;
    Ok(Staged { rows, bytes })
}
