//! Footprint of the real daemon (issue 6): the release `leap-edge run` process with TLS,
//! one configured meter whose battery is the SunSpec simulator (run by this bench, outside
//! the measured process, so the daemon's telemetry polling and control loop are counted)
//! and a fresh database. Measures, from /proc:
//! - time from spawn to ready (the "listening for Leap notifications" log line), median of 5;
//! - idle RSS (VmRSS after settling);
//! - CPU while idle (utime + stime over 10 s, from /proc/PID/stat);
//! - RSS under ingest load (8 keep-alive HTTPS senders, 2 KB notifications, 10 s: peak of
//!   VmRSS samples and VmHWM at the end), with the acks/s reached.
//!
//! Run: `cargo bench --bench footprint` (add `-- quick` for 3 s phases).

#[path = "../tests/it/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const METER: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive_or_panic(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("leap-edge exited ({status}):\n{log}");
        }
    }

    /// VmRSS and VmHWM in KiB.
    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// utime + stime in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Config, TLS files and the meter (its device at `device`) in `dir`; returns the config
/// path and the certificate.
fn prepare(
    dir: &Path,
    device: std::net::SocketAddr,
) -> (PathBuf, rustls::pki_types::CertificateDer<'static>) {
    let meter = format!(
        "[[meters]]\nid = \"{METER}\"\ndevice = \"bess\"\n[devices.bess]\nprofile = \"sunspec\"\n\
         host = \"{}\"\nport = {}\n",
        device.ip(),
        device.port()
    );
    common::inproc_config(dir, "leap-edge.db", &[], &meter)
}

/// The simulated battery, on its own runtime in this process.
fn simulator(rt: &tokio::runtime::Runtime) -> leap_edge::sim::SimHandle {
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cfg = leap_edge::config::SimConfig {
            load: "constant:30".into(),
            ..Default::default()
        };
        leap_edge::sim::spawn(&cfg, l).unwrap()
    })
}

/// Spawn and wait for the listening line; returns the process, its address and the time
/// from spawn to ready.
fn spawn(config: &Path, dir: &Path) -> (Proc, std::net::SocketAddr, Duration) {
    let log = dir.join(format!("daemon-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let err = std::fs::File::create(&log).unwrap();
    let t0 = Instant::now();
    let child = Command::new(common::bin())
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("LEAP_EDGE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let p = Proc { child, log };
    loop {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("listening for Leap notifications"))
        {
            let ready = t0.elapsed();
            let addr = line
                .split("addr=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .unwrap()
                .parse()
                .unwrap();
            return (p, addr, ready);
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "not ready:\n{text}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn note(n: usize) -> String {
    let start = chrono::Utc::now() + chrono::Duration::days(1);
    let slots = (0..4)
        .map(|k| {
            common::timeslot_json(
                METER,
                &format!("fp-{n}-{k}"),
                start + chrono::Duration::hours(k),
                3600,
                Some(10.0),
                serde_json::json!({}),
            )
        })
        .collect();
    common::meter_notification(METER, slots)
}

/// 8 keep-alive senders for `secs`; samples RSS every 100 ms. Returns (peak VmRSS KiB,
/// acks/s).
fn load(p: &Proc, client: common::Client, secs: u64) -> (u64, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let seq = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, stop, acks, seq) =
                (client.clone(), stop.clone(), acks.clone(), seq.clone());
            rt.spawn(async move {
                let mut send = client.connect().await;
                let headers = [
                    ("x-api-key", common::KEY),
                    ("content-type", "application/json"),
                ];
                while !stop.load(Ordering::Relaxed) {
                    let body = note(seq.fetch_add(1, Ordering::Relaxed)).into_bytes();
                    let r = common::send_on(&mut send, "POST", common::PATH, &headers, body).await;
                    assert_eq!(r.status, 200, "{}", r.text);
                    acks.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut peak = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        peak = peak.max(p.rss_kib().0);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let rate = acks.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    (peak.max(p.rss_kib().1), rate)
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
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, Linux {}, {}",
        kernel.trim(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// An idle daemon: RSS 2 s after ready, RSS after `phase` more seconds, and the CPU
/// ticks spent in them.
fn idle(p: &Proc, phase: u64) -> (u64, u64, u64) {
    std::thread::sleep(Duration::from_secs(2));
    let (rss, _) = p.rss_kib();
    let c0 = p.cpu_ticks();
    std::thread::sleep(Duration::from_secs(phase));
    let ticks = p.cpu_ticks() - c0;
    let (rss_after, _) = p.rss_kib();
    (rss, rss_after, ticks)
}

/// Start to ready: the first start (which creates the database) and the median of five.
fn start_times(config: &Path, dir: &Path) -> (Duration, Duration) {
    let mut starts = Vec::new();
    for _ in 0..5 {
        let (p, _, ready) = spawn(config, dir);
        starts.push(ready);
        drop(p);
    }
    let first = starts[0];
    starts.sort();
    (first, starts[starts.len() / 2])
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let phase = if quick { 3 } else { 10 };
    let dir = tempfile::tempdir().unwrap();
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sim = simulator(&sim_rt);
    let (config, cert) = prepare(dir.path(), sim.local_addr());

    // Start to ready: a fresh database the first time (migrations), then restarts.
    let (first, median) = start_times(&config, dir.path());

    let (mut p, addr, _) = spawn(&config, dir.path());
    let tck = clk_tck();
    let (idle_rss, idle_rss_after, idle_ticks) = idle(&p, phase);
    let idle_cpu = idle_ticks as f64 / tck / phase as f64 * 100.0;

    p.alive_or_panic();
    let client = common::Client::new(addr, cert);
    let (load_rss, rate) = load(&p, client, phase);
    std::thread::sleep(Duration::from_secs(2));
    let (after_rss, hwm) = p.rss_kib();

    println!(
        "footprint — release leap-edge run, TLS, 1 meter on the SunSpec simulator, SQLite WAL FULL — {}",
        machine()
    );
    println!("{:<44} {:>16}", "measure", "value");
    let row = |k: &str, v: String| println!("{k:<44} {v:>16}");
    row(
        "start to ready, first start (new database)",
        format!("{:.0} ms", first.as_secs_f64() * 1e3),
    );
    row(
        "start to ready, median of 5",
        format!("{:.0} ms", median.as_secs_f64() * 1e3),
    );
    row("idle RSS (2 s after ready)", mib(idle_rss));
    row(
        &format!("idle RSS (after {phase} s idle)"),
        mib(idle_rss_after),
    );
    row(
        &format!("CPU while idle ({phase} s; {idle_ticks} ticks of 1/{tck} s)"),
        format!("{idle_cpu:.2} %"),
    );
    row(
        &format!("RSS under load, peak (8 senders, {phase} s)"),
        mib(load_rss),
    );
    row("ingest rate during that load", format!("{rate:.0} acks/s"));
    row(
        "RSS 2 s after load / VmHWM",
        format!("{} / {}", mib(after_rss), mib(hwm)),
    );
    row(
        "Modbus requests answered by the simulator",
        format!("{}", sim.snapshot().requests),
    );
    drop(p);
    drop(sim);
}
