//! A local stand-in for Leap's Dispatch API v2, built from /work/shared/LEAP-API.md only:
//! bearer auth, the error envelope, webhook GET/PUT/DELETE (one per level per account),
//! integration tests that really POST to the registered URL and report what happened, and
//! dispatch search with Leap's window rule (≤ 31 days), its real-time filter (default true)
//! and paging (≤ 500 results a page, `next_page_token` null on the last). Faults (503, 429
//! with Retry-After) can be queued. Test-only: never part of the shipped binary.
#![allow(dead_code)]

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The certificate the daemon under test serves (the fake trusts only it).
    pub daemon_cert: Option<CertificateDer<'static>>,
    tokens: HashMap<String, usize>,
    next_token: u64,
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
        if let Some((status, retry)) = s.faults.pop_front() {
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

async fn integration_test(st: &Mutex<State>, level: &str, body: Value) -> Resp {
    let key = if level == "meter" {
        "meter_dispatches"
    } else {
        "group_dispatches"
    };
    if body[key].as_array().is_none_or(|a| a.is_empty()) {
        return bad(&format!("{key} must hold at least one item"));
    }
    let (hook, cert) = {
        let s = st.lock().unwrap();
        (s.hooks.get(level).cloned(), s.daemon_cert.clone())
    };
    let Some(hook) = hook else {
        return bad("no webhook registered for this account");
    };
    let notification =
        json!({"integration_test_notification": true, "communication_test": false, key: body[key]});
    let sent = Utc::now();
    let result = deliver(&hook, cert, notification.to_string()).await;
    let received = Utc::now();
    let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let answer = match result {
        Ok((status, headers, text)) => json!({"http_status": status, "sent_time": ts(sent),
            "received_time": ts(received), "headers": headers, "body": text, "error_message": null}),
        Err(e) => json!({"http_status": null, "sent_time": ts(sent), "received_time": null,
            "headers": {}, "body": null, "error_message": e}),
    };
    reply(200, Some(answer))
}

/// POST the notification to the registered URL as Leap would: its headers with lower-case
/// names, a 10-second limit.
async fn deliver(
    hook: &Value,
    cert: Option<CertificateDer<'static>>,
    body: String,
) -> Result<(u16, Value, String), String> {
    let url: hyper::Uri = hook["url"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("{e}"))?;
    let host = url.host().unwrap_or_default().to_string();
    let port = url.port_u16().unwrap_or(443);
    let attempt = async {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(c) = cert {
            roots.add(c).map_err(|e| e.to_string())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method("POST")
            .uri(url.path())
            .header("host", format!("{host}:{port}"))
            .header("content-type", "application/json");
        for h in hook["headers"].as_array().into_iter().flatten() {
            let name = h["name"].as_str().unwrap_or_default().to_ascii_lowercase();
            req = req.header(name, h["value"].as_str().unwrap_or_default());
        }
        let resp = send
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers: serde_json::Map<String, Value> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), json!([v.to_str().unwrap_or_default()])))
            .collect();
        let text = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            status,
            Value::Object(headers),
            String::from_utf8_lossy(&text).into_owned(),
        ))
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "no 2XX within 10 seconds".to_string())?
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn search(st: &Mutex<State>, level: &str, body: &Value) -> Resp {
    let (Some(start), Some(end)) = (
        parse_time(&body["start_date"]),
        parse_time(&body["end_date"]),
    ) else {
        return bad("start_date and end_date must be RFC 3339 times");
    };
    if end <= start || end - start > chrono::Duration::days(31) {
        return bad("end_date must be after start_date and at most 31 days later");
    }
    let exclude_rt = body["exclude_real_time_events"].as_bool().unwrap_or(true);
    let exclude_vol = body["exclude_voluntary_events"].as_bool().unwrap_or(false);
    let mut s = st.lock().unwrap();
    let offset = match body["page_token"].as_str() {
        None => 0,
        Some(t) => match s.tokens.get(t) {
            Some(o) => *o,
            None => return bad("unknown page_token"),
        },
    };
    let (data, id_key, filter_key, flag) = if level == "meter" {
        (
            &s.meter_results,
            "meter_id",
            "meter_ids",
            "communication_test",
        )
    } else {
        (
            &s.group_results,
            "market_group_id",
            "market_group_ids",
            "is_communication_test",
        )
    };
    let wanted: Option<Vec<String>> = body[filter_key].as_array().map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_ascii_lowercase))
            .collect()
    });
    let all: Vec<Value> = data
        .iter()
        .filter(|r| {
            wanted.as_ref().is_none_or(|w| {
                w.contains(&r[id_key].as_str().unwrap_or_default().to_ascii_lowercase())
            })
        })
        .filter_map(|r| {
            let slots: Vec<Value> = r["timeslots"]
                .as_array()?
                .iter()
                .filter(|t| {
                    let (Some(ts), Some(te)) =
                        (parse_time(&t["start_time"]), parse_time(&t["end_time"]))
                    else {
                        return false;
                    };
                    let rt = t["dispatch_event_types"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "5m"));
                    ts < end
                        && te > start
                        && !(exclude_rt && rt)
                        && !(exclude_vol && t["is_voluntary"] == true)
                })
                .map(|t| {
                    let mut t = t.clone();
                    t[flag] = t.get(flag).cloned().unwrap_or(json!(false));
                    t
                })
                .collect();
            (!slots.is_empty()).then(|| {
                let mut r = r.clone();
                r["timeslots"] = json!(slots);
                r
            })
        })
        .collect();
    let page: Vec<Value> = all.iter().skip(offset).take(PAGE_SIZE).cloned().collect();
    let next = if offset + PAGE_SIZE < all.len() {
        s.next_token += 1;
        let token = format!("00000000-0000-4000-8000-{:012x}", s.next_token);
        s.tokens.insert(token.clone(), offset + PAGE_SIZE);
        Some(token)
    } else {
        None
    };
    reply(200, Some(json!({"next_page_token": next, "results": page})))
}
