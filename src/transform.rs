//! The mapping rules, resolved against the live schemas: which desktop column becomes which cloud
//! column with which type, what is added (`source`, timestamps, lookups), and the order tables must be
//! written in.
//!
//! Built once at start from the config and both catalogs (after validation), then used to generate
//! every statement of the data path. Nothing here is table-specific: it is all read from the config.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::catalog::validate::{Finding, Severity};
use crate::catalog::{Catalog, ColumnInfo, ValueType};
use crate::change::{QualifiedName, TableRef};
use crate::config::{CREATED_AT_COLUMN, Config, Identity, UPDATED_AT_COLUMN};
use crate::db::DbError;

/// A column both sides have, by the same name, with both sides' value types.
///
/// How values travel: desktop → cloud in binary when the desktop's type is PostgreSQL's own (its binary
/// form means the same in both databases), as text otherwise; cloud → desktop as text (pgoutput sends
/// text). Text is each type's output under tandem's fixed session settings ([`crate::db::SESSION_SETTINGS`]),
/// which its input function reads back exactly. Staging columns have the type under the column's
/// domains, without a modifier (or text), so staging never refuses or changes a value; the modifier
/// and the domain's checks apply when the target column stores it, where a refused value is one row's
/// dead letter.
#[derive(Debug, Clone)]
pub struct MappedColumn {
    pub name: String,
    pub desktop: ValueType,
    pub cloud: ValueType,
}

impl MappedColumn {
    pub fn new(name: &str, desktop: &ColumnInfo, cloud: &ColumnInfo) -> Self {
        MappedColumn {
            name: name.to_string(),
            desktop: desktop.value.clone(),
            cloud: cloud.value.clone(),
        }
    }

    /// The type forward staging holds the column in (desktop → cloud).
    pub fn wire(&self) -> &str {
        if self.desktop.portable {
            &self.desktop.base
        } else {
            "text"
        }
    }

    /// The desktop expression producing the staged value of `expr` (a value of the desktop column).
    pub fn desktop_read(&self, expr: &str) -> String {
        cast(expr, self.wire())
    }

    /// The value for the cloud column from staged value `expr`: converted when the types differ, so
    /// the column's own assignment applies its modifier and domain (which refuse, never truncate).
    pub fn cloud_value(&self, expr: &str) -> String {
        if self.wire() == self.cloud.base {
            expr.to_string()
        } else {
            cast(expr, &self.cloud.base)
        }
    }

    /// Staged value `expr` as the cloud column would hold it, for comparing; never fails.
    pub fn cloud_shaped(&self, expr: &str) -> String {
        shaped(&self.cloud_value(expr), &self.cloud)
    }

    /// The value for the desktop column from the text `expr` (reverse staging, an old image).
    pub fn desktop_value(&self, expr: &str) -> String {
        cast(expr, &self.desktop.base)
    }

    /// Text `expr` as the desktop column would hold it, for comparing; never fails on a value the
    /// desktop's type can read.
    pub fn desktop_shaped(&self, expr: &str) -> String {
        shaped(&self.desktop_value(expr), &self.desktop)
    }
}

/// `CAST(expr AS ty)`.
fn cast(expr: &str, ty: &str) -> String {
    format!("CAST({expr} AS {ty})")
}

/// `expr` (of `t.base`) cast to `t.shaped` without failing: a cast to a length-limited type truncates,
/// one to a precision-limited time rounds, and a `numeric(p,s)` value too big for it stays as it is (no
/// stored value can equal it anyway; the cast would fail the statement).
fn shaped(expr: &str, t: &ValueType) -> String {
    if t.shaped == t.base {
        return expr.to_string();
    }
    let shaped = cast(expr, &t.shaped);
    match numeric_typmod(&t.shaped) {
        Some((precision, scale)) => format!(
            "CASE WHEN abs(round({expr}, {scale})) < 1e{} THEN {shaped} ELSE {expr} END",
            precision - scale
        ),
        None => shaped,
    }
}

/// `(precision, scale)` of `numeric(p,s)` / `numeric(p)`.
fn numeric_typmod(type_name: &str) -> Option<(i32, i32)> {
    let inner = type_name.strip_prefix("numeric(")?.strip_suffix(')')?;
    let mut parts = inner.split(',').map(|p| p.trim().parse::<i32>());
    let precision = parts.next()?.ok()?;
    let scale = match parts.next() {
        Some(s) => s.ok()?,
        None => 0,
    };
    Some((precision, scale))
}

/// A cloud column filled from another table of the desktop.
#[derive(Debug, Clone)]
pub struct LookupColumn {
    pub column: MappedColumn,
    /// Index of the source table in [`Mapping::tables`].
    pub from: usize,
    /// The join column (in this table and the source table, where it is the key).
    pub on: String,
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// The desktop key identifies a row on both sides.
    Key(Vec<MappedColumn>),
    /// Rows are replaced per scope; the cloud numbers them with `cloud_key`.
    Scoped {
        cloud_key: String,
        cloud_key_type: ValueType,
        scope: Vec<MappedColumn>,
    },
}

#[derive(Debug, Clone)]
pub struct TableMapping {
    pub table: TableRef,
    pub kind: Kind,
    /// Desktop columns that go to the cloud, in desktop order (key and scope columns included).
    pub columns: Vec<MappedColumn>,
    pub lookups: Vec<LookupColumn>,
    /// The columns mobile rows bring back to the desktop: the mapped columns not in `skip_to_desktop`.
    pub reverse_columns: Vec<MappedColumn>,
    pub has_created_at: bool,
    pub has_updated_at: bool,
    pub reverse: bool,
    /// How a true conflict of its rows is settled.
    pub policy: crate::config::Policy,
    /// Whether the desktop has an index leading with the key (or scope): lookups by key can probe it.
    pub desktop_key_indexed: bool,
    /// Whether the desktop has a unique index on exactly the key: inserts can use ON CONFLICT.
    pub desktop_key_unique: bool,
}

impl TableMapping {
    /// The columns that identify what a change touched: the key, or the scope.
    pub fn key_columns(&self) -> &[MappedColumn] {
        match &self.kind {
            Kind::Key(k) => k,
            Kind::Scoped { scope, .. } => scope,
        }
    }
}

/// Every configured table, resolved, with the order foreign keys impose.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub tables: Vec<TableMapping>,
    /// Indexes into `tables`, parents before children (cloud foreign keys); config order otherwise.
    pub parents_first: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the config does not match the live schemas:\n{}", .0.iter().map(|f| format!("  - {f}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Finding>),
}

impl Mapping {
    /// Reads both catalogs, validates the config against them and resolves the mapping.
    pub async fn load(
        config: &Config,
        desktop: &Client,
        cloud: &Client,
    ) -> Result<Mapping, MappingError> {
        let (dcat, ccat) = crate::catalog::load_for(config, desktop, cloud).await?;
        let findings = crate::catalog::validate::validate(config, &dcat, &ccat);
        let errors: Vec<Finding> = findings
            .into_iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        if !errors.is_empty() {
            return Err(MappingError::Invalid(errors));
        }
        Ok(Mapping::build(config, &dcat, &ccat))
    }

    /// Reads both catalogs and resolves the mapping whatever validation finds: a table the schemas do
    /// not fit is mapped as far as it goes (see [`Mapping::build`]); the findings say which.
    pub async fn load_lenient(
        config: &Config,
        desktop: &Client,
        cloud: &Client,
    ) -> Result<(Mapping, Vec<Finding>), DbError> {
        let (dcat, ccat) = crate::catalog::load_for(config, desktop, cloud).await?;
        let findings = crate::catalog::validate::validate(config, &dcat, &ccat);
        Ok((Mapping::build(config, &dcat, &ccat), findings))
    }

    /// Resolves the config against the catalogs. Never fails: a table or column missing on a side is
    /// mapped with a stand-in type (text), so every table has its place; validation reports it, and
    /// a table the schemas do not fit is never streamed (it is parked).
    pub fn build(config: &Config, desktop: &Catalog, cloud: &Catalog) -> Mapping {
        let index: HashMap<&QualifiedName, usize> = config
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| (&t.table.desktop, i))
            .collect();
        let missing = ColumnInfo::missing;
        let mut tables = Vec::new();
        for t in &config.tables {
            let d = desktop.table(&t.table.desktop);
            let c = cloud.table(&t.table.cloud);
            let column = |table: Option<&crate::catalog::TableInfo>, name: &str| {
                table
                    .and_then(|t| t.column(name))
                    .cloned()
                    .unwrap_or_else(|| missing(name))
            };
            let map = |name: &str| MappedColumn::new(name, &column(d, name), &column(c, name));
            let identity = t.identity.capture_columns();
            let mut columns: Vec<MappedColumn> = match d {
                Some(d) => d
                    .columns
                    .iter()
                    .filter(|col| !t.skip_to_cloud.contains(&col.name))
                    .map(|col| map(&col.name))
                    .collect(),
                None => Vec::new(),
            };
            for name in identity {
                if !columns.iter().any(|col| &col.name == name) {
                    columns.push(map(name));
                }
            }
            let kind = match &t.identity {
                Identity::Key(key) => Kind::Key(key.iter().map(|k| map(k)).collect()),
                Identity::CloudKey { column: ck, scope } => Kind::Scoped {
                    cloud_key: ck.clone(),
                    cloud_key_type: column(c, ck).value,
                    scope: scope.iter().map(|k| map(k)).collect(),
                },
            };
            let lookups = t
                .lookups
                .iter()
                .filter_map(|l| {
                    let source = config.lookup_source(l)?;
                    let src = desktop.table(&source.table.desktop);
                    Some(LookupColumn {
                        column: MappedColumn::new(
                            &l.column,
                            &column(src, &l.column),
                            &column(c, &l.column),
                        ),
                        from: index[&source.table.desktop],
                        on: l.on.clone(),
                    })
                })
                .collect();
            let reverse_columns = columns
                .iter()
                .filter(|col| {
                    !t.skip_to_desktop.contains(&col.name) || identity.contains(&col.name)
                })
                .cloned()
                .collect();
            tables.push(TableMapping {
                table: t.table.clone(),
                kind,
                reverse_columns,
                columns,
                lookups,
                has_created_at: c.is_some_and(|c| c.has_column(CREATED_AT_COLUMN)),
                has_updated_at: c.is_some_and(|c| c.has_column(UPDATED_AT_COLUMN)),
                reverse: t.reverse,
                policy: t.policy,
                desktop_key_indexed: d.is_some_and(|d| d.has_index_leading_with(identity)),
                desktop_key_unique: matches!(&t.identity, Identity::Key(k) if d.is_some_and(|d| d.has_unique_key(k))),
            });
        }
        let cloud_index: HashMap<&QualifiedName, usize> = config
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| (&t.table.cloud, i))
            .collect();
        let parents: Vec<Vec<usize>> = config
            .tables
            .iter()
            .map(|t| {
                cloud
                    .table(&t.table.cloud)
                    .map(|c| {
                        c.parents
                            .iter()
                            .filter_map(|p| cloud_index.get(p).copied())
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        Mapping {
            parents_first: parents_first(&parents),
            tables,
        }
    }

    /// The tables whose lookups read from table `i`.
    pub fn dependents_of(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.tables
            .iter()
            .enumerate()
            .filter(move |(_, t)| t.lookups.iter().any(|l| l.from == i))
            .map(|(j, _)| j)
    }

    /// The table whose cloud name is `schema.name`.
    pub fn position_in_cloud(&self, schema: &str, name: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t.table.cloud.schema == schema && t.table.cloud.name == name)
    }

    pub fn position(&self, schema: &str, name: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t.table.desktop.schema == schema && t.table.desktop.name == name)
    }
}

/// A topological order (parents first) of `0..parents.len()`, stable in index order; members of a
/// cycle keep their index order.
pub fn parents_first(parents: &[Vec<usize>]) -> Vec<usize> {
    let n = parents.len();
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let ready = (0..n).find(|&i| !placed[i] && parents[i].iter().all(|&p| placed[p] || p == i));
        // A cycle: take the first unplaced table and go on.
        let next = ready.unwrap_or_else(|| {
            (0..n)
                .find(|&i| !placed[i])
                .expect("some table is unplaced")
        });
        placed[next] = true;
        order.push(next);
    }
    order
}

#[cfg(test)]
pub mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_typmods_are_read_from_the_type_name() {
        assert_eq!(numeric_typmod("numeric(5,2)"), Some((5, 2)));
        assert_eq!(numeric_typmod("numeric(7)"), Some((7, 0)));
        assert_eq!(numeric_typmod("numeric(2,-3)"), Some((2, -3)));
        assert_eq!(numeric_typmod("numeric"), None);
        assert_eq!(numeric_typmod("character varying(5)"), None);
    }

    fn value(base: &str, shaped: &str) -> ValueType {
        ValueType {
            base: base.into(),
            shaped: shaped.into(),
            portable: true,
            equality: Some("pg_catalog".into()),
        }
    }

    #[test]
    fn a_shaping_cast_keeps_numeric_values_it_cannot_hold() {
        assert_eq!(
            shaped("x", &value("numeric", "numeric(3,2)")),
            "CASE WHEN abs(round(x, 2)) < 1e1 THEN CAST(x AS numeric(3,2)) ELSE x END"
        );
        assert_eq!(
            shaped("x", &value("character varying", "character varying(2)")),
            "CAST(x AS character varying(2))"
        );
        assert_eq!(shaped("x", &value("text", "text")), "x");
    }

    #[test]
    fn values_travel_in_binary_only_between_builtin_types() {
        let column = |desktop: ValueType, cloud: ValueType| MappedColumn {
            name: "v".into(),
            desktop,
            cloud,
        };
        let same = column(
            value("bpchar", "character(10)"),
            value("bpchar", "character(10)"),
        );
        assert_eq!(same.wire(), "bpchar");
        assert_eq!(same.cloud_value("s.c1"), "s.c1");
        let mut user = value("\"Sales\".mood", "\"Sales\".mood");
        user.portable = false;
        let enums = column(user.clone(), user);
        assert_eq!(enums.wire(), "text");
        assert_eq!(enums.desktop_read("t.v"), "CAST(t.v AS text)");
        assert_eq!(enums.cloud_value("s.c1"), "CAST(s.c1 AS \"Sales\".mood)");
        let widened = column(value("integer", "integer"), value("bigint", "bigint"));
        assert_eq!(widened.cloud_value("s.c1"), "CAST(s.c1 AS bigint)");
    }

    #[test]
    fn parents_come_first_and_order_is_stable() {
        // 0 child of 2, 1 child of 0, 3 independent.
        let parents = vec![vec![2], vec![0], vec![], vec![]];
        assert_eq!(parents_first(&parents), vec![2, 0, 1, 3]);
        // A cycle does not hang.
        let cyclic = vec![vec![1], vec![0], vec![]];
        let order = parents_first(&cyclic);
        assert_eq!(order.len(), 3);
        assert_eq!(order[0], 2);
    }
}
