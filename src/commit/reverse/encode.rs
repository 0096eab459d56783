//! Logical changes from the cloud, turned into COPY text for the desktop: a new row of a table the
//! desktop can check by key goes straight into that table ([`Dest::Direct`]); everything else goes to
//! the table's staging table ([`Dest::Staging`]).
//!
//! Each staged change of a mobile-owned row becomes one staged row, in the layout [`super::layout`]
//! declares: tandem's columns, then the columns that travel to the desktop, as the stream's text. Rows that are not mobile-owned are dropped here as a second line of
//! defence behind the publication's row filter. A claim (the ownership trigger's logical message when a
//! phone takes over or deletes a desktop-owned row) gives the old row that the stream itself omits.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::Value as Json;

use super::layout::{META, Meta};
use super::relation::RelationMap;
use crate::capture::logical::Claim;
use crate::change::{OldImage, RowImage, Value};
pub use crate::commit::Dest;
use crate::transform::{Kind, Mapping};

/// Rows of one table for one destination, as COPY text, waiting to be sent.
#[derive(Debug)]
pub struct Chunk {
    pub table: usize,
    pub dest: Dest,
    pub data: Vec<u8>,
    pub rows: u64,
}

#[derive(Debug, Default)]
struct Buffer {
    data: Vec<u8>,
    rows: u64,
}

/// Builds staged rows from the changes of the stream, per configured table.
#[derive(Debug)]
pub struct Encoder {
    seq: i64,
    buffers: HashMap<(usize, Dest), Buffer>,
    /// Claimed old rows waiting for the insert that follows them, per table.
    claims: HashMap<usize, VecDeque<String>>,
    /// Per table: how many columns travel back, and the cloud key's name (cloud-key tables).
    widths: Vec<usize>,
    cloud_keys: Vec<Option<String>>,
    /// Tables that staged more than new rows since `take_complex`: updates, deletes, claims, unchanged
    /// TOAST values. The others can skip the reduction to net changes.
    complex: HashSet<usize>,
    /// Per table: whether its new rows may go straight into the desktop table.
    direct: Vec<bool>,
    /// Per table: its place in parents-first order (direct rows of parents are sent first).
    rank: Vec<usize>,
    /// Tables that staged anything in the group: their later rows are staged too, so that what is
    /// staged is applied after what went straight in, in the stream's order.
    staged_in_group: HashSet<usize>,
    /// Everything is staged (a transaction received again after a direct write failed).
    careful: bool,
    /// The transaction being received, as its staged rows record it (COPY text of each field).
    transaction: Transaction,
}

/// The cloud transaction a staged change belongs to, as COPY text fields (`\N` when not known).
#[derive(Debug, Clone)]
struct Transaction {
    xid: Vec<u8>,
    at: Vec<u8>,
    lsn: Vec<u8>,
}

impl Default for Transaction {
    fn default() -> Self {
        Transaction {
            xid: b"\\N".to_vec(),
            at: b"\\N".to_vec(),
            lsn: b"\\N".to_vec(),
        }
    }
}

impl Encoder {
    pub fn new(mapping: &Mapping) -> Self {
        let mut rank = vec![0; mapping.tables.len()];
        for (position, &table) in mapping.parents_first.iter().enumerate() {
            rank[table] = position;
        }
        Encoder {
            seq: 0,
            buffers: HashMap::new(),
            claims: HashMap::new(),
            complex: HashSet::new(),
            direct: mapping
                .tables
                .iter()
                .map(|t| match &t.kind {
                    Kind::Key(_) => t.desktop_key_unique,
                    Kind::Scoped { .. } => true,
                })
                .collect(),
            rank,
            staged_in_group: HashSet::new(),
            careful: false,
            transaction: Transaction::default(),
            widths: mapping
                .tables
                .iter()
                .map(|t| t.reverse_columns.len())
                .collect(),
            cloud_keys: mapping
                .tables
                .iter()
                .map(|t| match &t.kind {
                    Kind::Scoped { cloud_key, .. } => Some(cloud_key.clone()),
                    Kind::Key(_) => None,
                })
                .collect(),
        }
    }

    pub fn staged_rows(&self) -> u64 {
        self.buffers.values().map(|s| s.rows).sum()
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffers.values().map(|s| s.data.len()).sum()
    }

    /// A cloud transaction begins: its id, its commit time (microseconds since 2000-01-01 UTC, as the
    /// protocol sends it) and its commit position, recorded with each change staged from it.
    pub fn begin(&mut self, xid: u32, commit_micros: i64, commit: crate::change::Lsn) {
        self.transaction = Transaction {
            xid: xid.to_string().into_bytes(),
            at: pg_timestamp(commit_micros).into_bytes(),
            lsn: commit.to_string().into_bytes(),
        };
    }

    /// Stages every row of the transactions that follow (`true`), or lets new rows go straight in.
    pub fn set_careful(&mut self, careful: bool) {
        self.careful = careful;
    }

    /// A parked table's rows are staged, never written straight in (they are set aside).
    pub fn park(&mut self, table: usize) {
        self.direct[table] = false;
    }

    /// Takes what is buffered: parents first, and per table its direct rows before its staged ones.
    pub fn take(&mut self) -> Vec<Chunk> {
        let mut chunks: Vec<Chunk> = self
            .buffers
            .drain()
            .map(|((table, dest), b)| Chunk {
                table,
                dest,
                data: b.data,
                rows: b.rows,
            })
            .collect();
        chunks.sort_by_key(|c| (self.rank[c.table], c.dest));
        chunks
    }

    /// At a group's end: the tables that staged more than new rows in it. The next group may send new
    /// rows straight in again.
    pub fn take_complex(&mut self) -> HashSet<usize> {
        self.staged_in_group.clear();
        std::mem::take(&mut self.complex)
    }

    /// At a transaction's end: claims no change followed belong to tables that do not travel back.
    pub fn end_transaction(&mut self) {
        self.claims.clear();
    }

    /// A claim on configured table `table`.
    pub fn claim(&mut self, table: usize, claim: Claim) {
        if claim.delete {
            let ck = self.cloud_keys[table]
                .as_ref()
                .and_then(|c| claim.old.get(c))
                .and_then(Json::as_str)
                .map(str::to_string);
            let old = Json::Object(claim.old).to_string();
            self.push(
                table,
                'D',
                &[],
                Some(&old),
                ck.as_deref().map(str::as_bytes),
                &[],
            );
        } else {
            self.claims
                .entry(table)
                .or_default()
                .push_back(Json::Object(claim.old).to_string());
        }
    }

    /// A change of a configured table. Returns false when it was dropped (not mobile-owned).
    pub fn insert(&mut self, map: &RelationMap, new: &RowImage) -> bool {
        if !map.is_mobile(new) {
            return false;
        }
        let old = self
            .claims
            .get_mut(&map.table)
            .and_then(VecDeque::pop_front);
        self.push_new(map, new, old.as_deref(), true);
        true
    }

    pub fn update(&mut self, map: &RelationMap, old: Option<&OldImage>, new: &RowImage) -> bool {
        if !map.is_mobile(new) {
            return false;
        }
        // An unchanged TOAST value is the old row's: with REPLICA IDENTITY FULL (which tandem sets) the
        // old row carries it inline. Taken from there, the change's version is whole: a later change in
        // the same group keeps it, where the desktop's value may be older still.
        let filled;
        let new = match old {
            Some(OldImage::Full(o)) if new.0.contains(&Value::UnchangedToast) => {
                filled = RowImage(
                    new.0
                        .iter()
                        .zip(o.0.iter().chain(std::iter::repeat(&Value::UnchangedToast)))
                        .map(|(n, o)| match (n, o) {
                            (Value::UnchangedToast, Value::Text(_) | Value::Null) => o.clone(),
                            _ => n.clone(),
                        })
                        .collect(),
                );
                &filled
            }
            _ => new,
        };
        let old = match old {
            Some(OldImage::Full(row)) | Some(OldImage::Key(row)) => Some(row),
            None => None,
        };
        match old {
            // A desktop key that moves: the old key is deleted, the new one is a new row.
            Some(o) if !map.key.is_empty() && map.key_of(o) != map.key_of(new) => {
                self.push_deleted(map, o);
                self.push_new(map, new, None, false);
            }
            Some(o) => {
                let json = map.json(o);
                self.push_new(map, new, Some(&json), false);
            }
            None => self.push_new(map, new, None, false),
        }
        true
    }

    pub fn delete(&mut self, map: &RelationMap, old: &OldImage) -> bool {
        let row = match old {
            OldImage::Full(row) | OldImage::Key(row) => row,
        };
        if !map.is_mobile(row) {
            return false;
        }
        self.push_deleted(map, row);
        true
    }

    fn push_deleted(&mut self, map: &RelationMap, old: &RowImage) {
        let json = map.json(old);
        let ck = map.text(old, map.cloud_key);
        self.push(map.table, 'D', &[], Some(&json), ck, &[]);
    }

    /// A row's new version; `inserted` when the stream sent it as an INSERT.
    fn push_new(&mut self, map: &RelationMap, new: &RowImage, old: Option<&str>, inserted: bool) {
        let mut unchanged = Vec::new();
        let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(map.columns.len());
        for (j, position) in map.columns.iter().enumerate() {
            match position.and_then(|p| new.0.get(p)) {
                Some(Value::Text(t)) => values.push(Some(t)),
                Some(Value::UnchangedToast) => {
                    unchanged.push(j + 1);
                    values.push(None);
                }
                Some(Value::Null) | None => values.push(None),
            }
        }
        let table = map.table;
        let direct = inserted
            && old.is_none()
            && unchanged.is_empty()
            && self.direct[table]
            && !self.careful
            && !self.staged_in_group.contains(&table);
        if direct {
            self.seq += 1;
            let buffer = self.buffers.entry((table, Dest::Direct)).or_default();
            for (j, v) in values.iter().enumerate() {
                if j > 0 {
                    buffer.data.push(b'\t');
                }
                field(&mut buffer.data, *v);
            }
            buffer.data.push(b'\n');
            buffer.rows += 1;
            return;
        }
        let ck = map.text(new, map.cloud_key);
        self.push(table, 'I', &unchanged, old, ck, &values);
    }

    fn push(
        &mut self,
        table: usize,
        op: char,
        unchanged: &[usize],
        old: Option<&str>,
        ck: Option<&[u8]>,
        values: &[Option<&[u8]>],
    ) {
        self.seq += 1;
        if op == 'D' || old.is_some() || !unchanged.is_empty() {
            self.complex.insert(table);
        }
        self.staged_in_group.insert(table);
        let width = self.widths[table];
        let seq = self.seq;
        let staging = self.buffers.entry((table, Dest::Staging)).or_default();
        let out = &mut staging.data;
        for (n, (meta, _, _)) in META.iter().enumerate() {
            if n > 0 {
                out.push(b'\t');
            }
            match meta {
                Meta::Seq => out.extend_from_slice(seq.to_string().as_bytes()),
                Meta::Op => out.push(op as u8),
                Meta::Unchanged if unchanged.is_empty() => out.extend_from_slice(b"\\N"),
                Meta::Unchanged => {
                    let positions: Vec<String> = unchanged.iter().map(usize::to_string).collect();
                    out.extend_from_slice(format!("{{{}}}", positions.join(",")).as_bytes());
                }
                Meta::Old => field(out, old.map(str::as_bytes)),
                Meta::CloudKey => field(out, ck),
                Meta::Xid => out.extend_from_slice(&self.transaction.xid),
                Meta::At => out.extend_from_slice(&self.transaction.at),
                Meta::Lsn => out.extend_from_slice(&self.transaction.lsn),
            }
        }
        if values.is_empty() {
            // A deleted row: its columns come from `_old`; one NULL per column.
            for _ in 0..width {
                out.extend_from_slice(b"\t\\N");
            }
        } else {
            for v in values {
                out.push(b'\t');
                field(out, *v);
            }
        }
        out.push(b'\n');
        staging.rows += 1;
    }
}

/// A protocol timestamp (microseconds since 2000-01-01 UTC) as `timestamptz` input: seconds since the
/// Unix epoch with a fraction, in PostgreSQL's `epoch` form (`'epoch' + n seconds` is not input text),
/// so written as an ISO date computed here.
fn pg_timestamp(micros: i64) -> String {
    const PG_EPOCH_FROM_UNIX: i64 = 946_684_800;
    let total = micros.div_euclid(1_000_000) + PG_EPOCH_FROM_UNIX;
    let frac = micros.rem_euclid(1_000_000);
    let (days, secs) = (total.div_euclid(86_400), total.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{frac:06}+00",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => copy_escape(out, v),
        None => out.extend_from_slice(b"\\N"),
    }
}

/// COPY text escaping: backslash, tab, newline and carriage return.
pub fn copy_escape(out: &mut Vec<u8>, value: &[u8]) {
    // Runs of plain bytes are copied whole: most values have nothing to escape.
    let mut rest = value;
    while let Some(at) = rest
        .iter()
        .position(|&b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
    {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(match rest[at] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests;
