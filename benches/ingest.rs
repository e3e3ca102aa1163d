//! Ingest benchmark: notifications per second and ack latency (p50/p99/max) with FULL
//! durability, over the real HTTP server and a real SQLite file (issue 2, issue 6).
//! Run: `cargo bench --bench ingest` (add `-- quick` for a shorter run).
//!
//! Scenarios: 1, 8 and 64 concurrent senders; one keep-alive connection per sender or a new
//! connection per request; 2 KB bodies (Leap's sample shape) and 500 KB bodies (a group
//! notification naming 1,000 meters). Every request carries new event ids, so every ack
//! covers a real insert and an fsync.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use leap_edge::clock::SystemClock;
use leap_edge::daemon::{self, Parts};
use leap_edge::dispatch::RecordingCommander;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "bench-key-0123456789-abcdefghijklmn";

fn body(n: usize, big: bool) -> String {
    let start = chrono::Utc::now() + chrono::Duration::days(1);
    let ts = |k: usize| {
        serde_json::json!({
            "market_group_event_id": format!("bench-{n}-{k}"),
            "start_time": (start + chrono::Duration::hours(k as i64)).to_rfc3339(),
            "end_time": (start + chrono::Duration::hours(k as i64 + 1)).to_rfc3339(),
            "cancelled": false, "energy_kw": 10.0, "performance_compensation_cap": "up-to-site-load",
            "priority": 1, "is_voluntary": false, "dispatch_event_types": ["day-ahead"], "programs": ["DRAM"],
        })
    };
    let meters: Vec<String> = (0..if big { 1000 } else { 2 })
        .map(|i| format!("{i:08x}-e392-4f00-b0cf-32e716204f78"))
        .collect();
    let refs: Vec<String> = if big {
        (0..1000)
            .map(|i| format!("partner-reference-{i:06}-{:0>400}", n))
            .collect()
    } else {
        vec![]
    };
    let slots: Vec<_> = (0..if big { 2 } else { 6 }).map(ts).collect();
    serde_json::json!({"integration_test_notification": false, "communication_test": false,
        "group_dispatches": [{"market_group_id": "11aa7aae-24e5-455f-91e9-e0f5f145f2ae", "meter_ids": meters,
        "partner_references": refs, "timeslots": slots}]})
    .to_string()
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

async fn post(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    body: String,
) -> Duration {
    let req = hyper::Request::post("/leap/dispatch")
        .header("host", "localhost")
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let t = Instant::now();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.unwrap();
    t.elapsed()
}

struct Row {
    name: String,
    n: usize,
    rps: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

async fn scenario(
    addr: SocketAddr,
    senders: usize,
    keepalive: bool,
    big: bool,
    total: usize,
    seq: Arc<AtomicUsize>,
) -> Row {
    let per = total.div_ceil(senders);
    // Bodies are built before timing starts so only the server's work is measured.
    let bodies: Vec<Vec<String>> = (0..senders)
        .map(|_| {
            (0..per)
                .map(|_| body(seq.fetch_add(1, Ordering::Relaxed), big))
                .collect()
        })
        .collect();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for mine in bodies {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(mine.len());
            let mut conn = if keepalive {
                Some(connect(addr).await)
            } else {
                None
            };
            for b in mine {
                let d = match conn.as_mut() {
                    Some(c) => post(c, b).await,
                    None => {
                        let t = Instant::now();
                        let mut c = connect(addr).await;
                        post(&mut c, b).await;
                        t.elapsed()
                    }
                };
                lat.push(d);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = t0.elapsed().as_secs_f64();
    all.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: f64| ms(all[((all.len() as f64 * p) as usize).min(all.len() - 1)]);
    Row {
        name: format!(
            "{} sender(s), {}, {}",
            senders,
            if keepalive { "keep-alive" } else { "new conn" },
            if big { "500 KB" } else { "2 KB" }
        ),
        n: all.len(),
        rps: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        max: ms(*all.last().unwrap()),
    }
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

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nmax_connections = 256\n[auth]\nkeys = [\"{KEY}\"]\n[storage]\npath = \"bench.db\"\n[admin]\nsocket = \"admin.sock\"\n"
    );
    std::fs::write(dir.path().join("config.toml"), cfg).unwrap();
    let config = leap_edge::config::Config::load(&dir.path().join("config.toml")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let parts = Parts {
            commander: Arc::new(RecordingCommander::default()),
            clock: Arc::new(SystemClock),
            live: Arc::new(Vec::new),
        };
        let running = daemon::start(config, parts).await.unwrap();
        let addr = running.addr;
        let seq = Arc::new(AtomicUsize::new(0));
        let small = if quick { 200 } else { 1000 };
        let large = if quick { 20 } else { 100 };
        println!(
            "ingest benchmark — {} — SQLite WAL, synchronous=FULL, plain HTTP on loopback",
            machine()
        );
        println!(
            "{:<40} {:>6} {:>9} {:>9} {:>9} {:>9}",
            "scenario", "acks", "acks/s", "p50 ms", "p99 ms", "max ms"
        );
        for (senders, keepalive, big, n) in [
            (1, true, false, small),
            (8, true, false, small),
            (64, true, false, small),
            (1, false, false, small),
            (8, false, false, small),
            (64, false, false, small),
            (1, true, true, large),
            (8, true, true, large),
        ] {
            let r = scenario(addr, senders, keepalive, big, n, seq.clone()).await;
            println!(
                "{:<40} {:>6} {:>9.0} {:>9.2} {:>9.2} {:>9.2}",
                r.name, r.n, r.rps, r.p50, r.p99, r.max
            );
        }
        running.stop().await;
    });
}
