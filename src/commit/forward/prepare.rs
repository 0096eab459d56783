//! What decides a forward batch's plan, read from the cloud before it runs: horizons set, TRUNCATEs
//! widened, staging analyzed, the batch's cloud rows locked, unreceived keys held back, keys the
//! desktop holds twice set aside as dead letters (see [`Forward::prepare`]).

use std::collections::BTreeSet;

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::capture::logical::Own;
use crate::change::{Received, Side};
use crate::db::{self, Context, DbError};

use super::super::isolate::{self, DeadLetterSite};
use super::super::{Batch, CommitError, LOCK_TIMEOUT, LOCK_TIMEOUT_RESET, Target};
use super::Forward;

/// Sets a transaction-local setting ($1, $2): a table's horizon for its statements.
const SET_HORIZON: &str = "SELECT pg_catalog.set_config($1, $2, true)";

/// What shapes a batch's plan.
#[derive(Clone, Copy)]
pub(super) struct Shape<'a> {
    pub(super) order: &'a [usize],
    pub(super) truncated: &'a BTreeSet<usize>,
    pub(super) big: &'a BTreeSet<usize>,
    pub(super) horizons: &'a [Received],
}

/// What [`Forward::prepare`] found.
pub(super) struct Prepared {
    pub(super) dead_letters: u64,
    pub(super) held: Vec<(usize, Vec<Vec<Option<String>>>)>,
    pub(super) wait_for: i64,
}

impl Forward {
    /// What decides the plan, in one round trip: each table's horizon set for its statements; a
    /// TRUNCATE adds every key of its table the desktop may change to the batch's keys, before
    /// anything reads them; the `big` tables' staging is analyzed; the cloud rows of the batch's keys
    /// are locked against phones' changes, then keys whose phone change the desktop has not received
    /// are held back; keys the desktop holds twice become dead letters and leave the
    /// batch; scopes holding NULL need the plan that matches NULL. Last, the transaction says it is
    /// tandem's own in the cloud's WAL (the reverse stream skips it), with its snapshot (the desktop's
    /// next horizon, once the stream passes it). A second round trip fills cloud-key tables' match `P`
    /// and holds back the scopes it finds a phone's unreceived row in.
    pub(super) async fn prepare(
        &self,
        target: &mut Target,
        cloud: &Client,
        shape: Shape<'_>,
        batch: Batch<'_>,
    ) -> Result<Prepared, CommitError> {
        let Shape {
            order,
            truncated,
            big,
            horizons,
        } = shape;
        let names = batch.names;
        /// What a statement's rows are.
        #[derive(PartialEq)]
        enum Reads {
            Nothing,
            Check,
            Held,
            /// The transaction's id (the emitted message's).
            Own,
        }
        /// One statement of the round trip: its table, what it does, its parameters, its rows.
        struct Read<'a> {
            table: usize,
            sql: &'a str,
            what: &'a str,
            params: Vec<&'a (dyn ToSql + Sync)>,
            reads: Reads,
        }
        let read = |table, sql, what, reads| Read {
            table,
            sql,
            what,
            params: Vec::new(),
            reads,
        };
        let settings: Vec<(String, String)> = order
            .iter()
            .map(|&i| {
                let horizon = horizons.get(i).and_then(|r| r.horizon.as_ref());
                (
                    crate::config::owner::horizon_setting(i),
                    horizon.map(|h| h.as_str().to_string()).unwrap_or_default(),
                )
            })
            .collect();
        let mut statements: Vec<Read> = Vec::new();
        for (&i, (name, value)) in order.iter().zip(&settings) {
            statements.push(Read {
                params: vec![name, value],
                ..read(i, SET_HORIZON, "setting the horizon", Reads::Nothing)
            });
        }
        for &i in order.iter().filter(|i| truncated.contains(i)) {
            let sql = &self.sql[i].truncate_keys;
            statements.push(read(i, sql, "applying a TRUNCATE", Reads::Nothing));
        }
        for &i in order.iter().filter(|i| big.contains(i)) {
            let sql = &self.sql[i].analyze_staged;
            statements.push(read(i, sql, "analyzing the staging tables", Reads::Nothing));
        }
        // The rows the holds read are locked first, giving way to phones' transactions (see
        // `ForwardSql::lock`).
        let locking: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| self.sql[i].lock.is_some())
            .collect();
        if let Some(&first) = locking.first() {
            statements.push(read(
                first,
                LOCK_TIMEOUT,
                "setting the lock timeout",
                Reads::Nothing,
            ));
            for &i in &locking {
                let lock = self.sql[i].lock.as_ref().expect("filtered");
                let lock = lock.of(big.contains(&i));
                statements.push(read(
                    i,
                    lock,
                    "locking the cloud rows of the batch's keys (a phone's transaction holds one: \
                     tandem gives way, and applies the batch again once it ends)",
                    Reads::Nothing,
                ));
            }
            statements.push(read(
                first,
                LOCK_TIMEOUT_RESET,
                "setting the lock timeout",
                Reads::Nothing,
            ));
        }
        for &i in order {
            if let Some(hold) = &self.sql[i].hold {
                let hold = hold.of(big.contains(&i));
                statements.push(read(i, hold, "holding back unreceived keys", Reads::Held));
            }
        }
        for &i in order {
            let sql = &self.sql[i];
            if let Some(check) = sql.duplicate_rows.as_ref().or(sql.keys_have_null.as_ref()) {
                statements.push(read(i, check, "reading the staged keys", Reads::Check));
            }
        }
        let own = Own::emit_when_sql();
        let quiet = false;
        let due = self.horizon_due();
        if let Some(&first) = order.first() {
            statements.push(Read {
                params: vec![&quiet, &due],
                ..read(
                    first,
                    &own,
                    "marking the transaction as tandem's",
                    Reads::Own,
                )
            });
        }
        let mut prepared = Vec::with_capacity(statements.len());
        for s in &statements {
            let statement = target
                .statements
                .get(cloud, s.sql)
                .await
                .map_err(|e| CommitError::of_table(e, s.table))?;
            prepared.push(statement);
        }
        let results = db::pipelined(
            prepared
                .iter()
                .zip(&statements)
                .map(|(p, s)| cloud.query(p, &s.params))
                .collect(),
        )
        .await;
        let mut checks = Vec::new();
        let mut held = Vec::new();
        let mut wait_for = 0;
        // The first error is the cause; the statements after it only say the transaction is aborted.
        for (s, result) in statements.iter().zip(results) {
            let i = s.table;
            let rows = result
                .ctx(Side::Cloud, format!("{} of {}", s.what, names[i]))
                .map_err(|e| CommitError::of_table(e, i))?;
            match s.reads {
                Reads::Check => checks.push((i, rows)),
                Reads::Held if !rows.is_empty() => held.push((
                    i,
                    rows.iter()
                        .map(|r| r.get::<_, Vec<Option<String>>>(0))
                        .collect::<Vec<_>>(),
                )),
                Reads::Own => {
                    wait_for = rows[0].get(0);
                    if rows[0].get::<_, Option<String>>(1).is_some() {
                        self.horizon_sent();
                    }
                }
                _ => {}
            }
        }
        let mut dead_letters = 0;
        let mut null_scopes = BTreeSet::new();
        for (i, rows) in &checks {
            if self.sql[*i].duplicate_rows.is_some() {
                if !rows.is_empty() {
                    dead_letters += self
                        .set_aside_duplicates(cloud, *i, batch, rows)
                        .await
                        .map_err(|e| CommitError::of_table(e, *i))?;
                }
            } else if rows[0].get::<_, bool>(0) {
                null_scopes.insert(*i);
            }
        }
        // Cloud-key tables: `P` is filled, and the scopes it finds a phone's unreceived row in are
        // held on its view (see `sql::scoped::late_hold`), in one round trip.
        let mut planned: Vec<(usize, &str, &str, Reads, Option<&String>)> = Vec::new();
        for &i in order {
            let sql = &self.sql[i];
            let Some((without_null, with_null)) = &sql.plan else {
                continue;
            };
            let fill = if null_scopes.contains(&i) {
                with_null
            } else {
                without_null
            };
            planned.push((i, fill, "matching the scope's rows", Reads::Nothing, None));
            let kept = horizons.get(i).and_then(|r| r.kept.as_ref());
            if let (Some(keep), Some(kept)) = (&sql.keep, kept) {
                let what = "leaving alone the rows open conflicts keep";
                planned.push((i, keep, what, Reads::Nothing, Some(kept)));
            }
            if let Some(late) = &sql.late_hold {
                planned.push((i, late, "holding back unreceived scopes", Reads::Held, None));
            }
        }
        if !planned.is_empty() {
            let mut statements = Vec::with_capacity(planned.len());
            for &(i, sql, ..) in &planned {
                let statement = target
                    .statements
                    .get(cloud, sql)
                    .await
                    .map_err(|e| CommitError::of_table(e, i))?;
                statements.push(statement);
            }
            let params: Vec<Vec<&(dyn ToSql + Sync)>> = planned
                .iter()
                .map(|(.., kept)| kept.iter().map(|k| *k as &(dyn ToSql + Sync)).collect())
                .collect();
            let results = db::pipelined(
                statements
                    .iter()
                    .zip(&params)
                    .map(|(p, params)| cloud.query(p, params))
                    .collect(),
            )
            .await;
            for ((i, _, what, reads, _), result) in planned.iter().zip(results) {
                let rows = result
                    .ctx(Side::Cloud, format!("{what} of {}", names[*i]))
                    .map_err(|e| CommitError::of_table(e, *i))?;
                if *reads == Reads::Held && !rows.is_empty() {
                    let keys = rows.iter().map(|r| r.get::<_, Vec<Option<String>>>(0));
                    match held.iter_mut().find(|(t, _)| t == i) {
                        Some((_, already)) => already.extend(keys),
                        None => held.push((*i, keys.collect())),
                    }
                }
            }
        }
        // Keys held back wait for the stream to pass this transaction: the reverse worker records
        // that at once when told so.
        if !held.is_empty() {
            let wanted = true;
            let statement = target.statements.get(cloud, &Own::emit_sql()).await?;
            wait_for = cloud
                .query_one(&statement, &[&wanted])
                .await
                .ctx(Side::Cloud, "marking the transaction as tandem's")?
                .get(0);
        }
        Ok(Prepared {
            dead_letters,
            held,
            wait_for,
        })
    }

    /// Keys the desktop holds more than once: one dead letter each, and out of the batch.
    pub(super) async fn set_aside_duplicates(
        &self,
        cloud: &Client,
        i: usize,
        batch: Batch<'_>,
        duplicates: &[tokio_postgres::Row],
    ) -> Result<u64, DbError> {
        let sql = &self.sql[i];
        let name = &batch.names[i];
        let site = DeadLetterSite {
            side: Side::Cloud,
            direction: super::super::Direction::Forward.as_str(),
            table_name: name,
            batch: batch.id,
            image_sql: sql.dead_letter_image(super::sql::Numbered::Rows),
            numbered_table: &sql.rows,
        };
        let mut all: Vec<i64> = Vec::new();
        for row in duplicates {
            let (same_key, count): (Vec<i64>, i64) = (row.get(0), row.get(1));
            let message = format!(
                "the desktop holds {count} rows with this key, the cloud can hold one: remove the duplicates on \
                 the desktop (the cloud row is left as it was)"
            );
            isolate::record_dead_letter(cloud, &site, same_key[0], "21000", &message).await?;
            all.extend(same_key);
        }
        for statement in sql.drop_duplicates.iter().flatten() {
            cloud.execute(statement, &[&all]).await.ctx(
                Side::Cloud,
                format!("setting aside duplicate keys of {name}"),
            )?;
        }
        Ok(duplicates.len() as u64)
    }
}
