//! What `init` installs on the desktop: schema `tandem` (outbox, progress, conflicts, dead letters,
//! the capture function) and the capture triggers on every configured table.
//!
//! Capture keys, not rows: a statement-level trigger writes which keys (or scopes, for cloud-key tables)
//! a statement touched, old and new; the outbox reader ([`crate::capture::outbox`]) re-reads the current
//! rows for them.

use crate::change::Side;
use crate::config::Config;

use super::triggers::{TriggerSpec, tgtype};

/// tandem's objects on the desktop (schema, outbox, progress, conflicts, dead letters, capture function).
pub const INSTALL_SQL: &str = concat!(
    include_str!("../../sql/install/common.sql"),
    include_str!("../../sql/install/desktop.sql")
);

/// What must exist for the desktop install to be whole.
pub const REQUIRED_RELATIONS: &[&str] = &[
    "tandem.installation",
    "tandem.progress",
    "tandem.conflicts",
    "tandem.dead_letters",
    "tandem.outbox",
    "tandem.table_state",
    "tandem.reconciles",
    "tandem.cuts",
];
pub const CAPTURE_FUNCTION: &str = "tandem.capture()";
pub const REQUIRED_FUNCTIONS: &[&str] = &[CAPTURE_FUNCTION];

const OLD_TABLE: &str = "tandem_old";
const NEW_TABLE: &str = "tandem_new";

/// The four capture triggers of every configured table; their arguments are the key (or scope) columns.
pub fn capture_triggers(config: &Config) -> Vec<TriggerSpec> {
    let mut specs = Vec::new();
    for table in &config.tables {
        let args = table.identity.capture_columns().to_vec();
        let events = [
            (
                "tandem_capture_insert",
                tgtype::INSERT,
                None,
                Some(NEW_TABLE),
            ),
            (
                "tandem_capture_update",
                tgtype::UPDATE,
                Some(OLD_TABLE),
                Some(NEW_TABLE),
            ),
            (
                "tandem_capture_delete",
                tgtype::DELETE,
                Some(OLD_TABLE),
                None,
            ),
            ("tandem_capture_truncate", tgtype::TRUNCATE, None, None),
        ];
        for (name, event, old, new) in events {
            specs.push(TriggerSpec {
                side: Side::Desktop,
                table: table.table.desktop.clone(),
                name: name.to_string(),
                function: "\"tandem\".\"capture\"".to_string(),
                tgtype: event,
                args: if event == tgtype::TRUNCATE {
                    Vec::new()
                } else {
                    args.clone()
                },
                old_table: old.map(str::to_string),
                new_table: new.map(str::to_string),
                when: None,
            });
        }
    }
    specs
}
