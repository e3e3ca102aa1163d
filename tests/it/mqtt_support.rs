//! Harness for the MQTT tests: a real Mosquitto (Debian's `mosquitto`) per test on a
//! loopback port with its own configuration, password file, persistence and the shipped ACL
//! (`packaging/mosquitto/leap-edge.acl`); the relay in process; gateways as real daemons.
#![allow(dead_code)]

use crate::common::{self, Daemon, timeslot_json};
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const RELAY_KEY: &str = "relay-key-0123456789abcdef0123456789";

/// A Mosquitto process with its own folder (config, passwords, persistence, log).
pub struct Broker {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
    pub tls: bool,
}

impl Broker {
    pub fn start(users: &[&str]) -> Broker {
        Broker::start_with(users, false)
    }

    /// With `tls`, the listener speaks TLS with a certificate made for `localhost`.
    pub fn start_with(users: &[&str], tls: bool) -> Broker {
        Broker::start_configured(users, tls, "")
    }

    /// `extra` is appended to mosquitto.conf (limits a test needs).
    pub fn start_configured(users: &[&str], tls: bool, extra: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let passwd = dir.path().join("passwd");
        for (i, u) in users.iter().enumerate() {
            let mut c = Command::new("mosquitto_passwd");
            if i == 0 {
                c.arg("-c");
            }
            let ok = c
                .args(["-b", passwd.to_str().unwrap(), u, &password(u)])
                .status()
                .expect("mosquitto_passwd (apt-get install mosquitto)");
            assert!(ok.success());
        }
        let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/mosquitto/leap-edge.acl");
        // Root would otherwise drop to the mosquitto user, who cannot write the temp folder.
        let user = if is_root() { "user root\n" } else { "" };
        let mut tls_conf = String::new();
        if tls {
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let (cert, key) = (dir.path().join("broker.pem"), dir.path().join("broker.key"));
            std::fs::write(&cert, ck.cert.pem()).unwrap();
            std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
            tls_conf = format!("certfile {}\nkeyfile {}\n", cert.display(), key.display());
        }
        let conf = format!(
            "{user}per_listener_settings false\npersistence true\npersistence_location {}/\n\
             allow_anonymous false\npassword_file {}\nacl_file {}\nlog_dest file {}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             listener {port} 127.0.0.1\nuse_username_as_clientid true\n{tls_conf}{extra}",
            dir.path().display(),
            passwd.display(),
            acl.display(),
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut b = Broker {
            dir,
            port,
            child: None,
            tls,
        };
        b.spawn();
        b
    }

    pub fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (Mosquitto saves its persistence file) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            c.wait().unwrap();
        }
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("mqtts://localhost:{}", self.port)
        } else {
            format!("mqtt://127.0.0.1:{}", self.port)
        }
    }

    /// The `ca` line for a client's MQTT table (empty without TLS).
    pub fn ca(&self) -> String {
        if self.tls {
            format!("ca = {:?}\n", self.dir.path().join("broker.pem"))
        } else {
            String::new()
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The relay refuses a private key other users can read.
pub fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn password(user: &str) -> String {
    format!("pw-{user}-0123456789")
}

pub fn uplink(broker: &Broker, name: &str) -> String {
    format!(
        "[uplink.mqtt]\nurl = \"{}\"\nclient_id = \"{name}\"\nusername = \"{name}\"\npassword = \"{}\"\n{}",
        broker.url(),
        password(name),
        broker.ca()
    )
}

/// A gateway daemon subscribed to its dispatch topic.
pub fn gateway(broker: &Broker, name: &str) -> Daemon {
    let d = Daemon::start_with(&uplink(broker, name));
    wait_log(&d, "mqtt uplink connected", 1);
    d
}

pub fn wait_log(d: &Daemon, needle: &str, times: usize) {
    wait_for(&format!("{needle:?} ×{times}"), || {
        d.log().matches(needle).count() >= times
    });
    // The subscription follows the connection.
    std::thread::sleep(Duration::from_millis(300));
}

pub fn wait_for(what: &str, f: impl FnMut() -> bool) {
    let held = crate::common::eventually_blocking(Duration::from_secs(40), f);
    assert!(held, "timed out waiting for {what}");
}

pub struct Relay {
    pub dir: tempfile::TempDir,
    pub running: leap_edge::relay::Running,
    pub client: common::Client,
}

pub async fn relay(broker: &Broker, gateways: &[(&str, &str)]) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let cert = common::write_cert(dir.path());
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npath = \"{}\"\n[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
         [auth]\nkeys = [\"{RELAY_KEY}\"]\n[storage]\npath = \"relay.db\"\n[relay]\nmetrics_listen = \"127.0.0.1:0\"\n\
         delivery_timeout_secs = 3\n[mqtt]\nurl = \"{}\"\nclient_id = \"leap-edge-relay\"\n\
         username = \"leap-edge-relay\"\npassword = \"{}\"\n{}",
        common::PATH,
        broker.url(),
        password("leap-edge-relay"),
        broker.ca()
    );
    for (name, meter) in gateways {
        text.push_str(&format!(
            "[[gateways]]\nname = \"{name}\"\ntransport = \"mqtt\"\nmeters = [\"{meter}\"]\n"
        ));
    }
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = leap_edge::relay::RelayConfig::load(&path).expect("relay config");
    let running = leap_edge::relay::start(cfg).await.expect("relay starts");
    let client = common::Client::new(running.addr, cert);
    let metrics = running.metrics_addr;
    tokio::task::block_in_place(|| {
        wait_for("the relay connected to the broker", || {
            http_get(metrics, "/metrics")
                .1
                .lines()
                .any(|l| l == "leap_edge_relay_mqtt_connected 1")
        })
    });
    Relay {
        dir,
        running,
        client,
    }
}

impl Relay {
    pub async fn post(&self, body: &str) -> common::Response {
        self.client
            .request(
                "POST",
                common::PATH,
                &[
                    ("x-api-key", RELAY_KEY),
                    ("content-type", "application/json"),
                ],
                body.as_bytes().to_vec(),
            )
            .await
    }

    /// `leap-edge relay status --json`, the operator's view. The relay runs in the test's
    /// process without the run lock, so the command exits 3 (not running) with its JSON.
    pub fn status_json(&self) -> serde_json::Value {
        let out = Command::new(common::bin())
            .arg("--config")
            .arg(self.dir.path().join("relay.toml"))
            .args(["relay", "status", "--json"])
            .output()
            .unwrap();
        assert!(
            matches!(out.status.code(), Some(0 | 1 | 3)),
            "{:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `leap-edge relay status` as text: (exit code, stdout, stderr).
    pub fn status_text(&self) -> (i32, String, String) {
        common::cli_with(&self.dir.path().join("relay.toml"), &["relay", "status"])
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("relay.db")).unwrap()
    }
}

pub fn notification(parts: &[(&str, &str)]) -> String {
    let start = chrono::Utc::now() + chrono::Duration::hours(2);
    let dispatches: Vec<_> = parts
        .iter()
        .map(|(meter, event)| {
            json!({"meter_id": meter, "timeslots": [timeslot_json(meter, event, start, 900, Some(5.0), json!({}))]})
        })
        .collect();
    json!({"integration_test_notification": false, "communication_test": false,
           "meter_dispatches": dispatches})
    .to_string()
}

/// (event id, revisions, duplicates) of every timeslot a gateway stored.
pub fn stored(d: &Daemon) -> Vec<(String, i64, i64)> {
    let db = d.db();
    let mut stmt = db
        .prepare("SELECT event_id, revisions, duplicates FROM timeslots ORDER BY event_id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

pub fn once(events: &[&str]) -> Vec<(String, i64, i64)> {
    let mut v: Vec<_> = events.iter().map(|e| (e.to_string(), 1, 0)).collect();
    v.sort();
    v
}

/// A blocking GET on a loopback `/metrics` or `/healthz` listener, for `wait_for` loops:
/// (status code, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the answer");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

/// `leap-edge status --json` of a gateway daemon.
pub fn status_json(d: &Daemon) -> serde_json::Value {
    let (code, out, err) = d.cli(&["status", "--json"]);
    assert_eq!(code, 0, "status failed: {err}");
    serde_json::from_str(&out).unwrap()
}
