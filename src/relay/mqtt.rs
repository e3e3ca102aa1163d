//! The relay's MQTT glue (SPEC §2.12 fleets): Leap's answer waits for the broker's PUBACKs,
//! queued parts go out as soon as the broker is back, and what each gateway last said on
//! its status topic is kept in the outbox for `relay status`.

use super::config::{RelayConfig, Transport};
use super::deliver::Fleet;
use crate::admin::state::BrokerConnection;
use crate::mqtt::link::{Link, Seen};
use crate::store::{Store, StoreError, parse_ts, ts};
use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::Arc;
use tokio::sync::watch;

pub(crate) fn mqtt_gateways(config: &RelayConfig, among: &[String]) -> Vec<String> {
    config
        .gateways
        .iter()
        .filter(|g| g.transport == Transport::Mqtt && among.contains(&g.name))
        .map(|g| g.name.clone())
        .collect()
}

fn pending_for(conn: &Connection, id: i64, gateways: &[String]) -> Result<usize, StoreError> {
    let names = serde_json::to_string(gateways).unwrap_or_default();
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM relay_deliveries WHERE notification_id = ?1 AND state = 'pending'
         AND gateway IN (SELECT value FROM json_each(?2))",
        params![id, names],
        |r| r.get(0),
    )?;
    Ok(n as usize)
}

/// SPEC §2.12: answer Leap after the broker's PUBACK for every MQTT part, or — broker down
/// or slow — after `ack_wait` with the parts safe in the outbox (they are committed before
/// this is called). Returns whether every part was acknowledged by the broker.
pub(crate) async fn wait_published(
    store: &Store,
    fleet: &Fleet,
    id: i64,
    gateways: Vec<String>,
) -> bool {
    let Some(link) = fleet.link() else {
        return false;
    };
    if gateways.is_empty() {
        return true;
    }
    if !link.is_connected() {
        return false;
    }
    let mut progress = fleet.progress.subscribe();
    let deadline = tokio::time::Instant::now() + link.ack_wait();
    loop {
        let g = gateways.clone();
        match store.read(move |c| pending_for(c, id, &g)).await {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox while waiting for PUBACKs");
                return false;
            }
        }
        if tokio::time::timeout_at(deadline, progress.changed())
            .await
            .is_err()
        {
            return false;
        }
    }
}

/// Keep what a gateway said on its status topic (online, or its will: offline). Refused
/// messages stay recorded until the gateway reports newer ones (a restarted gateway, or its
/// will, says nothing about them).
fn save_seen(conn: &Connection, gateway: &str, s: &Seen) -> Result<(), StoreError> {
    let r = s.refused.as_ref();
    conn.execute(
        "INSERT INTO relay_mqtt_status (gateway, online, status_at, received_at, last_commit_at,
           refused_total, last_refused_at, last_refused_error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (gateway) DO UPDATE SET online = ?2, status_at = ?3,
         -- An offline gateway's retained will comes again at every reconnect of the relay:
         -- offline since the first time it was seen, not since the reconnect.
         received_at = CASE WHEN ?2 = 0 AND online = 0 THEN received_at ELSE ?4 END,
         last_commit_at = ?5, refused_total = COALESCE(?6, refused_total),
         last_refused_at = COALESCE(?7, last_refused_at),
         last_refused_error = COALESCE(?8, last_refused_error)",
        params![
            gateway,
            s.online,
            s.status_at.map(ts),
            ts(s.received_at),
            s.last_commit_at.map(ts),
            r.map(|r| r.total as i64),
            r.map(|r| ts(r.last_at)),
            r.map(|r| r.last_error.as_str()),
        ],
    )?;
    Ok(())
}

/// The relay's broker connection as it last changed (schema version 3).
fn save_link(conn: &Connection, l: &BrokerConnection) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR REPLACE INTO relay_mqtt_link
           (id, url, connected, since, last_error, last_error_at, connections)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            l.url,
            l.connected,
            ts(l.since),
            l.last_error,
            l.last_error_at.map(ts),
            l.connections as i64
        ],
    )?;
    Ok(())
}

fn load_link(conn: &Connection) -> Result<Option<BrokerConnection>, StoreError> {
    // A relay not yet restarted on version 3 has no such table: nothing recorded yet.
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'relay_mqtt_link')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    let row = conn
        .query_row(
            "SELECT url, connected, since, last_error, last_error_at, connections
             FROM relay_mqtt_link WHERE id = 1",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((url, connected, since, last_error, last_error_at, connections)) = row else {
        return Ok(None);
    };
    Ok(Some(BrokerConnection {
        url,
        connected,
        since: parse_ts(&since)?,
        last_error,
        last_error_at: last_error_at.as_deref().map(parse_ts).transpose()?,
        connections: connections.max(0) as u64,
        refused: None,
        session_lost_at: None,
    }))
}

/// What `relay status` shows for an MQTT gateway.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct MqttSeen {
    pub(crate) online: bool,
    /// When the relay last received the gateway's status (or its will).
    pub(crate) last_status_at: Option<String>,
    /// The gateway's own time in that status (absent for a will).
    pub(crate) status_at: Option<String>,
    pub(crate) last_commit_at: Option<String>,
    /// Messages the gateway acknowledged without storing, as it last reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) refused_total: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_refused_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_refused_error: Option<String>,
}

/// Add what each MQTT gateway last said to the status (never heard: offline, no time).
pub(crate) fn attach(
    conn: &Connection,
    config: &RelayConfig,
    s: &mut super::status::RelayStatus,
) -> Result<(), StoreError> {
    if config.mqtt.is_some() {
        s.broker = load_link(conn)?;
    }
    let mut seen = load_seen(conn)?;
    for g in &mut s.gateways {
        let mqtt = config
            .gateways
            .iter()
            .any(|c| c.name == g.name && c.transport == Transport::Mqtt);
        if mqtt {
            g.mqtt = Some(seen.remove(&g.name).unwrap_or_default());
        }
    }
    Ok(())
}

fn load_seen(conn: &Connection) -> Result<std::collections::HashMap<String, MqttSeen>, StoreError> {
    // An outbox not yet migrated to version 4 (a relay not restarted since) has no
    // refusal columns: read them as none.
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    // Before version 2 no gateway status was recorded (no such table): none seen.
    if version < 2 {
        return Ok(std::collections::HashMap::new());
    }
    let refused = if version >= 4 {
        "refused_total, last_refused_at, last_refused_error"
    } else {
        "NULL, NULL, NULL"
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT gateway, online, received_at, status_at, last_commit_at, {refused}
         FROM relay_mqtt_status"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            MqttSeen {
                online: r.get(1)?,
                last_status_at: r.get(2)?,
                status_at: r.get(3)?,
                last_commit_at: r.get(4)?,
                refused_total: r.get(5)?,
                last_refused_at: r.get(6)?,
                last_refused_error: r.get(7)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Start the broker link: statuses go to the outbox; on every (re)connection, the MQTT
/// gateways' queued parts are due at once (no backoff left over from the outage).
pub(crate) fn start_link(
    config: &RelayConfig,
    store: &Store,
    stop: watch::Receiver<bool>,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<Option<Arc<Link>>, String> {
    let Some(m) = &config.mqtt else {
        return Ok(None);
    };
    let pending = Arc::new(Pending::default());
    tasks.spawn(save_statuses(store.clone(), pending.clone(), stop.clone()));
    let statuses = pending.clone();
    let on_status = move |gateway: String, seen: Seen| statuses.gateway(gateway, seen);
    let on_broker = move |link: BrokerConnection| pending.link(link);
    Link::start(
        m.clone(),
        (Box::new(on_status), Box::new(on_broker)),
        stop,
        tasks,
    )
    .map(Some)
}

/// What the link has heard and the outbox does not have yet: the latest status of each
/// gateway (a later one replaces an earlier one, so a retained "online" can never be stored
/// after the "offline" that followed it) and the link's own state. One entry per gateway
/// bounds it, so the burst of retained statuses at every (re)connection of a large fleet
/// loses none (a queue of messages used to drop them, offline wills included).
#[derive(Default)]
struct Pending {
    state: std::sync::Mutex<(
        std::collections::HashMap<String, Seen>,
        Option<BrokerConnection>,
    )>,
    ready: tokio::sync::Notify,
}

impl Pending {
    fn gateway(&self, gateway: String, seen: Seen) {
        self.state
            .lock()
            .expect("pending statuses")
            .0
            .insert(gateway, seen);
        self.ready.notify_one();
    }

    fn link(&self, link: BrokerConnection) {
        self.state.lock().expect("pending statuses").1 = Some(link);
        self.ready.notify_one();
    }

    fn take(
        &self,
    ) -> (
        std::collections::HashMap<String, Seen>,
        Option<BrokerConnection>,
    ) {
        std::mem::take(&mut *self.state.lock().expect("pending statuses"))
    }
}

/// One writer: whatever is pending goes into one transaction.
async fn save_statuses(store: Store, pending: Arc<Pending>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = pending.ready.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (gateways, link) = pending.take();
        if gateways.is_empty() && link.is_none() {
            continue;
        }
        let n = gateways.len();
        let r = store
            .call(move |c| {
                let tx = c.transaction()?;
                for (gateway, seen) in &gateways {
                    save_seen(&tx, gateway, seen)?;
                }
                if let Some(l) = &link {
                    save_link(&tx, l)?;
                }
                tx.commit()?;
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, statuses = n, "cannot keep MQTT statuses in the outbox");
        }
    }
}

/// After each connection to the broker: clear MQTT gateways' backoff and wake their workers.
pub(crate) async fn on_connect(
    link: Arc<Link>,
    store: Store,
    fleet: Arc<Fleet>,
    mqtt_names: impl Fn() -> Vec<String> + Send + 'static,
    mut stop: watch::Receiver<bool>,
) {
    let mut connected = link.connected.subscribe();
    loop {
        tokio::select! {
            r = connected.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let names = mqtt_names();
        let now = ts(Utc::now());
        let reset = store
            .call(move |c| {
                let mut n = 0;
                for g in &names {
                    n += c.execute(
                        "UPDATE relay_deliveries SET next_attempt_at = ?2
                         WHERE gateway = ?1 AND state = 'pending'",
                        params![g, now],
                    )?;
                }
                Ok(n)
            })
            .await;
        match reset {
            Ok(n) => tracing::info!(
                queued = n,
                "mqtt: broker reachable; publishing queued parts"
            ),
            Err(e) => tracing::warn!(error = %e, "mqtt: cannot reset the backoff"),
        }
        fleet.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The retained statuses of a whole fleet at a reconnection, each gateway's "online"
    /// then its "offline": none is dropped, and the later one is what is kept.
    #[test]
    fn pending_statuses_keep_the_latest_of_every_gateway() {
        let p = Pending::default();
        let seen = |online| Seen {
            online,
            status_at: None,
            received_at: Utc::now(),
            last_commit_at: None,
            refused: None,
        };
        for g in 0..10_000 {
            p.gateway(format!("site-{g}"), seen(true));
            p.gateway(format!("site-{g}"), seen(false));
        }
        let (gateways, link) = p.take();
        assert_eq!(gateways.len(), 10_000);
        assert!(gateways.values().all(|s| !s.online));
        assert!(link.is_none());
        assert!(p.take().0.is_empty());
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn check(extra: &str) -> Result<(), Vec<String>> {
        let text =
            format!("[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nkeys = [\"{KEY}\"]\n{extra}");
        toml::from_str::<RelayConfig>(&text).unwrap().check()
    }

    #[test]
    fn an_mqtt_gateway_needs_the_broker_and_takes_no_url_or_key() {
        let gw = "[[gateways]]\nname = \"a\"\ntransport = \"mqtt\"\nmeters = [\"M1\"]\n";
        let err = check(gw).unwrap_err();
        assert!(
            err.iter().any(|e| e.contains("needs an [mqtt] table")),
            "{err:?}"
        );
        let broker = "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nclient_id = \"relay\"\n";
        assert_eq!(check(&format!("{gw}{broker}")), Ok(()));
        let with_url = "[[gateways]]\nname = \"a\"\ntransport = \"mqtt\"\nurl = \"http://127.0.0.1:1/x\"\nmeters = [\"M1\"]\n";
        let err = check(&format!("{with_url}{broker}")).unwrap_err();
        assert!(err.iter().any(|e| e.contains("takes no url")), "{err:?}");
        let bad = "[mqtt]\nurl = \"mqtt://10.0.0.1:1883\"\nclient_id = \"relay\"\n";
        let err = check(&format!("{gw}{bad}")).unwrap_err();
        assert!(err.iter().any(|e| e.starts_with("mqtt.url")), "{err:?}");
    }

    /// A gateway's retained will is received again at every reconnect of the relay: it
    /// stays offline since the first time, so `relay status` can say for how long.
    #[test]
    fn an_offline_gateway_stays_offline_since_it_was_first_seen_so() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in [
            include_str!("schema.sql"),
            include_str!("schema_mqtt.sql"),
            include_str!("schema_broker.sql"),
            include_str!("schema_refused.sql"),
        ] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
        let at = |s| parse_ts(s).unwrap();
        let seen = |online, t| Seen {
            online,
            status_at: None,
            received_at: at(t),
            last_commit_at: None,
            refused: None,
        };
        let since = |conn: &Connection| load_seen(conn).unwrap()["gw"].last_status_at.clone();
        save_seen(&conn, "gw", &seen(false, "2026-11-30T05:00:00.000Z")).unwrap();
        save_seen(&conn, "gw", &seen(false, "2026-11-30T06:00:00.000Z")).unwrap();
        assert_eq!(since(&conn).as_deref(), Some("2026-11-30T05:00:00.000Z"));
        save_seen(&conn, "gw", &seen(true, "2026-11-30T07:00:00.000Z")).unwrap();
        assert_eq!(since(&conn).as_deref(), Some("2026-11-30T07:00:00.000Z"));
    }

    /// `relay status` on an outbox a relay has not migrated yet (the new version refused
    /// its config, so it was not restarted): before, "no such table".
    #[test]
    fn an_outbox_at_version_1_has_no_gateway_status_yet() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!("schema.sql")).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        assert!(load_seen(&conn).unwrap().is_empty());
    }

    #[test]
    fn the_link_row_round_trips_and_an_outbox_before_version_3_has_none() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!("schema.sql")).unwrap();
        conn.execute_batch(include_str!("schema_mqtt.sql")).unwrap();
        assert_eq!(load_link(&conn).unwrap(), None, "version 2: no table yet");
        conn.execute_batch(include_str!("schema_broker.sql"))
            .unwrap();
        assert_eq!(load_link(&conn).unwrap(), None, "nothing recorded yet");
        let t = parse_ts("2026-11-30T05:20:01.000Z").unwrap();
        let mut link = BrokerConnection {
            url: "mqtts://broker:8883".into(),
            connected: true,
            since: t,
            last_error: None,
            last_error_at: None,
            connections: 1,
            refused: None,
            session_lost_at: None,
        };
        save_link(&conn, &link).unwrap();
        link.connected = false;
        link.last_error = Some("connection reset".into());
        link.last_error_at = Some(t);
        save_link(&conn, &link).unwrap();
        assert_eq!(
            load_link(&conn).unwrap(),
            Some(link),
            "one row, the last state"
        );
    }
}
