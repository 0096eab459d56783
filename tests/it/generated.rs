//! Property: on generated schemas — 1 to 3 tables of both kinds, columns of every kind of PostgreSQL
//! type, names that collide with the aliases an SQL generator uses, reserved words, quotes, spaces and
//! non-ASCII — random desktop and phone changes interleaved with `tandem run --once` converge. After a
//! final run every table holds the same multiset of rows on both sides (compared as the text of every
//! column under fixed settings), the cloud's mobile-owned rows are exactly the phone's, and neither side
//! logged a conflict or a dead letter: both sides have the same types, so every value fits.
//!
//! No change is a true both-sides edit, so none may become a conflict: desktop-made and phone-made rows
//! live in disjoint halves of the key space (desktop-key tables) or of the scope space (cloud-key
//! tables); a phone takes over only a desktop row whose key or scope is synced, the desktop never
//! touches it again; and a key or scope one side changed is left alone by the other until the next run.
//!
//! Every case runs on fresh databases, so the default is 24 cases; more with
//! `TANDEM_PROPTEST_CASES=500 cargo test --test it generated`.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use tandem::config::Config;
use tandem::pipeline::{self, RunOptions};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::support::{TestDb, count};

/// User-defined types in a schema of their own, the same on both sides.
pub(crate) const TYPES_DDL: &str = r#"CREATE SCHEMA "typ's";
CREATE TYPE "typ's"."order" AS ENUM ('a', 'it''s', 'with space', 'ü');
CREATE DOMAIN "typ's"."pos int" AS int4 CHECK (VALUE > 0);
CREATE TYPE "typ's"."Pair" AS (a int, "b c" text);
"#;
const CITEXT: &str = "/usr/share/postgresql/15/extension/citext.control";
const OWNERSHIP: &str = "source char(1), created_at timestamptz NOT NULL DEFAULT now(), \
                         updated_at timestamptz NOT NULL DEFAULT now()";
/// Both test connections read and write values under these, so a value's text is the same on both.
pub(crate) const SETTINGS: &str =
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres';
    SET extra_float_digits = 3; SET bytea_output = 'hex'; SET lc_monetary = 'C';";
const MAX_ROWS: usize = 20;
pub(crate) const MAX_COLUMNS: usize = 7;

/// (type, usable as a key or scope, edge values as SQL literals). Within a type no two edges are equal
/// under its `=` or have the same text: keys drawn from them are unique, and a row is found by its text.
#[rustfmt::skip]
pub(crate) static TYPES: &[(&str, bool, &[&str])] = &[
    ("int2", true, &["-32768", "32767", "0"]), ("int4", true, &["-2147483648", "2147483647", "0", "-1"]),
    ("int8", true, &["-9223372036854775808", "9223372036854775807", "0"]),
    ("bool", true, &["true", "false"]),
    ("numeric", true, &["'NaN'", "'Infinity'", "'-Infinity'", "1e30", "'1e100'", "1.500", "-0.000",
        "123456789012345678901234567890.123456789"]),
    ("numeric(12,3)", true, &["'NaN'", "1.500", "-0.000", "999999999.999", "-1.5"]),
    ("text", true, &["''", "'a'", "'A'", "' a '", "'it''s'", "'ünïcödé 日付'", "E'tab\\there'",
        "'back\\slash'"]),
    ("text", false, &["'a'", "repeat('ü', 100000)",
        "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 3000) i)"]),
    ("varchar(10)", true, &["''", "'abcdefghij'", "'ü'", "'it''s'"]),
    ("char(3)", true, &["''", "'a'", "'abc'", "'ü'"]), ("bpchar", true, &["'x  '", "' y'", "''"]),
    ("citext", false, &["''", "'Ab'", "'ÜNÏ'"]),
    ("uuid", true, &["'00000000-0000-0000-0000-000000000000'", "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"]),
    ("date", true, &["'infinity'", "'-infinity'", "'4713-01-01 BC'", "'2024-02-29'", "'5874897-12-31'"]),
    ("timestamp", true, &["'infinity'", "'-infinity'", "'4713-01-01 00:00:00 BC'",
        "'2024-02-29 23:59:59.999999'", "'2000-01-01 00:00:00.000001'"]),
    ("timestamptz", true, &["'infinity'", "'-infinity'", "'4713-01-01 00:00:00+00 BC'",
        "'2024-02-29 12:34:56.789012+05:30'", "'1999-12-31 23:59:59.999999-08'"]),
    ("bytea", true, &["'\\x'", "'\\x00ff00'", "'\\x00'", "'\\xdeadbeef'"]),
    ("bytea", false, &["'\\x'", "'\\x00ff00'", "decode(repeat('ab', 100000), 'hex')"]),
    ("inet", true, &["'10.0.0.1'", "'::1'", "'192.168.0.0/16'", "'2001:db8::1/64'"]),
    (r#""typ's"."order""#, true, &["'a'", "'it''s'", "'with space'", "'ü'"]),
    ("interval", true, &["'-1 days'", "'1 mon 30 days'", "'-1 years +2 days -00:00:01'",
        "'00:00:00.000001'", "'0'"]),
    (r#""typ's"."pos int""#, false, &["1", "2147483647"]),
    (r#""typ's"."Pair""#, false, &["'(1,\"x y\")'", "'(,)'", "ROW(-1, 'it''s')"]),
    ("float4", false, &["'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "'1.4e-45'", "'3.4028235e38'"]),
    ("float8", false, &["'NaN'", "'Infinity'", "'-0'", "'1e-310'", "'1.7976931348623157e308'", "'0.1'"]),
    ("money", false, &["'-92233720368547758.08'", "'92233720368547758.07'", "'0'", "'1.5'"]),
    ("bit(4)", false, &["B'0000'", "B'1010'"]), ("varbit", false, &["B''", "B'1'", "B'0101010101'"]),
    ("time", false, &["'24:00:00'", "'00:00:00.000001'", "'23:59:59.999999'", "'00:00'"]),
    ("timetz", false, &["'24:00:00-15:59'", "'00:00:00.000001+14'", "'12:00+05:30'"]),
    ("json", false, &[r#"'{"a" :  1, "a": 2}'"#, "'[]'", "'  \"x\"  '", r#"'{"e": "\u00e9"}'"#]),
    ("jsonb", false, &["'{}'", r#"'{"b": [1, 2.50, null], "a": "ü"}'"#, r#"'"str"'"#, "'1e400'"]),
    ("xml", false, &["'<a x=\"1\">ü</a>'", "'<!-- c --><b/>'", "'plain text'"]),
    ("tsvector", false, &["'fat:1A cat:2 ''with space'''", "''"]),
    ("cidr", false, &["'10.0.0.0/8'", "'::/0'", "'192.168.1.0/24'"]),
    ("macaddr", false, &["'08:00:2b:01:02:03'", "'00:00:00:00:00:00'"]),
    ("point", false, &["'(1.5,-2)'", "'(0,-0)'", "'(1e-310,1e300)'"]),
    ("box", false, &["'((2,1),(0,0))'", "'((1,2),(0,0))'"]), ("circle", false, &["'<(0,0),1.5>'"]),
    ("lseg", false, &["'[(0,0),(1,1)]'", "'[(-1.5,2),(3,1e-300)]'"]),
    ("path", false, &["'((0,0),(1,1),(2,0))'", "'[(0,0),(1,1)]'"]),
    ("polygon", false, &["'((0,0),(1,1),(1,0))'", "'((0,0))'"]),
    ("int4[]", false, &["'{1,NULL,3}'", "'{}'", "'{{1,2},{3,4}}'", "'[0:1]={1,2}'"]),
    ("text[]", false, &[r#"'{"a b",NULL,"NULL",""}'"#, "'{}'", r#"'{"it''s","q\"uote"}'"#]),
    ("numeric[]", false, &["'{NaN,1.500,NULL}'", "'[2:3]={-0.000,1e30}'"]),
    ("timestamptz[]", false, &["'{infinity,\"2024-02-29 00:00:00+00\"}'", "'{}'"]),
    ("bool[]", false, &["'{t,NULL}'", "'{{t},{f}}'"]), ("char(3)[]", false, &["'{abc,de}'", "'{NULL}'"]),
    (r#""typ's"."order"[]"#, false, &["'{a,\"with space\"}'", "'{}'"]),
    ("int4range", false, &["'[1,5)'", "'empty'", "'(,)'", "'[-2147483648,0]'"]),
    ("tstzrange", false, &["'[2024-02-29 00:00+00,infinity)'", "'empty'",
        "'(,\"4713-01-01 00:00:00+00 BC\")'"]),
];

const LONG: &str = "long_name_ünïcödé_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
const _: () = assert!(LONG.len() == 63, "the longest name PostgreSQL keeps");

/// Table and column names: the short aliases and internal names an SQL generator might use, reserved
/// words, case, spaces, quotes, non-ASCII, the longest name. Never `source`, `created_at`, `updated_at`.
#[rustfmt::skip]
const NAMES: &[&str] = &[
    "c", "n", "d", "s", "k", "o", "p", "x", "h", "ck", "tid", "dup", "csource", "_n", "_seq", "_op",
    "_old", "_ck", "_first_old", "_unchanged", "user", "order", "select", "table", "MixedCase",
    "with space", "quo\"te", "it's", "ünïcödé", "日付", LONG,
];
#[rustfmt::skip]
pub(crate) const SCHEMAS: &[&str] = &[
    "public", "user", "MixedCase", "with space", "it's", "quo\"te", "日付", "order", LONG,
];

/// Indexes into TYPES of the types this machine has (citext is an extension), and of the key types.
pub(crate) fn available() -> &'static (Vec<usize>, Vec<usize>) {
    static AVAILABLE: OnceLock<(Vec<usize>, Vec<usize>)> = OnceLock::new();
    AVAILABLE.get_or_init(|| {
        let citext = std::path::Path::new(CITEXT).exists();
        let all: Vec<usize> = (0..TYPES.len())
            .filter(|&i| citext || TYPES[i].0 != "citext")
            .collect();
        let keys = all.iter().copied().filter(|&i| TYPES[i].1).collect();
        (all, keys)
    })
}

pub(crate) fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub(crate) fn join<T>(items: impl IntoIterator<Item = T>, f: impl FnMut(T) -> String) -> String {
    items.into_iter().map(f).collect::<Vec<_>>().join(", ")
}

#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub(crate) schema: &'static str,
    pub(crate) name: &'static str,
    /// Name and index into TYPES. The first `ident` columns are the key or, with a cloud key, the scope.
    pub(crate) cols: Vec<(&'static str, usize)>,
    pub(crate) ident: usize,
    pub(crate) cloud_key: Option<&'static str>,
}

/// A row of the model: an edge index per column (`None` is NULL), and whether the phone owns it.
#[derive(Clone, PartialEq)]
struct Row {
    vals: Vec<Option<usize>>,
    mobile: bool,
}

impl Table {
    pub(crate) fn qualified(&self) -> String {
        format!("{}.{}", q(self.schema), q(self.name))
    }

    pub(crate) fn edges(&self, col: usize) -> &'static [&'static str] {
        TYPES[self.cols[col].1].2
    }

    /// How many values a key or scope column takes: its edges, and NULL in a scope.
    pub(crate) fn radix(&self, col: usize) -> usize {
        self.edges(col).len() + usize::from(self.cloud_key.is_some())
    }

    /// Keys (or scopes) are numbered: even ones are the desktop's, odd ones the phone's.
    pub(crate) fn units(&self) -> usize {
        (0..self.ident).map(|c| self.radix(c)).product()
    }

    pub(crate) fn decode(&self, mut unit: usize) -> Vec<Option<usize>> {
        let mut vals = vec![None; self.ident];
        for c in (0..self.ident).rev() {
            let v = unit % self.radix(c);
            vals[c] = (v < self.edges(c).len()).then_some(v);
            unit /= self.radix(c);
        }
        vals
    }

    pub(crate) fn unit(&self, vals: &[Option<usize>]) -> usize {
        (0..self.ident).fold(0, |u, c| {
            u * self.radix(c) + vals[c].unwrap_or(self.edges(c).len())
        })
    }

    pub(crate) fn value(&self, col: usize, pick: Index) -> Option<usize> {
        let n = self.edges(col).len();
        Some(pick.index(n + 1)).filter(|&i| i < n)
    }

    pub(crate) fn literal(&self, col: usize, val: Option<usize>) -> String {
        let ty = TYPES[self.cols[col].1].0;
        match val {
            Some(i) => format!("({})::{ty}", self.edges(col)[i]),
            None => format!("NULL::{ty}"),
        }
    }

    pub(crate) fn texts(&self) -> String {
        join(&self.cols, |(n, _)| format!("{}::text", q(n)))
    }

    pub(crate) fn texts_of(&self, vals: &[Option<usize>]) -> String {
        join(0..vals.len(), |c| self.literal(c, vals[c]) + "::text")
    }

    pub(crate) fn insert(&self, vals: &[Option<usize>]) -> String {
        let (table, names) = (self.qualified(), join(&self.cols, |(n, _)| q(n)));
        let values = join(0..vals.len(), |c| self.literal(c, vals[c]));
        format!("INSERT INTO {table} ({names}) VALUES ({values})")
    }

    /// `WHERE` for one row whose columns have the texts of `vals` (`owner`: a filter on `source`).
    fn one_row(&self, vals: &[Option<usize>], owner: &str) -> String {
        let (table, texts, values) = (self.qualified(), self.texts(), self.texts_of(vals));
        format!(
            "WHERE ctid = (SELECT ctid FROM {table} WHERE {owner}ROW({texts}) IS NOT DISTINCT FROM ROW({values}) LIMIT 1)"
        )
    }

    fn update(&self, old: &Row, new: &Row, cols: Range<usize>, owner: &str) -> String {
        let set = join(cols, |c| {
            format!("{} = {}", q(self.cols[c].0), self.literal(c, new.vals[c]))
        });
        let (table, row) = (self.qualified(), self.one_row(&old.vals, owner));
        format!("UPDATE {table} SET {set} {row}")
    }

    fn delete(&self, old: &Row, owner: &str) -> String {
        let (table, row) = (self.qualified(), self.one_row(&old.vals, owner));
        format!("DELETE FROM {table} {row}")
    }

    pub(crate) fn ddl(&self, cloud: bool) -> String {
        let mut sql = String::new();
        if self.schema != "public" {
            sql += &format!("CREATE SCHEMA IF NOT EXISTS {};\n", q(self.schema));
        }
        let mut cols = Vec::new();
        if let (true, Some(ck)) = (cloud, self.cloud_key) {
            cols.push(format!("{} bigserial PRIMARY KEY", q(ck)));
        }
        for (name, ty) in &self.cols {
            cols.push(format!("{} {}", q(name), TYPES[*ty].0));
        }
        if cloud {
            cols.push(OWNERSHIP.to_string());
        }
        let ident = join(&self.cols[..self.ident], |(n, _)| q(n));
        if self.cloud_key.is_none() {
            cols.push(format!("PRIMARY KEY ({ident})"));
        }
        sql += &format!("CREATE TABLE {} ({});\n", self.qualified(), cols.join(", "));
        if self.cloud_key.is_some() {
            sql += &format!("CREATE INDEX ON {} ({ident});\n", self.qualified());
        }
        sql
    }

    pub(crate) fn toml(&self) -> String {
        let ident = format!("[{}]", join(&self.cols[..self.ident], |(n, _)| toml_str(n)));
        let identity = match self.cloud_key {
            None => format!("key = {ident}"),
            Some(ck) => format!("cloud_key = {}\nscope = {ident}", toml_str(ck)),
        };
        let desktop = toml_str(&format!("{}.{}", self.schema, self.name));
        format!("[[tables]]\ndesktop = {desktop}\n{identity}\n")
    }
}

pub(crate) fn table() -> impl Strategy<Value = Table> {
    let names = Just(NAMES.to_vec()).prop_shuffle();
    let types = prop::collection::vec(any::<Index>(), 2..=MAX_COLUMNS);
    (names, any::<Index>(), any::<bool>(), 1..=2usize, types).prop_map(
        |(names, schema, cloud_keyed, ident, types)| {
            let (all, keys) = available();
            let pool = |c: usize| if c < ident { keys } else { all };
            Table {
                schema: SCHEMAS[schema.index(SCHEMAS.len())],
                name: names[0],
                cols: (0..types.len())
                    .map(|c| (names[c + 1], pool(c)[types[c].index(pool(c).len())]))
                    .collect(),
                ident,
                cloud_key: cloud_keyed.then_some(names[types.len() + 1]),
            }
        },
    )
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    DesktopInsert,
    DesktopUpdate,
    DesktopDelete,
    PhoneInsert,
    PhoneUpdate,
    PhoneDelete,
    /// A phone's edit of a desktop-made row: it becomes mobile-owned.
    Takeover,
    Run,
}

/// What to do; the table, row, column, key and values are picked from what the model holds then.
#[derive(Debug, Clone)]
struct Op {
    act: Act,
    table: Index,
    row: Index,
    col: Index,
    unit: Index,
    values: [Index; MAX_COLUMNS],
}

fn op() -> impl Strategy<Value = Op> {
    let act = prop_oneof![
        5 => Just(Act::DesktopInsert),
        3 => Just(Act::DesktopUpdate),
        2 => Just(Act::DesktopDelete),
        3 => Just(Act::PhoneInsert),
        2 => Just(Act::PhoneUpdate),
        1 => Just(Act::PhoneDelete),
        3 => Just(Act::Takeover),
        3 => Just(Act::Run),
    ];
    (act, any::<[Index; 4]>(), any::<[Index; MAX_COLUMNS]>()).prop_map(
        |(act, [table, row, col, unit], values)| Op {
            act,
            table,
            row,
            col,
            unit,
            values,
        },
    )
}

#[derive(Clone)]
struct Case {
    tables: Vec<Table>,
    ops: Vec<Op>,
}

impl Case {
    fn ddl(&self, cloud: bool) -> String {
        let citext = available().0.iter().any(|&i| TYPES[i].0 == "citext");
        let extension = if citext {
            "CREATE EXTENSION IF NOT EXISTS citext;\n"
        } else {
            ""
        };
        let tables: String = self.tables.iter().map(|t| t.ddl(cloud)).collect();
        format!("{extension}{TYPES_DDL}{tables}")
    }

    fn toml(&self) -> String {
        self.tables.iter().map(Table::toml).collect()
    }
}

/// The schema and the acts only: the failure message lists every statement the case ran.
impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let acts: Vec<Act> = self.ops.iter().map(|o| o.act).collect();
        write!(f, "\n{}{acts:?}", self.ddl(true))
    }
}

fn case() -> impl Strategy<Value = Case> {
    let tables = prop::collection::vec(table(), 1..=3);
    (tables, any::<bool>(), prop::collection::vec(op(), 1..=30)).prop_map(
        |(mut tables, same_name, ops)| {
            if same_name && tables.len() > 1 {
                tables[1].name = tables[0].name;
            }
            // The same name twice in one schema: the later table moves to the next schema.
            for i in 1..tables.len() {
                while tables[..i]
                    .iter()
                    .any(|t| (t.schema, t.name) == (tables[i].schema, tables[i].name))
                {
                    let at = SCHEMAS.iter().position(|s| *s == tables[i].schema).unwrap();
                    tables[i].schema = SCHEMAS[(at + 1) % SCHEMAS.len()];
                }
            }
            Case { tables, ops }
        },
    )
}

#[derive(Clone, Default)]
struct Model {
    rows: Vec<Row>,
    /// Desktop keys a phone took over: the desktop never uses them again.
    retired: HashSet<usize>,
    /// Keys or scopes the desktop (0) and the phone (1) changed since the last run: the other side
    /// leaves them alone until the next.
    dirty: [HashSet<usize>; 2],
}

pub(crate) fn pick(from: Vec<usize>, at: Index) -> Option<usize> {
    (!from.is_empty()).then(|| from[at.index(from.len())])
}

impl Model {
    fn unit(&self, t: &Table, row: &usize) -> usize {
        t.unit(&self.rows[*row].vals)
    }

    /// Keys or scopes of one side that a new row, or a moved one, may take.
    fn free(&self, t: &Table, phone: bool) -> Vec<usize> {
        let taken =
            |u: &usize| self.retired.contains(u) || self.rows.iter().any(|r| t.unit(&r.vals) == *u);
        (0..t.units())
            .filter(|u| u % 2 == usize::from(phone) && !self.dirty[usize::from(!phone)].contains(u))
            .filter(|u| t.cloud_key.is_some() || !taken(u))
            .collect()
    }

    /// The statement `op` makes and the model after it, or `None` when the model offers nothing to
    /// make it on.
    fn plan(&self, t: &Table, op: &Op) -> Option<(String, Model)> {
        let mut next = self.clone();
        let sql = match op.act {
            Act::DesktopInsert | Act::PhoneInsert => next.insert(t, op, op.act == Act::PhoneInsert),
            Act::DesktopUpdate | Act::DesktopDelete => next.desktop_edit(t, op),
            Act::PhoneUpdate | Act::PhoneDelete | Act::Takeover => next.phone_edit(t, op),
            Act::Run => None,
        }?;
        Some((sql, next))
    }

    fn insert(&mut self, t: &Table, op: &Op, mobile: bool) -> Option<String> {
        let unit = pick(self.free(t, mobile), op.unit).filter(|_| self.rows.len() < MAX_ROWS)?;
        let mut vals = t.decode(unit);
        vals.extend((t.ident..t.cols.len()).map(|c| t.value(c, op.values[c])));
        self.dirty[usize::from(mobile)].insert(unit);
        let sql = t.insert(&vals);
        self.rows.push(Row { vals, mobile });
        Some(sql)
    }

    /// Never a row a phone owns, nor one the desktop cannot tell apart from a phone's row.
    fn desktop_edit(&mut self, t: &Table, op: &Op) -> Option<String> {
        let mine = |i: &usize| {
            let r = &self.rows[*i];
            let copy = self.rows.iter().any(|o| o.mobile && o.vals == r.vals);
            !r.mobile && !copy && !self.dirty[1].contains(&self.unit(t, i))
        };
        let i = pick((0..self.rows.len()).filter(mine).collect(), op.row)?;
        self.dirty[0].insert(self.unit(t, &i));
        if op.act == Act::DesktopDelete {
            return Some(t.delete(&self.rows.remove(i), ""));
        }
        let c = op.col.index(t.cols.len());
        let (old, mut new) = (self.rows[i].clone(), self.rows[i].clone());
        let cols = if c < t.ident {
            let unit = pick(self.free(t, false), op.unit)?;
            new.vals[..t.ident].copy_from_slice(&t.decode(unit));
            self.dirty[0].insert(unit);
            0..t.ident
        } else {
            new.vals[c] = t.value(c, op.values[c]);
            c..c + 1
        };
        self.rows[i] = new;
        Some(t.update(&old, &self.rows[i], cols, ""))
    }

    /// A phone edits values, never keys; it takes over a table of key columns only by a no-op edit.
    fn phone_edit(&mut self, t: &Table, op: &Op) -> Option<String> {
        let takeover = op.act == Act::Takeover;
        let theirs = |i: &usize| {
            self.rows[*i].mobile != takeover && !self.dirty[0].contains(&self.unit(t, i))
        };
        let i = pick((0..self.rows.len()).filter(theirs).collect(), op.row)?;
        let unit = self.unit(t, &i);
        self.dirty[1].insert(unit);
        if takeover && t.cloud_key.is_none() {
            self.retired.insert(unit);
        }
        let owner = if takeover {
            "source IS DISTINCT FROM 'M' AND "
        } else {
            "source = 'M' AND "
        };
        if op.act == Act::PhoneDelete {
            return Some(t.delete(&self.rows.remove(i), owner));
        }
        let c = match t.cols.len() - t.ident {
            0 if takeover => 0,
            0 => return None,
            others => t.ident + op.col.index(others),
        };
        let (old, new) = (self.rows[i].clone(), &mut self.rows[i]);
        new.mobile = true;
        if c >= t.ident {
            new.vals[c] = t.value(c, op.values[c]);
        }
        Some(t.update(&old, &self.rows[i], c..c + 1, owner))
    }
}

pub(crate) type Texts = Vec<Vec<Option<String>>>;

pub(crate) fn show(value: &Option<String>, limit: usize) -> String {
    let Some(s) = value else { return "NULL".into() };
    match s.char_indices().nth(limit) {
        Some((at, _)) => format!("{:?}… ({} bytes)", &s[..at], s.len()),
        None => format!("{s:?}"),
    }
}

/// The rows only in `a` and only in `b`, as multisets.
pub(crate) fn diff(a_name: &str, a: &Texts, b_name: &str, b: &Texts) -> String {
    let mut only_b: Vec<&Vec<Option<String>>> = b.iter().collect();
    let mut only_a = Vec::new();
    for x in a {
        match only_b.iter().position(|y| *y == x) {
            Some(at) => drop(only_b.remove(at)),
            None => only_a.push(x),
        }
    }
    let lines = |rows: Vec<&Vec<Option<String>>>| -> String {
        rows.iter()
            .map(|r| format!("\n      ({})", join(r.iter(), |v| show(v, 60))))
            .collect()
    };
    format!(
        "    only {a_name}:{}\n    only {b_name}:{}",
        lines(only_a),
        lines(only_b)
    )
}

pub(crate) async fn query_texts(client: &Client, sql: &str) -> Result<Texts, String> {
    let rows = client
        .query(sql, &[])
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    let mut texts: Texts = rows
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get(i)).collect())
        .collect();
    texts.sort();
    Ok(texts)
}

struct Harness<'a> {
    case: &'a Case,
    desktop: Client,
    cloud: Client,
    config: Option<Config>,
    models: Vec<Model>,
    log: Vec<String>,
}

impl Harness<'_> {
    fn report(&self, problem: &str) -> String {
        let ops: Vec<String> = self
            .log
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{:>3}. {l}", i + 1))
            .collect();
        format!(
            "{problem}\n\n-- desktop schema\n{}\n-- cloud schema\n{}\n-- config\n{}\n-- ops\n{}\n",
            self.case.ddl(false),
            self.case.ddl(true),
            self.case.toml(),
            ops.join("\n")
        )
    }

    async fn step(&mut self, op: &Op) -> Result<(), String> {
        if op.act == Act::Run {
            return self.run().await;
        }
        let case = self.case;
        let ti = op.table.index(case.tables.len());
        let t = &case.tables[ti];
        let phone = matches!(
            op.act,
            Act::PhoneInsert | Act::PhoneUpdate | Act::PhoneDelete | Act::Takeover
        );
        let Some((sql, next)) = self.models[ti].plan(t, op) else {
            return Ok(());
        };
        let (who, client) = if phone {
            ("phone", &self.cloud)
        } else {
            ("desktop", &self.desktop)
        };
        self.log.push(format!("{who}: {sql}"));
        let changed = match client.execute(&sql, &[]).await {
            Ok(n) => n,
            Err(e) => return Err(self.report(&format!("{who}'s statement failed: {e}"))),
        };
        match (changed, phone) {
            (1, _) => self.models[ti] = next,
            // The cloud's copy of the row is not as the phone left it: the comparison shows how.
            (_, true) => self
                .log
                .push(format!("     (phone: {changed} rows changed, not 1)")),
            (_, false) => {
                return Err(self.report(&format!("the desktop changed {changed} rows, not 1")));
            }
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<(), String> {
        let config = self.config.clone().expect("installed");
        self.log.push("run --once".into());
        // In a task of its own, so that a panic in tandem is reported with the case.
        let mut run = tokio::spawn(async move {
            pipeline::run(&config, RunOptions { once: true }, CancellationToken::new()).await
        });
        let outcome = tokio::time::timeout(Duration::from_secs(60), &mut run).await;
        run.abort();
        let (forward, reverse) = match outcome {
            Err(_) => return Err(self.report("run --once did not finish within 60 s")),
            Ok(Err(panic)) => return Err(self.report(&format!("run --once: {panic}"))),
            Ok(Ok(Err(e))) => return Err(self.report(&format!("run --once failed: {e}"))),
            Ok(Ok(Ok(report))) if !report.parked.is_empty() => {
                return Err(self.report(&format!("run --once parked tables: {:?}", report.parked)));
            }
            Ok(Ok(Ok(report))) => (report.forward, report.reverse),
        };
        let (f, r) = (forward.outcome, reverse.outcome);
        let done = format!(
            ": forward wrote {} deleted {}, reverse wrote {} deleted {}",
            f.written, f.deleted, r.written, r.deleted
        );
        self.log.last_mut().expect("pushed above").push_str(&done);
        for model in &mut self.models {
            model.dirty = Default::default();
        }
        Ok(())
    }

    /// Every way the databases differ from what the case expects.
    async fn problems(&self) -> Result<Vec<String>, String> {
        let mut problems = Vec::new();
        for (t, model) in self.case.tables.iter().zip(&self.models) {
            let select = format!("SELECT {} FROM {}", t.texts(), t.qualified());
            let desktop = query_texts(&self.desktop, &select).await?;
            let cloud = query_texts(&self.cloud, &select).await?;
            if desktop != cloud {
                let diff = diff("on the desktop", &desktop, "in the cloud", &cloud);
                problems.push(format!(
                    "{}: desktop and cloud differ\n{diff}",
                    t.qualified()
                ));
            }
            let mobile = query_texts(&self.cloud, &format!("{select} WHERE source = 'M'")).await?;
            let mobile_rows = model.rows.iter().filter(|r| r.mobile);
            let expected: Vec<String> = mobile_rows
                .map(|r| format!("SELECT {}", t.texts_of(&r.vals)))
                .collect();
            let expected = match expected.is_empty() {
                true => Vec::new(),
                false => query_texts(&self.cloud, &expected.join(" UNION ALL ")).await?,
            };
            if mobile != expected {
                let diff = diff("the phone's", &expected, "the cloud's", &mobile);
                problems.push(format!(
                    "{}: the cloud's mobile-owned rows are not the phone's\n{diff}",
                    t.qualified()
                ));
            }
        }
        for (side, client) in [("desktop", &self.desktop), ("cloud", &self.cloud)] {
            for log in ["conflicts", "dead_letters"] {
                let logged =
                    query_texts(client, &format!("SELECT l::text FROM tandem.{log} l")).await?;
                if !logged.is_empty() {
                    let rows: String = logged
                        .iter()
                        .map(|r| format!("\n    {}", show(&r[0], 1000)))
                        .collect();
                    problems.push(format!(
                        "{side}'s tandem.{log} holds {} row(s):{rows}",
                        logged.len()
                    ));
                }
            }
        }
        Ok(problems)
    }
}

async fn exercise(db: &TestDb, case: &Case) -> Result<(), String> {
    let mut h = Harness {
        case,
        desktop: db.desktop().await,
        cloud: db.cloud().await,
        config: None,
        models: case.tables.iter().map(|_| Model::default()).collect(),
        log: Vec::new(),
    };
    for (side, client, cloud) in [("desktop", &h.desktop, false), ("cloud", &h.cloud, true)] {
        if let Err(e) = client
            .batch_execute(&format!("{SETTINGS}\n{}", case.ddl(cloud)))
            .await
        {
            return Err(h.report(&format!("the {side} schema: {e}")));
        }
    }
    let config = db
        .config(&case.toml())
        .map_err(|e| h.report(&format!("config: {e}")))?;
    if let Err(e) = tandem::setup::init(&config, false).await {
        return Err(h.report(&format!("init: {e}")));
    }
    h.config = Some(config);
    for op in &case.ops {
        h.step(op).await?;
    }
    h.run().await?;
    match h.problems().await {
        Ok(problems) if problems.is_empty() => Ok(()),
        Ok(problems) => Err(h.report(&problems.join("\n"))),
        Err(e) => Err(h.report(&e)),
    }
}

/// Drops the case's databases. The slot can be dropped only once the server has ended the last run's
/// replication session.
pub(crate) async fn remove(db: TestDb) -> Result<(), String> {
    let cloud = db.cloud().await;
    let sql =
        "SELECT count(*) FROM pg_replication_slots WHERE database = current_database() AND active";
    let released = || async { count(&cloud, sql).await == 0 };
    if !tandem::cluster::wait_until(Duration::from_secs(10), released).await {
        return Err(
            "the replication slot is still in use 10 s after the last run --once returned".into(),
        );
    }
    drop(cloud);
    db.remove().await;
    Ok(())
}

fn cases() -> u32 {
    std::env::var("TANDEM_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_schemas_and_changes_on_both_sides_converge(case in case()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let db = TestDb::new().await;
            let result = exercise(&db, &case).await;
            result.and(remove(db).await)
        }).map_err(TestCaseError::fail)?;
    }
}
