//! The PowerCA sample: the seeds' schema for both sides and a generator of a seeds-sized data set, as
//! SQL embedded in the binary so `tandem seed` and `tandem demo` work from anywhere.
//!
//! The schema facts live in the SQL files (`sql/powerca/`), not here: this module only runs them. The
//! generator is deterministic: the same scale gives the same rows on every run.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::change::Side;
use crate::config::Config;
use crate::db::{Context, DbError};

pub const DESKTOP_SCHEMA: &str = include_str!("../sql/powerca/desktop.sql");
pub const CLOUD_SCHEMA: &str = include_str!("../sql/powerca/cloud.sql");
pub const SEED: &str = include_str!("../sql/powerca/seed.sql");
pub const CONFIG: &str = include_str!("../config/powerca.toml");

/// Creates the sample tables: `DESKTOP_SCHEMA` on the desktop, `CLOUD_SCHEMA` in the cloud.
pub async fn create_schemas(desktop: &Client, cloud: &Client) -> Result<(), DbError> {
    desktop.batch_execute(DESKTOP_SCHEMA).await.ctx(
        Side::Desktop,
        "creating the sample desktop schema (sql/powerca/desktop.sql)",
    )?;
    cloud.batch_execute(CLOUD_SCHEMA).await.ctx(
        Side::Cloud,
        "creating the sample cloud schema (sql/powerca/cloud.sql)",
    )?;
    Ok(())
}

/// Row counts of each configured desktop table after seeding, in config order.
#[derive(Debug)]
pub struct SeedReport {
    pub counts: Vec<(String, i64)>,
    pub elapsed: Duration,
}

impl SeedReport {
    pub fn total(&self) -> i64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }
}

/// Fills the (empty) sample desktop tables; `scale` 1.0 gives the seeds' ~92,000 rows.
pub async fn seed(
    desktop: &mut Client,
    config: &Config,
    scale: f64,
) -> Result<SeedReport, DbError> {
    let started = Instant::now();
    let tx = desktop
        .transaction()
        .await
        .ctx(Side::Desktop, "beginning the seed transaction")?;
    tx.execute(
        "SELECT set_config('tandem.seed_scale', $1, true)",
        &[&scale.to_string()],
    )
    .await
    .ctx(Side::Desktop, "setting tandem.seed_scale")?;
    tx.batch_execute(SEED).await.ctx(
        Side::Desktop,
        "generating the sample data (sql/powerca/seed.sql)",
    )?;
    tx.commit()
        .await
        .ctx(Side::Desktop, "committing the sample data")?;
    let elapsed = started.elapsed();
    let mut counts = Vec::new();
    for t in &config.tables {
        let n: i64 = desktop
            .query_one(
                &format!("SELECT count(*) FROM {}", t.table.desktop.quoted()),
                &[],
            )
            .await
            .ctx(Side::Desktop, format!("counting {}", t.table.desktop))?
            .get(0);
        counts.push((t.table.desktop.to_string(), n));
    }
    Ok(SeedReport { counts, elapsed })
}
