//! Who owns a cloud row, in the words every statement uses.
//!
//! Every synced cloud table has the column [`SOURCE_COLUMN`]: [`MOBILE`] when a phone wrote the row
//! last (the ownership trigger marks every write tandem did not make), [`DESKTOP`] when tandem wrote
//! it for the desktop; NULL counts as the desktop's (a row from before tandem). Only mobile-owned rows
//! travel back to the desktop, and the desktop's changes change or delete only desktop-owned rows in the
//! cloud.
//! These functions are the only place the column and its values are spelled in SQL, so a statement
//! says *which* rule it applies (`desktop_owned(&of("c"))`), not how the rule is written.
//!
//! Each predicate takes the owner as an expression: a row's column ([`of`], [`text_of`]), or a copy of
//! it a statement carried along (a staging column).

use super::SOURCE_COLUMN;
use crate::change::{quote_ident, quote_literal};

/// A phone wrote the row last.
pub const MOBILE: &str = "M";
/// The desktop wrote the row last, through tandem (NULL counts as this too).
pub const DESKTOP: &str = "D";

/// `"source"`: the ownership column, unqualified (an INSERT's column list, a SET, a row filter).
pub fn column() -> String {
    quote_ident(SOURCE_COLUMN)
}

/// `alias."source"`: the owner of row `alias`.
pub fn of(alias: &str) -> String {
    format!("{alias}.{}", column())
}

/// `alias."source"::text`: the owner of row `alias` as text, whatever text type the column has.
pub fn text_of(alias: &str) -> String {
    format!("{}::text", of(alias))
}

/// `'M'`, the value.
pub fn mobile() -> String {
    quote_literal(MOBILE)
}

/// `'D'`, the value tandem writes.
pub fn desktop() -> String {
    quote_literal(DESKTOP)
}

/// `owner = 'M'`: mobile-owned (NULL when `owner` is NULL, so a filter leaves the row out).
pub fn is_mobile(owner: &str) -> String {
    format!("{owner} = {}", mobile())
}

/// `coalesce(owner = 'M', false)`: whether mobile-owned, as a value that is never NULL.
pub fn mobile_flag(owner: &str) -> String {
    format!("coalesce({}, false)", is_mobile(owner))
}

/// `owner = 'D'`: marked desktop-owned (a NULL owner is not).
pub fn is_desktop(owner: &str) -> String {
    format!("{owner} = {}", desktop())
}

/// `(owner = 'D' OR owner IS NULL)`: desktop-owned, what tandem may change or delete in the cloud.
pub fn desktop_owned(owner: &str) -> String {
    format!("({} OR {owner} IS NULL)", is_desktop(owner))
}

/// `"source" = 'D'`: the SET item that makes a row desktop-owned.
pub fn set_desktop() -> String {
    format!("{} = {}", column(), desktop())
}

// ---------------------------------------------------------------------------------------------------
// Who saw what: a phone's row the desktop has received.
//
// A row a phone wrote last is one the desktop may change or delete (an ordinary edit, not a conflict)
// once the desktop has received that version. The cloud transaction that wrote a row's current version
// is its `xmin`; the desktop keeps, per table, a horizon: a cloud snapshot every transaction of which it
// has received for that table (applied, or kept as an open conflict or dead letter, which hold the
// row back by themselves). So the version was received exactly when its writer is visible in the
// horizon. Exact because the horizon is a snapshot tandem took in a cloud transaction whose position in
// the stream the desktop then passed: every transaction it sees committed before that position, and
// the stream delivers in commit order. A row whose writer it does not see was written after, or is not
// committed: the desktop cannot have it.
//
// `xmin` is a 32-bit transaction id; a snapshot speaks of 64-bit ones (`xid8`). The row's is the latest
// 64-bit id with those low 32 bits not after the next id to be assigned: exact for every version not
// frozen, since PostgreSQL never lets an unfrozen id fall 2^31 behind. A frozen row older than that
// may map to a recent id by chance; it then counts as not seen, which holds its desktop change back
// until the next horizon (never the other way round).

/// The horizon of a forward transaction's table `i` (set by [`horizon_setting`]), as a snapshot; NULL
/// when the table has none yet (every phone row then counts as not received).
pub fn horizon(i: usize) -> String {
    format!(
        "nullif(pg_catalog.current_setting('{}', true), '')::pg_catalog.pg_snapshot",
        horizon_setting(i)
    )
}

/// [`horizon`] as a scalar subquery, read once a statement (an init plan), not parsed again for every
/// row it is compared with: for statements over many rows (a reconcile's scan). A forward batch's
/// statements, planned for each batch, stay without (every subquery is more to plan).
pub fn horizon_once(i: usize) -> String {
    format!("(SELECT {})", horizon(i))
}

/// The transaction-local setting holding table `i`'s horizon in a forward transaction.
pub fn horizon_setting(i: usize) -> String {
    format!("tandem.horizon_{i}")
}

/// Whether cloud transaction `xid` (an `xid8` expression) is one `horizon` sees: never NULL.
pub fn seen_xid8(xid: &str, horizon: &str) -> String {
    format!("coalesce(pg_catalog.pg_visible_in_snapshot({xid}, {horizon}), false)")
}

/// Whether the transaction that wrote row `alias`'s current version is one `horizon` sees.
pub fn seen(alias: &str, horizon: &str) -> String {
    let next = "pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::bigint";
    seen_with(alias, horizon, next)
}

/// [`seen`] for statements over many rows, with [`horizon_once`]: the next transaction id is read once
/// a statement (an init plan: a 1M-row scan spent 0.8 s taking the snapshot for each row), and
/// without a horizon (a table's first sync) no row's transaction id is worked out at all.
pub fn seen_once(alias: &str, horizon: &str) -> String {
    let next =
        "(SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::bigint)";
    format!(
        "CASE WHEN {horizon} IS NULL THEN false ELSE {} END",
        seen_with(alias, horizon, next)
    )
}

fn seen_with(alias: &str, horizon: &str, next: &str) -> String {
    let xmin = format!("{alias}.xmin::text::bigint");
    seen_xid8(
        &format!("(({next}) - ((({next}) - {xmin}) & 4294967295))::text::pg_catalog.xid8"),
        horizon,
    )
}

/// Whether the desktop may change or delete cloud row `alias`: it is the desktop's, or the phone's
/// version the desktop has received (per `horizon`). Never NULL.
pub fn desktop_may_change(alias: &str, horizon: &str) -> String {
    format!(
        "({} OR {})",
        desktop_owned(&of(alias)),
        seen(alias, horizon)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_column_is_quoted_and_qualified_by_its_alias() {
        assert_eq!(column(), "\"source\"");
        assert_eq!(of("c"), "c.\"source\"");
        assert_eq!(text_of("t"), "t.\"source\"::text");
    }

    #[test]
    fn mobile_is_m_and_never_null_as_a_flag() {
        assert_eq!(is_mobile(&of("c")), "c.\"source\" = 'M'");
        assert_eq!(
            mobile_flag(&text_of("c")),
            "coalesce(c.\"source\"::text = 'M', false)"
        );
    }

    #[test]
    fn a_phones_row_may_change_once_its_writer_is_seen() {
        assert_eq!(
            horizon(3),
            "nullif(pg_catalog.current_setting('tandem.horizon_3', true), '')::pg_catalog.pg_snapshot"
        );
        assert_eq!(horizon_once(3), format!("(SELECT {})", horizon(3)));
        let may = desktop_may_change("c", "$9");
        assert!(
            may.starts_with("((c.\"source\" = 'D' OR c.\"source\" IS NULL) OR coalesce("),
            "{may}"
        );
        assert!(may.contains("c.xmin::text::bigint"), "{may}");
        assert!(may.contains("& 4294967295"), "{may}");
        assert!(may.ends_with(", $9), false))"), "{may}");
        // Over many rows: the next transaction id read once a statement, nothing without a horizon.
        let once = seen_once("c", "$9");
        assert!(
            once.contains(
                "(SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::bigint)"
            ),
            "{once}"
        );
        assert!(
            once.starts_with("CASE WHEN $9 IS NULL THEN false ELSE coalesce("),
            "{once}"
        );
    }

    #[test]
    fn desktop_owned_includes_null_and_marked_desktop_does_not() {
        assert_eq!(
            desktop_owned(&of("c")),
            "(c.\"source\" = 'D' OR c.\"source\" IS NULL)"
        );
        assert_eq!(
            desktop_owned("p._source"),
            "(p._source = 'D' OR p._source IS NULL)"
        );
        assert_eq!(is_desktop(&of("t")), "t.\"source\" = 'D'");
        assert_eq!(set_desktop(), "\"source\" = 'D'");
        assert_eq!(desktop(), "'D'");
    }
}
