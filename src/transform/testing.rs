//! Table mappings made by hand, for the unit tests of the statement builders: no database, and the
//! names a user may write (`"Task List"`, `na'me`, and names like tandem's own: `c`, `_n`).

use super::{Kind, MappedColumn, TableMapping};
use crate::catalog::ValueType;
use crate::change::{QualifiedName, TableRef, quote_ident, quote_literal};

fn same_type(name: &str, base: &str, equality: Option<&str>) -> MappedColumn {
    let value = ValueType {
        base: base.into(),
        shaped: base.into(),
        portable: true,
        equality: equality.map(str::to_string),
    };
    MappedColumn {
        name: name.into(),
        desktop: value.clone(),
        cloud: value,
    }
}

/// A `json` column on both sides: no btree equality, so it is matched by its text.
pub fn json(name: &str) -> MappedColumn {
    same_type(name, "json", None)
}

/// An `integer` column on both sides.
pub fn int(name: &str) -> MappedColumn {
    same_type(name, "integer", Some("pg_catalog"))
}

/// A `text` column on both sides.
pub fn text(name: &str) -> MappedColumn {
    same_type(name, "text", Some("pg_catalog"))
}

/// Table `public.name` on both sides, with `created_at` and `updated_at` in the cloud and an index
/// on the desktop key.
pub fn table(name: &str, kind: Kind, columns: Vec<MappedColumn>) -> TableMapping {
    TableMapping {
        table: TableRef {
            desktop: QualifiedName::new("public", name),
            cloud: QualifiedName::new("public", name),
        },
        kind,
        reverse_columns: columns.clone(),
        columns,
        lookups: Vec::new(),
        has_created_at: true,
        has_updated_at: true,
        reverse: true,
        policy: crate::config::Policy::Latest,
        desktop_key_indexed: true,
        desktop_key_unique: false,
    }
}

/// A cloud-key table `name`, its `bigint` cloud key `k`, scoped by `scope`.
pub fn scoped(name: &str, scope: MappedColumn, columns: Vec<MappedColumn>) -> TableMapping {
    let kind = Kind::Scoped {
        cloud_key: "k".into(),
        cloud_key_type: ValueType {
            base: "bigint".into(),
            shaped: "bigint".into(),
            portable: true,
            equality: Some("pg_catalog".into()),
        },
        scope: vec![scope],
    };
    table(name, kind, columns)
}

/// The odd names every builder must keep quoted: a space, a quote, and names like tandem's own
/// aliases and staging columns.
pub const ODD: [&str; 4] = ["Task List", "na'me", "c", "_n"];

/// Desktop-key table `"Task List"` keyed by integer `"Task List"`, with the [`ODD`] names as columns.
pub fn odd_keyed() -> TableMapping {
    let columns = vec![int(ODD[0]), json(ODD[1]), json(ODD[2]), json(ODD[3])];
    table(ODD[0], Kind::Key(vec![columns[0].clone()]), columns)
}

/// Cloud-key table `"Task List"` scoped by integer `"Task List"`, with the [`ODD`] names as columns.
pub fn odd_scoped() -> TableMapping {
    let columns = vec![int(ODD[0]), json(ODD[1]), json(ODD[2]), json(ODD[3])];
    scoped(ODD[0], columns[0].clone(), columns)
}

/// Whether the [`ODD`] names that hold a space or a quote appear in `sql` only quoted: as
/// identifiers (`"Task List"`) or as string literals (`'na''me'`, a JSON key).
pub fn odd_names_quoted(sql: &str) -> bool {
    ODD[..2].iter().all(|name| {
        let rest = sql
            .replace(&quote_ident(name), "")
            .replace(&quote_literal(name), "");
        !rest.contains(name)
    })
}
