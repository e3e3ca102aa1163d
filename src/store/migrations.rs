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
    (6, include_str!("migrations/0006_meter_groups.sql")),
    (7, include_str!("migrations/0007_revisions_by_slot.sql")),
    (8, include_str!("migrations/0008_rejected_cancels.sql")),
    (9, include_str!("migrations/0009_overrides.sql")),
    (10, include_str!("migrations/0010_audit_reports.sql")),
    (
        11,
        include_str!("migrations/0011_interval_battery_coverage.sql"),
    ),
];

/// The schema version this build writes and reads.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

pub(crate) fn apply(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = latest();
    if current > latest {
        return Err(StoreError::TooNew {
            found: current,
            supported: latest,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        if *version == 6 {
            super::groups::migrate(&tx)?;
        }
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Timeslot;

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

    fn record(body: &str) -> super::super::IngestRecord {
        super::super::IngestRecord {
            received_at: chrono::Utc::now(),
            peer: None,
            headers: serde_json::json!({}),
            parsed: crate::ingest::parse_notification(body.as_bytes()).unwrap(),
            body: body.into(),
            source: super::super::Source::Push,
        }
    }

    /// Leap's group sample cut to one timeslot: the body, its timeslot, and an older
    /// revision of it.
    fn one_group_timeslot() -> (String, Timeslot, Timeslot) {
        let mut doc: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/leap-sample-group.json"))
                .unwrap();
        doc["group_dispatches"].as_array_mut().unwrap().truncate(1);
        let slots = doc["group_dispatches"][0]["timeslots"]
            .as_array_mut()
            .unwrap();
        slots.truncate(1);
        let body = doc.to_string();
        let group = record(&body).parsed.timeslots[0].clone();
        assert!(group.meter_ids.len() > 1, "the fixture names a group");
        let mut older = group.clone();
        older.energy_kw = crate::model::EnergyKw::Kw(1.5);
        (body, group, older)
    }

    /// A version-5 database file holding `group` with two revisions, rows exactly as a
    /// version-5 build wrote them: the whole timeslot, lists included, in `content`.
    fn write_v5_file(path: &std::path::Path, group: &Timeslot, older: &Timeslot) {
        let conn = Connection::open(path).unwrap();
        for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= 5) {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", v).unwrap();
        }
        let full = |t: &Timeslot| serde_json::to_string(t).unwrap();
        conn.execute(
            "INSERT INTO timeslots (kind, event_id, content, start_time, end_time,
               cancelled_final, revisions, first_received, last_received)
             VALUES ('group', ?1, ?2, 'a', 'b', 0, 2, ?3, ?3)",
            rusqlite::params![group.event_id, full(group), "2026-11-29T20:00:00.000Z"],
        )
        .unwrap();
        for (rev, t) in [(1, older), (2, group)] {
            conn.execute(
                "INSERT INTO timeslot_revisions VALUES ('group', ?1, ?2, ?2, 'x', ?3, 0)",
                rusqlite::params![group.event_id, rev, full(t)],
            )
            .unwrap();
        }
    }

    /// The event summary's lookup of its `report` row uses migration 10's index, not a
    /// scan of the whole audit log (on the writer thread, every 15 s of readings).
    #[test]
    fn the_report_lookup_uses_its_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        apply(&mut conn).unwrap();
        let plan: Vec<String> = conn
            .prepare("EXPLAIN QUERY PLAN SELECT EXISTS (SELECT 1 FROM audit WHERE action = 'report' AND event_id = ?1 AND kind = ?2)")
            .unwrap()
            .query_map(["e", "meter"], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(plan.iter().any(|d| d.contains("audit_reports")), "{plan:?}");
    }

    /// Migration 8 marks the rejected revisions stored before it that cancel an event, so
    /// an original arriving after the upgrade is still stored cancelled (SPEC §2.4).
    #[test]
    fn rejected_cancellations_stored_before_migration_8_still_cancel() {
        let mut conn = Connection::open_in_memory().unwrap();
        for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= 7) {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", v).unwrap();
        }
        let rows = [
            (
                "E1",
                r#"{"meter_event_id":"E1","cancelled":true,"energy_kw":0}"#,
            ),
            (
                "E2",
                r#"{"meter_event_id":"E2","cancelled":false,"energy_kw":0}"#,
            ),
            ("E3", r#"{"meter_event_id":"E3","cancelled":"true"}"#),
            ("E4", r#"{"meter_event_id":"E4","cancelled":1}"#),
        ];
        for (id, raw) in rows {
            conn.execute(
                "INSERT INTO rejected_timeslots (kind, event_id, meter_ids, reason, raw,
                   notification_id, times_seen, first_received, last_received)
                 VALUES ('meter', ?1, '[]', 'r', ?2, 1, 1, 'a', 'a')",
                [id, raw],
            )
            .unwrap();
        }
        apply(&mut conn).unwrap();
        let cancels: Vec<(String, bool)> = conn
            .prepare("SELECT event_id, cancels FROM rejected_timeslots ORDER BY event_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let want = [("E1", true), ("E2", false), ("E3", false), ("E4", false)];
        let want: Vec<(String, bool)> = want.iter().map(|(e, c)| (e.to_string(), *c)).collect();
        assert_eq!(cancels, want, "only a JSON true cancels, as at ingest");
    }

    /// Retention keeps the revision in force: after an ignored un-cancel the latest row is
    /// the conflict, and the cancellation before it is what the timeslot is.
    #[test]
    fn pruning_keeps_the_cancellation_an_un_cancel_conflicts_with() {
        use super::super::{ingest, query};
        let mut conn = Connection::open_in_memory().unwrap();
        apply(&mut conn).unwrap();
        let note = |cancelled: bool, kw: f64| {
            serde_json::json!({"meter_dispatches": [{"meter_id": "m1", "timeslots": [{
                "meter_event_id": "x", "start_time": "2030-01-01T00:00:00Z",
                "end_time": "2030-01-01T01:00:00Z", "cancelled": cancelled, "energy_kw": kw}]}]})
            .to_string()
        };
        for body in [note(false, 5.0), note(true, 5.0), note(false, 6.0)] {
            let tx = conn.transaction().unwrap();
            ingest::ingest(&tx, &ingest::Prepared::new(record(&body)).unwrap()).unwrap();
            tx.commit().unwrap();
        }
        conn.execute(
            "UPDATE timeslot_revisions SET received_at = '2020-01-01T00:00:00.000Z'",
            [],
        )
        .unwrap();
        query::prune_notifications(&conn, chrono::Utc::now()).unwrap();
        let kept: Vec<(i64, i64)> = conn
            .prepare("SELECT revision, conflict FROM timeslot_revisions ORDER BY revision")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(kept, [(2, 0), (3, 1)]);
    }

    /// One notification with an event both as a rejected cancellation and valid, not
    /// cancelled: cancelled once (SPEC §2.13, §2.4), and its identical redelivery changes
    /// nothing (it used to write a conflict revision, SPEC §2.3).
    #[test]
    fn a_redelivered_cancel_and_un_cancel_pair_is_all_duplicates() {
        use super::super::ingest;
        let mut conn = Connection::open_in_memory().unwrap();
        apply(&mut conn).unwrap();
        let body = serde_json::json!({"meter_dispatches": [{"meter_id": "m1", "timeslots": [
            {"meter_event_id": "x", "start_time": "2030-01-01T01:00:00Z",
             "end_time": "2030-01-01T00:00:00Z", "cancelled": true},
            {"meter_event_id": "x", "start_time": "2030-01-01T00:00:00Z",
             "end_time": "2030-01-01T01:00:00Z", "cancelled": false, "energy_kw": 5.0}]}]})
        .to_string();
        let mut deliver = || {
            let tx = conn.transaction().unwrap();
            let o = ingest::ingest(&tx, &ingest::Prepared::new(record(&body)).unwrap()).unwrap();
            tx.commit().unwrap();
            o
        };
        deliver();
        let again = deliver();
        assert_eq!((again.new, again.updated, again.conflict), (0, 0, 0));
        let (revisions, cancelled): (i64, i64) = conn
            .query_row(
                "SELECT revisions, cancelled_final FROM timeslots",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(cancelled, 1);
        assert_eq!(
            revisions, 1,
            "stored once, cancelled (the un-cancel as its conflict)"
        );
    }

    /// Another process holding the database at start (5 s busy timeout) is named, with the
    /// file and the way to find the process, not "database is locked: Error code 5".
    #[test]
    fn a_database_locked_at_start_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.db");
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let e = super::super::Store::open(&path).err().unwrap().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("locked by another process"),
            "{e}"
        );
    }

    /// Migration 6 on a real version-5 file with rows: group lists move to `meter_groups`
    /// (stored once), every read sees the same timeslots and revisions as before, and a
    /// redelivery after the upgrade is still a duplicate (SPEC §2.3).
    #[test]
    fn meter_group_migration_keeps_reads_and_dedup() {
        use super::super::{ingest, query};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v5.db");
        let (body, group, older) = one_group_timeslot();
        let body = &body;
        write_v5_file(&path, &group, &older);
        let mut conn = Connection::open(&path).unwrap();
        apply(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, latest());
        let all = query::all_timeslots(&conn).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].timeslot, group, "the same timeslot, lists and all");
        let revs = query::revisions(&conn, group.kind, &group.event_id).unwrap();
        let read: Vec<&Timeslot> = revs.iter().map(|r| &r.timeslot).collect();
        assert_eq!(read, vec![&older, &group]);
        let count =
            |c: &Connection, sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            count(&conn, "SELECT count(*) FROM meter_groups"),
            1,
            "stored once"
        );
        let meter = &group.meter_ids[0];
        let inline: i64 = conn
            .query_row(
                "SELECT (SELECT count(*) FROM timeslots WHERE instr(content, ?1))
                      + (SELECT count(*) FROM timeslot_revisions WHERE instr(content, ?1))",
                [meter],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(inline, 0, "no row copies the group's meter ids any more");
        let tx = conn.transaction().unwrap();
        let again = ingest::ingest(&tx, &ingest::Prepared::new(record(body)).unwrap()).unwrap();
        assert_eq!((again.new, again.updated, again.duplicate), (0, 0, 1));
        let other = body.replacen(meter.as_str(), "11111111-2222-3333-4444-555555555555", 1);
        let changed = ingest::ingest(&tx, &ingest::Prepared::new(record(&other)).unwrap()).unwrap();
        assert_eq!(changed.updated, 1, "another meter list is a new revision");
        tx.commit().unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM meter_groups"), 2);
        // Retention drops the superseded revisions, and with them the lists only they named.
        conn.execute(
            "UPDATE timeslot_revisions SET received_at = '2020-01-01T00:00:00.000Z'",
            [],
        )
        .unwrap();
        query::prune_notifications(&conn, chrono::Utc::now()).unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM meter_groups"), 1);
        let kept = &query::all_timeslots(&conn).unwrap()[0].timeslot;
        assert_eq!(kept.meter_ids[0], "11111111-2222-3333-4444-555555555555");
    }

    /// Timeslot rows and revisions as a version-6 build wrote them: `slots` inserted in
    /// reverse (so rowids and event ids do not sort alike), the first with an older
    /// revision before it. Returns that older revision.
    fn write_v6_rows(conn: &Connection, slots: &[Timeslot]) -> Timeslot {
        use super::super::groups::StoredForm;
        let mut older = slots[0].clone();
        older.energy_kw = crate::model::EnergyKw::Kw(1.5);
        for t in slots.iter().rev() {
            let content = StoredForm::of(t.clone()).unwrap().content;
            conn.execute(
                "INSERT INTO timeslots (kind, event_id, content, start_time, end_time,
                   cancelled_final, revisions, first_received, last_received)
                 VALUES ('meter', ?1, ?2, 'a', 'b', 0, ?3, 'r', 'r')",
                rusqlite::params![t.event_id, content, 1 + i64::from(*t == slots[0])],
            )
            .unwrap();
        }
        let revision = |t: &Timeslot, n: i64| {
            let content = StoredForm::of(t.clone()).unwrap().content;
            conn.execute(
                "INSERT INTO timeslot_revisions VALUES ('meter', ?1, ?2, ?2, 'r', ?3, 0, NULL)",
                rusqlite::params![t.event_id, n, content],
            )
            .unwrap();
        };
        revision(&older, 1);
        slots
            .iter()
            .for_each(|t| revision(t, 1 + i64::from(*t == slots[0])));
        older
    }

    /// Migration 7 on a version-6 file: every revision finds its timeslot through `slot`,
    /// reads and dedup are what they were, and new revisions are keyed the same way.
    #[test]
    fn revisions_move_to_their_timeslot_row() {
        use super::super::{ingest, query};
        let body = include_str!("../../tests/fixtures/leap-sample-meter.json");
        let slots = record(body).parsed.timeslots;
        let mut conn = Connection::open_in_memory().unwrap();
        for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= 6) {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", v).unwrap();
        }
        let older = write_v6_rows(&conn, &slots);
        apply(&mut conn).unwrap();
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            count("SELECT count(*) FROM timeslot_revisions r JOIN timeslots t ON t.rowid = r.slot"),
            4,
            "every revision points at a timeslot"
        );
        let read = query::revisions(&conn, slots[0].kind, &slots[0].event_id).unwrap();
        let read: Vec<&Timeslot> = read.iter().map(|r| &r.timeslot).collect();
        assert_eq!(read, vec![&older, &slots[0]]);
        for t in &slots[1..] {
            let read = query::revisions(&conn, t.kind, &t.event_id).unwrap();
            assert_eq!(read.len(), 1);
            assert_eq!(
                &read[0].timeslot, t,
                "each revision stays with its own timeslot"
            );
        }
        assert_eq!(
            count("SELECT count(*) FROM sqlite_schema WHERE name = 'timeslots_first_source'"),
            0
        );
        let tx = conn.transaction().unwrap();
        let again = ingest::ingest(&tx, &ingest::Prepared::new(record(body)).unwrap()).unwrap();
        assert_eq!((again.new, again.updated, again.duplicate), (0, 0, 3));
        let changed = body.replacen("10.000", "12.5", 1);
        let changed = ingest::ingest(&tx, &ingest::Prepared::new(record(&changed)).unwrap());
        assert_eq!(changed.unwrap().updated, 1);
        tx.commit().unwrap();
        let read = query::revisions(&conn, slots[0].kind, &slots[0].event_id).unwrap();
        assert_eq!(
            read.iter().map(|r| r.revision).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(read[2].timeslot.energy_kw, crate::model::EnergyKw::Kw(12.5));
    }

    /// The CLI on a database the daemon has not upgraded yet says what to do, and reads
    /// one that it has.
    #[test]
    fn the_cli_asks_for_a_restart_on_an_older_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let mut conn = Connection::open(&path).unwrap();
        for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v < latest()) {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", v).unwrap();
        }
        let err = super::super::open_gateway_read_only(&path).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Outdated { .. }), "{text}");
        assert!(text.contains("restart the daemon"), "{text}");
        apply(&mut conn).unwrap();
        assert!(super::super::open_gateway_read_only(&path).is_ok());
    }
}
