//! Shared test harness: the real `leap-edge` binary on 127.0.0.1 port 0 with a TLS
//! certificate made for the test, a real HTTPS client, and the real SQLite file.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const KEY: &str = "test-key-0123456789-abcdefghijklmnop";
pub const PATH: &str = "/leap/dispatch";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_leap-edge")
}

/// The device profiles shipped in `devices/`.
pub fn devices_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("devices")
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .expect("fixture")
}

/// A daemon process with its own folder (config, TLS files, database, log).
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub addr: SocketAddr,
    /// The loopback listener for `/metrics` and `/healthz` (plain HTTP).
    pub metrics_addr: SocketAddr,
    pub cert_der: CertificateDer<'static>,
    pub extra_config: String,
    /// Lines added to `[server]` (limits, timeouts).
    pub server_config: String,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with("")
    }

    /// `extra` is appended to the generated config (meters, devices, site, policy...).
    pub fn start_with(extra: &str) -> Daemon {
        Daemon::start_custom("", extra)
    }

    /// `server` lines go into `[server]`, `extra` at the top level (as in `start_with`).
    pub fn start_custom(server: &str, extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert_der = write_cert(dir.path());
        let mut d = Daemon {
            dir,
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            cert_der,
            extra_config: extra.to_string(),
            server_config: server.to_string(),
        };
        d.write_config();
        d.spawn();
        d
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("leap-edge.db")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn write_config(&self) {
        TestConfig {
            listen: self.addr,
            metrics_listen: self.metrics_addr,
            top: self.extra_config.clone(),
            server: format!("read_timeout_secs = 2\n{}", self.server_config),
            keys: vec![KEY, "second-key-for-rotation-0123456789"],
            ..TestConfig::default()
        }
        .write(self.dir.path());
    }

    /// Start (or restart, on the same port) the daemon and wait until it listens.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let start_len = std::fs::metadata(self.log_path())
            .map(|m| m.len())
            .unwrap_or(0);
        let child = Command::new(bin())
            .args(["--config", self.config_path().to_str().unwrap(), "run"])
            .env("LEAP_EDGE_LOG", "info,leap_edge=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn leap-edge");
        self.child = Some(child);
        self.addr = self.wait_listening(start_len, "listening for Leap notifications");
        self.metrics_addr = self.wait_listening(start_len, "serving /metrics and /healthz");
        // Restarts reuse the ports, so the harness keeps talking to the same addresses.
        self.write_config();
    }

    fn wait_listening(&mut self, from: u64, what: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let text = &text[(from as usize).min(text.len())..];
            if let Some(line) = text.lines().find(|l| l.contains(what)) {
                let addr = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .unwrap();
                return addr.parse().unwrap();
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("leap-edge exited with {status} before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "leap-edge did not start listening:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL on Unix
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().unwrap().success()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr, self.cert_der.clone())
    }

    /// Run a CLI subcommand against this daemon's config; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        cli_with(&self.config_path(), args)
    }

    pub fn events_json(&self) -> serde_json::Value {
        let (code, out, err) = self.cli(&["events", "--json"]);
        assert_eq!(code, 0, "events failed: {err}");
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("events --json is not JSON ({e}): {out}"))
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    pub fn count(&self, table: &str) -> i64 {
        self.db()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Response {
    pub status: u16,
    pub body: serde_json::Value,
    pub text: String,
}

/// An HTTPS client trusting only the daemon's test certificate.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl Client {
    pub fn new(addr: SocketAddr, cert: CertificateDer<'static>) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Client {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    pub async fn connect(&self) -> SendRequest<Full<Bytes>> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let tls = self
            .tls
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("http handshake");
        tokio::spawn(conn);
        send
    }

    /// POST on a fresh connection with the right key and JSON content type.
    pub async fn post(&self, body: &str) -> Response {
        self.request(
            "POST",
            PATH,
            &[("x-api-key", KEY), ("content-type", "application/json")],
            body.as_bytes().to_vec(),
        )
        .await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Response {
        let mut send = self.connect().await;
        send_on(&mut send, method, path, headers, body).await
    }
}

impl Client {
    /// Like [`Client::post`] on a fresh connection, but every failure (refused, reset,
    /// TLS cut short, no answer within `limit`) is an `Err`: senders that retry like Leap
    /// use this while the daemon is being killed.
    pub async fn try_post(&self, body: &str, limit: Duration) -> Result<Response, String> {
        let headers = [("x-api-key", KEY), ("content-type", "application/json")];
        let body = body.as_bytes().to_vec();
        self.try_request("POST", PATH, &headers, body, limit).await
    }

    /// Any request on a fresh connection, every failure an `Err` (as [`Client::try_post`]).
    pub async fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        limit: Duration,
    ) -> Result<Response, String> {
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let tls = self
                .tls
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("http: {e}"))?;
            tokio::spawn(conn);
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "localhost");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Full::new(Bytes::from(body))).unwrap();
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            Ok(Response {
                status,
                body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
                text,
            })
        };
        tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| "no answer in time".to_string())?
    }
}

pub async fn send_on(
    send: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Response {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Response {
        status,
        body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        text,
    }
}

/// Leap's sample meter notification with its timeslots moved to start `offset_s` from now.
pub fn timeslot_json(
    meter: &str,
    event: &str,
    start: chrono::DateTime<chrono::Utc>,
    secs: i64,
    kw: Option<f64>,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut t = serde_json::json!({
        "meter_event_id": event,
        "start_time": start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "end_time": (start + chrono::Duration::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "cancelled": false,
        "performance_compensation_cap": "up-to-site-load",
        "priority": 1,
        "is_voluntary": false,
        "dispatch_event_types": ["day-ahead"],
        "programs": ["DRAM"],
        "energy_kw": kw,
    });
    if let (Some(t), Some(e)) = (t.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            t.insert(k.clone(), v.clone());
        }
    }
    let _ = meter;
    t
}

pub fn meter_notification(meter: &str, timeslots: Vec<serde_json::Value>) -> String {
    serde_json::json!({
        "integration_test_notification": false,
        "communication_test": false,
        "meter_dispatches": [{"meter_id": meter, "timeslots": timeslots}]
    })
    .to_string()
}

/// Raw bytes on a TLS connection, for clients that misbehave on purpose.
pub async fn raw_tls(
    client_addr: SocketAddr,
    cert: CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let c = Client::new(client_addr, cert);
    let tcp = tokio::net::TcpStream::connect(client_addr).await.unwrap();
    c.tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// A TLS private key as an operator must keep it: not readable by others (issue 10.10).
pub fn write_private_key(path: &Path, pem: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// GET on the loopback metrics listener (plain HTTP): `/metrics` and `/healthz`.
pub async fn local_get(addr: SocketAddr, path: &str) -> Response {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("http handshake");
    tokio::spawn(conn);
    send_on(&mut send, "GET", path, &[], Vec::new()).await
}

pub fn write_file(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

pub fn lines(path: &Path) -> Vec<String> {
    std::io::BufReader::new(std::fs::File::open(path).unwrap())
        .lines()
        .map_while(Result::ok)
        .collect()
}

/// A fresh self-signed certificate for `localhost` written as `cert.pem` and `key.pem`
/// (0600) in `dir`, as every test config names them; returns what a client must trust.
pub fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("cert");
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    write_private_key(&dir.join("key.pem"), &ck.signing_key.serialize_pem());
    ck.cert.der().clone()
}

/// The one config every test daemon starts from (the shipped device profiles, the TLS
/// files of [`write_cert`], the test key, an admin socket in the folder), with the parts a
/// test changes: `top` goes before `[server]`, `server` into it, `tail` after `[admin]`,
/// and each of `meters` gets a simulated-profile device `bat<i>` on 127.0.0.1.
#[derive(Clone)]
pub struct TestConfig {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub top: String,
    pub server: String,
    pub keys: Vec<&'static str>,
    /// The database, relative to the config's folder or absolute.
    pub db: String,
    pub tail: String,
    pub meters: Vec<String>,
}

impl Default for TestConfig {
    fn default() -> TestConfig {
        TestConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            top: String::new(),
            server: String::new(),
            keys: vec![KEY],
            db: "leap-edge.db".into(),
            tail: String::new(),
            meters: Vec::new(),
        }
    }
}

impl TestConfig {
    pub fn text(&self) -> String {
        let devices = devices_dir();
        let TestConfig {
            listen,
            metrics_listen,
            top,
            server,
            keys,
            db,
            tail,
            ..
        } = self;
        let mut text = format!(
            "devices_dir = {devices:?}\n{top}\n[server]\nlisten = \"{listen}\"\nmetrics_listen = \"{metrics_listen}\"\npath = \"{PATH}\"\n{server}\n\
             [server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
             [auth]\nkeys = {keys:?}\n[storage]\npath = {db:?}\n[admin]\nsocket = \"admin.sock\"\n{tail}\n"
        );
        for (i, m) in self.meters.iter().enumerate() {
            text.push_str(&format!(
                "[[meters]]\nid = \"{m}\"\ndevice = \"bat{i}\"\n[devices.bat{i}]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nunit_id = {}\n",
                i + 1
            ));
        }
        text
    }

    /// Writes `config.toml` in `dir` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("config.toml");
        std::fs::write(&path, self.text()).unwrap();
        path
    }
}

/// Config for an in-process daemon (`leap_edge::daemon::start`) in `dir`: a fresh TLS
/// certificate, the test key, the database at `db` (relative to `dir`, or absolute), and
/// one simulated-profile device per meter in `meters`. Returns the config path and the
/// certificate the client must trust.
pub fn inproc_config(
    dir: &Path,
    db: &str,
    meters: &[&str],
    extra: &str,
) -> (PathBuf, CertificateDer<'static>) {
    let cert = write_cert(dir);
    let config = TestConfig {
        db: db.into(),
        tail: extra.into(),
        meters: meters.iter().map(|m| m.to_string()).collect(),
        ..TestConfig::default()
    };
    (config.write(dir), cert)
}

/// An in-process daemon on the config at `config`, commanding through `commander`, on the
/// system clock and with no live device readings.
pub async fn start_inproc(
    config: &Path,
    commander: Arc<dyn leap_edge::dispatch::Commander>,
) -> leap_edge::daemon::Running {
    let config = leap_edge::config::Config::load(config).expect("test config loads");
    let parts = leap_edge::daemon::Parts {
        commander,
        clock: Arc::new(leap_edge::clock::SystemClock),
        live: Arc::new(Vec::new),
    };
    leap_edge::daemon::start(config, parts)
        .await
        .expect("daemon starts")
}

/// Poll `cond` every 25 ms until it holds or `limit` passes; returns whether it held.
/// Generous limits: a busy machine must not fail a test, only a missing feature.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    cond()
}

/// [`eventually`] for tests without a runtime (blocks the thread between polls).
pub fn eventually_blocking(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    cond()
}

/// Run a CLI subcommand on a config file, no stdin; returns (exit code, stdout, stderr).
pub fn cli_with(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `chattr +i` on the files (which binds root too, where file modes do not); removed on
/// drop. For tests that need a read-only database or folder: they need root.
pub struct Immutable(Vec<PathBuf>);

impl Immutable {
    pub fn set(files: &[PathBuf]) -> Immutable {
        for f in files {
            let ok = std::process::Command::new("chattr")
                .arg("+i")
                .arg(f)
                .status()
                .unwrap();
            assert!(
                ok.success(),
                "chattr +i {} (needs root on ext4/xfs/btrfs)",
                f.display()
            );
        }
        Immutable(files.to_vec())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(f)
                .status();
        }
    }
}
