//! What `init` installs in the cloud: schema `tandem`, the ownership trigger that makes every write not
//! made by tandem mobile-owned, the publication over the synced tables, and the logical replication
//! slot; and how to read the state of the publication and the slot.
//!
//! Only mobile-owned rows travel back, so the publication carries a row filter on `source`. PostgreSQL
//! lets a row filter name only replica-identity columns once UPDATE and DELETE are published, and with a
//! filter in place every UPDATE and DELETE on a table whose identity does not cover it fails: the synced
//! tables get `REPLICA IDENTITY FULL` before the publication exists (which also gives updates and deletes
//! their whole old row, what cloud-key tables need to find a row on the desktop).

use tokio_postgres::Client;

use crate::change::{QualifiedName, Side, quote_ident};
use crate::config::{Config, Identity, SOURCE_COLUMN, owner};
use crate::db::{APPLYING_SETTING, Context, DbError};

use super::triggers::{TriggerSpec, tgtype};

/// tandem's objects in the cloud (schema, progress, conflicts, dead letters, ownership function).
pub const INSTALL_SQL: &str = concat!(
    include_str!("../../sql/install/common.sql"),
    include_str!("../../sql/install/cloud.sql")
);

pub const REQUIRED_RELATIONS: &[&str] = &[
    "tandem.installation",
    "tandem.progress",
    "tandem.conflicts",
    "tandem.dead_letters",
    "tandem.replica_identity_before",
    "tandem.journal",
];
pub const MARK_FUNCTION: &str = "tandem.mark_mobile()";
pub const REQUIRED_FUNCTIONS: &[&str] = &[MARK_FUNCTION];

/// Supabase's API roles: they must get nothing in schema tandem.
pub const API_ROLES: &[&str] = &["anon", "authenticated"];

/// The ownership trigger on every configured cloud table. Its arguments are the key (or scope)
/// columns the journal records of a phone's update or delete; its WHEN skips the call for tandem's own
/// writes, those of a session of `role` (tandem's, as init found it) that set `tandem.applying`: no other
/// role can pass for tandem by setting the setting.
///
/// A cloud-key table also gets `tandem_journal_inserts` (after each INSERT statement, its new rows as
/// the transition table `tandem_new`), which journals a phone's new rows: see `tandem.journal`.
pub fn mark_triggers(config: &Config, role: &str) -> Vec<TriggerSpec> {
    let when = format!(
        "current_setting('{APPLYING_SETTING}', true) IS DISTINCT FROM 'on' OR session_user <> {}",
        crate::change::quote_literal(role)
    );
    let mut specs = Vec::new();
    for t in &config.tables {
        let spec =
            |name: &str, tgtype: i16, args: Vec<String>, new_table: Option<&str>| TriggerSpec {
                side: Side::Cloud,
                table: t.table.cloud.clone(),
                name: name.to_string(),
                function: "\"tandem\".\"mark_mobile\"".to_string(),
                tgtype,
                args,
                old_table: None,
                new_table: new_table.map(str::to_string),
                when: Some(when.clone()),
            };
        specs.push(spec(
            "tandem_mark_mobile",
            tgtype::ROW | tgtype::BEFORE | tgtype::INSERT | tgtype::UPDATE | tgtype::DELETE,
            t.identity.capture_columns().to_vec(),
            None,
        ));
        if matches!(t.identity, Identity::CloudKey { .. }) {
            specs.push(spec(
                "tandem_journal_inserts",
                tgtype::INSERT,
                Vec::new(),
                Some("tandem_new"),
            ));
        }
    }
    specs
}

/// `"schema"."table" WHERE ("source" = 'M')`: one entry of the publication's table list.
pub fn publication_entry(table: &QualifiedName) -> String {
    format!(
        "{} WHERE ({})",
        table.quoted(),
        owner::is_mobile(&owner::column())
    )
}

/// `CREATE PUBLICATION` over `tables` (may be empty), publishing every kind of change.
pub fn create_publication_sql(name: &str, tables: &[QualifiedName]) -> String {
    let list = if tables.is_empty() {
        String::new()
    } else {
        let entries: Vec<String> = tables.iter().map(publication_entry).collect();
        format!(" FOR TABLE {}", entries.join(", "))
    };
    format!(
        "CREATE PUBLICATION {}{list} WITH (publish = 'insert, update, delete, truncate')",
        quote_ident(name)
    )
}

/// `ALTER PUBLICATION .. SET TABLE ..`: the whole list at once.
pub fn set_publication_tables_sql(name: &str, tables: &[QualifiedName]) -> Vec<String> {
    if tables.is_empty() {
        // SET TABLE needs at least one table; drop and re-create instead.
        return vec![
            format!("DROP PUBLICATION {}", quote_ident(name)),
            create_publication_sql(name, tables),
        ];
    }
    let entries: Vec<String> = tables.iter().map(publication_entry).collect();
    vec![format!(
        "ALTER PUBLICATION {} SET TABLE {}",
        quote_ident(name),
        entries.join(", ")
    )]
}

/// Whether a row filter as PostgreSQL prints it (`(source = 'M'::bpchar)`, or
/// `((source)::text = 'M'::text)` for a varchar column) is ours: casts, quotes, parentheses and
/// spaces are ignored.
pub fn filter_is_ours(rowfilter: &str) -> bool {
    let mut bare = String::with_capacity(rowfilter.len());
    let mut rest = rowfilter;
    while let Some(pos) = rest.find("::") {
        bare.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let type_len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c == ' '))
            .unwrap_or(after.len());
        rest = &after[type_len..];
    }
    bare.push_str(rest);
    bare.retain(|c| !matches!(c, '"' | '(' | ')' | ' '));
    bare == format!("{SOURCE_COLUMN}={}", owner::mobile())
}

#[derive(Debug, Clone)]
pub struct PublicationState {
    pub all_tables: bool,
    /// Publishes insert, update, delete and truncate.
    pub publishes_everything: bool,
    pub tables: Vec<(QualifiedName, Option<String>)>,
}

impl PublicationState {
    /// Whether it publishes exactly `wanted`, each with our row filter.
    pub fn matches(&self, wanted: &[QualifiedName]) -> bool {
        !self.all_tables
            && self.publishes_everything
            && self.tables.len() == wanted.len()
            && wanted.iter().all(|w| {
                self.tables
                    .iter()
                    .any(|(t, f)| t == w && f.as_deref().is_some_and(filter_is_ours))
            })
    }
}

pub async fn publication_state(
    client: &Client,
    name: &str,
) -> Result<Option<PublicationState>, DbError> {
    let Some(row) = client
        .query_opt(
            "SELECT puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate
               FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .ctx(Side::Cloud, format!("reading publication {name}"))?
    else {
        return Ok(None);
    };
    let tables = client
        .query(
            "SELECT schemaname::text, tablename::text, rowfilter FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await
        .ctx(Side::Cloud, format!("reading the tables of publication {name}"))?
        .into_iter()
        .map(|r| (QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)), r.get(2)))
        .collect();
    Ok(Some(PublicationState {
        all_tables: row.get(0),
        publishes_everything: row.get(1),
        tables,
    }))
}

#[derive(Debug, Clone)]
pub struct SlotState {
    pub plugin: Option<String>,
    pub database: Option<String>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    pub active_pid: Option<i32>,
    /// Whether it belongs to the database we are connected to.
    pub in_this_database: bool,
}

impl SlotState {
    /// Why tandem cannot use this slot, with the fix; `None` when it can.
    pub fn problem(&self, slot: &str) -> Option<(String, String)> {
        if self.plugin.as_deref() != Some("pgoutput") || !self.in_this_database {
            return Some((
                format!(
                    "replication slot {slot} exists but is not a pgoutput slot of this database (plugin {}, database {})",
                    self.plugin.as_deref().unwrap_or("none"),
                    self.database.as_deref().unwrap_or("none")
                ),
                "choose another name in [cloud] slot, or drop that slot if nothing uses it"
                    .to_string(),
            ));
        }
        if self.wal_status.as_deref() == Some("lost") {
            return Some((
                format!(
                    "replication slot {slot} is invalidated (wal_status lost): the cloud removed WAL it still \
                     needed, so changes made meanwhile cannot be streamed"
                ),
                format!(
                    "drop it (SELECT pg_drop_replication_slot('{slot}')), run `tandem init` to create it again, \
                     then `tandem reconcile` to repair what was missed; raise max_slot_wal_keep_size to prevent it"
                ),
            ));
        }
        None
    }
}

pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, DbError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text, wal_status, active_pid, database = current_database()
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ctx(Side::Cloud, format!("reading replication slot {slot}"))?;
    Ok(row.map(|r| SlotState {
        plugin: r.get(0),
        database: r.get(1),
        wal_status: r.get(2),
        active_pid: r.get(3),
        in_this_database: r.get::<_, Option<bool>>(4).unwrap_or(false),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_filters_as_postgres_prints_them_are_recognised() {
        assert!(filter_is_ours("(source = 'M'::bpchar)"));
        assert!(filter_is_ours("(source = 'M'::text)"));
        assert!(filter_is_ours("((source)::text = 'M'::text)"));
        assert!(filter_is_ours("(\"source\" = 'M'::character varying)"));
        assert!(!filter_is_ours("(source = 'D'::bpchar)"));
        assert!(!filter_is_ours("((source = 'M'::bpchar) AND (job_id > 0))"));
    }

    #[test]
    fn publication_ddl_quotes_and_filters() {
        let t = QualifiedName::new("public", "jobs\"head");
        assert_eq!(
            create_publication_sql("tan dem", std::slice::from_ref(&t)),
            "CREATE PUBLICATION \"tan dem\" FOR TABLE \"public\".\"jobs\"\"head\" WHERE (\"source\" = 'M') \
             WITH (publish = 'insert, update, delete, truncate')"
        );
        assert_eq!(
            create_publication_sql("p", &[]),
            "CREATE PUBLICATION \"p\" WITH (publish = 'insert, update, delete, truncate')"
        );
    }
}
