//! The shared vocabulary: names of things on each side, positions in each stream.
//!
//! Small types that cannot be mixed up: a desktop table name is not a cloud table name, an outbox id is
//! not an LSN. Every stage (capture, transform, apply) speaks in these.

use std::fmt;
use std::str::FromStr;

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Desktop,
    Cloud,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Desktop => "desktop",
            Side::Cloud => "cloud",
        })
    }
}

/// Quotes an SQL identifier: always, so that config names never become SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string as an SQL literal. Only for names written into DDL (trigger arguments, a table's
/// name in a filter): values always travel as parameters or COPY data.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A schema-qualified table name as written in the config (`jobshead` means `public.jobshead`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// `"schema"."name"`, for SQL text.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl FromStr for QualifiedName {
    type Err = String;

    /// `name` or `schema.name`; neither part may be empty. Case is kept as written (names are quoted).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('.').collect();
        let (schema, name) = match parts.as_slice() {
            [name] => ("public", *name),
            [schema, name] => (*schema, *name),
            _ => {
                return Err(format!(
                    "`{s}` is not a table name: write `table` or `schema.table`"
                ));
            }
        };
        if schema.is_empty() || name.is_empty() {
            return Err(format!(
                "`{s}` is not a table name: write `table` or `schema.table`"
            ));
        }
        Ok(QualifiedName::new(schema, name))
    }
}

impl fmt::Display for QualifiedName {
    /// `name` for tables in `public`, `schema.name` otherwise: how an operator writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.schema == "public" {
            f.write_str(&self.name)
        } else {
            write!(f, "{}.{}", self.schema, self.name)
        }
    }
}

/// One replicated table: its name on the desktop and its name in the cloud (`mbreminder` → `reminder`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableRef {
    pub desktop: QualifiedName,
    pub cloud: QualifiedName,
}

impl TableRef {}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.desktop == self.cloud {
            write!(f, "{}", self.desktop)
        } else {
            write!(f, "{} → {}", self.desktop, self.cloud)
        }
    }
}

/// A position in the cloud's write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    /// PostgreSQL's `X/X` notation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not an LSN (expected hex `X/X`, e.g. `0/16B3748`)");
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
            return Err(bad());
        }
        Ok(Lsn((hi << 32) | lo))
    }
}

/// Where a transaction's commit record starts (`Begin.final_lsn`, `Commit.commit_lsn`): what orders
/// transactions. Not a position to acknowledge: the commit record ends after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CommitLsn(pub Lsn);

/// Where a transaction's commit record ends (`Commit.end_lsn`): once the transaction is applied, the
/// slot may be told everything before it is flushed, and a restart streams from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EndLsn(pub Lsn);

/// A cloud snapshot, as `pg_snapshot` text (`xmin:xmax:xip,...`), that the desktop has caught up
/// with: every cloud transaction it sees has been received on the desktop. tandem writes one into the
/// cloud's WAL in each of its own cloud transactions; when the reverse stream passes it, everything that
/// committed before it has been applied (or kept as a conflict or dead letter), so a row whose writer it
/// sees is a row the desktop has received (see `tandem.table_state.horizon`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Horizon(String);

/// What the desktop has received of a table, as a forward batch reads it: the table's [`Horizon`]
/// (none yet: every phone row counts as not received), and the cloud keys of the phone rows its open
/// conflicts by concurrency keep (a JSON array of their texts; cloud-key tables): the forward neither
/// changes nor deletes those rows while a person decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    pub horizon: Option<Horizon>,
    pub kept: Option<String>,
}

impl Horizon {
    /// `None` unless `text` is a snapshot's text.
    pub fn parse(text: &str) -> Option<Horizon> {
        let mut parts = text.split(':');
        let (xmin, xmax, xip) = (parts.next()?, parts.next()?, parts.next()?);
        let number = |t: &str| t.parse::<u64>().ok();
        let (min, max) = (number(xmin)?, number(xmax)?);
        let listed = xip.is_empty() || xip.split(',').all(|x| number(x).is_some());
        (parts.next().is_none() && min <= max && listed).then(|| Horizon(text.to_string()))
    }

    /// The first transaction id it does not see yet: of two horizons, the later has the larger.
    pub fn xmax(&self) -> u64 {
        self.0
            .split(':')
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The end of the WAL the server has sent, as a keepalive says: acknowledgeable only when nothing
/// received is still unapplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WalEnd(pub Lsn);

impl CommitLsn {
    /// Whether the transaction committing here was applied by the one that ended at `stored` or an
    /// earlier one: its commit record starts before that end.
    pub fn applied_by(self, stored: Option<EndLsn>) -> bool {
        stored.is_some_and(|s| self.0 < s.0)
    }
}

impl fmt::Display for CommitLsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for EndLsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The id of a row of the desktop's `tandem.outbox`. Ids are taken at insert, not at commit: they say
/// nothing about commit order, so they are never used as a high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboxId(pub i64);

/// One column's value in a logical replication row, as pgoutput sent it (text format: tandem never asks
/// for binary). Nothing downstream guesses what a missing value means: an unchanged TOAST value says
/// "keep what the target has", never NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// `u`: a TOASTed value the update did not change; the message does not carry it.
    UnchangedToast,
    /// `t`: the value's text representation (the type's output function, in the server encoding).
    Text(bytes::Bytes),
}

/// A row as pgoutput sent it: one value per column of its relation, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowImage(pub Vec<Value>);

/// The old row of an update or delete: the replica-identity key only (`K`), or the whole row (`O`,
/// REPLICA IDENTITY FULL, which tandem sets on every published table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldImage {
    Key(RowImage),
    Full(RowImage),
}

/// A column of a relation as the Relation message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// Part of the replica identity.
    pub key: bool,
}

/// A Relation message: what the rows of relation `id` look like from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub name: QualifiedName,
    /// `relreplident`: `d`, `n`, `f` or `i`.
    pub replica_identity: char,
    pub columns: Vec<RelationColumn>,
}

/// One decoded pgoutput (protocol version 1) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutput {
    Begin {
        final_lsn: CommitLsn,
        commit_time_micros: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: CommitLsn,
        end_lsn: EndLsn,
        commit_time_micros: i64,
    },
    Origin {
        lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        id: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: RowImage,
    },
    Update {
        relation: u32,
        old: Option<OldImage>,
        new: RowImage,
    },
    Delete {
        relation: u32,
        old: OldImage,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: bytes::Bytes,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_postgres_notation() {
        for text in ["0/0", "0/16B3748", "1/0", "FFFFFFFF/FFFFFFFF"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("1/2".parse::<Lsn>().unwrap(), Lsn((1 << 32) | 2));
        assert!("12".parse::<Lsn>().is_err());
        assert!("1/100000000".parse::<Lsn>().is_err());
        assert!("0/16B3748".parse::<Lsn>().unwrap() < "1/0".parse::<Lsn>().unwrap());
    }

    #[test]
    fn a_horizon_is_a_snapshots_text_and_orders_by_xmax() {
        let h = Horizon::parse("740:745:740,742").unwrap();
        assert_eq!(h.xmax(), 745);
        assert_eq!(h.as_str(), "740:745:740,742");
        assert_eq!(Horizon::parse("10:10:").unwrap().xmax(), 10);
        for bad in ["", "conflicts resolve", "1:2", "5:4:", "1:2:x", "1:2:3:4"] {
            assert!(Horizon::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn quoting_keeps_names_out_of_sql() {
        assert_eq!(quote_ident("job\"s"), "\"job\"\"s\"");
        let q: QualifiedName = "Sales.Job Head".parse().unwrap();
        assert_eq!(q.quoted(), "\"Sales\".\"Job Head\"");
        assert!("a.b.c".parse::<QualifiedName>().is_err());
        assert!(".b".parse::<QualifiedName>().is_err());
        assert_eq!(
            "jobshead".parse::<QualifiedName>().unwrap().to_string(),
            "jobshead"
        );
    }
}
