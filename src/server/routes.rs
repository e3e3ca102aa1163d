//! Request handling: routing, auth, limits, parse, commit, answer (SPEC §3 status codes).

use crate::config::Config;
use crate::ingest::{self, auth};
use crate::metrics::{IngestMetrics, reason_label};
use crate::store::{IngestRecord, Store};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Something that contributes to `/metrics` and `/healthz` (dispatch, devices, clock).
pub trait StatusSource: Send + Sync {
    fn render_metrics(&self, out: &mut String);
    /// Reasons the gateway is not healthy; empty when healthy.
    fn health_problems(&self) -> Vec<String>;
}

/// Shared state of the webhook side.
pub struct App {
    config: crate::config::SharedConfig,
    pub store: Store,
    pub metrics: IngestMetrics,
    /// Bumped after every commit that created or changed a timeslot; dispatch re-plans.
    pub changes: tokio::sync::watch::Sender<u64>,
    sources: RwLock<Vec<Arc<dyn StatusSource>>>,
}

impl App {
    pub fn new(config: Arc<Config>, store: Store) -> App {
        App {
            config: Arc::new(crate::config::LiveConfig::new(config)),
            store,
            metrics: IngestMetrics::default(),
            changes: tokio::sync::watch::channel(0).0,
            sources: RwLock::new(Vec::new()),
        }
    }

    /// The configuration in force (auth keys and policies can change on reload).
    pub fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    pub fn set_config(&self, c: Arc<Config>) {
        self.config.set(c);
    }

    pub fn shared_config(&self) -> crate::config::SharedConfig {
        self.config.clone()
    }

    pub fn add_source(&self, source: Arc<dyn StatusSource>) {
        self.sources.write().expect("sources lock").push(source);
    }

    fn sources(&self) -> Vec<Arc<dyn StatusSource>> {
        self.sources.read().expect("sources lock").clone()
    }
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        "application/json".parse().expect("static header"),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json_response(status, json!({"status": "error", "error": message.into()}))
}

fn not_allowed(allow: &'static str) -> Resp {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    r.headers_mut()
        .insert(ALLOW, allow.parse().expect("static header"));
    r
}

pub async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let webhook = app.config().server.path.clone();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => healthz(&app).await,
        (&Method::GET, "/metrics") => metrics(&app),
        (_, "/healthz" | "/metrics") => not_allowed("GET"),
        (&Method::POST, p) if *p == webhook => ingest(&app, peer, req).await,
        (_, p) if *p == webhook => not_allowed("POST"),
        _ => error(StatusCode::NOT_FOUND, "no such path"),
    };
    Ok(resp)
}

async fn ingest(app: &App, peer: SocketAddr, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    let (resp, label) = ingest_inner(app, peer, req).await;
    app.metrics.requests.inc(label, 1);
    if resp.status().is_success() {
        app.metrics
            .ack_latency
            .observe(started.elapsed().as_secs_f64());
    }
    resp
}

async fn ingest_inner(app: &App, peer: SocketAddr, req: Request<Incoming>) -> (Resp, &'static str) {
    let cfg = app.config();
    let read = Duration::from_secs(cfg.server.read_timeout_secs);
    if !auth::authorized(req.headers(), &cfg.auth.header, &cfg.auth.keys) {
        tracing::warn!(%peer, "webhook rejected: missing or wrong credentials");
        drain(req, cfg.server.max_body_bytes, read).await;
        return (
            error(StatusCode::UNAUTHORIZED, "missing or wrong credentials"),
            "unauthorized",
        );
    }
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || m.ends_with("+json")
        })
        .unwrap_or(false);
    if !is_json {
        drain(req, cfg.server.max_body_bytes, read).await;
        return (
            error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            ),
            "unsupported_media_type",
        );
    }
    let limit = cfg.server.max_body_bytes;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is over the {limit}-byte limit"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return (too_large(), "too_large");
    }
    let headers = auth::auditable_headers(req.headers(), &cfg.auth.header);
    let body =
        match tokio::time::timeout(read, Limited::new(req.into_body(), limit).collect()).await {
            Err(_) => {
                tracing::warn!(%peer, "webhook body not received within the read timeout");
                return (
                    error(StatusCode::REQUEST_TIMEOUT, "body not received in time"),
                    "timeout",
                );
            }
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return (too_large(), "too_large");
            }
            Ok(Err(e)) => {
                return (
                    error(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
                    "bad_request",
                );
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
    let parsed = match ingest::parse_notification(&body) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "webhook body is not a Leap notification");
            return (error(StatusCode::BAD_REQUEST, e.to_string()), "bad_request");
        }
    };
    commit(app, peer, headers, body, parsed).await
}

/// Read and discard a refused request's body (bounded), so the client gets a clean answer
/// rather than a reset in the middle of its upload: Leap's test endpoint then reports the
/// real status.
async fn drain(req: Request<Incoming>, limit: usize, read: Duration) {
    let _ = tokio::time::timeout(read, Limited::new(req.into_body(), limit).collect()).await;
}

async fn commit(
    app: &App,
    peer: SocketAddr,
    headers: serde_json::Value,
    body: Bytes,
    parsed: ingest::ParsedNotification,
) -> (Resp, &'static str) {
    let received_at = chrono::Utc::now();
    let record = IngestRecord {
        received_at,
        peer: Some(peer.to_string()),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        parsed,
    };
    // SPEC §2.1: acknowledge only what is committed; otherwise 503 so Leap retries.
    let outcome = match app.store.ingest(record).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot store notification; answering 503 so Leap retries");
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable; retry later",
            );
            r.headers_mut()
                .insert(RETRY_AFTER, "60".parse().expect("static header"));
            return (r, "storage_unavailable");
        }
    };
    let m = &app.metrics;
    for (label, n) in [
        ("new", outcome.new),
        ("updated", outcome.updated),
        ("duplicate", outcome.duplicate),
        ("rejected", outcome.rejected),
        ("conflict", outcome.conflict),
    ] {
        m.timeslots.inc(label, u64::from(n));
    }
    for reason in &outcome.rejected_reasons {
        m.rejected_by_reason.inc(reason_label(reason), 1);
    }
    m.last_notification_unix
        .store(received_at.timestamp().max(0) as u64, Ordering::Relaxed);
    tracing::info!(
        notification_id = outcome.notification_id, %peer,
        new = outcome.new, updated = outcome.updated, duplicate = outcome.duplicate,
        rejected = outcome.rejected, conflict = outcome.conflict,
        "notification stored"
    );
    for event_id in &outcome.conflicts {
        tracing::warn!(
            event_id,
            "un-cancel received for a cancelled timeslot; it stays cancelled (SPEC §2.4)"
        );
    }
    for reason in &outcome.rejected_reasons {
        tracing::warn!(
            notification_id = outcome.notification_id,
            reason,
            "timeslot rejected"
        );
    }
    if outcome.changed() {
        app.changes.send_modify(|n| *n += 1);
    }
    let mut body = serde_json::to_value(&outcome).unwrap_or_default();
    body["status"] = json!("ok");
    (json_response(StatusCode::OK, body), "accepted")
}

/// Group commit at work (issue 17): notifications ÷ commits is the mean batch.
fn render_store(store: &Store, out: &mut String) {
    use std::fmt::Write as _;
    let s = store.batch_stats();
    for (name, help, v) in [
        (
            "leap_edge_store_commits_total",
            "Ingest transactions committed (group commit).",
            s.commits.load(Ordering::Relaxed),
        ),
        (
            "leap_edge_store_committed_notifications_total",
            "Notifications acknowledged by those commits.",
            s.notifications.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let q = store.queued();
    let _ = writeln!(
        out,
        "# HELP leap_edge_store_queue_depth Writes waiting for the database thread.\n# TYPE leap_edge_store_queue_depth gauge\nleap_edge_store_queue_depth {q}"
    );
}

async fn healthz(app: &App) -> Resp {
    let mut problems = Vec::new();
    // Writable means the write lock can be taken and the disk takes a transaction's worth.
    if let Err(e) = app.store.check_writable().await {
        problems.push(format!("database not writable: {e}"));
    }
    for s in app.sources() {
        problems.extend(s.health_problems());
    }
    if problems.is_empty() {
        json_response(StatusCode::OK, json!({"status": "ok"}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unhealthy", "problems": problems}),
        )
    }
}

fn metrics(app: &App) -> Resp {
    let mut out = String::new();
    app.metrics.render(&mut out);
    render_store(&app.store, &mut out);
    for s in app.sources() {
        s.render_metrics(&mut out);
    }
    let mut r = Response::new(Full::new(Bytes::from(out)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8"
            .parse()
            .expect("static header"),
    );
    r
}
