//! The `tandem` binary: parses the command line, sets up logging, runs the command, maps the outcome to
//! an exit code (0 done or healthy, 1 failed or degraded, 2 usage, broken, or not on this platform).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{CommandFactory, Parser};
use tandem::cli::{
    Cli, Command, ConflictsAction, Keep, LogFormat, ReconcileDirection, ServiceAction, report,
};
use tandem::config::Config;
use tandem::ops::{
    check, conflicts as conflict, dead_letters as deadletters, reconcile, service, status as state,
};
use tandem::pipeline::RunOptions;
use tandem::setup::{self, Step};
use tandem::{db, demo, sample};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal (in a file or a service log the codes are noise), and never on
        // Windows, whose console shows them as text.
        .with_ansi(std::io::stderr().is_terminal() && !cfg!(windows));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let load =
        || Config::load(&cli.config).context("loading the config (-c FILE, or TANDEM_CONFIG)");
    match cli.command {
        Command::Init { dry_run } => init(&load()?, dry_run).await,
        Command::Check { json } => {
            let report = check::check(&load()?).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for item in &report.items {
                    println!("{item}");
                }
                let failed = report.failures().count();
                if failed == 0 {
                    println!("check: all good");
                } else {
                    println!("check: {failed} problem(s)");
                }
            }
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Uninstall { yes } => uninstall(&load()?, yes).await,
        Command::Seed { schema, scale } => {
            if !(scale > 0.0 && scale.is_finite()) {
                bail!("--scale must be a positive number");
            }
            let config = load()?;
            let mut desktop =
                db::connect(tandem::change::Side::Desktop, &config.desktop.url).await?;
            if schema {
                let cloud = db::connect(tandem::change::Side::Cloud, &config.cloud.url).await?;
                sample::create_schemas(&desktop, &cloud).await?;
                println!("created the sample tables on the desktop and in the cloud");
            }
            let report = sample::seed(&mut desktop, &config, scale).await?;
            for (table, n) in &report.counts {
                println!("  {table:<16} {n:>8}");
            }
            println!("seeded {} rows in {:.2?}", report.total(), report.elapsed);
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { scale, keep } => {
            demo::run(scale, keep).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { once, metrics_addr } => run_command(&load()?, once, metrics_addr).await,
        Command::Reconcile {
            tables,
            direction,
            dry_run,
            json,
        } => reconcile(&load()?, tables, direction, dry_run, json).await,
        Command::Status { json, watch } => status(&load()?, json, watch).await,
        Command::Conflicts { action, all, json } => {
            let action = conflicts_action(action, all);
            conflicts(&load()?, action, json).await
        }
        Command::DeadLetters { json, all, retry } => dead_letters(&load()?, json, all, retry).await,
        Command::Service { action } => {
            let done = match action {
                ServiceAction::Install => service::install(&cli.config),
                ServiceAction::Uninstall => service::uninstall(),
                ServiceAction::Run => service::dispatch(&cli.config),
            };
            match done {
                Ok(message) => println!("{message}"),
                Err(e @ service::ServiceError::NotWindows) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
                Err(e) => return Err(e.into()),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn status(config: &Config, json: bool, watch: bool) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdout().is_terminal();
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    loop {
        let s = state::collect(config).await;
        if json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            if watch && terminal {
                // Redrawn in place: cursor home, clear the screen.
                print!("\x1b[H\x1b[2J");
            }
            print!("{}", tandem::cli::status::render(&s));
        }
        std::io::stdout().flush()?;
        if !watch {
            return Ok(ExitCode::from(s.health.exit_code()));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(ExitCode::from(s.health.exit_code())),
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}

/// The action of `tandem conflicts [--all] [ACTION]`: listing by default; `--all` before the action
/// lists the settled ones too (a usage error with `resolve`).
fn conflicts_action(action: Option<ConflictsAction>, all: bool) -> ConflictsAction {
    match action.unwrap_or(ConflictsAction::List { all: false }) {
        ConflictsAction::List { all: listed } => ConflictsAction::List {
            all: all || listed,
        },
        ConflictsAction::Resolve { .. } if all => Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--all lists the settled conflicts too: use it with `tandem conflicts [list]`, not with resolve",
            )
            .exit(),
        resolve => resolve,
    }
}

async fn conflicts(
    config: &Config,
    action: ConflictsAction,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match action {
        ConflictsAction::List { all } => {
            let list = conflict::list(config, all).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for c in &list {
                    println!("{c}");
                }
                let open = list.iter().filter(|c| c.resolved_at.is_none()).count();
                if all {
                    println!("conflicts: {open} open, {} settled", list.len() - open);
                } else {
                    println!("conflicts: {open} open");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ConflictsAction::Resolve { ids, keep } => {
            let keep = match keep {
                Keep::Desktop => conflict::Keep::Desktop,
                Keep::Mobile => conflict::Keep::Mobile,
            };
            let done = conflict::resolve(config, &ids, keep).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                for r in &done {
                    println!("{r}");
                }
            }
            Ok(if done.iter().all(|r| r.resolved) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn print_steps(side: &str, url: &str, steps: &[Step]) {
    if steps.is_empty() {
        return;
    }
    println!("{side} ({url}):");
    for step in steps {
        println!("  {step}");
    }
}

async fn init(config: &Config, dry_run: bool) -> anyhow::Result<ExitCode> {
    let report = setup::init(config, dry_run).await?;
    for w in &report.warnings {
        println!("warning: {w}");
    }
    if report.is_empty() {
        println!("init: nothing to do; both databases are already set up for this config");
        return Ok(ExitCode::SUCCESS);
    }
    print_steps("desktop", &config.desktop.url.redacted(), &report.desktop);
    print_steps("cloud", &config.cloud.url.redacted(), &report.cloud);
    let n = report.desktop.len() + report.cloud.len();
    if dry_run {
        println!("init --dry-run: {n} change(s) would be made; nothing was changed");
    } else {
        println!("init: {n} change(s) made");
    }
    Ok(ExitCode::SUCCESS)
}

async fn uninstall(config: &Config, yes: bool) -> anyhow::Result<ExitCode> {
    let (mut desktop, mut cloud, plan) = setup::prepare_uninstall(config).await?;
    if plan.is_empty() {
        println!("uninstall: nothing to remove; tandem is not installed in either database");
        return Ok(ExitCode::SUCCESS);
    }
    print_steps("desktop", &config.desktop.url.redacted(), &plan.desktop);
    print_steps("cloud", &config.cloud.url.redacted(), &plan.cloud);
    for loss in &plan.losses {
        println!("will be lost: {loss}");
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("refusing to uninstall without confirmation: pass --yes");
        }
        print!("Remove all of the above? Type yes to go on: ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            println!("uninstall: cancelled, nothing changed");
            return Ok(ExitCode::FAILURE);
        }
    }
    setup::uninstall(&mut desktop, &mut cloud, &plan).await?;
    println!(
        "uninstall: {} change(s) made",
        plan.desktop.len() + plan.cloud.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Cancels `token` on ctrl-c or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down after the batch in flight");
        token.cancel();
    });
}

async fn run_command(
    config: &Config,
    once: bool,
    metrics_addr: Option<String>,
) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let report = service::serve(config, RunOptions { once }, metrics_addr, shutdown).await?;
    let (forward, reverse) = (report.forward, report.reverse);
    let (f, r) = (forward.outcome, reverse.outcome);
    println!(
        "run: forward {} batch(es), {} outbox row(s); {} row(s) written, {} deleted, {} conflict(s), {} dead letter(s), {} reconnect(s)",
        forward.batches,
        forward.outbox_rows,
        f.written,
        f.deleted,
        f.conflicts,
        f.dead_letters,
        forward.retries
    );
    println!(
        "run: reverse {} group(s), {} cloud transaction(s); {} row(s) written, {} deleted, {} conflict(s), {} dead letter(s), {} reconnect(s), {} group(s) received again staged",
        reverse.batches,
        reverse.outbox_rows,
        r.written,
        r.deleted,
        r.conflicts,
        r.dead_letters,
        reverse.retries,
        reverse.replays
    );
    // A parked table is a run that did not do all it should: say which, why and the fix, and fail.
    for (table, parked) in &report.parked {
        println!(
            "run: table {table} is parked: {}; fix: {}",
            parked.reason, parked.fix
        );
    }
    if report.parked.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

async fn reconcile(
    config: &Config,
    tables: Vec<String>,
    direction: ReconcileDirection,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let request = reconcile::Request {
        tables,
        direction: match direction {
            ReconcileDirection::Forward => reconcile::Direction::Forward,
            ReconcileDirection::Reverse => reconcile::Direction::Reverse,
            ReconcileDirection::Both => reconcile::Direction::Both,
        },
        dry_run,
        trigger: "command",
    };
    let progress = report::Progress::new(json);
    let report = reconcile::reconcile(config, &request, &progress).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report::print(&report);
    }
    Ok(if report.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn dead_letters(
    config: &Config,
    json: bool,
    all: bool,
    retry: bool,
) -> anyhow::Result<ExitCode> {
    if retry {
        let n = deadletters::retry_forward(config).await?;
        let reverse = deadletters::retry_reverse(config).await?;
        println!(
            "dead-letters: {n} forward dead letter(s) queued again, {} reverse one(s) re-sent from the cloud; `tandem run` applies them",
            reverse.resent
        );
        if !reverse.left.is_empty() {
            println!(
                "dead-letters: {} reverse dead letter(s) left open (ids {:?}): the cloud no longer holds their row as a mobile-owned row, or their table is no longer configured",
                reverse.left.len(),
                reverse.left
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let letters = deadletters::list(config, all).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&letters)?);
        return Ok(ExitCode::SUCCESS);
    }
    for d in &letters {
        let key = d
            .row_key
            .as_ref()
            .map(|k| k.to_string())
            .unwrap_or_default();
        let state = match (&d.resolved_at, &d.retried_at) {
            (Some(at), _) => format!("resolved {at}"),
            (None, Some(at)) => format!("open, retried {at}"),
            (None, None) => "open".to_string(),
        };
        println!(
            "#{} {} {} {key}: SQLSTATE {} {} ({} attempt(s), last {}, {state})",
            d.id, d.direction, d.table, d.sqlstate, d.message, d.attempts, d.failed_at
        );
    }
    let open = letters.iter().filter(|d| d.resolved_at.is_none()).count();
    println!(
        "dead-letters: {open} open{}",
        if all {
            format!(", {} in all", letters.len())
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}
