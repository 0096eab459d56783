//! The expressions the reverse statements of [`super`] build over one table's columns: staged
//! (`S`: `c1`, `c2`, ... as text), in a net change (`N`, alias `n`, with its first old image
//! `_first_old`), and in the desktop row (`d`).

use crate::expr::{col, json_object, lit, q, row_text, text};
use crate::transform::MappedColumn;

/// The expressions over one table's staged columns.
pub(super) struct Columns<'a> {
    pub cols: &'a [MappedColumn],
}

impl Columns<'_> {
    /// Quoted user names.
    pub fn names(&self) -> Vec<String> {
        self.cols.iter().map(|c| q(&c.name)).collect()
    }

    /// Column `j`'s text in the old image of net row `n` (NULL when null or unknown).
    pub fn old(&self, j: usize) -> String {
        format!("n._first_old ->> {}", lit(&self.cols[j].name))
    }

    /// Whether the old image of `n` knows column `j`.
    pub fn known(&self, j: usize) -> String {
        format!("n._first_old ? {}", lit(&self.cols[j].name))
    }

    /// The old image of `n` as the desktop would hold it: a LATERAL subquery `o` with `c1..cN`.
    pub fn old_row(&self) -> String {
        let values: Vec<String> = (0..self.cols.len())
            .map(|j| {
                format!(
                    "{} AS {}",
                    self.cols[j].desktop_shaped(&self.old(j)),
                    col(j)
                )
            })
            .collect();
        format!("(SELECT {}) o", values.join(", "))
    }

    /// The desktop row `d` is what the phone started from: it equals the old image in every column
    /// the image knows.
    pub fn same_old(&self) -> String {
        let each: Vec<String> = (0..self.cols.len())
            .map(|j| {
                format!(
                    "(NOT ({}) OR {} IS NOT DISTINCT FROM {})",
                    self.known(j),
                    text(&format!("d.{}", q(&self.cols[j].name))),
                    text(&format!("o.{}", col(j)))
                )
            })
            .collect();
        format!("(n._first_old IS NOT NULL AND {})", each.join(" AND "))
    }

    /// The desktop row `d` already holds `n`'s new version (unchanged TOAST values aside).
    pub fn same_new(&self) -> String {
        let each: Vec<String> = (0..self.cols.len())
            .map(|j| {
                format!(
                    "(coalesce({} = ANY(n._unchanged), false) OR {} IS NOT DISTINCT FROM {})",
                    j + 1,
                    text(&format!("d.{}", q(&self.cols[j].name))),
                    text(&self.cols[j].desktop_shaped(&format!("n.{}", col(j))))
                )
            })
            .collect();
        format!("({})", each.join(" AND "))
    }

    /// The value for column `j` from `n`'s new version; where it is unchanged TOAST, `keep`.
    pub fn value_or(&self, j: usize, keep: &str) -> String {
        format!(
            "CASE WHEN {} = ANY(n._unchanged) THEN {keep} ELSE {} END",
            j + 1,
            self.cols[j].desktop_value(&format!("n.{}", col(j)))
        )
    }

    /// The values of staged row `s` for the desktop columns.
    pub fn values_of(&self, alias: &str) -> Vec<String> {
        (0..self.cols.len())
            .map(|j| self.cols[j].desktop_value(&format!("{alias}.{}", col(j))))
            .collect()
    }

    /// Staged row `alias` (or net row) as JSON of the user's column names.
    pub fn json(&self, alias: &str) -> String {
        let pairs: Vec<(String, String)> = self
            .cols
            .iter()
            .enumerate()
            .map(|(j, c)| (c.name.clone(), format!("{alias}.{}", col(j))))
            .collect();
        json_object(&pairs)
    }

    /// The desktop row `d` differs from staged row `alias` (as the desktop would hold it).
    pub fn differs(&self, alias: &str) -> String {
        let desktop: Vec<String> = self.names().iter().map(|n| format!("d.{n}")).collect();
        let staged: Vec<String> = (0..self.cols.len())
            .map(|j| self.cols[j].desktop_shaped(&format!("{alias}.{}", col(j))))
            .collect();
        format!(
            "{} IS DISTINCT FROM {}",
            row_text(&desktop),
            row_text(&staged)
        )
    }
}
