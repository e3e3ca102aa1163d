//! The relay's one connection to the broker. Delivery workers publish through it with QoS 1
//! and wait for the broker's PUBACK; it also follows every gateway's retained status.
//!
//! rumqttc reports a publish's packet id only as an event of its event loop, in the order
//! the publishes were queued, so the link pairs them first-in first-out. Each connection is
//! a fresh client and event loop with a clean session: whatever was in flight when a
//! connection broke fails, and the outbox publishes it again (the gateway's store drops the
//! duplicate). That keeps the pairing exact across reconnects.

use super::broker_state::{BrokerWatch, OnChange};
use super::{MqttConfig, StatusMessage, reconnect_delay, status_topic};
use chrono::{DateTime, Utc};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, Event};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

type Waiter = oneshot::Sender<Result<(), String>>;

/// One broker connection's pairing state.
struct Session {
    client: AsyncClient,
    /// Published, packet id not yet known (in queue order).
    queued: VecDeque<Waiter>,
    /// Packet id known, PUBACK awaited.
    inflight: HashMap<u16, Waiter>,
    /// The largest packet the broker takes (its CONNACK says; None: MQTT's own limit).
    max_packet: Option<u32>,
}

/// What the relay last heard on a gateway's status topic.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Seen {
    pub(crate) online: bool,
    /// The gateway's own time for the status (or the broker's will: when it went offline).
    pub(crate) status_at: Option<DateTime<Utc>>,
    pub(crate) received_at: DateTime<Utc>,
    pub(crate) last_commit_at: Option<DateTime<Utc>>,
    /// What the gateway acknowledged without storing (absent: nothing since it started).
    pub(crate) refused: Option<crate::admin::state::RefusedMessages>,
}

pub(crate) struct Link {
    config: MqttConfig,
    session: Mutex<Option<Session>>,
    /// Bumped at every connection, so queued deliveries are tried at once.
    pub(crate) connected: watch::Sender<u64>,
    on_status: OnStatus,
    /// Publishes in flight at most (the client's request queue is bounded): with thousands
    /// of gateways, the rest wait here instead of failing and backing off.
    slots: tokio::sync::Semaphore,
    /// The connection as the operator sees it (`/metrics`, `/healthz`).
    pub(crate) broker: BrokerWatch,
}

const REQUEST_QUEUE: usize = 4096;

/// Called with (gateway, what it said) for every status message.
pub(crate) type OnStatus = Box<dyn Fn(String, Seen) + Send + Sync>;

impl Link {
    /// The link's connection loop runs in `tasks` (the relay's tracker), until `stop`.
    pub(crate) fn start(
        config: MqttConfig,
        (on_status, on_broker): (OnStatus, OnChange),
        stop: watch::Receiver<bool>,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Result<Arc<Link>, String> {
        config.options()?;
        let broker = BrokerWatch::new(&config.url, config.keep_alive_secs, "leap_edge_relay_mqtt")
            .on_change(on_broker);
        let link = Arc::new(Link {
            broker,
            config,
            session: Mutex::new(None),
            connected: watch::channel(0).0,
            on_status,
            slots: tokio::sync::Semaphore::new(REQUEST_QUEUE - 64),
        });
        tasks.spawn(link.clone().run(stop));
        Ok(link)
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.config.topic_prefix
    }

    pub(crate) fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.config.ack_wait_ms)
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.session.lock().expect("mqtt session").is_some()
    }

    /// Publish with QoS 1 and wait (bounded) for the broker's PUBACK. `Err`: not taken by
    /// the broker (down, refused, no session for that topic, or timed out).
    pub(crate) async fn publish(
        &self,
        topic: String,
        payload: String,
        timeout: Duration,
    ) -> Result<(), String> {
        let _slot = tokio::time::timeout(timeout, self.slots.acquire())
            .await
            .map_err(|_| "too many publishes waiting for the broker".to_string())?;
        let rx = {
            let mut s = self.session.lock().expect("mqtt session");
            let s = s.as_mut().ok_or("broker not connected")?;
            // Handed to the client, a packet over the broker's limit fails the connection
            // (and every other gateway's publishes with it), again at each retry.
            let size = packet_size(&topic, &payload);
            if let Some(max) = s.max_packet.filter(|m| size > *m as usize) {
                return Err(format!(
                    "this part is {size} bytes, more than the broker takes (its maximum packet size is {max} bytes): raise it on the broker (Mosquitto: max_packet_size) to at least the relay's max_body_bytes"
                ));
            }
            s.client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
                .map_err(|e| format!("cannot queue the publish: {e}"))?;
            let (tx, rx) = oneshot::channel();
            s.queued.push_back(tx);
            rx
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("connection to the broker lost before its PUBACK".into()),
            Err(_) => Err(format!("no PUBACK within {} ms", timeout.as_millis())),
        }
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        // A stop seen once stays seen (`changed` would wait for another), and a dropped
        // sender is a stop: the shutdown must not sit out a reconnect back-off.
        while !*stop.borrow() && stop.has_changed().is_ok() {
            // The TLS files are read again at each connection (a renewed certificate is
            // taken without a restart), so one caught mid-replacement is retried like a
            // broker that does not answer, never given up on.
            let mut opts = match self.config.options() {
                Ok(o) => o,
                Err(e) => {
                    failures += 1;
                    let why = format!("broker settings unusable: {e}");
                    self.broker.lost(&why);
                    tracing::error!(error = %e, "mqtt: broker settings unusable; tried again after the back-off");
                    tokio::select! {
                        _ = tokio::time::sleep(reconnect_delay(failures, &self.config.client_id)) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                    continue;
                }
            };
            opts.set_clean_start(true);
            let (client, mut events) = rumqttc::v5::AsyncClient::new(opts, REQUEST_QUEUE);
            let mut pending = Some(client);
            loop {
                let ev = tokio::select! {
                    ev = events.poll() => ev,
                    _ = stop.wait_for(|s| *s) => break,
                };
                match ev {
                    Ok(ev) => {
                        if let Some(c) = pending.take_if(|_| is_connack(&ev)) {
                            failures = 0;
                            self.connected_as(c, broker_max_packet(&ev)).await;
                        }
                        self.on_event(ev);
                    }
                    Err(e) => {
                        failures += 1;
                        self.broker.lost(&e.to_string());
                        tracing::warn!(url = %self.config.url, error = %e, "mqtt: broker connection lost; deliveries wait in the outbox");
                        break;
                    }
                }
            }
            // Dropping the session fails every waiter: the outbox keeps those parts.
            *self.session.lock().expect("mqtt session") = None;
            tokio::select! {
                _ = tokio::time::sleep(reconnect_delay(failures, &self.config.client_id)) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
    }

    async fn connected_as(&self, client: AsyncClient, max_packet: Option<u32>) {
        let all = status_topic(&self.config.topic_prefix, "+");
        if let Err(e) = client.subscribe(all, QoS::AtLeastOnce).await {
            tracing::warn!(error = %e, "mqtt: cannot subscribe to gateway status");
        }
        *self.session.lock().expect("mqtt session") = Some(Session {
            client,
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            max_packet,
        });
        tracing::info!(url = %self.config.url, "mqtt: connected to the broker");
        self.broker.connected();
        self.connected.send_modify(|n| *n += 1);
    }

    fn on_event(&self, ev: Event) {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let mut s = self.session.lock().expect("mqtt session");
                if let Some(s) = s.as_mut()
                    && let Some(w) = s.queued.pop_front()
                {
                    s.inflight.insert(pkid, w);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                let mut s = self.session.lock().expect("mqtt session");
                if let Some(w) = s.as_mut().and_then(|s| s.inflight.remove(&ack.pkid)) {
                    let r = match ack.reason {
                        PubAckReason::Success => Ok(()),
                        // No session subscribes to that topic (a gateway that never
                        // connected): the broker would drop it, so the outbox keeps it.
                        other => Err(format!("broker answered {other:?}")),
                    };
                    let _ = w.send(r);
                }
            }
            Event::Incoming(Packet::Publish(p)) => self.on_status(&p.topic, &p.payload),
            _ => {}
        }
    }

    fn on_status(&self, topic: &[u8], payload: &[u8]) {
        let topic = String::from_utf8_lossy(topic);
        let Some(gateway) = topic
            .strip_prefix(&format!("{}/", self.config.topic_prefix))
            .and_then(|t| t.strip_suffix("/status"))
        else {
            return;
        };
        match serde_json::from_slice::<StatusMessage>(payload) {
            Ok(m) => {
                let seen = Seen {
                    online: m.online,
                    status_at: m.at,
                    received_at: Utc::now(),
                    last_commit_at: m.last_commit_at,
                    refused: m.refused,
                };
                (self.on_status)(gateway.to_string(), seen);
            }
            Err(e) => tracing::warn!(gateway, error = %e, "mqtt: unreadable gateway status"),
        }
    }
}

fn is_connack(ev: &Event) -> bool {
    matches!(ev, Event::Incoming(Packet::ConnAck(_)))
}

fn broker_max_packet(ev: &Event) -> Option<u32> {
    match ev {
        Event::Incoming(Packet::ConnAck(ack)) => ack.properties.as_ref()?.max_packet_size,
        _ => None,
    }
}

/// An upper bound of a QoS 1 PUBLISH's size without properties: fixed header (at most 5),
/// topic (2 + its length), packet id (2), property length (1), payload.
fn packet_size(topic: &str, payload: &str) -> usize {
    5 + 2 + topic.len() + 2 + 1 + payload.len()
}
