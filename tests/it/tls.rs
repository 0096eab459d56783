//! TLS to the cloud: libpq's sslmode semantics, for ordinary connections and the replication stream.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tandem::change::Side;
use tandem::cluster::{ClusterOptions, LocalCluster};
use tandem::config::ConnUrl;

use crate::reverse::reverse_once;
use crate::support::{TestDb, count, rows};

/// A CA, and a server certificate it signed for the name `localhost` only.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tandem test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.join("ca.pem"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, server.pem()).unwrap();
    std::fs::write(&key_file, server_key.serialize_pem()).unwrap();
    (ca_file, cert_file, key_file)
}

fn other_ca(dir: &Path) -> PathBuf {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, key).unwrap();
    let file = dir.join("other-ca.pem");
    std::fs::write(&file, ca.pem()).unwrap();
    file
}

async fn try_connect(url: &str) -> Result<tokio_postgres::Client, tandem::db::DbError> {
    tandem::db::connect(Side::Cloud, &ConnUrl::new(url)).await
}

#[tokio::test]
async fn the_cloud_over_tls_verify_full_with_a_ca_file_for_every_connection_and_the_stream() {
    let dir = std::env::temp_dir().join(format!("tandem-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificates(&dir);
    // Only TLS connections are let in: a plaintext one cannot pass by accident.
    let hba =
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n"
            .to_string();
    let options = ClusterOptions {
        tls: Some((cert, key)),
        hba: Some(hba),
        ..Default::default()
    };
    let cluster =
        tokio::task::spawn_blocking(move || LocalCluster::start("tls-cloud", &options).unwrap())
            .await
            .unwrap();
    let port = cluster.port();
    let admin = try_connect(&format!(
        "postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=require"
    ))
    .await
    .unwrap();
    admin.batch_execute("CREATE DATABASE tls").await.unwrap();
    assert!(
        try_connect(&format!(
            "postgresql://postgres@127.0.0.1:{port}/tls?sslmode=disable"
        ))
        .await
        .is_err(),
        "the cluster must refuse plaintext"
    );

    let verify_full = format!(
        "postgresql://postgres@localhost:{port}/tls?sslmode=verify-full&sslrootcert={}",
        ca.display()
    );
    let cloud = try_connect(&verify_full).await.unwrap();
    let encrypted: bool = cloud
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted);

    // A name the certificate does not hold fails verify-full, and passes verify-ca (which skips it).
    let by_ip = format!(
        "postgresql://postgres@127.0.0.1:{port}/tls?sslmode=verify-full&sslrootcert={}",
        ca.display()
    );
    let err = try_connect(&by_ip).await.unwrap_err();
    assert_eq!(err.kind(), tandem::db::ErrorKind::Fatal, "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    try_connect(&by_ip.replace("verify-full", "verify-ca"))
        .await
        .unwrap();
    // A CA that did not sign it fails both.
    let wrong = verify_full.replace(
        &ca.display().to_string(),
        &other_ca(&dir).display().to_string(),
    );
    let err = try_connect(&wrong).await.unwrap_err();
    assert!(
        err.to_string().contains("sslrootcert"),
        "the error names the fix: {err}"
    );

    // The whole path: init, check, and a phone's row streamed to the desktop over verify-full.
    let db = TestDb::new().await;
    let desktop = db.desktop().await;
    tandem::sample::create_schemas(&desktop, &cloud)
        .await
        .unwrap();
    let config = db.sample_config_at(&db.desktop_url, &verify_full);
    tandem::setup::init(&config, false).await.unwrap();
    let report = tandem::ops::check::check(&config).await;
    assert!(report.passed(), "{:#?}", report.items);
    cloud
        .batch_execute("INSERT INTO mbstaff (staff_id, staff_name) VALUES (1, 'Ravi'); INSERT INTO learequest (lea_id, staff_id, reason) VALUES (1, 1, 'Over TLS')")
        .await
        .unwrap();
    reverse_once(&config).await;
    assert_eq!(
        rows(&desktop, "learequest", "lea_id, reason", "true").await,
        vec!["(1,\"Over TLS\")"]
    );
    assert_eq!(count(&desktop, "SELECT count(*) FROM mbstaff").await, 1);

    // The stream with a CA that did not sign the certificate: a clear, final error, not endless retries.
    let wrong_config = db.sample_config_at(&db.desktop_url, &wrong);
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tandem::pipeline::run_reverse(
            &wrong_config,
            tandem::pipeline::RunOptions { once: true },
            Default::default(),
        ),
    )
    .await
    .expect("a certificate error must not be retried forever")
    .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    drop((cloud, admin));
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
