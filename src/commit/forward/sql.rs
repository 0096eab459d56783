//! The cloud statements of the forward direction, generated once per table from its mapping.
//!
//! Staging tables (session temp tables, emptied at commit): `S` holds the desktop's current rows for the
//! batch's keys, `K` the keys themselves (a key in `K` without a row in `S` was deleted on the desktop),
//! `P` (cloud-key tables) the multiset match between `S` and the cloud rows of the touched scopes.
//! Every statement that changes user rows takes a range `$1..$2` of staging row numbers (`_n`), so a
//! failing row can be isolated by bisection; the normal path passes the whole range.

use crate::change::quote_ident;
use crate::config::SOURCE_COLUMN;
use crate::transform::{Kind, MappedColumn, TableMapping};

/// What a ranged statement's rows are numbered by, for building a dead letter of one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbered {
    Rows,
    Keys,
    Plan,
}

/// A statement over a range of staging rows.
#[derive(Debug, Clone)]
pub struct Ranged {
    pub what: &'static str,
    pub sql: String,
    pub numbered: Numbered,
}

#[derive(Debug, Clone)]
pub struct ForwardSql {
    pub rows: String,
    pub keys: String,
    pub plan_table: Option<String>,
    pub create: String,
    pub copy_rows_in: String,
    pub copy_keys_in: String,
    /// Adds every desktop-owned key (or scope) of the cloud table to `K`: a TRUNCATE on the desktop.
    pub truncate_keys: String,
    /// Whether `K` holds a key with a NULL part (only cloud-key tables can).
    pub keys_have_null: Option<String>,
    /// Desktop-key tables: the `S` row numbers of each key the desktop holds more than once.
    pub duplicate_rows: Option<String>,
    pub drop_duplicates: Option<Vec<String>>,
    /// Cloud-key tables: fills `P`, for keys without NULL parts and for keys with them.
    pub plan: Option<(String, String)>,
    pub conflicts: Vec<String>,
    pub delete: Ranged,
    pub write: Ranged,
    pub lookup_update: Option<Ranged>,
    /// Marks the dead letters of keys that now applied as resolved ($1 table, $2 batch).
    pub resolve: String,
    /// `(row_key, row_image)` of row `$1` of `S`, `K` and `P`, for a dead letter.
    images: [String; 3],
}

fn q(name: &str) -> String {
    quote_ident(name)
}

fn list(cols: &[String]) -> String {
    cols.join(", ")
}

fn names(cols: &[MappedColumn]) -> Vec<String> {
    cols.iter().map(|c| q(&c.name)).collect()
}

fn eq(a: &str, b: &str, cols: &[MappedColumn]) -> String {
    cols.iter()
        .map(|c| format!("{a}.{0} = {b}.{0}", q(&c.name)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn key_json(alias: &str, cols: &[MappedColumn]) -> String {
    let parts: Vec<String> = cols
        .iter()
        .map(|c| format!("'{}', {alias}.{}", c.name.replace('\'', "''"), q(&c.name)))
        .collect();
    format!("jsonb_build_object({})", parts.join(", "))
}

const DESKTOP_OWNED: &str = "(c.\"source\" = 'D' OR c.\"source\" IS NULL)";

impl ForwardSql {
    /// The names of this table's staging tables.
    pub fn staging_tables(&self) -> Vec<String> {
        [Some(&self.rows), Some(&self.keys), self.plan_table.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    pub fn build(t: &TableMapping, i: usize) -> ForwardSql {
        let target = t.table.cloud.quoted();
        let rows = format!("pg_temp.tandem_s_{i}");
        let keys = format!("pg_temp.tandem_k_{i}");
        let keys_cols = t.key_columns();
        let lookups: Vec<&MappedColumn> = t.lookups.iter().map(|l| &l.column).collect();
        let staged: Vec<&MappedColumn> = t.columns.iter().chain(lookups.iter().copied()).collect();
        let staged_names: Vec<String> = staged.iter().map(|c| q(&c.name)).collect();

        let col_defs: Vec<String> = staged
            .iter()
            .map(|c| format!("{} {}", q(&c.name), c.wire_type))
            .collect();
        let key_defs: Vec<String> = keys_cols
            .iter()
            .map(|c| format!("{} {}", q(&c.name), c.wire_type))
            .collect();
        let mut create = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {rows} (_n bigint GENERATED ALWAYS AS IDENTITY, {}) ON COMMIT PRESERVE ROWS;\n\
             CREATE TEMP TABLE IF NOT EXISTS {keys} (_n bigint GENERATED ALWAYS AS IDENTITY, {}) ON COMMIT PRESERVE ROWS;",
            list(&col_defs),
            list(&key_defs)
        );
        let copy_rows_in = format!(
            "COPY {rows} ({}) FROM STDIN (FORMAT binary)",
            list(&staged_names)
        );
        let copy_keys_in = format!(
            "COPY {keys} ({}) FROM STDIN (FORMAT binary)",
            list(&names(keys_cols))
        );
        let key_names = names(keys_cols);
        let truncate_keys = format!(
            "INSERT INTO {keys} ({kn}) SELECT DISTINCT {ck} FROM {target} c WHERE {DESKTOP_OWNED} \
             AND NOT EXISTS (SELECT 1 FROM {keys} k WHERE {eqkc})",
            kn = list(&key_names),
            ck = list(
                &key_names
                    .iter()
                    .map(|n| format!("c.{n}"))
                    .collect::<Vec<_>>()
            ),
            eqkc = keys_cols
                .iter()
                .map(|c| format!("k.{0} IS NOT DISTINCT FROM c.{0}", q(&c.name)))
                .collect::<Vec<_>>()
                .join(" AND "),
        );
        let resolve = format!(
            "UPDATE tandem.dead_letters d SET resolved_at = now() FROM {keys} k \
             WHERE d.direction = 'forward' AND d.table_name = $1 AND d.resolved_at IS NULL \
             AND d.batch IS DISTINCT FROM $2 AND d.row_key = {}",
            key_json("k", keys_cols)
        );
        let source = q(SOURCE_COLUMN);
        let mut insert_cols: Vec<String> = staged_names.clone();
        insert_cols.push(source.clone());
        let mut insert_vals: Vec<String> = staged.iter().map(|c| c.cloud_expr("s")).collect();
        insert_vals.push("'D'".to_string());
        if t.has_created_at {
            insert_cols.push(q(crate::config::CREATED_AT_COLUMN));
            insert_vals.push("now()".into());
        }
        if t.has_updated_at {
            insert_cols.push(q(crate::config::UPDATED_AT_COLUMN));
            insert_vals.push("now()".into());
        }
        let touch = if t.has_updated_at {
            format!(", {} = now()", q(crate::config::UPDATED_AT_COLUMN))
        } else {
            String::new()
        };

        match &t.kind {
            Kind::Key(key) => {
                let non_key: Vec<&MappedColumn> = staged
                    .iter()
                    .copied()
                    .filter(|c| !key.iter().any(|k| k.name == c.name))
                    .collect();
                let c_vals: Vec<String> = non_key
                    .iter()
                    .map(|c| format!("c.{}", q(&c.name)))
                    .collect();
                let s_vals: Vec<String> = non_key.iter().map(|c| c.cloud_expr("s")).collect();
                let differs = if non_key.is_empty() {
                    "false".to_string()
                } else {
                    format!("({}) IS DISTINCT FROM ({})", list(&c_vals), list(&s_vals))
                };
                // Blocked upserts and blocked deletes, in one statement.
                let conflicts = vec![crate::commit::log_conflicts(&format!(
                    "SELECT 'forward', $1::text, {kjs}, to_jsonb(s) - '_n', to_jsonb(c), \
                     'the cloud row is mobile-owned; the desktop change was not applied' \
                     FROM {rows} s JOIN {target} c ON {eqcs} WHERE c.{source} = 'M' AND {differs} \
                     UNION ALL \
                     SELECT 'forward', $1::text, {kjk}, NULL, to_jsonb(c), \
                     'the desktop deleted this row, but the cloud row is mobile-owned; it was kept' \
                     FROM {keys} k JOIN {target} c ON {eqck} WHERE c.{source} = 'M' \
                     AND NOT EXISTS (SELECT 1 FROM {rows} s WHERE {eqsk})",
                    kjs = key_json("s", key),
                    eqcs = eq("c", "s", key),
                    kjk = key_json("k", key),
                    eqck = eq("c", "k", key),
                    eqsk = eq("s", "k", key),
                ))];
                let delete = Ranged {
                    what: "delete",
                    numbered: Numbered::Keys,
                    sql: format!(
                        "DELETE FROM {target} c USING {keys} k WHERE {eqck} AND {DESKTOP_OWNED} \
                         AND NOT EXISTS (SELECT 1 FROM {rows} s WHERE {eqsk}) AND k._n BETWEEN $1 AND $2",
                        eqck = eq("c", "k", key),
                        eqsk = eq("s", "k", key),
                    ),
                };
                let on_conflict = if non_key.is_empty() {
                    "DO NOTHING".to_string()
                } else {
                    let sets: Vec<String> = non_key
                        .iter()
                        .map(|c| format!("{0} = EXCLUDED.{0}", q(&c.name)))
                        .collect();
                    let excluded: Vec<String> = non_key
                        .iter()
                        .map(|c| format!("EXCLUDED.{}", q(&c.name)))
                        .collect();
                    format!(
                        "DO UPDATE SET {}, {source} = 'D'{touch} WHERE {DESKTOP_OWNED} AND ({}) IS DISTINCT FROM ({})",
                        list(&sets),
                        list(&c_vals),
                        list(&excluded)
                    )
                };
                let write = Ranged {
                    what: "upsert",
                    numbered: Numbered::Rows,
                    sql: format!(
                        "INSERT INTO {target} AS c ({}) SELECT {} FROM {rows} s WHERE s._n BETWEEN $1 AND $2 \
                         ON CONFLICT ({}) {on_conflict}",
                        list(&insert_cols),
                        list(&insert_vals),
                        list(&names(key))
                    ),
                };
                let dup_keys = list(&names(key));
                ForwardSql {
                    duplicate_rows: Some(format!(
                        "SELECT array_agg(_n ORDER BY _n), count(*) FROM {rows} GROUP BY {dup_keys} HAVING count(*) > 1"
                    )),
                    drop_duplicates: Some(vec![
                        format!(
                            "DELETE FROM {keys} k USING {rows} s WHERE s._n = ANY($1) AND {}",
                            eq("k", "s", key)
                        ),
                        format!("DELETE FROM {rows} WHERE _n = ANY($1)"),
                    ]),
                    keys_have_null: None,
                    plan: None,
                    plan_table: None,
                    conflicts,
                    delete,
                    write,
                    lookup_update: None,
                    images: images(t, &rows, &keys, None),
                    rows,
                    keys,
                    create,
                    copy_rows_in,
                    copy_keys_in,
                    truncate_keys,
                    resolve,
                }
            }
            Kind::Scoped {
                cloud_key,
                cloud_key_type,
                scope,
            } => {
                let plan = format!("pg_temp.tandem_p_{i}");
                create.push_str(&format!(
                    "\nCREATE TEMP TABLE IF NOT EXISTS {plan} (_n bigint GENERATED ALWAYS AS IDENTITY, ck {cloud_key_type}, n bigint, csource text) ON COMMIT PRESERVE ROWS;"
                ));
                let ck = q(cloud_key);
                // Rows are matched on the text of all their desktop columns, as the cloud's types.
                let d_hash = format!(
                    "md5(ROW({})::text)",
                    list(
                        &t.columns
                            .iter()
                            .map(|c| c.cloud_typed("s"))
                            .collect::<Vec<_>>()
                    )
                );
                let c_hash = format!(
                    "md5(ROW({})::text)",
                    list(
                        &t.columns
                            .iter()
                            .map(|c| format!("c.{}", q(&c.name)))
                            .collect::<Vec<_>>()
                    )
                );
                let plan_sql = |scope_match: String| {
                    format!(
                        "INSERT INTO {plan} (ck, n, csource) \
                         WITH d AS (SELECT s._n, {d_hash} AS h FROM {rows} s), \
                              dn AS (SELECT _n, h, row_number() OVER (PARTITION BY h ORDER BY _n) AS dup FROM d), \
                              c AS (SELECT c.{ck} AS ck, c.{source}::text AS csource, {c_hash} AS h FROM {target} c WHERE {scope_match}), \
                              cn AS (SELECT ck, csource, h, row_number() OVER (PARTITION BY h ORDER BY (csource = 'M') DESC NULLS LAST, ck) AS dup FROM c) \
                         SELECT cn.ck, dn._n, cn.csource FROM dn FULL JOIN cn ON dn.h = cn.h AND dn.dup = cn.dup"
                    )
                };
                let scope_names = names(scope);
                let plain = plan_sql(format!(
                    "({}) IN (SELECT {} FROM {keys})",
                    list(
                        &scope_names
                            .iter()
                            .map(|n| format!("c.{n}"))
                            .collect::<Vec<_>>()
                    ),
                    list(&scope_names)
                ));
                let with_null = plan_sql(format!(
                    "EXISTS (SELECT 1 FROM {keys} k WHERE {})",
                    scope
                        .iter()
                        .map(|c| format!("c.{0} IS NOT DISTINCT FROM k.{0}", q(&c.name)))
                        .collect::<Vec<_>>()
                        .join(" AND ")
                ));
                let any_null: Vec<String> = scope
                    .iter()
                    .map(|c| format!("{} IS NULL", q(&c.name)))
                    .collect();
                let delete = Ranged {
                    what: "scoped delete",
                    numbered: Numbered::Plan,
                    sql: format!(
                        "DELETE FROM {target} c USING {plan} p WHERE c.{ck} = p.ck AND p.n IS NULL \
                         AND (p.csource = 'D' OR p.csource IS NULL) AND p._n BETWEEN $1 AND $2"
                    ),
                };
                let write = Ranged {
                    what: "scoped insert",
                    numbered: Numbered::Rows,
                    sql: format!(
                        "INSERT INTO {target} ({}) SELECT {} FROM {rows} s JOIN {plan} p ON p.n = s._n \
                         WHERE p.ck IS NULL AND s._n BETWEEN $1 AND $2",
                        list(&insert_cols),
                        list(&insert_vals)
                    ),
                };
                let lookup_update = (!lookups.is_empty()).then(|| {
                    let sets: Vec<String> = lookups.iter().map(|c| format!("{} = {}", q(&c.name), c.cloud_expr("s"))).collect();
                    let c_vals: Vec<String> = lookups.iter().map(|c| format!("c.{}", q(&c.name))).collect();
                    let s_vals: Vec<String> = lookups.iter().map(|c| c.cloud_expr("s")).collect();
                    Ranged {
                        what: "lookup update",
                        numbered: Numbered::Rows,
                        sql: format!(
                            "UPDATE {target} c SET {}{touch} FROM {plan} p JOIN {rows} s ON s._n = p.n \
                             WHERE c.{ck} = p.ck AND (p.csource = 'D' OR p.csource IS NULL) \
                             AND ({}) IS DISTINCT FROM ({}) AND s._n BETWEEN $1 AND $2",
                            list(&sets),
                            list(&c_vals),
                            list(&s_vals)
                        ),
                    }
                });
                ForwardSql {
                    duplicate_rows: None,
                    drop_duplicates: None,
                    keys_have_null: Some(format!(
                        "SELECT EXISTS (SELECT 1 FROM {keys} WHERE {})",
                        any_null.join(" OR ")
                    )),
                    plan: Some((plain, with_null)),
                    plan_table: Some(plan.clone()),
                    conflicts: Vec::new(),
                    delete,
                    write,
                    lookup_update,
                    images: images(t, &rows, &keys, Some(plan.as_str())),
                    rows,
                    keys,
                    create,
                    copy_rows_in,
                    copy_keys_in,
                    truncate_keys,
                    resolve,
                }
            }
        }
    }

    /// `(row_key, row_image)` of staging row `$1` of a ranged statement, for a dead letter.
    pub fn dead_letter_image(&self, numbered: Numbered) -> &str {
        match numbered {
            Numbered::Rows => &self.images[0],
            Numbered::Keys => &self.images[1],
            Numbered::Plan => &self.images[2],
        }
    }

    /// The staging table a ranged statement's `_n` refers to.
    pub fn numbered_table(&self, numbered: Numbered) -> &str {
        match numbered {
            Numbered::Rows => &self.rows,
            Numbered::Keys => &self.keys,
            Numbered::Plan => self
                .plan_table
                .as_deref()
                .expect("only cloud-key tables have a plan"),
        }
    }
}

/// The dead-letter images of a table's staging tables: `S` row `$1` as it was staged, `K` row `$1`
/// with the cloud row of that key, `P` row `$1` with its cloud row.
fn images(t: &TableMapping, rows: &str, keys: &str, plan: Option<&str>) -> [String; 3] {
    let target = t.table.cloud.quoted();
    let key = t.key_columns();
    let of_rows = format!(
        "SELECT {}, to_jsonb(s) - '_n' FROM {rows} s WHERE s._n = $1",
        key_json("s", key)
    );
    let of_keys = format!(
        "SELECT {}, (SELECT to_jsonb(c) FROM {target} c WHERE {} LIMIT 1) FROM {keys} k WHERE k._n = $1",
        key_json("k", key),
        eq("c", "k", key),
    );
    let of_plan = match (&t.kind, plan) {
        (Kind::Scoped { cloud_key, .. }, Some(plan)) => format!(
            "SELECT {}, to_jsonb(c) FROM {plan} p JOIN {target} c ON c.{} = p.ck WHERE p._n = $1",
            key_json("c", key),
            q(cloud_key)
        ),
        _ => String::new(),
    };
    [of_rows, of_keys, of_plan]
}
