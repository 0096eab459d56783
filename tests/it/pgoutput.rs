//! The pgoutput decoder against what a real PostgreSQL server sends: changes made in the cloud, read back
//! through a logical replication slot with the SQL interface (`pg_logical_slot_peek_binary_changes`),
//! which gives the same pgoutput bytes a replication connection's XLogData carries.

use bytes::Bytes;
use tandem::capture::pgoutput::{self, RelationCache};
use tandem::change::{CommitLsn, Lsn, OldImage, PgOutput, Relation, RowImage, Value};
use tokio_postgres::Client;

use crate::support::TestDb;

/// A 100 kB value that does not compress: stored out of line, uncompressed.
const BIG: &str = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 3200) g)";

/// Table `t` with REPLICA IDENTITY FULL, publication `publication`, and a pgoutput slot named after
/// the database. Commits of the returned session are synchronous: the test clusters run with
/// `synchronous_commit = off`, and a slot is read only up to the flushed WAL.
async fn cloud_with_slot(db: &TestDb, publication: &str) -> Client {
    let cloud = db.cloud().await;
    cloud
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, name text, big text, n numeric(6,2), d date,
                             b boolean, source char(1));
             ALTER TABLE t REPLICA IDENTITY FULL;
             {publication};
             SET synchronous_commit = on;"
        ))
        .await
        .unwrap();
    cloud
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.name],
        )
        .await
        .unwrap();
    cloud
}

/// Runs each statement in a transaction of its own.
async fn run(cloud: &Client, statements: &[&str]) {
    for sql in statements {
        cloud
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Every message in the slot, decoded; then drops the slot (before anything is asserted).
async fn changes(cloud: &Client, slot: &str, publication: &str) -> Vec<PgOutput> {
    let rows = cloud
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
               'proto_version', '1', 'publication_names', $2, 'messages', 'true')",
            &[&slot, &publication],
        )
        .await
        .expect("peeking at the slot");
    cloud
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .expect("dropping the slot");
    rows.iter()
        .map(|r| {
            let data = Bytes::from(r.get::<_, Vec<u8>>(0));
            let decoded = pgoutput::decode_bytes(&data).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(pgoutput::decode(&data), Ok(decoded.clone()));
            decoded
        })
        .collect()
}

fn kind(m: &PgOutput) -> &'static str {
    match m {
        PgOutput::Begin { .. } => "Begin",
        PgOutput::Commit { .. } => "Commit",
        PgOutput::Origin { .. } => "Origin",
        PgOutput::Relation(_) => "Relation",
        PgOutput::Type { .. } => "Type",
        PgOutput::Insert { .. } => "Insert",
        PgOutput::Update { .. } => "Update",
        PgOutput::Delete { .. } => "Delete",
        PgOutput::Truncate { .. } => "Truncate",
        PgOutput::Message { .. } => "Message",
    }
}

/// The messages between each Begin and Commit, checking that every Begin matches its Commit.
fn transactions(messages: &[PgOutput]) -> Vec<Vec<PgOutput>> {
    let mut txs = Vec::new();
    let mut open: Option<(CommitLsn, i64, Vec<PgOutput>)> = None;
    for m in messages {
        match (m, &mut open) {
            (
                PgOutput::Begin {
                    final_lsn,
                    commit_time_micros,
                    ..
                },
                None,
            ) => open = Some((*final_lsn, *commit_time_micros, Vec::new())),
            (
                PgOutput::Commit {
                    commit_lsn,
                    end_lsn,
                    commit_time_micros,
                },
                Some((lsn, time, _)),
            ) => {
                assert_eq!((commit_lsn, commit_time_micros), (&*lsn, &*time));
                assert!(end_lsn.0 > commit_lsn.0);
                txs.push(open.take().unwrap().2);
            }
            (m, Some((_, _, body))) => body.push(m.clone()),
            (m, None) => panic!("{} outside a transaction", kind(m)),
        }
    }
    assert!(open.is_none(), "a transaction without Commit");
    txs
}

fn kinds(txs: &[Vec<PgOutput>]) -> Vec<Vec<&'static str>> {
    txs.iter().map(|tx| tx.iter().map(kind).collect()).collect()
}

fn text(s: &str) -> Value {
    Value::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn row(values: &[Value]) -> RowImage {
    RowImage(values.to_vec())
}

#[tokio::test]
async fn pgoutput_decodes_what_postgres_sends() {
    let db = TestDb::new().await;
    let cloud = cloud_with_slot(&db, "CREATE PUBLICATION p FOR TABLE t").await;
    let insert_big = format!("INSERT INTO t VALUES (2, 'big', {BIG}, NULL, NULL, false, 'D')");
    run(
        &cloud,
        &[
            "INSERT INTO t VALUES (1, 'श्री Café', NULL, 12.5, '2026-11-22', true, 'M')",
            &insert_big,
        ],
    )
    .await;
    let stored = cloud
        .query_one("SELECT big, pg_column_size(big) FROM t WHERE id = 2", &[])
        .await
        .unwrap();
    let big = text(stored.get(0));
    // Not compressed (so it is TOASTed out of line as it is, not shrunk inline).
    assert_eq!(stored.get::<_, i32>(1), 102_400);
    run(
        &cloud,
        &[
            "UPDATE t SET name = 'still big' WHERE id = 2",
            "UPDATE t SET id = 3 WHERE id = 1",
            "DELETE FROM t WHERE id = 3",
            "TRUNCATE t",
            "SELECT pg_logical_emit_message(true, 'tandem', 'hello')",
        ],
    )
    .await;
    let txs = transactions(&changes(&cloud, &db.name, "p").await);
    assert_eq!(
        kinds(&txs),
        vec![
            vec!["Relation", "Insert"],
            vec!["Insert"],
            vec!["Update"],
            vec!["Update"],
            vec!["Delete"],
            // TRUNCATE gives the table a new file: the server describes the relation again.
            vec!["Relation", "Truncate"],
            vec!["Message"],
        ]
    );

    let PgOutput::Relation(relation) = &txs[0][0] else {
        unreachable!()
    };
    let mut cache = RelationCache::new();
    cache.update(relation.clone());
    let columns: Vec<(&str, u32, i32, bool)> = relation
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid, c.type_modifier, c.key))
        .collect();
    // With REPLICA IDENTITY FULL every column is flagged as part of the key.
    assert_eq!(
        columns,
        vec![
            ("id", 23, -1, true),
            ("name", 25, -1, true),
            ("big", 25, -1, true),
            ("n", 1700, (6 << 16 | 2) + 4, true),
            ("d", 1082, -1, true),
            ("b", 16, -1, true),
            ("source", 1042, 1 + 4, true),
        ]
    );
    assert_eq!(relation.name.to_string(), "t");
    assert_eq!(relation.replica_identity, 'f');
    assert_eq!(cache.column_index(relation.id, "big"), Some(2));
    let id = relation.id;

    let first = row(&[
        text("1"),
        text("श्री Café"),
        Value::Null,
        text("12.50"),
        text("2026-11-22"),
        text("t"),
        text("M"),
    ]);
    assert_eq!(
        txs[0][1],
        PgOutput::Insert {
            relation: id,
            new: first.clone(),
        }
    );
    let second = |name: &str, big: Value| {
        row(&[
            text("2"),
            text(name),
            big,
            Value::Null,
            Value::Null,
            text("f"),
            text("D"),
        ])
    };
    assert_eq!(
        txs[1][0],
        PgOutput::Insert {
            relation: id,
            new: second("big", big.clone()),
        }
    );
    // The new tuple says "unchanged" for the TOASTed value; the FULL old image carries all of it.
    assert_eq!(
        txs[2][0],
        PgOutput::Update {
            relation: id,
            old: Some(OldImage::Full(second("big", big))),
            new: second("still big", Value::UnchangedToast),
        }
    );
    let mut moved = first.clone();
    moved.0[0] = text("3");
    assert_eq!(
        txs[3][0],
        PgOutput::Update {
            relation: id,
            old: Some(OldImage::Full(first)),
            new: moved.clone(),
        }
    );
    assert_eq!(
        txs[4][0],
        PgOutput::Delete {
            relation: id,
            old: OldImage::Full(moved),
        }
    );
    let PgOutput::Relation(again) = &txs[5][0] else {
        unreachable!()
    };
    assert_eq!(again, relation);
    assert_eq!(
        txs[5][1],
        PgOutput::Truncate {
            relations: vec![id],
            cascade: false,
            restart_identity: false,
        }
    );
    let PgOutput::Message {
        transactional,
        lsn,
        prefix,
        content,
    } = &txs[6][0]
    else {
        unreachable!()
    };
    assert!(*transactional);
    assert!(*lsn > Lsn(0));
    assert_eq!(prefix, "tandem");
    assert_eq!(content.as_ref(), b"hello");
}

/// With the row filter tandem installs, an UPDATE that moves a row into the filter arrives as an Insert
/// of the whole row (TOASTed values included), one that moves it out as a Delete, and one within the
/// filter as an Update whose new tuple still says "unchanged" for TOASTed values.
#[tokio::test]
async fn pgoutput_row_filter_turns_updates_across_it_into_inserts_and_deletes() {
    let db = TestDb::new().await;
    let cloud = cloud_with_slot(
        &db,
        "CREATE PUBLICATION pf FOR TABLE t WHERE (source = 'M')",
    )
    .await;
    let insert_big = format!("INSERT INTO t VALUES (1, 'desk', {BIG}, NULL, NULL, NULL, 'D')");
    run(&cloud, &[&insert_big]).await;
    let big = text(
        cloud
            .query_one("SELECT big FROM t", &[])
            .await
            .unwrap()
            .get(0),
    );
    run(
        &cloud,
        &[
            "UPDATE t SET source = 'M', name = 'phone' WHERE id = 1",
            "UPDATE t SET name = 'phone 2' WHERE id = 1",
            "UPDATE t SET source = 'D' WHERE id = 1",
            "UPDATE t SET name = 'desk 2' WHERE id = 1",
        ],
    )
    .await;
    let txs = transactions(&changes(&cloud, &db.name, "pf").await);
    // The desktop-owned insert and the last update are filtered out: no transaction at all.
    assert_eq!(
        kinds(&txs),
        vec![vec!["Relation", "Insert"], vec!["Update"], vec!["Delete"]]
    );
    let PgOutput::Relation(Relation { id, .. }) = txs[0][0] else {
        unreachable!()
    };
    let image = |name: &str, big: Value, source: &str| {
        row(&[
            text("1"),
            text(name),
            big,
            Value::Null,
            Value::Null,
            Value::Null,
            text(source),
        ])
    };
    assert_eq!(
        txs[0][1],
        PgOutput::Insert {
            relation: id,
            new: image("phone", big.clone(), "M"),
        }
    );
    assert_eq!(
        txs[1][0],
        PgOutput::Update {
            relation: id,
            old: Some(OldImage::Full(image("phone", big.clone(), "M"))),
            new: image("phone 2", Value::UnchangedToast, "M"),
        }
    );
    // The Delete carries the row as it was before it left the filter.
    assert_eq!(
        txs[2][0],
        PgOutput::Delete {
            relation: id,
            old: OldImage::Full(image("phone 2", big, "M")),
        }
    );
}
