//! The whole chain on the simulator: a Leap notification over real HTTPS → SQLite → plan →
//! dispatch timer → control loop → Modbus registers of the simulated inverter, and back to
//! normal at the end. Also measures boundary → setpoint readable on the device.

use crate::common;
use crate::device_common;

use chrono::{DateTime, Duration, Utc};
use leap_edge::clock::SystemClock;
use leap_edge::config::Config;
use leap_edge::control::ControlCommander;
use leap_edge::daemon::{self, Parts};
use leap_edge::sim::Mode;
use serde_json::json;
use std::sync::Arc;

const M1: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test]
async fn a_dispatch_reaches_the_inverter_registers_and_is_handed_back_at_the_end() {
    let sim = device_common::start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = common::write_cert(dir.path());
    let tail = format!(
        "[site]\ncontrol_period_ms = 500\n\
         [[meters]]\nid = \"{M1}\"\ndevice = \"sim\"\n[devices.sim]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nport = {port}\nreversion_secs = 10\n",
        port = sim.local_addr().port(),
    );
    let config = common::TestConfig {
        tail,
        ..Default::default()
    };
    config.write(dir.path());
    let config = Config::load(&dir.path().join("config.toml")).unwrap();
    assert!(config.check().is_ok());
    let cc = Arc::new(ControlCommander::start_modbus(&config, Arc::new(SystemClock)).unwrap());
    let status = cc.status();
    let parts = Parts {
        commander: cc.clone(),
        clock: Arc::new(SystemClock),
        live: Arc::new(move || status.snapshot()),
    };
    let running = daemon::start(config, parts).await.unwrap();
    let client = common::Client::new(running.addr, cert);

    let start = Utc::now() + Duration::milliseconds(2000);
    let end = start + Duration::milliseconds(4000);
    let body = json!({"integration_test_notification": false, "communication_test": false,
        "meter_dispatches": [{"meter_id": M1, "timeslots": [{
            "meter_event_id": "chain-1", "start_time": ts(start), "end_time": ts(end),
            "cancelled": false, "energy_kw": 10.0, "performance_compensation_cap": "up-to-site-load",
            "priority": 1, "is_voluntary": false, "dispatch_event_types": ["day-ahead"], "programs": ["DRAM"]}]}]});
    let r = client.post(&body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Before the start the inverter stays in its own mode.
    let remote = || sim.point(124, "StorCtl_Mod") == Some(3.0);
    let until_end = (end - Utc::now()).to_std().unwrap();
    let reached = device_common::eventually(until_end, remote).await;
    let seen_at = Utc::now();
    assert!(reached, "the command never reached the inverter");
    assert_eq!(sim.point(124, "OutWRte"), Some(20.0), "10 kW of 50 kW");
    let latency = seen_at - start;
    eprintln!(
        "CHAIN: boundary -> setpoint readable on the device: {} ms",
        latency.num_milliseconds()
    );
    assert!(
        latency >= Duration::zero(),
        "written {latency} before the start"
    );
    assert!(latency < Duration::seconds(2), "{latency}");
    assert!(
        device_common::eventually(std::time::Duration::from_secs(10), || !remote()).await,
        "not released at the end"
    );
    assert!(
        device_common::eventually(std::time::Duration::from_secs(10), || sim.snapshot().mode
            == Mode::Normal)
        .await
    );
    assert_eq!(
        sim.snapshot().reversions,
        0,
        "the device reverted by itself: the command was not refreshed"
    );
    running.stop().await;
    cc.shutdown(std::time::Duration::from_secs(3)).await;
}

/// Act on time with two meters: one device that never answers holds its own call for the
/// commander's 2 s apply timeout, but not the other meter's boundary 0.6 s later. Before,
/// the dispatch loop waited for every call of a turn, so the second meter started ~1.4 s
/// late. The silent device's call is still audited, as an error.
#[tokio::test]
async fn a_silent_device_does_not_delay_another_meters_boundary() {
    const M2: &str = "5b0c1e47-22c4-4b1b-9d0e-6f3b7c1a9e11";
    let (silent, sim) = (
        device_common::start_sim().await,
        device_common::start_sim().await,
    );
    let dir = tempfile::tempdir().unwrap();
    let cert = common::write_cert(dir.path());
    let device = |name: &str, port: u16| {
        format!(
            "[devices.{name}]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nport = {port}\nreversion_secs = 10\n"
        )
    };
    let tail = format!(
        "[site]\ncontrol_period_ms = 500\n\
         [[meters]]\nid = \"{M1}\"\ndevice = \"silent\"\n\
         [[meters]]\nid = \"{M2}\"\ndevice = \"sim\"\n{}{}",
        device("silent", silent.local_addr().port()),
        device("sim", sim.local_addr().port()),
    );
    let (cc, running, client) = chain(&dir, cert, tail).await;
    // Both devices bound and idle before the device goes silent.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    silent.set_fault(leap_edge::sim::Fault::Silent);

    let first = Utc::now() + Duration::milliseconds(2000);
    let second = first + Duration::milliseconds(600);
    let slot = |meter: &str, id: &str, start: DateTime<Utc>| {
        json!({"meter_id": meter, "timeslots": [{
            "meter_event_id": id, "start_time": ts(start), "end_time": ts(start + Duration::seconds(6)),
            "cancelled": false, "energy_kw": 10.0, "performance_compensation_cap": "up-to-site-load",
            "priority": 1, "is_voluntary": false, "dispatch_event_types": ["day-ahead"], "programs": ["DRAM"]}]})
    };
    let body = json!({"integration_test_notification": false, "communication_test": false,
        "meter_dispatches": [slot(M1, "silent-1", first), slot(M2, "on-time-1", second)]});
    let r = client.post(&body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let remote = || sim.point(124, "StorCtl_Mod") == Some(3.0);
    let reached = device_common::eventually(
        (second + Duration::seconds(4) - Utc::now())
            .to_std()
            .unwrap(),
        remote,
    )
    .await;
    let late = Utc::now() - second;
    assert!(reached, "the second meter never got its command");
    eprintln!(
        "TWO METERS: second meter's setpoint {} ms after its start",
        late.num_milliseconds()
    );
    assert!(
        late < Duration::milliseconds(700),
        "the second meter waited for the silent device: {late}"
    );
    let db = rusqlite::Connection::open(dir.path().join("leap-edge.db")).unwrap();
    let error = || {
        db.query_row(
            "SELECT error FROM audit WHERE event_id = 'silent-1' AND action = 'apply'",
            [],
            |r| r.get::<_, Option<String>>(0),
        )
        .ok()
        .flatten()
    };
    assert!(
        device_common::eventually(std::time::Duration::from_secs(5), || error().is_some()).await,
        "the silent device's apply was not audited as an error"
    );
    running.stop().await;
    cc.shutdown(std::time::Duration::from_secs(3)).await;
}

/// Revisions of a running event arriving while its device is slow to answer: the device is
/// sent the first and then the newest, not each in turn 2 s apart (the newest would then
/// reach it last, ~8 s late). Before the loop went on without waiting for devices, one
/// turn after the burst applied only the newest; this keeps that.
#[tokio::test]
async fn revisions_queued_behind_a_slow_device_send_only_the_newest() {
    let silent = device_common::start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = common::write_cert(dir.path());
    let tail = format!(
        "[site]\ncontrol_period_ms = 500\n\
         [[meters]]\nid = \"{M1}\"\ndevice = \"silent\"\n\
         [devices.silent]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nport = {}\nreversion_secs = 10\n",
        silent.local_addr().port()
    );
    let (cc, running, client) = chain(&dir, cert, tail).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    silent.set_fault(leap_edge::sim::Fault::Silent);
    let start = Utc::now() + Duration::milliseconds(1000);
    let body = |kw: f64| {
        json!({"integration_test_notification": false, "communication_test": false,
        "meter_dispatches": [{"meter_id": M1, "timeslots": [{
            "meter_event_id": "burst-1", "start_time": ts(start), "end_time": ts(start + Duration::seconds(60)),
            "cancelled": false, "energy_kw": kw, "performance_compensation_cap": "up-to-site-load",
            "priority": 1, "is_voluntary": false, "dispatch_event_types": ["day-ahead"], "programs": ["DRAM"]}]}]})
        .to_string()
    };
    assert_eq!(client.post(&body(5.0)).await.status, 200);
    tokio::time::sleep(
        (start - Utc::now()).to_std().unwrap() + std::time::Duration::from_millis(500),
    )
    .await;
    for kw in [6.0, 7.0, 8.0, 9.0] {
        assert_eq!(client.post(&body(kw)).await.status, 200);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Every queued call would be over by now (five of 2 s each from the start).
    tokio::time::sleep(
        (start + Duration::seconds(11) - Utc::now())
            .to_std()
            .unwrap(),
    )
    .await;
    let db = rusqlite::Connection::open(dir.path().join("leap-edge.db")).unwrap();
    let targets: Vec<String> = db
        .prepare(
            "SELECT target FROM audit WHERE event_id = 'burst-1' AND action = 'apply' ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        targets.len(),
        2,
        "each revision was sent in turn: {targets:?}"
    );
    assert!(
        targets[1].contains('9'),
        "the newest was not the one sent: {targets:?}"
    );
    running.stop().await;
    cc.shutdown(std::time::Duration::from_secs(3)).await;
}

/// The daemon with the real control loops on `tail` (its `[site]`, meters and devices),
/// and a client for its webhook.
async fn chain(
    dir: &tempfile::TempDir,
    cert: rustls::pki_types::CertificateDer<'static>,
    tail: String,
) -> (Arc<ControlCommander>, daemon::Running, common::Client) {
    common::TestConfig {
        tail,
        ..Default::default()
    }
    .write(dir.path());
    let config = Config::load(&dir.path().join("config.toml")).unwrap();
    let cc = Arc::new(ControlCommander::start_modbus(&config, Arc::new(SystemClock)).unwrap());
    let status = cc.status();
    let parts = Parts {
        commander: cc.clone(),
        clock: Arc::new(SystemClock),
        live: Arc::new(move || status.snapshot()),
    };
    let running = daemon::start(config, parts).await.unwrap();
    let client = common::Client::new(running.addr, cert);
    (cc, running, client)
}
