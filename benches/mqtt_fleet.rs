//! A fleet over MQTT (issue 12): one Mosquitto (started here, loopback, persistence on),
//! N simulated gateways — lightweight rumqttc subscribers in this process, each with its own
//! client id, persistent session and dispatch topic, not N daemons — and the release
//! `leap-edge relay run` as its own process with N `transport = "mqtt"` gateways.
//! One group notification lists every gateway's meter. Measures:
//! - time from Leap's POST to the relay's 200 (which waits for every PUBACK; `ack_wait_ms`
//!   is raised so the answer is the last PUBACK);
//! - time until the last subscriber has the message;
//! - the relay process's CPU (utime + stime) for that notification and its RSS (VmRSS, VmHWM).
//!
//! Run: `cargo bench --bench mqtt_fleet` (default 1000 gateways; `-- 200` for fewer).
//! Needs `mosquitto` (Debian package) on PATH.

#[path = "../tests/it/common.rs"]
mod common;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "bench-relay-key-0123456789abcdef0123";

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The relay refuses a private key other users can read.
fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn broker(dir: &Path) -> (Kill, u16) {
    let port = free_port();
    let user = if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    {
        "user root\n"
    } else {
        ""
    };
    let conf = format!(
        "{user}persistence true\npersistence_location {}/\nallow_anonymous true\n\
         max_queued_messages 10000\nlog_dest file {}/mosquitto.log\nlistener {port} 127.0.0.1\n",
        dir.display(),
        dir.display()
    );
    std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto on PATH (apt-get install mosquitto)");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "mosquitto did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Kill(child), port)
}

/// N subscribers; returns the count of messages received so far.
async fn subscribers(port: u16, n: usize) -> Arc<AtomicUsize> {
    let got = Arc::new(AtomicUsize::new(0));
    let subscribed = Arc::new(AtomicUsize::new(0));
    for i in 0..n {
        let name = format!("gw-{i:05}");
        let mut o = MqttOptions::new(name.clone(), "127.0.0.1", port);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(86_400));
        o.set_keep_alive(Duration::from_secs(60));
        o.set_max_packet_size(Some(leap_edge::mqtt::MAX_PACKET_BYTES));
        let (client, mut events) = AsyncClient::new(o, 8);
        client
            .subscribe(format!("leap-edge/{name}/dispatch"), QoS::AtLeastOnce)
            .await
            .unwrap();
        let (got, subscribed) = (got.clone(), subscribed.clone());
        tokio::spawn(async move {
            let _client = client;
            loop {
                let ev = match events.poll().await {
                    Ok(ev) => ev,
                    Err(e) => {
                        eprintln!("subscriber: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                match ev {
                    Event::Incoming(Packet::SubAck(_)) => {
                        subscribed.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Incoming(Packet::Publish(_)) => {
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        });
    }
    let t = Instant::now();
    while subscribed.load(Ordering::Relaxed) < n {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "subscribers not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got
}

fn relay_config(dir: &Path, port: u16, n: usize) -> std::path::PathBuf {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    set_private(&dir.join("key.pem"));
    std::fs::write(dir.join("cert.der"), ck.cert.der()).unwrap();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npath = \"{}\"\nmax_body_bytes = 4194304\n\
         [server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[auth]\nkeys = [\"{KEY}\"]\n\
         [storage]\npath = \"relay.db\"\n[relay]\nmetrics_listen = \"127.0.0.1:0\"\n\
         delivery_timeout_secs = 60\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n\
         client_id = \"leap-edge-relay\"\nack_wait_ms = 8000\n",
        common::PATH
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[gateways]]\nname = \"gw-{i:05}\"\ntransport = \"mqtt\"\nmeters = [\"m-{i:05}\"]\n"
        ));
    }
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn_relay(config: &Path, dir: &Path) -> (Kill, std::net::SocketAddr) {
    let log = dir.join("relay.log");
    let child = Kill(
        Command::new(common::bin())
            .args(["--config", config.to_str().unwrap(), "relay", "run"])
            .env("LEAP_EDGE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("mqtt: connected to the broker")
            && let Some(line) = text
                .lines()
                .find(|l| l.contains("listening for Leap notifications"))
        {
            let addr = line.split("addr=").nth(1).unwrap();
            let addr = addr.split_whitespace().next().unwrap();
            return (child, addr.parse().unwrap());
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "relay did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn proc_stats(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    (field("VmRSS:"), field("VmHWM:"), ticks)
}

fn group_notification(n: usize) -> String {
    let start = chrono::Utc::now() + chrono::Duration::hours(2);
    let meters: Vec<String> = (0..n).map(|i| format!("m-{i:05}")).collect();
    let slot = common::timeslot_json(
        "",
        "bench-group",
        start,
        900,
        Some(500.0),
        serde_json::json!({}),
    );
    let mut slot = slot.as_object().unwrap().clone();
    let id = slot.remove("meter_event_id").unwrap();
    slot.insert("market_group_event_id".into(), id);
    serde_json::json!({
        "integration_test_notification": false, "communication_test": false,
        "group_dispatches": [{"market_group_id": "bench", "meter_ids": meters, "timeslots": [slot]}]
    })
    .to_string()
}

/// Time from `t0` until all `n` subscribers have the notification (at most 300 s).
fn wait_for_all(got: &AtomicUsize, n: usize, t0: Instant) -> Duration {
    while got.load(Ordering::Relaxed) < n {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "only {} of {n} received",
            got.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (broker, port) = broker(dir.path());
    let got = rt.block_on(subscribers(port, n));
    let config = relay_config(dir.path(), port, n);
    let (relay, addr) = spawn_relay(&config, dir.path());
    let pid = relay.0.id();
    std::thread::sleep(Duration::from_secs(1));
    let (rss0, _, ticks0) = proc_stats(pid);
    let cert = rustls::pki_types::CertificateDer::from(
        std::fs::read(dir.path().join("cert.der")).unwrap(),
    );
    let client = common::Client::new(addr, cert);
    let body = group_notification(n);
    let t0 = Instant::now();
    let r = rt.block_on(client.request(
        "POST",
        common::PATH,
        &[("x-api-key", KEY), ("content-type", "application/json")],
        body.into_bytes(),
    ));
    let answered = t0.elapsed();
    assert_eq!(r.status, 200, "{}", r.text);
    let all = wait_for_all(&got, n, t0);
    let (rss1, hwm, ticks1) = proc_stats(pid);
    let tck = 100.0;
    println!(
        "mqtt_fleet — {n} gateways (rumqttc subscribers), one Mosquitto 2 on loopback, release relay process"
    );
    println!(
        "  POST → relay 200 (every PUBACK in: {}): {:.0} ms",
        r.body["mqtt_published"],
        answered.as_secs_f64() * 1e3
    );
    println!(
        "  POST → last subscriber has it: {:.0} ms",
        all.as_secs_f64() * 1e3
    );
    println!(
        "  relay CPU for the notification: {:.2} s; RSS before {} KiB, after {} KiB, peak {} KiB",
        (ticks1 - ticks0) as f64 / tck,
        rss0,
        rss1,
        hwm
    );
    let (mq_rss, mq_hwm, _) = proc_stats(broker.0.id());
    println!("  mosquitto with {n} persistent sessions: RSS {mq_rss} KiB, peak {mq_hwm} KiB");
    drop(relay);
}
