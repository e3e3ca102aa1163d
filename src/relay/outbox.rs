//! The outbox: the relay's SQLite file (WAL, FULL, via the gateway's store thread). A
//! notification, its entries and every per-gateway delivery it implies are committed in one
//! transaction before Leap gets its 200 (SPEC §2.1, §2.12).

use super::route::{self, Routes};
use crate::store::{StoreError, parse_ts, ts};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The relay schema's version (its own sequence: the relay has its own database file).
const SCHEMA: &[(i64, &str)] = &[
    (1, include_str!("schema.sql")),
    (2, include_str!("schema_mqtt.sql")),
    (3, include_str!("schema_broker.sql")),
    (4, include_str!("schema_refused.sql")),
];

/// The outbox schema version this build writes and reads.
pub(crate) fn latest() -> i64 {
    SCHEMA.last().map_or(0, |m| m.0)
}

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let latest = SCHEMA.last().map_or(0, |m| m.0);
    // Which database it is comes first: a gateway's has more migrations than the relay's,
    // and "newer than this build, install the newer one" would send the operator astray.
    if current > 0 && !is_relay_db(conn)? {
        return Err(StoreError::Corrupt(
            "this is a gateway database, not a relay outbox: give the relay its own storage.path"
                .into(),
        ));
    }
    if current > latest {
        return Err(StoreError::TooNew {
            found: current,
            supported: latest,
        });
    }
    for (version, sql) in SCHEMA.iter().filter(|(v, _)| *v > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "applied relay outbox migration");
    }
    Ok(())
}

pub(crate) fn is_relay_db(conn: &Connection) -> Result<bool, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'relay_deliveries'",
        [],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// A notification as received, ready to commit.
pub(crate) struct Incoming {
    pub(crate) received_at: DateTime<Utc>,
    pub(crate) peer: Option<String>,
    pub(crate) headers: serde_json::Value,
    pub(crate) body: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Committed {
    pub(crate) notification_id: i64,
    pub(crate) gateways: Vec<String>,
    pub(crate) unrouted: usize,
}

pub(crate) fn commit(
    conn: &mut Connection,
    n: &Incoming,
    routes: &Routes,
) -> Result<Committed, StoreError> {
    // Whatever ran before on this connection, this commit is fsynced before the ack.
    conn.pragma_update(None, "synchronous", "FULL")?;
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO relay_notifications (received_at, peer, headers, body) VALUES (?1, ?2, ?3, ?4)",
        params![ts(n.received_at), n.peer, n.headers.to_string(), n.body],
    )?;
    let id = tx.last_insert_rowid();
    let value: serde_json::Value = serde_json::from_str(&n.body)
        .map_err(|e| StoreError::Corrupt(format!("notification body: {e}")))?;
    for e in route::entries(&value) {
        tx.execute(
            "INSERT INTO relay_entries (notification_id, array, idx, meter_ids) VALUES (?1, ?2, ?3, ?4)",
            params![id, e.array, e.index as i64, serde_json::to_string(&e.meter_ids).unwrap_or_default()],
        )?;
    }
    let (gateways, unrouted) = route_notification(&tx, id, routes, n.received_at)?;
    tx.commit()?;
    Ok(Committed {
        notification_id: id,
        gateways,
        unrouted,
    })
}

/// (Re)compute one notification's pending deliveries under `routes`. What a gateway already
/// took (delivered or dead-lettered) is never sent again; a pending delivery whose content
/// is unchanged keeps its place and backoff; one whose meters moved is replaced.
/// Returns the gateways with a pending delivery and the number of unrouted entries.
fn route_notification(
    tx: &Transaction,
    id: i64,
    routes: &Routes,
    now: DateTime<Utc>,
) -> Result<(Vec<String>, usize), StoreError> {
    let body: String = tx.query_row(
        "SELECT body FROM relay_notifications WHERE id = ?1",
        [id],
        |r| r.get(0),
    )?;
    let value: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| StoreError::Corrupt(format!("notification {id}: {e}")))?;
    let obj = value.as_object().cloned().unwrap_or_default();
    let entries = route::entries(&value);
    let ids = entry_ids(tx, id)?;
    let eid = |e: &route::Entry| ids[&(e.array, e.index)];
    let done = units(tx, id, "state != 'pending'")?;
    let pending = units(tx, id, "state = 'pending'")?;
    let mut wanted: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for (g, idxs) in routes.plan(&entries) {
        for i in idxs {
            let e = eid(&entries[i]);
            if !done.get(&g).is_some_and(|s| s.1.contains(&e)) {
                wanted.entry(g.clone()).or_default().insert(e);
            }
        }
    }
    for (g, (did, set)) in &pending {
        if wanted.get(g) != Some(set) {
            tx.execute("DELETE FROM relay_deliveries WHERE id = ?1", [did])?;
        }
    }
    for (g, set) in &wanted {
        if pending.get(g).is_none_or(|p| &p.1 != set) {
            let chosen: Vec<&route::Entry> =
                entries.iter().filter(|e| set.contains(&eid(e))).collect();
            let out = route::body_for(&obj, &chosen).to_string();
            insert_delivery(tx, id, g, &out, set, now)?;
        }
    }
    let mut unrouted = 0;
    for e in &entries {
        let taken = done.values().any(|(_, s)| s.contains(&eid(e)));
        let lost = routes.gateways_for(&e.meter_ids).is_empty() && !taken;
        unrouted += usize::from(lost);
        tx.execute(
            "UPDATE relay_entries SET unrouted = ?1 WHERE id = ?2",
            params![lost, eid(e)],
        )?;
    }
    Ok((wanted.into_keys().collect(), unrouted))
}

fn insert_delivery(
    tx: &Transaction,
    notification: i64,
    gateway: &str,
    body: &str,
    entries: &BTreeSet<i64>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO relay_deliveries (notification_id, gateway, state, created_at, next_attempt_at)
         VALUES (?1, ?2, 'pending', ?3, ?3)",
        params![notification, gateway, ts(now)],
    )?;
    let did = tx.last_insert_rowid();
    tx.execute(
        "INSERT INTO relay_delivery_bodies (delivery_id, body) VALUES (?1, ?2)",
        params![did, body],
    )?;
    for e in entries {
        tx.execute(
            "INSERT INTO relay_delivery_entries (delivery_id, entry_id) VALUES (?1, ?2)",
            [did, *e],
        )?;
    }
    Ok(())
}

fn entry_ids(tx: &Transaction, id: i64) -> Result<HashMap<(&'static str, usize), i64>, StoreError> {
    let mut stmt =
        tx.prepare("SELECT id, array, idx FROM relay_entries WHERE notification_id = ?1")?;
    let rows = stmt.query_map([id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (eid, array, idx) = row?;
        let array = route::ARRAYS
            .into_iter()
            .find(|a| *a == array)
            .ok_or_else(|| StoreError::Corrupt(format!("entry {eid}: array {array:?}")))?;
        out.insert((array, idx as usize), eid);
    }
    Ok(out)
}

/// Per gateway: (a delivery id, the entry ids it carries) for deliveries matching `filter`.
fn units(
    tx: &Transaction,
    id: i64,
    filter: &str,
) -> Result<BTreeMap<String, (i64, BTreeSet<i64>)>, StoreError> {
    let sql = format!(
        "SELECT d.gateway, d.id, de.entry_id FROM relay_deliveries d
         JOIN relay_delivery_entries de ON de.delivery_id = d.id
         WHERE d.notification_id = ?1 AND d.{filter}"
    );
    let mut stmt = tx.prepare(&sql)?;
    let rows = stmt.query_map([id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out: BTreeMap<String, (i64, BTreeSet<i64>)> = BTreeMap::new();
    for row in rows {
        let (g, did, eid) = row?;
        out.entry(g).or_insert((did, BTreeSet::new())).1.insert(eid);
    }
    Ok(out)
}

/// SPEC §2.12 reload: re-route every notification that still has something undelivered or
/// unrouted, and every one with an entry that a gateway now serves but has neither taken nor
/// queued (its meter moved there, or the gateway is new). Such a gateway gets everything
/// stored for its meters, in arrival order, so it ends on the latest revision, as the
/// gateway it replaces did; gateways count what they already had as duplicates. Only
/// notifications received since `replay_since` are replayed: older ones hold only ended
/// timeslots, and a year of them would queue a live dispatch behind history.
/// Returns how many notifications were looked at.
pub(crate) fn reroute_all(
    conn: &mut Connection,
    routes: &Routes,
    replay_since: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let tx = conn.transaction()?;
    let mut ids: BTreeSet<i64> = {
        // Unrouted entries count only inside the replay window too: a meter enrolled at
        // Leap weeks before its gateway was configured must not get those weeks first.
        let mut stmt = tx.prepare(
            "SELECT notification_id FROM relay_deliveries WHERE state = 'pending'
             UNION SELECT e.notification_id FROM relay_entries e
               JOIN relay_notifications n ON n.id = e.notification_id
               WHERE e.unrouted = 1 AND n.received_at >= ?1",
        )?;
        let rows = stmt.query_map([ts(replay_since)], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    ids.extend(missing_a_gateway(&tx, routes, replay_since)?);
    settle_old_unrouted(&tx, routes, replay_since)?;
    let now = Utc::now();
    for id in &ids {
        route_notification(&tx, *id, routes, now)?;
    }
    tx.commit()?;
    Ok(ids.len())
}

/// Entries no gateway served, received before the replay window, whose meter a gateway
/// serves now: not replayed (their timeslots have ended), and no longer unrouted either,
/// so `relay status` and the metric do not go on counting a meter that is served. They are
/// kept until the retention, as delivered ones are.
fn settle_old_unrouted(
    tx: &Transaction,
    routes: &Routes,
    since: DateTime<Utc>,
) -> Result<(), StoreError> {
    let old: Vec<(i64, String)> = {
        let mut stmt = tx.prepare(
            "SELECT e.id, e.meter_ids FROM relay_entries e
             JOIN relay_notifications n ON n.id = e.notification_id
             WHERE e.unrouted = 1 AND n.received_at < ?1",
        )?;
        let rows = stmt.query_map([ts(since)], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, meters) in old {
        let meters: Vec<String> = serde_json::from_str(&meters)
            .map_err(|e| StoreError::Corrupt(format!("entry {id} meters: {e}")))?;
        if !routes.gateways_for(&meters).is_empty() {
            tx.execute("UPDATE relay_entries SET unrouted = 0 WHERE id = ?1", [id])?;
        }
    }
    Ok(())
}

/// Notifications with an entry that some gateway serves under `routes` and has no delivery
/// of, in any state.
fn missing_a_gateway(
    tx: &Transaction,
    routes: &Routes,
    since: DateTime<Utc>,
) -> Result<BTreeSet<i64>, StoreError> {
    let mut stmt = tx.prepare(
        "SELECT e.notification_id, e.meter_ids,
                (SELECT group_concat(d.gateway, char(31)) FROM relay_delivery_entries de
                 JOIN relay_deliveries d ON d.id = de.delivery_id WHERE de.entry_id = e.id)
         FROM relay_entries e JOIN relay_notifications n ON n.id = e.notification_id
         WHERE n.received_at >= ?1",
    )?;
    let rows = stmt.query_map([ts(since)], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    let mut out = BTreeSet::new();
    for row in rows {
        let (id, meters, had) = row?;
        let meters: Vec<String> = serde_json::from_str(&meters)
            .map_err(|e| StoreError::Corrupt(format!("notification {id} entry meters: {e}")))?;
        let had: BTreeSet<&str> = had.as_deref().unwrap_or("").split('\u{1f}').collect();
        if routes
            .gateways_for(&meters)
            .iter()
            .any(|g| !had.contains(g.as_str()))
        {
            out.insert(id);
        }
    }
    Ok(out)
}

/// The head of one gateway's queue.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) id: i64,
    pub(crate) notification_id: i64,
    pub(crate) body: String,
    pub(crate) attempts: u32,
    pub(crate) next_attempt_at: DateTime<Utc>,
}

pub(crate) fn head(conn: &Connection, gateway: &str) -> Result<Option<Pending>, StoreError> {
    let row = conn
        .query_row(
            "SELECT d.id, d.notification_id, b.body, d.attempts, d.next_attempt_at
             FROM relay_deliveries d JOIN relay_delivery_bodies b ON b.delivery_id = d.id
             WHERE d.gateway = ?1 AND d.state = 'pending' ORDER BY d.notification_id, d.id LIMIT 1",
            [gateway],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, String>(4)?,
                ))
            },
        )
        .optional()?;
    row.map(|(id, notification_id, body, attempts, next)| {
        Ok(Pending {
            id,
            notification_id,
            body,
            attempts,
            next_attempt_at: parse_ts(&next)?,
        })
    })
    .transpose()
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub(crate) enum Attempt {
    Delivered {
        status: u16,
    },
    /// Transient: try again at `next`.
    Retry {
        error: String,
        next: DateTime<Utc>,
    },
    /// The gateway refused it (4XX): a configuration error, kept with the answer.
    Dead {
        status: u16,
        answer: String,
    },
}

/// Record how an attempt ended. Without an fsync of its own (`synchronous=NORMAL` for this
/// one commit): in WAL mode the next notification's FULL commit makes it durable, and if
/// power fails first, the outcome is lost in a consistent way — the delivery is sent again
/// and the gateway counts a duplicate. This keeps delivery from taking fsyncs away from acks.
pub(crate) fn record(
    conn: &mut Connection,
    gateway: &str,
    id: i64,
    attempt: &Attempt,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let written = record_tx(conn, gateway, id, attempt, now);
    conn.pragma_update(None, "synchronous", "FULL")?;
    written
}

fn record_tx(
    conn: &mut Connection,
    gateway: &str,
    id: i64,
    attempt: &Attempt,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO relay_gateways (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
        [gateway],
    )?;
    let now_s = ts(now);
    match attempt {
        Attempt::Delivered { status } => {
            tx.execute(
                "UPDATE relay_deliveries SET state = 'delivered', attempts = attempts + 1,
                 answer_status = ?2, finished_at = ?3 WHERE id = ?1",
                params![id, status, now_s],
            )?;
            tx.execute(
                "UPDATE relay_gateways SET last_success_at = ?2 WHERE name = ?1",
                params![gateway, now_s],
            )?;
        }
        Attempt::Retry { error, next } => {
            tx.execute(
                "UPDATE relay_deliveries SET attempts = attempts + 1, last_error = ?2,
                 next_attempt_at = ?3 WHERE id = ?1",
                params![id, error, ts(*next)],
            )?;
            set_error(&tx, gateway, error, &now_s)?;
        }
        Attempt::Dead { status, answer } => {
            tx.execute(
                "UPDATE relay_deliveries SET state = 'dead', attempts = attempts + 1,
                 answer_status = ?2, answer_body = ?3, finished_at = ?4 WHERE id = ?1",
                params![id, status, answer, now_s],
            )?;
            set_error(&tx, gateway, &format!("HTTP {status}: {answer}"), &now_s)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// A gateway the worker cannot deliver to at all (its address or TLS files unusable):
/// `relay status` and `/healthz` show why, as for a failed attempt.
pub(crate) fn gateway_error(
    conn: &Connection,
    gateway: &str,
    error: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO relay_gateways (name, last_error, last_error_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET last_error = ?2, last_error_at = ?3",
        params![gateway, error, ts(Utc::now())],
    )?;
    Ok(())
}

fn set_error(tx: &Transaction, gateway: &str, error: &str, now: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE relay_gateways SET last_error = ?2, last_error_at = ?3 WHERE name = ?1",
        params![gateway, error, now],
    )?;
    Ok(())
}

/// Forget what is settled and older than the retention (SPEC §2.5): notifications with no
/// pending delivery, no dead letter and no unrouted entry (SPEC §2.12: kept and shown).
pub(crate) fn prune(conn: &mut Connection, before: DateTime<Utc>) -> Result<usize, StoreError> {
    let n = conn.execute(
        "DELETE FROM relay_notifications WHERE received_at < ?1
         AND id NOT IN (SELECT notification_id FROM relay_deliveries WHERE state != 'delivered')
         AND id NOT IN (SELECT notification_id FROM relay_entries WHERE unrouted = 1)",
        [ts(before)],
    )?;
    Ok(n)
}

/// What a requeue put back in the queues.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Requeued {
    pub(crate) dead: usize,
    /// Delivered after the oldest dead letter: sent again behind it (SPEC §2.12 "in
    /// order"), so the gateway does not end on an older revision than it had.
    pub(crate) later: usize,
    /// Dead letters received before the replay window, left as they are.
    pub(crate) left: usize,
}

/// Queue a gateway's dead letters again (its url or key was fixed), and everything it was
/// delivered after the oldest of them, in arrival order. A gateway keeps the last revision
/// it receives: a dead letter sent alone after newer notifications would bring back an
/// older one. The gateway counts what it already had as duplicates.
/// Only what was received since `since` (the replay window: older notifications hold
/// only ended timeslots) is sent again, dead letters and what followed them alike: one
/// old dead letter must not queue months of duplicates ahead of live dispatches, and one
/// sent alone would leave the gateway on a revision it had superseded. Older dead letters
/// stay (counted in `left`).
pub(crate) fn requeue_dead(
    conn: &mut Connection,
    gateways: &[String],
    since: DateTime<Utc>,
) -> Result<Requeued, StoreError> {
    let now = ts(Utc::now());
    let since = ts(since);
    let tx = conn.transaction()?;
    let mut n = Requeued::default();
    for g in gateways {
        let recent =
            "notification_id IN (SELECT id FROM relay_notifications WHERE received_at >= ?3)";
        n.later += tx.execute(
            &format!(
                "UPDATE relay_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?2,
                 finished_at = NULL WHERE gateway = ?1 AND state = 'delivered'
                 AND notification_id > (SELECT MIN(notification_id) FROM relay_deliveries
                                        WHERE gateway = ?1 AND state = 'dead' AND {recent})
                 AND {recent}"
            ),
            params![g, now, since],
        )?;
        n.dead += tx.execute(
            &format!(
                "UPDATE relay_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?2,
                 finished_at = NULL WHERE gateway = ?1 AND state = 'dead' AND {recent}"
            ),
            params![g, now, since],
        )?;
        let left: i64 = tx.query_row(
            "SELECT COUNT(*) FROM relay_deliveries WHERE gateway = ?1 AND state = 'dead'",
            [g],
            |r| r.get(0),
        )?;
        n.left += usize::try_from(left).unwrap_or_default();
    }
    tx.commit()?;
    Ok(n)
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
