//! Conflicts, found and settled where the phone's change meets the desktop's row: on the desktop, in
//! the group's transaction. A desktop-key table finds the desktop's row by the key; a cloud-key table
//! by the pairing of its plan `P` (the row holding the old image, or the row the desktop changed it
//! to: see `scoped::contest`).
//!
//! A phone's net change applies as it is when the desktop's row is what the phone started from (its
//! old image), or holds the new version already. Otherwise the desktop changed the row since the
//! version the phone started from, and neither saw the other's change: a conflict, of one of four
//! kinds (the desktop's change, then the phone's):
//! - `update/update`: both changed the row;
//! - `insert/insert`: both created the key;
//! - `update/delete`: the desktop changed the row, the phone deleted it;
//! - `delete/update`: the desktop deleted the row, the phone changed it.
//!
//! The table's policy settles it (see [`crate::config::Policy`]): the row both sides get (`result`,
//! each column's text; NULL: deleted) is written over the net change, which then applies like any
//! other; the desktop's key goes to the outbox when the cloud must change too. `manual` settles
//! nothing: the change is held, the conflict stays open. Every conflict is recorded, with both
//! versions, the common one, the columns both changed, both times, the policy and the outcome.
//!
//! `latest` compares the desktop change's time (its capture in the outbox, the desktop's clock
//! moved by `cloud_ahead`, how far the cloud's clock is ahead of the desktop's: see
//! [`crate::pipeline::reverse::clock`]) with the phone's commit in the cloud. A side whose time is not
//! known counts as the earlier.

use super::{Keyed, Table};
use crate::config::Policy;
use crate::expr::{col, json_object, lit, output_text, q, text};

/// Where a table's net changes meet the desktop's rows, as the settling statements need it.
pub(super) struct Site<'a> {
    pub table: &'a Table<'a>,
    /// After `FROM N n`: the joins that give the desktop row `d` of each net change (NULL columns
    /// when the desktop holds none).
    pub from: String,
    /// The kind of conflict of net change `n` against `d` (see the module); NULL when none.
    pub kind: String,
    /// How `tandem.conflicts` names the row of `n`.
    pub row_key: String,
    /// The key's (or scope's) texts as the capture triggers write them: what the outbox holds.
    pub outbox_key: String,
    /// Whether `outbox_key` names one row (a desktop key), not a scope.
    pub keyed: bool,
}

impl<'a> Site<'a> {
    /// A desktop-key table: the desktop row of the same key.
    pub fn keyed(k: &'a Keyed<'a>) -> Self {
        Site {
            table: k.table,
            from: format!("LEFT JOIN {} d ON {}", k.table.target, k.is_key("n")),
            kind: kind(k),
            row_key: k.key_json("n"),
            outbox_key: key_texts(k),
            keyed: true,
        }
    }
}

/// `CREATE TEMP TABLE` of `C`: the conflicts of a group, one row per net change in conflict (see
/// [`find`]).
pub(super) fn create(table: &Table) -> String {
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS {} (_n bigint, kind text, base jsonb, desktop_row jsonb, \
         mobile_row jsonb, result jsonb, columns text[], desktop_at timestamptz, desktop_xid bigint, \
         outcome text, key text[]) ON COMMIT PRESERVE ROWS;",
        table.found
    )
}

/// The expressions over net change `n`, desktop row `d` (NULL columns when none) and old image `o`
/// that the settling statements share.
struct Versions<'a> {
    table: &'a Table<'a>,
}

impl Versions<'_> {
    fn cols(&self) -> &[crate::transform::MappedColumn] {
        self.table.c.cols
    }

    /// Column `j`'s name as a literal.
    fn name(&self, j: usize) -> String {
        lit(&self.cols()[j].name)
    }

    /// The desktop's value of column `j`, as its type writes it.
    fn desktop(&self, j: usize) -> String {
        output_text(&format!("d.{}", q(&self.cols()[j].name)))
    }

    /// The phone's value of column `j` (an unchanged TOAST value from the old image).
    fn mobile(&self, j: usize) -> String {
        format!(
            "CASE WHEN {} = ANY(n._unchanged) THEN n._first_old ->> {} ELSE n.{} END",
            j + 1,
            self.name(j),
            col(j)
        )
    }

    /// Column `j` of the desktop's row differs from value `other` (text), as the desktop holds it.
    fn desktop_differs(&self, j: usize, other: &str) -> String {
        format!(
            "{} IS DISTINCT FROM {}",
            text(&format!("d.{}", q(&self.cols()[j].name))),
            text(other)
        )
    }

    /// The desktop changed column `j` since the old image (unknown to the image: it may have).
    fn desktop_changed(&self, j: usize) -> String {
        format!(
            "(NOT (n._first_old ? {}) OR {})",
            self.name(j),
            self.desktop_differs(j, &format!("o.{}", col(j)))
        )
    }

    /// The phone changed column `j` since the old image.
    fn mobile_changed(&self, j: usize) -> String {
        let shaped = self.cols()[j].desktop_shaped(&self.mobile(j));
        format!(
            "(({} = ANY(n._unchanged)) IS NOT TRUE AND (NOT (n._first_old ? {}) OR {} IS DISTINCT FROM {}))",
            j + 1,
            self.name(j),
            text(&shaped),
            text(&format!("o.{}", col(j)))
        )
    }

    /// Column `j` holds different values on the two sides.
    fn apart(&self, j: usize) -> String {
        self.desktop_differs(j, &self.cols()[j].desktop_shaped(&self.mobile(j)))
    }

    /// Both sides changed column `j` since the old image (without one, wherever they differ), to
    /// different values.
    fn both_changed(&self, j: usize) -> String {
        format!(
            "(CASE WHEN n._first_old IS NULL THEN true ELSE {} AND {} END AND {})",
            self.desktop_changed(j),
            self.mobile_changed(j),
            self.apart(j)
        )
    }

    /// `latest`'s value of column `j`: the side that changed it alone, or the later writer's.
    fn latest(&self, j: usize, desktop_later: &str) -> String {
        format!(
            "CASE WHEN {both} THEN CASE WHEN {desktop_later} THEN {d} ELSE {m} END \
                  WHEN n._first_old IS NOT NULL AND {mc} THEN {m} ELSE {d} END",
            both = self.both_changed(j),
            d = self.desktop(j),
            m = self.mobile(j),
            mc = self.mobile_changed(j),
        )
    }

    /// The version both sides last agreed on (the old image), written like the other versions: the
    /// columns that travel, each as the image holds it (one it does not know is left out), not the
    /// cloud's own columns (`source`, `created_at`, a cloud key). NULL without an old image.
    fn base(&self) -> String {
        let names: Vec<String> = (0..self.cols().len()).map(|j| self.name(j)).collect();
        format!(
            "(SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(n._first_old) e \
              WHERE e.key = ANY(ARRAY[{}]::text[]))",
            names.join(", ")
        )
    }

    fn json(&self, value: impl Fn(usize) -> String) -> String {
        let pairs: Vec<(String, String)> = (0..self.cols().len())
            .map(|j| (self.cols()[j].name.clone(), value(j)))
            .collect();
        json_object(&pairs)
    }
}

/// The kind of conflict of net change `n` against desktop row `d` (none: NULL). A key the phone
/// deleted and made again (`_remade`) that the desktop lacks is a new row for it: both deleted the
/// old one (as when the delete and the new row arrive in two groups). A key with an open conflict
/// waits for a person: a phone's later change of it is held and brings that conflict up to date
/// (see [`record`]) unless the desktop holds its new version already, even where the desktop's row
/// equals the version the phone started from. The desktop changed its row since the conflict (its
/// change was held, see `capture::outbox::not_held`): equal content is no sign it received the
/// phone's version, and applying the phone's change would take the desktop's edit away unrecorded.
fn kind(k: &Keyed) -> String {
    let c = &k.table.c;
    let (same_old, same_new) = (c.same_old(), c.same_new());
    let open = format!(
        "SELECT 1 FROM tandem.conflicts x WHERE x.resolved_at IS NULL AND x.direction = 'reverse' \
         AND x.table_name = {} AND x.kind IS NOT NULL",
        lit(&k.table.t.table.desktop.to_string())
    );
    format!(
        "CASE WHEN n._op = 'I' AND d.ctid IS NOT NULL AND n._first_old IS NOT NULL AND NOT {same_old} AND NOT {same_new} \
                   THEN 'update/update' \
              WHEN n._op = 'I' AND d.ctid IS NOT NULL AND n._first_old IS NULL AND NOT {same_new} THEN 'insert/insert' \
              WHEN n._op = 'I' AND d.ctid IS NULL AND n._first_old IS NOT NULL AND n._remade IS NOT TRUE \
                   THEN 'delete/update' \
              WHEN n._op = 'D' AND d.ctid IS NOT NULL AND NOT {same_old} THEN 'update/delete' \
              WHEN d.ctid IS NOT NULL AND NOT (n._op = 'I' AND {same_new}) \
                   AND EXISTS ({open}) AND EXISTS ({open} AND x.row_key = {row_key}) \
                   THEN CASE WHEN n._op = 'D' THEN 'update/delete' ELSE 'update/update' END END",
        row_key = k.key_json("n"),
    )
}

/// The key's texts as the capture triggers write them (what the outbox holds): each key column's
/// value as the desktop's type reads it, written back under tandem's settings.
fn key_texts(k: &Keyed) -> String {
    let texts: Vec<String> = k
        .key_positions()
        .map(|j| text(&k.table.c.cols[j].desktop_value(&format!("n.{}", col(j)))))
        .collect();
    format!("ARRAY[{}]::text[]", texts.join(", "))
}

/// The outbox row `ob` is the capture of the transaction that wrote the desktop's row `d` (its
/// `xmin`, the low 32 bits of the outbox's xid8): the desktop change whose time and transaction a
/// conflict records, exactly, in either table kind.
const WRITER: &str = "coalesce((ob.xid::text::bigint % 4294967296) = d.xmin::text::bigint, false)";

/// Finds the group's conflicts (net changes `N` against the desktop's rows) and settles each by
/// `policy`: one row of `C` each, with the versions, the desktop change's time and transaction (from
/// the outbox), the result and the outcome (NULL: a person decides).
pub(super) fn find(site: &Site, policy: Policy) -> String {
    let Table {
        t,
        c,
        net,
        found: c_table,
        ..
    } = site.table;
    let v = Versions { table: site.table };
    let width = c.cols.len();
    let desktop_row = format!(
        "CASE WHEN d.ctid IS NULL THEN NULL ELSE {} END",
        v.json(|j| v.desktop(j))
    );
    let mobile_row = format!(
        "CASE WHEN n._op = 'D' THEN NULL ELSE {} END",
        v.json(|j| v.mobile(j))
    );
    let desktop_later = format!(
        "coalesce(w.at + coalesce((SELECT i.value::interval FROM tandem.installation i WHERE i.item = {}), \
                  '0'::interval) > n._at, n._at IS NULL)",
        lit(crate::commit::reverse::CLOUD_AHEAD_ITEM)
    );
    let merged = v.json(|j| v.latest(j, &desktop_later));
    let (result, outcome) = match policy {
        Policy::Desktop => ("x.desktop_row".to_string(), "'desktop'".to_string()),
        Policy::Mobile => ("x.mobile_row".to_string(), "'mobile'".to_string()),
        Policy::Manual => ("NULL::jsonb".to_string(), "NULL::text".to_string()),
        Policy::Latest => (
            "CASE WHEN x.kind = 'update/delete' THEN x.desktop_row WHEN x.kind = 'delete/update' THEN x.mobile_row \
                  ELSE x.merged END"
                .to_string(),
            "CASE WHEN x.kind = 'update/delete' THEN 'desktop' WHEN x.kind = 'delete/update' THEN 'mobile' \
                  WHEN x.merged = x.desktop_row THEN 'desktop' WHEN x.merged = x.mobile_row THEN 'mobile' \
                  ELSE 'merged' END"
                .to_string(),
        ),
    };
    let columns = (0..width)
        .map(|j| format!("CASE WHEN {} THEN {} END", v.both_changed(j), v.name(j)))
        .collect::<Vec<_>>()
        .join(", ");
    let key = &site.outbox_key;
    format!(
        "INSERT INTO {c_table} (_n, kind, base, desktop_row, mobile_row, result, columns, desktop_at, desktop_xid, outcome, key) \
         SELECT x._n, x.kind, x.base, x.desktop_row, x.mobile_row, {result}, x.columns, x.desktop_at, x.desktop_xid, {outcome}, x.key \
         FROM (SELECT n._n, {kind} AS kind, {base} AS base, {desktop_row} AS desktop_row, {mobile_row} AS mobile_row, \
                      CASE WHEN n._op = 'D' OR d.ctid IS NULL THEN NULL ELSE {merged} END AS merged, \
                      CASE WHEN n._op = 'I' AND d.ctid IS NOT NULL THEN array_remove(ARRAY[{columns}]::text[], NULL) END AS columns, \
                      w.at AS desktop_at, w.xid AS desktop_xid, {key} AS key \
                 FROM {net} n {from} \
                 LEFT JOIN LATERAL {old_row} ON n._first_old IS NOT NULL \
                 LEFT JOIN LATERAL (SELECT ob.captured_at AS at, ob.xid::text::bigint AS xid \
                                      FROM tandem.outbox ob WHERE ob.table_schema = {schema} AND ob.table_name = {tname} \
                                       AND ob.op <> 'T' AND ob.row_key = {key} AND ({by_writer} OR {by_key}) \
                                     ORDER BY {by_writer} DESC, ob.captured_at DESC, ob.id DESC LIMIT 1) w ON true \
                WHERE n._verdict IS NULL) x \
         WHERE x.kind IS NOT NULL",
        kind = site.kind,
        base = v.base(),
        by_writer = WRITER,
        // A desktop-key table's key names the row: its latest change is the one, when the writer of
        // the desktop's row is not known (deleted, or written in a subtransaction). A cloud-key
        // table's scope holds other rows too: the time is unknown then.
        by_key = if site.keyed { "true" } else { "false" },
        from = site.from,
        old_row = c.old_row(),
        schema = lit(&t.table.desktop.schema),
        tname = lit(&t.table.desktop.name),
    )
}

/// Records the conflicts of `C` in `tandem.conflicts` ($1: table name): settled ones with their
/// outcome (resolved by the policy); an open one as the row's one open conflict. A row a person has
/// yet to decide keeps one record: a phone's later change of it (held again, the desktop's row
/// still differs) brings that record up to date (both versions as they are now, the phone's commit,
/// the columns both changed, added to those before; the common version stays) rather than adding a second
/// record of an older version. The phone's latest version is the one to restore, and a reconcile,
/// which sees only the row as it is now, records the same.
pub(super) fn record(site: &Site, policy: Policy) -> String {
    let (net, c_table) = (&site.table.net, &site.table.found);
    let row_key = &site.row_key;
    format!(
        "WITH held AS (SELECT DISTINCT ON (rk) x.* FROM (SELECT c.*, n._at, n._lsn, n._xid, {row_key} AS rk \
                                                        FROM {c_table} c JOIN {net} n ON n._n = c._n \
                                                       WHERE c.outcome IS NULL) x \
                        ORDER BY rk, x._n DESC), \
              refreshed AS (UPDATE tandem.conflicts o SET kind = {kind}, incoming = h.mobile_row, current = h.desktop_row, \
                                   reason = {kind} || ': the desktop and a phone changed this row without seeing each \
                                            other; nothing was applied: choose with `tandem conflicts resolve`', \
                                   desktop_row = h.desktop_row, mobile_row = h.mobile_row, \
                                   columns = coalesce(o.columns, '{{}}'::text[]) || ARRAY(SELECT x FROM unnest(h.columns) x \
                                             WHERE x <> ALL(coalesce(o.columns, '{{}}'::text[]))), \
                                   desktop_at = coalesce(h.desktop_at, o.desktop_at), \
                                   desktop_xid = coalesce(h.desktop_xid, o.desktop_xid), \
                                   mobile_at = coalesce(h._at, o.mobile_at), cloud_lsn = coalesce(h._lsn, o.cloud_lsn), \
                                   cloud_xid = coalesce(h._xid, o.cloud_xid) \
                              FROM held h \
                             WHERE o.resolved_at IS NULL AND o.direction = 'reverse' AND o.table_name = $1::text \
                               AND o.row_key = h.rk AND o.kind IS NOT NULL \
                            RETURNING h.rk) \
         INSERT INTO tandem.conflicts (direction, table_name, row_key, incoming, current, reason, kind, base, \
                desktop_row, mobile_row, columns, desktop_at, mobile_at, cloud_lsn, cloud_xid, desktop_xid, policy, \
                outcome, result, resolved_at, resolution, resolved_by) \
         SELECT 'reverse', $1::text, {row_key}, c.mobile_row, c.desktop_row, \
                c.kind || ': the desktop and a phone changed this row without seeing each other; ' || \
                  CASE WHEN c.outcome IS NULL THEN 'nothing was applied: choose with `tandem conflicts resolve`' \
                       ELSE 'settled by policy {policy}, keeping the ' || c.outcome || CASE WHEN c.outcome = 'merged' \
                            THEN ' row (each side''s changes, the later writer''s where both changed a column)' \
                            ELSE ' version' END END, \
                c.kind, c.base, c.desktop_row, c.mobile_row, c.columns, c.desktop_at, n._at, n._lsn, n._xid, \
                c.desktop_xid, '{policy}', c.outcome, c.result, \
                CASE WHEN c.outcome IS NOT NULL THEN now() END, c.outcome, \
                CASE WHEN c.outcome IS NOT NULL THEN 'policy {policy}' END \
           FROM {c_table} c JOIN {net} n ON n._n = c._n \
          WHERE c.outcome IS NOT NULL OR (NOT EXISTS (SELECT 1 FROM refreshed r WHERE r.rk = {row_key}) \
                AND c._n = (SELECT h._n FROM held h WHERE h.rk = {row_key}))",
        // How the two sides came apart stays while each side's version exists as it did (a phone's
        // edit of a row both created is still `insert/insert`); a phone's delete of it, or a new
        // row after one, is told by the kind of the change found now.
        kind = "CASE WHEN (o.mobile_row IS NULL) = (h.mobile_row IS NULL) \
                      AND (o.desktop_row IS NULL) = (h.desktop_row IS NULL) THEN o.kind ELSE h.kind END",
    )
}

/// Puts the keys of the settled conflicts whose result is not the phone's version into the outbox:
/// the cloud must take it too. The forward worker is woken (tandem's own writes are not captured).
/// Each with the time of the desktop change settled (as a held key keeps it, see
/// `capture::outbox`), not the settlement's: the row's next conflict compares that time, and the
/// desktop changed nothing since.
pub(super) fn enqueue(site: &Site) -> String {
    let (t, c_table) = (site.table.t, &site.table.found);
    format!(
        "WITH queued AS (INSERT INTO tandem.outbox (table_schema, table_name, op, row_key, captured_at) \
                         SELECT {schema}, {tname}, 'U', c.key, coalesce(c.desktop_at, now()) FROM {c_table} c \
                          WHERE c.outcome IS NOT NULL AND c.result IS DISTINCT FROM c.mobile_row RETURNING 1) \
         SELECT pg_notify('tandem_outbox', '') FROM (SELECT 1 FROM queued LIMIT 1) q",
        schema = lit(&t.table.desktop.schema),
        tname = lit(&t.table.desktop.name),
    )
}

/// Writes each settled conflict's result over its net change (which then applies: a delete when the
/// result is none), and marks the others held (a person decides).
pub(super) fn apply(site: &Site) -> String {
    let (c, c_table) = (&site.table.c, &site.table.found);
    let sets: Vec<String> = (0..c.cols.len())
        .map(|j| {
            format!(
                "{col} = CASE WHEN x.outcome IS NULL OR x.result IS NULL THEN n.{col} ELSE x.result ->> {name} END",
                col = col(j),
                name = lit(&c.cols[j].name)
            )
        })
        .collect();
    format!(
        "UPDATE {net} n SET _verdict = CASE WHEN x.outcome IS NULL THEN 'held' ELSE 'settled' END, \
                _op = CASE WHEN x.outcome IS NULL THEN n._op WHEN x.result IS NULL THEN 'D' ELSE 'I' END, \
                _unchanged = CASE WHEN x.outcome IS NULL THEN n._unchanged END{comma}{sets} \
           FROM {c_table} x WHERE x._n = n._n",
        net = site.table.net,
        comma = if sets.is_empty() { "" } else { ", " },
        sets = sets.join(", "),
    )
}

/// The direct path's rows (new rows, not reduced) whose key the desktop holds with other content,
/// made net changes of their own (new rows: no old image), to be settled as `insert/insert`.
pub(super) fn collisions(k: &Keyed, matching: &str) -> String {
    let Table { c, staged, net, .. } = k.table;
    let width = c.cols.len();
    let data = (0..width).map(col).collect::<Vec<_>>().join(", ");
    let values = (0..width)
        .map(|j| format!("s.{}", col(j)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {net} (_op, _unchanged, _first_old, _ck, _xid, _at, _lsn{comma}{data}) \
         SELECT 'I', NULL, NULL, s._ck, s._xid, s._at, s._lsn{comma}{values} FROM {staged} s {matching} WHERE {}",
        c.differs("s"),
        comma = if width > 0 { ", " } else { "" },
    )
}
