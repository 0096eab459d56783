use bytes::Bytes;

use super::*;
use crate::change::{QualifiedName, Relation, RelationColumn};

fn text(s: &str) -> Value {
    Value::Text(Bytes::copy_from_slice(s.as_bytes()))
}

/// A mapping of one desktop-key table `t (id, note)` and its cloud relation `(id, note, source)`.
fn setup() -> (Mapping, RelationMap) {
    let col = crate::transform::testing::text;
    let mut table = crate::transform::testing::table(
        "t",
        Kind::Key(vec![col("id")]),
        vec![col("id"), col("note")],
    );
    table.has_created_at = false;
    table.has_updated_at = false;
    table.desktop_key_unique = true;
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
    assert_eq!(
        lines(&mut encoder),
        vec!["1\tI\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t2\tb"]
    );
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
    assert_eq!(
        got[0],
        "1\tI\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t1\ttab\\there\\nnew\\\\line"
    );
    // The full old row holds the value the change did not carry.
    assert_eq!(
        got[1],
        "2\tI\t\\N\t{\"id\":\"1\",\"note\":\"x\",\"source\":\"M\"}\t\\N\t\\N\t\\N\t\\N\t1\tx"
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
    assert_eq!(got[1], "2\tI\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t2\ta");
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
        "1\tI\t\\N\t{\"id\":\"1\",\"note\":\"a\",\"source\":\"D\"}\t\\N\t\\N\t\\N\t\\N\t1\tb"
    );
    assert_eq!(
        got[1],
        "2\tD\t\\N\t{\"id\":\"3\",\"note\":\"c d\",\"source\":\"D\"}\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N"
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
    assert_eq!(
        lines(&mut encoder),
        vec!["1\tI\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t1\ta"]
    );
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

#[test]
fn commit_times_are_written_as_utc_timestamps() {
    // 2000-01-01 00:00:00 UTC is the protocol's zero.
    assert_eq!(super::pg_timestamp(0), "2000-01-01 00:00:00.000000+00");
    assert_eq!(
        super::pg_timestamp(849_398_472_123_456),
        "2026-12-01 00:01:12.123456+00"
    );
    assert_eq!(super::pg_timestamp(-1), "1999-12-31 23:59:59.999999+00");
}
