//! The relay's two listeners, on the gateway's server code (so the same connection
//! deadlines, bounds and quiet 401 logging): the public webhook (Leap's one URL; only the
//! webhook path answers) and a loopback one for `/metrics` and `/healthz`.

use super::config::RelayConfig;
use super::deliver::Fleet;
use super::outbox::{self, Incoming};
use super::route::Routes;
use crate::metrics::{EnumCounter, Histogram, RequestResult};
use crate::server::{self, ConnState, Handler, QuietLog, Response, Role, ServerLimits};
use crate::store::Store;
use hyper::body::Incoming as Body;
use hyper::{Method, Request, StatusCode};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

const ACK_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0,
];

pub(crate) struct RelayApp {
    config: RwLock<Arc<RelayConfig>>,
    routes: Arc<RwLock<Arc<Routes>>>,
    pub(crate) store: Store,
    pub(crate) fleet: Arc<Fleet>,
    requests: EnumCounter<RequestResult>,
    ack_latency: Histogram,
    unrouted_total: AtomicU64,
    /// Requests without a valid key: logged at most once per interval (issue 10.8).
    unauthorized_log: QuietLog,
}

impl RelayApp {
    pub(crate) fn new(config: Arc<RelayConfig>, store: Store, fleet: Arc<Fleet>) -> RelayApp {
        RelayApp {
            routes: Arc::new(RwLock::new(Arc::new(Routes::new(&config.gateways)))),
            config: RwLock::new(config),
            store,
            fleet,
            requests: EnumCounter::default(),
            ack_latency: Histogram::new(ACK_BOUNDS),
            unrouted_total: AtomicU64::new(0),
            unauthorized_log: QuietLog::default(),
        }
    }

    pub(crate) fn config(&self) -> Arc<RelayConfig> {
        self.config.read().expect("config lock").clone()
    }

    /// Swap in a new configuration; routes change before anything is re-routed, so a commit
    /// that lands after the re-route already uses the new routes.
    pub(crate) fn set_config(&self, c: Arc<RelayConfig>) {
        *self.routes.write().expect("routes lock") = Arc::new(Routes::new(&c.gateways));
        *self.config.write().expect("config lock") = c;
    }

    pub(crate) fn routes(&self) -> Arc<Routes> {
        self.routes.read().expect("routes lock").clone()
    }

    async fn webhook(&self, peer: SocketAddr, conn: &ConnState, req: Request<Body>) -> Response {
        let started = Instant::now();
        let cfg = self.config();
        let intake = server::Intake {
            server: &cfg.server,
            auth: &cfg.auth,
            limits: &cfg.limits,
            unauthorized_log: &self.unauthorized_log,
        };
        // Same checks and answers as the gateway (SPEC §2.12: bad input answered the same).
        let (resp, label) = match server::receive_notification(&intake, conn, peer, req).await {
            Err(answer) => answer,
            Ok(r) => self.commit(peer, r).await,
        };
        self.requests.inc(label, 1);
        if resp.status().is_success() {
            self.ack_latency.observe(started.elapsed().as_secs_f64());
        }
        resp
    }

    async fn commit(&self, peer: SocketAddr, r: server::Received) -> (Response, RequestResult) {
        let incoming = Incoming {
            received_at: chrono::Utc::now(),
            peer: Some(peer.to_string()),
            headers: r.headers,
            body: String::from_utf8_lossy(&r.body).into_owned(),
        };
        let routes = self.routes.clone();
        // SPEC §2.1: the raw notification and all its deliveries commit before the 200.
        let done = self
            .store
            .call(move |c| {
                let routes = routes.read().expect("routes lock").clone();
                outbox::commit(c, &incoming, &routes)
            })
            .await;
        match done {
            Ok(c) => {
                self.fleet.wake(&c.gateways);
                let mqtt = super::mqtt::mqtt_gateways(&self.config(), &c.gateways);
                let has_mqtt = !mqtt.is_empty();
                let published = has_mqtt
                    && super::mqtt::wait_published(
                        &self.store,
                        &self.fleet,
                        c.notification_id,
                        mqtt,
                    )
                    .await;
                self.unrouted_total
                    .fetch_add(c.unrouted as u64, Ordering::Relaxed);
                if c.unrouted > 0 {
                    tracing::warn!(
                        notification_id = c.notification_id,
                        unrouted = c.unrouted,
                        "entries for meters no gateway serves: stored as unrouted (add the meter to a [[gateways]] and reload)"
                    );
                }
                tracing::info!(notification_id = c.notification_id, %peer, gateways = ?c.gateways, "notification queued");
                let mut body = serde_json::to_value(&c).unwrap_or_default();
                body["status"] = json!("ok");
                // true: the broker acknowledged every MQTT part; false: they wait in the outbox.
                if has_mqtt {
                    body["mqtt_published"] = json!(published);
                }
                (
                    server::json_response(StatusCode::OK, body),
                    RequestResult::Accepted,
                )
            }
            Err(e) => {
                tracing::error!(%peer, error = %e, "cannot store notification; answering 503 so Leap retries");
                (server::unavailable(), RequestResult::StorageUnavailable)
            }
        }
    }

    async fn status(&self) -> Result<super::status::RelayStatus, crate::store::StoreError> {
        let cfg = self.config();
        self.store
            .read(move |c| {
                let names: Vec<String> = cfg.gateways.iter().map(|g| g.name.clone()).collect();
                let mut s = super::status::query(c, &names, chrono::Utc::now())?;
                super::mqtt::attach(c, &cfg, &mut s)?;
                Ok(s)
            })
            .await
    }

    async fn metrics(&self) -> Response {
        let mut out = String::new();
        self.requests.render(
            &mut out,
            "leap_edge_relay_requests_total",
            "result",
            "Webhook requests into the relay by result.",
        );
        self.ack_latency.render(
            &mut out,
            "leap_edge_relay_ack_latency_seconds",
            "Time from request start to the 2XX, outbox commit included.",
        );
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!(
                "# HELP leap_edge_relay_unrouted_entries_total Entries received that no gateway serves.\n\
             # TYPE leap_edge_relay_unrouted_entries_total counter\nleap_edge_relay_unrouted_entries_total {}\n",
                self.unrouted_total.load(Ordering::Relaxed)
            ),
        );
        let m = &self.fleet.metrics;
        m.delivered.render(
            &mut out,
            "leap_edge_relay_deliveries_total",
            "gateway",
            "Deliveries a gateway acknowledged.",
        );
        m.failed_attempts.render(
            &mut out,
            "leap_edge_relay_failed_attempts_total",
            "gateway",
            "Delivery attempts that will be retried.",
        );
        m.dead.render(
            &mut out,
            "leap_edge_relay_dead_letters_total",
            "gateway",
            "Deliveries a gateway refused (4XX).",
        );
        match self.status().await {
            Ok(s) => s.render_metrics(&mut out),
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the outbox"),
        }
        if let Some(link) = self.fleet.link() {
            link.broker.render_metrics(&mut out);
        }
        let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(out)));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8"
                .parse()
                .expect("static header"),
        );
        r
    }

    async fn healthz(&self) -> Response {
        let mut problems = Vec::new();
        // Bounded as the gateway's is: behind a long write the check would get no answer.
        let wait = crate::server::HEALTH_DB_WAIT;
        match tokio::time::timeout(wait, self.store.check_writable()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(format!("outbox not writable: {e}")),
            Err(_) => problems.push(format!(
                "outbox writer busy: the check waited {} s behind it",
                wait.as_secs()
            )),
        }
        match tokio::time::timeout(wait, self.status()).await {
            Ok(Ok(s)) => problems.extend(s.problems(self.config().relay.max_undelivered_age_secs)),
            Ok(Err(e)) => problems.push(format!("cannot read the outbox: {e}")),
            Err(_) => problems.push(format!(
                "outbox reader busy: the status waited {} s behind it",
                wait.as_secs()
            )),
        }
        if let Some(link) = self.fleet.link() {
            problems.extend(link.broker.health_problem("mqtt"));
        }
        if problems.is_empty() {
            server::json_response(StatusCode::OK, json!({"status": "ok"}))
        } else {
            server::json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "unhealthy", "problems": problems}),
            )
        }
    }
}

impl Handler for RelayApp {
    fn limits(&self) -> ServerLimits {
        ServerLimits::of(&self.config().server)
    }

    fn unauthorized_log(&self) -> &QuietLog {
        &self.unauthorized_log
    }

    async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        role: Role,
        conn: Arc<ConnState>,
        req: Request<Body>,
    ) -> Result<Response, Infallible> {
        if let Some(r) = server::refuse_ambiguous(&conn) {
            self.requests.inc(RequestResult::AmbiguousFraming, 1);
            return Ok(r);
        }
        let webhook = self.config().server.path.clone();
        let path = req.uri().path().to_string();
        Ok(match (role, req.method(), path.as_str()) {
            // The loopback listener (relay.metrics_listen), never the public one.
            (Role::Metrics, &Method::GET, "/metrics") => self.metrics().await,
            (Role::Metrics, &Method::GET, "/healthz") => self.healthz().await,
            (Role::Metrics, _, "/metrics" | "/healthz") => method_not_allowed("GET"),
            (Role::Webhook, &Method::POST, p) if p == webhook => {
                self.webhook(peer, &conn, req).await
            }
            (Role::Webhook, _, p) if p == webhook => method_not_allowed("POST"),
            _ => server::error_response(StatusCode::NOT_FOUND, "no such path"),
        })
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = server::error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    r.headers_mut()
        .insert(hyper::header::ALLOW, allow.parse().expect("static header"));
    r
}
