//! The gateway's side (`[uplink.mqtt]`): it dials out to the broker — no inbound port — with
//! a persistent session, so what the relay published while it was offline arrives when it
//! is back. Each message goes through the webhook's ingest path and is acknowledged to the
//! broker only after the commit (SPEC §2.1): a crash in between means redelivery, and the
//! store's idempotency (SPEC §2.3) turns that into exactly-once.

use super::broker_state::BrokerWatch;
use super::{MeterState, MqttConfig, StatusMessage, dispatch_topic, reconnect_delay, status_topic};
use crate::dispatch::DispatchStatus;
use crate::server::{App, Ingested, ingest_body};
use chrono::{DateTime, Utc};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PubAckReason, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Test hook: when set, the gateway writes this file on receipt of a message and then waits
/// (never committing, never acknowledging), so a test can SIGKILL it between the two.
pub(crate) const HOLD_ENV: &str = "LEAP_EDGE_TEST_MQTT_HOLD_FILE";

/// How often the retained status is refreshed without a change.
const STATUS_PERIOD: Duration = Duration::from_secs(60);
/// Changes within this long after one go out as one status.
const STATUS_COALESCE: Duration = Duration::from_secs(1);

/// What the run loop still has to hand the event loop, and what it still has to store.
#[derive(Default)]
struct Outgoing {
    subscribe: bool,
    /// Committed messages not yet acknowledged, in order.
    acks: VecDeque<Publish>,
    /// Received messages not yet committed, in order: while the store fails, the event
    /// loop keeps being polled (keep-alives, so the broker does not take the gateway for
    /// gone) and what arrives waits here behind the first. Bounded by the broker's window
    /// of unacknowledged messages.
    backlog: VecDeque<Publish>,
    /// When to try the first of `backlog` again after the store failed, and how often it has.
    retry: Option<(tokio::time::Instant, u32)>,
}

struct Uplink {
    config: MqttConfig,
    app: Arc<App>,
    dispatch: Arc<DispatchStatus>,
    client: AsyncClient,
    broker: Arc<BrokerWatch>,
}

/// Start the uplink; it runs until `stop`, then marks the gateway offline and disconnects.
pub(crate) fn spawn(
    config: MqttConfig,
    app: Arc<App>,
    dispatch: Arc<DispatchStatus>,
    broker: Arc<BrokerWatch>,
    stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, String> {
    let mut opts = config.options()?;
    // Persistent session: the broker queues QoS 1 messages while the gateway is away.
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(config.session_expiry_secs));
    opts.set_manual_acks(true);
    let will = StatusMessage {
        gateway: config.client_id.clone(),
        online: false,
        ..StatusMessage::default()
    };
    opts.set_last_will(LastWill::new(
        status_topic(&config.topic_prefix, &config.client_id),
        serde_json::to_vec(&will).unwrap_or_default(),
        QoS::AtLeastOnce,
        true,
        None,
    ));
    let (client, events) = AsyncClient::new(opts, 64);
    let up = Arc::new(Uplink {
        config,
        app,
        dispatch,
        client,
        broker,
    });
    // One task for both loops, so the handle the daemon tracks covers them (issue 16.5).
    Ok(tokio::spawn(async move {
        tokio::join!(up.clone().status_loop(stop.clone()), up.run(events, stop));
    }))
}

/// Until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Uplink {
    fn dispatch_topic(&self) -> String {
        dispatch_topic(&self.config.topic_prefix, &self.config.client_id)
    }

    async fn run(self: Arc<Self>, mut events: EventLoop, mut stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        let mut out = Outgoing::default();
        tracing::info!(url = %self.config.url, client_id = %self.config.client_id, topic = %self.dispatch_topic(), "mqtt uplink starting");
        loop {
            self.store_backlog(&mut out, &stop).await;
            self.send_pending(&mut out);
            let retry_at = out.retry.map(|r| r.0);
            let ev = tokio::select! {
                ev = events.poll() => ev,
                () = sleep_until(retry_at) => continue,
                _ = stop.wait_for(|s| *s) => break,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    out = self.connected(ack.session_present);
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => self.check_subscription(&s),
                Ok(Event::Incoming(Packet::PubAck(a))) => self.check_status_ack(a.reason),
                Ok(Event::Incoming(Packet::Publish(p))) => out.backlog.push_back(p),
                Ok(_) => {}
                Err(e) => {
                    failures += 1;
                    // Unacknowledged, the broker sends these again on the next connection.
                    out.acks.clear();
                    out.backlog.clear();
                    out.retry = None;
                    self.broker.lost(&e.to_string());
                    let wait = reconnect_delay(failures, &self.config.client_id);
                    tracing::warn!(url = %self.config.url, error = %e, retry_in_secs = wait.as_secs(), "mqtt uplink: broker unreachable");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
            }
        }
        self.goodbye(&mut events, out).await;
    }

    /// A new connection: subscribe, say online. Acks of the last connection's messages mean
    /// nothing on this one: the broker sends those messages again, and the store counts
    /// them once.
    fn connected(&self, session_present: bool) -> Outgoing {
        self.broker.connected();
        if session_present {
            tracing::info!(session_present, "mqtt uplink connected");
        } else {
            // The relay counts a part delivered at the broker's PUBACK: what the broker held
            // for us is gone from both sides. Leap's polling backstop is asked to run.
            self.broker.new_session();
            tracing::warn!(
                session_present,
                "mqtt uplink connected with a new session: anything the broker held for this gateway is gone; polling Leap for it (needs [leap] api_key)"
            );
        }
        self.publish_status(true);
        Outgoing {
            subscribe: true,
            ..Outgoing::default()
        }
    }

    /// Commit what was received, in order, up to the first the store refuses for now; that
    /// one is tried again when its wait is over. Stopping leaves the rest unacknowledged:
    /// the broker keeps it for the next start.
    async fn store_backlog(&self, out: &mut Outgoing, stop: &watch::Receiver<bool>) {
        while let Some(p) = out.backlog.front() {
            if *stop.borrow() || out.retry.is_some_and(|r| tokio::time::Instant::now() < r.0) {
                return;
            }
            match self.receive(p).await {
                Some(ack) => {
                    out.acks.push_back(ack);
                    out.backlog.pop_front();
                    out.retry = None;
                }
                None => {
                    let failures = out.retry.map_or(1, |r| r.1 + 1);
                    let at = tokio::time::Instant::now()
                        + reconnect_delay(failures, &self.config.client_id);
                    out.retry = Some((at, failures));
                    return;
                }
            }
        }
    }

    /// The gateway's only publish is its retained status. Mosquitto grants a subscription its
    /// ACL forbids and then drops every message on delivery, so a refused status publish is
    /// the one sign a gateway gets that its username or ACL is wrong: relayed dispatches
    /// would be counted delivered by the relay and never arrive.
    fn check_status_ack(&self, reason: PubAckReason) {
        if matches!(
            reason,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        ) {
            return;
        }
        let topic = status_topic(&self.config.topic_prefix, &self.config.client_id);
        let why = if reason == PubAckReason::NotAuthorized {
            "its ACL does not grant this client's topics, so relayed dispatches are dropped too; check the ACL and that uplink.mqtt.username is the client_id"
        } else {
            "the relay cannot see this gateway's state"
        };
        tracing::error!(?reason, %topic, why, "mqtt uplink: the broker refused the status publish");
        self.broker.error(&format!(
            "the broker refused the status publish to {topic} ({reason:?}): {why}"
        ));
    }

    fn check_subscription(&self, s: &rumqttc::v5::mqttbytes::v5::SubAck) {
        let refused = refused_codes(s);
        if !refused.is_empty() {
            tracing::error!(codes = ?refused, topic = %self.dispatch_topic(), "mqtt uplink: the broker refused the subscription (check its ACL for this client id)");
            self.broker.error(&format!(
                "the broker refused the subscription to {} ({refused:?}): check its ACL for this client id",
                self.dispatch_topic()
            ));
        }
    }

    /// Hand the event loop what waits, as far as its request queue takes it now. While a
    /// burst of queued messages is read, the loop takes no requests, so an ack that does not
    /// fit waits here for the next turn instead of being dropped (a dropped ack means a
    /// redelivery at the next reconnect, and another on each one after).
    fn send_pending(&self, out: &mut Outgoing) {
        if out.subscribe {
            match self
                .client
                .try_subscribe(self.dispatch_topic(), QoS::AtLeastOnce)
            {
                Ok(()) => out.subscribe = false,
                Err(e) => {
                    tracing::debug!(error = %e, "mqtt uplink: the subscription waits for room")
                }
            }
        }
        while let Some(ack) = out.acks.front() {
            if self.client.try_ack(ack).is_err() {
                break;
            }
            out.acks.pop_front();
        }
    }

    /// Commit, then acknowledge; never the other way round. Returns what to acknowledge
    /// (the message without its body), or None when the store failed and it must wait.
    async fn receive(&self, p: &Publish) -> Option<Publish> {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        if topic == self.dispatch_topic() {
            if let Ok(path) = std::env::var(HOLD_ENV) {
                let _ = std::fs::write(&path, &p.payload);
                tracing::warn!(
                    path,
                    "test hook: holding a received message before its commit"
                );
                std::future::pending::<()>().await;
            }
            let origin = format!("mqtt:{topic}");
            match ingest_body(&self.app, &origin, p.payload.clone()).await {
                Ingested::Committed => {}
                Ingested::Refused(e) => {
                    // Not a Leap notification: redelivery cannot fix it. The relay counted
                    // it delivered, so the retained status says so.
                    tracing::error!(topic, error = %e, bytes = p.payload.len(), "mqtt message refused (not a Leap notification, or over this gateway's limits); acknowledged, not stored");
                    self.broker.refused(&e);
                    self.publish_status(true);
                }
                // Not acknowledged: the broker keeps it; it is tried again, in order, as
                // the next message must not overtake it.
                Ingested::Unavailable => return None,
            }
        } else {
            tracing::warn!(
                topic,
                "mqtt uplink: message on an unexpected topic; acknowledged and ignored"
            );
        }
        // The retained status follows through `status_loop` (a stored dispatch is a change).
        Some(Publish {
            payload: bytes::Bytes::new(),
            ..p.clone()
        })
    }

    fn status(&self, online: bool) -> StatusMessage {
        let snap = self.dispatch.snapshot();
        let last = self
            .app
            .metrics
            .last_notification_unix
            .load(Ordering::Relaxed);
        StatusMessage {
            gateway: self.config.client_id.clone(),
            online,
            at: Some(Utc::now()),
            last_commit_at: (last > 0)
                .then(|| DateTime::from_timestamp(last as i64, 0))
                .flatten(),
            next_boundary: snap.next_boundary,
            meters: snap
                .meters
                .into_iter()
                .map(|(id, m)| {
                    let state = MeterState {
                        command: m
                            .command
                            .as_ref()
                            .and_then(|iv| serde_json::to_string(&iv.command).ok()),
                        until: m.command.as_ref().map(|iv| iv.end),
                        last_error: m.last_error,
                    };
                    (id, state)
                })
                .collect(),
            refused: self.broker.snapshot().refused,
        }
    }

    /// Queue the retained status; false when it was not (disconnected: queued statuses
    /// would fill the request queue and go out stale; or no room).
    fn publish_status(&self, online: bool) -> bool {
        if !self.broker.snapshot().connected {
            return false;
        }
        let topic = status_topic(&self.config.topic_prefix, &self.config.client_id);
        let body = serde_json::to_vec(&self.status(online)).unwrap_or_default();
        match self.client.try_publish(topic, QoS::AtLeastOnce, true, body) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "mqtt uplink: status not queued");
                false
            }
        }
    }

    /// Refresh the retained status periodically and whenever the plan changes.
    async fn status_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut changes = self.app.changes.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(STATUS_PERIOD) => {}
                r = changes.changed() => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            // A burst of stored dispatches (a gateway back from an outage) is one status,
            // not one retained publish each, interleaved with the acks.
            tokio::select! {
                _ = tokio::time::sleep(STATUS_COALESCE) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            changes.borrow_and_update();
            self.publish_status(true);
        }
    }

    /// A clean stop: hand over the acks of what was committed (else it all comes again next
    /// time), a retained "offline" (a clean disconnect sends no will), DISCONNECT; then wait
    /// until the broker has read all of it. A broker that finds the connection gone while it
    /// answers one packet drops whatever it had not read yet (Mosquitto does), acks included:
    /// the answer to the last publish, or the broker closing after the DISCONNECT, shows it
    /// read everything before.
    async fn goodbye(&self, events: &mut EventLoop, mut out: Outgoing) {
        out.subscribe = false;
        let drain = async {
            while !out.acks.is_empty() {
                self.send_pending(&mut out);
                if events.poll().await.is_err() {
                    return;
                }
            }
            let barrier = self.publish_status(false);
            if self.client.try_disconnect().is_err() {
                return;
            }
            let mut last_publish = None;
            let mut disconnected = false;
            while let Ok(ev) = events.poll().await {
                match ev {
                    Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => last_publish = Some(pkid),
                    Event::Outgoing(rumqttc::Outgoing::Disconnect) if !barrier => return,
                    Event::Outgoing(rumqttc::Outgoing::Disconnect) => disconnected = true,
                    Event::Incoming(Packet::PubAck(a))
                        if disconnected && Some(a.pkid) == last_publish =>
                    {
                        return;
                    }
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        tracing::info!("mqtt uplink stopped");
    }
}

/// The grants of a SUBACK that are not QoS 1 or 2. QoS 0 is a refusal too: messages would
/// come without acknowledgement or redelivery, and not be queued while the gateway is away.
fn refused_codes(
    s: &rumqttc::v5::mqttbytes::v5::SubAck,
) -> Vec<&rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as Code;
    s.return_codes
        .iter()
        .filter(|c| !matches!(c, Code::Success(QoS::AtLeastOnce | QoS::ExactlyOnce)))
        .collect()
}

#[cfg(test)]
mod subscription_tests {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{SubAck, SubscribeReasonCode as Code};

    #[test]
    fn a_qos_0_grant_is_refused() {
        let ack = |code| SubAck {
            pkid: 1,
            return_codes: vec![code],
            properties: None,
        };
        assert!(super::refused_codes(&ack(Code::Success(QoS::AtLeastOnce))).is_empty());
        assert!(super::refused_codes(&ack(Code::Success(QoS::ExactlyOnce))).is_empty());
        assert_eq!(
            super::refused_codes(&ack(Code::Success(QoS::AtMostOnce))).len(),
            1
        );
        assert_eq!(super::refused_codes(&ack(Code::NotAuthorized)).len(), 1);
    }
}
