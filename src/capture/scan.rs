//! The reconcile's source: a table scan of both sides that reads hashes, not rows.
//!
//! Each side streams, by binary COPY in key order, one line per row: its key (or scope) as text and two
//! 64-bit hashes of the row as the *other* side would hold it (see [`Hashes`]). tandem merges the two
//! streams in order ([`crate::commit::reconcile`]) and fetches only the rows that differ. Memory stays
//! bounded: a line is dropped once merged (a cloud-key table holds one scope at a time).
//!
//! **Order.** Both sides order by the keys' text under the `"C"` collation: byte order, the same in both
//! databases whatever their own collations, and the order Rust compares byte strings in. NULL sorts
//! last on both sides.
//!
//! **Hash.** `hashtextextended(row_text, 0)`: PostgreSQL's own 64-bit hash of the text (stable since
//! PostgreSQL 11: the WAL-logged hash indexes depend on it), over `ROW(values)::text` (every value's text
//! under tandem's fixed session settings; NULL is distinct from every value, `()` against `("")`). A
//! value is first put in the form the other side stores it in, when both types are PostgreSQL's own
//! (`varchar(5)` on one side and `text` on the other hash alike). Two rows with equal hashes and
//! different values (a 64-bit collision, about 1 in 10^19 per row) would be taken as equal; two rows with
//! different hashes but equal values are only fetched and found equal by the commit engine, which
//! compares values, never hashes.

use std::pin::Pin;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio_postgres::{Client, CopyOutStream};

use crate::capture::outbox::{Lookups, lookup_joins};
use crate::change::{Side, quote_literal};
use crate::config::owner;
use crate::db::{Context, DbError};
use crate::expr::{output_text, q, row_text, same_key, text};
use crate::transform::{Kind, MappedColumn, Mapping};

/// The two hashes of a row.
///
/// - `forward`: the columns the desktop sends (lookups included), as the cloud stores them. A cloud
///   row owned by the desktop is in sync when its `forward` hash is the desktop row's.
/// - `reverse`: the columns mobile rows bring back, as the desktop stores them. A mobile row is on the
///   desktop when a desktop row has its `reverse` hash.
///
/// A cloud line carries only the hash its row is compared by (`forward` for a desktop-owned row,
/// `reverse` for a mobile-owned one; the other is 0): each cloud row's text is made and hashed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hashes {
    pub forward: i64,
    pub reverse: i64,
}

/// The statements of one table's scan, built once.
#[derive(Debug, Clone)]
pub struct ScanSql {
    /// Desktop: `COPY (key texts..., forward, reverse ORDER BY keys) TO STDOUT (FORMAT binary)`.
    pub desktop: String,
    /// The same with 0 for every reverse hash: when the cloud holds no mobile row and the journal no
    /// entry, nothing compares a desktop row by it.
    pub desktop_forward: String,
    /// Cloud: `COPY (key texts..., forward, reverse, mobile, cloud key text ORDER BY keys)`.
    pub cloud: String,
    /// Cloud: the table's journal entries (`id, op, cloud key, reverse hash, old image JSON, key
    /// texts...`), of the table's current shape.
    pub journal: String,
    /// Cloud: deletes the table's journal entries of ids `$1` (read and applied), and those horizon
    /// `$2` (a `pg_snapshot` as text, or NULL) sees: the desktop received their changes.
    pub prune: String,
    /// Cloud: whether the table holds no row, and whether it holds a mobile one.
    pub cloud_holds: String,
    /// Cloud: the mobile rows to bring to the desktop: `key texts..., cloud key, reverse column
    /// texts...` for keys `$1..$n` (text arrays; cloud-key tables: cloud keys `$1`).
    pub fetch: String,
    /// How many key (or scope) columns lead each line.
    pub width: usize,
}

/// `expr`, a value of `from`, as a column of `to` would hold it, when both types are PostgreSQL's own
/// (a cast exists in both databases); as it is otherwise.
fn held_as(c: &MappedColumn, expr: &str, towards_cloud: bool) -> String {
    if !(c.desktop.portable && c.cloud.portable) || c.desktop.shaped == c.cloud.shaped {
        return expr.to_string();
    }
    if towards_cloud {
        c.cloud_shaped(&c.desktop_read(expr))
    } else {
        c.desktop_shaped(&output_text(expr))
    }
}

fn hash(exprs: &[String]) -> String {
    format!("hashtextextended({}, 0)", row_text(exprs))
}

/// `"C"`-ordered key texts.
fn order(exprs: &[String]) -> String {
    exprs
        .iter()
        .map(|e| format!("{e} COLLATE \"C\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ScanSql {
    pub fn build(mapping: &Mapping, i: usize) -> ScanSql {
        let t = &mapping.tables[i];
        let keys = t.key_columns();
        let width = keys.len();
        // A phone's row the desktop has received (its writer seen by the table's horizon, set on the
        // scan's session: see `owner::horizon`) is compared as the desktop's: what differs from it is
        // a desktop change made after it. The others are the phones' changes the desktop may lack.
        let horizon = owner::horizon_once(i);
        let unreceived = |alias: &str| {
            format!(
                "({} AND NOT {})",
                owner::is_mobile(&owner::text_of(alias)),
                owner::seen_once(alias, &horizon)
            )
        };
        let mobile = unreceived("c");
        // Any phone's row (a reconcile brings back one the desktop lost without deleting it too).
        let phone = owner::is_mobile(&owner::text_of("c"));

        // Desktop: the forward projection (lookups joined as the outbox reader joins them).
        let desktop_table = t.table.desktop.quoted();
        let mut forward: Vec<String> = t
            .columns
            .iter()
            .map(|c| held_as(c, &format!("t.{}", q(&c.name)), true))
            .collect();
        let (joins, looked_up) = lookup_joins(mapping, i, Lookups::Set);
        forward.extend(
            t.lookups
                .iter()
                .zip(&looked_up)
                .map(|(lookup, value)| held_as(&lookup.column, value, true)),
        );
        let reverse: Vec<String> = t
            .reverse_columns
            .iter()
            .map(|c| format!("t.{}", q(&c.name)))
            .collect();
        let desktop_keys: Vec<String> = keys
            .iter()
            .map(|k| text(&format!("t.{}", q(&k.name))))
            .collect();
        let desktop_scan = |reverse: &str| {
            format!(
                "COPY (SELECT {keys}, {forward}, {reverse} FROM {desktop_table} t{joins} ORDER BY {order}) \
                 TO STDOUT (FORMAT binary)",
                keys = desktop_keys.join(", "),
                forward = hash(&forward),
                order = order(&desktop_keys),
            )
        };
        let desktop = desktop_scan(&hash(&reverse));
        let desktop_forward = desktop_scan("0::bigint");

        // Cloud: the same columns by the same names (lookups are columns of the cloud table).
        let cloud_table = t.table.cloud.quoted();
        let cloud_columns = |alias: &str| -> (Vec<String>, Vec<String>) {
            let forward = t
                .columns
                .iter()
                .chain(t.lookups.iter().map(|l| &l.column))
                .map(|c| format!("{alias}.{}", q(&c.name)))
                .collect();
            let reverse = t
                .reverse_columns
                .iter()
                .map(|c| held_as(c, &format!("{alias}.{}", q(&c.name)), false))
                .collect();
            (forward, reverse)
        };
        let (cf, cr) = cloud_columns("c");
        let cloud_keys: Vec<String> = keys
            .iter()
            .map(|k| text(&format!("c.{}", q(&k.name))))
            .collect();
        let cloud_key = match &t.kind {
            Kind::Scoped { cloud_key, .. } => text(&format!("c.{}", q(cloud_key))),
            Kind::Key(_) => "NULL::text".to_string(),
        };
        // Whether the row is a phone's the desktop has not received, worked out once a row (`OFFSET 0`
        // keeps the planner from copying the expression into each of its three uses).
        let mobile_flag = "u.m";
        let phone_flag = owner::mobile_flag(&owner::text_of("c"));
        let cloud = format!(
            "COPY (SELECT {keys}, CASE WHEN {mobile_flag} THEN 0 ELSE {forward} END, \
             CASE WHEN {mobile_flag} THEN {reverse} ELSE 0 END, {mobile_flag}, {cloud_key}, {phone_flag} \
             FROM {cloud_table} c CROSS JOIN LATERAL (SELECT coalesce({mobile}, false) AS m OFFSET 0) u \
             ORDER BY {order}) TO STDOUT (FORMAT binary)",
            keys = cloud_keys.join(", "),
            forward = hash(&cf),
            reverse = hash(&cr),
            order = order(&cloud_keys),
        );

        // The journal: each entry's old row read back as a row of the table (only entries made when the
        // table had the columns it has now; the others cannot be read as its rows and are left alone).
        let (_, jr) = cloud_columns("r");
        let journal_keys: Vec<String> = keys
            .iter()
            .map(|k| text(&format!("r.{}", q(&k.name))))
            .collect();
        let journal_ck = match &t.kind {
            Kind::Scoped { cloud_key, .. } => text(&format!("r.{}", q(cloud_key))),
            Kind::Key(_) => "NULL::text".to_string(),
        };
        let (schema, name) = (
            quote_literal(&t.table.cloud.schema),
            quote_literal(&t.table.cloud.name),
        );
        let regclass = quote_literal(&cloud_table);
        let journal = format!(
            "SELECT j.id, j.op::text, {journal_ck}, {reverse}, ({old})::text, {keys}
               FROM (SELECT * FROM tandem.journal
                      WHERE table_schema = {schema} AND table_name = {name}
                        AND (xid IS NULL OR NOT {journal_seen})
                        AND names = (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                                      WHERE a.attrelid = {regclass}::regclass AND a.attnum > 0 AND NOT a.attisdropped)
                      OFFSET 0) j
              CROSS JOIN LATERAL (SELECT (CAST(j.old AS {cloud_table})).*) r
              ORDER BY j.id",
            reverse = hash(&jr),
            journal_seen = owner::seen_xid8("xid", &horizon),
            old = crate::capture::outbox::image(t, "r"),
            keys = journal_keys.join(", "),
        );
        let prune = format!(
            "DELETE FROM tandem.journal WHERE table_schema = {schema} AND table_name = {name} \
             AND (id = ANY($1::bigint[]) OR {seen})",
            seen = owner::seen_xid8("xid", "$2::text::pg_catalog.pg_snapshot"),
        );

        // The values as the stream would send them (see `output_text`).
        let values: Vec<String> = t
            .reverse_columns
            .iter()
            .map(|c| output_text(&format!("c.{}", q(&c.name))))
            .collect();
        // Fetched key by key: each key's row looked up through the cloud's unique index on it (an
        // index the key's equality can use: the planner, seeing thousands of keys and a filter it
        // misjudges, otherwise scans the whole table for each chunk: 1M mobile rows to bring took 46 s,
        // 0.2 s per 5,000 keys). A key without such an equality is matched by a join.
        let fetch_by = |unnest: &str, matching: &[String], probe: bool, ck: &str| {
            let columns = format!(
                "{keys}, {ck}, {values}",
                keys = cloud_keys.join(", "),
                values = values.join(", "),
            );
            let matching = matching.join(" AND ");
            if probe {
                format!(
                    "SELECT f.* FROM {unnest} CROSS JOIN LATERAL (SELECT {columns} FROM {cloud_table} c \
                     WHERE {matching} AND {phone} OFFSET 0) f"
                )
            } else {
                format!(
                    "SELECT {columns} FROM {unnest} JOIN {cloud_table} c ON {matching} \
                     WHERE {phone}"
                )
            }
        };
        let fetch = match &t.kind {
            Kind::Key(key) => {
                let args: Vec<String> = (1..=width).map(|n| format!("${n}::text[]")).collect();
                let names: Vec<String> = (1..=width).map(|n| format!("k{n}")).collect();
                let matching: Vec<String> = key
                    .iter()
                    .enumerate()
                    .map(|(n, k)| {
                        same_key(
                            &format!("c.{}", q(&k.name)),
                            &format!("CAST(u.k{} AS {})", n + 1, k.cloud.base),
                            &k.cloud,
                        )
                    })
                    .collect();
                fetch_by(
                    &format!("unnest({}) AS u({})", args.join(", "), names.join(", ")),
                    &matching,
                    key.iter().all(|k| k.cloud.equality.is_some()),
                    "NULL::text",
                )
            }
            Kind::Scoped {
                cloud_key,
                cloud_key_type,
                ..
            } => fetch_by(
                "unnest($1::text[]) AS u(ck)",
                &[same_key(
                    &format!("c.{}", q(cloud_key)),
                    &format!("CAST(u.ck AS {})", cloud_key_type.base),
                    cloud_key_type,
                )],
                cloud_key_type.equality.is_some(),
                &text(&format!("c.{}", q(cloud_key))),
            ),
        };
        let cloud_holds = format!(
            "SELECT NOT EXISTS (SELECT FROM {cloud_table}), \
                    EXISTS (SELECT FROM {cloud_table} c WHERE {mobile})"
        );
        ScanSql {
            desktop,
            desktop_forward,
            cloud,
            journal,
            prune,
            cloud_holds,
            fetch,
            width,
        }
    }
}

/// A key (or scope): each column's text, `None` for NULL. Ordered as both sides order it: byte order
/// per column, NULL last.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(pub Vec<Option<Bytes>>);

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        for (a, b) in self.0.iter().zip(&other.0) {
            let o = match (a, b) {
                (Some(a), Some(b)) => a.as_ref().cmp(b.as_ref()),
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
            };
            if o.is_ne() {
                return o;
            }
        }
        self.0.len().cmp(&other.0.len())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Key {
    /// The key's texts (lossy only for text that is not UTF-8, which PostgreSQL never sends).
    pub fn texts(&self) -> Vec<Option<String>> {
        self.0
            .iter()
            .map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
            .collect()
    }
}

/// One line of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub key: Key,
    pub hashes: Hashes,
    /// Cloud lines: whether the row is a phone's the desktop has not received (by the table's
    /// horizon): compared by what travels back, not as the desktop's.
    pub mobile: bool,
    /// Cloud lines: whether a phone wrote the row last, received or not.
    pub phone: bool,
    /// Cloud lines of cloud-key tables: the cloud key's text.
    pub cloud_key: Option<String>,
}

/// A binary COPY out stream, read line by line.
pub struct Lines {
    stream: Pin<Box<CopyOutStream>>,
    buffer: BytesMut,
    header: bool,
    width: usize,
    side: Side,
    done: bool,
    /// Lines read so far.
    pub read: u64,
}

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl Lines {
    /// Starts `sql` (one of [`ScanSql`]'s COPY statements) on `client`.
    pub async fn start(
        client: &Client,
        side: Side,
        sql: &str,
        width: usize,
        what: &str,
    ) -> Result<Lines, DbError> {
        let stream = client.copy_out(sql).await.ctx(side, what.to_string())?;
        Ok(Lines {
            stream: Box::pin(stream),
            buffer: BytesMut::new(),
            header: false,
            width,
            side,
            done: false,
            read: 0,
        })
    }

    /// Makes `n` bytes available; false at the end of the stream.
    async fn fill(&mut self, n: usize) -> Result<bool, DbError> {
        while self.buffer.len() < n {
            match self.stream.next().await {
                Some(chunk) => {
                    let chunk = chunk.ctx(self.side, "reading a table scan")?;
                    self.buffer.extend_from_slice(&chunk);
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    fn malformed(&self, what: &str) -> DbError {
        DbError::Protocol {
            side: self.side,
            message: format!("a table scan's COPY data is malformed: {what}"),
        }
    }

    /// The next line; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Line>, DbError> {
        if self.done {
            return Ok(None);
        }
        if !self.header {
            if !self.fill(SIGNATURE.len() + 8).await?
                || &self.buffer[..SIGNATURE.len()] != SIGNATURE
            {
                return Err(self.malformed("no binary COPY signature"));
            }
            self.buffer.advance(SIGNATURE.len() + 4);
            let extension = self.buffer.get_u32() as usize;
            if !self.fill(extension).await? {
                return Err(self.malformed("a cut header"));
            }
            self.buffer.advance(extension);
            self.header = true;
        }
        if !self.fill(2).await? {
            return Err(self.malformed("no trailer"));
        }
        let fields = self.buffer.get_i16();
        if fields == -1 {
            self.done = true;
            return Ok(None);
        }
        let mut values: Vec<Option<Bytes>> = Vec::with_capacity(fields as usize);
        for _ in 0..fields {
            if !self.fill(4).await? {
                return Err(self.malformed("a cut field"));
            }
            let len = self.buffer.get_i32();
            if len < 0 {
                values.push(None);
                continue;
            }
            let len = len as usize;
            if !self.fill(len).await? {
                return Err(self.malformed("a cut value"));
            }
            values.push(Some(self.buffer.split_to(len).freeze()));
        }
        if values.len() < self.width + 2 {
            return Err(self.malformed("too few fields"));
        }
        let int8 = |v: &Option<Bytes>| -> Option<i64> {
            let b = v.as_ref()?;
            Some(i64::from_be_bytes(b.as_ref().try_into().ok()?))
        };
        let (forward, reverse) = (int8(&values[self.width]), int8(&values[self.width + 1]));
        let (Some(forward), Some(reverse)) = (forward, reverse) else {
            return Err(self.malformed("a hash that is not a bigint"));
        };
        let mobile = values
            .get(self.width + 2)
            .and_then(|v| v.as_ref())
            .is_some_and(|b| b.first() == Some(&1));
        let cloud_key = values
            .get(self.width + 3)
            .and_then(|v| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned());
        let phone = values
            .get(self.width + 4)
            .and_then(|v| v.as_ref())
            .is_some_and(|b| b.first() == Some(&1));
        values.truncate(self.width);
        self.read += 1;
        Ok(Some(Line {
            key: Key(values),
            hashes: Hashes { forward, reverse },
            mobile,
            phone,
            cloud_key,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(parts: &[Option<&str>]) -> Key {
        Key(parts
            .iter()
            .map(|p| p.map(|s| Bytes::copy_from_slice(s.as_bytes())))
            .collect())
    }

    #[test]
    fn keys_order_as_both_databases_order_them_under_the_c_collation() {
        // Byte order, not numeric order: both sides sort the text.
        assert!(key(&[Some("10")]) < key(&[Some("9")]));
        assert!(key(&[Some("a")]) < key(&[Some("ab")]));
        assert!(key(&[Some("Z")]) < key(&[Some("a")]));
        // NULL last, per column.
        assert!(key(&[Some("z")]) < key(&[None]));
        assert!(key(&[Some("1"), Some("x")]) < key(&[Some("1"), None]));
        assert!(key(&[Some("1"), None]) < key(&[Some("2"), Some("a")]));
        // Multi-byte UTF-8 after ASCII, as "C" orders it.
        assert!(key(&[Some("z")]) < key(&[Some("é")]));
    }
}
