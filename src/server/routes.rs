//! Request handling: routing, auth, limits, parse, commit, answer (SPEC §3 status codes).

use super::conn::ConnState;
use super::counts::IngestMetrics;
use super::quiet::QuietLog;
use crate::config::{AuthConfig, Config, LimitsConfig, ServerConfig};
use crate::ingest::{self, auth};
use crate::metrics::{RequestResult, TimeslotOutcome};
use crate::seam::{ChangeSignal, StatusSource};
use crate::store::{IngestRecord, Store};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// What the webhook checks requests against: `[server]`, `[auth]` and `[limits]` (keys and
/// limits can change on reload; the rest of the configuration is not the server's).
#[derive(Debug, Clone)]
pub(crate) struct WebhookSettings {
    pub(crate) server: ServerConfig,
    pub(crate) auth: AuthConfig,
    pub(crate) limits: LimitsConfig,
}

impl WebhookSettings {
    pub(crate) fn of(config: &Config) -> WebhookSettings {
        WebhookSettings {
            server: config.server.clone(),
            auth: config.auth.clone(),
            limits: config.limits.clone(),
        }
    }
}

/// Shared state of the webhook side.
pub struct App {
    settings: RwLock<Arc<WebhookSettings>>,
    pub store: Store,
    pub(crate) metrics: IngestMetrics,
    /// Bumped after every commit that created or changed a timeslot; dispatch re-plans.
    pub(crate) changes: ChangeSignal,
    /// The rest of the gateway's `/metrics` and `/healthz` (dispatch, devices, clock, …).
    status: Arc<dyn StatusSource>,
    /// Requests without a valid key: logged at most once per interval (issue 10.8).
    pub(crate) unauthorized_log: QuietLog,
    /// The TLS certificate in service, re-read by `leap-edge reload` (issue 10.3).
    tls: std::sync::OnceLock<Arc<super::tls::ReloadableTls>>,
}

/// Which listener a request came in on: the webhook (public through the tunnel) or the
/// loopback-only metrics listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Webhook,
    Metrics,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Webhook => "webhook",
            Role::Metrics => "metrics",
        }
    }
}

impl App {
    pub(crate) fn new(
        settings: WebhookSettings,
        store: Store,
        changes: ChangeSignal,
        status: Arc<dyn StatusSource>,
    ) -> App {
        App {
            settings: RwLock::new(Arc::new(settings)),
            store,
            metrics: IngestMetrics::default(),
            changes,
            status,
            unauthorized_log: QuietLog::default(),
            tls: std::sync::OnceLock::new(),
        }
    }

    /// The settings in force (auth keys and limits can change on reload).
    pub(crate) fn settings(&self) -> Arc<WebhookSettings> {
        self.settings.read().expect("settings lock").clone()
    }

    pub(crate) fn set_settings(&self, s: WebhookSettings) {
        *self.settings.write().expect("settings lock") = Arc::new(s);
    }

    pub(crate) fn set_tls(&self, tls: Arc<super::tls::ReloadableTls>) {
        let _ = self.tls.set(tls);
    }

    pub(crate) fn tls(&self) -> Option<&Arc<super::tls::ReloadableTls>> {
        self.tls.get()
    }
}

type Resp = Response<Full<Bytes>>;

/// Rejected timeslots logged one by one per notification; the rest in one line.
const LOGGED_REJECTIONS: usize = 3;

pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    json_response(status, json!({"status": "error", "error": message.into()}))
}

pub(crate) fn error_response(status: StatusCode, message: impl Into<String>) -> Resp {
    error(status, message)
}

/// SPEC §2.1: storage failed, so no ack: 503 with Retry-After, and Leap retries.
pub(crate) fn unavailable() -> Resp {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage unavailable; retry later",
    );
    r.headers_mut()
        .insert(RETRY_AFTER, "60".parse().expect("static header"));
    r
}

/// A request that passed auth, content type, size and structure checks: a Leap notification.
pub(crate) struct Received {
    /// Headers minus credentials, for the audit copy (SPEC §2.5).
    pub(crate) headers: serde_json::Value,
    pub(crate) body: Bytes,
    pub(crate) parsed: ingest::ParsedNotification,
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

/// Issue 10.8: both framings in one request is how requests are smuggled past proxies.
/// Every handler (gateway and relay) asks this first for each request.
pub(crate) fn refuse_ambiguous(conn: &ConnState) -> Option<Resp> {
    if !conn.next_request_is_ambiguous() {
        return None;
    }
    let mut r = error(
        StatusCode::BAD_REQUEST,
        "both Content-Length and Transfer-Encoding are present; send only one",
    );
    r.headers_mut()
        .insert(CONNECTION, "close".parse().expect("static header"));
    Some(r)
}

pub(crate) async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    role: Role,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    if let Some(r) = refuse_ambiguous(&conn) {
        app.metrics.requests.inc(RequestResult::AmbiguousFraming, 1);
        return Ok(r);
    }
    let is_webhook = req.uri().path() == app.settings().server.path;
    let resp = match (role, req.method(), req.uri().path()) {
        (Role::Metrics, &Method::GET, "/healthz") => healthz(&app).await,
        (Role::Metrics, &Method::GET, "/metrics") => metrics(&app),
        (Role::Metrics, _, "/healthz" | "/metrics") => not_allowed("GET"),
        (Role::Webhook, &Method::POST, _) if is_webhook => ingest(&app, peer, &conn, req).await,
        (Role::Webhook, _, _) if is_webhook => not_allowed("POST"),
        _ => error(StatusCode::NOT_FOUND, "no such path"),
    };
    Ok(resp)
}

async fn ingest(app: &App, peer: SocketAddr, conn: &ConnState, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    let (resp, label) = ingest_inner(app, peer, conn, req).await;
    app.metrics.requests.inc(label, 1);
    if resp.status().is_success() {
        app.metrics
            .ack_latency
            .observe(started.elapsed().as_secs_f64());
    }
    resp
}

async fn ingest_inner(
    app: &App,
    peer: SocketAddr,
    conn: &ConnState,
    req: Request<Incoming>,
) -> (Resp, RequestResult) {
    let cfg = app.settings();
    let intake = Intake {
        server: &cfg.server,
        auth: &cfg.auth,
        limits: &cfg.limits,
        unauthorized_log: &app.unauthorized_log,
    };
    match receive_notification(&intake, conn, peer, req).await {
        Ok(r) => commit(app, &peer.to_string(), r.headers, r.body, r.parsed).await,
        Err(answer) => answer,
    }
}

/// The settings and state [`receive_notification`] checks a request against.
pub(crate) struct Intake<'a> {
    pub(crate) server: &'a crate::config::ServerConfig,
    pub(crate) auth: &'a crate::config::AuthConfig,
    pub(crate) limits: &'a crate::config::LimitsConfig,
    /// Requests without a valid key are logged here, rate-limited (issue 10.8).
    pub(crate) unauthorized_log: &'a QuietLog,
}

/// Everything the gateway checks before it stores a notification, shared with the relay so
/// bad input is answered the same way by both (SPEC §3 status codes, `[limits]` bounds).
/// A valid key marks the connection authorized (its longer deadline, issue 10.1). `Err`
/// carries the answer and its metrics label.
pub(crate) async fn receive_notification(
    intake: &Intake<'_>,
    conn: &ConnState,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Received, (Resp, RequestResult)> {
    let server = intake.server;
    let read = Duration::from_secs(server.read_timeout_secs);
    if let Some(answer) = refuse_head(intake, conn, peer, &req) {
        drain(req, server.max_body_bytes, read).await;
        return Err(answer);
    }
    let headers = auth::auditable_headers(req.headers(), &intake.auth.header);
    let body = read_body(req, server.max_body_bytes, read, peer).await?;
    let parsed = match ingest::parse_bounded(&body, intake.limits, chrono::Utc::now()) {
        Ok(p) => p,
        Err(ingest::BoundedError::Invalid(e)) => {
            tracing::warn!(%peer, error = %e, "webhook body is not a Leap notification");
            return Err((
                error(StatusCode::BAD_REQUEST, e.to_string()),
                RequestResult::BadRequest,
            ));
        }
        Err(
            e @ (ingest::BoundedError::OverLimit { .. } | ingest::BoundedError::OverCopied { .. }),
        ) => {
            tracing::warn!(%peer, error = %e, "notification over a limit; nothing stored");
            return Err((
                error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
                RequestResult::OverLimit,
            ));
        }
    };
    Ok(Received {
        headers,
        body,
        parsed,
    })
}

fn too_large(limit: usize) -> Resp {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body is over the {limit}-byte limit"),
    )
}

/// The checks made on the request head, before any of the body is read: the key (a valid
/// one marks the connection authorized, issue 10.1) and JSON. The answer to a refused
/// request and its metrics label (the caller drains the body first).
fn refuse_head(
    intake: &Intake<'_>,
    conn: &ConnState,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Option<(Resp, RequestResult)> {
    let auth_cfg = intake.auth;
    if !auth::authorized(req.headers(), &auth_cfg.header, &auth_cfg.keys) {
        intake.unauthorized_log.rejected(peer, req.uri().path());
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong credentials");
        r.headers_mut()
            .insert(CONNECTION, "close".parse().expect("static header"));
        return Some((r, RequestResult::Unauthorized));
    }
    conn.authorize();
    let may_be_json = req
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().ok().and_then(|v| v.split(';').next()))
        .is_none_or(|m| m.is_some_and(json_or_unlabelled));
    (!may_be_json).then(|| {
        (
            error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type names a format other than JSON: send application/json",
            ),
            RequestResult::UnsupportedMediaType,
        )
    })
}

/// SPEC §2.2: only a body that is not a Leap notification is refused, and Leap's guide
/// names no media type. A body sent without one, or as plain text or bytes, is read and
/// refused (400) only if it is not JSON; a type that says another format (a form, XML,
/// multipart) is refused unread (415).
fn json_or_unlabelled(media_type: &str) -> bool {
    let m = media_type.trim().to_ascii_lowercase();
    m == "application/json"
        || m.ends_with("+json")
        || matches!(m.as_str(), "" | "text/plain" | "application/octet-stream")
}

/// The body, within the size limit and the read timeout.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    read: Duration,
    peer: SocketAddr,
) -> Result<Bytes, (Resp, RequestResult)> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err((too_large(limit), RequestResult::TooLarge));
    }
    match tokio::time::timeout(read, Limited::new(req.into_body(), limit).collect()).await {
        Err(_) => {
            tracing::warn!(%peer, "webhook body not received within the read timeout");
            Err((
                error(StatusCode::REQUEST_TIMEOUT, "body not received in time"),
                RequestResult::Timeout,
            ))
        }
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err((too_large(limit), RequestResult::TooLarge))
        }
        Ok(Err(e)) => Err((
            error(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
            RequestResult::BadRequest,
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Read and discard a refused request's body (bounded), so the client gets a clean answer
/// rather than a reset in the middle of its upload: Leap's test endpoint then reports the
/// real status.
async fn drain(req: Request<Incoming>, limit: usize, read: Duration) {
    let _ = tokio::time::timeout(read, Limited::new(req.into_body(), limit).collect()).await;
}

async fn commit(
    app: &App,
    peer: &str,
    headers: serde_json::Value,
    body: Bytes,
    parsed: ingest::ParsedNotification,
) -> (Resp, RequestResult) {
    let received_at = chrono::Utc::now();
    let record = IngestRecord {
        received_at,
        peer: Some(peer.to_string()),
        headers,
        body: body_text(body),
        parsed,
        source: crate::store::Source::Push,
    };
    // SPEC §2.1: acknowledge only what is committed; otherwise 503 so Leap retries.
    let outcome = match app.store.ingest(record).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot store notification; answering 503 so Leap retries");
            return (unavailable(), RequestResult::StorageUnavailable);
        }
    };
    count_outcome(&app.metrics, &outcome, received_at);
    log_outcome(&outcome, peer);
    // Dispatch was woken by the store's writer after the commit (`Store::changes`).
    let mut body = serde_json::to_value(&outcome).unwrap_or_default();
    body["status"] = json!("ok");
    (json_response(StatusCode::OK, body), RequestResult::Accepted)
}

/// The body as text for the audit copy, without copying it: it parsed as JSON, so it is
/// UTF-8 (anything else is kept with replacement characters).
fn body_text(body: Bytes) -> String {
    String::from_utf8(Vec::from(body))
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn count_outcome(
    m: &IngestMetrics,
    outcome: &crate::store::IngestOutcome,
    received_at: chrono::DateTime<chrono::Utc>,
) {
    for (label, n) in [
        (TimeslotOutcome::New, outcome.new),
        (TimeslotOutcome::Updated, outcome.updated),
        (TimeslotOutcome::Duplicate, outcome.duplicate),
        (TimeslotOutcome::Rejected, outcome.rejected),
        (TimeslotOutcome::Conflict, outcome.conflict),
    ] {
        m.timeslots.inc(label, u64::from(n));
    }
    for code in &outcome.rejected_codes {
        m.rejected_by_reason.inc(*code, 1);
    }
    m.last_notification_unix
        .store(received_at.timestamp().max(0) as u64, Ordering::Relaxed);
}

fn log_outcome(outcome: &crate::store::IngestOutcome, peer: &str) {
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
    // A few reasons are enough to diagnose; all of them are in the database (issue 10.5).
    for (kind, event_id, reason) in outcome.rejected_reasons.iter().take(LOGGED_REJECTIONS) {
        tracing::warn!(
            notification_id = outcome.notification_id,
            kind,
            event_id = event_id.as_deref().unwrap_or("(none)"),
            reason,
            "timeslot rejected"
        );
    }
    if outcome.rejected_reasons.len() > LOGGED_REJECTIONS {
        tracing::warn!(
            notification_id = outcome.notification_id,
            not_logged = outcome.rejected_reasons.len() - LOGGED_REJECTIONS,
            "more timeslots rejected (all are listed by `leap-edge events`)"
        );
    }
}

/// How a notification that came another way than HTTP (MQTT, SPEC §2.12) ended.
pub(crate) enum Ingested {
    /// Committed (or a duplicate of something committed): it may be acknowledged.
    Committed,
    /// Not a Leap notification: retrying cannot help.
    Refused(String),
    /// Storage failed; nothing committed.
    Unavailable,
}

/// The webhook's ingest path (auth aside: the transport authenticated the sender): parse,
/// commit, count, wake dispatch — the same code and metrics as an HTTP notification.
pub(crate) async fn ingest_body(app: &App, origin: &str, body: Bytes) -> Ingested {
    let cfg = app.settings();
    if body.len() > cfg.server.max_body_bytes {
        app.metrics.requests.inc(RequestResult::TooLarge, 1);
        return Ingested::Refused(format!(
            "body is over the {}-byte limit (server.max_body_bytes)",
            cfg.server.max_body_bytes
        ));
    }
    let parsed = match ingest::parse_bounded(&body, &cfg.limits, chrono::Utc::now()) {
        Ok(p) => p,
        Err(e) => {
            let label = match e {
                ingest::BoundedError::Invalid(_) => RequestResult::BadRequest,
                ingest::BoundedError::OverLimit { .. }
                | ingest::BoundedError::OverCopied { .. } => RequestResult::OverLimit,
            };
            app.metrics.requests.inc(label, 1);
            return Ingested::Refused(e.to_string());
        }
    };
    let (resp, label) = commit(app, origin, serde_json::json!({}), body, parsed).await;
    app.metrics.requests.inc(label, 1);
    if resp.status().is_success() {
        Ingested::Committed
    } else {
        Ingested::Unavailable
    }
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

/// How long `/healthz` waits for the database writer (under the connection's 10 s).
pub(crate) const HEALTH_DB_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn healthz(app: &App) -> Resp {
    let mut problems = Vec::new();
    // Writable means the write lock can be taken and the disk takes a transaction's worth.
    // Bounded: the check queues behind the one writer, and a health check that gets no
    // answer before its connection's deadline learns nothing.
    match tokio::time::timeout(HEALTH_DB_WAIT, app.store.check_writable()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("database not writable: {e}")),
        Err(_) => problems.push(format!(
            "database writer busy: the check waited {} s behind it",
            HEALTH_DB_WAIT.as_secs()
        )),
    }
    if let Some(why) = app.store.batch_stats().failure() {
        problems.push(format!("the last notification could not be stored: {why}"));
    }
    problems.extend(app.status.health_problems());
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
    crate::metrics::counter(
        &mut out,
        "leap_edge_unauthorized_log_suppressed_total",
        "Requests without a valid key that were counted but not logged (one summary line per minute).",
        app.unauthorized_log.suppressed.load(Ordering::Relaxed),
    );
    render_store(&app.store, &mut out);
    app.status.render_metrics(&mut out);
    let mut r = Response::new(Full::new(Bytes::from(out)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8"
            .parse()
            .expect("static header"),
    );
    r
}
