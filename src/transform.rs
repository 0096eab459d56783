//! The mapping rules, resolved against the live schemas: which desktop column becomes which cloud
//! column with which type, what is added (`source`, timestamps, lookups), and the order tables must be
//! written in.
//!
//! Built once at start from the config and both catalogs (after validation), then used to generate
//! every statement of the data path. Nothing here is table-specific: it is all read from the config.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::catalog::validate::{Finding, Severity};
use crate::catalog::{Catalog, ColumnInfo};
use crate::change::{QualifiedName, TableRef, quote_ident};
use crate::config::{CREATED_AT_COLUMN, Config, Identity, UPDATED_AT_COLUMN};
use crate::db::DbError;

/// A column both sides have, by the same name.
#[derive(Debug, Clone)]
pub struct MappedColumn {
    pub name: String,
    /// The desktop column's base type.
    pub desktop_base: String,
    /// The desktop column's full type (`character varying(2)`, `numeric(5,2)`).
    pub desktop_type: String,
    /// The cloud column's full type (`character varying(120)`).
    pub cloud_type: String,
    /// The type the value travels as between the two (in staging tables and binary COPY): the cloud's
    /// base type when it is built in, otherwise text with an explicit cast at the end.
    pub wire_type: String,
    /// Whether writing into the cloud column needs `CAST(.. AS cloud_type)` (non-built-in types).
    pub explicit_cast: bool,
}

impl MappedColumn {
    fn new(name: &str, desktop: &ColumnInfo, cloud: &ColumnInfo) -> Self {
        let (wire_type, explicit_cast) = if cloud.builtin {
            (cloud.base_type.clone(), false)
        } else {
            ("text".to_string(), true)
        };
        MappedColumn {
            name: name.to_string(),
            desktop_base: desktop.base_type.clone(),
            desktop_type: desktop.type_name.clone(),
            cloud_type: cloud.type_name.clone(),
            wire_type,
            explicit_cast,
        }
    }

    /// The desktop expression that produces the wire value from table alias `alias`.
    pub fn desktop_expr(&self, alias: &str) -> String {
        let col = format!("{alias}.{}", quote_ident(&self.name));
        if self.desktop_base == self.wire_type {
            col
        } else {
            format!("{col}::{}", self.wire_type)
        }
    }

    /// The cloud expression that turns a staged wire value (alias `alias`) into the column's value.
    pub fn cloud_expr(&self, alias: &str) -> String {
        let col = format!("{alias}.{}", quote_ident(&self.name));
        if self.explicit_cast {
            format!("CAST({col} AS {})", self.cloud_type)
        } else {
            col
        }
    }

    /// The staged value as the cloud column's exact type, for comparing row texts.
    pub fn cloud_typed(&self, alias: &str) -> String {
        format!(
            "CAST({alias}.{} AS {})",
            quote_ident(&self.name),
            self.cloud_type
        )
    }
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
        cloud_key_type: String,
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

    /// Resolves a validated config; panics on what validation guarantees (tables and columns exist).
    pub fn build(config: &Config, desktop: &Catalog, cloud: &Catalog) -> Mapping {
        let index: HashMap<&QualifiedName, usize> = config
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| (&t.table.desktop, i))
            .collect();
        let mut tables = Vec::new();
        for t in &config.tables {
            let d = desktop
                .table(&t.table.desktop)
                .expect("validated: desktop table exists");
            let c = cloud
                .table(&t.table.cloud)
                .expect("validated: cloud table exists");
            let map = |name: &str| {
                MappedColumn::new(
                    name,
                    d.column(name).expect("validated: desktop column exists"),
                    c.column(name).expect("validated: cloud column exists"),
                )
            };
            let columns: Vec<MappedColumn> = d
                .columns
                .iter()
                .filter(|col| !t.skip_to_cloud.contains(&col.name))
                .map(|col| map(&col.name))
                .collect();
            let kind = match &t.identity {
                Identity::Key(key) => Kind::Key(key.iter().map(|k| map(k)).collect()),
                Identity::CloudKey { column, scope } => Kind::Scoped {
                    cloud_key: column.clone(),
                    cloud_key_type: c.column(column).expect("validated").base_type.clone(),
                    scope: scope.iter().map(|k| map(k)).collect(),
                },
            };
            let lookups = t
                .lookups
                .iter()
                .map(|l| {
                    let source = config
                        .lookup_source(l)
                        .expect("validated: lookup source configured");
                    let src = desktop.table(&source.table.desktop).expect("validated");
                    LookupColumn {
                        column: MappedColumn::new(
                            &l.column,
                            src.column(&l.column)
                                .expect("validated: lookup column exists"),
                            c.column(&l.column)
                                .expect("validated: cloud lookup column exists"),
                        ),
                        from: index[&source.table.desktop],
                        on: l.on.clone(),
                    }
                })
                .collect();
            let reverse_columns = columns
                .iter()
                .filter(|c| !t.skip_to_desktop.contains(&c.name))
                .cloned()
                .collect();
            tables.push(TableMapping {
                table: t.table.clone(),
                kind,
                reverse_columns,
                columns,
                lookups,
                has_created_at: c.has_column(CREATED_AT_COLUMN),
                has_updated_at: c.has_column(UPDATED_AT_COLUMN),
                reverse: t.reverse,
                desktop_key_indexed: d.has_index_leading_with(t.identity.capture_columns()),
                desktop_key_unique: matches!(&t.identity, Identity::Key(k) if d.has_unique_key(k)),
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
mod tests {
    use super::*;

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
