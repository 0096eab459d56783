//! The pieces every statement tandem builds is made of (the outbox reader's, the plan builders'):
//! names that cannot collide with a user's, and what "equal" means.
//!
//! **Names.** A staging table's columns are tandem's own (`_n`, `_seq`, ...: a leading underscore) and
//! the user's columns *by position* (`c1`, `c2`, ...), never by their names: no user name can collide
//! with either. Every column reference in a statement is qualified by its table's alias, and whole
//! rows are written `alias.*`, so a user column named like an alias (`c`, `n`, `d`) is never taken for
//! one. User tables are always schema-qualified and quoted. User names appear only quoted, or as
//! string literals (JSON keys).
//!
//! **Equal.** Two values are the same when their text is the same: each type's output function, under
//! tandem's fixed session settings ([`crate::db::SESSION_SETTINGS`]), with NULL distinct from every value
//! and the same as NULL. That is how a changed row is told from an unchanged one, a desktop row from
//! the image of it a phone started from, and a row from its copy in a multiset. It never needs an `=`
//! operator, and the text holds everything the value holds:
//! - `numeric`: `1.0` and `1.00` differ (the scale is kept); `NaN` equals `NaN`;
//! - `float4`/`float8`: shortest exact text, so `-0` and `0` differ, `NaN` equals `NaN`;
//! - `json`: as written (spaces, key order, duplicate keys); `jsonb`: after its normalisation;
//! - `box`, `point`, `lseg`, `circle`, ...: by their coordinates (a box's `=` compares areas);
//! - `timestamptz`: the instant (printed at UTC); `timetz` keeps its offset; `interval`: `1 day` and
//!   `24 hours` differ, as they are stored;
//! - arrays with their bounds (`[0:1]={1,2}`) and NULL elements; records field by field;
//! - `citext`-like types by their text, so a change of case is a change; `bpchar` with its padding;
//! - `money` in the C locale; `bytea` in hex.
//!
//! **Keys and scopes** are *matched* (a staged key finds its target row) with the equality of the
//! type's default btree operator class when it has one — the one a unique index on it uses, so an
//! index serves the lookup — named with its schema so no search path can swap it; types without one
//! (`json`, `xml`, geometric types, arrays, records) are matched by their text.

use crate::catalog::ValueType;
use crate::change::{quote_ident, quote_literal};

/// A quoted identifier.
pub fn q(name: &str) -> String {
    quote_ident(name)
}

/// A string literal.
pub fn lit(text: &str) -> String {
    quote_literal(text)
}

pub fn list(items: impl IntoIterator<Item = String>) -> String {
    items.into_iter().collect::<Vec<_>>().join(", ")
}

/// The staging column holding the `j`-th (from 0) user column of a staging table.
pub fn col(j: usize) -> String {
    format!("c{}", j + 1)
}

/// `alias.cJ` for each of `n` positional columns.
pub fn cols(alias: &str, n: usize) -> Vec<String> {
    (0..n).map(|j| format!("{alias}.{}", col(j))).collect()
}

/// The text of `expr`: what tandem compares values by.
pub fn text(expr: &str) -> String {
    format!("({expr})::text")
}

/// The text of `expr` as its type's output function writes it, as the replication stream sends it:
/// unlike a cast to `text`, which drops the padding of `bpchar` (`'x  '` → `'x'`). NULL stays NULL;
/// a record whose fields are all NULL (`(,)`, which `IS NULL` calls null) is not NULL.
pub fn output_text(expr: &str) -> String {
    format!(
        "(CASE WHEN pg_catalog.num_nulls({expr}) = 1 THEN NULL ELSE pg_catalog.concat({expr}) END)"
    )
}

/// The text of a row of `exprs`: NULL is distinct from every value (`()` against `("")`).
pub fn row_text(exprs: &[String]) -> String {
    format!("ROW({})::text", exprs.join(", "))
}

/// `a` and `b` (values of one type, or of types the equality takes) are the same key.
pub fn same_key(a: &str, b: &str, t: &ValueType) -> String {
    match &t.equality {
        Some(schema) => format!("{a} OPERATOR({schema}.=) {b}"),
        None => format!("{} OPERATOR(pg_catalog.=) {}", text(a), text(b)),
    }
}

/// [`same_key`], where NULL also matches NULL (a scope without a value).
pub fn same_key_or_null(a: &str, b: &str, t: &ValueType) -> String {
    format!("({} OR ({a} IS NULL AND {b} IS NULL))", same_key(a, b, t))
}

/// What to group or deduplicate values of `t` by: the value itself when its type has a btree
/// equality, else its text.
pub fn group_by(expr: &str, t: &ValueType) -> String {
    match t.equality {
        Some(_) => expr.to_string(),
        None => text(expr),
    }
}

/// A key value as dead letters and conflicts record it (`row_key`): integers as JSON numbers, every
/// other type as its text (exact, and what a retry reads back with the type's input).
pub fn key_json_value(expr: &str, t: &ValueType) -> String {
    if is_integer(t) {
        format!("to_jsonb({expr})")
    } else {
        text(expr)
    }
}

/// Whether `t` is one of the integer types.
pub fn is_integer(t: &ValueType) -> bool {
    matches!(t.base.as_str(), "smallint" | "integer" | "bigint")
}

/// `jsonb_build_object` of `(name, value)` pairs, in pieces of 50 pairs (a function takes at most 100
/// arguments) joined with `||`; `'{}'` when there are none.
pub fn json_object(pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return "'{}'::jsonb".to_string();
    }
    pairs
        .chunks(50)
        .map(|chunk| {
            let args: Vec<String> = chunk
                .iter()
                .map(|(name, value)| format!("{}, {value}", lit(name)))
                .collect();
            format!("jsonb_build_object({})", args.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" || ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(equality: Option<&str>) -> ValueType {
        ValueType {
            base: "t".into(),
            shaped: "t".into(),
            portable: true,
            equality: equality.map(str::to_string),
        }
    }

    #[test]
    fn keys_match_by_the_btree_equality_or_by_text() {
        assert_eq!(
            same_key("c.x", "s.c1", &value(Some("pg_catalog"))),
            "c.x OPERATOR(pg_catalog.=) s.c1"
        );
        assert_eq!(
            same_key("c.x", "s.c1", &value(Some("\"My ext\""))),
            "c.x OPERATOR(\"My ext\".=) s.c1"
        );
        assert_eq!(
            same_key("c.x", "s.c1", &value(None)),
            "(c.x)::text OPERATOR(pg_catalog.=) (s.c1)::text"
        );
        assert_eq!(group_by("s.c1", &value(None)), "(s.c1)::text");
    }

    #[test]
    fn json_objects_of_any_width() {
        assert_eq!(json_object(&[]), "'{}'::jsonb");
        let pairs: Vec<(String, String)> = (0..120)
            .map(|i| (format!("it's {i}"), format!("s.c{i}")))
            .collect();
        let sql = json_object(&pairs);
        assert_eq!(sql.matches("jsonb_build_object(").count(), 3);
        assert!(sql.contains("'it''s 7', s.c7"), "{sql}");
    }
}
