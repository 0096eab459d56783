//! The PowerCA data generator: seeds-sized, plausible, deterministic, with the seeds' 3 orphan clients.

use tandem::sample;

use crate::support::{TestDb, count};

#[tokio::test]
async fn the_generator_matches_the_seeds_counts() {
    let db = TestDb::sample().await;
    let config = db.sample_config();
    let mut desktop = db.desktop().await;
    let report = sample::seed(&mut desktop, &config, 1.0).await.unwrap();
    let n = |table: &str| report.counts.iter().find(|(t, _)| t == table).unwrap().1;
    assert_eq!(n("jobshead"), 24_562);
    assert_eq!(n("jobtasks"), 64_542);
    assert_eq!(n("climaster"), 729);
    assert_eq!(n("mbreminder"), 121);
    assert_eq!(report.total(), 92_387);
    assert_eq!(report.counts.len(), 15);
    assert!(
        report.counts.iter().all(|(_, n)| *n > 0),
        "{:?}",
        report.counts
    );

    // Seeds 000: 729 clients on the desktop, 726 in the cloud: 3 belong to an org that does not exist,
    // and nothing else refers to those 3.
    let orphans =
        "SELECT client_id FROM climaster WHERE org_id NOT IN (SELECT org_id FROM orgmaster)";
    assert_eq!(
        count(&desktop, &format!("SELECT count(*) FROM ({orphans}) o")).await,
        3
    );
    for (table, column) in [
        ("jobshead", "client_id"),
        ("cliunimaster", "client_id"),
        ("mbreminder", "client_id"),
    ] {
        let sql = format!("SELECT count(*) FROM {table} WHERE {column} IN ({orphans})");
        assert_eq!(
            count(&desktop, &sql).await,
            0,
            "{table} refers to an orphan client"
        );
    }
    // Every other reference resolves (the cloud's foreign keys would accept it).
    for sql in [
        "SELECT count(*) FROM jobtasks t WHERE NOT EXISTS (SELECT 1 FROM jobshead j WHERE j.job_id = t.job_id)",
        "SELECT count(*) FROM jobtasks t WHERE NOT EXISTS (SELECT 1 FROM taskmaster m WHERE m.task_id = t.task_id)",
        "SELECT count(*) FROM jobshead j WHERE NOT EXISTS (SELECT 1 FROM climaster c WHERE c.client_id = j.client_id)",
        "SELECT count(*) FROM mbremdetail d WHERE NOT EXISTS (SELECT 1 FROM mbreminder r WHERE r.rem_id = d.rem_id)",
        "SELECT count(*) FROM workdiary w WHERE NOT EXISTS (SELECT 1 FROM mbstaff s WHERE s.staff_id = w.staff_id)",
        "SELECT count(*) - count(DISTINCT rem_id) FROM mbreminder",
    ] {
        assert_eq!(count(&desktop, sql).await, 0, "{sql}");
    }
    // Plausible values: long remarks that PostgreSQL will TOAST, no-key duplicates in jobtasks.
    assert!(
        count(
            &desktop,
            "SELECT count(*) FROM jobshead WHERE length(remarks) > 8000"
        )
        .await
            >= 1
    );
    assert!(count(&desktop, "SELECT count(*) FROM (SELECT 1 FROM jobtasks GROUP BY jobtasks.* HAVING count(*) > 1) d").await >= 1);
    assert!(
        count(
            &desktop,
            "SELECT count(*) FROM climaster WHERE email LIKE '%@%'"
        )
        .await
            > 600
    );
}

#[tokio::test]
async fn the_generator_is_deterministic_and_scales() {
    let (a, b) = (TestDb::sample().await, TestDb::sample().await);
    let config = a.sample_config();
    let (mut da, mut db_) = (a.desktop().await, b.desktop().await);
    let ra = sample::seed(&mut da, &config, 0.05).await.unwrap();
    sample::seed(&mut db_, &config, 0.05).await.unwrap();
    assert_eq!(
        ra.counts.iter().find(|(t, _)| t == "jobshead").unwrap().1,
        1_228
    );
    assert_eq!(
        count(
            &da,
            "SELECT count(*) FROM climaster WHERE org_id NOT IN (SELECT org_id FROM orgmaster)"
        )
        .await,
        3
    );
    for t in &config.tables {
        let sql = format!(
            "SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {} x",
            t.table.desktop.quoted()
        );
        let ha: String = da.query_one(&sql, &[]).await.unwrap().get(0);
        let hb: String = db_.query_one(&sql, &[]).await.unwrap().get(0);
        assert_eq!(ha, hb, "{} differs between two runs", t.table.desktop);
    }
}
