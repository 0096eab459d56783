//! Test support: one desktop and one cloud cluster per test process, one pair of databases per test.
//!
//! The clusters start on first use and are stopped and removed when the process exits (an `atexit` hook:
//! the test harness catches panics, so it runs after failing tests too); clusters of a process killed
//! before that are removed by the next run's start. Every test gets fresh databases with unique names, so
//! tests run in parallel without seeing each other.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use tandem::change::Side;
use tandem::cluster::{ClusterOptions, LocalCluster, WalLevel};
use tandem::config::{Config, ConnUrl};
use tandem::sample;
use tokio_postgres::Client;

/// Every cluster this process started, for the exit hook.
static STARTED: Mutex<Vec<LocalCluster>> = Mutex::new(Vec::new());

struct Ports {
    desktop: u16,
    cloud: u16,
}

static PAIR: OnceLock<Ports> = OnceLock::new();
static REPLICA_ONLY: OnceLock<u16> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

extern "C" fn stop_clusters() {
    if let Ok(mut clusters) = STARTED.lock() {
        clusters.clear();
    }
}

fn start(name: &str, options: &ClusterOptions) -> u16 {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe { libc::atexit(stop_clusters) };
    });
    let cluster = LocalCluster::start(name, options).unwrap_or_else(|e| {
        panic!("cannot start the {name} test cluster: {e}");
    });
    let port = cluster.port();
    STARTED.lock().unwrap().push(cluster);
    port
}

fn pair() -> &'static Ports {
    PAIR.get_or_init(|| Ports {
        desktop: start(
            "desktop",
            &ClusterOptions {
                wal_level: WalLevel::Replica,
                ..Default::default()
            },
        ),
        // Every test's init creates a slot of its own.
        cloud: start(
            "cloud",
            &ClusterOptions {
                settings: vec![("max_replication_slots".into(), "400".into())],
                ..Default::default()
            },
        ),
    })
}

/// A cluster with `wal_level = replica`, for testing that check and init notice.
fn replica_only() -> u16 {
    *REPLICA_ONLY.get_or_init(|| {
        start(
            "replica",
            &ClusterOptions {
                wal_level: WalLevel::Replica,
                ..Default::default()
            },
        )
    })
}

fn url(port: u16, db: &str) -> String {
    format!("postgresql://postgres@127.0.0.1:{port}/{db}?sslmode=disable")
}

/// A connection of the test's own (application_name tandem-test, so tests can tell tandem's sessions
/// apart from theirs).
pub async fn connect(url: &str) -> Client {
    let url = format!("{url}&application_name=tandem-test");
    tandem::db::connect(Side::Desktop, &ConnUrl::new(&url))
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

async fn create_database(port: u16, name: &str) {
    let admin = connect(&url(port, "postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
}

/// A fresh desktop database and a fresh cloud database for one test.
pub struct TestDb {
    pub name: String,
    pub desktop_url: String,
    pub cloud_url: String,
    _watchdog: Watchdog,
}

/// How long one test may hold its databases. A test still running then is stuck (the slowest take
/// about a minute on a loaded machine): the watchdog names it and ends the whole test process, so a
/// hang fails CI at once, with the test's name, instead of at CI's own timeout with none.
const TEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(900);

/// Ends the test process if the test that made it is not over by [`TEST_DEADLINE`].
struct Watchdog {
    _over: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    fn start() -> Watchdog {
        let (over, wait) = std::sync::mpsc::channel::<()>();
        let test = std::thread::current()
            .name()
            .unwrap_or("a test")
            .to_string();
        std::thread::spawn(move || {
            // Disconnected (the test's TestDb dropped) before the deadline: the test is over.
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                wait.recv_timeout(TEST_DEADLINE)
            {
                eprintln!(
                    "test {test} did not finish within {} s: it is stuck; ending the test run (rerun it \
                     alone with RUST_LOG=tandem=debug to see where)",
                    TEST_DEADLINE.as_secs()
                );
                std::process::exit(101);
            }
        });
        Watchdog { _over: over }
    }
}

/// How long one tandem command a test runs may take before it is stuck.
const COMMAND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs a tandem command (stdin closed) and returns what it printed; a command still running after
/// [`COMMAND_DEADLINE`] is killed and the test fails with what it had printed.
pub fn output_of(cmd: &mut std::process::Command) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the tandem binary");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped")));
    let stderr = read(Box::new(child.stderr.take().expect("piped")));
    let deadline = std::time::Instant::now() + COMMAND_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the tandem binary") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not end within {} s; it printed:\n{}{}",
                COMMAND_DEADLINE.as_secs(),
                String::from_utf8_lossy(&stdout.join().unwrap_or_default()),
                String::from_utf8_lossy(&stderr.join().unwrap_or_default())
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().expect("reading stdout"),
        stderr: stderr.join().expect("reading stderr"),
    }
}

/// Logs to the test's output when RUST_LOG is set (e.g. RUST_LOG=tandem=debug).
fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

impl TestDb {
    /// Empty databases on the shared clusters.
    pub async fn new() -> TestDb {
        init_logging();
        let ports = tokio::task::spawn_blocking(|| {
            let p = pair();
            (p.desktop, p.cloud)
        })
        .await
        .unwrap();
        Self::on_ports(ports.0, ports.1).await
    }

    /// Empty databases whose cloud is on a cluster with `wal_level = replica`.
    pub async fn with_replica_cloud() -> TestDb {
        let (desktop, cloud) = tokio::task::spawn_blocking(|| (pair().desktop, replica_only()))
            .await
            .unwrap();
        Self::on_ports(desktop, cloud).await
    }

    /// Empty databases whose cloud is on a cluster of its own that keeps at most 1 MB of WAL for a
    /// slot, so a test can really lose a slot (wal_status `lost`) without touching the clusters other
    /// tests share. No timed checkpoint: only a test's CHECKPOINT invalidates a slot. Slots on it share
    /// its WAL, so its tests must not run at the same time.
    pub async fn with_small_slot_cloud() -> TestDb {
        static SMALL_SLOT: OnceLock<u16> = OnceLock::new();
        Self::with_cloud_on(|| {
            *SMALL_SLOT.get_or_init(|| {
                start(
                    "small-slot",
                    &ClusterOptions {
                        settings: vec![
                            ("max_slot_wal_keep_size".into(), "'1MB'".into()),
                            ("wal_keep_size".into(), "0".into()),
                            ("checkpoint_timeout".into(), "'1d'".into()),
                        ],
                        ..Default::default()
                    },
                )
            })
        })
        .await
    }

    /// Empty databases whose cloud is on a cluster of its own that nothing else writes to (so the
    /// cloud's WAL position moves only with this test's writes), with `max_slot_wal_keep_size` 64MB.
    /// One test only: a second would write to its WAL.
    pub async fn with_quiet_cloud() -> TestDb {
        Self::with_cloud_on(|| {
            start(
                "quiet",
                &ClusterOptions {
                    settings: vec![
                        ("max_slot_wal_keep_size".into(), "'64MB'".into()),
                        ("autovacuum".into(), "off".into()),
                        ("checkpoint_timeout".into(), "'1d'".into()),
                    ],
                    ..Default::default()
                },
            )
        })
        .await
    }

    /// Empty databases: the desktop on the shared cluster, the cloud on the one `cloud` starts (or
    /// finds) and returns the port of.
    async fn with_cloud_on(cloud: impl FnOnce() -> u16 + Send + 'static) -> TestDb {
        init_logging();
        let (desktop, cloud) = tokio::task::spawn_blocking(|| (pair().desktop, cloud()))
            .await
            .unwrap();
        Self::on_ports(desktop, cloud).await
    }

    async fn on_ports(desktop: u16, cloud: u16) -> TestDb {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        create_database(desktop, &name).await;
        create_database(cloud, &name).await;
        TestDb {
            desktop_url: url(desktop, &name),
            cloud_url: url(cloud, &name),
            name,
            _watchdog: Watchdog::start(),
        }
    }

    /// Databases holding the PowerCA sample schema (no rows).
    pub async fn sample() -> TestDb {
        let db = TestDb::new().await;
        sample::create_schemas(&db.desktop().await, &db.cloud().await)
            .await
            .unwrap();
        db
    }

    /// Drops this test's slot and databases (tests that make many, like the property test).
    pub async fn remove(self) {
        let cloud = self.cloud().await;
        cloud
            .execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database()", &[])
            .await
            .unwrap();
        drop(cloud);
        for url in [&self.desktop_url, &self.cloud_url] {
            let admin = connect(&url.replace(&format!("/{}?", self.name), "/postgres?")).await;
            admin
                .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
                .await
                .unwrap();
        }
    }

    pub async fn desktop(&self) -> Client {
        connect(&self.desktop_url).await
    }

    pub async fn cloud(&self) -> Client {
        connect(&self.cloud_url).await
    }

    /// The environment a config of this test's is read with: DESKTOP_URL and CLOUD_URL.
    pub fn env(&self) -> impl Fn(&str) -> Option<String> + '_ {
        move |var| match var {
            "DESKTOP_URL" => Some(self.desktop_url.clone()),
            "CLOUD_URL" => Some(self.cloud_url.clone()),
            _ => None,
        }
    }

    /// `config/powerca.toml` pointed at this test's databases, with a slot of its own (slots are
    /// per cluster).
    pub fn sample_config(&self) -> Config {
        self.sample_config_at(&self.desktop_url, &self.cloud_url)
    }

    /// The same, pointed at other URLs (another role, another cluster, TLS settings).
    pub fn sample_config_at(&self, desktop_url: &str, cloud_url: &str) -> Config {
        let text =
            sample::CONFIG.replace("slot = \"tandem\"", &format!("slot = \"{}\"", self.name));
        let env = |var: &str| match var {
            "DESKTOP_URL" => Some(desktop_url.to_string()),
            "CLOUD_URL" => Some(cloud_url.to_string()),
            _ => None,
        };
        Config::parse("powerca.toml (test)", &text, &env).unwrap()
    }

    /// A config with the given `[[tables]]` text.
    pub fn config(&self, tables: &str) -> Result<Config, tandem::config::ConfigError> {
        let text = format!(
            "[desktop]\nurl = \"${{DESKTOP_URL}}\"\n[cloud]\nurl = \"${{CLOUD_URL}}\"\nslot = \"{}\"\n{tables}",
            self.name
        );
        Config::parse("test config", &text, &self.env())
    }
}

/// Everything a database's catalogs say about objects outside the system schemas, as sorted text:
/// compared before `init` and after `uninstall`.
pub async fn catalog_snapshot(client: &Client) -> Vec<String> {
    let rows = client
        .query(
            "SELECT 'schema ' || nspname || ' acl ' || coalesce(nspacl::text, '')
               FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
             UNION ALL
             SELECT 'relation ' || n.nspname || '.' || c.relname || ' kind ' || c.relkind::text || ' identity '
                    || c.relreplident::text || ' acl ' || coalesce(c.relacl::text, '')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
             UNION ALL
             SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
             UNION ALL
             SELECT 'trigger ' || t.tgrelid::regclass::text || ' ' || t.tgname || ' ' || t.tgenabled::text
               FROM pg_trigger t WHERE NOT t.tgisinternal
             UNION ALL
             SELECT 'function ' || p.oid::regprocedure::text
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
             UNION ALL
             SELECT 'publication ' || pubname FROM pg_publication
             UNION ALL
             SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE database = current_database()
             UNION ALL
             SELECT 'default acl ' || defaclrole::regrole::text || ' ' || defaclobjtype::text || ' ' || defaclacl::text
               FROM pg_default_acl
             ORDER BY 1",
            &[],
        )
        .await
        .expect("reading the catalog snapshot");
    rows.into_iter().map(|r| r.get(0)).collect()
}

pub async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// The rows of `table` as sorted texts of `columns`, optionally filtered: a multiset to compare sides.
pub async fn rows(client: &Client, table: &str, columns: &str, filter: &str) -> Vec<String> {
    let sql = format!("SELECT ROW({columns})::text FROM {table} WHERE {filter} ORDER BY 1");
    client
        .query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .map(|r| r.get(0))
        .collect()
}

/// A TCP proxy in front of a server, to cut a connection path on demand: while it is down, every
/// connection it carried is cut and every new one is accepted and closed at once (a server that drops
/// its clients). It records when each connection was attempted.
pub struct Proxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    down: std::sync::atomic::AtomicBool,
    attempts: Mutex<Vec<(std::time::Instant, bool)>>,
    carried: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:to`.
    pub async fn start(to: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(ProxyState::default());
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let down = shared.down.load(Ordering::SeqCst);
                shared
                    .attempts
                    .lock()
                    .unwrap()
                    .push((std::time::Instant::now(), down));
                if down {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                shared.carried.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { port, state }
    }

    /// Cuts every connection carried so far and refuses new ones from now on.
    pub fn go_down(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        for task in self.state.carried.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// When each connection was attempted while the proxy was down.
    pub fn attempts_while_down(&self) -> Vec<std::time::Instant> {
        self.state
            .attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, down)| *down)
            .map(|(at, _)| *at)
            .collect()
    }
}

impl TestDb {
    /// The port of this test's cloud cluster.
    pub fn cloud_port(&self) -> u16 {
        port_of(&self.cloud_url)
    }

    /// A config with the given `[[tables]]` text whose cloud connections go to `cloud_url`.
    pub fn config_at(&self, tables: &str, cloud_url: &str) -> Config {
        let text = format!(
            "[desktop]\nurl = \"${{DESKTOP_URL}}\"\n[cloud]\nurl = \"${{CLOUD_URL}}\"\nslot = \"{}\"\n{tables}",
            self.name
        );
        let env = |var: &str| match var {
            "DESKTOP_URL" => Some(self.desktop_url.clone()),
            "CLOUD_URL" => Some(cloud_url.to_string()),
            _ => None,
        };
        Config::parse("test config", &text, &env).unwrap()
    }

    /// This test's cloud database, reached through `port`.
    pub fn cloud_url_at(&self, port: u16) -> String {
        url(port, &self.name)
    }
}

fn port_of(url: &str) -> u16 {
    let after = url.split("127.0.0.1:").nth(1).expect("a loopback URL");
    after.split('/').next().unwrap().parse().unwrap()
}

/// `tandem run` streaming in the background.
pub struct Streaming {
    shutdown: tokio_util::sync::CancellationToken,
    run: tokio::task::JoinHandle<Result<tandem::pipeline::RunReport, tandem::pipeline::RunError>>,
}

impl Streaming {
    pub fn start(config: &Config) -> Self {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (config, stop) = (config.clone(), shutdown.clone());
        let run = tokio::spawn(async move {
            tandem::pipeline::run(&config, tandem::pipeline::RunOptions { once: false }, stop).await
        });
        Streaming { shutdown, run }
    }

    /// Shuts it down (it must have run until now, and stop within 30 s) and returns what it did.
    pub async fn stop(self) -> tandem::pipeline::RunReport {
        assert!(
            !self.run.is_finished(),
            "the run ended before it was stopped"
        );
        self.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(30), self.run)
            .await
            .expect("run stops on shutdown")
            .unwrap()
            .unwrap()
    }
}

/// The initial sync of every table due (as the first `tandem run` does before it streams): tests that
/// run one direction's worker alone start from here, with every table synced (and its horizon set).
pub async fn synced(config: &Config) {
    let tables = tandem::pipeline::Tables::start(config).await.unwrap();
    tandem::pipeline::sync::due(config, &tables, &tandem::pipeline::sync::Quiet)
        .await
        .unwrap();
}
