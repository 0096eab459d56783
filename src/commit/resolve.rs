//! A person's choice for a conflict by concurrency (one the reverse direction recorded with both
//! versions): the chosen version becomes the desktop's row, and the cloud follows through the outbox,
//! as after any desktop change.
//!
//! One desktop transaction, in tandem's session under the reverse stream's lock (no phone change of the
//! table applies meanwhile):
//! 1. the desktop's row is found and locked: a desktop-key table's by its key; a cloud-key table's by
//!    its content, the version the conflict left there (the desktop's own version while the conflict is
//!    open, the policy's result once settled). A row that changed since is not guessed over: the choice
//!    is refused, saying what the desktop holds now;
//! 2. the chosen version is written over it (inserted when the desktop holds none, deleted when the
//!    chosen side deleted the row), each column from its recorded text;
//! 3. the row's key (or the scopes of both versions) goes to the outbox, and the forward worker is woken:
//!    the cloud takes the chosen version as the desktop's change (tandem's own writes are not captured);
//! 4. the conflict is marked resolved: the side kept, who chose, and the row both sides now hold.
//!
//! The same choice reverses a conflict a policy settled: the other side's version is written over the
//! policy's result.

use serde_json::Value;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::{CommitError, Direction, Job, Progress, StagingTables, Target};
use crate::change::Side;
use crate::db::{Context, DbError};
use crate::expr::{lit, q, same_key, text};
use crate::transform::{Kind, TableMapping};

/// A conflict recorded with both versions (see `tandem.conflicts`), as a choice needs it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Its number in the desktop's `tandem.conflicts`.
    pub id: i64,
    pub row_key: Option<Value>,
    /// Each side's version (None: that side deleted the row).
    pub desktop_row: Option<Value>,
    pub mobile_row: Option<Value>,
    /// What a policy gave both sides (None while open).
    pub outcome: Option<String>,
    /// The row the outcome gave both sides (None: deleted, or open).
    pub result: Option<Value>,
}

/// Which side's version a person keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Chosen {
    Desktop,
    Mobile,
}

impl Chosen {
    pub fn as_str(self) -> &'static str {
        match self {
            Chosen::Desktop => "desktop",
            Chosen::Mobile => "mobile",
        }
    }
}

/// Reads conflict `id` from the desktop's `tandem.conflicts` when it was recorded with both versions.
pub async fn recorded(desktop: &Client, id: i64) -> Result<Option<Recorded>, DbError> {
    let row = desktop
        .query_opt(
            "SELECT id, row_key, desktop_row, mobile_row, outcome, result FROM tandem.conflicts \
              WHERE id = $1 AND kind IS NOT NULL",
            &[&id],
        )
        .await
        .ctx(Side::Desktop, "reading the conflict")?;
    Ok(row.map(|r| Recorded {
        id: r.get(0),
        row_key: r.get(1),
        desktop_row: r.get(2),
        mobile_row: r.get(3),
        outcome: r.get(4),
        result: r.get(5),
    }))
}

/// Keeps `keep`'s version of conflict `c` of table `t` (see the module). `Ok(Err(why))` when nothing
/// was done: the row changed since, a later conflict of it is open, or the side is kept already.
pub async fn choose(
    desktop: &Client,
    t: &TableMapping,
    c: &Recorded,
    keep: Chosen,
    chooser: &str,
) -> anyhow::Result<Result<String, String>> {
    if c.outcome.as_deref() == Some(keep.as_str()) {
        return Ok(Err(format!(
            "already resolved, keeping the {} version",
            keep.as_str()
        )));
    }
    let chosen = match keep {
        Chosen::Desktop => &c.desktop_row,
        Chosen::Mobile => &c.mobile_row,
    };
    // What the desktop holds when nothing changed since the conflict.
    let expected = match c.outcome {
        Some(_) => &c.result,
        None => &c.desktop_row,
    };
    let mut target = Target::prepare(
        desktop,
        Direction::Reverse,
        StagingTables::declared(Side::Desktop, []),
    )
    .await?;
    let mut job = Choice {
        t,
        sql: ChoiceSql::build(t),
        c,
        chosen,
        expected,
        // An open conflict kept for the desktop: its row stays as it is now (a later desktop edit
        // of it included), and only travels.
        rewrite: !(keep == Chosen::Desktop && c.outcome.is_none()),
        keep,
        chooser,
    };
    match target.run(desktop, &mut job).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Ok(Err(why)),
        Err(e) => {
            // The session goes on with the next conflict: nothing of this one stays.
            let _ = target.rollback(desktop).await;
            return Err(e.into());
        }
    }
    let key = c
        .row_key
        .as_ref()
        .map(|k| k.to_string())
        .unwrap_or_default();
    let verb = match chosen {
        Some(_) => "is the row on both sides",
        None => "deletes the row on both sides",
    };
    Ok(Ok(format!(
        "the {} version of {} {key} {verb} (the cloud takes it from the outbox)",
        keep.as_str(),
        t.table.desktop
    )))
}

/// One choice, as the commit engine runs it (in the reverse direction's transaction: under its lock).
struct Choice<'a> {
    t: &'a TableMapping,
    sql: ChoiceSql,
    c: &'a Recorded,
    chosen: &'a Option<Value>,
    expected: &'a Option<Value>,
    rewrite: bool,
    keep: Chosen,
    chooser: &'a str,
}

impl Job for Choice<'_> {
    /// Why nothing was written, if so.
    type Done = Result<(), String>;

    async fn apply(&mut self, _: &mut Target, desktop: &Client) -> Result<Self::Done, CommitError> {
        let c = self.c;
        let versions = (self.chosen, self.expected);
        if let Err(why) = write(desktop, self.t, &self.sql, c, versions, self.rewrite).await? {
            return Ok(Err(why));
        }
        let what = format!("marking conflict r{} resolved", c.id);
        desktop
            .execute(
                "UPDATE tandem.conflicts SET resolved_at = now(), resolution = $2, resolved_by = $3, \
                        outcome = $2, result = $4 WHERE id = $1",
                &[&c.id, &self.keep.as_str(), &self.chooser, self.chosen],
            )
            .await
            .ctx(Side::Desktop, &what)?;
        Ok(Ok(()))
    }

    fn progress(&self, done: &Self::Done) -> Option<Progress<'_>> {
        done.is_ok().then_some(Progress::Nothing)
    }
}

/// Runs `update` (a change of mobile rows' ownership, for a conflict of the older shape) in a cloud
/// transaction the reverse stream skips: a row leaving `source = 'M'` is published as a DELETE, and
/// the message first in the transaction tells the stream it is tandem's own, not a phone's delete.
/// Returns the rows changed.
pub async fn own_cloud_update(
    cloud: &Client,
    update: &str,
    params: &[&(dyn ToSql + Sync)],
    what: &str,
) -> Result<u64, CommitError> {
    let mut target = Target::prepare(
        cloud,
        Direction::Forward,
        StagingTables::declared(Side::Cloud, []),
    )
    .await?;
    let mut job = OwnUpdate {
        update,
        params,
        what,
    };
    let done = target.run(cloud, &mut job).await;
    if done.is_err() && target.is_open() {
        // The session goes on: nothing of this write stays.
        let _ = target.rollback(cloud).await;
    }
    done
}

struct OwnUpdate<'a> {
    update: &'a str,
    params: &'a [&'a (dyn ToSql + Sync)],
    what: &'a str,
}

impl Job for OwnUpdate<'_> {
    /// The rows changed.
    type Done = u64;

    async fn apply(&mut self, _: &mut Target, cloud: &Client) -> Result<u64, CommitError> {
        let mark = format!(
            "SELECT pg_logical_emit_message(true, {}, 'conflicts resolve')",
            lit(crate::capture::logical::OWN_PREFIX)
        );
        cloud
            .batch_execute(&mark)
            .await
            .ctx(Side::Cloud, self.what)?;
        Ok(cloud
            .execute(self.update, self.params)
            .await
            .ctx(Side::Cloud, self.what)?)
    }

    fn progress(&self, _: &u64) -> Option<Progress<'_>> {
        Some(Progress::Nothing)
    }
}

/// Steps 1–3 of the module in the open transaction. `Ok(Err(why))`: the row is not as the conflict
/// left it (or a later conflict of it is open); nothing written.
async fn write(
    desktop: &Client,
    t: &TableMapping,
    sql: &ChoiceSql,
    c: &Recorded,
    (chosen, expected): (&Option<Value>, &Option<Value>),
    rewrite: bool,
) -> Result<Result<(), String>, DbError> {
    // Both sides' versions go to the outbox: a scope the phone moved the row from (or to) is the
    // desktop's to make equal too.
    let other = if chosen == &c.desktop_row {
        &c.mobile_row
    } else {
        &c.desktop_row
    };
    let table = &t.table.desktop;
    let what = format!("applying the chosen version to {table}");
    let later: Option<i64> = desktop
        .query_opt(
            "SELECT id FROM tandem.conflicts WHERE resolved_at IS NULL AND direction = 'reverse' \
              AND table_name = $1 AND row_key IS NOT DISTINCT FROM $2 AND id > $3 ORDER BY id LIMIT 1",
            &[&table.to_string(), &c.row_key, &c.id],
        )
        .await
        .ctx(Side::Desktop, &what)?
        .map(|r| r.get(0));
    if let Some(later) = later {
        return Ok(Err(format!(
            "a later conflict of the same row is open (r{later}): the row has changed again since; choose for that one"
        )));
    }
    if rewrite && let Err(why) = rewrite_row(desktop, t, sql, c, chosen, expected).await? {
        return Ok(Err(why));
    }
    desktop
        .execute(&sql.enqueue, &[expected, chosen, other])
        .await
        .ctx(Side::Desktop, &what)?;
    Ok(Ok(()))
}

/// Steps 1–2 of the module: the desktop's row found as `expected` and made `chosen`.
async fn rewrite_row(
    desktop: &Client,
    t: &TableMapping,
    sql: &ChoiceSql,
    c: &Recorded,
    chosen: &Option<Value>,
    expected: &Option<Value>,
) -> Result<Result<(), String>, DbError> {
    let table = &t.table.desktop;
    let what = format!("applying the chosen version to {table}");
    // The desktop's row as the conflict left it (its ctid), or why it is not.
    let found: Option<String> = match (&sql.find_by_key, expected) {
        (Some(find), _) => {
            let Some(values) = key_texts(c.row_key.as_ref(), t.key_columns()) else {
                return Ok(Err("its row key does not name every key column".into()));
            };
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![expected];
            params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
            let row = desktop
                .query_opt(find, &params)
                .await
                .ctx(Side::Desktop, &what)?;
            match (row, expected) {
                (None, None) => None,
                (Some(r), Some(_)) if r.get::<_, bool>(1) => Some(r.get(0)),
                (Some(r), _) => {
                    return Ok(Err(changed_since(r.get(2))));
                }
                (None, Some(_)) => {
                    return Ok(Err(changed_since(None)));
                }
            }
        }
        (None, None) => None,
        (None, Some(_)) => {
            let row = desktop
                .query_opt(&sql.find_by_content, &[expected])
                .await
                .ctx(Side::Desktop, &what)?;
            match row {
                Some(r) => Some(r.get(0)),
                None => {
                    return Ok(Err(format!(
                        "{}; a cloud-key table's rows are found by their content, and no row of {table} holds the version the conflict left",
                        changed_since(None)
                    )));
                }
            }
        }
    };
    let write = match (&found, chosen) {
        (Some(_), None) => Some(&sql.delete),
        (Some(_), Some(_)) => Some(&sql.update),
        (None, Some(_)) => Some(&sql.insert),
        (None, None) => None,
    };
    if let Some(write) = write {
        desktop
            .execute(write, &[chosen, &found])
            .await
            .ctx(Side::Desktop, &what)?;
    }
    Ok(Ok(()))
}

fn changed_since(now: Option<String>) -> String {
    match now {
        Some(now) => format!(
            "the desktop's row changed since the conflict (it holds {now} now): nothing was written; edit the row on the desktop, and that change travels to the cloud"
        ),
        None => "the desktop's row changed since the conflict (it holds no such row now): nothing was written; edit the row on the desktop, and that change travels to the cloud".into(),
    }
}

/// The key's values as text, in key order, from a conflict's `row_key` object (integers are numbers
/// there).
pub fn key_texts(
    row_key: Option<&Value>,
    key: &[crate::transform::MappedColumn],
) -> Option<Vec<String>> {
    let object = row_key?.as_object()?;
    key.iter()
        .map(|k| match object.get(&k.name)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        })
        .collect()
}

/// The statements of a choice for one table. Versions are parameters: JSON objects of each reverse
/// column's text, as `tandem.conflicts` records them.
#[derive(Debug)]
pub struct ChoiceSql {
    /// Desktop-key tables: the row of key `$2..` locked: its ctid, whether it is version `$1`, and
    /// its version now (as text).
    pub find_by_key: Option<String>,
    /// A row holding version `$1` locked: its ctid.
    pub find_by_content: String,
    /// Row `$2` (a ctid's text) deleted (`$1` unused).
    pub delete: String,
    /// Row `$2` made version `$1`.
    pub update: String,
    /// Version `$1` inserted (`$2` unused).
    pub insert: String,
    /// The keys (or scopes) of versions `$1`, `$2` and `$3` to the outbox (a table's changes of both
    /// sides' rows, and the forward worker woken.
    pub enqueue: String,
}

impl ChoiceSql {
    pub fn build(t: &TableMapping) -> Self {
        let target = t.table.desktop.quoted();
        let cols = &t.reverse_columns;
        let value = |v: &str, c: &crate::transform::MappedColumn| {
            c.desktop_value(&format!("{v} ->> {}", lit(&c.name)))
        };
        // Row `d` holds version `$1`, column by column as the desktop holds values.
        let holds = cols
            .iter()
            .map(|c| {
                format!(
                    "{} IS NOT DISTINCT FROM {}",
                    text(&format!("d.{}", q(&c.name))),
                    text(&c.desktop_shaped(&format!("$1::jsonb ->> {}", lit(&c.name))))
                )
            })
            .collect::<Vec<_>>();
        let holds = if holds.is_empty() {
            "true".to_string()
        } else {
            holds.join(" AND ")
        };
        let image = crate::expr::json_object(
            &cols
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        crate::expr::output_text(&format!("d.{}", q(&c.name))),
                    )
                })
                .collect::<Vec<_>>(),
        );
        let find_by_key = match &t.kind {
            Kind::Key(key) => {
                let is_key = key
                    .iter()
                    .enumerate()
                    .map(|(n, k)| {
                        same_key(
                            &format!("d.{}", q(&k.name)),
                            &format!("CAST(${}::text AS {})", n + 2, k.desktop.base),
                            &k.desktop,
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" AND ");
                Some(format!(
                    "SELECT d.ctid::text, ($1::jsonb IS NOT NULL AND {holds}), ({image})::text FROM {target} d \
                      WHERE {is_key} FOR UPDATE"
                ))
            }
            Kind::Scoped { .. } => None,
        };
        let find_by_content =
            format!("SELECT d.ctid::text FROM {target} d WHERE {holds} LIMIT 1 FOR UPDATE");
        let sets = cols
            .iter()
            .map(|c| format!("{} = {}", q(&c.name), value("$1::jsonb", c)))
            .collect::<Vec<_>>();
        let update = if sets.is_empty() {
            "SELECT $1::jsonb, $2::text".to_string()
        } else {
            format!(
                "UPDATE {target} SET {} WHERE ctid = $2::text::tid AND $1::jsonb IS NOT NULL",
                sets.join(", ")
            )
        };
        let names = cols.iter().map(|c| q(&c.name)).collect::<Vec<_>>();
        let values = cols
            .iter()
            .map(|c| value("$1::jsonb", c))
            .collect::<Vec<_>>();
        let insert = format!(
            "INSERT INTO {target} ({}) SELECT {} WHERE $1::jsonb IS NOT NULL AND $2::text IS NULL",
            names.join(", "),
            values.join(", ")
        );
        let delete =
            format!("DELETE FROM {target} WHERE ctid = $2::text::tid AND $1::jsonb IS NULL");
        let key_of = |v: &str| {
            let texts = t
                .key_columns()
                .iter()
                .map(|k| text(&value(v, k)))
                .collect::<Vec<_>>();
            format!("ARRAY[{}]::text[]", texts.join(", "))
        };
        let enqueue = format!(
            "WITH queued AS (INSERT INTO tandem.outbox (table_schema, table_name, op, row_key) \
                             SELECT DISTINCT {schema}, {name}, 'U'::\"char\", k FROM \
                               (SELECT {a} AS k WHERE $1::jsonb IS NOT NULL \
                                UNION ALL SELECT {b} WHERE $2::jsonb IS NOT NULL \
                                UNION ALL SELECT {c} WHERE $3::jsonb IS NOT NULL) keys RETURNING 1) \
             SELECT pg_notify('tandem_outbox', '') FROM (SELECT 1 FROM queued LIMIT 1) q",
            schema = lit(&t.table.desktop.schema),
            name = lit(&t.table.desktop.name),
            a = key_of("$1::jsonb"),
            b = key_of("$2::jsonb"),
            c = key_of("$3::jsonb"),
        );
        ChoiceSql {
            find_by_key,
            find_by_content,
            delete,
            update,
            insert,
            enqueue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::testing::{odd_keyed, odd_names_quoted, odd_scoped};

    fn all(sql: &ChoiceSql) -> Vec<&str> {
        let mut out = vec![
            sql.find_by_content.as_str(),
            &sql.delete,
            &sql.update,
            &sql.insert,
            &sql.enqueue,
        ];
        out.extend(sql.find_by_key.as_deref());
        out
    }

    #[test]
    fn a_desktop_key_tables_row_is_found_by_its_key_and_every_name_is_quoted() {
        let sql = ChoiceSql::build(&odd_keyed());
        let find = sql
            .find_by_key
            .as_deref()
            .expect("a keyed table finds by key");
        assert!(
            find.contains("FOR UPDATE") && find.contains("CAST($2::text AS"),
            "{find}"
        );
        for s in all(&sql) {
            assert!(odd_names_quoted(s), "{s}");
        }
    }

    #[test]
    fn a_cloud_key_tables_row_is_found_by_content_compared_as_text() {
        let sql = ChoiceSql::build(&odd_scoped());
        assert!(sql.find_by_key.is_none());
        // json has no `=`: every column is compared by its text, NULLs alike.
        assert!(
            !sql.find_by_content.contains(" = "),
            "{}",
            sql.find_by_content
        );
        assert!(
            sql.find_by_content.contains("IS NOT DISTINCT FROM"),
            "{}",
            sql.find_by_content
        );
        // The scopes of all three versions go to the outbox, once each.
        assert_eq!(sql.enqueue.matches("WHERE $").count(), 3, "{}", sql.enqueue);
        assert!(sql.enqueue.contains("SELECT DISTINCT"), "{}", sql.enqueue);
        for s in all(&sql) {
            assert!(odd_names_quoted(s), "{s}");
        }
    }
}
