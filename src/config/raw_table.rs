//! One `[[tables]]` entry as written, and its checks: what [`super::TableConfig`] is made from.

use serde::Deserialize;

use super::*;

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTable {
    desktop: String,
    cloud: Option<String>,
    key: Option<Vec<String>>,
    cloud_key: Option<String>,
    scope: Option<Vec<String>>,
    #[serde(default)]
    skip_to_cloud: Vec<String>,
    #[serde(default)]
    skip_to_desktop: Vec<String>,
    #[serde(default)]
    lookups: Vec<Lookup>,
    #[serde(default = "yes")]
    reverse: bool,
    policy: Option<Policy>,
}

impl RawTable {
    /// Checks one entry on its own; records problems and returns `None` when it cannot be used.
    pub(super) fn resolve(
        self,
        index: usize,
        default_policy: Policy,
        problems: &mut Vec<String>,
    ) -> Option<TableConfig> {
        let before = problems.len();
        let label = if self.desktop.is_empty() {
            format!("[[tables]] entry {}", index + 1)
        } else {
            format!("table {}", self.desktop)
        };
        let desktop: Option<QualifiedName> = match self.desktop.parse() {
            Ok(n) => Some(n),
            Err(e) => {
                problems.push(format!("{label}: desktop = {e}"));
                None
            }
        };
        let cloud: Option<QualifiedName> = match &self.cloud {
            None => desktop.clone(),
            Some(c) => match c.parse() {
                Ok(n) => Some(n),
                Err(e) => {
                    problems.push(format!("{label}: cloud = {e}"));
                    None
                }
            },
        };
        let identity = match (self.key, self.cloud_key, self.scope) {
            (Some(key), None, None) => {
                if key.is_empty() {
                    problems.push(format!(
                        "{label}: key = [] is empty; name the desktop primary key columns"
                    ));
                }
                Some(Identity::Key(key))
            }
            (Some(_), None, Some(_)) => {
                problems.push(format!(
                    "{label}: `scope` only applies to cloud-key tables; remove it, or replace `key` with \
                     `cloud_key` if the desktop rows have no stable key"
                ));
                None
            }
            (None, Some(column), Some(scope)) => {
                if scope.is_empty() {
                    problems.push(format!("{label}: scope = [] is empty; name the columns rows are replaced by (e.g. [\"job_id\"])"));
                }
                if scope.contains(&column) {
                    problems.push(format!("{label}: cloud_key {column:?} cannot be part of the scope: the desktop does not have it"));
                }
                Some(Identity::CloudKey { column, scope })
            }
            (None, Some(_), None) => {
                problems.push(format!(
                    "{label}: cloud_key needs a `scope` (the desktop columns whose rows are replaced together, \
                     e.g. scope = [\"job_id\"])"
                ));
                None
            }
            (Some(_), Some(_), _) => {
                problems.push(format!(
                    "{label}: has both `key` and `cloud_key`; use `key` when the desktop key is the identity on \
                     both sides, `cloud_key` + `scope` when only the cloud has a key"
                ));
                None
            }
            (None, None, _) => {
                problems.push(format!(
                    "{label}: has neither `key` nor `cloud_key`; add key = [\"<desktop primary key>\"] or \
                     cloud_key = \"<cloud serial column>\" with scope = [...]"
                ));
                None
            }
        };
        if let Some(identity) = &identity {
            for col in identity.capture_columns() {
                if self.skip_to_cloud.contains(col) || self.skip_to_desktop.contains(col) {
                    problems.push(format!(
                        "{label}: {col:?} identifies rows (key or scope) and cannot be skipped; remove it from \
                         skip_to_cloud / skip_to_desktop"
                    ));
                }
            }
        }
        let mut lookup_columns = HashSet::new();
        for lookup in &self.lookups {
            if !lookup_columns.insert(&lookup.column) {
                problems.push(format!(
                    "{label}: two lookups fill {:?}; keep one",
                    lookup.column
                ));
            }
        }
        if problems.len() > before {
            return None;
        }
        Some(TableConfig {
            table: TableRef {
                desktop: desktop?,
                cloud: cloud?,
            },
            identity: identity?,
            skip_to_cloud: self.skip_to_cloud,
            skip_to_desktop: self.skip_to_desktop,
            lookups: self.lookups,
            reverse: self.reverse,
            policy: self.policy.unwrap_or(default_policy),
        })
    }
}
