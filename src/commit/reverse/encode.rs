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
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::change::{QualifiedName, Relation, RelationColumn};

    fn text(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// A mapping of one desktop-key table `t (id, note)` and its cloud relation `(id, note, source)`.
    fn setup() -> (Mapping, RelationMap) {
        let text = crate::catalog::ValueType {
            base: "text".into(),
            shaped: "text".into(),
            portable: true,
            equality: Some("pg_catalog".into()),
        };
        let col = |name: &str| crate::transform::MappedColumn {
            name: name.into(),
            desktop: text.clone(),
            cloud: text.clone(),
        };
        let table = crate::transform::TableMapping {
            table: crate::change::TableRef {
                desktop: QualifiedName::new("public", "t"),
                cloud: QualifiedName::new("public", "t"),
            },
            kind: Kind::Key(vec![col("id")]),
            columns: vec![col("id"), col("note")],
            lookups: Vec::new(),
            reverse_columns: vec![col("id"), col("note")],
            has_created_at: false,
            has_updated_at: false,
            reverse: true,
            desktop_key_indexed: true,
            desktop_key_unique: true,
        };
        let mapping = Mapping {
            tables: vec![table],
            parents_first: vec![0],
        };
        let relation = Relation {
            id: 7,
            name: QualifiedName::new("public", "t"),
            replica_identity: 'f',
            columns: ["id", "note", "source"]
                .iter()
                .map(|n| RelationColumn {
                    name: n.to_string(),
                    type_oid: 25,
                    type_modifier: -1,
                    key: true,
                })
                .collect(),
        };
        let map = RelationMap::new(&mapping, 0, &relation);
        (mapping, map)
    }

    /// The rows taken for table 0 and `dest`, one string each.
    fn taken(encoder: &mut Encoder, dest: Dest) -> Vec<String> {
        encoder
            .take()
            .into_iter()
            .filter(|c| c.table == 0 && c.dest == dest)
            .flat_map(|c| {
                String::from_utf8(c.data)
                    .unwrap()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn lines(encoder: &mut Encoder) -> Vec<String> {
        taken(encoder, Dest::Staging)
    }

    /// An encoder that stages everything (as after a refused direct write), so the staged format shows.
    fn careful(mapping: &Mapping) -> Encoder {
        let mut encoder = Encoder::new(mapping);
        encoder.set_careful(true);
        encoder
    }

    #[test]
    fn only_mobile_rows_are_staged() {
        let (mapping, map) = setup();
        let mut encoder = careful(&mapping);
        assert!(!encoder.insert(&map, &RowImage(vec![text("1"), text("a"), text("D")])));
        assert!(!encoder.insert(&map, &RowImage(vec![text("1"), text("a"), Value::Null])));
        assert!(encoder.insert(&map, &RowImage(vec![text("2"), text("b"), text("M")])));
        assert_eq!(lines(&mut encoder), vec!["1\tI\t\\N\t\\N\t\\N\t2\tb"]);
    }

    #[test]
    fn values_are_escaped_for_copy_and_unchanged_toast_comes_from_the_old_row() {
        let (mapping, map) = setup();
        let mut encoder = careful(&mapping);
        encoder.insert(
            &map,
            &RowImage(vec![text("1"), text("tab\there\nnew\\line"), text("M")]),
        );
        let old = OldImage::Full(RowImage(vec![text("1"), text("x"), text("M")]));
        encoder.update(
            &map,
            Some(&old),
            &RowImage(vec![text("1"), Value::UnchangedToast, text("M")]),
        );
        assert!(encoder.take_complex().contains(&0));
        let got = lines(&mut encoder);
        assert_eq!(got[0], "1\tI\t\\N\t\\N\t\\N\t1\ttab\\there\\nnew\\\\line");
        // The full old row holds the value the change did not carry.
        assert_eq!(
            got[1],
            "2\tI\t\\N\t{\"id\":\"1\",\"note\":\"x\",\"source\":\"M\"}\t\\N\t1\tx"
        );
        // Without it (a key-only old row), the column is listed: the desktop keeps its value.
        let key_only = OldImage::Key(RowImage(vec![text("1"), Value::Null, Value::Null]));
        encoder.update(
            &map,
            Some(&key_only),
            &RowImage(vec![text("1"), Value::UnchangedToast, text("M")]),
        );
        assert!(lines(&mut encoder)[0].starts_with("3\tI\t{2}\t"));
    }

    #[test]
    fn a_moved_key_is_a_delete_and_a_new_row() {
        let (mapping, map) = setup();
        let mut encoder = careful(&mapping);
        let old = OldImage::Full(RowImage(vec![text("1"), text("a"), text("M")]));
        encoder.update(
            &map,
            Some(&old),
            &RowImage(vec![text("2"), text("a"), text("M")]),
        );
        let got = lines(&mut encoder);
        assert_eq!(got.len(), 2);
        assert!(got[0].starts_with("1\tD\t\\N\t{\"id\":\"1\""), "{got:?}");
        assert_eq!(got[1], "2\tI\t\\N\t\\N\t\\N\t2\ta");
    }

    #[test]
    fn claims_give_the_old_row_to_the_insert_that_follows() {
        let (mapping, map) = setup();
        let mut encoder = careful(&mapping);
        let claim = Claim::parse(br#"{"op": "update", "schema": "public", "table": "t", "names": ["id", "note", "source"], "old": "(1,a,D)"}"#).unwrap();
        encoder.claim(0, claim);
        encoder.insert(&map, &RowImage(vec![text("1"), text("b"), text("M")]));
        let deleted = Claim::parse(br#"{"op": "delete", "schema": "public", "table": "t", "names": ["id", "note", "source"], "old": "(3,\"c d\",D)"}"#).unwrap();
        encoder.claim(0, deleted);
        let got = lines(&mut encoder);
        assert_eq!(
            got[0],
            "1\tI\t\\N\t{\"id\":\"1\",\"note\":\"a\",\"source\":\"D\"}\t\\N\t1\tb"
        );
        assert_eq!(
            got[1],
            "2\tD\t\\N\t{\"id\":\"3\",\"note\":\"c d\",\"source\":\"D\"}\t\\N\t\\N\t\\N"
        );
        assert!(Claim::parse(b"not json").is_none());
    }

    #[test]
    fn new_rows_go_straight_in_until_the_table_stages_something_in_the_group() {
        let (mapping, map) = setup();
        let mut encoder = Encoder::new(&mapping);
        encoder.insert(&map, &RowImage(vec![text("1"), text("a\tb"), text("M")]));
        encoder.insert(&map, &RowImage(vec![text("2"), Value::Null, text("M")]));
        assert_eq!(encoder.staged_rows(), 2);
        // Only the desktop's columns, escaped for COPY, in stream order.
        assert_eq!(
            taken(&mut encoder, Dest::Direct),
            vec!["1\ta\\tb", "2\t\\N"]
        );

        // An update stages; from then on the group's new rows of that table are staged too.
        let old = OldImage::Full(RowImage(vec![text("1"), text("a"), text("M")]));
        encoder.update(
            &map,
            Some(&old),
            &RowImage(vec![text("1"), text("c"), text("M")]),
        );
        encoder.insert(&map, &RowImage(vec![text("3"), text("d"), text("M")]));
        let chunks = encoder.take();
        assert!(chunks.iter().all(|c| c.dest == Dest::Staging), "{chunks:?}");
        assert_eq!(chunks.iter().map(|c| c.rows).sum::<u64>(), 2);

        // A new group starts direct again.
        assert!(encoder.take_complex().contains(&0));
        encoder.insert(&map, &RowImage(vec![text("4"), text("e"), text("M")]));
        assert_eq!(taken(&mut encoder, Dest::Direct), vec!["4\te"]);

        // A careful transaction stages even new rows; a claimed row is staged with its old image.
        encoder.set_careful(true);
        encoder.insert(&map, &RowImage(vec![text("5"), text("f"), text("M")]));
        assert_eq!(lines(&mut encoder).len(), 1);
        encoder.take_complex();
        encoder.set_careful(false);
        let claim = Claim::parse(br#"{"op": "update", "schema": "public", "table": "t", "old": {"id": 6, "note": "g", "source": "D"}}"#).unwrap();
        encoder.claim(0, claim);
        encoder.insert(&map, &RowImage(vec![text("6"), text("h"), text("M")]));
        assert_eq!(taken(&mut encoder, Dest::Staging).len(), 1);
    }

    #[test]
    fn a_table_without_a_unique_desktop_key_always_stages() {
        let (mut mapping, _) = setup();
        mapping.tables[0].desktop_key_unique = false;
        let (_, map) = setup();
        let mut encoder = Encoder::new(&mapping);
        encoder.insert(&map, &RowImage(vec![text("1"), text("a"), text("M")]));
        assert_eq!(lines(&mut encoder), vec!["1\tI\t\\N\t\\N\t\\N\t1\ta"]);
    }

    #[test]
    fn direct_rows_of_parents_are_taken_first() {
        let (mut mapping, map) = setup();
        let mut child = mapping.tables[0].clone();
        child.table.desktop = QualifiedName::new("public", "child");
        mapping.tables.push(child);
        // Table 1 is the parent.
        mapping.parents_first = vec![1, 0];
        let mut child_map = map.clone();
        child_map.table = 0;
        let mut parent_map = map;
        parent_map.table = 1;
        let mut encoder = Encoder::new(&mapping);
        encoder.insert(&child_map, &RowImage(vec![text("1"), text("a"), text("M")]));
        encoder.insert(
            &parent_map,
            &RowImage(vec![text("1"), text("b"), text("M")]),
        );
        let order: Vec<usize> = encoder.take().iter().map(|c| c.table).collect();
        assert_eq!(order, vec![1, 0]);
    }

    #[test]
    fn copy_escape_escapes_the_four_special_bytes_and_copies_the_rest() {
        let escaped = |v: &[u8]| {
            let mut out = b"x".to_vec();
            copy_escape(&mut out, v);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(escaped(b""), "x");
        assert_eq!(escaped("plain ünïcode".as_bytes()), "xplain ünïcode");
        assert_eq!(escaped(b"\\a\tb\nc\rd\\"), "x\\\\a\\tb\\nc\\rd\\\\");
        assert_eq!(escaped(b"\t\t"), "x\\t\\t");
    }
}
