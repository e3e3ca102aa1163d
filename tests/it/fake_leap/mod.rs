//! A local stand-in for Leap's Dispatch API v2, built from /work/shared/LEAP-API.md only:
//! bearer auth, the error envelope, webhook GET/PUT/DELETE (one per level per account),
//! integration tests that really POST to the registered URL and report what happened, and
//! dispatch search with Leap's window rule (≤ 31 days), its real-time filter (default true)
//! and paging (≤ 500 results a page, `next_page_token` null on the last). Faults (503, 429
//! with Retry-After) can be queued. Test-only: never part of the shipped binary.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod deliver;
pub mod interval_data;
mod search;
pub mod site;

use deliver::integration_test;
use search::search;

pub const API_KEY: &str = "leap-partner-key-for-tests";
pub const PAGE_SIZE: usize = 500;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
pub struct State {
    /// "meter" / "group" → the registered `{url, headers}`.
    pub hooks: HashMap<String, Value>,
    pub requests: Vec<Recorded>,
    /// Search data: `{"meter_id", "timeslots"}` and `{"market_group_id", "meter_ids", "timeslots"}`.
    pub meter_results: Vec<Value>,
    pub group_results: Vec<Value>,
    /// Answered before normal handling, one per request: (status, Retry-After seconds).
    pub faults: VecDeque<(u16, Option<u64>)>,
    /// Only requests whose path starts with this get the faults (None: every request).
    pub faults_only_on: Option<String>,
    /// Every answer waits this long first (a slow Leap).
    pub answer_delay: Option<std::time::Duration>,
    /// The certificate the daemon under test serves (the fake trusts only it).
    pub daemon_cert: Option<CertificateDer<'static>>,
    /// Issue 14: uploads, jobs and missing intervals.
    pub intervals: interval_data::IntervalData,
    pub(crate) tokens: HashMap<String, usize>,
    pub(crate) next_token: u64,
}

pub struct FakeLeap {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
}

impl FakeLeap {
    pub async fn start() -> FakeLeap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        FakeLeap { addr, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `[leap]` table pointing a gateway at this fake, fast retries.
    pub fn config(&self) -> String {
        format!(
            "[leap]\napi_key = \"{API_KEY}\"\nbase_url = \"{}\"\ntimeout_secs = 15\nretries = 4\nretry_base_ms = 50\n",
            self.base_url()
        )
    }

    pub fn requests(&self, path_part: &str) -> Vec<Recorded> {
        let s = self.state.lock().unwrap();
        s.requests
            .iter()
            .filter(|r| r.path.contains(path_part))
            .cloned()
            .collect()
    }
}

type Resp = Response<Full<Bytes>>;

fn reply(status: u16, body: Option<Value>) -> Resp {
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn envelope(status: u16, code: &str, error_code: &str, message: &str) -> Resp {
    reply(
        status,
        Some(json!({"code": code, "message": message, "error_code": error_code})),
    )
}

async fn handle(st: Arc<Mutex<State>>, req: Request<Incoming>) -> Resp {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let delay = st.lock().unwrap().answer_delay;
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    {
        let mut s = st.lock().unwrap();
        s.requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
            at: Instant::now(),
        });
        if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {API_KEY}")) {
            return envelope(
                401,
                "UNAUTHORIZED",
                "DISPATCH_UNAUTHORIZED",
                "missing or invalid bearer token",
            );
        }
        let faulted = s
            .faults_only_on
            .as_ref()
            .is_none_or(|p| path.starts_with(p.as_str()));
        if let Some((status, retry)) = faulted.then(|| s.faults.pop_front()).flatten() {
            let mut r = if status == 429 {
                envelope(
                    429,
                    "TOO_MANY_REQUESTS",
                    "DISPATCH_RATE_LIMITED",
                    "rate limit exceeded",
                )
            } else {
                envelope(
                    status,
                    "SERVICE_UNAVAILABLE",
                    "LEAP_DISPATCH_INTERNAL_ERROR_001",
                    "try again",
                )
            };
            if let Some(secs) = retry {
                r.headers_mut()
                    .insert("retry-after", secs.to_string().parse().unwrap());
            }
            return r;
        }
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        (m, ["v2", "dispatch", level @ ("meter" | "group"), "webhook"]) => {
            webhook(&st, m, level, body)
        }
        (
            "POST",
            [
                "v2",
                "dispatch",
                level @ ("meter" | "group"),
                "webhook",
                "integration_test",
            ],
        ) => integration_test(&st, level, body).await,
        ("POST", ["v2", "dispatch", level @ ("meter" | "group"), "search"]) => {
            search(&st, level, &body)
        }
        (m, ["v1.1", ..]) => interval_data::handle(
            &st,
            m,
            &parts,
            &query,
            &String::from_utf8_lossy(&bytes),
            &body,
        ),
        (_, ["v2", "dispatch", ..]) => envelope(
            405,
            "METHOD_NOT_ALLOWED",
            "DISPATCH_INVALID_INPUT",
            "method not allowed",
        ),
        _ => envelope(
            404,
            "NOT_FOUND",
            "DISPATCH_NO_ACCESS_TO_RESOURCE",
            "no such resource",
        ),
    }
}

fn bad(message: &str) -> Resp {
    envelope(400, "BAD_REQUEST", "DISPATCH_INVALID_INPUT", message)
}

fn webhook(st: &Mutex<State>, method: &str, level: &str, body: Value) -> Resp {
    let mut s = st.lock().unwrap();
    match method {
        "GET" => match s.hooks.get(level) {
            Some(h) => reply(200, Some(h.clone())),
            None => envelope(
                404,
                "NOT_FOUND",
                "DISPATCH_NO_ACCESS_TO_RESOURCE",
                "no webhook registered",
            ),
        },
        "PUT" => {
            let url_ok = body["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("https://"));
            let headers_ok = body["headers"].as_array().is_some_and(|hs| {
                hs.iter()
                    .all(|h| h["name"].is_string() && h["value"].is_string())
            });
            if !url_ok || !headers_ok {
                return bad("url must be an https URL and headers a list of {name, value}");
            }
            // One per account: a PUT replaces the previous one.
            s.hooks.insert(level.to_string(), body.clone());
            reply(200, Some(body))
        }
        "DELETE" => {
            s.hooks.remove(level);
            reply(204, None)
        }
        _ => envelope(
            405,
            "METHOD_NOT_ALLOWED",
            "DISPATCH_INVALID_INPUT",
            "method not allowed",
        ),
    }
}
