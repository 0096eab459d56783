//! The careful path's bisection: a statement over a range of staging rows runs under a savepoint, and a
//! range the target refuses (a foreign key, NOT NULL, a value too long, a check) is halved until the
//! refused rows stand alone; each becomes a dead letter (table, key, row, SQLSTATE, message, batch) and
//! the rest commits. A dead letter already open for the same key is updated (attempts + 1) rather than
//! repeated.

use tokio_postgres::{Client, Statement};

use crate::change::Side;
use crate::db::{self, Context, DbError, ErrorKind};

/// What a dead letter needs besides the failing row.
#[derive(Debug, Clone)]
pub struct DeadLetterSite<'a> {
    pub side: Side,
    pub direction: &'a str,
    pub table_name: &'a str,
    pub batch: &'a str,
    /// `SELECT row_key_jsonb, row_image_jsonb, old_image_jsonb FROM .. WHERE _n = $1`.
    pub image_sql: &'a str,
    /// The staging table whose `_n` the statement ranges over.
    pub numbered_table: &'a str,
}

/// Rows affected and dead letters written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RangeOutcome {
    pub affected: u64,
    pub dead_letters: u64,
}

/// Runs `sql` ($1, $2: the `_n` range) over all rows, isolating the rows the target refuses.
pub async fn run_ranged(
    tx: &Client,
    what: &str,
    sql: &Statement,
    site: &DeadLetterSite<'_>,
) -> Result<RangeOutcome, DbError> {
    let side = site.side;
    let context = || format!("{what} on {}", site.table_name);
    let bounds = tx
        .query_one(
            &format!("SELECT min(_n), max(_n) FROM {}", site.numbered_table),
            &[],
        )
        .await
        .ctx(side, format!("{}: reading the staging range", context()))?;
    let (Some(lo), Some(hi)) = (
        bounds.get::<_, Option<i64>>(0),
        bounds.get::<_, Option<i64>>(1),
    ) else {
        return Ok(RangeOutcome::default());
    };
    let mut outcome = RangeOutcome::default();
    let mut pending = vec![(lo, hi)];
    while let Some((lo, hi)) = pending.pop() {
        tx.batch_execute("SAVEPOINT tandem_try")
            .await
            .ctx(side, "SAVEPOINT")?;
        match tx.execute(sql, &[&lo, &hi]).await {
            Ok(n) => {
                outcome.affected += n;
                tx.batch_execute("RELEASE SAVEPOINT tandem_try")
                    .await
                    .ctx(side, "RELEASE SAVEPOINT")?;
            }
            Err(e) if db::classify(e.code()) == ErrorKind::BadRow => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT tandem_try; RELEASE SAVEPOINT tandem_try")
                    .await
                    .ctx(side, "ROLLBACK TO SAVEPOINT")?;
                if lo == hi {
                    write_dead_letter(tx, site, lo, &e).await?;
                    outcome.dead_letters += 1;
                } else {
                    let mid = lo + (hi - lo) / 2;
                    pending.push((mid + 1, hi));
                    pending.push((lo, mid));
                }
            }
            Err(e) => return Err(e).ctx(side, context()),
        }
    }
    Ok(outcome)
}

/// Records staging row `n` as refused by the target with `error`.
pub async fn write_dead_letter(
    tx: &Client,
    site: &DeadLetterSite<'_>,
    n: i64,
    error: &tokio_postgres::Error,
) -> Result<(), DbError> {
    let code = error.code().map_or("XX000", |c| c.code()).to_string();
    let message = db::describe(error);
    record_dead_letter(tx, site, n, &code, &message).await
}

/// Records staging row `n` as a dead letter with the given SQLSTATE and message.
pub async fn record_dead_letter(
    tx: &Client,
    site: &DeadLetterSite<'_>,
    n: i64,
    sqlstate: &str,
    message: &str,
) -> Result<(), DbError> {
    let sql = format!(
        "WITH img(k, r, o) AS ({image}), \
         upd AS (UPDATE tandem.dead_letters d SET attempts = d.attempts + 1, failed_at = now(), sqlstate = $2, \
                 message = $3, batch = $4, row_image = img.r, old_image = coalesce(d.old_image, img.o) \
                 FROM img WHERE d.direction = $6 AND d.table_name = $5 AND d.resolved_at IS NULL AND d.row_key = img.k \
                 RETURNING d.id) \
         INSERT INTO tandem.dead_letters (direction, table_name, row_key, row_image, old_image, sqlstate, message, batch) \
         SELECT $6, $5, img.k, img.r, img.o, $2, $3, $4 FROM img WHERE NOT EXISTS (SELECT 1 FROM upd)",
        image = site.image_sql
    );
    tx.execute(
        &sql,
        &[
            &n,
            &sqlstate,
            &message,
            &site.batch,
            &site.table_name,
            &site.direction,
        ],
    )
    .await
    .ctx(
        site.side,
        format!("writing a dead letter for {}", site.table_name),
    )?;
    tracing::warn!(
        direction = site.direction,
        table = site.table_name,
        sqlstate,
        %message,
        "row refused by the {}; kept in tandem.dead_letters",
        site.side
    );
    Ok(())
}
