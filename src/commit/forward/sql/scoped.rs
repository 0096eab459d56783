//! The forward statements of a cloud-key table: the desktop rows have no key of their own, so the
//! rows of each touched scope are matched as multisets against the cloud's (`P`): matched rows keep
//! their cloud key (only their lookup columns may change); a cloud row and a staged row left over in
//! the same scope are paired, and the staged row is written over the cloud row in place (a desktop
//! edit of a row keeps its cloud key, a phone's row included once the desktop has received it); cloud
//! rows left over are deleted, staged rows left over inserted. A scope holding a phone's change the
//! desktop has not received is held back ([`hold`]) until it has.

use super::common::{self, Insert, touch};
use super::{Numbered, Table, Write};
use crate::catalog::ValueType;
use crate::config::owner;
use crate::expr::{col, list, q, row_text, same_key};
use crate::transform::Kind;

/// A cloud-key table and its plan `P`: each row `(_n, _ck, _row, _source, _mine, _scope, _pair)`
/// pairs a cloud row (its cloud key `_ck`, owner `_source`, and whether the desktop may change it,
/// `_mine`) with the `S` row `_row` that has the same content, or (`_pair`) that [`pair`] paired it
/// with in its scope (`_scope`, the scope's text); either side may be NULL.
pub(super) struct Scoped<'a> {
    pub table: &'a Table<'a>,
    /// `P`.
    pub plan: String,
    cloud_key: &'a str,
    cloud_key_type: &'a ValueType,
}

impl<'a> Scoped<'a> {
    /// `table` (the `i`-th) when it is a cloud-key table.
    pub fn of(table: &'a Table<'a>, i: usize) -> Option<Self> {
        match &table.t.kind {
            Kind::Key(_) => None,
            Kind::Scoped {
                cloud_key,
                cloud_key_type,
                ..
            } => Some(Scoped {
                table,
                plan: format!("pg_temp.tandem_p_{i}"),
                cloud_key,
                cloud_key_type,
            }),
        }
    }

    /// Cloud row `c`'s cloud key, qualified.
    fn ck(&self) -> String {
        format!("c.{}", q(self.cloud_key))
    }

    /// Cloud row `c` is the one plan row `p` matched.
    fn c_is_p(&self) -> String {
        same_key(&self.ck(), "p._ck", self.cloud_key_type)
    }
}

/// `CREATE TEMP TABLE` of `P`.
pub(super) fn create_plan(s: &Scoped) -> String {
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS {} (_n bigint GENERATED ALWAYS AS IDENTITY, _ck {}, _row bigint, _source text, \
         _mine boolean, _scope text, _pair boolean) ON COMMIT PRESERVE ROWS;",
        s.plan, s.cloud_key_type.base
    )
}

/// Fills `P`: the rows of `S` and the cloud rows of the scopes in `K` (NULL scope parts matching
/// NULL with `or_null`), matched by the hash of their content, copy by copy; a cloud row's mobile-owned
/// copies are matched first. When the cloud holds no row of those scopes, every staged row is new.
pub(super) fn plan(s: &Scoped, or_null: bool) -> String {
    let Table {
        t,
        st,
        target,
        rows,
        keys,
        ..
    } = s.table;
    let plan = &s.plan;
    // Rows are matched on the text of all their desktop columns, as the cloud holds them.
    let d_hash = format!(
        "md5({})",
        row_text(
            &(0..t.columns.len())
                .map(|j| st.columns[j].cloud_shaped(&format!("s.{}", col(j))))
                .collect::<Vec<_>>()
        )
    );
    let c_hash = format!(
        "md5({})",
        row_text(
            &t.columns
                .iter()
                .map(|c| format!("c.{}", q(&c.name)))
                .collect::<Vec<_>>()
        )
    );
    // The scope of a row as text, the same for a staged row and a cloud row of it (what pairs are
    // made within).
    let d_scope = row_text(
        &st.key
            .iter()
            .map(|(k, at)| k.cloud_shaped(&format!("s.{}", col(*at))))
            .collect::<Vec<_>>(),
    );
    let c_scope = row_text(
        &st.key
            .iter()
            .map(|(k, _)| format!("c.{}", q(&k.name)))
            .collect::<Vec<_>>(),
    );
    // When the cloud holds no row of the touched scopes (an initial sync, new jobs), every staged
    // row is new: the second branch lists them without hashing and sorting them (a third of the
    // seeds' jobtasks plan, 0.17 s for 64,542 rows, was that).
    format!(
        "INSERT INTO {plan} (_ck, _row, _source, _mine, _scope) \
         WITH d AS (SELECT s._n, {d_hash} AS h, {d_scope} AS sc FROM {rows} s), \
              dn AS (SELECT d._n, d.h, d.sc, row_number() OVER (PARTITION BY d.h ORDER BY d._n) AS dup FROM d), \
              c AS (SELECT {ck} AS _ck, {c_owner} AS _source, {mine} AS _mine, {c_hash} AS h, {c_scope} AS sc \
                    FROM {target} c WHERE EXISTS (SELECT 1 FROM {keys} k WHERE {scope})), \
              cn AS (SELECT c._ck, c._source, c._mine, c.h, c.sc, row_number() OVER (PARTITION BY c.h \
                     ORDER BY ({c_mobile}) DESC NULLS LAST, c._ck) AS dup FROM c) \
         SELECT cn._ck, dn._n, cn._source, coalesce(cn._mine, true), coalesce(cn.sc, dn.sc) \
           FROM dn FULL JOIN cn ON dn.h = cn.h AND dn.dup = cn.dup \
         WHERE EXISTS (SELECT 1 FROM c) \
         UNION ALL SELECT NULL, s._n, NULL, true, NULL FROM {rows} s WHERE NOT EXISTS (SELECT 1 FROM c)",
        ck = s.ck(),
        scope = st.c_is_k(or_null),
        c_owner = owner::text_of("c"),
        mine = s.table.may_change("c"),
        c_mobile = owner::is_mobile("c._source"),
    )
}

/// The hold of a cloud-key table (see `ForwardSql::hold`): scopes holding a phone's row the desktop
/// has not received, and scopes a phone's unreceived update or delete took a row from.
pub(super) fn hold(s: &Scoped) -> common::BySize {
    let table = s.table;
    common::BySize::from(|probe| {
        let held = [
            format!(
                "EXISTS (SELECT 1 FROM {target} c WHERE {scope} AND NOT {may}{probe})",
                target = table.target,
                scope = table.st.c_is_k(true),
                may = table.may_change("c"),
            ),
            common::unreceived_journal(table),
        ];
        common::hold(table, &held, &table.st.s_is_k_or_null())
    })
}

/// The hold of a cloud-key table once `P` is filled, on `P`'s own view of the cloud: the scopes where
/// `P` holds a cloud row the desktop may not change. [`hold`] ran in an earlier snapshot (the cloud
/// transaction reads committed data, a snapshot per statement): a phone's change committed between
/// the two took its row out of the match (`_mine` false), and the desktop's version of that row,
/// left unmatched, would have been inserted as a second copy beside the phone's. Held here, the hold
/// and the match are one decision, taken on one snapshot; the writes after it check again that each
/// row is still the desktop's to change. Takes those scopes out of `K`, `S` and `P` and returns their
/// keys as [`hold`] does.
pub(super) fn late_hold(s: &Scoped) -> String {
    let table = s.table;
    let plan = &s.plan;
    let k_scope = row_text(
        &table
            .st
            .key
            .iter()
            .enumerate()
            .map(|(n, (k, _))| k.cloud_shaped(&format!("k.{}", col(n))))
            .collect::<Vec<_>>(),
    );
    let before = format!(
        "late AS (SELECT DISTINCT p._scope FROM {plan} p WHERE NOT p._mine), \
         unplanned AS (DELETE FROM {plan} p USING late l WHERE p._scope = l._scope RETURNING 1), "
    );
    let held = format!("{k_scope} IN (SELECT l._scope FROM late l)");
    common::hold_after(table, &before, &held, &table.st.s_is_k_or_null())
}

/// Takes out of `P` the cloud rows no staged row matched whose cloud key is one of `$1` (a JSON array
/// of cloud keys' texts, as the reverse plan names them): the phone rows of open conflicts by
/// concurrency (see `crate::change::Received`). A person decides such a row; until then the forward
/// neither pairs it with a desktop row, nor writes over it, nor deletes it, and the rest of its scope
/// travels as always (the desktop's version of the conflict is not read: see
/// `capture::outbox::not_kept`). A row a staged row matches is unchanged anyway.
pub(super) fn keep(s: &Scoped) -> String {
    format!(
        "DELETE FROM {} p WHERE p._row IS NULL AND p._ck IS NOT NULL \
         AND {} IN (SELECT pg_catalog.jsonb_array_elements_text($1::text::pg_catalog.jsonb))",
        s.plan,
        crate::expr::output_text("p._ck")
    )
}

/// Pairs, in each scope, the cloud rows the desktop may change that no staged row matched with the
/// staged rows no cloud row matched, in the order of their content (so that where a scope has one of
/// each, as when the desktop edits one row, the edit replaces that row; where it has several, similar
/// rows tend to pair). A paired staged row moves onto its cloud row's line of `P` (`_pair`).
pub(super) fn pair(s: &Scoped) -> String {
    let Table {
        t,
        st,
        target,
        rows,
        ..
    } = s.table;
    let plan = &s.plan;
    let c_text = row_text(
        &t.columns
            .iter()
            .map(|c| format!("c.{}", q(&c.name)))
            .collect::<Vec<_>>(),
    );
    let s_text = row_text(
        &(0..t.columns.len())
            .map(|j| st.columns[j].cloud_shaped(&format!("s.{}", col(j))))
            .collect::<Vec<_>>(),
    );
    format!(
        "WITH c AS (SELECT p._n, p._scope, row_number() OVER (PARTITION BY p._scope ORDER BY {c_text}, p._ck) AS r \
                      FROM {plan} p JOIN {target} c ON {c_is_p} WHERE p._row IS NULL AND p._mine), \
              d AS (SELECT p._n, p._row, p._scope, row_number() OVER (PARTITION BY p._scope ORDER BY {s_text}, p._row) AS r \
                      FROM {plan} p JOIN {rows} s ON s._n = p._row WHERE p._ck IS NULL), \
              paired AS (UPDATE {plan} p SET _row = d._row, _pair = true FROM c JOIN d ON d._scope = c._scope AND d.r = c.r \
                          WHERE p._n = c._n RETURNING d._n AS moved) \
         DELETE FROM {plan} p USING paired x WHERE p._n = x.moved",
        c_is_p = s.c_is_p(),
    )
}

/// Writes each paired staged row over its cloud row, in place: every staged column, the row then the
/// desktop's (range of `S`).
pub(super) fn update_pairs(s: &Scoped) -> Write {
    let Table {
        t,
        st,
        target,
        rows,
        ..
    } = s.table;
    let plan = &s.plan;
    let sets = list(
        (0..st.columns.len()).map(|j| format!("{} = {}", q(&st.columns[j].name), st.value("s", j))),
    );
    let (c_is_p, touch, set_desktop) = (s.c_is_p(), touch(t), owner::set_desktop());
    let may = s.table.may_change("c");
    Write::new("scoped update", Numbered::Rows, |checks| {
        format!(
            "UPDATE {target} c SET {sets}, {set_desktop}{touch} FROM {plan} p JOIN {rows} s ON s._n = p._row \
             WHERE p._pair AND {c_is_p} AND {may} AND s._n BETWEEN $1 AND $2{checks}"
        )
    })
}

/// Deletes the cloud rows the desktop may change that no staged row matched or paired (range of `P`).
pub(super) fn delete(s: &Scoped) -> Write {
    let (target, plan) = (&s.table.target, &s.plan);
    let c_is_p = s.c_is_p();
    let may = s.table.may_change("c");
    Write::new("scoped delete", Numbered::Plan, |checks| {
        format!(
            "DELETE FROM {target} c USING {plan} p WHERE {c_is_p} AND p._row IS NULL \
             AND p._mine AND {may} AND p._n BETWEEN $1 AND $2{checks}"
        )
    })
}

/// Inserts the staged rows no cloud row matched (range of `S`).
pub(super) fn insert(s: &Scoped, insert: &Insert) -> Write {
    let (target, rows, plan) = (&s.table.target, &s.table.rows, &s.plan);
    let Insert {
        columns: cols,
        values: vals,
    } = insert;
    Write::new("scoped insert", Numbered::Rows, |checks| {
        format!(
            "INSERT INTO {target} ({cols}) SELECT {vals} FROM {rows} s JOIN {plan} p ON p._row = s._n \
             WHERE p._ck IS NULL AND s._n BETWEEN $1 AND $2{checks}"
        )
    })
}

/// Sets the lookup columns of the matched desktop-owned cloud rows whose lookups differ (range of
/// `S`); `None` when the table has no lookups.
pub(super) fn lookup_update(s: &Scoped) -> Option<Write> {
    let Table {
        t,
        st,
        target,
        rows,
        ..
    } = s.table;
    let plan = &s.plan;
    let lookups: Vec<usize> = (t.columns.len()..st.columns.len()).collect();
    if lookups.is_empty() {
        return None;
    }
    let sets = list(
        lookups
            .iter()
            .map(|&j| format!("{} = {}", q(&st.columns[j].name), st.value("s", j))),
    );
    let current: Vec<String> = lookups
        .iter()
        .map(|&j| format!("c.{}", q(&st.columns[j].name)))
        .collect();
    let staged: Vec<String> = lookups
        .iter()
        .map(|&j| st.columns[j].cloud_shaped(&format!("s.{}", col(j))))
        .collect();
    let (current, staged) = (row_text(&current), row_text(&staged));
    let (c_is_p, touch) = (s.c_is_p(), touch(t));
    // Only matched rows: new ones (no cloud key) were inserted with their lookups, paired ones were
    // written whole, and leaving them out spares a join with the whole table (0.05 s on the seeds'
    // jobtasks).
    Some(Write::new("lookup update", Numbered::Rows, |checks| {
        format!(
            "UPDATE {target} c SET {sets}{touch} FROM {plan} p JOIN {rows} s ON s._n = p._row \
             WHERE p._ck IS NOT NULL AND p._pair IS NOT TRUE AND {c_is_p} AND p._mine \
             AND {current} IS DISTINCT FROM {staged} AND s._n BETWEEN $1 AND $2{checks}"
        )
    }))
}

/// Whether `K` holds a scope with a NULL part (then [`plan`] matches NULL with NULL).
pub(super) fn keys_have_null(table: &Table) -> String {
    let any_null: Vec<String> = (0..table.st.key.len())
        .map(|n| format!("k.{} IS NULL", col(n)))
        .collect();
    format!(
        "SELECT EXISTS (SELECT 1 FROM {} k WHERE {})",
        table.keys,
        any_null.join(" OR ")
    )
}

/// `ANALYZE` of `P`, once filled.
pub(super) fn analyze_plan(s: &Scoped) -> String {
    format!("ANALYZE {}", s.plan)
}

/// `(row_key, row_image, old_image)` of `P` row `$1` (a scoped delete), for a dead letter: the cloud
/// row it would have deleted.
pub(super) fn image_of_plan(s: &Scoped) -> String {
    format!(
        "SELECT {}, to_jsonb(c.*), NULL::jsonb FROM {} p JOIN {} c ON {} WHERE p._n = $1",
        s.table.st.key_json_of_target(),
        s.plan,
        s.table.target,
        s.c_is_p(),
    )
}

#[cfg(test)]
mod tests;
