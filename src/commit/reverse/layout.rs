//! The reverse staging layout, declared once: [`super::encode`] writes rows in it, [`super::sql`]
//! declares and reads the tables.
//!
//! A staged change is one row: tandem's own columns ([`META`], in this order), then the table's columns
//! that travel to the desktop, by position, as text (the stream's text, read by the desktop column's
//! type only when a statement uses it: a value the desktop cannot read is then one row's dead letter,
//! not a failed COPY).

use crate::expr::col;

/// One of tandem's columns of a staged change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    /// The change's order in the stream.
    Seq,
    /// `I`: the row's new version; `D`: the row was deleted.
    Op,
    /// Positions (from 1) of the columns whose TOASTed value the change did not carry: the desktop
    /// keeps its value.
    Unchanged,
    /// The row before the change: a JSON object of each column's text (or null). A column it does not
    /// name is unknown (never compared).
    Old,
    /// The cloud key (cloud-key tables).
    CloudKey,
    /// The phone's transaction in the cloud: its id, its commit time and its commit position (what a
    /// conflict records, and what `latest` compares with the desktop change's time). NULL when not
    /// known (a reconcile's repair).
    Xid,
    At,
    Lsn,
}

/// tandem's columns, in order: `(what, name, type)`.
pub const META: [(Meta, &str, &str); 8] = [
    (Meta::Seq, "_seq", "bigint"),
    (Meta::Op, "_op", "\"char\""),
    (Meta::Unchanged, "_unchanged", "int[]"),
    (Meta::Old, "_old", "jsonb"),
    (Meta::CloudKey, "_ck", "text"),
    (Meta::Xid, "_xid", "bigint"),
    (Meta::At, "_at", "timestamptz"),
    (Meta::Lsn, "_lsn", "pg_lsn"),
];

/// The column definitions of a staging table for `width` user columns.
pub fn definitions(width: usize) -> String {
    META.iter()
        .map(|(_, name, ty)| format!("{name} {ty}"))
        .chain((0..width).map(|j| format!("{} text", col(j))))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The column list of a COPY into a staging table for `width` user columns.
pub fn copy_columns(width: usize) -> String {
    META.iter()
        .map(|(_, name, _)| name.to_string())
        .chain((0..width).map(col))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_tandems_columns_then_the_users_by_position() {
        assert_eq!(
            definitions(2),
            "_seq bigint, _op \"char\", _unchanged int[], _old jsonb, _ck text, _xid bigint, _at timestamptz, \
             _lsn pg_lsn, c1 text, c2 text"
        );
        assert_eq!(
            copy_columns(1),
            "_seq, _op, _unchanged, _old, _ck, _xid, _at, _lsn, c1"
        );
    }
}
