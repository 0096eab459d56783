//! The configuration: which tables travel, how they map, where the two databases are.
//!
//! Everything table-specific lives here, never in code. Loading is two steps: the TOML is read, `${VAR}`
//! references are expanded and `TANDEM_*_URL` overrides applied, then the model is checked for what can
//! be checked without a database (one of `key` / `cloud_key`, lookups naming configured tables, ...).
//! Checks against the live schemas are in [`crate::catalog::validate`]. Every problem names the table,
//! the setting and the fix, and all problems are reported at once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod expand;
mod operator;
pub mod owner;
mod raw_table;
mod secret;

use expand::expand_env;
pub use operator::{MetricsConfig, StatusConfig};
use raw_table::RawTable;
pub use secret::{ConnUrl, redact_url};

use crate::change::{QualifiedName, TableRef};

/// The cloud column that says who owns a row: `'D'` desktop (or NULL), `'M'` mobile. Part of the
/// ownership model every synced cloud table follows, like the two timestamps below; statements spell
/// it through [`owner`].
pub const SOURCE_COLUMN: &str = "source";
/// Set once, when tandem inserts a row into the cloud (optional on a cloud table).
pub const CREATED_AT_COLUMN: &str = "created_at";
/// Set when tandem changes a cloud row (optional on a cloud table).
pub const UPDATED_AT_COLUMN: &str = "updated_at";

/// Environment variable that replaces `[desktop] url`.
pub const DESKTOP_URL_ENV: &str = "TANDEM_DESKTOP_URL";
/// Environment variable that replaces `[cloud] url`.
pub const CLOUD_URL_ENV: &str = "TANDEM_CLOUD_URL";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error(
        "config {origin}: {at} uses ${{{var}}}, which is not set in the environment; export {var} or write the value into the file"
    )]
    UnsetVariable {
        origin: String,
        at: String,
        var: String,
    },
    #[error("config {origin}: {at}: {message}")]
    BadReference {
        origin: String,
        at: String,
        message: String,
    },
    #[error("config {origin} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        origin: String,
        problems: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from (a path, or a label for configs built in memory), for messages.
    pub origin: String,
    pub desktop: DesktopConfig,
    pub cloud: CloudConfig,
    pub sync: SyncConfig,
    pub reconcile: ReconcileConfig,
    pub metrics: MetricsConfig,
    pub status: StatusConfig,
    pub conflicts: ConflictsConfig,
    pub tables: Vec<TableConfig>,
}

/// The reconcile `tandem run` runs by itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// Every day at this local time `(hour, minute)`; never when absent.
    pub at: Option<(u8, u8)>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconcile {
    at: Option<String>,
}

/// `HH:MM` (24-hour clock).
fn parse_time_of_day(text: &str) -> Option<(u8, u8)> {
    let (h, m) = text.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u8, u8) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

#[derive(Debug, Clone)]
pub struct DesktopConfig {
    pub url: ConnUrl,
}

#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub url: ConnUrl,
    /// The logical replication slot on the cloud (one per installation).
    pub slot: String,
    /// The publication over the synced cloud tables.
    pub publication: String,
}

/// Micro-batch bounds. tandem never holds a change back to fill a batch: an idle worker sends a lone
/// change at once, and batches grow only while it is busy, up to `batch_max_rows` outbox rows. A batch
/// that stages more than `batch_max_bytes` or runs longer than `batch_max_wait_ms` halves the next one,
/// so a change arriving in a flood waits about that long at most behind the batch in flight.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    pub batch_max_rows: usize,
    pub batch_max_bytes: usize,
    pub batch_max_wait_ms: u64,
    /// How often `run` checks both schemas again: parked tables resume, changed shapes are picked up.
    pub schema_recheck_ms: u64,
    /// How long a direction that cannot run (its slot or publication lost, a side not set up) waits
    /// before it tries again; the other direction goes on meanwhile.
    pub broken_retry_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch_max_rows: 50_000,
            batch_max_bytes: 32 * 1024 * 1024,
            batch_max_wait_ms: 500,
            schema_recheck_ms: 30_000,
            broken_retry_ms: 60_000,
        }
    }
}

/// How a true conflict (a desktop change and a phone change of one row, neither made after seeing
/// the other) is settled. Sequential edits are never conflicts: whichever side changes a row after
/// receiving the other's last version simply wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Each column changed on one side only takes that side's value; a column both changed takes the
    /// later writer's (the desktop transaction's time against the phone's commit in the cloud). A
    /// delete against an edit keeps the edit. Two rows created under one key: the later writer's
    /// values where they differ.
    #[default]
    Latest,
    /// The desktop's version wins (a desktop delete deletes).
    Desktop,
    /// The phone's version wins (a phone's delete deletes).
    Mobile,
    /// Nothing is applied: the conflict stays open until `tandem conflicts resolve`.
    Manual,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Latest => "latest",
            Policy::Desktop => "desktop",
            Policy::Mobile => "mobile",
            Policy::Manual => "manual",
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[conflicts]`: the project-wide default policy (a table's `policy` overrides it).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConflictsConfig {
    pub policy: Policy,
}

/// How rows of a table are identified across the two sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The desktop primary key is the identity on both sides: commit is an UPSERT keyed on it.
    Key(Vec<String>),
    /// The desktop has no stable key; the cloud adds the serial `column`. Rows are replaced per `scope`.
    CloudKey { column: String, scope: Vec<String> },
}

impl Identity {
    /// The columns the capture trigger records: the key, or the scope.
    pub fn capture_columns(&self) -> &[String] {
        match self {
            Identity::Key(key) => key,
            Identity::CloudKey { scope, .. } => scope,
        }
    }
}

/// A cloud column whose value is read from another configured table (jobtasks.client_id from jobshead
/// on job_id).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    /// The cloud column to fill, and the column of `from` it is read from.
    pub column: String,
    /// The configured table to read it from (its desktop or cloud name, as written).
    pub from: String,
    /// The column joining the two; it must be `from`'s key.
    pub on: String,
}

#[derive(Debug, Clone)]
pub struct TableConfig {
    pub table: TableRef,
    pub identity: Identity,
    /// Desktop columns that never go to the cloud.
    pub skip_to_cloud: Vec<String>,
    /// Cloud columns that never go to the desktop (`source`, `created_at`, `updated_at` never do anyway).
    pub skip_to_desktop: Vec<String>,
    pub lookups: Vec<Lookup>,
    /// Whether mobile-owned rows of this table travel back to the desktop.
    pub reverse: bool,
    /// How its true conflicts are settled (the table's `policy`, else `[conflicts] policy`).
    pub policy: Policy,
}

impl Config {
    /// Reads, expands and checks a config file, with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&path.display().to_string(), &text, &|var| {
            std::env::var(var).ok()
        })
    }

    /// Parses config text; `env` answers `${VAR}` references and the `TANDEM_*_URL` overrides.
    pub fn parse(
        origin: &str,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        expand_env(&mut value, "", origin, env)?;
        let raw: RawConfig = value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
        Config::from_raw(origin, raw, env)
    }

    fn from_raw(
        origin: &str,
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let override_or = |var: &str, from_file: Option<String>, section: &str| {
            match env(var).filter(|v| !v.is_empty()).or(from_file) {
                Some(url) if !url.trim().is_empty() => Some(ConnUrl::new(url)),
                _ => None,
            }
            .ok_or_else(|| {
                format!("[{section}] url is missing: set it in the file or export {var}")
            })
        };
        let desktop_url = override_or(DESKTOP_URL_ENV, raw.desktop.url, "desktop");
        let cloud_url = override_or(CLOUD_URL_ENV, raw.cloud.url, "cloud");
        let (desktop_url, cloud_url) = match (desktop_url, cloud_url) {
            (Ok(d), Ok(c)) => (Some(d), Some(c)),
            (d, c) => {
                problems.extend(d.err());
                problems.extend(c.err());
                (None, None)
            }
        };
        check_slot_name(&raw.cloud.slot, &mut problems);
        if raw.cloud.publication.is_empty() || raw.cloud.publication.len() > 63 {
            problems.push(format!(
                "[cloud] publication = {:?}: a publication name must be 1 to 63 characters",
                raw.cloud.publication
            ));
        }
        if raw.sync.batch_max_rows == 0 || raw.sync.batch_max_bytes == 0 {
            problems.push("[sync] batch_max_rows and batch_max_bytes must be at least 1".into());
        }
        if raw.tables.is_empty() {
            problems.push(
                "no [[tables]] configured: add one [[tables]] entry per table to replicate".into(),
            );
        }

        let tables: Vec<TableConfig> = raw
            .tables
            .into_iter()
            .enumerate()
            .filter_map(|(i, t)| t.resolve(i, raw.conflicts.policy, &mut problems))
            .collect();
        check_tables(&tables, &mut problems);
        let at = match raw.reconcile.at.as_deref() {
            None => None,
            Some(text) => {
                let at = parse_time_of_day(text);
                if at.is_none() {
                    problems.push(format!(
                        "[reconcile] at = {text:?} is not a time of day; write it as \"HH:MM\" (24-hour, local time), e.g. \"02:00\", or remove it to schedule no reconcile"
                    ));
                }
                at
            }
        };

        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                origin: origin.to_string(),
                problems,
            });
        }
        Ok(Config {
            origin: origin.to_string(),
            desktop: DesktopConfig {
                url: desktop_url.expect("checked above"),
            },
            cloud: CloudConfig {
                url: cloud_url.expect("checked above"),
                slot: raw.cloud.slot,
                publication: raw.cloud.publication,
            },
            sync: raw.sync,
            reconcile: ReconcileConfig { at },
            metrics: raw.metrics,
            status: raw.status,
            conflicts: raw.conflicts,
            tables,
        })
    }

    /// The configured table a lookup's `from` names (by desktop or cloud name).
    pub fn lookup_source(&self, lookup: &Lookup) -> Option<&TableConfig> {
        find_table(&self.tables, &lookup.from)
    }

    /// The tables whose mobile-owned rows travel back (the publication's tables).
    pub fn reverse_tables(&self) -> impl Iterator<Item = &TableConfig> {
        self.tables.iter().filter(|t| t.reverse)
    }
}

fn find_table<'a>(tables: &'a [TableConfig], name: &str) -> Option<&'a TableConfig> {
    let name: QualifiedName = name.parse().ok()?;
    tables
        .iter()
        .find(|t| t.table.desktop == name)
        .or_else(|| tables.iter().find(|t| t.table.cloud == name))
}

/// Slot names are restricted by PostgreSQL to lower-case letters, digits and underscores.
fn check_slot_name(slot: &str, problems: &mut Vec<String>) {
    let ok = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        problems.push(format!(
            "[cloud] slot = {slot:?}: a replication slot name may hold only lower-case letters, digits and \
             underscores (at most 63)"
        ));
    }
}

/// Rules across tables: unique names, lookups that resolve.
fn check_tables(tables: &[TableConfig], problems: &mut Vec<String>) {
    let mut desktop_seen = HashSet::new();
    let mut cloud_seen = HashSet::new();
    for t in tables {
        if !desktop_seen.insert(&t.table.desktop) {
            problems.push(format!(
                "table {}: listed twice as a desktop table; keep one [[tables]] entry for it",
                t.table.desktop
            ));
        }
        if !cloud_seen.insert(&t.table.cloud) {
            problems.push(format!(
                "table {}: cloud table {} is the target of two [[tables]] entries; each cloud table may have one",
                t.table.desktop, t.table.cloud
            ));
        }
    }
    for t in tables {
        for lookup in &t.lookups {
            let Some(source) = find_table(tables, &lookup.from) else {
                problems.push(format!(
                    "table {}: lookup of {} from {:?}: {:?} is not a configured table; add a [[tables]] entry \
                     for it or fix the name",
                    t.table.desktop, lookup.column, lookup.from, lookup.from
                ));
                continue;
            };
            if source.table == t.table {
                problems.push(format!(
                    "table {}: lookup of {} reads from the table itself; a lookup reads from another table",
                    t.table.desktop, lookup.column
                ));
            }
            match &source.identity {
                Identity::Key(key) if key.len() == 1 && key[0] == lookup.on => {}
                _ => problems.push(format!(
                    "table {}: lookup of {} joins {} on {:?}, which is not {}'s key; `on` must be the single \
                     `key` column of the table looked up",
                    t.table.desktop, lookup.column, source.table.desktop, lookup.on, source.table.desktop
                )),
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    desktop: RawDesktop,
    cloud: RawCloud,
    #[serde(default)]
    sync: SyncConfig,
    #[serde(default)]
    reconcile: RawReconcile,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    status: StatusConfig,
    #[serde(default)]
    conflicts: ConflictsConfig,
    #[serde(default)]
    tables: Vec<RawTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDesktop {
    url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloud {
    url: Option<String>,
    #[serde(default = "default_name")]
    slot: String,
    #[serde(default = "default_name")]
    publication: String,
}

fn default_name() -> String {
    "tandem".to_string()
}

#[cfg(test)]
mod tests;
