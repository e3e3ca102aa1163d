//! Numbered migrations, applied in order at start inside one transaction each. The applied
//! version is SQLite's `user_version`, so a database from a newer build is refused.

use super::StoreError;
use rusqlite::Connection;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_audit.sql")),
    (3, include_str!("migrations/0003_source.sql")),
    (4, include_str!("migrations/0004_rowid_timeslots.sql")),
    (5, include_str!("migrations/0005_intervals.sql")),
];

pub(crate) fn apply(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(StoreError::TooNew {
            found: current,
            supported: latest,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Migration 3 keeps every timeslot and revision of a version-2 database and leaves
    /// no table keyed by its whole (possibly 440 KB) row.
    #[test]
    fn rowid_migration_keeps_the_data() {
        let mut conn = Connection::open_in_memory().unwrap();
        for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= 2) {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", v).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO timeslots VALUES ('meter', 'E1', '{}', 'a', 'b', 0, 0, 2, 1, 'x', 'y');
             INSERT INTO timeslot_revisions VALUES ('meter', 'E1', 1, 7, 'x', '{}', 0);
             INSERT INTO timeslot_revisions VALUES ('meter', 'E1', 2, 8, 'y', '{\"a\":1}', 1);",
        )
        .unwrap();
        apply(&mut conn).unwrap();
        let slot: (String, i64, i64) = conn
            .query_row(
                "SELECT end_time, revisions, duplicates FROM timeslots WHERE event_id='E1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(slot, ("b".into(), 2, 1));
        let revs: i64 = conn
            .query_row(
                "SELECT sum(notification_id * conflict) FROM timeslot_revisions",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(revs, 8);
        let without_rowid: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE sql LIKE '%WITHOUT ROWID%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(without_rowid, 0);
        let indexed: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'timeslots_end'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexed, 1);
    }
}
