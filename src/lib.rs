//! tandem: two-way change-data-capture between a legacy desktop PostgreSQL and Supabase.
//!
//! The modules follow the data flow, in layers; a module uses only the layers below its own (the test
//! at the end of this file checks it):
//!
//! | layer | modules | what |
//! |---|---|---|
//! | 0 | [`change`], [`retry`], [`cluster`] | the vocabulary every stage speaks; the backoff policy; throwaway clusters |
//! | 1 | [`config`] | which tables travel and how they map |
//! | 2 | [`db`] | connections, tandem's session settings, error kinds |
//! | 3 | [`catalog`], [`sample`] | what the live schemas hold, and the config checked against them |
//! | 4 | [`transform`], [`expr`] | the mapping resolved against both schemas; the SQL every statement is made of (names, what "equal" means) |
//! | 5 | [`capture`] | sources only: the desktop outbox, the cloud's logical replication stream |
//! | 6 | [`commit`], [`setup`] | the commit engine and its plan builders; what `init` installs |
//! | 7 | [`pipeline`] | the workers: batching, reconnecting, shutdown |
//! | 8 | [`ops`] | what operators run: check, dead letters |
//! | 9 | [`cli`] | the command line |
//! | 10 | [`demo`] | the embedded demo (it shows what the command line shows) |

pub mod capture;
pub mod catalog;
pub mod change;
pub mod cli;
pub mod cluster;
pub mod commit;
pub mod config;
pub mod db;
pub mod demo;
pub mod expr;
pub mod ops;
pub mod pipeline;
pub mod retry;
pub mod sample;
pub mod setup;
pub mod telemetry;
pub mod transform;

#[cfg(test)]
mod layers {
    use std::path::Path;

    /// The layer of each top-level module (see the table above).
    const LAYERS: &[(&str, u8)] = &[
        ("change", 0),
        ("retry", 0),
        ("cluster", 0),
        ("telemetry", 0),
        ("config", 1),
        ("db", 2),
        ("catalog", 3),
        ("sample", 3),
        ("transform", 4),
        ("expr", 4),
        ("capture", 5),
        ("commit", 6),
        ("setup", 6),
        ("pipeline", 7),
        ("ops", 8),
        ("cli", 9),
        ("demo", 10),
    ];

    fn layer(module: &str) -> u8 {
        LAYERS
            .iter()
            .find(|(m, _)| *m == module)
            .unwrap_or_else(|| panic!("module {module} has no layer in lib.rs"))
            .1
    }

    /// The top-level modules a source file names as `crate::<module>`.
    fn uses(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                let name: String = rest[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
                rest = &rest[at + 7..];
            }
        }
        found
    }

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn no_module_uses_a_layer_above_its_own() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut wrong = Vec::new();
        for file in files {
            let relative = file.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap().as_os_str();
            let module = first.to_str().unwrap().trim_end_matches(".rs");
            if matches!(module, "lib" | "main") {
                continue;
            }
            let own = layer(module);
            for used in uses(&std::fs::read_to_string(&file).unwrap()) {
                if used != module && layer(&used) >= own {
                    wrong.push(format!(
                        "{} (layer {own}) uses crate::{used} (layer {})",
                        relative.display(),
                        layer(&used)
                    ));
                }
            }
        }
        wrong.sort();
        wrong.dedup();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
