//! What the relay reports (SPEC §2.12 visibility): per gateway the queue depth, the age of
//! the oldest undelivered notification, last success and last error; unrouted entries and
//! dead letters. One query feeds `relay status`, `/metrics` and `/healthz`.

use crate::store::{StoreError, parse_ts};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct GatewayStatus {
    pub(crate) name: String,
    /// Listed in the configuration (false: only in the outbox, e.g. after a removal).
    pub(crate) configured: bool,
    pub(crate) queue_depth: u64,
    pub(crate) oldest_undelivered_at: Option<DateTime<Utc>>,
    pub(crate) oldest_undelivered_age_secs: Option<i64>,
    pub(crate) delivered: u64,
    pub(crate) dead_letters: u64,
    pub(crate) last_success_at: Option<String>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_error_at: Option<String>,
    /// For `transport = "mqtt"` gateways: online/offline from their status topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mqtt: Option<super::mqtt::MqttSeen>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeadLetter {
    pub(crate) delivery_id: i64,
    pub(crate) notification_id: i64,
    pub(crate) gateway: String,
    pub(crate) answer_status: Option<u16>,
    pub(crate) answer_body: Option<String>,
    pub(crate) finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Unrouted {
    pub(crate) notification_id: i64,
    pub(crate) received_at: String,
    pub(crate) entry: String,
    pub(crate) meter_ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RelayStatus {
    /// Whether the relay process runs (its lock on the outbox): filled for `relay status`,
    /// absent from the relay's own `/metrics` and `/healthz`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) process: Option<RelayProcess>,
    /// The relay's MQTT broker connection as the relay last recorded it (`[mqtt]` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) broker: Option<crate::admin::state::BrokerConnection>,
    pub(crate) notifications: u64,
    pub(crate) gateways: Vec<GatewayStatus>,
    pub(crate) unrouted_count: u64,
    pub(crate) dead_letter_count: u64,
    pub(crate) unrouted: Vec<Unrouted>,
    pub(crate) dead_letters: Vec<DeadLetter>,
    /// When this status was read (the ages below count to it).
    #[serde(skip)]
    pub(crate) at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RelayProcess {
    pub(crate) running: bool,
    /// What the running (or last) relay wrote into the lock file; None if none ever ran.
    pub(crate) last_run: Option<crate::admin::state::LastRun>,
}

/// How many unrouted entries and dead letters are listed (all are counted).
const LIST_LIMIT: i64 = 50;

pub(super) fn query(
    conn: &Connection,
    configured: &[String],
    now: DateTime<Utc>,
) -> Result<RelayStatus, StoreError> {
    let mut gws: BTreeMap<String, GatewayStatus> = configured
        .iter()
        .map(|n| {
            let g = GatewayStatus {
                name: n.clone(),
                configured: true,
                ..GatewayStatus::default()
            };
            (n.clone(), g)
        })
        .collect();
    queues(conn, &mut gws, now)?;
    last_outcomes(conn, &mut gws)?;
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0).map(|n| n as u64));
    Ok(RelayStatus {
        at: now,
        process: None,
        broker: None,
        notifications: count("SELECT COUNT(*) FROM relay_notifications")?,
        unrouted_count: count("SELECT COUNT(*) FROM relay_entries WHERE unrouted = 1")?,
        dead_letter_count: count("SELECT COUNT(*) FROM relay_deliveries WHERE state = 'dead'")?,
        gateways: gws.into_values().collect(),
        unrouted: unrouted(conn)?,
        dead_letters: dead_letters(conn)?,
    })
}

/// Per gateway: counts by state and the oldest undelivered notification. Counts come from
/// the (state, gateway) index; only pending rows are joined for their age.
fn queues(
    conn: &Connection,
    gws: &mut BTreeMap<String, GatewayStatus>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(
        "SELECT d.gateway, d.state, COUNT(*),
                CASE d.state WHEN 'pending' THEN (SELECT MIN(n.received_at) FROM relay_deliveries p
                    JOIN relay_notifications n ON n.id = p.notification_id
                    WHERE p.state = 'pending' AND p.gateway = d.gateway) END
         FROM relay_deliveries d GROUP BY d.state, d.gateway",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    for row in rows {
        let (name, state, n, oldest) = row?;
        let g = gws.entry(name.clone()).or_insert_with(|| GatewayStatus {
            name,
            ..GatewayStatus::default()
        });
        match state.as_str() {
            "pending" => {
                g.queue_depth = n;
                let at = oldest.as_deref().map(parse_ts).transpose()?;
                g.oldest_undelivered_at = at;
                g.oldest_undelivered_age_secs = at.map(|t| (now - t).num_seconds().max(0));
            }
            "delivered" => g.delivered = n,
            _ => g.dead_letters = n,
        }
    }
    Ok(())
}

fn last_outcomes(
    conn: &Connection,
    gws: &mut BTreeMap<String, GatewayStatus>,
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare("SELECT name, last_success_at, last_error, last_error_at FROM relay_gateways")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Option<String>>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    })?;
    for row in rows {
        let (name, ok, err, err_at) = row?;
        if let Some(g) = gws.get_mut(&name) {
            (g.last_success_at, g.last_error, g.last_error_at) = (ok, err, err_at);
        }
    }
    Ok(())
}

fn unrouted(conn: &Connection) -> Result<Vec<Unrouted>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT e.notification_id, n.received_at, e.array, e.idx, e.meter_ids FROM relay_entries e
         JOIN relay_notifications n ON n.id = e.notification_id
         WHERE e.unrouted = 1 ORDER BY e.id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![LIST_LIMIT], |r| {
        Ok(Unrouted {
            notification_id: r.get(0)?,
            received_at: r.get(1)?,
            entry: format!("{}[{}]", r.get::<_, String>(2)?, r.get::<_, i64>(3)?),
            meter_ids: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn dead_letters(conn: &Connection) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, notification_id, gateway, answer_status, answer_body, finished_at
         FROM relay_deliveries WHERE state = 'dead' ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![LIST_LIMIT], |r| {
        Ok(DeadLetter {
            delivery_id: r.get(0)?,
            notification_id: r.get(1)?,
            gateway: r.get(2)?,
            answer_status: r.get(3)?,
            answer_body: r.get(4)?,
            finished_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl GatewayStatus {
    /// The last error with its time, unless a delivery succeeded after it: a gateway that
    /// failed once last week and has delivered since has no current error.
    pub(crate) fn current_error(&self) -> Option<String> {
        let err = self.last_error.as_deref()?;
        let at = self.last_error_at.as_deref().unwrap_or("?");
        // Both are the outbox's one timestamp format, which sorts as text.
        let cleared = self
            .last_success_at
            .as_deref()
            .is_some_and(|ok| self.last_error_at.as_deref().is_none_or(|e| ok > e));
        (!cleared).then(|| format!("{err} (at {at})"))
    }
}

impl RelayStatus {
    /// SPEC §2.12: unhealthy when a gateway's oldest undelivered notification is too old,
    /// or a configured gateway refused notifications (dead letters): a wrong url or key
    /// leaves its queue empty while the site executes nothing.
    pub(crate) fn problems(&self, max_age_secs: u64) -> Vec<String> {
        let mut out = Vec::new();
        for g in &self.gateways {
            if let Some(age) = g
                .oldest_undelivered_age_secs
                .filter(|a| *a > max_age_secs as i64)
            {
                out.push(format!(
                    "gateway {}: oldest undelivered notification is {age} s old (limit {max_age_secs} s); last error: {}",
                    g.name,
                    g.current_error().as_deref().unwrap_or("none since the last success")
                ));
            }
            if g.configured && g.dead_letters > 0 {
                out.push(format!(
                    "gateway {}: {} notification(s) refused (dead letters); fix its url or key, then `leap-edge relay requeue --gateway {}`",
                    g.name, g.dead_letters, g.name
                ));
            }
            out.extend(self.mqtt_problems(g, max_age_secs));
        }
        out.extend(self.broker_problem(max_age_secs));
        out
    }

    /// Over MQTT a part counts as delivered at the broker's PUBACK: a gateway offline for
    /// days, or refusing what it gets, leaves its queue empty. Said here instead.
    fn mqtt_problems(&self, g: &GatewayStatus, max_age_secs: u64) -> Vec<String> {
        let Some(m) = g.mqtt.as_ref().filter(|_| g.configured) else {
            return Vec::new();
        };
        let age = |t: &Option<String>| {
            t.as_deref()
                .and_then(|t| crate::store::parse_ts(t).ok())
                .map(|t| (self.at - t).num_seconds())
        };
        let mut out = Vec::new();
        if !m.online {
            match age(&m.last_status_at) {
                Some(a) if a > max_age_secs as i64 => out.push(format!(
                    "gateway {}: offline for {a} s (its dispatches wait in its broker session)",
                    g.name
                )),
                None => out.push(format!(
                    "gateway {}: never seen on the broker (is it configured with transport mqtt and this broker?)",
                    g.name
                )),
                Some(_) => {}
            }
        }
        if m.refused_total.is_some_and(|n| n > 0)
            && age(&m.last_refused_at).is_some_and(|a| a < 86_400)
        {
            out.push(format!(
                "gateway {}: refused {} message(s), the last {} s ago ({}): those dispatches did not reach it; its log says why",
                g.name,
                m.refused_total.unwrap_or(0),
                age(&m.last_refused_at).unwrap_or(0),
                m.last_refused_error.as_deref().unwrap_or("no reason given")
            ));
        }
        out
    }

    /// `relay status` only (its `/healthz` asks the live link): the broker connection the
    /// running relay last recorded, down longer than the undelivered age allows.
    fn broker_problem(&self, max_age_secs: u64) -> Option<String> {
        let running = self.process.as_ref().is_some_and(|p| p.running);
        let b = self.broker.as_ref().filter(|b| running && !b.connected)?;
        let down = (self.at - b.since).num_seconds();
        (down > max_age_secs as i64).then(|| {
            format!(
                "mqtt: not connected to the broker {} for {down} s ({})",
                b.url,
                b.last_error.as_deref().unwrap_or("no answer yet")
            )
        })
    }

    pub(crate) fn render_metrics(&self, out: &mut String) {
        let gauge =
            |out: &mut String, name: &str, help: &str, f: &dyn Fn(&GatewayStatus) -> f64| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for g in &self.gateways {
                    let _ = writeln!(out, "{name}{{gateway=\"{}\"}} {}", g.name, f(g));
                }
            };
        gauge(
            out,
            "leap_edge_relay_queue_depth",
            "Undelivered notifications per gateway.",
            &|g| g.queue_depth as f64,
        );
        gauge(
            out,
            "leap_edge_relay_oldest_undelivered_age_seconds",
            "Age of the oldest undelivered notification per gateway (0 when none).",
            &|g| g.oldest_undelivered_age_secs.unwrap_or(0) as f64,
        );
        gauge(
            out,
            "leap_edge_relay_dead_letters",
            "Deliveries a gateway refused (4XX), kept.",
            &|g| g.dead_letters as f64,
        );
        gauge(
            out,
            "leap_edge_relay_delivered",
            "Deliveries acknowledged by the gateway (kept in the outbox).",
            &|g| g.delivered as f64,
        );
        let _ = writeln!(
            out,
            "# HELP leap_edge_relay_unrouted_entries Entries no configured gateway serves (stored).\n\
             # TYPE leap_edge_relay_unrouted_entries gauge\nleap_edge_relay_unrouted_entries {}",
            self.unrouted_count
        );
    }
}

#[cfg(test)]
mod current_error_tests {
    use super::GatewayStatus;

    fn g(ok: Option<&str>, err_at: Option<&str>) -> GatewayStatus {
        GatewayStatus {
            name: "site-a".into(),
            configured: true,
            queue_depth: 0,
            oldest_undelivered_at: None,
            oldest_undelivered_age_secs: None,
            delivered: 0,
            dead_letters: 0,
            last_success_at: ok.map(String::from),
            last_error: err_at.map(|_| "HTTP 502".into()),
            last_error_at: err_at.map(String::from),
            mqtt: None,
        }
    }

    #[test]
    fn an_error_before_the_last_success_is_not_current() {
        let (early, late) = ("2026-11-23T10:00:00.000Z", "2026-11-30T10:00:00.000Z");
        assert_eq!(g(Some(late), Some(early)).current_error(), None);
        assert_eq!(
            g(Some(early), Some(late)).current_error().as_deref(),
            Some("HTTP 502 (at 2026-11-30T10:00:00.000Z)")
        );
        assert!(g(None, Some(early)).current_error().is_some());
        assert_eq!(g(Some(late), None).current_error(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::mqtt::MqttSeen;

    fn with(mqtt: MqttSeen, at: DateTime<Utc>) -> RelayStatus {
        RelayStatus {
            at,
            process: None,
            broker: None,
            notifications: 0,
            gateways: vec![GatewayStatus {
                name: "site-a".into(),
                configured: true,
                mqtt: Some(mqtt),
                ..GatewayStatus::default()
            }],
            unrouted_count: 0,
            dead_letter_count: 0,
            unrouted: vec![],
            dead_letters: vec![],
        }
    }

    /// Over MQTT the queue empties at the broker's PUBACK: an offline gateway, one never
    /// seen, and one refusing what it gets were all "healthy" before.
    #[test]
    fn an_mqtt_gateway_offline_or_refusing_is_a_problem() {
        let at = Utc::now();
        let ago = |s: i64| Some(crate::store::ts(at - chrono::Duration::seconds(s)));
        let online = MqttSeen {
            online: true,
            last_status_at: ago(10),
            ..MqttSeen::default()
        };
        assert!(with(online.clone(), at).problems(300).is_empty());
        let offline = MqttSeen {
            online: false,
            last_status_at: ago(3600),
            ..MqttSeen::default()
        };
        let p = with(offline, at).problems(300).join("\n");
        assert!(p.contains("site-a: offline for 3600 s"), "{p}");
        let p = with(MqttSeen::default(), at).problems(300).join("\n");
        assert!(p.contains("never seen"), "{p}");
        let refusing = MqttSeen {
            refused_total: Some(2),
            last_refused_at: ago(60),
            last_refused_error: Some("over max_body_bytes".into()),
            ..online
        };
        let p = with(refusing, at).problems(300).join("\n");
        assert!(
            p.contains("refused 2 message(s)") && p.contains("over max_body_bytes"),
            "{p}"
        );
    }
}
