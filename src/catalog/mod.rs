//! What the two live schemas hold: tables, columns, keys, indexes, replica identity.
//!
//! Read once per command with one set-based query per kind of fact, for all configured tables at once.
//! [`validate`] compares the config with it.

pub mod validate;

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::change::{QualifiedName, Side};
use crate::config::Config;
use crate::db::{Context, DbError};

#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub name: String,
    /// `format_type` of the column, schema-qualified unless in `pg_catalog`: `integer`,
    /// `character varying(120)`, `"Sales".mood`.
    pub type_name: String,
    pub type_oid: u32,
    /// What its values are, once domains are looked through.
    pub value: ValueType,
    pub not_null: bool,
    pub has_default: bool,
    /// `GENERATED ... AS IDENTITY`.
    pub identity: bool,
    /// `GENERATED ALWAYS AS (...) STORED`: cannot be written.
    pub generated: bool,
}

impl ColumnInfo {
    /// A stand-in for a column a side does not have (its table is parked while so): text.
    pub fn missing(name: &str) -> ColumnInfo {
        ColumnInfo {
            name: name.to_string(),
            type_name: "text".into(),
            type_oid: 25,
            value: ValueType {
                base: "text".into(),
                shaped: "text".into(),
                portable: true,
                equality: Some("pg_catalog".into()),
            },
            not_null: false,
            has_default: false,
            identity: false,
            generated: false,
        }
    }
}

/// The type a column's values have under its domains (if any), as tandem's statements need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueType {
    /// The type under every domain, without a modifier: a cast to it never truncates, rounds or checks
    /// (`character varying`, `bpchar`, `"bit"`, `numeric`, `"Sales".mood`, `integer[]`). What values are
    /// staged as.
    pub base: String,
    /// The same with the modifier the column (or its domain) gives it, except for arrays (a cast of an
    /// array to `numeric(5,2)[]` can fail): how the column shapes a value it stores.
    pub shaped: String,
    /// Its binary form can travel between two databases: the type and, for an array, its element are
    /// PostgreSQL's own (fixed OIDs; the binary forms of arrays and records carry OIDs).
    pub portable: bool,
    /// The schema of the equality operator of the type's default btree operator class, for plain types
    /// and enums: the `=` a unique index on the column uses, which the planner can use an index for.
    /// `None` for types without one (`json`, `xml`, `point`, `box`), and for arrays, records and ranges,
    /// whose `=` depends on their elements'.
    pub equality: Option<String>,
}
#[derive(Debug, Clone)]
pub struct IndexInfo {
    /// Key columns in index order; `None` for an expression.
    pub columns: Vec<Option<String>>,
    pub unique: bool,
    pub primary: bool,
    pub partial: bool,
}

impl IndexInfo {
    /// Whether the index's leading key columns are exactly `cols` (in any order), plain columns only.
    pub fn leads_with(&self, cols: &[String]) -> bool {
        if self.partial || self.columns.len() < cols.len() {
            return false;
        }
        let lead = &self.columns[..cols.len()];
        cols.iter()
            .all(|c| lead.iter().any(|l| l.as_deref() == Some(c.as_str())))
    }

    /// Whether this is a unique index on exactly `cols`: what `ON CONFLICT (cols)` needs.
    pub fn is_unique_on(&self, cols: &[String]) -> bool {
        self.unique && self.columns.len() == cols.len() && self.leads_with(cols)
    }
}

#[derive(Debug, Clone)]
pub struct TableInfo {
    pub name: QualifiedName,
    pub oid: u32,
    pub columns: Vec<ColumnInfo>,
    pub indexes: Vec<IndexInfo>,
    /// `relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    /// The tables this one's foreign keys reference (itself excluded).
    pub parents: Vec<QualifiedName>,
    /// `relacl`: who may do what with it.
    pub acl: Option<String>,
}

impl TableInfo {
    /// What the table's statements depend on, as a number that changes when any of it does: its
    /// identity, columns, indexes, foreign keys, replica identity and privileges.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut indexes: Vec<String> = self.indexes.iter().map(|i| format!("{i:?}")).collect();
        indexes.sort();
        let mut parents = self.parents.clone();
        parents.sort();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            self.oid,
            format!("{:?}", self.columns),
            indexes,
            parents,
            self.replica_identity,
            &self.acl,
        )
            .hash(&mut hasher);
        hasher.finish()
    }

    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn has_column(&self, name: &str) -> bool {
        self.column(name).is_some()
    }

    pub fn has_unique_key(&self, cols: &[String]) -> bool {
        self.indexes.iter().any(|i| i.is_unique_on(cols))
    }

    pub fn has_index_leading_with(&self, cols: &[String]) -> bool {
        self.indexes.iter().any(|i| i.leads_with(cols))
    }
}

/// Every column of the tables `$1`, with its type seen through its domains (see [`ValueType`]). Run with
/// `search_path = pg_catalog`, so `format_type` qualifies every type that is not PostgreSQL's own.
const COLUMNS_SQL: &str = "
    WITH RECURSIVE col AS (
        SELECT a.attrelid, a.attnum, a.attname::text AS name, a.atttypid, a.atttypmod, a.attnotnull,
               a.atthasdef, a.attidentity <> '' AS identity, a.attgenerated <> '' AS generated
          FROM pg_attribute a
         WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped),
    under AS (
        SELECT attrelid, attnum, atttypid AS typ, atttypmod AS typmod FROM col
        UNION ALL
        SELECT u.attrelid, u.attnum, t.typbasetype, t.typtypmod
          FROM under u JOIN pg_type t ON t.oid = u.typ WHERE t.typtype = 'd')
    SELECT c.attrelid, c.name, format_type(c.atttypid, c.atttypmod), c.atttypid, c.attnotnull, c.atthasdef,
           c.identity, c.generated,
           format_type(b.oid, -1),
           CASE WHEN b.typcategory = 'A' THEN format_type(b.oid, -1) ELSE format_type(b.oid, u.typmod) END,
           b.oid < 16384 AND (b.typelem = 0 OR b.typelem < 16384),
           (SELECT op.oprnamespace::regnamespace::text
              FROM pg_opclass oc
              JOIN pg_am am ON am.oid = oc.opcmethod AND am.amname = 'btree'
              JOIN pg_amop ao ON ao.amopfamily = oc.opcfamily AND ao.amopstrategy = 3
                             AND ao.amoplefttype = oc.opcintype AND ao.amoprighttype = oc.opcintype
              JOIN pg_operator op ON op.oid = ao.amopopr
             WHERE oc.opcdefault AND b.typcategory <> 'A' AND b.typtype IN ('b', 'e')
               AND (oc.opcintype = b.oid
                    OR (b.typtype = 'e' AND oc.opcintype = 'anyenum'::regtype)
                    OR EXISTS (SELECT 1 FROM pg_cast pc WHERE pc.castsource = b.oid
                                  AND pc.casttarget = oc.opcintype AND pc.castmethod = 'b'))
             ORDER BY oc.opcintype = b.oid DESC
             LIMIT 1)
      FROM col c
      JOIN under u ON u.attrelid = c.attrelid AND u.attnum = c.attnum
      JOIN pg_type b ON b.oid = u.typ AND b.typtype <> 'd'
     ORDER BY c.attrelid, c.attnum";

/// The configured tables of one side, as they are now.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub side: Side,
    tables: HashMap<QualifiedName, TableInfo>,
}

impl Catalog {
    /// Reads the given tables; tables that do not exist are simply absent.
    pub async fn load(
        client: &Client,
        side: Side,
        names: &[&QualifiedName],
    ) -> Result<Catalog, DbError> {
        // Type names are read with only pg_catalog on the search path, so every other type comes
        // schema-qualified and means the same in any session.
        client
            .batch_execute("BEGIN READ ONLY; SET LOCAL search_path = pg_catalog")
            .await
            .ctx(side, "reading the catalog")?;
        let loaded = Self::read(client, side, names).await;
        client
            .batch_execute("COMMIT")
            .await
            .ctx(side, "reading the catalog")?;
        loaded
    }

    async fn read(
        client: &Client,
        side: Side,
        names: &[&QualifiedName],
    ) -> Result<Catalog, DbError> {
        let schemas: Vec<&str> = names.iter().map(|n| n.schema.as_str()).collect();
        let tables: Vec<&str> = names.iter().map(|n| n.name.as_str()).collect();
        let rows = client
            .query(
                "SELECT t.schema_name, t.table_name, c.oid, c.relreplident::text, c.relacl::text
                   FROM unnest($1::text[], $2::text[]) AS t(schema_name, table_name)
                   JOIN pg_namespace n ON n.nspname = t.schema_name
                   JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.table_name
                  WHERE c.relkind IN ('r', 'p')",
                &[&schemas, &tables],
            )
            .await
            .ctx(side, "reading the configured tables from pg_class")?;
        let mut by_oid: HashMap<u32, TableInfo> = HashMap::new();
        for row in rows {
            let oid: u32 = row.get(2);
            let ident: String = row.get(3);
            by_oid.insert(
                oid,
                TableInfo {
                    name: QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
                    oid,
                    columns: Vec::new(),
                    indexes: Vec::new(),
                    parents: Vec::new(),
                    replica_identity: ident.chars().next().unwrap_or('d'),
                    acl: row.get(4),
                },
            );
        }
        let oids: Vec<u32> = by_oid.keys().copied().collect();
        let columns = client.query(COLUMNS_SQL, &[&oids]).await.ctx(
            side,
            "reading the configured tables' columns from pg_attribute",
        )?;
        for row in columns {
            let table = by_oid
                .get_mut(&row.get::<_, u32>(0))
                .expect("oid selected above");
            table.columns.push(ColumnInfo {
                name: row.get(1),
                type_name: row.get(2),
                type_oid: row.get(3),
                not_null: row.get(4),
                has_default: row.get(5),
                identity: row.get(6),
                generated: row.get(7),
                value: ValueType {
                    base: row.get(8),
                    shaped: row.get(9),
                    portable: row.get(10),
                    equality: row.get(11),
                },
            });
        }
        let indexes = client
            .query(
                "SELECT i.indrelid, i.indisunique, i.indisprimary, i.indpred IS NOT NULL,
                        ARRAY(SELECT a.attname::text
                                FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                                LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                               WHERE k.ord <= i.indnkeyatts
                               ORDER BY k.ord)
                   FROM pg_index i
                  WHERE i.indrelid = ANY($1::oid[]) AND i.indisvalid",
                &[&oids],
            )
            .await
            .ctx(side, "reading the configured tables' indexes from pg_index")?;
        for row in indexes {
            let table = by_oid
                .get_mut(&row.get::<_, u32>(0))
                .expect("oid selected above");
            table.indexes.push(IndexInfo {
                unique: row.get(1),
                primary: row.get(2),
                partial: row.get(3),
                columns: row.get(4),
            });
        }
        let parents = client
            .query(
                "SELECT DISTINCT c.conrelid, n.nspname::text, p.relname::text
                   FROM pg_constraint c
                   JOIN pg_class p ON p.oid = c.confrelid
                   JOIN pg_namespace n ON n.oid = p.relnamespace
                  WHERE c.contype = 'f' AND c.conrelid = ANY($1::oid[]) AND c.confrelid <> c.conrelid",
                &[&oids],
            )
            .await
            .ctx(side, "reading the configured tables' foreign keys from pg_constraint")?;
        for row in parents {
            let table = by_oid
                .get_mut(&row.get::<_, u32>(0))
                .expect("oid selected above");
            table.parents.push(QualifiedName::new(
                row.get::<_, String>(1),
                row.get::<_, String>(2),
            ));
        }
        Ok(Catalog {
            side,
            tables: by_oid.into_values().map(|t| (t.name.clone(), t)).collect(),
        })
    }

    pub fn table(&self, name: &QualifiedName) -> Option<&TableInfo> {
        self.tables.get(name)
    }
}

/// Both sides' catalogs of the tables `config` names.
pub async fn load_for(
    config: &Config,
    desktop: &Client,
    cloud: &Client,
) -> Result<(Catalog, Catalog), DbError> {
    let mut desktop_names: Vec<&QualifiedName> =
        config.tables.iter().map(|t| &t.table.desktop).collect();
    // Lookups read other desktop tables; they are configured tables, so already listed.
    desktop_names.dedup();
    let cloud_names: Vec<&QualifiedName> = config.tables.iter().map(|t| &t.table.cloud).collect();
    let d = Catalog::load(desktop, Side::Desktop, &desktop_names).await?;
    let c = Catalog::load(cloud, Side::Cloud, &cloud_names).await?;
    Ok((d, c))
}
