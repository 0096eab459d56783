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
