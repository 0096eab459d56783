//! The deployment files in `deploy/`: the Prometheus alerts pass promtool's checks and its unit
//! tests, every alert has a test case that fires it and one that must not, and the alerts and the
//! Grafana dashboard read only series that `tandem run` exports, so a renamed metric breaks a test
//! here instead of an alert that silently never fires.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The series tandem exports (the names live once, in `tandem::telemetry`).
const METRICS: &[&str] = tandem::telemetry::ALL;

/// The histograms among [`METRICS`]: a query reads their `_bucket`, `_sum` and `_count` series.
const HISTOGRAMS: &[&str] = &["tandem_apply_latency_seconds"];

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yml";
const DASHBOARD: &str = "deploy/grafana/tandem.json";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// A series name `tandem run` exports (a histogram's by one of its three suffixes).
fn exported(name: &str) -> bool {
    METRICS.contains(&name)
        || HISTOGRAMS.iter().any(|h| {
            name.strip_prefix(h)
                .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
        })
}

/// Runs promtool in the repository root and returns (success, stdout + stderr).
fn promtool(args: &[&str]) -> (bool, String) {
    match Command::new("promtool").arg("--version").output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool not found: install Debian's prometheus package \
             (apt-get install -y --no-install-recommends prometheus)"
        ),
        Err(e) => panic!("running promtool --version: {e}"),
        Ok(_) => {}
    }
    let out = crate::support::output_of(
        Command::new("promtool")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR")),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// One rule of alerts.yml: its alert name, its expression, and its whole block as one line (YAML
/// folds a `>-` scalar's lines with spaces, so text searched in it reads as the rule renders it).
struct Rule {
    alert: String,
    expr: String,
    text: String,
}

/// The rules of alerts.yml, read line by line in the layout the file keeps: each rule starts with
/// `- alert: Name`, its `expr:` is on one line or a block scalar (`>-`, `|`) indented below it.
/// `alert_rules_pass_promtool` checks that promtool finds as many rules.
fn rules(yaml: &str) -> Vec<Rule> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut rules: Vec<Rule> = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            rules.push(Rule {
                alert: name.trim().to_string(),
                expr: String::new(),
                text: String::new(),
            });
            continue;
        }
        let Some(rule) = rules.last_mut() else {
            continue;
        };
        if trimmed.starts_with('#') {
            continue;
        }
        rule.text.push_str(trimmed);
        rule.text.push(' ');
        let Some(expr) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let expr = expr.trim();
        if [">-", ">", "|", "|-"].contains(&expr) {
            let mut parts = Vec::new();
            while let Some(next) = lines.peek() {
                if !next.trim().is_empty() && indent(next) <= indent(line) {
                    break;
                }
                parts.push(next.trim().to_string());
                lines.next();
            }
            rule.expr = parts.join(" ").trim().to_string();
        } else {
            rule.expr = expr.trim_matches(|c| c == '\'' || c == '"').to_string();
        }
        rule.text.push_str(&rule.expr);
        rule.text.push(' ');
    }
    rules
}

/// The metric names a PromQL expression reads: its identifiers outside strings, label matchers
/// (`{...}`) and ranges (`[...]`), less functions (a name followed by `(`), keywords, aggregation
/// operators and the label lists of `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    // The index just past the bracket that closes the one at `i`.
    let close = |mut i: usize, open: char, shut: char| {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => {
                    let quote = chars[i];
                    i += 1;
                    while i < chars.len() && chars[i] != quote {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == shut => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced {open} in {expr}");
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = close(i, '{', '}');
        } else if c == '[' {
            i = close(i, '[', ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_digit() || c == '.' || c == '$' {
            // A number, a duration, or a Grafana variable.
            i += 1;
            while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_space(i);
            if LABEL_LISTS.contains(&word.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = close(next, '(', ')');
                }
            } else if chars.get(next) != Some(&'(')
                && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_finds_the_series_a_query_reads() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, direction) (rate(a_bucket{x="b c", y=~"$v"}[$__rate_interval])))
           / on(instance) group_left(table) b_total offset 5m > bool 1e3 unless sum(c) without (d) and 'e'"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_bucket", "b_total", "c"]
    );
}

#[test]
fn alert_rules_pass_promtool() {
    let expected = rules(&read(ALERTS)).len();
    let (ok, text) = promtool(&["check", "rules", "--lint-fatal", ALERTS]);
    assert!(ok, "promtool check rules {ALERTS} failed:\n{text}");
    assert!(
        text.contains(&format!("SUCCESS: {expected} rules found")),
        "promtool found a different number of rules than the {expected} this test reads from \
         {ALERTS} (keep its layout: `- alert:` then `expr:`):\n{text}"
    );
}

#[test]
fn alert_unit_tests_pass() {
    let (ok, text) = promtool(&["test", "rules", ALERTS_TEST]);
    assert!(ok, "promtool test rules {ALERTS_TEST} failed:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_has_a_case_that_fires_it_and_one_that_must_not() {
    let alerts: BTreeSet<String> = rules(&read(ALERTS)).into_iter().map(|r| r.alert).collect();
    let (mut firing, mut silent) = (BTreeSet::new(), BTreeSet::new());
    let test = read(ALERTS_TEST);
    let mut lines = test.lines().map(str::trim).filter(|l| !l.is_empty());
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("alertname:") else {
            continue;
        };
        let name = name.trim().to_string();
        assert!(
            alerts.contains(&name),
            "{ALERTS_TEST} tests alert {name}, which {ALERTS} does not have (a case expecting no \
             alert of a wrong name passes without testing anything)"
        );
        let exp = lines
            .find(|l| l.starts_with("exp_alerts:"))
            .unwrap_or_else(|| panic!("{ALERTS_TEST}: the case of {name} has no exp_alerts"));
        if exp.trim_start_matches("exp_alerts:").trim() == "[]" {
            silent.insert(name);
        } else if lines.next().is_some_and(|l| l.starts_with("- exp_labels:")) {
            firing.insert(name);
        } else {
            panic!("{ALERTS_TEST}: the case of {name} neither expects no alert ([]) nor lists one");
        }
    }
    let never_fired: Vec<_> = alerts.difference(&firing).collect();
    assert!(
        never_fired.is_empty(),
        "no case in {ALERTS_TEST} fires {never_fired:?}"
    );
    let never_silent: Vec<_> = alerts.difference(&silent).collect();
    assert!(
        never_silent.is_empty(),
        "no case in {ALERTS_TEST} checks that {never_silent:?} stays silent"
    );
}

#[test]
fn alerts_read_only_exported_series_and_name_their_runbook() {
    let rules = rules(&read(ALERTS));
    assert!(!rules.is_empty(), "no rules read from {ALERTS}");
    for rule in &rules {
        let names = metric_names(&rule.expr);
        assert!(
            !names.is_empty(),
            "{}: no series in `{}`",
            rule.alert,
            rule.expr
        );
        for name in names {
            assert!(
                exported(&name),
                "alert {} reads {name}, which tandem does not export (`{}`)",
                rule.alert,
                rule.expr
            );
        }
        assert!(
            ["severity: warning ", "severity: critical "]
                .iter()
                .any(|s| rule.text.contains(s)),
            "alert {} has no severity warning|critical",
            rule.alert
        );
        for needle in [
            "summary: ",
            "description: ",
            "Runbook: README, Operations",
            "Fix: ",
        ] {
            assert!(
                rule.text.contains(needle),
                "alert {} lacks `{needle}`: {}",
                rule.alert,
                rule.text
            );
        }
    }
}

/// Every `expr` of the dashboard, with where it is.
fn dashboard_exprs(value: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(expr)) => {
                        out.push((at.to_string(), expr.clone()))
                    }
                    _ => dashboard_exprs(v, &format!("{at}.{key}"), out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                dashboard_exprs(v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

#[test]
fn dashboard_shows_every_series_and_only_exported_ones() {
    let dash = dashboard();
    assert_eq!(dash["schemaVersion"], 39, "{DASHBOARD}: schemaVersion");
    assert!(
        dash["__inputs"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i["name"] == "DS_PROMETHEUS")),
        "{DASHBOARD}: no DS_PROMETHEUS datasource input"
    );
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].to_string()),
            "panel id {} twice",
            panel["id"]
        );
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {} does not use the datasource input",
                panel["title"]
            );
        }
    }

    let mut exprs = Vec::new();
    dashboard_exprs(&dash, "", &mut exprs);
    for variable in dash["templating"]["list"].as_array().expect("templating") {
        let query = variable["definition"].as_str().expect("a variable's query");
        let (series, _label) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable {}: not label_values(...)", variable["name"]));
        exprs.push((format!("variable {}", variable["name"]), series.to_string()));
    }
    let mut shown = BTreeSet::new();
    for (at, expr) in &exprs {
        for name in metric_names(expr) {
            assert!(
                exported(&name),
                "{DASHBOARD} {at} reads {name}, which tandem does not export (`{expr}`)"
            );
            shown.insert(name);
        }
    }
    let missing: Vec<_> = METRICS
        .iter()
        .filter(|m| !shown.iter().any(|s| s.starts_with(*m)))
        .collect();
    assert!(
        missing.is_empty(),
        "{DASHBOARD} has no panel for {missing:?}"
    );
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard(), "", &mut exprs);
    assert!(!exprs.is_empty(), "{DASHBOARD}: no queries");
    // Each query as a recording rule, Grafana's variables replaced by values, for promtool to parse.
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", "localhost:9187");
        let quoted = serde_json::to_string(&expr).expect("a string");
        yaml.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {quoted}\n"
        ));
    }
    let path = std::env::temp_dir().join(format!("tandem-dashboard-{}.yml", std::process::id()));
    std::fs::write(&path, yaml).expect("writing the dashboard's queries");
    let (ok, text) = promtool(&["check", "rules", path.to_str().expect("a UTF-8 path")]);
    let _ = std::fs::remove_file(&path);
    assert!(ok, "a query of {DASHBOARD} is not valid PromQL:\n{text}");
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{text}"
    );
}
