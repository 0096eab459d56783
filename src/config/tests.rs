use super::expand::expand_string;
use super::*;

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |var| {
        pairs
            .iter()
            .find(|(k, _)| *k == var)
            .map(|(_, v)| v.to_string())
    }
}

const URLS: &[(&str, &str)] = &[
    ("DESKTOP_URL", "postgresql://d@127.0.0.1:5432/desk"),
    ("CLOUD_URL", "postgresql://c:hunter2@127.0.0.1:5433/cloud"),
];

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse("test.toml", text, &env_of(URLS))
}

/// A config with the given `[[tables]]` text and valid URLs; returns the problems it has.
fn problems(tables: &str) -> Vec<String> {
    let text = format!(
        "[desktop]\nurl = \"${{DESKTOP_URL}}\"\n[cloud]\nurl = \"${{CLOUD_URL}}\"\n{tables}"
    );
    match parse(&text) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(other) => vec![other.to_string()],
    }
}

fn assert_one_problem(tables: &str, needles: &[&str]) {
    let found = problems(tables);
    assert_eq!(found.len(), 1, "expected one problem, got {found:#?}");
    for needle in needles {
        assert!(
            found[0].contains(needle),
            "{:?} does not mention {needle:?}",
            found[0]
        );
    }
}

#[test]
fn the_sample_configs_load() {
    let powerca =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/powerca.toml"))
            .unwrap();
    let config = parse(&powerca).unwrap();
    assert_eq!(config.tables.len(), 15);
    assert_eq!(config.cloud.slot, "tandem");
    assert_eq!(config.cloud.publication, "tandem");
    let reminder = config
        .tables
        .iter()
        .find(|t| t.table.desktop.name == "mbreminder")
        .unwrap();
    assert_eq!(reminder.table.cloud.name, "reminder");
    let jobtasks = config
        .tables
        .iter()
        .find(|t| t.table.desktop.name == "jobtasks")
        .unwrap();
    assert_eq!(
        jobtasks.identity,
        Identity::CloudKey {
            column: "jt_id".into(),
            scope: vec!["job_id".into()]
        }
    );
    assert_eq!(
        config
            .lookup_source(&jobtasks.lookups[0])
            .unwrap()
            .table
            .desktop
            .name,
        "jobshead"
    );
    assert_eq!(
        config.desktop.url.expose(),
        "postgresql://d@127.0.0.1:5432/desk"
    );

    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"))
            .unwrap();
    let example = parse(&example).unwrap();
    assert_eq!(example.tables.len(), 3);
    assert_eq!(example.sync, SyncConfig::default());
}

#[test]
fn defaults_apply() {
    let config = parse(
        "[desktop]\nurl='postgresql://a/b'\n[cloud]\nurl='postgresql://c/d'\n[[tables]]\ndesktop='t'\nkey=['id']\n",
    )
    .unwrap();
    assert_eq!(config.cloud.slot, "tandem");
    assert_eq!(config.cloud.publication, "tandem");
    let t = &config.tables[0];
    assert_eq!(t.table.cloud, t.table.desktop);
    assert_eq!(t.table.desktop.schema, "public");
    assert!(t.reverse);
    assert_eq!(config.sync, SyncConfig::default());
}

#[test]
fn environment_overrides_the_urls() {
    let env = env_of(&[
        ("DESKTOP_URL", "postgresql://from-file/d"),
        ("CLOUD_URL", "postgresql://from-file/c"),
        ("TANDEM_DESKTOP_URL", "postgresql://from-env/d"),
        ("TANDEM_CLOUD_URL", ""),
    ]);
    let text = "[desktop]\nurl='${DESKTOP_URL}'\n[cloud]\nurl='${CLOUD_URL}'\n[[tables]]\ndesktop='t'\nkey=['id']\n";
    let config = Config::parse("t", text, &env).unwrap();
    assert_eq!(config.desktop.url.expose(), "postgresql://from-env/d");
    // An empty override does not replace the file's value.
    assert_eq!(config.cloud.url.expose(), "postgresql://from-file/c");
}

#[test]
fn a_missing_url_names_the_variable() {
    let err = Config::parse(
        "t",
        "[desktop]\n[cloud]\nurl='postgresql://c/d'\n[[tables]]\ndesktop='t'\nkey=['id']\n",
        &env_of(&[]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("[desktop] url is missing"), "{err}");
    assert!(err.contains("TANDEM_DESKTOP_URL"), "{err}");
}

#[test]
fn unset_variables_are_errors_naming_where() {
    let err = Config::parse("t", "[desktop]\nurl='${NOPE}'\n[cloud]\n", &env_of(&[])).unwrap_err();
    assert!(
        matches!(&err, ConfigError::UnsetVariable { var, at, .. } if var == "NOPE" && at == "desktop.url"),
        "{err}"
    );
    assert!(err.to_string().contains("export NOPE"));
}

#[test]
fn dollar_escapes_and_bad_references() {
    let env = env_of(&[("X", "1")]);
    assert_eq!(
        expand_string("a$$b${X}c$", "k", "t", &env).unwrap(),
        "a$b1c$"
    );
    assert!(
        expand_string("${X", "k", "t", &env)
            .unwrap_err()
            .to_string()
            .contains("closing")
    );
    assert!(
        expand_string("${a-b}", "k", "t", &env)
            .unwrap_err()
            .to_string()
            .contains("not a variable name")
    );
}

#[test]
fn unknown_keys_are_errors() {
    let err = parse("[desktop]\nurl='x'\n[cloud]\nurl='y'\n[[tables]]\ndesktop='t'\nkey=['id']\nskip_to_clod=['a']\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("skip_to_clod"), "{err}");
}

#[test]
fn urls_are_redacted() {
    let config = parse("[desktop]\nurl='${DESKTOP_URL}'\n[cloud]\nurl='${CLOUD_URL}'\n[[tables]]\ndesktop='t'\nkey=['id']\n").unwrap();
    let shown = format!("{:?} {}", config, config.cloud.url);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("postgresql://c:***@127.0.0.1:5433/cloud"),
        "{shown}"
    );
    assert_eq!(
        redact_url("postgresql://h/d?user=u&password=s3cret&sslmode=require"),
        "postgresql://h/d?user=u&password=***&sslmode=require"
    );
    assert_eq!(
        redact_url("host=h password=s3cret dbname=d"),
        "host=h password=*** dbname=d"
    );
    assert_eq!(redact_url("postgresql://u@h/d"), "postgresql://u@h/d");
}

#[test]
fn rule_key_and_cloud_key_are_exclusive() {
    assert_one_problem(
        "[[tables]]\ndesktop='t'\nkey=['id']\ncloud_key='cid'\nscope=['g']\n",
        &["table t", "both `key` and `cloud_key`"],
    );
}

#[test]
fn rule_an_identity_is_required() {
    assert_one_problem(
        "[[tables]]\ndesktop='t'\n",
        &["table t", "neither `key` nor `cloud_key`"],
    );
}

#[test]
fn rule_cloud_key_needs_a_scope() {
    assert_one_problem(
        "[[tables]]\ndesktop='t'\ncloud_key='cid'\n",
        &["table t", "needs a `scope`"],
    );
    assert_one_problem(
        "[[tables]]\ndesktop='t'\ncloud_key='cid'\nscope=[]\n",
        &["scope = [] is empty"],
    );
}

#[test]
fn rule_scope_only_with_cloud_key() {
    assert_one_problem(
        "[[tables]]\ndesktop='t'\nkey=['id']\nscope=['g']\n",
        &["`scope` only applies"],
    );
}

#[test]
fn rule_identity_columns_cannot_be_skipped() {
    assert_one_problem(
        "[[tables]]\ndesktop='t'\nkey=['id']\nskip_to_cloud=['id']\n",
        &["\"id\" identifies rows"],
    );
}

#[test]
fn rule_lookup_from_must_be_configured() {
    assert_one_problem(
        "[[tables]]\ndesktop='jobtasks'\ncloud_key='jt_id'\nscope=['job_id']\nlookups=[{column='client_id', from='jobshead', on='job_id'}]\n",
        &["table jobtasks", "\"jobshead\" is not a configured table"],
    );
}

#[test]
fn rule_lookup_on_must_be_the_key_of_from() {
    assert_one_problem(
        "[[tables]]\ndesktop='jobshead'\nkey=['job_id']\n[[tables]]\ndesktop='jobtasks'\ncloud_key='jt_id'\nscope=['job_id']\nlookups=[{column='client_id', from='jobshead', on='client_id'}]\n",
        &["not jobshead's key"],
    );
}

#[test]
fn rule_lookup_from_may_name_the_cloud_table() {
    assert!(problems(
        "[[tables]]\ndesktop='mbjobs'\ncloud='jobshead'\nkey=['job_id']\n[[tables]]\ndesktop='jobtasks'\ncloud_key='jt_id'\nscope=['job_id']\nlookups=[{column='client_id', from='jobshead', on='job_id'}]\n"
    )
    .is_empty());
}

#[test]
fn rule_tables_are_listed_once() {
    assert_one_problem(
        "[[tables]]\ndesktop='t'\nkey=['id']\n[[tables]]\ndesktop='public.t'\ncloud='u'\nkey=['id']\n",
        &["listed twice"],
    );
    assert_one_problem(
        "[[tables]]\ndesktop='t'\ncloud='x'\nkey=['id']\n[[tables]]\ndesktop='u'\ncloud='x'\nkey=['id']\n",
        &["target of two"],
    );
}

#[test]
fn rule_slot_names_follow_postgres() {
    let err = parse("[desktop]\nurl='x'\n[cloud]\nurl='y'\nslot='Tandem-1'\n[[tables]]\ndesktop='t'\nkey=['id']\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("slot = \"Tandem-1\""), "{err}");
}

#[test]
fn rule_at_least_one_table() {
    assert_one_problem("", &["no [[tables]]"]);
}

#[test]
fn all_problems_are_reported_at_once() {
    let found = problems(
        "[[tables]]\ndesktop='a'\n[[tables]]\ndesktop='b'\ncloud_key='x'\n[[tables]]\ndesktop='c.d.e'\nkey=['id']\n",
    );
    assert_eq!(found.len(), 3, "{found:#?}");
}

#[test]
fn the_reconcile_schedule_is_a_time_of_day() {
    let with = |at: &str| {
        parse(&format!(
            "[desktop]\nurl='x'\n[cloud]\nurl='y'\n[reconcile]\nat={at:?}\n[[tables]]\ndesktop='t'\nkey=['id']\n"
        ))
    };
    assert_eq!(with("02:00").unwrap().reconcile.at, Some((2, 0)));
    assert_eq!(with("23:59").unwrap().reconcile.at, Some((23, 59)));
    for bad in ["24:00", "2am", "02:0", "12:60", ""] {
        let err = with(bad).unwrap_err().to_string();
        assert!(
            err.contains("[reconcile] at") && err.contains("HH:MM"),
            "{bad}: {err}"
        );
    }
    let none = parse("[desktop]\nurl='x'\n[cloud]\nurl='y'\n[[tables]]\ndesktop='t'\nkey=['id']\n");
    assert_eq!(none.unwrap().reconcile.at, None);
}

#[test]
fn a_tables_policy_overrides_the_project_default() {
    let text = "[desktop]\nurl = \"${DESKTOP_URL}\"\n[cloud]\nurl = \"${CLOUD_URL}\"\n\
                [conflicts]\npolicy = \"mobile\"\n\
                [[tables]]\ndesktop = \"a\"\nkey = [\"id\"]\n\
                [[tables]]\ndesktop = \"b\"\nkey = [\"id\"]\npolicy = \"manual\"\n";
    let config = parse(text).unwrap();
    assert_eq!(config.conflicts.policy, Policy::Mobile);
    assert_eq!(config.tables[0].policy, Policy::Mobile);
    assert_eq!(config.tables[1].policy, Policy::Manual);
    // The default when nothing says: latest.
    let plain = problems("[[tables]]\ndesktop = \"a\"\nkey = [\"id\"]\npolicy = \"first\"\n");
    assert_eq!(plain.len(), 1, "{plain:?}");
    assert!(plain[0].contains("first"), "{plain:?}");
    let text = "[desktop]\nurl = \"${DESKTOP_URL}\"\n[cloud]\nurl = \"${CLOUD_URL}\"\n\
                [[tables]]\ndesktop = \"a\"\nkey = [\"id\"]\n";
    assert_eq!(parse(text).unwrap().tables[0].policy, Policy::Latest);
}
