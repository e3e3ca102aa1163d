//! Harness for the relay tests: real `leap-edge run` gateways (plain HTTP on loopback, as
//! behind a reverse tunnel) and a real `leap-edge relay run` (HTTPS, as Leap reaches it),
//! each a process with its own folder, SQLite file and log, killable with SIGKILL.
#![allow(dead_code)]

use crate::common;
pub use crate::common::{PATH, bin};
use http_body_util::Full;
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const RELAY_KEY: &str = "relay-key-for-leap-0123456789abcdef";
pub const GATEWAY_KEY: &str = "gateway-key-0123456789abcdef-0123";

/// A process whose log tells the address it listens on.
pub struct Proc {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub args: Vec<String>,
}

impl Proc {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("log.txt")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Start the process and wait until its log (from now on) has every marker; returns
    /// the address after `addr=` on each marker's line, in order.
    fn spawn(&mut self, markers: &[&str]) -> Vec<SocketAddr> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let from = log.metadata().unwrap().len() as usize;
        let child = Command::new(bin())
            .arg("--config")
            .arg(self.config_path())
            .args(&self.args)
            .env("LEAP_EDGE_LOG", "info,leap_edge=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn leap-edge");
        self.child = Some(child);
        let mut found: Vec<SocketAddr> = Vec::new();
        let started = common::eventually_blocking(Duration::from_secs(30), || {
            let text = self.log();
            let text = &text[from.min(text.len())..];
            found = markers
                .iter()
                .filter_map(|m| {
                    let line = text.lines().find(|l| l.contains(m))?;
                    line.split("addr=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .collect();
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("leap-edge {:?} exited with {status}:\n{text}", self.args);
            }
            found.len() == markers.len()
        });
        assert!(started, "leap-edge did not start:\n{}", self.log());
        found
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        common::cli_with(&self.config_path(), args)
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let (code, out, err) = self.cli(args);
        assert_eq!(code, 0, "{args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} is not JSON ({e}): {out}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A gateway daemon listening on plain HTTP on loopback (its tunnel end).
pub struct Gateway(pub Proc);

impl Gateway {
    pub fn start() -> Gateway {
        let mut g = Gateway(Proc {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            args: vec!["run".into()],
        });
        g.write_config();
        g.restart();
        g
    }

    /// A gateway that terminates TLS itself (certificate for "gateway.test" in cert.pem).
    pub fn start_tls() -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["gateway.test".into()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
        let key = ck.signing_key.serialize_pem();
        common::write_private_key(&dir.path().join("key.pem"), &key);
        let mut g = Gateway(Proc {
            dir,
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            args: vec!["run".into()],
        });
        g.write_config();
        g.restart();
        g
    }

    pub fn cert_path(&self) -> PathBuf {
        self.0.dir.path().join("cert.pem")
    }

    fn write_config(&self) {
        let devices = common::devices_dir();
        let tls = if self.cert_path().exists() {
            "[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"
        } else {
            ""
        };
        let text = format!(
            "devices_dir = {devices:?}\n[server]\nlisten = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\npath = \"{PATH}\"\nread_timeout_secs = 2\n{tls}\
             [auth]\nkeys = [\"{GATEWAY_KEY}\"]\n[storage]\npath = \"leap-edge.db\"\n[admin]\nsocket = \"admin.sock\"\n",
            self.0.addr
        );
        std::fs::write(self.0.config_path(), text).unwrap();
    }

    /// (Re)start on the same port.
    pub fn restart(&mut self) {
        self.0.addr = self.0.spawn(&["listening for Leap notifications"])[0];
        self.write_config();
    }

    pub fn url(&self) -> String {
        format!("http://{}{PATH}", self.0.addr)
    }

    /// (event id, revisions) for every timeslot in `events --json`, sorted.
    pub fn events(&self) -> Vec<(String, i64)> {
        let v = self.0.cli_json(&["events", "--json"]);
        let mut out: Vec<(String, i64)> = v["timeslots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let id = e
                    .get("meter_event_id")
                    .or_else(|| e.get("market_group_event_id"));
                (
                    id.and_then(|v| v.as_str()).unwrap().to_string(),
                    e["revisions"].as_i64().unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    pub fn event_ids(&self) -> Vec<String> {
        self.events().into_iter().map(|(id, _)| id).collect()
    }
}

pub struct GatewaySpec<'a> {
    pub name: &'a str,
    pub url: String,
    pub meters: Vec<&'a str>,
}

/// The relay, HTTPS with a certificate made for the test.
pub struct Relay {
    pub p: Proc,
    pub metrics_addr: SocketAddr,
    pub cert: CertificateDer<'static>,
    pub gateways: String,
    /// Extra keys for the `[relay]` table.
    pub relay_extra: String,
}

impl Relay {
    pub fn start(gateways: &[GatewaySpec]) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let cert = common::write_cert(dir.path());
        let mut r = Relay {
            p: Proc {
                dir,
                child: None,
                addr: "127.0.0.1:0".parse().unwrap(),
                args: vec!["relay".into(), "run".into()],
            },
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            cert,
            gateways: String::new(),
            relay_extra: String::new(),
        };
        r.set_gateways(gateways);
        r.restart();
        r
    }

    pub fn set_gateways(&mut self, gateways: &[GatewaySpec]) {
        self.gateways = gateways
            .iter()
            .map(|g| {
                format!(
                    "[[gateways]]\nname = \"{}\"\nurl = \"{}\"\nkey = \"{GATEWAY_KEY}\"\nmeters = {:?}\n",
                    g.name, g.url, g.meters
                )
            })
            .collect();
        self.write_config();
    }

    pub fn write_config(&self) {
        let text = format!(
            "[server]\nlisten = \"{}\"\npath = \"{PATH}\"\nread_timeout_secs = 2\n\
             [server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[auth]\nkeys = [\"{RELAY_KEY}\"]\n\
             [storage]\npath = \"relay.db\"\n[relay]\nmetrics_listen = \"{}\"\ndelivery_timeout_secs = 3\n{}\n{}",
            self.p.addr, self.metrics_addr, self.relay_extra, self.gateways
        );
        std::fs::write(self.p.config_path(), text).unwrap();
    }

    pub fn restart(&mut self) {
        let addrs = self
            .p
            .spawn(&["listening for Leap notifications", "relay /metrics"]);
        (self.p.addr, self.metrics_addr) = (addrs[0], addrs[1]);
        self.write_config();
    }

    pub fn reload(&self) {
        let pid = self.p.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// `relay status --json`, whatever its exit code (3 stopped, 1 unhealthy).
    pub fn status(&self) -> serde_json::Value {
        let (code, out, err) = self.p.cli(&["relay", "status", "--json"]);
        assert!([0, 1, 3].contains(&code), "relay status exit {code}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"))
    }

    /// Wait until every configured gateway's queue is empty.
    pub fn wait_drained(&self, limit: Duration) -> serde_json::Value {
        let mut s = serde_json::Value::Null;
        let drained = common::eventually_blocking(limit, || {
            s = self.status();
            let gateways = s["gateways"].as_array().unwrap();
            gateways.iter().all(|g| g["queue_depth"] == 0)
        });
        assert!(drained, "relay queues not drained: {s:#}\n{}", self.p.log());
        s
    }

    pub fn client(&self) -> Client {
        Client::new(self.p.addr, self.cert.clone())
    }
}

/// An HTTPS client like Leap's, trusting only the relay's test certificate: the shared
/// [`common::Client`] with the key and content type as arguments and every failure an `Err`.
#[derive(Clone)]
pub struct Client(common::Client);

impl Client {
    pub fn new(addr: SocketAddr, cert: CertificateDer<'static>) -> Client {
        Client(common::Client::new(addr, cert))
    }

    /// POST on a fresh connection; every failure (refused, reset, timeout) is an `Err`.
    pub async fn post(
        &self,
        key: &str,
        content_type: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        self.request("POST", PATH, key, content_type, body).await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        key: &str,
        content_type: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        let headers = [("x-api-key", key), ("content-type", content_type)];
        let body = body.as_bytes().to_vec();
        let limit = Duration::from_secs(10);
        let r = self.0.try_request(method, path, &headers, body, limit);
        r.await.map(|r| (r.status, r.text))
    }

    /// How long one keep-alive connection that never shows a key lasts while it sends a
    /// request every 200 ms (capped at `cap`).
    pub async fn keyless_connection_life(&self, cap: Duration) -> Duration {
        let started = Instant::now();
        let mut send = self.0.connect().await;
        while started.elapsed() < cap {
            let req = hyper::Request::builder()
                .uri("/not-the-webhook")
                .header("host", "localhost")
                .body(Full::new(bytes::Bytes::new()))
                .unwrap();
            let Ok(resp) = send.send_request(req).await else {
                break;
            };
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        started.elapsed()
    }

    /// Like Leap: retry until a 2XX (bounded).
    pub async fn post_until_ok(&self, body: &str) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut delay = Duration::from_millis(50);
        loop {
            if let Ok((s, text)) = self.post(RELAY_KEY, "application/json", body).await
                && (200..300).contains(&s)
            {
                return (s, text);
            }
            assert!(Instant::now() < deadline, "relay never acknowledged");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(800));
        }
    }
}

/// A week ahead at midnight UTC, fixed for the whole test run (so a timeslot sent twice is
/// the same revision), and within harden's `limits.max_start_ahead_days` (31).
fn slot_start() -> chrono::DateTime<chrono::Utc> {
    static START: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        let day = (chrono::Utc::now() + chrono::Duration::days(7)).date_naive();
        day.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
    })
}

/// A Leap-shaped timeslot (valid, in the future).
pub fn timeslot(kind: &str, id: &str) -> serde_json::Value {
    let id_field = if kind == "meter" {
        "meter_event_id"
    } else {
        "market_group_event_id"
    };
    serde_json::json!({
        id_field: id,
        "start_time": slot_start().to_rfc3339(),
        "end_time": (slot_start() + chrono::Duration::hours(1)).to_rfc3339(),
        "cancelled": false, "performance_compensation_cap": "up-to-site-load",
        "priority": 2, "is_voluntary": false, "dispatch_event_types": ["standard"],
        "programs": ["DRAM"], "energy_kw": 5.0
    })
}

pub fn meter_entry(meter: &str, ids: &[&str]) -> serde_json::Value {
    serde_json::json!({"meter_id": meter, "timeslots": ids.iter().map(|i| timeslot("meter", i)).collect::<Vec<_>>()})
}

pub fn group_entry(group: &str, meters: &[&str], ids: &[&str]) -> serde_json::Value {
    serde_json::json!({"market_group_id": group, "meter_ids": meters,
        "timeslots": ids.iter().map(|i| timeslot("group", i)).collect::<Vec<_>>()})
}

/// A plain HTTP/1.1 request on loopback (gateways behind their tunnel, the metrics port).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A loopback port with nothing listening (a gateway whose tunnel is down).
pub fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
