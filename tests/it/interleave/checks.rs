//! What the interleaving property checks: that phones' writes reached the desktop (after each
//! catch-up, and at the end), that both sides agree or every difference is an open conflict (at the
//! end), and the state two runs of one interleaving are compared by.

use super::harness::{Harness, Ident, Policy, Row, Written};
use tandem::change::quote_literal;

use crate::generated::{TYPES, diff, join, q, show};

/// A conflict as the desktop's `tandem.conflicts` records it, its versions as rows (`None`: deleted).
#[derive(Debug, Clone)]
pub(crate) struct Conflict {
    pub id: i64,
    pub kind: Option<String>,
    /// A desktop-key table's key (a cloud-key table's conflicts name the cloud row instead).
    pub key: Option<Row>,
    pub desktop_row: Option<Row>,
    pub mobile_row: Option<Row>,
    pub result: Option<Row>,
    pub open: bool,
}

fn shown(row: &Option<Row>) -> String {
    match row {
        None => "(deleted)".into(),
        Some(r) => format!(
            "({})",
            r.iter().map(|v| show(v, 40)).collect::<Vec<_>>().join(", ")
        ),
    }
}

impl Harness<'_> {
    /// The desktop's conflicts of table `t` with an id above `after`. Their versions hold each
    /// column's output text; read through the column's type, they compare with [`Harness::rows`].
    pub(crate) async fn conflicts(&self, t: usize, after: i64) -> Result<Vec<Conflict>, String> {
        let table = &self.schema.tables[t];
        let texts = |json: &str, cols: &[(&str, usize)]| {
            let texts = join(cols, |(n, ty)| {
                format!(
                    "(c.{json} ->> {})::{}::text",
                    quote_literal(n),
                    TYPES[*ty].0
                )
            });
            format!("jsonb_typeof(c.{json}) = 'object', {texts}")
        };
        let (all, key) = (&table.cols[..], &table.cols[..table.ident]);
        let sql = format!(
            "SELECT c.id, c.kind, c.resolved_at IS NULL, {}, {}, {}, {}
               FROM tandem.conflicts c WHERE c.table_name = $1 AND c.id > $2 ORDER BY c.id",
            texts("row_key", key),
            texts("desktop_row", all),
            texts("mobile_row", all),
            texts("result", all)
        );
        let name = super::harness::table_name(table);
        let rows = self.desktop.query(&sql, &[&name, &after]).await;
        let rows = rows.map_err(|e| self.report(&format!("reading the conflicts: {e}\n{sql}")))?;
        let mut conflicts = Vec::new();
        for r in rows {
            // Each version: whether it is an object, then its columns' texts.
            let mut at = 3;
            let mut version = |width: usize| -> Option<Row> {
                let object: Option<bool> = r.get(at);
                let row = (at + 1..at + 1 + width).map(|i| r.get(i)).collect();
                at += 1 + width;
                object.unwrap_or(false).then_some(row)
            };
            let key = version(key.len()).filter(|_| table.cloud_key.is_none());
            conflicts.push(Conflict {
                id: r.get(0),
                kind: r.get(1),
                open: r.get(2),
                key,
                desktop_row: version(all.len()),
                mobile_row: version(all.len()),
                result: version(all.len()),
            });
        }
        Ok(conflicts)
    }

    /// Every phone write of `segment` (or, with `None`, of the whole case) that is the last a phone
    /// made of its row there is the losing version of a conflict recorded since its segment began,
    /// or on both sides, unless a later desktop write that may have seen it replaced it.
    pub(crate) async fn phone_writes_arrived(
        &self,
        segment: Option<usize>,
    ) -> Result<Vec<String>, String> {
        let mut problems = Vec::new();
        for t in 0..self.schema.tables.len() {
            let table = &self.schema.tables[t];
            let writes: Vec<&Written> = self
                .written
                .iter()
                .filter(|w| w.table == t && segment.is_none_or(|s| w.segment == s))
                .collect();
            let desktop = self.rows(false, t, "").await?;
            let ck = table.cloud_key.map(|ck| format!(", {}::text", q(ck)));
            let cloud = self.rows(true, t, ck.as_deref().unwrap_or("")).await?;
            for (i, w) in writes.iter().enumerate() {
                let later = &writes[i + 1..];
                if !w.phone || later.iter().any(|l| l.phone && l.ident == w.ident) {
                    continue;
                }
                // A desktop write of the row that may have been made after it received this one.
                let seen = |d: &&&Written| match &w.ident {
                    Ident::Key(_) => d.ident == w.ident,
                    _ => w.new.is_some() && d.old == w.new,
                };
                let replaced = later
                    .iter()
                    .filter(|d| !d.phone)
                    .filter(seen)
                    .any(|d| d.racy || d.segment > w.segment);
                if replaced {
                    continue;
                }
                if let Some(problem) = self.arrived(t, w, &desktop, &cloud).await? {
                    problems.push(format!(
                        "{}: the phone's write of step {} is lost: {problem}",
                        table.qualified(),
                        w.step + 1
                    ));
                }
            }
        }
        Ok(problems)
    }

    /// The desktop's side of the same, in desktop-key tables: every desktop write of `segment` (or of
    /// the whole case) that is the last the desktop made of its key there is in the cloud, or the
    /// losing version of a conflict recorded since its segment began, or waits behind an open one;
    /// unless a later phone write that may have seen it replaced it, or it deleted a row the desktop
    /// made in the same segment.
    pub(crate) async fn desktop_writes_arrived(
        &self,
        segment: Option<usize>,
    ) -> Result<Vec<String>, String> {
        let mut problems = Vec::new();
        for (t, table) in self.schema.tables.iter().enumerate() {
            if table.cloud_key.is_some() {
                continue;
            }
            let writes: Vec<&Written> = self
                .written
                .iter()
                .filter(|w| w.table == t && segment.is_none_or(|s| w.segment == s))
                .collect();
            let cloud = self.rows(true, t, "").await?;
            let conflicts = self.conflicts(t, 0).await?;
            for (i, d) in writes.iter().enumerate() {
                let later = &writes[i + 1..];
                let same = |l: &&&Written| l.ident == d.ident;
                if d.phone || later.iter().filter(same).any(|l| !l.phone) {
                    continue;
                }
                // A phone's later write that started from the desktop's version (the same content,
                // made on both sides) is an ordinary change of the version both hold.
                let seen = |p: &&Written| {
                    p.phone
                        && (p.racy || p.segment > d.segment || (d.new.is_some() && p.old == d.new))
                };
                if later.iter().filter(same).any(seen) {
                    continue;
                }
                // The desktop's edits of the segment ended at the version a phone's write of it
                // started from (an edit and its undoing): compared by content, the desktop changed
                // nothing the phone had not seen, and the phone's write applies.
                let undone = |p: &&Written| {
                    p.phone && p.segment == d.segment && d.new.is_some() && p.old == d.new
                };
                if writes[..i].iter().filter(same).any(undone) {
                    continue;
                }
                // Both deleted the same version: the desktop's delete is done; a row the phone made
                // of the key since is a new one.
                let both_deleted = |p: &&Written| {
                    p.phone
                        && p.segment == d.segment
                        && d.new.is_none()
                        && p.new.is_none()
                        && p.old == d.old
                };
                if writes.iter().filter(same).any(both_deleted) {
                    continue;
                }
                // A row the desktop made and removed between two catch-ups: nothing of it is owed
                // to the cloud (a phone may have made the key meanwhile, a row of its own).
                let made_here = writes[..i]
                    .iter()
                    .find(|e| e.ident == d.ident && !e.phone && e.segment == d.segment)
                    .is_some_and(|first| first.old.is_none());
                if d.new.is_none() && made_here {
                    continue;
                }
                let Ident::Key(k) = &d.ident else { continue };
                let of_key = |c: &&Conflict| c.key.as_ref() == Some(k);
                let mark = self.marks[d.segment];
                let recorded = conflicts
                    .iter()
                    .filter(of_key)
                    .any(|c| c.open || (c.id > mark && c.desktop_row == d.new));
                let now = cloud.iter().find(|r| r[..table.ident] == k[..]).cloned();
                if !recorded && now != d.new {
                    problems.push(format!(
                        "{}: the desktop's write of step {} is lost: its version {} of key {}, the cloud's {}, no conflict recorded it",
                        table.qualified(),
                        d.step + 1,
                        shown(&d.new),
                        shown(&Some(k.clone())),
                        shown(&now)
                    ));
                }
            }
        }
        Ok(problems)
    }

    /// Why phone write `w` of table `t` is neither on the desktop (`desktop`: its rows) nor a recorded
    /// conflict's losing version, or was overwritten in the cloud (`cloud`: its rows, a cloud-key
    /// table's with the cloud key last); `None` when it is (or when that cannot be told).
    async fn arrived(
        &self,
        t: usize,
        w: &Written,
        desktop: &[Row],
        cloud: &[Row],
    ) -> Result<Option<String>, String> {
        let table = &self.schema.tables[t];
        // Recorded since the segment began, or open (a record a later version may have updated).
        let mark = self.marks[w.segment];
        let all = self.conflicts(t, 0).await?;
        let since: Vec<&Conflict> = all.iter().filter(|c| c.id > mark || c.open).collect();
        let recorded = |c: &&Conflict| {
            c.mobile_row == w.new
                && match &w.ident {
                    Ident::Key(k) => c.key.as_ref() == Some(k),
                    _ => true,
                }
        };
        if since.iter().any(recorded) {
            return Ok(None);
        }
        // A phone's delete or edit in the same segment of another row whose old image is this
        // version: the desktop tells the two apart by content alone, and when the stream brings the
        // two in different groups, the second finds the row the first just made (a known
        // limitation, see `a_phones_change_of_a_row_into_its_deleted_twin_survives` and
        // `a_phones_new_row_like_the_old_version_of_a_row_it_edits_survives`).
        let changed_twin = matches!(w.ident, Ident::Cloud(_))
            && w.new.is_some()
            && self.written.iter().any(|x| {
                x.phone
                    && x.table == t
                    && x.segment == w.segment
                    && x.ident != w.ident
                    && x.old == w.new
            });
        if changed_twin || self.made_on_both(t, w) {
            return Ok(None);
        }
        // Not a conflict: nothing but the phone changed the cloud's row since.
        let n = table.cols.len();
        let in_cloud = match &w.ident {
            Ident::Key(k) => Some(cloud.iter().find(|r| r[..table.ident] == k[..]).cloned()),
            Ident::Cloud(x) => Some(
                cloud
                    .iter()
                    .find(|r| r[n].as_ref() == Some(x))
                    .map(|r| r[..n].to_vec()),
            ),
            Ident::Content => None,
        };
        // In a cloud-key table, rows of equal content are told apart by nothing but their cloud key,
        // which the desktop does not have: which of two equal rows a desktop edit changed is not
        // known, and the phone's version counts as there when a row of the scope still holds it.
        let twin = matches!(w.ident, Ident::Cloud(_))
            && w.new
                .as_ref()
                .is_some_and(|new| cloud.iter().any(|r| r[..n] == new[..]));
        if let Some(now) = in_cloud.filter(|now| *now != w.new && !twin) {
            return Ok(Some(format!(
                "the cloud's row holds {} now, not the phone's version {}, and no conflict recorded it",
                shown(&now),
                shown(&w.new)
            )));
        }
        let holds: Result<(), String> = match (&w.ident, &w.new) {
            (Ident::Key(k), new) => {
                let row = desktop.iter().find(|r| r[..table.ident] == k[..]).cloned();
                (row == *new).then_some(()).ok_or(format!(
                    "the phone's version {} of key {}, the desktop's {}",
                    shown(new),
                    shown(&Some(k.clone())),
                    shown(&row)
                ))
            }
            (_, Some(new)) => desktop.contains(new).then_some(()).ok_or(format!(
                "the phone's version {} is not on the desktop",
                shown(&w.new)
            )),
            (_, None) => {
                let old = w.old.clone();
                // Told only when one write alone ever made that content (and no settlement did).
                let made = self
                    .written
                    .iter()
                    .filter(|x| x.table == t && x.new == old)
                    .count();
                if made != 1 || all.iter().any(|c| c.result == old) {
                    return Ok(None);
                }
                let old = old.expect("a deleted row");
                // The desktop's edits of that row in the segment: the phone's delete met an edit.
                // The desktop's edit made the content of a phone's row: the phone's row is taken
                // for the one the desktop holds already (the same version made on both sides), and
                // which of the equal rows the edit (or a later edit of that content) was is not
                // known.
                let twin = |edited: &Row| {
                    self.written
                        .iter()
                        .any(|x| x.phone && x.table == t && x.new.as_ref() == Some(edited))
                };
                let mut now = Some(old.clone());
                let mut shared = false;
                let edits = self.written.iter().filter(|d| {
                    !d.phone && d.table == t && d.segment == w.segment && d.old.is_some()
                });
                let mut chain = vec![old.clone()];
                for d in edits {
                    if d.old == now {
                        now = d.new.clone();
                        shared |= now.as_ref().is_some_and(twin);
                        chain.extend(now.clone());
                    }
                }
                // The desktop's edit is no more like the deleted version than like another row it
                // changed or deleted in the segment: which row it edited is not known (rows are told
                // apart by content alone; tandem pairs by likeness, the first when tied), so the
                // phone's delete may be taken for one of a row the desktop deleted too.
                let like = |a: &Row, b: &Row| a.iter().zip(b).filter(|(x, y)| x == y).count();
                let tied = |edited: &Row| {
                    self.written.iter().any(|d| {
                        !d.phone
                            && d.table == t
                            && d.segment == w.segment
                            && d.old.as_ref().is_some_and(|other| {
                                !chain.contains(other) && like(edited, other) >= like(edited, &old)
                            })
                    })
                };
                match now {
                    Some(edited) if edited != old && (shared || tied(&edited)) => Ok(()),
                    Some(edited) if edited != old => Err(format!(
                        "the phone deleted {}, which the desktop edited meanwhile into {}: no conflict recorded",
                        shown(&Some(old)),
                        shown(&Some(edited))
                    )),
                    _ if desktop.contains(&old) => Err(format!(
                        "the phone deleted {}, the desktop still holds it",
                        shown(&Some(old))
                    )),
                    _ => Ok(()),
                }
            }
        };
        Ok(holds.err().map(|why| {
            let kinds: Vec<String> = since
                .iter()
                .map(|c| format!("{:?} {}", c.kind, shown(&c.mobile_row)))
                .collect();
            format!("{why}; conflicts recorded since: {kinds:?}")
        }))
    }

    /// Phone write `w` deletes a key of a desktop-key table that a phone made in the same segment
    /// while the desktop made the key too: a reconcile does not see the phone's insert (only
    /// cloud-key tables journal them) and sends the desktop's row with no record, where the stream
    /// records the key made on both sides (a known limitation, see
    /// `a_key_a_phone_made_and_deleted_while_the_desktop_made_it_is_a_conflict_for_reconcile`).
    pub(crate) fn made_on_both(&self, t: usize, w: &Written) -> bool {
        let made = |phone: bool| {
            self.written.iter().any(|x| {
                x.phone == phone
                    && x.table == t
                    && x.segment == w.segment
                    && x.ident == w.ident
                    && x.old.is_none()
                    && x.step < w.step
            })
        };
        matches!(w.ident, Ident::Key(_)) && w.phone && w.new.is_none() && made(true) && made(false)
    }

    /// At the end: under every policy but `manual` both sides hold the same rows and no conflict is
    /// open; under `manual` every difference is an open conflict's; no dead letter anywhere.
    pub(crate) async fn settled(&self) -> Result<Vec<String>, String> {
        let mut problems = Vec::new();
        for (t, table) in self.schema.tables.iter().enumerate() {
            let name = table.qualified();
            let (desktop, cloud) = (
                self.rows(false, t, "").await?,
                self.rows(true, t, "").await?,
            );
            let open: Vec<Conflict> = self
                .conflicts(t, 0)
                .await?
                .into_iter()
                .filter(|c| c.open)
                .collect();
            if self.schema.policy(t) != Policy::Manual {
                if desktop != cloud {
                    let diff = diff("on the desktop", &desktop, "in the cloud", &cloud);
                    problems.push(format!("{name}: the sides differ\n{diff}"));
                }
                if !open.is_empty() {
                    problems.push(format!("{name}: {} conflict(s) open: {open:?}", open.len()));
                }
                continue;
            }
            match table.cloud_key {
                None => {
                    let key = |r: &Row| r[..table.ident].to_vec();
                    let mut keys: Vec<Row> = desktop.iter().chain(&cloud).map(key).collect();
                    keys.sort();
                    keys.dedup();
                    for k in keys {
                        let of = |rows: &[Row]| rows.iter().find(|r| key(r) == k).cloned();
                        let (d, c) = (of(&desktop), of(&cloud));
                        if d != c && !open.iter().any(|o| o.key.as_ref() == Some(&k)) {
                            problems.push(format!(
                                "{name}: key {} differs (desktop {}, cloud {}) with no open conflict",
                                shown(&Some(k.clone())),
                                shown(&d),
                                shown(&c)
                            ));
                        }
                    }
                }
                Some(_) => {
                    let (mut only_d, mut only_c) = (desktop.clone(), Vec::new());
                    for r in &cloud {
                        match only_d.iter().position(|d| d == r) {
                            Some(at) => drop(only_d.remove(at)),
                            None => only_c.push(r.clone()),
                        }
                    }
                    // The desktop may edit its version of an open conflict further: that row is
                    // the conflict's still (a cloud-key table's conflict names the cloud row). The
                    // version recorded was read after the writes of the segments before the
                    // catch-up that recorded it, so the desktop's writes are followed from that
                    // segment on (where a stream ran, the segment's own writes may have come
                    // before or after), or from the next; a refresh reads the version later still,
                    // so the version recorded counts too.
                    let mut named_d: Vec<Vec<Row>> = open
                        .iter()
                        .map(|o| {
                            let of = self.marks.iter().filter(|m| **m < o.id).count() - 1;
                            let mut versions: Vec<Row> = o.desktop_row.iter().cloned().collect();
                            for since in [of, of + 1] {
                                versions.extend(self.edited(t, o.desktop_row.clone(), since));
                            }
                            versions
                        })
                        .collect();
                    let mut named_c: Vec<Vec<Row>> = open
                        .iter()
                        .filter_map(|o| o.mobile_row.clone())
                        .map(|r| vec![r])
                        .collect();
                    for (side, rows, named) in [
                        ("desktop", only_d, &mut named_d),
                        ("cloud", only_c, &mut named_c),
                    ] {
                        for r in rows {
                            match named.iter().position(|n| n.contains(&r)) {
                                Some(at) => drop(named.remove(at)),
                                None => problems.push(format!(
                                    "{name}: {} only on the {side}, no open conflict's",
                                    shown(&Some(r))
                                )),
                            }
                        }
                    }
                }
            }
        }
        for (side, client) in [("desktop", &self.desktop), ("cloud", &self.cloud)] {
            let sql = "SELECT l::text FROM tandem.dead_letters l";
            let rows = crate::generated::query_texts(client, sql)
                .await
                .map_err(|e| self.report(&e))?;
            for r in rows {
                problems.push(format!(
                    "a dead letter on the {side}: {}",
                    show(&r[0], 1000)
                ));
            }
            if side == "cloud" {
                let sql = "SELECT c::text FROM tandem.conflicts c WHERE resolved_at IS NULL";
                let rows = crate::generated::query_texts(client, sql)
                    .await
                    .map_err(|e| self.report(&e))?;
                for r in rows {
                    problems.push(format!(
                        "an open conflict on the cloud: {}",
                        show(&r[0], 1000)
                    ));
                }
            }
        }
        Ok(problems)
    }

    /// What the desktop's writes of segment `since` on made of a row of table `t` with content `row`
    /// (`None`: deleted).
    fn edited(&self, t: usize, row: Option<Row>, since: usize) -> Option<Row> {
        let mut now = row;
        let desktop = self
            .written
            .iter()
            .filter(|d| !d.phone && d.table == t && d.segment >= since);
        for d in desktop.filter(|d| d.old.is_some()) {
            if d.old == now {
                now = d.new.clone();
            }
        }
        now
    }

    /// What two runs of one interleaving are compared by, per table: both sides' rows (the cloud's with
    /// its owner), and the open conflicts (kind, key, both versions).
    pub(crate) async fn state(&self) -> Result<Vec<TableState>, String> {
        let mut state = Vec::new();
        for t in 0..self.schema.tables.len() {
            let mut open: Vec<String> = self
                .conflicts(t, 0)
                .await?
                .into_iter()
                .filter(|c| c.open)
                .map(|c| {
                    let key = c.key.map(|k| shown(&Some(k))).unwrap_or_default();
                    let (d, m) = (shown(&c.desktop_row), shown(&c.mobile_row));
                    format!("{:?} {key} desktop {d} mobile {m}", c.kind)
                })
                .collect();
            open.sort();
            state.push(TableState {
                desktop: self.rows(false, t, "").await?,
                cloud: self.rows(true, t, ", source::text").await?,
                open,
            });
        }
        Ok(state)
    }
}

#[derive(Debug, PartialEq)]
pub(crate) struct TableState {
    pub desktop: Vec<Row>,
    pub cloud: Vec<Row>,
    pub open: Vec<String>,
}

/// How two states of table `name` differ.
pub(crate) fn compare(name: &str, a: &TableState, b: &TableState) -> Option<String> {
    if a == b {
        return None;
    }
    let mut out = format!("{name}: the runs end differently");
    if a.desktop != b.desktop {
        out += &format!(
            "\n  desktop:\n{}",
            diff("as generated", &a.desktop, "by reconcile", &b.desktop)
        );
    }
    if a.cloud != b.cloud {
        out += &format!(
            "\n  cloud (rows, source):\n{}",
            diff("as generated", &a.cloud, "by reconcile", &b.cloud)
        );
    }
    if a.open != b.open {
        out += &format!(
            "\n  open conflicts as generated: {:#?}\n  by reconcile: {:#?}",
            a.open, b.open
        );
    }
    Some(out)
}
