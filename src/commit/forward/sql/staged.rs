//! The columns of one table as forward staging holds them (`S`: the table's columns, then the
//! lookups'; `K`: the key or scope), and the expressions the statements of [`super`] build from them.

use crate::expr::{
    col, json_object, key_json_value, q, row_text, same_key, same_key_or_null, text,
};
use crate::transform::{MappedColumn, TableMapping};

/// The columns of one table as staged, with what the statements say about them.
pub(super) struct Staged<'a> {
    /// The table's columns, then the lookups' (the order of `S`).
    pub columns: Vec<&'a MappedColumn>,
    /// The key (or scope) columns, and where each is in `S`.
    pub key: Vec<(&'a MappedColumn, usize)>,
}

impl<'a> Staged<'a> {
    pub fn new(t: &'a TableMapping) -> Self {
        let columns: Vec<&MappedColumn> = t
            .columns
            .iter()
            .chain(t.lookups.iter().map(|l| &l.column))
            .collect();
        let key = t
            .key_columns()
            .iter()
            .map(|k| {
                let at = columns
                    .iter()
                    .position(|c| c.name == k.name)
                    .expect("key columns are columns");
                (k, at)
            })
            .collect();
        Staged { columns, key }
    }

    /// The staged value of column `j` of alias `s`, as the cloud column takes it.
    pub fn value(&self, s: &str, j: usize) -> String {
        self.columns[j].cloud_value(&format!("{s}.{}", col(j)))
    }

    /// The user names of the staged columns, quoted.
    pub fn names(&self) -> Vec<String> {
        self.columns.iter().map(|c| q(&c.name)).collect()
    }

    /// Target row `c` has the key of `S` row `s`.
    pub fn c_is_s(&self) -> String {
        and(self.key.iter().map(|(k, at)| {
            same_key(
                &format!("c.{}", q(&k.name)),
                &k.cloud_value(&format!("s.{}", col(*at))),
                &k.cloud,
            )
        }))
    }

    /// Target row `c` has key `k` of `K` (NULL parts matching NULL with `or_null`).
    pub fn c_is_k(&self, or_null: bool) -> String {
        let matching = if or_null { same_key_or_null } else { same_key };
        and(self.key.iter().enumerate().map(|(n, (k, _))| {
            matching(
                &format!("c.{}", q(&k.name)),
                &k.cloud_value(&format!("k.{}", col(n))),
                &k.cloud,
            )
        }))
    }

    /// `S` row `s` has key `k` of `K` (both staged: the same type).
    pub fn s_is_k(&self) -> String {
        and(self.key.iter().enumerate().map(|(n, (k, at))| {
            let (s, kk) = (format!("s.{}", col(*at)), format!("k.{}", col(n)));
            if k.desktop.portable {
                same_key(&s, &kk, &k.desktop)
            } else {
                format!("{s} OPERATOR(pg_catalog.=) {kk}")
            }
        }))
    }

    /// [`Staged::s_is_k`], where NULL parts match NULL (a scope without a value).
    pub fn s_is_k_or_null(&self) -> String {
        and(self.key.iter().enumerate().map(|(n, (k, at))| {
            let (s, kk) = (format!("s.{}", col(*at)), format!("k.{}", col(n)));
            let same = if k.desktop.portable {
                same_key(&s, &kk, &k.desktop)
            } else {
                format!("{s} OPERATOR(pg_catalog.=) {kk}")
            };
            format!("({same} OR ({s} IS NULL AND {kk} IS NULL))")
        }))
    }

    /// The dead-letter row key of `S` row `s` or `K` row `k`: each key column's text.
    pub fn key_json(&self, alias: &str) -> String {
        let pairs: Vec<(String, String)> = self
            .key
            .iter()
            .enumerate()
            .map(|(n, (k, at))| {
                let j = if alias == "s" { *at } else { n };
                let staged = format!("{alias}.{}", col(j));
                (k.name.clone(), key_value(&staged, k))
            })
            .collect();
        json_object(&pairs)
    }

    /// The same, of target row `c` (its key as the desktop's type would stage it).
    pub fn key_json_of_target(&self) -> String {
        let pairs: Vec<(String, String)> = self
            .key
            .iter()
            .map(|(k, _)| {
                let value = format!("CAST(c.{} AS {})", q(&k.name), k.wire());
                (k.name.clone(), key_value(&value, k))
            })
            .collect();
        json_object(&pairs)
    }

    /// `S` row `s` as JSON of the user's column names.
    pub fn incoming(&self) -> String {
        let pairs: Vec<(String, String)> = self
            .columns
            .iter()
            .enumerate()
            .map(|(j, c)| (c.name.clone(), format!("s.{}", col(j))))
            .collect();
        json_object(&pairs)
    }

    /// The text of target row `c`'s staged columns, against `S` row `s` as the cloud would hold it.
    pub fn differs_from_target(&self) -> String {
        let target: Vec<String> = self.names().iter().map(|n| format!("c.{n}")).collect();
        let staged: Vec<String> = (0..self.columns.len())
            .map(|j| self.columns[j].cloud_shaped(&format!("s.{}", col(j))))
            .collect();
        format!(
            "{} IS DISTINCT FROM {}",
            row_text(&target),
            row_text(&staged)
        )
    }
}

/// A staged key value (of the wire type) for `row_key`.
fn key_value(staged: &str, k: &MappedColumn) -> String {
    if k.wire() == "text" {
        text(staged)
    } else {
        key_json_value(staged, &k.desktop)
    }
}

fn and(parts: impl Iterator<Item = String>) -> String {
    let parts: Vec<String> = parts.collect();
    if parts.is_empty() {
        "true".to_string()
    } else {
        parts.join(" AND ")
    }
}
