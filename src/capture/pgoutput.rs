//! A decoder for pgoutput, PostgreSQL's logical replication output plugin, protocol version 1.
//!
//! pgwire-replication is a transport only: it hands over each change as the raw bytes of one pgoutput
//! message (`XLogData { data }`) and has no tuple decoder, so tandem decodes them here, into the shared
//! vocabulary of [`crate::change`] ([`PgOutput`], [`RowImage`], [`Value`]). Only what tandem asks the
//! server for is understood: protocol version 1 (no streamed transactions, so no xid before the relation
//! id) and values in text format — a binary value is an error, never a guess. Nothing is interpreted
//! beyond the wire format: a value stays the bytes of its text representation, and an unchanged TOAST
//! value stays [`Value::UnchangedToast`] (never NULL) so that apply can keep what the target has. Text
//! values and message contents are zero-copy slices of the buffer given to [`decode_bytes`]. Relation
//! messages describe the rows that follow them; [`RelationCache`] keeps the latest one per relation id.
//! Every error names the message kind, the byte offset and what was being read, for a log line.

use std::collections::HashMap;

use bytes::Bytes;

use crate::change::{
    CommitLsn, EndLsn, Lsn, OldImage, PgOutput, QualifiedName, Relation, RelationColumn, RowImage,
    Value,
};

/// A pgoutput message that could not be decoded. Offsets count from the message's tag byte (0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pgoutput: empty message (no tag byte)")]
    Empty,
    #[error("pgoutput: unknown message tag {} at byte 0", describe(*tag))]
    UnknownTag { tag: u8 },
    #[error("pgoutput: {message} message truncated at byte {offset} while reading {what}")]
    Truncated {
        message: &'static str,
        offset: usize,
        what: String,
    },
    #[error("pgoutput: {message} message has {what} at byte {offset} that is not valid UTF-8")]
    BadUtf8 {
        message: &'static str,
        offset: usize,
        what: String,
    },
    #[error(
        "pgoutput: {message} message has a binary value at byte {offset} ({what}); tandem asks for text format only"
    )]
    BinaryValue {
        message: &'static str,
        offset: usize,
        what: String,
    },
    #[error(
        "pgoutput: {message} message has {value} at byte {offset} for {what}, which cannot be negative"
    )]
    NegativeLength {
        message: &'static str,
        offset: usize,
        what: String,
        value: i32,
    },
    #[error(
        "pgoutput: {message} message has {} at byte {offset} where {expected} was expected",
        describe(*found)
    )]
    UnexpectedByte {
        message: &'static str,
        offset: usize,
        found: u8,
        expected: String,
    },
    #[error(
        "pgoutput: {message} message has {count} trailing bytes after its end at byte {offset}"
    )]
    TrailingBytes {
        message: &'static str,
        offset: usize,
        count: usize,
    },
}

/// A byte for a log line: `'X' (0x58)` when it is printable ASCII, `0x01` when not.
fn describe(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}' (0x{b:02X})", b as char)
    } else {
        format!("0x{b:02X}")
    }
}

/// Decodes one pgoutput message (the whole `data` of one XLogData), copying it first. The stream
/// consumer should call [`decode_bytes`], whose values share the message's buffer.
pub fn decode(data: &[u8]) -> Result<PgOutput, DecodeError> {
    decode_bytes(&Bytes::copy_from_slice(data))
}

/// Decodes one pgoutput message (the whole `data` of one XLogData). Text values and Message contents
/// are slices of `data` (no copy).
pub fn decode_bytes(data: &Bytes) -> Result<PgOutput, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError::Empty);
    };
    let message = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    let mut r = Reader {
        data,
        pos: 1,
        message,
        part: Part::Header,
    };
    let decoded = match tag {
        b'B' => PgOutput::Begin {
            final_lsn: CommitLsn(r.lsn("the final LSN")?),
            commit_time_micros: r.i64("the commit timestamp")?,
            xid: r.u32("the transaction id")?,
        },
        b'C' => {
            r.u8("the flags")?;
            PgOutput::Commit {
                commit_lsn: CommitLsn(r.lsn("the commit LSN")?),
                end_lsn: EndLsn(r.lsn("the end LSN")?),
                commit_time_micros: r.i64("the commit timestamp")?,
            }
        }
        b'O' => PgOutput::Origin {
            lsn: r.lsn("the origin's commit LSN")?,
            name: r.string("the origin name")?,
        },
        b'R' => PgOutput::Relation(r.relation()?),
        b'Y' => PgOutput::Type {
            id: r.u32("the type id")?,
            namespace: r.string("the type's namespace")?,
            name: r.string("the type name")?,
        },
        b'I' => {
            let relation = r.u32("the relation id")?;
            r.expect(b'N', "'N' (new tuple)")?;
            PgOutput::Insert {
                relation,
                new: r.tuple("new tuple")?,
            }
        }
        b'U' => {
            let relation = r.u32("the relation id")?;
            let offset = r.pos;
            let old = match r.u8("the tuple marker ('K', 'O' or 'N')")? {
                b'K' => Some(OldImage::Key(r.tuple("old key tuple")?)),
                b'O' => Some(OldImage::Full(r.tuple("old tuple")?)),
                b'N' => None,
                found => return Err(r.unexpected(offset, found, "'K', 'O' or 'N'")),
            };
            if old.is_some() {
                r.expect(b'N', "'N' (new tuple)")?;
            }
            PgOutput::Update {
                relation,
                old,
                new: r.tuple("new tuple")?,
            }
        }
        b'D' => {
            let relation = r.u32("the relation id")?;
            let offset = r.pos;
            let old = match r.u8("the tuple marker ('K' or 'O')")? {
                b'K' => OldImage::Key(r.tuple("old key tuple")?),
                b'O' => OldImage::Full(r.tuple("old tuple")?),
                found => return Err(r.unexpected(offset, found, "'K' or 'O'")),
            };
            PgOutput::Delete { relation, old }
        }
        b'T' => {
            let count = r.count_i32("the number of relations")?;
            let options = r.u8("the options")?;
            // Not Vec::with_capacity(count): a corrupt count must not allocate gigabytes.
            let mut relations = Vec::new();
            for _ in 0..count {
                relations.push(r.u32("a relation id")?);
            }
            PgOutput::Truncate {
                relations,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            }
        }
        b'M' => {
            let flags = r.u8("the flags")?;
            let lsn = r.lsn("the message LSN")?;
            let prefix = r.string("the prefix")?;
            let len = r.count_i32("the content length")?;
            PgOutput::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.slice(len, "the content")?,
            }
        }
        _ => unreachable!("tags are checked above"),
    };
    if r.pos != data.len() {
        return Err(DecodeError::TrailingBytes {
            message,
            offset: r.pos,
            count: data.len() - r.pos,
        });
    }
    Ok(decoded)
}

/// A cursor over one message.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    message: &'static str,
    /// Where in the message the cursor is, for errors.
    part: Part,
}

#[derive(Clone, Copy)]
enum Part {
    Header,
    /// A tuple or the column list (`new tuple`, `column list`), before its first column.
    List(&'static str),
    /// Column `index` (from 0) of `count` of a list.
    Column {
        list: &'static str,
        index: usize,
        count: usize,
    },
}

impl Reader<'_> {
    /// `what`, with the column being read when inside a tuple.
    fn what(&self, what: &str) -> String {
        match self.part {
            Part::Header => what.to_string(),
            Part::List(list) => format!("{what} of the {list}"),
            Part::Column { list, index, count } => {
                format!("{what} of column {} of {count} in the {list}", index + 1)
            }
        }
    }

    fn truncated(&self, what: &str) -> DecodeError {
        DecodeError::Truncated {
            message: self.message,
            offset: self.pos,
            what: self.what(what),
        }
    }

    fn unexpected(&self, offset: usize, found: u8, expected: &str) -> DecodeError {
        DecodeError::UnexpectedByte {
            message: self.message,
            offset,
            found,
            expected: self.what(expected),
        }
    }

    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        let bytes = self
            .data
            .get(self.pos..self.pos + N)
            .ok_or_else(|| self.truncated(what))?;
        self.pos += N;
        Ok(bytes.try_into().expect("N bytes"))
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take::<1>(what)?[0])
    }

    fn i16(&mut self, what: &str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take(what)?))
    }

    fn i32(&mut self, what: &str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(what)?))
    }

    fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(what)?))
    }

    fn lsn(&mut self, what: &str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.take(what)?)))
    }

    /// A count or length that must not be negative.
    fn count_i32(&mut self, what: &str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i32(what)?;
        usize::try_from(value).map_err(|_| self.negative(offset, what, value))
    }

    fn count_i16(&mut self, what: &str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = self.i16(what)?;
        usize::try_from(value).map_err(|_| self.negative(offset, what, value.into()))
    }

    fn negative(&self, offset: usize, what: &str, value: i32) -> DecodeError {
        DecodeError::NegativeLength {
            message: self.message,
            offset,
            what: self.what(what),
            value,
        }
    }

    fn expect(&mut self, byte: u8, expected: &str) -> Result<(), DecodeError> {
        let offset = self.pos;
        match self.u8(expected)? {
            b if b == byte => Ok(()),
            found => Err(self.unexpected(offset, found, expected)),
        }
    }

    /// `len` bytes, as a slice of the message's buffer.
    fn slice(&mut self, len: usize, what: &str) -> Result<Bytes, DecodeError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.data.len())
            .ok_or_else(|| self.truncated(what))?;
        let bytes = self.data.slice(self.pos..end);
        self.pos = end;
        Ok(bytes)
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        let rest = &self.data[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            self.pos = self.data.len();
            return Err(self.truncated(&format!("{what} (no NUL terminator)")));
        };
        let text = std::str::from_utf8(&rest[..len]).map_err(|_| DecodeError::BadUtf8 {
            message: self.message,
            offset: self.pos,
            what: self.what(what),
        })?;
        self.pos += len + 1;
        Ok(text.to_string())
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("the relation id")?;
        let schema = self.string("the namespace")?;
        let name = self.string("the relation name")?;
        let replica_identity = char::from(self.u8("the replica identity")?);
        self.part = Part::List("column list");
        let count = self.count_i16("the number of columns")?;
        let mut columns = Vec::with_capacity(count);
        for index in 0..count {
            self.part = Part::Column {
                list: "column list",
                index,
                count,
            };
            let key = self.u8("the flags")? & 1 != 0;
            columns.push(RelationColumn {
                name: self.string("the name")?,
                type_oid: self.u32("the type oid")?,
                type_modifier: self.i32("the type modifier")?,
                key,
            });
        }
        self.part = Part::Header;
        Ok(Relation {
            id,
            name: QualifiedName::new(schema, name),
            replica_identity,
            columns,
        })
    }

    /// TupleData. `tuple` names it for errors (`new tuple`, `old tuple`, `old key tuple`).
    fn tuple(&mut self, tuple: &'static str) -> Result<RowImage, DecodeError> {
        self.part = Part::List(tuple);
        let count = self.count_i16("the number of columns")?;
        let mut values = Vec::with_capacity(count);
        for index in 0..count {
            self.part = Part::Column {
                list: tuple,
                index,
                count,
            };
            let offset = self.pos;
            values.push(match self.u8("the value kind")? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                b't' => {
                    let len = self.count_i32("the value length")?;
                    Value::Text(self.slice(len, "the value")?)
                }
                b'b' => {
                    return Err(DecodeError::BinaryValue {
                        message: self.message,
                        offset,
                        what: self.what("the value"),
                    });
                }
                found => {
                    return Err(self.unexpected(
                        offset,
                        found,
                        "a value kind ('n', 'u', 't' or 'b')",
                    ));
                }
            });
        }
        self.part = Part::Header;
        Ok(RowImage(values))
    }
}

/// The latest Relation message of each relation id. The server sends one before the first change of a
/// relation in a session and again whenever its cached description is invalidated — after a schema
/// change, but also (seen on PostgreSQL 15) before a TRUNCATE, which gives the table a new file — so
/// every Relation message replaces the previous one.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Relation>,
}

impl RelationCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `relation`, replacing what was known of its id.
    pub fn update(&mut self, relation: Relation) {
        self.relations.insert(relation.id, relation);
    }

    pub fn get(&self, id: u32) -> Option<&Relation> {
        self.relations.get(&id)
    }

    /// The position of column `name` in relation `id`'s rows.
    pub fn column_index(&self, id: u32, name: &str) -> Option<usize> {
        self.get(id)?.columns.iter().position(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests;
