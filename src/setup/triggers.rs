//! Triggers tandem installs on user tables: what should be there, what is there, and the difference.

use std::fmt;

use tokio_postgres::Client;

use crate::change::{QualifiedName, Side, quote_ident, quote_literal};
use crate::db::{Context, DbError};

/// `pg_trigger.tgtype` bits.
pub mod tgtype {
    pub const ROW: i16 = 1;
    pub const BEFORE: i16 = 2;
    pub const INSERT: i16 = 4;
    pub const DELETE: i16 = 8;
    pub const UPDATE: i16 = 16;
    pub const TRUNCATE: i16 = 32;
}

/// One trigger tandem wants on one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSpec {
    pub side: Side,
    pub table: QualifiedName,
    pub name: String,
    /// The trigger function, schema-qualified and quoted: `"tandem"."capture"`.
    pub function: String,
    pub tgtype: i16,
    pub args: Vec<String>,
    /// Transition table names (`REFERENCING OLD TABLE AS .. NEW TABLE AS ..`).
    pub old_table: Option<String>,
    pub new_table: Option<String>,
    /// A `WHEN (...)` condition, evaluated before the function is called.
    pub when: Option<String>,
}

impl TriggerSpec {
    pub fn create_sql(&self) -> String {
        let timing = if self.tgtype & tgtype::BEFORE != 0 {
            "BEFORE"
        } else {
            "AFTER"
        };
        let events: Vec<&str> = [
            (tgtype::INSERT, "INSERT"),
            (tgtype::UPDATE, "UPDATE"),
            (tgtype::DELETE, "DELETE"),
            (tgtype::TRUNCATE, "TRUNCATE"),
        ]
        .iter()
        .filter(|(bit, _)| self.tgtype & bit != 0)
        .map(|(_, name)| *name)
        .collect();
        let mut referencing = String::new();
        if self.old_table.is_some() || self.new_table.is_some() {
            referencing.push_str(" REFERENCING");
            if let Some(old) = &self.old_table {
                referencing.push_str(&format!(" OLD TABLE AS {}", quote_ident(old)));
            }
            if let Some(new) = &self.new_table {
                referencing.push_str(&format!(" NEW TABLE AS {}", quote_ident(new)));
            }
        }
        let level = if self.tgtype & tgtype::ROW != 0 {
            "ROW"
        } else {
            "STATEMENT"
        };
        let when = self
            .when
            .as_ref()
            .map(|w| format!(" WHEN ({w})"))
            .unwrap_or_default();
        let args: Vec<String> = self.args.iter().map(|a| quote_literal(a)).collect();
        format!(
            "CREATE TRIGGER {} {timing} {} ON {}{referencing} FOR EACH {level}{when} EXECUTE FUNCTION {}({})",
            quote_ident(&self.name),
            events.join(" OR "),
            self.table.quoted(),
            self.function,
            args.join(", ")
        )
    }

    pub fn drop_sql(&self) -> String {
        drop_trigger_sql(&self.table, &self.name)
    }
}

pub fn drop_trigger_sql(table: &QualifiedName, name: &str) -> String {
    format!(
        "DROP TRIGGER IF EXISTS {} ON {}",
        quote_ident(name),
        table.quoted()
    )
}

/// A trigger as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledTrigger {
    pub table: QualifiedName,
    pub name: String,
    pub tgtype: i16,
    pub args: Vec<String>,
    pub old_table: Option<String>,
    pub new_table: Option<String>,
    /// The trigger's definition as PostgreSQL prints it, when it has a WHEN condition.
    pub when: Option<String>,
    pub enabled: bool,
}

impl InstalledTrigger {
    fn matches(&self, spec: &TriggerSpec) -> bool {
        self.enabled
            && self.tgtype == spec.tgtype
            && self.args == spec.args
            && self.old_table == spec.old_table
            && self.new_table == spec.new_table
            && self.when.is_some() == spec.when.is_some()
            && literals(spec.when.as_deref().unwrap_or(""))
                .iter()
                .all(|l| self.when.as_deref().unwrap_or("").contains(l.as_str()))
    }
}

/// The string literals of a WHEN condition, quoted as PostgreSQL prints them back (`'on'`): the
/// installed definition must hold each (the role a condition names, the setting it reads).
fn literals(condition: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = condition;
    while let Some(start) = rest.find('\'') {
        let mut end = start + 1;
        let bytes = rest.as_bytes();
        loop {
            match bytes.get(end) {
                None => return out,
                Some(b'\'') if bytes.get(end + 1) == Some(&b'\'') => end += 2,
                Some(b'\'') => break,
                Some(_) => end += 1,
            }
        }
        out.push(rest[start..=end].to_string());
        rest = &rest[end + 1..];
    }
    out
}

/// Every trigger calling `function` (a `regprocedure` text such as `tandem.capture()`), on any table.
/// Empty when the function does not exist.
pub async fn installed(
    client: &Client,
    side: Side,
    function: &str,
) -> Result<Vec<InstalledTrigger>, DbError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, t.tgname::text, t.tgtype, t.tgargs, t.tgnargs,
                    t.tgoldtable::text, t.tgnewtable::text, t.tgenabled <> 'D',
                    CASE WHEN t.tgqual IS NOT NULL THEN pg_get_triggerdef(t.oid) END
               FROM pg_trigger t
               JOIN pg_class c ON c.oid = t.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE t.tgfoid = to_regprocedure($1)
              ORDER BY 1, 2, 3",
            &[&function],
        )
        .await
        .ctx(side, format!("listing the triggers that call {function}"))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let raw: Vec<u8> = row.get(4);
            let nargs: i16 = row.get(5);
            let args = raw
                .split(|b| *b == 0)
                .take(nargs as usize)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            InstalledTrigger {
                table: QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1)),
                name: row.get(2),
                tgtype: row.get(3),
                args,
                old_table: row.get(6),
                new_table: row.get(7),
                enabled: row.get(8),
                when: row.get(9),
            }
        })
        .collect())
}

/// What to do so that exactly `desired` exist among the triggers calling one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerChange {
    Create(TriggerSpec),
    /// Present but different (arguments, events, disabled): dropped and created again.
    Replace(TriggerSpec),
    /// Present on a table that is no longer configured.
    Drop {
        side: Side,
        table: QualifiedName,
        name: String,
    },
}

impl fmt::Display for TriggerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TriggerChange::Create(s) => write!(
                f,
                "create trigger {} on {}{}",
                s.name,
                s.table,
                describe_args(s)
            ),
            TriggerChange::Replace(s) => write!(
                f,
                "replace trigger {} on {} (it differs from the config){}",
                s.name,
                s.table,
                describe_args(s)
            ),
            TriggerChange::Drop { table, name, .. } => write!(
                f,
                "drop trigger {name} on {table} (table no longer configured)"
            ),
        }
    }
}

fn describe_args(s: &TriggerSpec) -> String {
    if s.args.is_empty() {
        String::new()
    } else {
        format!(" [{}]", s.args.join(", "))
    }
}

pub fn diff(
    side: Side,
    desired: &[TriggerSpec],
    installed: &[InstalledTrigger],
) -> Vec<TriggerChange> {
    let mut changes = Vec::new();
    for spec in desired {
        match installed
            .iter()
            .find(|i| i.table == spec.table && i.name == spec.name)
        {
            None => changes.push(TriggerChange::Create(spec.clone())),
            Some(i) if !i.matches(spec) => changes.push(TriggerChange::Replace(spec.clone())),
            Some(_) => {}
        }
    }
    for i in installed {
        if !desired
            .iter()
            .any(|s| s.table == i.table && s.name == i.name)
        {
            changes.push(TriggerChange::Drop {
                side,
                table: i.table.clone(),
                name: i.name.clone(),
            });
        }
    }
    changes
}

impl TriggerChange {
    pub fn sql(&self) -> Vec<String> {
        match self {
            TriggerChange::Create(spec) => vec![spec.create_sql()],
            TriggerChange::Replace(spec) => vec![spec.drop_sql(), spec.create_sql()],
            TriggerChange::Drop { table, name, .. } => vec![drop_trigger_sql(table, name)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TriggerSpec {
        TriggerSpec {
            side: Side::Desktop,
            table: QualifiedName::new("public", "job's"),
            name: "tandem_capture_update".into(),
            function: "\"tandem\".\"capture\"".into(),
            tgtype: tgtype::UPDATE,
            args: vec!["job_id".into(), "o'neil".into()],
            old_table: Some("tandem_old".into()),
            new_table: Some("tandem_new".into()),
            when: None,
        }
    }

    #[test]
    fn trigger_ddl_quotes_every_name() {
        assert_eq!(
            spec().create_sql(),
            "CREATE TRIGGER \"tandem_capture_update\" AFTER UPDATE ON \"public\".\"job's\" REFERENCING OLD TABLE AS \
             \"tandem_old\" NEW TABLE AS \"tandem_new\" FOR EACH STATEMENT EXECUTE FUNCTION \"tandem\".\"capture\"('job_id', 'o''neil')"
        );
    }

    #[test]
    fn a_when_condition_naming_another_literal_is_replaced() {
        let mut s = spec();
        s.when = Some("current_setting('tandem.applying', true) IS DISTINCT FROM 'on' OR session_user <> 'it''s me'".into());
        assert_eq!(
            literals(s.when.as_deref().unwrap()),
            vec!["'tandem.applying'", "'on'", "'it''s me'"]
        );
        let installed = |def: &str| InstalledTrigger {
            table: s.table.clone(),
            name: s.name.clone(),
            tgtype: s.tgtype,
            args: s.args.clone(),
            old_table: s.old_table.clone(),
            new_table: s.new_table.clone(),
            when: Some(def.to_string()),
            enabled: true,
        };
        // As PostgreSQL prints it back: casts added, the literals as written.
        let current = installed(
            "CREATE TRIGGER x BEFORE UPDATE ON t FOR EACH ROW WHEN ((current_setting('tandem.applying'::text, true) \
             IS DISTINCT FROM 'on'::text) OR (SESSION_USER <> 'it''s me'::name)) EXECUTE FUNCTION f()",
        );
        assert!(current.matches(&s));
        // An older definition, without the role: replaced.
        let older = installed(
            "CREATE TRIGGER x BEFORE UPDATE ON t FOR EACH ROW WHEN ((current_setting('tandem.applying'::text, true) \
             IS DISTINCT FROM 'on'::text)) EXECUTE FUNCTION f()",
        );
        assert!(!older.matches(&s));
    }

    #[test]
    fn diff_creates_replaces_and_drops() {
        let s = spec();
        let same = InstalledTrigger {
            table: s.table.clone(),
            name: s.name.clone(),
            tgtype: s.tgtype,
            args: s.args.clone(),
            old_table: s.old_table.clone(),
            new_table: s.new_table.clone(),
            when: None,
            enabled: true,
        };
        assert!(
            diff(
                Side::Desktop,
                std::slice::from_ref(&s),
                std::slice::from_ref(&same)
            )
            .is_empty()
        );
        let disabled = InstalledTrigger {
            enabled: false,
            ..same.clone()
        };
        assert_eq!(
            diff(Side::Desktop, std::slice::from_ref(&s), &[disabled]),
            vec![TriggerChange::Replace(s.clone())]
        );
        assert_eq!(
            diff(Side::Desktop, std::slice::from_ref(&s), &[]),
            vec![TriggerChange::Create(s.clone())]
        );
        let elsewhere = InstalledTrigger {
            table: QualifiedName::new("public", "gone"),
            ..same
        };
        let changes = diff(Side::Desktop, &[], &[elsewhere]);
        assert!(
            matches!(&changes[..], [TriggerChange::Drop { name, .. }] if name == "tandem_capture_update")
        );
    }
}
