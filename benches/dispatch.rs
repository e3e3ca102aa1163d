//! Boundary lateness of the dispatch loop: 200 back-to-back timeslots of 100 ms, posted over
//! real HTTP to the daemon; for each boundary, the delay from the timeslot's start_time to
//! the moment the commander is handed the command (p50/p99/max). The device side (boundary →
//! setpoint readable on the simulator) is measured by `cargo bench --bench control`.
//! Run: `cargo bench --bench dispatch`.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use leap_edge::clock::SystemClock;
use leap_edge::daemon::{self, Parts};
use leap_edge::dispatch::{CommandError, Commander};
use leap_edge::model::Command;
use leap_edge::seam::BoxFuture;
use std::sync::{Arc, Mutex};

const KEY: &str = "bench-key-0123456789-abcdefghijklmn";
const METER: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";
const BOUNDARIES: usize = 200;
const SLOT_MS: i64 = 100;

#[derive(Default)]
struct Stamps(Mutex<Vec<(DateTime<Utc>, String)>>);

struct Stamping(Arc<Stamps>);

impl Commander for Stamping {
    fn apply<'a>(
        &'a self,
        _meter: &'a str,
        command: &'a Command,
    ) -> BoxFuture<'a, Result<(), CommandError>> {
        self.0
            .0
            .lock()
            .unwrap()
            .push((Utc::now(), command.event_id.clone()));
        Box::pin(async { Ok(()) })
    }
    fn release<'a>(&'a self, _meter: &'a str) -> BoxFuture<'a, Result<(), CommandError>> {
        Box::pin(async { Ok(()) })
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let devices = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("devices");
    let cfg = format!(
        "devices_dir = {devices:?}\n[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[auth]\nkeys = [\"{KEY}\"]\n[storage]\npath = \"bench.db\"\n[admin]\nsocket = \"admin.sock\"\n\
         [[meters]]\nid = \"{METER}\"\ndevice = \"b\"\n[devices.b]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\n"
    );
    std::fs::write(dir.path().join("config.toml"), cfg).unwrap();
    let config = leap_edge::config::Config::load(&dir.path().join("config.toml")).unwrap();
    let stamps = Arc::new(Stamps::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let parts = Parts { commander: Arc::new(Stamping(stamps.clone())), clock: Arc::new(SystemClock), live: Arc::new(Vec::new) };
        let running = daemon::start(config, parts).await.unwrap();
        let t0 = Utc::now() + chrono::Duration::seconds(2);
        let mut starts = std::collections::HashMap::new();
        let slots: Vec<_> = (0..BOUNDARIES)
            .map(|i| {
                let s = t0 + chrono::Duration::milliseconds(SLOT_MS * i as i64);
                let id = format!("b{i:04}");
                starts.insert(id.clone(), s);
                serde_json::json!({"meter_event_id": id, "start_time": s.to_rfc3339(),
                    "end_time": (s + chrono::Duration::milliseconds(SLOT_MS)).to_rfc3339(), "cancelled": false,
                    "energy_kw": 1.0 + i as f64, "performance_compensation_cap": "up-to-site-load", "priority": 1,
                    "is_voluntary": false, "dispatch_event_types": ["5m"], "programs": ["DRAM"]})
            })
            .collect();
        let body = serde_json::json!({"integration_test_notification": false, "communication_test": false,
            "meter_dispatches": [{"meter_id": METER, "timeslots": slots}]}).to_string();
        let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post("/leap/dispatch").header("host", "x").header("x-api-key", KEY)
            .header("content-type", "application/json").body(Full::new(Bytes::from(body))).unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await;
        let end = t0 + chrono::Duration::milliseconds(SLOT_MS * BOUNDARIES as i64 + 500);
        tokio::time::sleep((end - Utc::now()).to_std().unwrap_or_default()).await;
        running.stop().await;
        let got = stamps.0.lock().unwrap().clone();
        let mut late: Vec<f64> = got
            .iter()
            .filter_map(|(at, id)| starts.get(id).map(|s| (*at - *s).num_microseconds().unwrap_or(0) as f64 / 1000.0))
            .collect();
        late.sort_by(f64::total_cmp);
        let pct = |p: f64| late[((late.len() as f64 * p) as usize).min(late.len() - 1)];
        println!("dispatch boundary lateness — {} boundaries of {SLOT_MS} ms, {} applied, {}", BOUNDARIES, late.len(), Utc::now().format("%Y-%m-%d"));
        println!("{:>9} {:>9} {:>9} {:>9}", "min ms", "p50 ms", "p99 ms", "max ms");
        println!("{:>9.2} {:>9.2} {:>9.2} {:>9.2}", late[0], pct(0.5), pct(0.99), late[late.len() - 1]);
        assert!(late.iter().all(|l| *l >= 0.0), "a command was applied before its boundary");
    });
}
