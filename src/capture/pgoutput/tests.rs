//! Hand-built pgoutput messages, one builder call per wire field.

use super::*;

/// Builds a message field by field, big-endian like the server.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn tag(tag: u8) -> Msg {
        Msg(vec![tag])
    }
    fn u8(mut self, v: u8) -> Msg {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Msg {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Msg {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Msg {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn raw(mut self, v: &[u8]) -> Msg {
        self.0.extend_from_slice(v);
        self
    }
    /// A NUL-terminated string.
    fn str(self, v: &str) -> Msg {
        self.raw(v.as_bytes()).u8(0)
    }
    /// TupleData.
    fn tuple(self, values: &[Col]) -> Msg {
        let mut m = self.i16(values.len() as i16);
        for v in values {
            m = match v {
                Col::N => m.u8(b'n'),
                Col::U => m.u8(b'u'),
                Col::T(s) => m.u8(b't').i32(s.len() as i32).raw(s.as_bytes()),
                Col::B(b) => m.u8(b'b').i32(b.len() as i32).raw(b),
            };
        }
        m
    }
    fn bytes(self) -> Vec<u8> {
        self.0
    }
}

/// One TupleData column.
enum Col {
    N,
    U,
    T(&'static str),
    B(&'static [u8]),
}

fn text(s: &str) -> Value {
    Value::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn row(values: &[Value]) -> RowImage {
    RowImage(values.to_vec())
}

/// A message: its tag, then fields as `kind value` (a `Msg` method and its argument), in wire order.
macro_rules! msg {
    ($tag:expr $(; $($kind:ident $v:expr),* $(,)?)?) => {{
        let m = Msg::tag($tag);
        $($( let m = m.$kind($v); )*)?
        m.bytes()
    }};
}

/// The error a message gives, as a log line.
fn err(data: &[u8]) -> String {
    decode(data).unwrap_err().to_string()
}

fn col(name: &str, type_oid: u32, type_modifier: i32, key: bool) -> RelationColumn {
    RelationColumn {
        name: name.into(),
        type_oid,
        type_modifier,
        key,
    }
}

fn relation_message() -> Vec<u8> {
    msg!(b'R'; i32 16385, str "public", str "jobshead", u8 b'f', i16 3,
        u8 1, str "job_id", i32 23, i32 -1,
        u8 0, str "naïve", i32 25, i32 -1,
        u8 0, str "amount", i32 1700, i32 393222)
}

fn update_message() -> Vec<u8> {
    msg!(b'U'; i32 16385,
        u8 b'O', tuple &[Col::T("1"), Col::T("xxx"), Col::N],
        u8 b'N', tuple &[Col::T("1"), Col::U, Col::T("12.50")])
}

/// One message of every kind, for the properties every message must have.
fn every_kind() -> Vec<Vec<u8>> {
    vec![
        msg!(b'B'; i64 0x16B3748, i64 1, i32 7),
        msg!(b'C'; u8 0, i64 1, i64 2, i64 3),
        msg!(b'O'; i64 5, str "node"),
        relation_message(),
        msg!(b'Y'; i32 600, str "public", str "mood"),
        msg!(b'I'; i32 1, u8 b'N', tuple &[Col::T("a"), Col::N]),
        update_message(),
        msg!(b'D'; i32 1, u8 b'K', tuple &[Col::T("1")]),
        msg!(b'T'; i32 2, u8 3, i32 1, i32 2),
        msg!(b'M'; u8 1, i64 9, str "tandem", i32 5, raw b"hello"),
    ]
}

#[test]
fn begin_commit_and_origin() {
    let begin = msg!(b'B'; i64 0x1_0000_0002, i64 -5, i32 -1);
    let begin_decoded = PgOutput::Begin {
        final_lsn: CommitLsn(Lsn(0x1_0000_0002)),
        commit_time_micros: -5,
        xid: u32::MAX,
    };
    assert_eq!(decode(&begin), Ok(begin_decoded));
    let commit = msg!(b'C'; u8 0, i64 10, i64 20, i64 30);
    let commit_decoded = PgOutput::Commit {
        commit_lsn: CommitLsn(Lsn(10)),
        end_lsn: EndLsn(Lsn(20)),
        commit_time_micros: 30,
    };
    assert_eq!(decode(&commit), Ok(commit_decoded));
    let origin = msg!(b'O'; i64 7, str "");
    let origin_decoded = PgOutput::Origin {
        lsn: Lsn(7),
        name: String::new(),
    };
    assert_eq!(decode(&origin), Ok(origin_decoded));
}

#[test]
fn relation_carries_names_types_keys_and_identity() {
    let PgOutput::Relation(rel) = decode(&relation_message()).unwrap() else {
        panic!("not a Relation");
    };
    assert_eq!(rel.id, 16385);
    assert_eq!(rel.name, QualifiedName::new("public", "jobshead"));
    assert_eq!(rel.replica_identity, 'f');
    let columns = [
        col("job_id", 23, -1, true),
        col("naïve", 25, -1, false),
        col("amount", 1700, 393222, false),
    ];
    assert_eq!(rel.columns, columns);

    let empty = msg!(b'R'; i32 1, str "", str "", u8 b'n', i16 0);
    let PgOutput::Relation(rel) = decode(&empty).unwrap() else {
        panic!("not a Relation");
    };
    assert_eq!(rel.name, QualifiedName::new("", ""));
    assert_eq!(rel.replica_identity, 'n');
    assert!(rel.columns.is_empty());
}

#[test]
fn type_message() {
    let msg = msg!(b'Y'; i32 16390, str "sales", str "mood");
    let decoded = PgOutput::Type {
        id: 16390,
        namespace: "sales".into(),
        name: "mood".into(),
    };
    assert_eq!(decode(&msg), Ok(decoded));
}

#[test]
fn insert_with_text_null_empty_and_utf8_values() {
    let msg = msg!(b'I'; i32 16385, u8 b'N',
        tuple &[Col::T("42"), Col::N, Col::T(""), Col::T("श्री Café")]);
    let new = row(&[text("42"), Value::Null, text(""), text("श्री Café")]);
    let decoded = PgOutput::Insert {
        relation: 16385,
        new,
    };
    assert_eq!(decode(&msg), Ok(decoded));

    let no_columns = msg!(b'I'; i32 1, u8 b'N', tuple &[]);
    let new = RowImage::default();
    assert_eq!(
        decode(&no_columns),
        Ok(PgOutput::Insert { relation: 1, new })
    );
}

#[test]
fn update_without_old_with_key_and_with_full_old_image() {
    let plain = msg!(b'U'; i32 5, u8 b'N', tuple &[Col::T("1"), Col::U]);
    let decoded = PgOutput::Update {
        relation: 5,
        old: None,
        new: row(&[text("1"), Value::UnchangedToast]),
    };
    assert_eq!(decode(&plain), Ok(decoded));

    let key = msg!(b'U'; i32 5,
        u8 b'K', tuple &[Col::T("1"), Col::N],
        u8 b'N', tuple &[Col::T("2"), Col::U]);
    let decoded = PgOutput::Update {
        relation: 5,
        old: Some(OldImage::Key(row(&[text("1"), Value::Null]))),
        new: row(&[text("2"), Value::UnchangedToast]),
    };
    assert_eq!(decode(&key), Ok(decoded));

    let decoded = PgOutput::Update {
        relation: 16385,
        old: Some(OldImage::Full(row(&[text("1"), text("xxx"), Value::Null]))),
        new: row(&[text("1"), Value::UnchangedToast, text("12.50")]),
    };
    assert_eq!(decode(&update_message()), Ok(decoded));
}

#[test]
fn delete_with_key_or_full_old_image() {
    let key = msg!(b'D'; i32 9, u8 b'K', tuple &[Col::T("7")]);
    let old = OldImage::Key(row(&[text("7")]));
    assert_eq!(decode(&key), Ok(PgOutput::Delete { relation: 9, old }));

    let full = msg!(b'D'; i32 9, u8 b'O', tuple &[Col::T("7"), Col::N, Col::U]);
    let old = OldImage::Full(row(&[text("7"), Value::Null, Value::UnchangedToast]));
    assert_eq!(decode(&full), Ok(PgOutput::Delete { relation: 9, old }));
}

#[test]
fn truncate_options_and_relations() {
    let cases = [
        (0, false, false),
        (1, true, false),
        (2, false, true),
        (3, true, true),
    ];
    for (options, cascade, restart_identity) in cases {
        let msg = msg!(b'T'; i32 2, u8 options, i32 10, i32 -2);
        let decoded = PgOutput::Truncate {
            relations: vec![10, u32::MAX - 1],
            cascade,
            restart_identity,
        };
        assert_eq!(decode(&msg), Ok(decoded));
    }
    let none = msg!(b'T'; i32 0, u8 0);
    let decoded = PgOutput::Truncate {
        relations: vec![],
        cascade: false,
        restart_identity: false,
    };
    assert_eq!(decode(&none), Ok(decoded));
}

#[test]
fn logical_decoding_messages() {
    let msg = msg!(b'M'; u8 1, i64 99, str "tandem", i32 5, raw b"hello");
    let decoded = PgOutput::Message {
        transactional: true,
        lsn: Lsn(99),
        prefix: "tandem".into(),
        content: Bytes::from_static(b"hello"),
    };
    assert_eq!(decode(&msg), Ok(decoded));

    let empty = msg!(b'M'; u8 0, i64 1, str "", i32 0);
    let decoded = PgOutput::Message {
        transactional: false,
        lsn: Lsn(1),
        prefix: String::new(),
        content: Bytes::new(),
    };
    assert_eq!(decode(&empty), Ok(decoded));
}

#[test]
fn values_and_contents_are_slices_of_the_buffer() {
    let buffer = Bytes::from(update_message());
    let range = buffer.as_ptr_range();
    let Ok(PgOutput::Update {
        old: Some(OldImage::Full(old)),
        new,
        ..
    }) = decode_bytes(&buffer)
    else {
        panic!("not an Update with a full old image");
    };
    for value in old.0.iter().chain(&new.0) {
        let Value::Text(b) = value else { continue };
        assert!(range.contains(&b.as_ptr()), "{b:?} was copied");
    }
    let message = Bytes::from(every_kind().pop().unwrap());
    let Ok(PgOutput::Message { content, .. }) = decode_bytes(&message) else {
        panic!("not a Message");
    };
    assert!(message.as_ptr_range().contains(&content.as_ptr()));
}

#[test]
fn every_cut_short_message_is_a_truncation_error() {
    for msg in every_kind() {
        decode(&msg).unwrap_or_else(|e| panic!("{e}"));
        for len in 1..msg.len() {
            match decode(&msg[..len]) {
                Err(DecodeError::Truncated { offset, .. }) => assert!(offset <= len),
                other => panic!("{:?} cut at {len}: {other:?}", msg[0] as char),
            }
        }
    }
}

#[test]
fn truncation_errors_say_what_and_where() {
    let msg = update_message();
    // Tag, relation id, 'O', ncols, 't' + length + "1", 't', 2 of the 4 bytes of the next length.
    let cut = 1 + 4 + 1 + 2 + (1 + 4 + 1) + 1 + 2;
    assert_eq!(
        err(&msg[..cut]),
        "pgoutput: Update message truncated at byte 15 while reading the value length of column 2 \
         of 3 in the old tuple"
    );
    assert_eq!(
        err(&msg[..3]),
        "pgoutput: Update message truncated at byte 1 while reading the relation id"
    );
    // The whole old tuple and 'N', then nothing.
    let new_at = msg.len() - (2 + 6 + 1 + 10);
    assert_eq!(
        err(&msg[..new_at]),
        format!(
            "pgoutput: Update message truncated at byte {new_at} while reading the number of \
             columns of the new tuple"
        )
    );
    let rel = relation_message();
    assert_eq!(
        err(&rel[..12]),
        "pgoutput: Relation message truncated at byte 12 while reading the relation name (no NUL \
         terminator)"
    );
    assert_eq!(
        err(&rel[..rel.len() - 2]),
        format!(
            "pgoutput: Relation message truncated at byte {} while reading the type modifier of \
             column 3 of 3 in the column list",
            rel.len() - 4
        )
    );
    let short_value = msg!(b'I'; i32 1, u8 b'N', i16 1, u8 b't', i32 10, raw b"abc");
    assert_eq!(
        err(&short_value),
        "pgoutput: Insert message truncated at byte 13 while reading the value of column 1 of 1 \
         in the new tuple"
    );
    let short_content = msg!(b'M'; u8 1, i64 1, str "p", i32 6, raw b"hi");
    let truncated = decode(&short_content);
    assert!(matches!(
        truncated,
        Err(DecodeError::Truncated { offset: 16, .. })
    ));
}

#[test]
fn unknown_tags_and_empty_messages() {
    assert_eq!(
        err(b"Xabc"),
        "pgoutput: unknown message tag 'X' (0x58) at byte 0"
    );
    // 'S' (Stream Start) exists only from protocol version 2.
    assert_eq!(decode(b"S"), Err(DecodeError::UnknownTag { tag: b'S' }));
    assert_eq!(err(&[0x01]), "pgoutput: unknown message tag 0x01 at byte 0");
    assert_eq!(decode(b""), Err(DecodeError::Empty));
}

#[test]
fn binary_values_are_refused() {
    let msg = msg!(b'I'; i32 1, u8 b'N', tuple &[Col::T("1"), Col::B(&[0, 0, 0, 1])]);
    assert_eq!(
        err(&msg),
        "pgoutput: Insert message has a binary value at byte 14 (the value of column 2 of 2 in \
         the new tuple); tandem asks for text format only"
    );
}

#[test]
fn trailing_bytes_are_refused() {
    for msg in every_kind() {
        let mut longer = msg.clone();
        longer.extend_from_slice(b"zz");
        match decode(&longer) {
            Err(DecodeError::TrailingBytes {
                offset, count: 2, ..
            }) if offset == msg.len() => {}
            other => panic!("{:?} with 2 more bytes: {other:?}", msg[0] as char),
        }
    }
    assert_eq!(
        err(&msg!(b'B'; i64 1, i64 2, i32 3, u8 0)),
        "pgoutput: Begin message has 1 trailing bytes after its end at byte 21"
    );
}

#[test]
fn negative_lengths_and_counts_are_refused() {
    assert_eq!(
        err(&msg!(b'I'; i32 1, u8 b'N', i16 1, u8 b't', i32 -1)),
        "pgoutput: Insert message has -1 at byte 9 for the value length of column 1 of 1 in the \
         new tuple, which cannot be negative"
    );
    assert_eq!(
        err(&msg!(b'D'; i32 1, u8 b'O', i16 -3)),
        "pgoutput: Delete message has -3 at byte 6 for the number of columns of the old tuple, \
         which cannot be negative"
    );
    let truncate = decode(&msg!(b'T'; i32 i32::MIN, u8 0));
    assert!(matches!(
        truncate,
        Err(DecodeError::NegativeLength {
            offset: 1,
            value: i32::MIN,
            ..
        })
    ));
    let content = decode(&msg!(b'M'; u8 0, i64 1, str "p", i32 -7));
    assert!(matches!(
        content,
        Err(DecodeError::NegativeLength {
            offset: 12,
            value: -7,
            ..
        })
    ));
    let relation = decode(&msg!(b'R'; i32 1, str "s", str "t", u8 b'd', i16 -1));
    assert!(matches!(
        relation,
        Err(DecodeError::NegativeLength {
            offset: 10,
            value: -1,
            ..
        })
    ));
}

#[test]
fn names_must_be_utf8() {
    let name = msg!(b'R'; i32 1, str "public", raw &[b'j', 0xFF, b'b'], u8 0, u8 b'd', i16 0);
    assert_eq!(
        err(&name),
        "pgoutput: Relation message has the relation name at byte 12 that is not valid UTF-8"
    );
    let prefix = decode(&msg!(b'M'; u8 0, i64 1, raw &[0xC3], u8 0, i32 0));
    assert!(matches!(
        prefix,
        Err(DecodeError::BadUtf8 { offset: 10, .. })
    ));
}

#[test]
fn unexpected_markers_and_value_kinds_are_refused() {
    assert_eq!(
        err(&msg!(b'I'; i32 1, u8 b'K', tuple &[])),
        "pgoutput: Insert message has 'K' (0x4B) at byte 5 where 'N' (new tuple) was expected"
    );
    let update = decode(&msg!(b'U'; i32 1, u8 b'X', tuple &[]));
    assert!(matches!(
        update,
        Err(DecodeError::UnexpectedByte {
            offset: 5,
            found: b'X',
            ..
        })
    ));
    let no_new = decode(&msg!(b'U'; i32 1, u8 b'K', tuple &[], u8 b'K', tuple &[]));
    assert!(matches!(
        no_new,
        Err(DecodeError::UnexpectedByte {
            offset: 8,
            found: b'K',
            ..
        })
    ));
    let delete = decode(&msg!(b'D'; i32 1, u8 b'N', tuple &[]));
    assert!(matches!(
        delete,
        Err(DecodeError::UnexpectedByte {
            offset: 5,
            found: b'N',
            ..
        })
    ));
    assert_eq!(
        err(&msg!(b'I'; i32 1, u8 b'N', i16 1, u8 b'x')),
        "pgoutput: Insert message has 'x' (0x78) at byte 8 where a value kind ('n', 'u', 't' or \
         'b') of column 1 of 1 in the new tuple was expected"
    );
}

#[test]
fn relation_cache_keeps_the_latest_relation() {
    let mut cache = RelationCache::new();
    assert!(cache.get(16385).is_none());
    let Ok(PgOutput::Relation(rel)) = decode(&relation_message()) else {
        panic!("not a Relation");
    };
    cache.update(rel.clone());
    assert_eq!(cache.get(16385), Some(&rel));
    assert_eq!(cache.column_index(16385, "amount"), Some(2));
    assert_eq!(cache.column_index(16385, "missing"), None);
    assert_eq!(cache.column_index(1, "amount"), None);
    // After ALTER TABLE the server sends the relation again: it replaces the old one.
    let mut altered = rel;
    altered.columns.remove(1);
    cache.update(altered.clone());
    assert_eq!(cache.get(16385), Some(&altered));
    assert_eq!(cache.column_index(16385, "amount"), Some(1));
}
