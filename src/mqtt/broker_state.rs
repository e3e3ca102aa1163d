//! The broker connection as an operator sees it: connected or not, since when, the last
//! error and how many times it connected. The gateway's uplink and the relay's link each keep
//! one; `status`, `/metrics` and `/healthz` read it. Without it a broker outage showed only
//! as dispatches that never came (gateway) or an outbox that grew (relay).

use crate::admin::state::BrokerConnection;
use chrono::Utc;
use std::sync::Mutex;

/// Told every change (the relay keeps it in its outbox for `relay status`).
pub(crate) type OnChange = Box<dyn Fn(BrokerConnection) + Send + Sync>;

pub(crate) struct BrokerWatch {
    state: Mutex<BrokerConnection>,
    /// Connections on which the broker had no session for us: what it held is gone.
    new_sessions: std::sync::atomic::AtomicU64,
    on_change: Option<OnChange>,
    /// Metric names start with this (`leap_edge_mqtt`, `leap_edge_relay_mqtt`).
    metric: &'static str,
    /// Not connected for longer than this is a `/healthz` problem: a connection that does not
    /// survive two keep-alive periods is down, not blinking (a broker restart is shorter).
    grace: chrono::Duration,
}

impl BrokerWatch {
    pub(crate) fn new(url: &str, keep_alive_secs: u64, metric: &'static str) -> BrokerWatch {
        BrokerWatch {
            state: Mutex::new(BrokerConnection {
                url: url.to_string(),
                connected: false,
                since: Utc::now(),
                last_error: None,
                last_error_at: None,
                connections: 0,
                refused: None,
                session_lost_at: None,
            }),
            new_sessions: std::sync::atomic::AtomicU64::new(0),
            metric,
            grace: chrono::Duration::seconds(2 * keep_alive_secs as i64),
            on_change: None,
        }
    }

    pub(crate) fn on_change(mut self, f: OnChange) -> BrokerWatch {
        self.on_change = Some(f);
        self
    }

    fn changed(&self) {
        if let Some(f) = &self.on_change {
            f(self.snapshot());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BrokerConnection> {
        self.state.lock().expect("broker state")
    }

    /// The broker answered without our session (expired, or lost in a broker crash).
    pub(crate) fn new_session(&self) {
        self.new_sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The first connection of a run has no session to lose at commissioning, and cannot
        // tell one lost while the gateway was down from none: only later ones are shown.
        let mut s = self.lock();
        if s.connections > 1 {
            s.session_lost_at = Some(Utc::now());
            drop(s);
            self.changed();
        }
    }

    pub(crate) fn new_sessions(&self) -> u64 {
        self.new_sessions.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn connected(&self) {
        let mut s = self.lock();
        s.connected = true;
        s.since = Utc::now();
        s.connections += 1;
        drop(s);
        self.changed();
    }

    pub(crate) fn lost(&self, error: &str) {
        let mut s = self.lock();
        if s.connected {
            s.connected = false;
            s.since = Utc::now();
        }
        drop(s);
        self.error(error);
    }

    /// A problem that leaves the connection up (a refused subscription).
    pub(crate) fn error(&self, error: &str) {
        let mut s = self.lock();
        s.last_error = Some(error.to_string());
        s.last_error_at = Some(Utc::now());
        drop(s);
        self.changed();
    }

    /// A message acknowledged without being stored (it can never be stored).
    pub(crate) fn refused(&self, error: &str) {
        let mut s = self.lock();
        let total = s.refused.as_ref().map_or(0, |r| r.total) + 1;
        s.refused = Some(crate::admin::state::RefusedMessages {
            total,
            last_at: Utc::now(),
            last_error: error.to_string(),
        });
        drop(s);
        self.changed();
    }

    pub(crate) fn snapshot(&self) -> BrokerConnection {
        self.lock().clone()
    }

    pub(crate) fn render_metrics(&self, out: &mut String) {
        let s = self.snapshot();
        let m = self.metric;
        crate::metrics::gauge(
            out,
            &format!("{m}_connected"),
            "1 while connected to the MQTT broker, 0 otherwise.",
            if s.connected { 1.0 } else { 0.0 },
        );
        crate::metrics::counter(
            out,
            &format!("{m}_connections_total"),
            "Connections made to the MQTT broker (each reconnection counts).",
            s.connections,
        );
    }

    /// A problem once the broker has been out of reach for longer than the grace period.
    pub(crate) fn health_problem(&self, what: &str) -> Option<String> {
        let s = self.snapshot();
        let down = Utc::now() - s.since;
        if s.connected || down <= self.grace {
            return None;
        }
        let error = s.last_error.as_deref().unwrap_or("no answer yet");
        Some(format!(
            "{what}: not connected to the MQTT broker {} for {} s ({error})",
            s.url,
            down.num_seconds()
        ))
    }
}

impl crate::seam::StatusSource for BrokerWatch {
    fn render_metrics(&self, out: &mut String) {
        BrokerWatch::render_metrics(self, out);
    }

    fn health_problems(&self) -> Vec<String> {
        self.health_problem("uplink.mqtt").into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_keeps_the_time_it_went_down_and_every_error() {
        let w = BrokerWatch::new("mqtt://127.0.0.1:1883", 5, "leap_edge_mqtt");
        assert!(
            w.health_problem("uplink.mqtt").is_none(),
            "within the grace"
        );
        w.connected();
        let up = w.snapshot();
        assert!(up.connected);
        assert_eq!(up.connections, 1);
        w.lost("connection refused");
        let down = w.snapshot();
        assert!(!down.connected);
        assert!(down.since >= up.since);
        w.lost("connection refused again");
        let still = w.snapshot();
        assert_eq!(
            still.since, down.since,
            "a retry that fails is not a new outage"
        );
        assert_eq!(
            still.last_error.as_deref(),
            Some("connection refused again")
        );
        let mut text = String::new();
        w.render_metrics(&mut text);
        assert!(text.contains("leap_edge_mqtt_connected 0\n"), "{text}");
        assert!(
            text.contains("leap_edge_mqtt_connections_total 1\n"),
            "{text}"
        );
    }

    #[test]
    fn down_past_two_keep_alives_is_a_health_problem() {
        let w = BrokerWatch::new("mqtt://127.0.0.1:1883", 5, "leap_edge_mqtt");
        w.lock().since = Utc::now() - chrono::Duration::seconds(11);
        w.lost("connection refused");
        let p = w.health_problem("uplink.mqtt").expect("a problem");
        assert!(p.contains("mqtt://127.0.0.1:1883"), "{p}");
        assert!(p.contains("connection refused"), "{p}");
        w.connected();
        assert!(w.health_problem("uplink.mqtt").is_none());
    }
}
