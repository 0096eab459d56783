//! The config checked against both live schemas.
//!
//! Each rule yields a [`Finding`] naming the table, the column and the fix. Errors stop `init` and fail
//! `check`; warnings are printed and do not. The rules guard the mapping as a whole: every desktop
//! column has a place in the cloud or is explicitly skipped, every cloud column is filled or explicitly
//! left, so no value is ever silently dropped in either direction.

use std::fmt;

use crate::catalog::{Catalog, TableInfo};
use crate::change::Side;
use crate::config::{
    CREATED_AT_COLUMN, Config, Identity, SOURCE_COLUMN, TableConfig, UPDATED_AT_COLUMN, owner,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// The configured table it is about (its index in the config), if one.
    pub table: Option<usize>,
    /// Whether the table cannot stream while it holds: its statements would fail, or values would be
    /// lost. An error that does not park (a cloud column the config does not name) still fails
    /// `check` and `init`, but `run` picks the new shape up and says so.
    pub parks: bool,
    /// What it is about: `table jobtasks`, `table jobtasks, column client_id`.
    pub subject: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; fix: {}", self.subject, self.problem, self.fix)
    }
}

struct Findings {
    found: Vec<Finding>,
    /// The table being checked.
    table: usize,
}

impl Findings {
    fn error(
        &mut self,
        subject: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Severity::Error, true, subject, problem, fix);
    }

    /// An error a running `tandem run` streams through.
    fn error_streaming(
        &mut self,
        subject: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Severity::Error, false, subject, problem, fix);
    }

    fn warn(
        &mut self,
        subject: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Severity::Warning, false, subject, problem, fix);
    }

    fn push(
        &mut self,
        severity: Severity,
        parks: bool,
        subject: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.found.push(Finding {
            severity,
            table: Some(self.table),
            parks,
            subject: subject.into(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }
}

/// Every finding of the config against the two catalogs (loaded for the config's tables).
pub fn validate(config: &Config, desktop: &Catalog, cloud: &Catalog) -> Vec<Finding> {
    let mut out = Findings {
        found: Vec::new(),
        table: 0,
    };
    for (i, table) in config.tables.iter().enumerate() {
        out.table = i;
        let d = desktop.table(&table.table.desktop);
        let c = cloud.table(&table.table.cloud);
        let subject = format!("table {}", table.table);
        if d.is_none() {
            out.error(
                &subject,
                format!("desktop table {} does not exist", table.table.desktop),
                "create it on the desktop, or fix `desktop =` of this [[tables]] entry",
            );
        }
        if c.is_none() {
            out.error(
                &subject,
                format!("cloud table {} does not exist", table.table.cloud),
                "create it in the cloud, or fix `cloud =` of this [[tables]] entry",
            );
        }
        if let Some(d) = d {
            check_side_columns(&mut out, &subject, table, d, Side::Desktop);
        }
        if let Some(c) = c {
            check_side_columns(&mut out, &subject, table, c, Side::Cloud);
            check_cloud_table(&mut out, &subject, table, c);
        }
        if let (Some(d), Some(c)) = (d, c) {
            check_mapping(&mut out, &subject, table, d, c);
        }
        check_lookups(&mut out, &subject, config, desktop, table, d);
    }
    out.found
}

/// Columns the config names on one side exist there; identity columns are indexed.
fn check_side_columns(
    out: &mut Findings,
    subject: &str,
    table: &TableConfig,
    info: &TableInfo,
    side: Side,
) {
    let mut named: Vec<(&str, &String)> = Vec::new();
    match &table.identity {
        Identity::Key(key) => named.extend(key.iter().map(|k| ("key", k))),
        Identity::CloudKey { column, scope } => {
            named.extend(scope.iter().map(|k| ("scope", k)));
            if side == Side::Cloud {
                named.push(("cloud_key", column));
            }
        }
    }
    match side {
        Side::Desktop => named.extend(table.skip_to_cloud.iter().map(|k| ("skip_to_cloud", k))),
        Side::Cloud => named.extend(table.skip_to_desktop.iter().map(|k| ("skip_to_desktop", k))),
    }
    for (setting, col) in named {
        if !info.has_column(col) {
            // A skip list naming a column that is gone breaks nothing while streaming.
            let report = if setting.starts_with("skip") {
                Findings::error_streaming
            } else {
                Findings::error
            };
            report(
                out,
                format!("{subject}, column {col}"),
                format!(
                    "`{setting}` names column {col:?}, which {side} table {} does not have",
                    info.name
                ),
                format!("add the column on the {side}, or fix `{setting}`"),
            );
        }
    }
    let ident_cols = table.identity.capture_columns();
    if !ident_cols.iter().all(|c| info.has_column(c)) {
        return;
    }
    match (&table.identity, side) {
        (Identity::Key(key), Side::Cloud) if !info.has_unique_key(key) => out.error(
            subject,
            format!("key [{}] is not unique on cloud table {}: no primary key or unique index on exactly these columns", key.join(", "), info.name),
            format!("CREATE UNIQUE INDEX ON {} ({}) in the cloud, or fix `key`", info.name.quoted(), quoted_list(key)),
        ),
        (Identity::Key(key), Side::Desktop) if !info.has_index_leading_with(key) => out.warn(
            subject,
            format!("key [{}] has no index on desktop table {}: every change would read the whole table", key.join(", "), info.name),
            format!("CREATE INDEX ON {} ({}) on the desktop", info.name.quoted(), quoted_list(key)),
        ),
        (Identity::CloudKey { scope, .. }, _) if !info.has_index_leading_with(scope) => out.warn(
            subject,
            format!("scope [{}] has no index on {side} table {}: replacing a scope would read the whole table", scope.join(", "), info.name),
            format!("CREATE INDEX ON {} ({}) on the {side}", info.name.quoted(), quoted_list(scope)),
        ),
        _ => {}
    }
}

/// The ownership column and the cloud key.
fn check_cloud_table(out: &mut Findings, subject: &str, table: &TableConfig, c: &TableInfo) {
    match c.column(SOURCE_COLUMN) {
        None => out.error(
            subject,
            format!("cloud table {} has no `{SOURCE_COLUMN}` column, so tandem cannot tell desktop rows from mobile rows", c.name),
            format!("ALTER TABLE {} ADD COLUMN {SOURCE_COLUMN} char(1) in the cloud", c.name.quoted()),
        ),
        Some(col) if !is_text_type(&col.type_name) => out.error(
            format!("{subject}, column {SOURCE_COLUMN}"),
            format!("`{SOURCE_COLUMN}` is {}, not a text type holding {} / {}", col.type_name, owner::desktop(), owner::mobile()),
            format!("make cloud column {}.{SOURCE_COLUMN} char(1) or text", c.name),
        ),
        Some(_) => {}
    }
    if let Identity::CloudKey { column, .. } = &table.identity
        && let Some(col) = c.column(column)
    {
        if !c.has_unique_key(std::slice::from_ref(column)) {
            out.error(
                subject,
                format!("cloud_key {column} is not unique on cloud table {}", c.name),
                format!(
                    "make {column} the primary key of {} (e.g. bigserial PRIMARY KEY)",
                    c.name
                ),
            );
        }
        if !col.has_default && !col.identity {
            out.error(
                subject,
                format!(
                    "cloud_key {column} has no default: the cloud cannot number the desktop's rows"
                ),
                format!(
                    "make {}.{column} bigserial or GENERATED BY DEFAULT AS IDENTITY",
                    c.name
                ),
            );
        }
    }
}

/// Every desktop column has a cloud column (or is skipped); every cloud column is filled (or left).
fn check_mapping(
    out: &mut Findings,
    subject: &str,
    table: &TableConfig,
    d: &TableInfo,
    c: &TableInfo,
) {
    let cloud_key = match &table.identity {
        Identity::CloudKey { column, .. } => Some(column.as_str()),
        Identity::Key(_) => None,
    };
    for col in &d.columns {
        if table.skip_to_cloud.contains(&col.name) {
            continue;
        }
        if Some(col.name.as_str()) == cloud_key {
            out.error(
                format!("{subject}, column {}", col.name),
                format!("cloud_key {} also exists on the desktop", col.name),
                "if the desktop's value is a stable key, use key = [...] instead of cloud_key; otherwise list it in skip_to_cloud",
            );
            continue;
        }
        if table.lookups.iter().any(|l| l.column == col.name) {
            out.error(
                format!("{subject}, column {}", col.name),
                format!(
                    "{} is filled by a lookup but the desktop table has it too",
                    col.name
                ),
                "remove the lookup, or list the desktop column in skip_to_cloud",
            );
            continue;
        }
        match c.column(&col.name) {
            None => out.error(
                format!("{subject}, column {}", col.name),
                format!("desktop column {}.{} has no column in cloud table {}: its values would be lost", d.name, col.name, c.name),
                format!("add the column to cloud table {}, or list it in skip_to_cloud", c.name),
            ),
            Some(cc) if cc.generated => out.error(
                format!("{subject}, column {}", col.name),
                format!("cloud column {}.{} is generated and cannot be written", c.name, col.name),
                "list it in skip_to_cloud",
            ),
            Some(cc) if cc.type_name != col.type_name => out.warn(
                format!("{subject}, column {}", col.name),
                format!("types differ: desktop {}, cloud {}; values that do not fit become dead letters", col.type_name, cc.type_name),
                "make the types equal, or accept the dead letters",
            ),
            Some(_) => {}
        }
    }
    for col in &c.columns {
        let n = col.name.as_str();
        let managed = [SOURCE_COLUMN, CREATED_AT_COLUMN, UPDATED_AT_COLUMN].contains(&n)
            || Some(n) == cloud_key
            || table.lookups.iter().any(|l| l.column == n);
        let on_desktop = d.has_column(n) && !table.skip_to_cloud.iter().any(|s| s == n);
        if managed || on_desktop {
            continue;
        }
        if !table.skip_to_desktop.iter().any(|s| s == n) {
            out.error_streaming(
                format!("{subject}, column {n}"),
                format!("cloud column {}.{n} has no column in desktop table {}: mobile values in it would never reach the desktop", c.name, d.name),
                format!("add the column to desktop table {}, or list it in skip_to_desktop to keep it cloud-only", d.name),
            );
        } else if col.not_null && !col.has_default && !col.identity {
            out.error(
                format!("{subject}, column {n}"),
                format!("cloud column {}.{n} is NOT NULL without a default and nothing from the desktop fills it: every insert would fail", c.name),
                format!("give {}.{n} a default in the cloud, or map a desktop column to it", c.name),
            );
        }
    }
}

/// A lookup reads an existing column of a configured desktop table, joined on a column this table has.
fn check_lookups(
    out: &mut Findings,
    subject: &str,
    config: &Config,
    desktop: &Catalog,
    table: &TableConfig,
    d: Option<&TableInfo>,
) {
    for lookup in &table.lookups {
        let Some(source) = config.lookup_source(lookup) else {
            continue; // reported when the config was loaded
        };
        if let Some(d) = d
            && !d.has_column(&lookup.on)
        {
            out.error(
                format!("{subject}, lookup of {}", lookup.column),
                format!(
                    "joins on {:?}, which desktop table {} does not have",
                    lookup.on, d.name
                ),
                "fix `on` of the lookup",
            );
        }
        if let Some(src) = desktop.table(&source.table.desktop)
            && !src.has_column(&lookup.column)
        {
            out.error(
                format!("{subject}, lookup of {}", lookup.column),
                format!(
                    "reads column {:?} of desktop table {}, which does not have it",
                    lookup.column, src.name
                ),
                "fix `column` of the lookup, or the `from` table",
            );
        }
    }
}

fn is_text_type(type_name: &str) -> bool {
    type_name == "text" || type_name.starts_with("character") || type_name == "\"char\""
}

fn quoted_list(cols: &[String]) -> String {
    cols.iter()
        .map(|c| crate::change::quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}
