//! libpq connection strings: the parts tokio-postgres does not take (TLS verification, the password
//! file) are taken out here.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio_postgres::config::Host;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// `allow` and `prefer`: TLS when the server offers it, unverified.
    Prefer,
    /// Encrypted; verified only when a root certificate is given (libpq's rule).
    Require,
    /// Encrypted, the chain verified, the host name not.
    VerifyCa,
    /// Encrypted, the chain and the host name verified.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file (`sslrootcert=/path/ca.crt`).
    File(PathBuf),
    /// The operating system's store (`sslrootcert=system`).
    System,
}

/// A parsed connection string, ready to connect.
#[derive(Debug, Clone)]
pub struct ConnectTarget {
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    pub root_certs: Option<RootCerts>,
}

/// Parameters libpq knows that we handle (or refuse) ourselves.
const OURS: &[&str] = &["sslmode", "sslrootcert", "passfile"];
const UNSUPPORTED: &[&str] = &[
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "service",
];

impl ConnectTarget {
    pub fn parse(conn: &str) -> Result<Self, String> {
        Self::parse_with_env(conn, &|var| std::env::var(var).ok())
    }

    pub fn parse_with_env(
        conn: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let (rest, ours) = split_params(conn)?;
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| e.to_string())?;
        let get = |k: &str| {
            ours.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let ssl_mode = match get("sslmode") {
            Some(mode) => mode.parse()?,
            None => SslMode::Prefer,
        };
        let root_certs = match get("sslrootcert") {
            Some(v) if v == "system" => Some(RootCerts::System),
            Some(v) => Some(RootCerts::File(PathBuf::from(v))),
            None => env("HOME")
                .map(|home| Path::new(&home).join(".postgresql/root.crt"))
                .filter(|p| p.is_file())
                .map(RootCerts::File),
        };
        if matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_certs.is_none() {
            return Err(
                "sslmode=verify-ca/verify-full needs trusted roots: add sslrootcert=<CA file> or \
                 sslrootcert=system to the URL"
                    .to_string(),
            );
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if config.get_application_name().is_none() {
            config.application_name("tandem");
        }
        if config.get_user().is_none()
            && let Some(user) = env("PGUSER").or_else(|| env("USER"))
        {
            config.user(user);
        }
        if config.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD") {
                config.password(password);
            } else {
                let file = get("passfile")
                    .or_else(|| env("PGPASSFILE"))
                    .map(PathBuf::from)
                    .or_else(|| env("HOME").map(|h| Path::new(&h).join(".pgpass")));
                if let Some(password) = file.and_then(|f| password_from_file(&f, &config)) {
                    config.password(password);
                }
            }
        }
        Ok(ConnectTarget {
            config,
            ssl_mode,
            root_certs,
        })
    }

    /// The first host name, for TLS server-name checks and the password file.
    pub fn host(&self) -> String {
        first_host(&self.config)
    }
}

fn first_host(config: &tokio_postgres::Config) -> String {
    match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        // A unix socket directory (unix only), or no host.
        _ => "localhost".to_string(),
    }
}

/// Splits our parameters out of a URL (`?a=b&c=d`) or keyword/value string (`a=b c=d`).
fn split_params(conn: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut ours = Vec::new();
    let mut take = |key: &str, value: &str| -> Result<bool, String> {
        if UNSUPPORTED.contains(&key) {
            return Err(format!(
                "`{key}` is not supported by tandem; use a password (PGPASSWORD or ~/.pgpass) and server \
                 certificates checked with sslmode=verify-full"
            ));
        }
        if OURS.contains(&key) {
            ours.push((key.to_string(), value.to_string()));
            return Ok(true);
        }
        Ok(false)
    };
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let Some((base, query)) = conn.split_once('?') else {
            return Ok((conn.to_string(), ours));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, &percent_decode(v))? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((rest, ours))
    } else {
        let mut kept = Vec::new();
        for pair in conn.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, v.trim_matches('\''))? {
                kept.push(pair);
            }
        }
        Ok((kept.join(" "), ours))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            let b = (hi * 16 + lo) as u8;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The password of the first matching line of a libpq password file (`host:port:db:user:password`,
/// `*` matches anything, `\` escapes). Like libpq, a file others can read is ignored.
fn password_from_file(path: &Path, config: &tokio_postgres::Config) -> Option<String> {
    // Windows has no such modes; libpq does not check there either.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).ok()?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "password file ignored: it is readable by others; chmod 0600 it"
            );
            return None;
        }
    }
    let text = std::fs::read_to_string(path).ok()?;
    let host = first_host(config);
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    let db = config
        .get_dbname()
        .map_or_else(|| user.clone(), str::to_string);
    let wanted = [host.as_str(), port.as_str(), db.as_str(), user.as_str()];
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(split_pgpass_line)
        .find(|fields| {
            fields.len() == 5
                && fields[..4]
                    .iter()
                    .zip(wanted)
                    .all(|(field, want)| field == "*" || field == want)
        })
        .map(|mut fields| fields.pop().expect("five fields"))
}

fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("non-empty").push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("non-empty").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn tls_settings_are_taken_out_of_urls() {
        let t = ConnectTarget::parse_with_env(
            "postgresql://u@db.example.com:5432/postgres?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.crt&connect_timeout=5",
            &no_env,
        )
        .unwrap();
        assert_eq!(t.ssl_mode, SslMode::VerifyFull);
        assert_eq!(t.root_certs, Some(RootCerts::File("/tmp/ca.crt".into())));
        assert_eq!(t.host(), "db.example.com");
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(5))
        );

        let t = ConnectTarget::parse_with_env(
            "host=h user=u sslmode=require sslrootcert=system",
            &no_env,
        )
        .unwrap();
        assert_eq!(t.ssl_mode, SslMode::Require);
        assert_eq!(t.root_certs, Some(RootCerts::System));
    }

    #[test]
    fn verification_without_roots_is_refused() {
        let err = ConnectTarget::parse_with_env("postgresql://u@h/d?sslmode=verify-full", &no_env)
            .unwrap_err();
        assert!(err.contains("sslrootcert"), "{err}");
        let err =
            ConnectTarget::parse_with_env("postgresql://u@h/d?sslmode=bogus", &no_env).unwrap_err();
        assert!(err.contains("sslmode=bogus"), "{err}");
        let err =
            ConnectTarget::parse_with_env("postgresql://u@h/d?sslcert=/x", &no_env).unwrap_err();
        assert!(err.contains("sslcert"), "{err}");
    }

    #[test]
    fn passwords_come_from_the_environment_or_the_password_file() {
        let env = |v: &str| (v == "PGPASSWORD").then(|| "from-env".to_string());
        let t = ConnectTarget::parse_with_env("postgresql://u@h/d", &env).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"from-env"[..]));

        let dir = std::env::temp_dir().join(format!("tandem-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:5432:*:u:wrong\nh:5433:d:u:also-wrong\nh:*:d:u:s\\:ecret\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let url = format!("postgresql://u@h:5432/d?passfile={}", file.display());
        let t = ConnectTarget::parse_with_env(&url, &no_env).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"s:ecret"[..]));

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let t = ConnectTarget::parse_with_env(&url, &no_env).unwrap();
        assert_eq!(
            t.config.get_password(),
            None,
            "a world-readable password file is ignored"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
