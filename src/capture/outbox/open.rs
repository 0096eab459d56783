//! What the open records (reverse conflicts and dead letters) hold back of a forward read: the keys
//! (scopes) whose change must not reach the cloud while a person decides, and in cloud-key tables the
//! desktop's version of a conflict's row.

use crate::change::quote_literal;
use crate::expr::{col, q};
use crate::transform::TableMapping;

/// Keys (`c1..cN` of `alias`, the key's desktop types) whose row has an open reverse conflict or dead
/// letter: the phone's version of it has not reached the desktop, so a desktop change of it must not
/// reach the cloud either, over the phone's. Such a change is not sent (its outbox row goes: the open
/// record explains the difference, and settling it applies the side chosen, as it is then).
/// Desktop-key tables find them by their `row_key`; cloud-key tables (whose records name the cloud
/// key) by the scope of any version a dead letter or a conflict of the older shape holds. A conflict
/// by concurrency of a cloud-key table holds back its own row only, not its scope: the desktop's
/// version of it is not read ([`not_kept`]) and the forward leaves the phone's alone (see
/// `commit::forward`'s kept rows), so the scope's other rows travel while it waits.
pub fn not_held(t: &TableMapping, alias: &str) -> String {
    let name = quote_literal(&t.table.desktop.to_string());
    let open = |table: &str| {
        format!(
            "SELECT 1 FROM tandem.{table} x WHERE x.resolved_at IS NULL AND x.direction = 'reverse' \
             AND x.table_name = {name}"
        )
    };
    let matching = match &t.kind {
        crate::transform::Kind::Key(key) => {
            let pairs: Vec<(String, String)> = key
                .iter()
                .enumerate()
                .map(|(n, k)| {
                    let v = format!("{alias}.{}", col(n));
                    (k.name.clone(), crate::expr::key_json_value(&v, &k.desktop))
                })
                .collect();
            let json = crate::expr::json_object(&pairs);
            return format!(
                "{} AND {}",
                none_of(&open("conflicts"), &format!("x.row_key = {json}")),
                none_of(&open("dead_letters"), &format!("x.row_key = {json}"))
            );
        }
        crate::transform::Kind::Scoped { scope, .. } => |version: &str| {
            scope
                .iter()
                .enumerate()
                .map(|(n, s)| {
                    format!(
                        "(x.{version} ->> {}) IS NOT DISTINCT FROM ({alias}.{})::text",
                        quote_literal(&s.name),
                        col(n)
                    )
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        },
    };
    let conflict_versions = ["mobile_row", "desktop_row", "base", "incoming"]
        .map(|v| format!("({})", matching(v)))
        .join(" OR ");
    format!(
        "{} AND {}",
        none_of(
            &open("conflicts"),
            &format!("x.row_key ? 'cloud_key' AND x.kind IS NULL AND ({conflict_versions})")
        ),
        none_of(
            &open("dead_letters"),
            &format!("({})", matching("row_image"))
        )
    )
}

/// `NOT EXISTS ({open} AND {matching})`, with the table's open records looked for once a statement
/// first (an uncorrelated `NOT EXISTS`, an init plan): with none, as almost always, no row of the read
/// is looked up (the lookups of two of them cost a 50,000-row batch 0.15 s on the desktop, measured
/// 2026-12-07, where the read itself takes 0.2 s).
fn none_of(open: &str, matching: &str) -> String {
    format!("(NOT EXISTS ({open}) OR NOT EXISTS ({open} AND {matching}))")
}

/// Row `alias` of table `t` as the stream writes an old image (and conflicts their versions): each
/// column that travels back, by name, as its type writes it, in a JSON object.
pub fn image(t: &TableMapping, alias: &str) -> String {
    let pairs: Vec<(String, String)> = t
        .reverse_columns
        .iter()
        .map(|c| {
            let value = format!("{alias}.{}", q(&c.name));
            (c.name.clone(), crate::expr::output_text(&value))
        })
        .collect();
    crate::expr::json_object(&pairs)
}

/// For a cloud-key table: desktop row `t` is not the desktop's version of an open conflict by
/// concurrency (its `desktop_row`, each column's text as the reverse plan wrote it, compared in the
/// same way on the same database): that version waits for a person, and is not sent. A conflict
/// keeps one copy: where the scope holds equal rows (the desktop made a second one), only as many of
/// them as open conflicts name that version are kept back, the first in physical order
/// (`tableoid, ctid`; equal rows are interchangeable), and the others travel as any row of the scope.
pub fn not_kept(t: &TableMapping, alias: &str) -> Option<String> {
    if matches!(t.kind, crate::transform::Kind::Key(_)) {
        return None;
    }
    let row = |a: &str| image(t, a);
    let open = format!(
        "FROM tandem.conflicts x WHERE x.resolved_at IS NULL AND x.direction = 'reverse' \
         AND x.table_name = {} AND x.kind IS NOT NULL",
        quote_literal(&t.table.desktop.to_string()),
    );
    let matching = format!("x.desktop_row = {}", row(alias));
    let same_scope: Vec<String> = t
        .key_columns()
        .iter()
        .map(|k| {
            crate::expr::same_key_or_null(
                &format!("e.{}", q(&k.name)),
                &format!("{alias}.{}", q(&k.name)),
                &k.desktop,
            )
        })
        .collect();
    let rank = format!(
        "SELECT count(*) FROM {} e WHERE {} AND {} = {} \
         AND (e.tableoid, e.ctid) <= ({alias}.tableoid, {alias}.ctid)",
        t.table.desktop.quoted(),
        same_scope.join(" AND "),
        row("e"),
        row(alias),
    );
    Some(format!(
        "({} OR (SELECT count(*) {open} AND {matching}) < ({rank}))",
        none_of(&format!("SELECT 1 {open}"), &matching),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloud_key_tables_open_conflict_holds_back_its_desktop_version_not_its_scope() {
        use crate::capture::outbox::{HORIZONS_SQL, ReadSql};
        use crate::transform::Mapping;
        use crate::transform::testing::{odd_keyed, odd_scoped};
        let scoped = odd_scoped();
        let mapping = Mapping {
            tables: vec![scoped.clone()],
            parents_first: vec![0],
        };
        // Its scopes: only dead letters and conflicts of the older shape hold one back whole.
        let held = not_held(&scoped, "u");
        assert!(held.contains("AND x.kind IS NULL AND"), "{held}");
        // Its rows: not the desktop version of an open conflict by concurrency, as the reverse plan
        // wrote it (each column's output text), on both branches of the read.
        let kept = not_kept(&scoped, "t").expect("a cloud-key table");
        assert!(
            kept.starts_with(
                "((NOT EXISTS (SELECT 1 FROM tandem.conflicts x WHERE x.resolved_at IS NULL"
            ),
            "{kept}"
        );
        // Only as many equal rows as conflicts name their version: the others travel.
        assert!(
            kept.contains("AND (e.tableoid, e.ctid) <= (t.tableoid, t.ctid))"),
            "{kept}"
        );
        assert!(
            kept.contains("AND x.kind IS NOT NULL AND x.desktop_row = jsonb_build_object('Task List', \
                 (CASE WHEN pg_catalog.num_nulls(t.\"Task List\") = 1 THEN NULL ELSE pg_catalog.concat(t.\"Task List\") END), "),
            "{kept}"
        );
        let read = ReadSql::build(&mapping, 0);
        assert_eq!(
            read.copy_rows.matches(&kept).count(),
            2,
            "{}",
            read.copy_rows
        );
        // A desktop-key table's records name its key: the key waits, as before.
        assert!(not_kept(&odd_keyed(), "t").is_none());
        assert!(HORIZONS_SQL.contains("x.row_key ->> 'cloud_key'"));
    }
}
