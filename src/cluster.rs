//! Throwaway local PostgreSQL clusters, for the tests and for `tandem demo`.
//!
//! tandem's only real component is PostgreSQL, so every test runs against real servers started from the
//! binaries on the machine. A [`LocalCluster`] is initdb + pg_ctl in a temporary directory on a free
//! loopback port; it is stopped and removed when dropped. `initdb` refuses to run as root, so when we are
//! root the server runs as the unprivileged `postgres` user. Clusters left behind by a process that was
//! killed before it could clean up are removed by the next start.

use std::fs;
use std::io::{self, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The lowest server version tandem supports: row-filtered publications arrived in PostgreSQL 15.
pub const MIN_SERVER_MAJOR: u32 = 15;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres, version {MIN_SERVER_MAJOR} or newer) not found; \
         looked in {searched}. Install them (Debian/Ubuntu: `apt-get install postgresql-15`) or set PG_BIN \
         to the directory holding initdb and pg_ctl"
    )]
    BinariesNotFound { searched: String },
    #[error(
        "running as root: initdb refuses root and there is no unprivileged `postgres` user to run the server as; create one (`useradd postgres`) or run as a normal user"
    )]
    NoUnprivilegedUser,
    #[error(
        "throwaway local clusters (`tandem demo`, the tests) need a unix machine; on Windows point tandem at \
         existing databases with a config file (`tandem -c tandem.toml init`)"
    )]
    NotUnix,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// Where the server binaries are and which major version they are.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub dir: PathBuf,
    pub major: u32,
}

impl PgBinaries {
    /// Finds the binaries: `$PG_BIN`, then `$PATH`, then `/usr/lib/postgresql/<version>/bin` (newest first).
    pub fn locate() -> Result<Self, ClusterError> {
        let mut candidates = Vec::new();
        if let Some(dir) = std::env::var_os("PG_BIN") {
            candidates.push(PathBuf::from(dir));
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versioned.into_iter().map(|(_, p)| p));
        Self::locate_in(&candidates)
    }

    /// Finds the first directory of `candidates` holding a usable initdb, pg_ctl and postgres.
    pub fn locate_in(candidates: &[PathBuf]) -> Result<Self, ClusterError> {
        for dir in candidates {
            let all_there = ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| dir.join(b).is_file());
            if !all_there {
                continue;
            }
            if let Some(major) = server_major(&dir.join("postgres"))
                && major >= MIN_SERVER_MAJOR
            {
                return Ok(PgBinaries {
                    dir: dir.clone(),
                    major,
                });
            }
        }
        let searched = if candidates.is_empty() {
            "nowhere (no PG_BIN, no PATH, no /usr/lib/postgresql)".to_string()
        } else {
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(ClusterError::BinariesNotFound { searched })
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Parses `postgres (PostgreSQL) 15.18 (Debian ...)` into 15.
fn server_major(postgres: &Path) -> Option<u32> {
    let out = Command::new(postgres).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(2)?;
    version.split('.').next()?.parse().ok()
}

/// `wal_level` of a cluster: the cloud needs `logical`; `replica` exists to test that `check` notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalLevel {
    Replica,
    Logical,
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub wal_level: WalLevel,
    /// `fsync`, `synchronous_commit` and `full_page_writes` on. Off by default: these clusters are
    /// throwaway, and a crash of the machine loses them anyway.
    pub durable: bool,
    /// Extra `postgresql.conf` settings, appended last.
    pub settings: Vec<(String, String)>,
    /// Serve TLS with this certificate and key (PEM files; copied into the cluster).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The whole `pg_hba.conf`, instead of initdb's (trust on loopback).
    pub hba: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            wal_level: WalLevel::Logical,
            durable: false,
            settings: Vec::new(),
            tls: None,
            hba: None,
        }
    }
}

/// The directory all clusters of this machine live under; each cluster's folder starts with the pid of
/// the process that made it, so a later process can tell which ones were abandoned.
pub fn clusters_root() -> PathBuf {
    std::env::temp_dir().join("tandem-clusters")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running throwaway cluster. Dropping it stops the server and removes its directory.
#[derive(Debug)]
pub struct LocalCluster {
    name: String,
    bins: PgBinaries,
    dir: PathBuf,
    port: u16,
    run_as: Option<os::RunAs>,
    running: bool,
}

impl LocalCluster {
    /// initdb + start. `name` only labels the directory and the error messages ("desktop", "cloud").
    pub fn start(name: &str, options: &ClusterOptions) -> Result<Self, ClusterError> {
        let run_as = os::run_as()?;
        let bins = PgBinaries::locate()?;
        let root = clusters_root();
        fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
        // The server user must be able to reach its data directory through the root folder.
        os::set_mode(&root, 0o1777)?;
        sweep_stale(&bins, run_as);

        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("{}-{}-{}", std::process::id(), name, n));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(format!("removing {}", dir.display())))?;
        }
        fs::create_dir(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        if let Some(user) = run_as {
            user.chown(&dir)?;
        }
        let mut cluster = LocalCluster {
            name: name.to_string(),
            bins,
            dir,
            port: 0,
            run_as,
            running: false,
        };
        cluster.init(options)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(self.bins.bin(bin));
        cmd.current_dir(&self.dir);
        cmd.env_remove("PGDATA");
        if let Some(user) = self.run_as {
            user.apply(&mut cmd);
        }
        cmd
    }

    fn run(&self, what: &str, cmd: &mut Command) -> Result<Output, ClusterError> {
        let out = cmd.output().map_err(io_err(format!(
            "{what} for the {} cluster ({})",
            self.name,
            self.bins.dir.display()
        )))?;
        if !out.status.success() {
            return Err(ClusterError::Command {
                what: format!("{what} for the {} cluster", self.name),
                detail: format!(
                    "{}{}{}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    String::from_utf8_lossy(&out.stdout).trim(),
                    self.log_tail()
                ),
            });
        }
        Ok(out)
    }

    fn log_tail(&self) -> String {
        match fs::read_to_string(self.log_file()) {
            Ok(log) => {
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                format!(
                    "\n--- server log ({}) ---\n{tail}",
                    self.log_file().display()
                )
            }
            Err(_) => String::new(),
        }
    }

    fn init(&self, options: &ClusterOptions) -> Result<(), ClusterError> {
        let data = self.data_dir();
        self.run(
            "initdb",
            self.command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync", "--no-instructions"]),
        )?;
        let wal_level = match options.wal_level {
            WalLevel::Replica => "replica",
            WalLevel::Logical => "logical",
        };
        let durable = if options.durable { "on" } else { "off" };
        let mut conf = format!(
            "\n# tandem throwaway cluster\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket}'\n\
             wal_level = {wal_level}\n\
             max_replication_slots = 64\n\
             max_wal_senders = 64\n\
             max_connections = 200\n\
             shared_buffers = 128MB\n\
             fsync = {durable}\n\
             synchronous_commit = {durable}\n\
             full_page_writes = {durable}\n\
             log_min_messages = warning\n",
            socket = self.dir.display(),
        );
        if let Some((cert, key)) = &options.tls {
            for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
                let target = data.join(to);
                fs::copy(from, &target).map_err(io_err(format!(
                    "copying {} into the cluster",
                    from.display()
                )))?;
                os::set_mode(&target, 0o600)?;
                if let Some(user) = self.run_as {
                    user.chown(&target)?;
                }
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        if let Some(hba) = &options.hba {
            let path = data.join("pg_hba.conf");
            fs::write(&path, hba).map_err(io_err(format!("writing {}", path.display())))?;
        }
        for (k, v) in &options.settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let conf_path = data.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .map_err(io_err(format!("opening {}", conf_path.display())))?;
        file.write_all(conf.as_bytes())
            .map_err(io_err(format!("writing {}", conf_path.display())))
    }

    fn start_server(&mut self) -> Result<(), ClusterError> {
        // A free port can be taken by someone else between our probe and the server's bind: retry.
        let mut last = None;
        for _ in 0..5 {
            self.port = free_port()?;
            let result = self.run(
                "pg_ctl start",
                self.command("pg_ctl")
                    .arg("-D")
                    .arg(self.data_dir())
                    .arg("-l")
                    .arg(self.log_file())
                    .args(["-w", "-t", "120", "-o"])
                    .arg(format!("-p {}", self.port))
                    .arg("start"),
            );
            match result {
                Ok(_) => {
                    self.running = true;
                    return Ok(());
                }
                Err(e) if e.to_string().contains("could not bind") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("loop ran at least once"))
    }

    /// Stops the server (fast shutdown) without removing the cluster; [`LocalCluster::restart`] brings
    /// it back on the same port.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        self.pg_ctl_stop("fast")?;
        self.running = false;
        Ok(())
    }

    /// Starts a stopped cluster again, on the same port.
    pub fn restart(&mut self) -> Result<(), ClusterError> {
        if self.running {
            self.stop()?;
        }
        self.run(
            "pg_ctl start",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_file())
                .args(["-w", "-t", "120", "-o"])
                .arg(format!("-p {}", self.port))
                .arg("start"),
        )?;
        self.running = true;
        Ok(())
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), ClusterError> {
        self.run(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", mode, "-w", "-t", "60", "stop"]),
        )
        .map(|_| ())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's major version.
    pub fn major(&self) -> u32 {
        self.bins.major
    }

    /// A libpq URL for `dbname` as the bootstrap superuser `postgres` (trust auth on loopback).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{dbname}?sslmode=disable",
            self.port
        )
    }

    /// The directory holding the data directory and the server log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.running && self.pg_ctl_stop("fast").is_err() {
            let _ = self.pg_ctl_stop("immediate");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io_err("finding a free port"))?
        .port())
}

/// Stops and removes clusters whose owning process is gone (killed before its cleanup ran).
fn sweep_stale(bins: &PgBinaries, run_as_user: Option<os::RunAs>) {
    let Ok(entries) = fs::read_dir(clusters_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 || os::process_alive(pid) {
            continue;
        }
        let data = entry.path().join("data");
        if data.join("postmaster.pid").exists() {
            let mut cmd = Command::new(bins.bin("pg_ctl"));
            cmd.arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"]);
            cmd.current_dir(entry.path());
            if let Some(user) = run_as_user {
                user.apply(&mut cmd);
            }
            let _ = cmd.output();
        }
        let _ = fs::remove_dir_all(entry.path());
    }
}

/// What only unix has: running the server as the `postgres` user, file modes, "is that pid alive".
/// Off unix [`os::run_as`] refuses, so a cluster never starts there and the rest is never reached.
#[cfg(unix)]
mod os {
    use std::ffi::CString;
    use std::io;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::Command;

    use super::{ClusterError, io_err};

    /// The OS user the server processes run as (only set when we are root).
    #[derive(Debug, Clone, Copy)]
    pub(super) struct RunAs {
        uid: u32,
        gid: u32,
    }

    impl RunAs {
        pub(super) fn apply(self, cmd: &mut Command) {
            cmd.uid(self.uid).gid(self.gid);
        }

        pub(super) fn chown(self, path: &Path) -> Result<(), ClusterError> {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .map_err(io_err(format!("chown {}", path.display())))
        }
    }

    pub(super) fn run_as() -> Result<Option<RunAs>, ClusterError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let name = CString::new("postgres").expect("no NUL in literal");
        // SAFETY: getpwnam returns NULL or a pointer to a static passwd record we read immediately.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            return Err(ClusterError::NoUnprivilegedUser);
        }
        // SAFETY: pw is non-null and points to a valid passwd record.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(Some(RunAs { uid, gid }))
    }

    pub(super) fn set_mode(path: &Path, mode: u32) -> Result<(), ClusterError> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("chmod {}", path.display())))
    }

    pub(super) fn process_alive(pid: i32) -> bool {
        // SAFETY: kill with signal 0 only checks for existence and permission.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
}

#[cfg(not(unix))]
mod os {
    use std::path::Path;
    use std::process::Command;

    use super::ClusterError;

    /// Never made: there is no user to switch to off unix.
    #[derive(Debug, Clone, Copy)]
    pub(super) enum RunAs {}

    impl RunAs {
        pub(super) fn apply(self, _: &mut Command) {
            match self {}
        }

        pub(super) fn chown(self, _: &Path) -> Result<(), ClusterError> {
            match self {}
        }
    }

    pub(super) fn run_as() -> Result<Option<RunAs>, ClusterError> {
        Err(ClusterError::NotUnix)
    }

    pub(super) fn set_mode(_: &Path, _: u32) -> Result<(), ClusterError> {
        Ok(())
    }

    pub(super) fn process_alive(_: i32) -> bool {
        true
    }
}

/// Polls `condition` until it holds or `timeout` passes; the polling interval grows from 1 ms to 50 ms.
/// Returns whether the condition held. Used by tests and the demo instead of sleeping a guessed time.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_name_what_to_install() {
        let err = PgBinaries::locate_in(&[PathBuf::from("/nonexistent/bin")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("apt-get install postgresql-15"), "{msg}");
        assert!(msg.contains("PG_BIN"), "{msg}");
        assert!(msg.contains("/nonexistent/bin"), "{msg}");
    }

    #[test]
    fn finds_the_machine_binaries() {
        let bins = PgBinaries::locate()
            .expect("PostgreSQL server binaries are required for tandem's tests");
        assert!(bins.major >= MIN_SERVER_MAJOR);
    }
}
