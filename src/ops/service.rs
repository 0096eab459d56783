//! tandem as a long-lived service. [`serve`] is what streams: both directions, plus the daily reconcile
//! of `[reconcile] at`; `tandem run` runs it in a console, and on Windows the service manager runs it as
//! the service `tandem` ([`install`], [`uninstall`], and [`dispatch`], the entry point the manager
//! starts). The service replaces the old sync's `.bat` files and Task Scheduler entries: it starts at
//! boot, is restarted when it fails, and stops (the batch in flight finishing) on the manager's Stop or
//! Shutdown control. A service has no console, so its log (stderr) goes to a file beside the config.
//! On Linux the systemd unit `deploy/systemd/tandem.service` does the same job, and these commands only
//! say so.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::ops::reconcile;
use crate::pipeline::{self, RunOptions, RunReport};

/// The service's name (`sc start tandem`), and what the Services console shows.
pub const NAME: &str = "tandem";
pub const DISPLAY_NAME: &str = "tandem replicator";

/// The service's exit code (`sc query tandem`, service-specific) when it ended on an error; the error is
/// in the log file.
pub const EXIT_FAILED: u32 = 1;
/// The service's exit code when it could not open its log file (so it wrote nothing anywhere).
pub const EXIT_NO_LOG: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "`tandem service` manages a Windows service; on Linux run tandem under systemd with the unit \
         deploy/systemd/tandem.service, or in a console with `tandem run`"
    )]
    NotWindows,
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the service would not start with this config; fix it first")]
    Config(#[source] ConfigError),
    #[error("the run failed")]
    Run(#[source] anyhow::Error),
    #[cfg(windows)]
    #[error("{what}; {fix}")]
    Manager {
        what: &'static str,
        fix: &'static str,
        #[source]
        source: windows_service::Error,
    },
}

/// Both directions until `shutdown` (or, with `once`, until both applied what was committed at the
/// start); without `once`, the whole reconcile every day at `[reconcile] at` and the summary line
/// every `[metrics] interval_ms` as well, until the run ends. With `metrics_addr` (else `[metrics]
/// addr`), `/metrics` and `/healthz` are served.
pub async fn serve(
    config: &Config,
    options: RunOptions,
    metrics_addr: Option<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunReport> {
    tracing::info!(desktop = %config.desktop.url, cloud = %config.cloud.url, once = options.once, "starting both directions");
    let schedule = shutdown.child_token();
    if let Some(addr) = metrics_addr.or_else(|| config.metrics.addr.clone()) {
        super::metrics::serve(&addr, config, schedule.clone()).await?;
    }
    if !options.once {
        tokio::spawn(super::metrics::monitor(config.clone(), schedule.clone()));
    }
    if let (Some(at), false) = (config.reconcile.at, options.once) {
        tokio::spawn(reconcile::scheduled(config.clone(), at, schedule.clone()));
    }
    let _stop_schedule = schedule.drop_guard();
    Ok(pipeline::run(config, options, shutdown).await?)
}

/// Registers the service: automatic start, restarted a minute after it fails, running this executable
/// with `-c <config, absolute> service run` as LocalSystem. The config is loaded first: a service that
/// could not start at boot is found now, not then. Returns what to tell the operator.
pub fn install(config: &Path) -> Result<String, ServiceError> {
    imp::install(config)
}

/// Stops the service (waiting for the batch in flight) and deletes it.
pub fn uninstall() -> Result<String, ServiceError> {
    imp::uninstall()
}

/// The entry point the service manager starts (`tandem -c <config> service run`): hands this thread to
/// the manager until the service stops.
pub fn dispatch(config: &Path) -> Result<String, ServiceError> {
    imp::dispatch(config)
}

/// Where the service writes its log: the config's path with the extension `.log`.
pub fn log_file(config: &Path) -> PathBuf {
    config.with_extension("log")
}

#[cfg(not(windows))]
mod imp {
    use super::*;

    pub(super) fn install(_: &Path) -> Result<String, ServiceError> {
        Err(ServiceError::NotWindows)
    }

    pub(super) fn uninstall() -> Result<String, ServiceError> {
        Err(ServiceError::NotWindows)
    }

    pub(super) fn dispatch(_: &Path) -> Result<String, ServiceError> {
        Err(ServiceError::NotWindows)
    }
}

#[cfg(windows)]
mod imp {
    use std::ffi::OsString;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use windows_service::service::{
        Service, ServiceAccess, ServiceAction, ServiceActionType, ServiceControl,
        ServiceControlAccept, ServiceErrorControl, ServiceExitCode, ServiceFailureActions,
        ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState, ServiceStatus,
        ServiceType,
    };
    use windows_service::service_control_handler::{
        self, ServiceControlHandlerResult, ServiceStatusHandle,
    };
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
    use windows_service::{define_windows_service, service_dispatcher};
    use windows_sys::Win32::Foundation::{
        ERROR_ACCESS_DENIED, ERROR_FAILED_SERVICE_CONTROLLER_CONNECT, ERROR_SERVICE_DOES_NOT_EXIST,
        ERROR_SERVICE_EXISTS,
    };

    use super::*;

    /// How long uninstall waits for the service to stop, and what it tells the manager to expect.
    const STOP_WAIT: Duration = Duration::from_secs(90);

    /// The config path of the running service, for the manager's thread.
    static CONFIG: OnceLock<PathBuf> = OnceLock::new();
    /// The running service's status handle, for the control handler.
    static STATUS: OnceLock<ServiceStatusHandle> = OnceLock::new();

    /// Maps a service manager error to one that names what failed and its fix.
    fn manager(what: &'static str) -> impl FnOnce(windows_service::Error) -> ServiceError {
        move |source| {
            let code = match &source {
                windows_service::Error::Winapi(e) => e.raw_os_error().map(|c| c as u32),
                _ => None,
            };
            let fix = match code {
                Some(ERROR_ACCESS_DENIED) => {
                    "run it from an administrator prompt (right-click the terminal, Run as administrator)"
                }
                Some(ERROR_SERVICE_EXISTS) => {
                    "the service is installed already: `tandem service uninstall` first to change it"
                }
                Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
                    "the service is not installed (`tandem service install` installs it)"
                }
                Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) => {
                    "`service run` is what the service manager starts (`sc start tandem`); in a console use `tandem run`"
                }
                _ => "see the Windows error above",
            };
            ServiceError::Manager { what, fix, source }
        }
    }

    fn absolute(config: &Path) -> Result<PathBuf, ServiceError> {
        std::path::absolute(config).map_err(|source| ServiceError::Io {
            what: format!("making the config path {} absolute", config.display()),
            source,
        })
    }

    pub(super) fn install(config: &Path) -> Result<String, ServiceError> {
        let config = absolute(config)?;
        Config::load(&config).map_err(ServiceError::Config)?;
        let exe = std::env::current_exe().map_err(|source| ServiceError::Io {
            what: "finding the path of this executable".into(),
            source,
        })?;
        let services = ServiceManager::local_computer(
            None::<&str>,
            ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
        )
        .map_err(manager("opening the service manager"))?;
        let info = ServiceInfo {
            name: NAME.into(),
            display_name: DISPLAY_NAME.into(),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path: exe.clone(),
            launch_arguments: vec![
                "-c".into(),
                config.clone().into_os_string(),
                "service".into(),
                "run".into(),
            ],
            dependencies: Vec::new(),
            account_name: None, // LocalSystem
            account_password: None,
        };
        let service = services
            .create_service(&info, ServiceAccess::CHANGE_CONFIG)
            .map_err(manager("creating the service `tandem`"))?;
        // The service exists from here on: what follows only refines it, so a failure is reported
        // rather than leaving the operator a half-made service to uninstall.
        let mut notes = String::new();
        let description = "Two-way change-data-capture between the desktop PostgreSQL and Supabase";
        if let Err(e) = service.set_description(description) {
            notes.push_str(&format!(
                "\nwarning: the service has no description: {}",
                chain(&e)
            ));
        }
        if let Err(e) = restart_on_failure(&service) {
            notes.push_str(&format!(
                "\nwarning: the service is not restarted when it fails (set it in services.msc, Recovery): {}",
                chain(&e)
            ));
        }
        Ok(format!(
            "service install: `{NAME}` ({DISPLAY_NAME}) starts at boot as {} -c {} service run; \
             it logs to {}. Start it now with `sc start {NAME}`{notes}",
            exe.display(),
            config.display(),
            log_file(&config).display()
        ))
    }

    /// Restart a minute after every failure (the manager repeats the last action); an exit on an error
    /// (a reported exit code, not only a crash) counts as a failure.
    fn restart_on_failure(service: &Service) -> windows_service::Result<()> {
        service.update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![ServiceAction {
                action_type: ServiceActionType::Restart,
                delay: Duration::from_secs(60),
            }]),
        })?;
        service.set_failure_actions_on_non_crash_failures(true)
    }

    pub(super) fn uninstall() -> Result<String, ServiceError> {
        let services = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .map_err(manager("opening the service manager"))?;
        let service = services
            .open_service(
                NAME,
                ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
            )
            .map_err(manager("opening the service `tandem`"))?;
        let state = || {
            service
                .query_status()
                .map(|s| s.current_state)
                .map_err(manager("asking the service's state"))
        };
        let mut stopped = state()? == ServiceState::Stopped;
        if !stopped {
            // It may stop on its own between the query and the stop: then the stop fails, harmlessly.
            let _ = service.stop();
            let deadline = Instant::now() + STOP_WAIT;
            while !stopped && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(250));
                stopped = state()? == ServiceState::Stopped;
            }
        }
        service
            .delete()
            .map_err(manager("deleting the service `tandem`"))?;
        Ok(if stopped {
            format!("service uninstall: `{NAME}` stopped and deleted")
        } else {
            format!(
                "service uninstall: `{NAME}` did not stop within {} s; it is marked for deletion and goes \
                 when it stops (or at the next reboot)",
                STOP_WAIT.as_secs()
            )
        })
    }

    pub(super) fn dispatch(config: &Path) -> Result<String, ServiceError> {
        let _ = CONFIG.set(absolute(config)?);
        service_dispatcher::start(NAME, ffi_service_main)
            .map_err(manager("connecting to the service manager"))?;
        Ok(format!("service run: `{NAME}` stopped"))
    }

    define_windows_service!(ffi_service_main, service_main);

    /// Called by the manager on its own thread once the service starts.
    fn service_main(_arguments: Vec<OsString>) {
        let config = CONFIG.get().cloned().unwrap_or_default();
        let stop = CancellationToken::new();
        let cancel = stop.clone();
        let handler = move |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                if let Some(status) = STATUS.get() {
                    let _ = status.set_service_status(status_of(ServiceState::StopPending, 0));
                }
                cancel.cancel();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        // Without a status handle the manager cannot be told anything; it gives up on the start.
        let Ok(status) = service_control_handler::register(NAME, handler) else {
            return;
        };
        let _ = STATUS.set(status);
        let _ = status.set_service_status(status_of(ServiceState::Running, 0));
        let exit = match log_to(&log_file(&config)) {
            Ok(()) => run_until_stopped(&config, stop),
            Err(_) => EXIT_NO_LOG,
        };
        let _ = status.set_service_status(status_of(ServiceState::Stopped, exit));
    }

    /// [`serve`] on its own runtime until the manager stops it; the exit code to report.
    fn run_until_stopped(config: &Path, stop: CancellationToken) -> u32 {
        tracing::info!(config = %config.display(), "the {NAME} service starts");
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "building the tokio runtime failed");
                return EXIT_FAILED;
            }
        };
        let outcome = runtime.block_on(async {
            let config = Config::load(config).map_err(ServiceError::Config)?;
            serve(&config, RunOptions { once: false }, None, stop)
                .await
                .map_err(ServiceError::Run)
        });
        drop(runtime);
        match outcome {
            Ok(report) => {
                for (table, parked) in &report.parked {
                    tracing::warn!(table = %table, reason = %parked.reason, fix = %parked.fix, "table parked");
                }
                tracing::info!(
                    forward_batches = report.forward.batches,
                    reverse_groups = report.reverse.batches,
                    "the {NAME} service stopped"
                );
                0
            }
            Err(e) => {
                tracing::error!(error = %chain(&e), "the {NAME} service stops on an error; the service manager restarts it in a minute");
                EXIT_FAILED
            }
        }
    }

    /// An error with its sources, `: `-joined.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }

    fn status_of(state: ServiceState, exit: u32) -> ServiceStatus {
        let (controls_accepted, wait_hint) = match state {
            ServiceState::Running => (
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
                Duration::ZERO,
            ),
            ServiceState::StopPending => (ServiceControlAccept::empty(), STOP_WAIT),
            _ => (ServiceControlAccept::empty(), Duration::ZERO),
        };
        ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted,
            exit_code: if exit == 0 {
                ServiceExitCode::Win32(0)
            } else {
                ServiceExitCode::ServiceSpecific(exit)
            },
            checkpoint: u32::from(state == ServiceState::StopPending),
            wait_hint,
            process_id: None,
        }
    }

    /// Sends this process's stderr (where the log goes) to `path`, appending.
    fn log_to(path: &Path) -> std::io::Result<()> {
        use std::os::windows::io::IntoRawHandle;
        use windows_sys::Win32::System::Console::{STD_ERROR_HANDLE, SetStdHandle};
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        // SAFETY: the handle is a file open for writing, given up by `file` (never closed: stderr writes
        // to it until the process ends).
        if unsafe { SetStdHandle(STD_ERROR_HANDLE, file.into_raw_handle()) } == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(all(test, not(windows)))]
mod tests {
    use super::*;

    #[test]
    fn off_windows_the_service_commands_name_the_systemd_unit() {
        let config = Path::new("tandem.toml");
        for result in [install(config), uninstall(), dispatch(config)] {
            let err = result.unwrap_err();
            assert!(matches!(err, ServiceError::NotWindows), "{err}");
            assert!(
                err.to_string().contains("deploy/systemd/tandem.service"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_service_logs_beside_its_config() {
        assert_eq!(
            log_file(Path::new("/srv/tandem/tandem.toml")),
            PathBuf::from("/srv/tandem/tandem.log")
        );
    }
}
