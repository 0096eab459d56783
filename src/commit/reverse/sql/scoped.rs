//! The reverse statements of a cloud-key table: the desktop rows have no key, so each changed cloud
//! row is paired (`P`) with a desktop row of the same content as its old image, copy by copy; a
//! change applies to its paired row. A change whose row the desktop no longer holds as it was is
//! contested ([`contest`]): the desktop changed its copy (the desktop row of the scope that matches
//! none of the cloud's rows, the most like the old image) or deleted it; either is a conflict,
//! settled by the table's policy (see `settle`).

use super::common::{insert_values, plain_columns, ranged, sets};
use super::settle::Site;
use super::{DirectSql, Table};
use crate::commit::forward::sql::Ranged;
use crate::expr::{col, json_object, lit, output_text, q, row_text, same_key, text};
use crate::transform::MappedColumn;

/// A net change whose conflict its policy settled (its version is now the result).
const SETTLED: &str = "n._verdict = 'settled'";

/// How a dead letter or a conflict names the row of net change `n`: by its cloud key.
pub(super) const ROW_KEY: &str = "jsonb_build_object('cloud_key', n._ck)";

/// A cloud-key table and its plan `P`: each row `(_ck, _tid)` pairs the cloud row `_ck` of a net
/// change with the desktop row (`ctid`) holding its old image, or with none.
pub(super) struct Scoped<'a> {
    pub table: &'a Table<'a>,
    /// `P`.
    pub plan: String,
    /// The scope columns, with where each is among the columns that travel.
    scope: Vec<(usize, &'a MappedColumn)>,
}

impl<'a> Scoped<'a> {
    /// `table`, the `i`-th of the mapping, scoped by `scope`.
    pub fn new(table: &'a Table<'a>, scope: &'a [MappedColumn], i: usize) -> Self {
        let scope = scope
            .iter()
            .map(|s| {
                let j = table
                    .c
                    .cols
                    .iter()
                    .position(|r| r.name == s.name)
                    .expect("scope columns travel to the desktop");
                (j, s)
            })
            .collect();
        Scoped {
            table,
            plan: format!("pg_temp.tandem_rp_{i}"),
            scope,
        }
    }

    /// `alias.x IS NULL OR ...` for each scope column: by its name (`named`, a desktop row) or its
    /// position (a row of the old images).
    fn any_null(&self, alias: &str, named: bool) -> String {
        self.scope
            .iter()
            .map(|(j, s)| {
                let column = if named { q(&s.name) } else { col(*j) };
                format!("{alias}.{column} IS NULL")
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    }
}

/// `CREATE TEMP TABLE` of `P` (`_contested`: `_tid` is the row the desktop changed the old image
/// into, not the old image).
pub(super) fn create_plan(s: &Scoped) -> String {
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS {} (_ck text, _tid tid, _contested boolean) ON COMMIT PRESERVE ROWS;",
        s.plan
    )
}

/// Fills `N`: one net change per cloud row.
pub(super) fn reduce(table: &Table) -> String {
    super::common::reduce(table, &["s._ck".to_string()], &plain_columns(table))
}

/// Locks the desktop rows of the scopes the net changes' old images are in (see `ReverseSql::lock`):
/// the rows `plan` and `contest` pair them with. Counts them (no row comes back).
pub(super) fn lock(s: &Scoped) -> String {
    let Table { c, target, net, .. } = s.table;
    let in_scope = s
        .scope
        .iter()
        .map(|(j, sc)| {
            same_key(
                &format!("d.{}", q(&sc.name)),
                &format!("o.{}", col(*j)),
                &sc.desktop,
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "WITH o AS (SELECT o.* FROM {net} n CROSS JOIN LATERAL {old_row} WHERE n._first_old IS NOT NULL) \
         SELECT count(*) FROM (SELECT 1 FROM {target} d WHERE EXISTS (SELECT 1 FROM o WHERE {in_scope}) \
                                  OR (({d_null}) AND EXISTS (SELECT 1 FROM o WHERE {o_null})) \
                               FOR UPDATE OF d) locked",
        old_row = c.old_row(),
        o_null = s.any_null("o", false),
        d_null = s.any_null("d", true),
    )
}

/// Fills `P`: the old image of each net change that has one, paired with a desktop row of its scope
/// (or, when a scope part is NULL, of a scope with a NULL part) and the same content, copy by copy.
pub(super) fn plan(s: &Scoped) -> String {
    let Table { c, target, net, .. } = s.table;
    let plan = &s.plan;
    let width = c.cols.len();
    let desktop_row: Vec<String> = c.names().iter().map(|n| format!("d.{n}")).collect();
    let old_image: Vec<String> = (0..width).map(|j| format!("o.{}", col(j))).collect();
    let in_scope = s
        .scope
        .iter()
        .map(|(j, sc)| {
            same_key(
                &format!("d.{}", q(&sc.name)),
                &format!("o.{}", col(*j)),
                &sc.desktop,
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "INSERT INTO {plan} (_ck, _tid) \
         WITH o AS (SELECT n._ck, md5({ho}) AS h, {o_scope} FROM {net} n CROSS JOIN LATERAL {old_row} \
                    WHERE n._first_old IS NOT NULL), \
              od AS (SELECT o._ck, o.h, row_number() OVER (PARTITION BY o.h ORDER BY o._ck) AS dup FROM o), \
              c AS (SELECT d.ctid AS tid, md5({hd}) AS h FROM {target} d WHERE EXISTS (SELECT 1 FROM o WHERE {in_scope}) \
                    UNION ALL \
                    SELECT d.ctid, md5({hd}) FROM {target} d WHERE EXISTS (SELECT 1 FROM o WHERE {o_null}) AND ({d_null})), \
              cd AS (SELECT c.tid, c.h, row_number() OVER (PARTITION BY c.h ORDER BY c.tid) AS dup FROM c) \
         SELECT od._ck, cd.tid FROM od LEFT JOIN cd ON cd.h = od.h AND cd.dup = od.dup",
        ho = row_text(&old_image),
        hd = row_text(&desktop_row),
        old_row = c.old_row(),
        o_scope = s
            .scope
            .iter()
            .map(|(j, _)| format!("o.{}", col(*j)))
            .collect::<Vec<_>>()
            .join(", "),
        o_null = s.any_null("o", false),
        d_null = s.any_null("d", true),
    )
}

/// Net change `n` is of a row the desktop refused before (an open dead letter): it arrives again as
/// a change of a row the desktop does not hold, and is inserted, as the row it is now, not a conflict.
fn refused(table: &Table) -> String {
    format!(
        "EXISTS (SELECT 1 FROM tandem.dead_letters dl WHERE dl.direction = 'reverse' AND dl.table_name = {} \
         AND dl.resolved_at IS NULL AND dl.row_key = {ROW_KEY})",
        lit(&table.t.table.desktop.to_string())
    )
}

/// The net changes whose old image no desktop row holds (their scopes' rows are read from the cloud
/// and contested), as a `FROM` clause over `N n`, `P p` and the old image `o`.
fn lost(s: &Scoped) -> String {
    format!(
        "{net} n JOIN {plan} p ON p._ck = n._ck CROSS JOIN LATERAL {old_row} \
         WHERE p._tid IS NULL AND n._first_old IS NOT NULL AND NOT {refused}",
        net = s.table.net,
        plan = s.plan,
        old_row = s.table.c.old_row(),
        refused = refused(s.table),
    )
}

/// The scopes of the lost net changes, as their old images hold them (text arrays).
pub(super) fn contested_scopes(s: &Scoped) -> String {
    let scope: Vec<String> = s.scope.iter().map(|(j, _)| s.table.c.old(*j)).collect();
    format!(
        "SELECT DISTINCT ARRAY[{}]::text[] FROM {}",
        scope.join(", "),
        lost(s)
    )
}

/// In the cloud: the rows of scopes `$1` (a JSON array of text arrays, as [`contested_scopes`]
/// gives them), each as the stream writes an old image (each column's text by name).
pub(super) fn cloud_scope_rows(s: &Scoped) -> String {
    let t = s.table.t;
    let scope: Vec<String> = s
        .scope
        .iter()
        .map(|(_, sc)| output_text(&format!("c.{}", q(&sc.name))))
        .collect();
    let image: Vec<(String, String)> = s
        .table
        .c
        .cols
        .iter()
        .map(|col| {
            (
                col.name.clone(),
                output_text(&format!("c.{}", q(&col.name))),
            )
        })
        .collect();
    format!(
        "SELECT ({image})::text FROM {cloud} c WHERE EXISTS (SELECT 1 FROM jsonb_array_elements($1::text::jsonb) x(sc) \
         WHERE ARRAY[{scope}]::text[] IS NOT DISTINCT FROM ARRAY(SELECT jsonb_array_elements_text(x.sc)))",
        image = json_object(&image),
        cloud = t.table.cloud.quoted(),
        scope = scope.join(", "),
    )
}

/// Pairs each lost net change with the desktop row its old image became, when the desktop changed
/// it. The candidates are the desktop rows of its scope that match none of the cloud's rows of it
/// (`$1`, a JSON array of their images, as [`cloud_scope_rows`] reads them; copy by copy): each is a
/// desktop change of some row. One is the change of the lost one's row only when it is more like the
/// old image (more columns equal) than like every cloud row of the scope that no desktop row matches
/// (the other rows the desktop changed, as the cloud still holds them; the new versions of the
/// group's changes aside, a phone's new rows among them: the stream may bring those in an earlier
/// group, where the desktop then holds them, and a reconcile in the same one): otherwise it is another row's change, and the lost one's row was deleted on the desktop. A
/// desktop row another change of the group holds the old image of (paired in `P`) is that change's
/// row, not a candidate: a phone that changed one row and deleted its twin must not have its change
/// taken for the desktop's.
/// Of those, the most like the old image (the first by position when tied). None: the desktop
/// deleted it (or never had it).
pub(super) fn contest(s: &Scoped) -> String {
    let Table { c, target, .. } = s.table;
    let plan = &s.plan;
    let width = c.cols.len();
    let scope_of = |value: &dyn Fn(usize, &MappedColumn) -> String| {
        format!(
            "ARRAY[{}]::text[]",
            s.scope
                .iter()
                .map(|(j, sc)| value(*j, sc))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let shaped = |j: usize, text_of: &str| c.cols[j].desktop_shaped(text_of);
    let lost_scope = scope_of(&|j, _| text(&format!("o.{}", col(j))));
    let new_scope = scope_of(&|j, _| text(&format!("n.{}", col(j))));
    let image_scope =
        scope_of(&|j, _| text(&shaped(j, &format!("x.img ->> {}", lit(&c.cols[j].name)))));
    let desktop_scope = scope_of(&|_, sc| text(&format!("d.{}", q(&sc.name))));
    let image_row = row_text(
        &(0..width)
            .map(|j| shaped(j, &format!("x.img ->> {}", lit(&c.cols[j].name))))
            .collect::<Vec<_>>(),
    );
    // The phone's new version of a lost change (an unchanged TOAST value from its old image).
    let new_row = row_text(
        &(0..width)
            .map(|j| {
                shaped(
                    j,
                    &format!(
                        "CASE WHEN {} = ANY(n._unchanged) THEN n._first_old ->> {} ELSE n.{} END",
                        j + 1,
                        lit(&c.cols[j].name),
                        col(j)
                    ),
                )
            })
            .collect::<Vec<_>>(),
    );
    let desktop_row = row_text(
        &c.names()
            .iter()
            .map(|n| format!("d.{n}"))
            .collect::<Vec<_>>(),
    );
    // How many columns of desktop row `d` equal those of `other(j)` (text).
    let likeness = |other: &dyn Fn(usize) -> String| {
        (0..width)
            .map(|j| {
                format!(
                    "CASE WHEN {} IS NOT DISTINCT FROM {} THEN 1 ELSE 0 END",
                    text(&format!("d.{}", q(&c.cols[j].name))),
                    text(&other(j))
                )
            })
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let to_old = likeness(&|j| format!("lost.{}", col(j)));
    let to_stray = likeness(&|j| shaped(j, &format!("st.img ->> {}", lit(&c.cols[j].name))));
    let (to_old, to_stray) = if width == 0 {
        ("0".to_string(), "0".to_string())
    } else {
        (to_old, to_stray)
    };
    format!(
        "WITH lost AS (SELECT n._ck, {lost_scope} AS sc, md5({new_row}) AS h, o.* FROM {lost}), \
              news AS (SELECT lost.sc, lost.h FROM lost \
                       UNION ALL SELECT {new_scope}, md5({new_row}) FROM {net} n WHERE n._op <> 'D'), \
              q AS (SELECT x.img, {image_scope} AS sc, md5({image_row}) AS h FROM jsonb_array_elements($1::text::jsonb) x(img)), \
              qn AS (SELECT q.img, q.sc, q.h, row_number() OVER (PARTITION BY q.sc, q.h) AS dup FROM q), \
              dn AS (SELECT d.ctid AS tid, {desktop_scope} AS sc, md5({desktop_row}) AS h, \
                            row_number() OVER (PARTITION BY {desktop_scope}, md5({desktop_row}) ORDER BY d.ctid) AS dup \
                       FROM {target} d WHERE EXISTS (SELECT 1 FROM lost WHERE lost.sc IS NOT DISTINCT FROM {desktop_scope})), \
              lone AS (SELECT dn.tid, dn.sc FROM dn WHERE NOT EXISTS \
                         (SELECT 1 FROM qn WHERE qn.sc IS NOT DISTINCT FROM dn.sc AND qn.h = dn.h AND qn.dup = dn.dup) \
                         AND NOT EXISTS (SELECT 1 FROM {plan} o WHERE o._tid = dn.tid)), \
              stray AS (SELECT qn.img, qn.sc FROM qn WHERE NOT EXISTS \
                          (SELECT 1 FROM dn WHERE dn.sc IS NOT DISTINCT FROM qn.sc AND dn.h = qn.h AND dn.dup = qn.dup) \
                          AND NOT EXISTS (SELECT 1 FROM news WHERE news.sc IS NOT DISTINCT FROM qn.sc AND news.h = qn.h)) \
         UPDATE {plan} p SET _tid = best.tid, _contested = true \
           FROM lost CROSS JOIN LATERAL (SELECT l.tid FROM lone l JOIN {target} d ON d.ctid = l.tid \
                                          WHERE l.sc IS NOT DISTINCT FROM lost.sc \
                                            AND {to_old} > coalesce((SELECT max({to_stray}) FROM stray st \
                                                                     WHERE st.sc IS NOT DISTINCT FROM l.sc), -1) \
                                          ORDER BY {to_old} DESC, l.tid LIMIT 1) best \
          WHERE p._ck = lost._ck",
        lost = lost(s),
        net = s.table.net,
    )
}

/// The scope of net change `n` as the capture triggers write it (what the outbox holds).
fn outbox_key(s: &Scoped) -> String {
    let c = &s.table.c;
    let scope: Vec<String> = s
        .scope
        .iter()
        .map(|(j, _)| {
            text(&c.cols[*j].desktop_value(&format!("coalesce(n.{}, {})", col(*j), c.old(*j))))
        })
        .collect();
    format!("ARRAY[{}]::text[]", scope.join(", "))
}

/// The desktop deleted a row of net change `n`'s scope since the cloud last took its changes: a
/// delete of the scope, or a TRUNCATE of the table, waits in the outbox.
fn deleted_in_scope(s: &Scoped) -> String {
    let t = &s.table.t.table.desktop;
    format!(
        "EXISTS (SELECT 1 FROM tandem.outbox ob WHERE ob.table_schema = {} AND ob.table_name = {} \
                 AND (ob.op = 'T' OR (ob.op = 'D' AND ob.row_key = {})))",
        lit(&t.schema),
        lit(&t.name),
        outbox_key(s)
    )
}

/// Where a cloud-key table's net changes meet the desktop's rows (see `settle`): the row `P` paired
/// each with. A contested change is `update/update` (or `update/delete`, the phone's delete); a lost
/// change without a pair is `delete/update` when the desktop deleted a row of its scope since the
/// cloud last took its changes (a delete or TRUNCATE waits in the outbox: a held key keeps its `D`),
/// and a row new to the desktop otherwise: nothing tells the desktop's rows apart but their content,
/// so a phone's changes of a row the desktop never had (a reconcile sees a row a phone made and then
/// edited, not its insert) look lost too. A phone's delete of a lost row: both deleted, no conflict.
pub(super) fn site<'a>(s: &'a Scoped<'a>) -> Site<'a> {
    let Table { target, .. } = s.table;
    let outbox_key = outbox_key(s);
    Site {
        table: s.table,
        from: format!(
            "JOIN {plan} p ON p._ck = n._ck LEFT JOIN {target} d ON d.ctid = p._tid",
            plan = s.plan
        ),
        kind: format!(
            "CASE WHEN n._op = 'I' AND p._contested THEN 'update/update' \
                  WHEN n._op = 'I' AND p._tid IS NULL AND n._first_old IS NOT NULL AND NOT {refused} \
                       AND {deleted} THEN 'delete/update' \
                  WHEN n._op = 'D' AND p._contested THEN 'update/delete' END",
            refused = refused(s.table),
            deleted = deleted_in_scope(s),
        ),
        row_key: ROW_KEY.to_string(),
        outbox_key,
        keyed: false,
    }
}

/// Deletes the desktop rows paired with net deletes (range of `N`).
pub(super) fn delete(s: &Scoped) -> Ranged {
    let Table { target, net, .. } = s.table;
    let plan = &s.plan;
    ranged(
        "reverse delete",
        format!(
            "DELETE FROM {target} d USING {plan} p JOIN {net} n ON n._ck = p._ck \
             WHERE d.ctid = p._tid AND n._op = 'D' AND (p._contested IS NOT TRUE OR {SETTLED}) \
             AND n._n BETWEEN $1 AND $2"
        ),
    )
}

/// Updates the desktop rows paired with net changes to their new versions (range of `N`).
pub(super) fn update(s: &Scoped) -> Ranged {
    let Table { target, net, .. } = s.table;
    let plan = &s.plan;
    ranged(
        "reverse update",
        format!(
            "UPDATE {target} d SET {sets} FROM {plan} p JOIN {net} n ON n._ck = p._ck \
             WHERE d.ctid = p._tid AND n._op = 'I' AND (p._contested IS NOT TRUE OR {SETTLED}) \
             AND n._n BETWEEN $1 AND $2",
            sets = sets(s.table),
        ),
    )
}

/// Inserts the new rows, and the rows the desktop refused before and holds no copy of (range of `N`).
pub(super) fn insert(s: &Scoped) -> Ranged {
    let Table { c, target, net, .. } = s.table;
    let plan = &s.plan;
    ranged(
        "reverse insert",
        format!(
            "INSERT INTO {target} ({names}) SELECT {values} FROM {net} n \
             WHERE n._op = 'I' AND (n._first_old IS NULL \
               OR (({refused} OR {SETTLED} OR NOT {deleted}) \
                   AND NOT EXISTS (SELECT 1 FROM {plan} p WHERE p._ck = n._ck AND p._tid IS NOT NULL))) \
             AND n._n BETWEEN $1 AND $2",
            names = c.names().join(", "),
            values = insert_values(s.table),
            refused = refused(s.table),
            deleted = deleted_in_scope(s),
        ),
    )
}

/// The direct path: new rows have no desktop row to collide with, so every row of `S` is inserted
/// and none is a conflict.
pub(super) fn direct_hash(table: &Table) -> DirectSql {
    let Table {
        c, target, staged, ..
    } = table;
    DirectSql {
        collisions: String::new(),
        insert: format!(
            "INSERT INTO {target} ({}) SELECT {} FROM {staged} s",
            c.names().join(", "),
            c.values_of("s").join(", ")
        ),
    }
}

#[cfg(test)]
mod tests;
