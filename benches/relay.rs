//! Relay benchmark (issue 11, SPEC §2.12): the real relay and 50 real gateways, in one
//! process, each with its own SQLite file (WAL, synchronous=FULL), over loopback HTTP.
//! Run: `cargo bench --bench relay` (add `-- quick` for a shorter run).
//!
//! 1. Fan-out: one group notification naming 1,000 meters (20 per gateway) — time from the
//!    POST to the relay until the last of the 50 gateways has acknowledged its delivery.
//! 2. Ingest: acks/s into the relay at 1, 8 and 64 concurrent senders (keep-alive), each
//!    notification a mix of three meters on three gateways; deliveries run meanwhile.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use leap_edge::clock::SystemClock;
use leap_edge::daemon::{self, Parts};
use leap_edge::dispatch::RecordingCommander;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const RELAY_KEY: &str = "bench-relay-key-0123456789abcdef0123";
const GW_KEY: &str = "bench-gateway-key-0123456789abcdef01";
const GATEWAYS: usize = 50;
const METERS_PER_GATEWAY: usize = 20;

fn meter(i: usize) -> String {
    format!("{i:08x}-e392-4f00-b0cf-32e716204f78")
}

fn slot(kind: &str, id: String) -> serde_json::Value {
    let start = chrono::Utc::now() + chrono::Duration::days(1);
    serde_json::json!({
        format!("{kind}_event_id"): id,
        "start_time": start.to_rfc3339(), "end_time": (start + chrono::Duration::hours(1)).to_rfc3339(),
        "cancelled": false, "energy_kw": 10.0, "performance_compensation_cap": "up-to-site-load",
        "priority": 1, "is_voluntary": false, "dispatch_event_types": ["day-ahead"], "programs": ["DRAM"],
    })
}

fn group_body(n: usize) -> String {
    let meters: Vec<String> = (0..GATEWAYS * METERS_PER_GATEWAY).map(meter).collect();
    serde_json::json!({"integration_test_notification": false, "communication_test": false,
        "group_dispatches": [{"market_group_id": "bench", "meter_ids": meters,
            "timeslots": [slot("market_group", format!("fan-{n}"))]}]})
    .to_string()
}

fn mixed_body(n: usize) -> String {
    let entries: Vec<_> = (0..3)
        .map(|k| {
            let m = ((n * 3 + k) % GATEWAYS) * METERS_PER_GATEWAY;
            serde_json::json!({"meter_id": meter(m), "timeslots": [slot("meter", format!("mix-{n}-{k}"))]})
        })
        .collect();
    serde_json::json!({"integration_test_notification": false, "meter_dispatches": entries})
        .to_string()
}

async fn start_gateway(dir: &Path, i: usize) -> daemon::Running {
    let d = dir.join(format!("gw{i}"));
    std::fs::create_dir_all(&d).unwrap();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[auth]\nkeys = [\"{GW_KEY}\"]\n[storage]\npath = \"gw.db\"\n[admin]\nsocket = \"admin.sock\"\n"
    );
    std::fs::write(d.join("config.toml"), cfg).unwrap();
    let config = leap_edge::config::Config::load(&d.join("config.toml")).unwrap();
    let parts = Parts {
        commander: Arc::new(RecordingCommander::default()),
        clock: Arc::new(SystemClock),
        live: Arc::new(Vec::new),
    };
    daemon::start(config, parts).await.unwrap()
}

fn relay_config(dir: &Path, gateways: &[SocketAddr]) -> leap_edge::relay::RelayConfig {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = 256\n[auth]\nkeys = [\"{RELAY_KEY}\"]\n\
         [storage]\npath = \"relay.db\"\n[relay]\nmetrics_listen = \"127.0.0.1:0\"\n"
    );
    for (i, a) in gateways.iter().enumerate() {
        let meters: Vec<String> = (0..METERS_PER_GATEWAY)
            .map(|k| meter(i * METERS_PER_GATEWAY + k))
            .collect();
        text.push_str(&format!(
            "[[gateways]]\nname = \"gw{i}\"\nurl = \"http://{a}/leap/dispatch\"\nkey = \"{GW_KEY}\"\nmeters = {meters:?}\n"
        ));
    }
    std::fs::write(dir.join("relay.toml"), text).unwrap();
    leap_edge::relay::RelayConfig::load(&dir.join("relay.toml")).unwrap()
}

async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn post(send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, body: String) {
    let req = hyper::Request::post("/leap/dispatch")
        .header("host", "localhost")
        .header("x-api-key", RELAY_KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.unwrap();
}

/// Deliveries still pending in the relay's outbox (read-only, beside the running relay).
fn pending(db: &rusqlite::Connection) -> i64 {
    db.query_row(
        "SELECT COUNT(*) FROM relay_deliveries WHERE state != 'delivered'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

async fn wait_drained(db: &rusqlite::Connection) {
    while pending(db) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn fan_out(addr: SocketAddr, db: &rusqlite::Connection, runs: usize) {
    let mut times = Vec::new();
    for n in 0..runs {
        let mut send = connect(addr).await;
        let t = Instant::now();
        post(&mut send, group_body(n)).await;
        let acked = t.elapsed();
        wait_drained(db).await;
        times.push((acked, t.elapsed()));
    }
    times.sort_by_key(|t| t.1);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (a, l) = times[times.len() / 2];
    println!(
        "fan-out: 1 group notification, {} meters → {GATEWAYS} gateways: relay ack {:.1} ms, last gateway ack {:.1} ms (median of {runs}; max {:.1} ms)",
        GATEWAYS * METERS_PER_GATEWAY,
        ms(a),
        ms(l),
        ms(times.last().unwrap().1)
    );
}

async fn senders(
    addr: SocketAddr,
    db: &rusqlite::Connection,
    n: usize,
    total: usize,
    seq: &Arc<AtomicUsize>,
) {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let seq = seq.clone();
        tasks.push(tokio::spawn(async move {
            let mut send = connect(addr).await;
            for _ in 0..total / n {
                let i = seq.fetch_add(1, Ordering::Relaxed);
                post(&mut send, mixed_body(i)).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let acks = t.elapsed();
    wait_drained(db).await;
    let all = t.elapsed();
    let done = (total / n) * n;
    println!(
        "ingest: {n:>2} senders: {:>6.0} acks/s ({done} notifications × 3 gateways; all delivered after {:.2} s)",
        done as f64 / acks.as_secs_f64(),
        all.as_secs_f64()
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let dir = tempfile::tempdir().unwrap();
    // The gateways get their own runtime (as if on their own machines); the relay and the
    // senders share the other.
    let gw_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let gateways: Vec<daemon::Running> = gw_rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..GATEWAYS {
            v.push(start_gateway(dir.path(), i).await);
        }
        v
    });
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let relay = leap_edge::relay::start(relay_config(dir.path(), &addrs)).await.unwrap();
        let db = rusqlite::Connection::open_with_flags(
            dir.path().join("relay.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        println!("relay benchmark — {} — relay + {GATEWAYS} gateways in one process, SQLite WAL FULL each, loopback HTTP", machine());
        println!("fsync of 4 KB on this disk now: {:.2} ms (every ack and every gateway ack waits for one)", fsync_ms(dir.path()));
        fan_out(relay.addr, &db, if quick { 3 } else { 9 }).await;
        let seq = Arc::new(AtomicUsize::new(0));
        let total = if quick { 128 } else { 640 };
        for n in [1, 8, 64] {
            senders(relay.addr, &db, n, total, &seq).await;
        }
        relay.stop().await;
    });
    gw_rt.block_on(async {
        for g in gateways {
            g.stop().await;
        }
    });
}

/// What one fsync costs on the benchmark's disk right now: the numbers above scale with it.
fn fsync_ms(dir: &Path) -> f64 {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let t = Instant::now();
    for _ in 0..50 {
        f.write_all(&[0u8; 4096]).unwrap();
        f.sync_all().unwrap();
    }
    let _ = std::fs::remove_file(&path);
    t.elapsed().as_secs_f64() * 1000.0 / 50.0
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cores} cores, {}",
        chrono::Utc::now().format("%Y-%m-%d")
    )
}
