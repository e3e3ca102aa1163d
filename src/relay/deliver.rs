//! Delivery (SPEC §2.12): one worker per gateway takes the head of that gateway's queue, in
//! arrival order, and posts it with the gateway's key until a 2XX. Transient failures back
//! off exponentially (1 s … 60 s); the next attempt time is in the outbox, so the backoff
//! holds across restarts. A 4XX (other than 408/429) is a dead letter: a configuration error
//! that retrying cannot fix, kept with the gateway's answer.

use super::client::Target;
use super::config::{GatewayConfig, Transport};
use super::outbox::{self, Attempt, Pending};
use crate::metrics::LabeledCounter;
use crate::mqtt::link::Link;
use crate::store::Store;
use chrono::Utc;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// The longest wait between two attempts at one delivery.
const MAX_BACKOFF_SECS: u64 = 60;

/// Delay before attempt `n + 1` after `n` failed attempts: 1, 2, 4, … capped at 60 s.
pub(crate) fn backoff(failed_attempts: u32) -> Duration {
    let exp = failed_attempts.saturating_sub(1).min(6);
    Duration::from_secs((1u64 << exp).min(MAX_BACKOFF_SECS))
}

/// What the gateway's answer means for the delivery.
pub(crate) fn classify(status: u16, answer: String, failed_before: u32) -> Attempt {
    match status {
        200..=299 => Attempt::Delivered { status },
        // Timeout and rate limiting are transient even though they are 4XX.
        408 | 429 => retry(format!("HTTP {status}: {answer}"), failed_before),
        400..=499 => Attempt::Dead { status, answer },
        _ => retry(format!("HTTP {status}: {answer}"), failed_before),
    }
}

fn retry(error: String, failed_before: u32) -> Attempt {
    let delay = backoff(failed_before + 1);
    Attempt::Retry {
        error,
        next: Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
    }
}

#[derive(Default)]
pub(crate) struct DeliveryMetrics {
    pub(crate) delivered: LabeledCounter,
    pub(crate) failed_attempts: LabeledCounter,
    pub(crate) dead: LabeledCounter,
}

struct Worker {
    config: watch::Sender<Option<GatewayConfig>>,
    wake: Arc<Notify>,
}

/// The set of workers, kept in line with the configured `[[gateways]]`.
pub(crate) struct Fleet {
    store: Store,
    timeout: Duration,
    pub(crate) metrics: Arc<DeliveryMetrics>,
    workers: Mutex<HashMap<String, Worker>>,
    stop: watch::Receiver<bool>,
    /// The broker connection for `transport = "mqtt"` gateways.
    link: Option<Arc<Link>>,
    /// Bumped after every recorded attempt, for answers that wait on deliveries.
    pub(crate) progress: watch::Sender<u64>,
    /// The relay awaits the workers at shutdown (issue 16.5).
    tracker: tokio_util::task::TaskTracker,
}

impl Fleet {
    pub(crate) fn new(store: Store, timeout: Duration, stop: watch::Receiver<bool>) -> Fleet {
        Fleet {
            store,
            timeout,
            metrics: Arc::default(),
            workers: Mutex::default(),
            stop,
            link: None,
            progress: watch::channel(0).0,
            tracker: tokio_util::task::TaskTracker::new(),
        }
    }

    pub(crate) fn with_tracker(mut self, tracker: tokio_util::task::TaskTracker) -> Fleet {
        self.tracker = tracker;
        self
    }

    pub(crate) fn with_link(mut self, link: Option<Arc<Link>>) -> Fleet {
        self.link = link;
        self
    }

    pub(crate) fn link(&self) -> Option<&Arc<Link>> {
        self.link.as_ref()
    }

    /// Start workers for new gateways, hand changed settings to running ones, and stop the
    /// workers of removed gateways (their undelivered items were re-routed by the caller).
    pub(crate) fn apply(&self, gateways: &[GatewayConfig]) {
        let mut workers = self.workers.lock().expect("workers lock");
        workers.retain(|name, w| {
            let keep = gateways.iter().any(|g| &g.name == name);
            if !keep {
                let _ = w.config.send(None);
            }
            keep
        });
        for g in gateways {
            if let Some(w) = workers.get(&g.name) {
                w.config.send_if_modified(|c| {
                    let changed = c.as_ref() != Some(g);
                    *c = Some(g.clone());
                    changed
                });
                w.wake.notify_one();
                continue;
            }
            let (tx, rx) = watch::channel(Some(g.clone()));
            let wake = Arc::new(Notify::new());
            let run = Run {
                name: g.name.clone(),
                store: self.store.clone(),
                timeout: self.timeout,
                metrics: self.metrics.clone(),
                link: self.link.clone(),
                progress: self.progress.clone(),
                config: rx,
                wake: wake.clone(),
                stop: self.stop.clone(),
            };
            self.tracker.spawn(run.run());
            workers.insert(g.name.clone(), Worker { config: tx, wake });
        }
    }

    /// New items are queued for these gateways.
    pub(crate) fn wake(&self, names: &[String]) {
        let workers = self.workers.lock().expect("workers lock");
        for n in names {
            if let Some(w) = workers.get(n) {
                w.wake.notify_one();
            }
        }
    }

    pub(crate) fn wake_all(&self) {
        for w in self.workers.lock().expect("workers lock").values() {
            w.wake.notify_one();
        }
    }
}

struct Run {
    name: String,
    store: Store,
    timeout: Duration,
    metrics: Arc<DeliveryMetrics>,
    link: Option<Arc<Link>>,
    progress: watch::Sender<u64>,
    config: watch::Receiver<Option<GatewayConfig>>,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
}

impl Run {
    async fn run(mut self) {
        let mut target: Option<(GatewayConfig, Target)> = None;
        let mut conn = None;
        tracing::info!(gateway = %self.name, "delivery worker started");
        while !*self.stop.borrow() {
            let Some(cfg) = self.config.borrow_and_update().clone() else {
                break;
            };
            if cfg.transport == Transport::Http && target.as_ref().is_none_or(|(c, _)| *c != cfg) {
                conn = None;
                match Target::parse(&cfg) {
                    Ok(t) => target = Some((cfg.clone(), t)),
                    Err(e) => {
                        tracing::error!(gateway = %self.name, error = %e, "gateway url unusable; fix it and reload");
                        let (name, why) = (self.name.clone(), format!("not sent: {e}"));
                        if let Err(w) = self
                            .store
                            .call(move |c| outbox::gateway_error(c, &name, &why))
                            .await
                        {
                            tracing::warn!(gateway = %self.name, error = %w, "cannot record the gateway's error");
                        }
                        self.pause(Duration::from_secs(60)).await;
                        continue;
                    }
                }
            }
            let name = self.name.clone();
            let head = self.store.read(move |c| outbox::head(c, &name)).await;
            let wait = match head {
                Err(e) => {
                    tracing::error!(gateway = %self.name, error = %e, "cannot read the outbox");
                    Duration::from_secs(1)
                }
                Ok(None) => Duration::from_secs(30),
                // Further ahead than the back-off's ceiling only when the clock stepped
                // back since it was stored: due now, or it would hold the whole queue.
                Ok(Some(p))
                    if p.next_attempt_at > Utc::now()
                        && p.next_attempt_at - Utc::now()
                            <= chrono::Duration::seconds(MAX_BACKOFF_SECS.cast_signed()) =>
                {
                    (p.next_attempt_at - Utc::now())
                        .to_std()
                        .unwrap_or_default()
                }
                Ok(Some(p)) if cfg.transport == Transport::Mqtt => {
                    let outcome = self.publish(&cfg, &p).await;
                    self.settle(p, outcome).await;
                    continue;
                }
                Ok(Some(p)) => {
                    let t = &target.as_ref().expect("target set above").1;
                    self.attempt(t, &cfg, &mut conn, p).await;
                    continue;
                }
            };
            self.pause(wait).await;
        }
        tracing::info!(gateway = %self.name, "delivery worker stopped");
    }

    /// Sleep until `d` passes, new work arrives, the settings change, or shutdown.
    async fn pause(&mut self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wake.notified() => {}
            _ = self.config.changed() => {}
            _ = self.stop.changed() => {}
        }
    }

    async fn attempt(
        &self,
        target: &Target,
        cfg: &GatewayConfig,
        conn: &mut Option<
            hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
        >,
        p: Pending,
    ) {
        let sent = target
            .post(
                conn,
                &cfg.header,
                cfg.key.expose(),
                p.body.clone(),
                self.timeout,
            )
            .await;
        let outcome = match sent {
            Ok((status, answer)) => classify(status, answer, p.attempts),
            Err(e) => retry(e, p.attempts),
        };
        self.settle(p, outcome).await;
    }

    /// SPEC §2.12 over MQTT: QoS 1 to `<prefix>/<gateway>/dispatch`; delivered when the
    /// broker's PUBACK says it holds it for the gateway's session. Recorded with status 0
    /// (there is no HTTP answer).
    async fn publish(&self, cfg: &GatewayConfig, p: &Pending) -> Attempt {
        let Some(link) = &self.link else {
            return retry("no [mqtt] broker configured".into(), p.attempts);
        };
        let topic = crate::mqtt::dispatch_topic(link.prefix(), &cfg.name);
        match link.publish(topic, p.body.clone(), self.timeout).await {
            Ok(()) => Attempt::Delivered { status: 0 },
            Err(e) => retry(format!("MQTT: {e}"), p.attempts),
        }
    }

    async fn settle(&self, p: Pending, outcome: Attempt) {
        let g = self.name.as_str();
        match &outcome {
            Attempt::Delivered { status } => {
                self.metrics.delivered.inc(g, 1);
                tracing::debug!(
                    gateway = g,
                    notification_id = p.notification_id,
                    status,
                    "delivered"
                );
            }
            Attempt::Retry { error, next } => {
                self.metrics.failed_attempts.inc(g, 1);
                tracing::warn!(gateway = g, notification_id = p.notification_id, attempts = p.attempts + 1,
                    error = %error, next_attempt_at = %next, "delivery failed; will retry");
            }
            Attempt::Dead { status, answer } => {
                self.metrics.dead.inc(g, 1);
                tracing::error!(gateway = g, notification_id = p.notification_id, status, answer = %answer,
                    "gateway refused the delivery: kept as a dead letter (check its key and url)");
            }
        }
        self.record(p.id, outcome).await;
        self.progress.send_modify(|n| *n += 1);
    }

    /// Write an attempt's outcome, trying again with back-off until it is written or the
    /// relay stops. Not sending again meanwhile: each resend of an unrecorded delivery is
    /// another copy for the gateway, and for an offline MQTT gateway another message
    /// queued in its broker session, until the broker's queue limit drops newer ones.
    async fn record(&self, id: i64, outcome: Attempt) {
        let mut stop = self.stop.clone();
        let mut failures = 0u32;
        loop {
            let (name, outcome) = (self.name.clone(), outcome.clone());
            let recorded = self
                .store
                .call(move |c| outbox::record(c, &name, id, &outcome, Utc::now()))
                .await;
            let Err(e) = recorded else { return };
            failures += 1;
            if *stop.borrow() {
                // Left pending: sent again after the restart (the gateway counts a duplicate).
                tracing::error!(gateway = %self.name, error = %e, "cannot record the delivery outcome; stopping");
                return;
            }
            let wait = backoff(failures);
            tracing::error!(gateway = %self.name, error = %e, retry_in_s = wait.as_secs(),
                "cannot record the delivery outcome; not sending more until it is recorded");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_a_sixty_second_cap() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn four_hundreds_are_dead_letters_except_timeout_and_rate_limit() {
        assert!(matches!(
            classify(200, String::new(), 0),
            Attempt::Delivered { .. }
        ));
        assert!(matches!(
            classify(401, "no".into(), 0),
            Attempt::Dead { status: 401, .. }
        ));
        assert!(matches!(
            classify(429, String::new(), 0),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify(503, String::new(), 3),
            Attempt::Retry { .. }
        ));
    }
}
