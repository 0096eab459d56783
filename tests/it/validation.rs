//! The config checked against live schemas: one test per rule. (Rules that need no database, such as a
//! lookup whose `from` is not configured, are unit tests in src/config/tests.rs.)

use tandem::catalog::validate::{Finding, Severity};
use tandem::setup;

use crate::support::TestDb;

/// Creates the given tables on each side, then validates `tables` (config text) against them.
async fn findings(desktop_sql: &str, cloud_sql: &str, tables: &str) -> Vec<Finding> {
    let db = TestDb::new().await;
    let (desktop, cloud) = (db.desktop().await, db.cloud().await);
    desktop.batch_execute(desktop_sql).await.unwrap();
    cloud.batch_execute(cloud_sql).await.unwrap();
    let config = db.config(tables).unwrap();
    setup::load_and_validate(&config, &desktop, &cloud)
        .await
        .unwrap()
}

fn only(found: &[Finding], severity: Severity, needles: &[&str]) {
    assert_eq!(found.len(), 1, "expected one finding, got {found:#?}");
    assert_eq!(found[0].severity, severity, "{found:#?}");
    let text = found[0].to_string();
    for needle in needles {
        assert!(
            text.contains(needle),
            "{text:?} does not mention {needle:?}"
        );
    }
}

const D_CLIENT: &str = "CREATE TABLE client (id int PRIMARY KEY, name text, notes text)";
const C_CLIENT: &str = "CREATE TABLE client (id int PRIMARY KEY, name text, notes text, source char(1), created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now())";
const CLIENT: &str = "[[tables]]\ndesktop = \"client\"\nkey = [\"id\"]\n";

#[tokio::test]
async fn a_matching_config_has_no_findings() {
    assert!(findings(D_CLIENT, C_CLIENT, CLIENT).await.is_empty());
}

#[tokio::test]
async fn the_sample_config_has_no_findings() {
    let db = TestDb::sample().await;
    let found =
        setup::load_and_validate(&db.sample_config(), &db.desktop().await, &db.cloud().await)
            .await
            .unwrap();
    assert!(found.is_empty(), "{found:#?}");
}

#[tokio::test]
async fn rule_unknown_desktop_table() {
    let found = findings("", C_CLIENT, CLIENT).await;
    only(
        &found,
        Severity::Error,
        &["desktop table client does not exist", "fix `desktop =`"],
    );
}

#[tokio::test]
async fn rule_unknown_cloud_table() {
    let found = findings(
        D_CLIENT,
        C_CLIENT,
        "[[tables]]\ndesktop = \"client\"\ncloud = \"customer\"\nkey = [\"id\"]\n",
    )
    .await;
    only(
        &found,
        Severity::Error,
        &["cloud table customer does not exist", "fix `cloud =`"],
    );
}

#[tokio::test]
async fn rule_unknown_column_named_in_the_config() {
    let found = findings(
        D_CLIENT,
        C_CLIENT,
        "[[tables]]\ndesktop = \"client\"\nkey = [\"id\"]\nskip_to_cloud = [\"nots\"]\n",
    )
    .await;
    only(
        &found,
        Severity::Error,
        &[
            "column nots",
            "`skip_to_cloud` names column \"nots\"",
            "desktop table client does not have",
        ],
    );
    let found = findings(
        D_CLIENT,
        C_CLIENT,
        "[[tables]]\ndesktop = \"client\"\nkey = [\"id\"]\nskip_to_desktop = [\"gone\"]\n",
    )
    .await;
    only(
        &found,
        Severity::Error,
        &[
            "`skip_to_desktop` names column \"gone\"",
            "cloud table client",
        ],
    );
}

#[tokio::test]
async fn rule_desktop_column_without_a_cloud_column() {
    let found = findings(
        "CREATE TABLE client (id int PRIMARY KEY, name text, notes text, legacy_code text)",
        C_CLIENT,
        CLIENT,
    )
    .await;
    only(
        &found,
        Severity::Error,
        &[
            "desktop column client.legacy_code",
            "list it in skip_to_cloud",
        ],
    );
    let skipped = findings(
        "CREATE TABLE client (id int PRIMARY KEY, name text, notes text, legacy_code text)",
        C_CLIENT,
        "[[tables]]\ndesktop = \"client\"\nkey = [\"id\"]\nskip_to_cloud = [\"legacy_code\"]\n",
    )
    .await;
    assert!(skipped.is_empty(), "{skipped:#?}");
}

#[tokio::test]
async fn rule_cloud_column_without_a_desktop_column() {
    let cloud = "CREATE TABLE client (id int PRIMARY KEY, name text, notes text, photo_url text, source char(1))";
    let found = findings(D_CLIENT, cloud, CLIENT).await;
    only(
        &found,
        Severity::Error,
        &["cloud column client.photo_url", "skip_to_desktop"],
    );
    let kept = findings(
        D_CLIENT,
        cloud,
        "[[tables]]\ndesktop = \"client\"\nkey = [\"id\"]\nskip_to_desktop = [\"photo_url\"]\n",
    )
    .await;
    assert!(kept.is_empty(), "{kept:#?}");
    // Cloud-only and NOT NULL without a default: every insert from the desktop would fail.
    let strict = "CREATE TABLE client (id int PRIMARY KEY, name text, notes text, photo_url text NOT NULL, source char(1))";
    let found = findings(
        D_CLIENT,
        strict,
        "[[tables]]\ndesktop = \"client\"\nkey = [\"id\"]\nskip_to_desktop = [\"photo_url\"]\n",
    )
    .await;
    only(
        &found,
        Severity::Error,
        &[
            "NOT NULL without a default",
            "give client.photo_url a default",
        ],
    );
}

#[tokio::test]
async fn rule_key_not_unique_on_the_cloud() {
    let found = findings(
        D_CLIENT,
        "CREATE TABLE client (id int, name text, notes text, source char(1)); CREATE INDEX ON client (id)",
        CLIENT,
    )
    .await;
    only(
        &found,
        Severity::Error,
        &[
            "key [id] is not unique on cloud table client",
            "CREATE UNIQUE INDEX ON \"public\".\"client\" (\"id\")",
        ],
    );
}

#[tokio::test]
async fn rule_key_without_a_desktop_index_warns() {
    let found = findings(
        "CREATE TABLE client (id int, name text, notes text)",
        C_CLIENT,
        CLIENT,
    )
    .await;
    only(
        &found,
        Severity::Warning,
        &["no index on desktop table client", "CREATE INDEX ON"],
    );
}

#[tokio::test]
async fn rule_cloud_table_without_source() {
    let found = findings(
        D_CLIENT,
        "CREATE TABLE client (id int PRIMARY KEY, name text, notes text)",
        CLIENT,
    )
    .await;
    only(
        &found,
        Severity::Error,
        &["has no `source` column", "ADD COLUMN source char(1)"],
    );
    let found = findings(
        D_CLIENT,
        "CREATE TABLE client (id int PRIMARY KEY, name text, notes text, source int)",
        CLIENT,
    )
    .await;
    only(
        &found,
        Severity::Error,
        &["`source` is integer", "char(1) or text"],
    );
}

const D_TASKS: &str = "CREATE TABLE task (job_id int, title text); CREATE INDEX ON task (job_id)";
const C_TASKS: &str = "CREATE TABLE task (task_id bigserial PRIMARY KEY, job_id int, title text, source char(1)); CREATE INDEX ON task (job_id)";
const TASKS: &str =
    "[[tables]]\ndesktop = \"task\"\ncloud_key = \"task_id\"\nscope = [\"job_id\"]\n";

#[tokio::test]
async fn a_matching_cloud_key_table_has_no_findings() {
    assert!(findings(D_TASKS, C_TASKS, TASKS).await.is_empty());
}

#[tokio::test]
async fn rule_scope_without_a_desktop_index_warns() {
    let found = findings("CREATE TABLE task (job_id int, title text)", C_TASKS, TASKS).await;
    only(
        &found,
        Severity::Warning,
        &[
            "scope [job_id] has no index on desktop table task",
            "CREATE INDEX ON \"public\".\"task\" (\"job_id\")",
        ],
    );
}

#[tokio::test]
async fn rule_cloud_key_must_be_a_numbered_unique_column() {
    let found = findings(D_TASKS, "CREATE TABLE task (task_id bigint PRIMARY KEY, job_id int, title text, source char(1)); CREATE INDEX ON task (job_id)", TASKS).await;
    only(
        &found,
        Severity::Error,
        &["cloud_key task_id has no default", "bigserial"],
    );
    let found = findings(D_TASKS, "CREATE TABLE task (task_id bigserial, job_id int, title text, source char(1)); CREATE INDEX ON task (job_id)", TASKS).await;
    only(
        &found,
        Severity::Error,
        &["cloud_key task_id is not unique"],
    );
    let found = findings(
        "CREATE TABLE task (task_id int, job_id int, title text); CREATE INDEX ON task (job_id)",
        C_TASKS,
        TASKS,
    )
    .await;
    only(
        &found,
        Severity::Error,
        &["cloud_key task_id also exists on the desktop"],
    );
}

#[tokio::test]
async fn rule_types_that_differ_warn() {
    let found = findings(
        D_CLIENT,
        "CREATE TABLE client (id int PRIMARY KEY, name varchar(10), notes text, source char(1))",
        CLIENT,
    )
    .await;
    only(
        &found,
        Severity::Warning,
        &[
            "types differ: desktop text, cloud character varying(10)",
            "dead letters",
        ],
    );
}

#[tokio::test]
async fn rule_lookups_read_existing_columns() {
    let lookup = "[[tables]]\ndesktop = \"job\"\nkey = [\"job_id\"]\n\
                  [[tables]]\ndesktop = \"task\"\ncloud_key = \"task_id\"\nscope = [\"job_id\"]\n\
                  lookups = [{ column = \"client_id\", from = \"job\", on = \"job_id\" }]\n";
    let desktop = "CREATE TABLE job (job_id int PRIMARY KEY, client_id int); CREATE TABLE task (job_id int, title text); CREATE INDEX ON task (job_id)";
    let cloud = "CREATE TABLE job (job_id int PRIMARY KEY, client_id int, source char(1));
                 CREATE TABLE task (task_id bigserial PRIMARY KEY, job_id int, client_id int, title text, source char(1)); CREATE INDEX ON task (job_id)";
    assert!(findings(desktop, cloud, lookup).await.is_empty());
    let found = findings(
        "CREATE TABLE job (job_id int PRIMARY KEY, customer int); CREATE TABLE task (job_id int, title text); CREATE INDEX ON task (job_id)",
        &cloud.replace("CREATE TABLE job (job_id int PRIMARY KEY, client_id int, source", "CREATE TABLE job (job_id int PRIMARY KEY, customer int, source"),
        lookup,
    )
    .await;
    only(
        &found,
        Severity::Error,
        &[
            "lookup of client_id",
            "reads column \"client_id\" of desktop table job",
        ],
    );
    // Without the lookup, the cloud-only client_id would be unaccounted for.
    let found = findings(
        desktop,
        cloud,
        &lookup.replace(
            "lookups = [{ column = \"client_id\", from = \"job\", on = \"job_id\" }]\n",
            "",
        ),
    )
    .await;
    only(&found, Severity::Error, &["cloud column task.client_id"]);
}
