//! Issue 9 on the sites partners have, end to end: a Leap notification over real HTTPS →
//! SQLite → plan → dispatch → control loop → Modbus TCP → the simulator's physics, with
//! assertions on what the simulated site meter shows.
//! - a PV site whose battery charges from the surplus: an `up-to-site-load` event must not
//!   turn that surplus into export (SPEC §2.13 surplus is not export);
//! - a site meter that stops answering, times out or sticks mid-event: the battery is
//!   handed back to its own logic within a control period (SPEC §2.13 blind is not safe).

use crate::common;
use crate::device_common;

use chrono::{DateTime, Duration, Utc};
use leap_edge::clock::SystemClock;
use leap_edge::config::{Config, PvCoupling, SimConfig};
use leap_edge::control::ControlCommander;
use leap_edge::daemon::{self, Parts, Running};
use leap_edge::seam::StatusSource;
use leap_edge::sim::{MeterFault, Mode, SimHandle, SimOptions};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

const M1: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";
const M2: &str = "abae2779-e392-4f00-b0cf-32e716204f78";
const FOREIGN: &str = "ffff2779-e392-4f00-b0cf-32e716204f78";
const PERIOD_MS: i64 = 500;
const TOLERANCE_KW: f64 = 0.05;

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

struct Site {
    dir: tempfile::TempDir,
    sim: SimHandle,
    /// A second local meter's battery (M2), when asked for.
    sim2: Option<SimHandle>,
    cc: Arc<ControlCommander>,
    running: Option<Running>,
    client: common::Client,
    audit: tokio::task::JoinHandle<()>,
}

async fn site(sim_cfg: SimConfig, site_extra: &str) -> Site {
    site_with(sim_cfg, site_extra, None).await
}

async fn site_with(sim_cfg: SimConfig, site_extra: &str, second: Option<SimConfig>) -> Site {
    site_timed(sim_cfg, site_extra, second, (PERIOD_MS, 200)).await
}

/// `(control_period_ms, timeout_ms)` as given.
async fn site_timed(
    sim_cfg: SimConfig,
    site_extra: &str,
    second: Option<SimConfig>,
    (period_ms, timeout_ms): (i64, u64),
) -> Site {
    let sim = device_common::start_sim_with(sim_cfg, SimOptions::default()).await;
    let sim2 = match second {
        Some(c) => Some(device_common::start_sim_with(c, SimOptions::default()).await),
        None => None,
    };
    let dir = tempfile::tempdir().unwrap();
    let cert = common::write_cert(dir.path());
    let mut tail = format!(
        "[site]\ncontrol_period_ms = {period_ms}\n{site_extra}\n\
         [[meters]]\nid = \"{M1}\"\ndevice = \"sim\"\n[devices.sim]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nport = {port}\nreversion_secs = 30\ntimeout_ms = {timeout_ms}\n",
        port = sim.local_addr().port(),
    );
    if let Some(s2) = &sim2 {
        tail.push_str(&format!(
            "[[meters]]\nid = \"{M2}\"\ndevice = \"sim2\"\n[devices.sim2]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nport = {}\nreversion_secs = 30\ntimeout_ms = 200\n",
            s2.local_addr().port()
        ));
    }
    let config = common::TestConfig {
        tail,
        ..Default::default()
    };
    config.write(dir.path());
    let config = Config::load(&dir.path().join("config.toml")).unwrap();
    config.check().unwrap();
    let cc = Arc::new(ControlCommander::start_modbus(&config, Arc::new(SystemClock)).unwrap());
    let status = cc.status();
    let parts = Parts {
        commander: cc.clone(),
        clock: Arc::new(SystemClock),
        live: Arc::new(move || status.snapshot()),
    };
    let running = daemon::start(config, parts).await.unwrap();
    // As `leap-edge run` wires it: control events into the audit log.
    let stop = tokio_util::sync::CancellationToken::new();
    let audit = daemon::control_audit::run(running.app.store.clone(), cc.status(), stop);
    let audit = tokio::spawn(audit);
    let client = common::Client::new(running.addr, cert);
    Site {
        dir,
        sim,
        sim2,
        cc,
        running: Some(running),
        client,
        audit,
    }
}

impl Site {
    /// An `up-to-site-load` award of `kw` from `start` for `secs`.
    async fn award(&self, id: &str, kw: f64, start: DateTime<Utc>, secs: i64) {
        let end = start + Duration::seconds(secs);
        let body = json!({"integration_test_notification": false, "communication_test": false,
            "meter_dispatches": [{"meter_id": M1, "timeslots": [{
                "meter_event_id": id, "start_time": ts(start), "end_time": ts(end),
                "cancelled": false, "energy_kw": kw, "performance_compensation_cap": "up-to-site-load",
                "priority": 1, "is_voluntary": false, "dispatch_event_types": ["day-ahead"],
                "programs": ["DRAM"]}]}]});
        let r = self.client.post(&body.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }

    /// `safety` rows of the audit log (their detail), as `leap-edge history` shows them.
    async fn safety_audit(&self, what: &str) -> Vec<String> {
        let db = self.dir.path().join("leap-edge.db");
        let mut found = Vec::new();
        for _ in 0..40 {
            let c = rusqlite::Connection::open(&db).unwrap();
            let mut q = c
                .prepare("SELECT detail FROM audit WHERE action = 'safety' ORDER BY id")
                .unwrap();
            found = q
                .query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            if found.iter().any(|d| d.starts_with(what)) {
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(100)).await;
        }
        found
    }

    async fn stop(mut self) {
        self.audit.abort();
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.cc.shutdown(StdDuration::from_secs(3)).await;
    }
}

/// Seconds the simulated meter showed export (grid < 0), sampled every 10 ms between
/// `from` and `to`, and the lowest grid power seen.
async fn export_between(sim: &SimHandle, from: DateTime<Utc>, to: DateTime<Utc>) -> (f64, f64) {
    while Utc::now() < from {
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    let (mut secs, mut min) = (0.0, f64::MAX);
    let mut last = Instant::now();
    while Utc::now() < to {
        let g = sim.snapshot().grid_kw;
        let now = Instant::now();
        if g < -TOLERANCE_KW {
            secs += (now - last).as_secs_f64();
        }
        min = min.min(g);
        last = now;
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    (secs, min)
}

fn pv_site(soc_pct: f64) -> SimConfig {
    SimConfig {
        load: "constant:20".into(),
        pv: "constant:30".into(),
        initial_soc_pct: soc_pct,
        ..device_common::sim_cfg()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solar_surplus_is_absorbed_not_exported_during_an_up_to_site_load_event() {
    let s = site(pv_site(50.0), "").await;
    // Self-consumption: the battery charges the 10 kW surplus, the grid is at 0.
    assert!(
        device_common::eventually(StdDuration::from_secs(10), || {
            let x = s.sim.snapshot();
            (x.battery_kw + 10.0).abs() < 0.05 && x.grid_kw.abs() < 0.05
        })
        .await,
        "{:?}",
        s.sim.snapshot()
    );
    let start = Utc::now() + Duration::milliseconds(1500);
    s.award("solar-1", 10.0, start, 6).await;
    let settled = start + Duration::milliseconds(PERIOD_MS);
    let end = start + Duration::seconds(6);
    let (export_secs, min_grid) =
        export_between(&s.sim, settled, end - Duration::milliseconds(200)).await;
    eprintln!(
        "SOLAR: export after the first control period: {export_secs:.2} s, lowest grid {min_grid:.2} kW"
    );
    assert_eq!(
        export_secs, 0.0,
        "the site exported (lowest grid {min_grid} kW)"
    );
    let st = s.cc.status().meter(M1).unwrap();
    let d = st.last_decision.expect("a decision");
    assert!(
        d.flags.absorbing_surplus && !d.flags.export_unavoidable,
        "{d:?}"
    );
    assert_eq!(
        s.sim.snapshot().mode,
        Mode::Remote124,
        "not under remote control"
    );
    // Back to normal at the end: self-consumption takes the surplus again.
    assert!(
        device_common::eventually(StdDuration::from_secs(10), || s.sim.snapshot().mode
            == Mode::Normal)
        .await
    );
    s.stop().await;
}

/// A hybrid inverter with 10 kW of PV on its DC bus: its output reading (model 103 W) is
/// battery plus PV, while model 124 sets the battery alone. Taking that reading for the
/// battery, the site load looks 10 kW higher than what the battery must cover, and an
/// up-to-site-load event would export 9.5 kW for as long as it runs. The reading standing
/// above the setpoint while the site exports gives it away: handed back, and not taken
/// again in this event (it would export again at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dc_coupled_pv_on_a_hybrid_inverter_is_handed_back_not_exported() {
    let cfg = SimConfig {
        load: "constant:30".into(),
        pv: "constant:10".into(),
        pv_coupling: PvCoupling::Dc,
        ..device_common::sim_cfg()
    };
    let s = site(cfg, "").await;
    let start = Utc::now() + Duration::milliseconds(1000);
    s.award("hybrid-1", 40.0, start, 14).await;
    // 3 readings over 5 s, from the first reading after the first write.
    let found = start + Duration::milliseconds(5000 + 3 * PERIOD_MS);
    let end = start + Duration::seconds(14);
    let (first_secs, _) = export_between(&s.sim, start, found).await;
    // Leap revises the same event (a new kW): still not taken again (it was, for another
    // ~5 s of export, while the finding lasted only for one command).
    s.award("hybrid-1", 35.0, start, 14).await;
    let (export_secs, min_grid) =
        export_between(&s.sim, found, end - Duration::milliseconds(200)).await;
    let x = s.sim.snapshot();
    eprintln!(
        "HYBRID: exported {first_secs:.2} s before the hand-back, {export_secs:.2} s after (lowest grid {min_grid:.2} kW); battery {:.2} kW, grid {:.2} kW, {:?}",
        x.battery_kw, x.grid_kw, x.mode
    );
    assert_eq!(export_secs, 0.0, "exported (lowest grid {min_grid} kW)");
    assert_eq!(x.mode, Mode::Normal, "not handed back for good: {x:?}");
    let blind = s.cc.status().meter(M1).unwrap().blind.expect("blind");
    assert!(blind.contains("hybrid inverter's DC bus"), "{blind}");
    let audit = s.safety_audit("blind").await;
    assert!(audit.iter().any(|d| d.contains("setpoint")), "{audit:?}");
    s.stop().await;
}

/// A slow battery (3 kW/s) without any PV follows a load drop from 20.5 to 5.5 kW. While
/// it ramps down it reads above its setpoint and the site exports: that is the ramp, not
/// a battery that does not follow, and the event goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_battery_ramping_down_is_not_handed_back() {
    let cfg = SimConfig {
        load: "constant:20.5".into(),
        ramp_kw_per_s: 3.0,
        ..device_common::sim_cfg()
    };
    let s = site(cfg, "").await;
    let start = Utc::now() + Duration::milliseconds(500);
    s.award("slow-1", 40.0, start, 20).await;
    assert!(
        device_common::eventually(StdDuration::from_secs(10), || {
            let x = s.sim.snapshot();
            x.mode == Mode::Remote124 && (x.battery_kw - 20.0).abs() < 0.05
        })
        .await,
        "{:?}",
        s.sim.snapshot()
    );
    s.sim.set_load(Some(5.5));
    let mut lowest = f64::MAX;
    let until = Instant::now() + StdDuration::from_secs(10);
    while Instant::now() < until {
        let x = s.sim.snapshot();
        lowest = lowest.min(x.battery_kw);
        assert_eq!(x.mode, Mode::Remote124, "handed back: {x:?}");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    let x = s.sim.snapshot();
    eprintln!(
        "SLOW RAMP: lowest battery {lowest:.2} kW; now battery {:.2} kW, grid {:.2} kW",
        x.battery_kw, x.grid_kw
    );
    assert!(lowest > -0.05, "charged from the grid: {lowest} kW");
    assert!((x.battery_kw - 5.0).abs() < 0.1, "{x:?}");
    assert!(s.cc.status().meter(M1).unwrap().blind.is_none());
    s.stop().await;
}

/// A battery that ramps 3 kW/s in self-consumption (no step at the event's start), under a
/// load that steps up and down: each step shows in the grid first and the battery catches
/// up a period later. The sign check must read that as the right way round, not hand the
/// battery back: judged against a reading from before the load step, the catch-up looked
/// like grid and battery moving together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_steps_behind_a_ramping_battery_are_not_a_reversed_meter() {
    let cfg = SimConfig {
        load: "steps:12@0,24@6,12@12,26@18".into(),
        ramp_kw_per_s: 3.0,
        ..device_common::sim_cfg()
    };
    let s = site_timed(cfg, "", None, (1000, 200)).await;
    let start = Utc::now() + Duration::milliseconds(500);
    s.award("steps-1", 40.0, start, 24).await;
    let until = Instant::now() + StdDuration::from_secs(23);
    let mut worst = None;
    while Instant::now() < until {
        if let Some(b) = s.cc.status().meter(M1).and_then(|m| m.blind) {
            worst = Some(b);
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    assert_eq!(worst, None, "handed back while following the load");
    assert_eq!(
        s.sim.snapshot().mode,
        Mode::Remote124,
        "the award was followed"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_battery_cannot_absorb_the_surplus_and_says_so() {
    let s = site(pv_site(100.0), "").await;
    let start = Utc::now() + Duration::milliseconds(1000);
    s.award("solar-full", 10.0, start, 30).await;
    let status = s.cc.status();
    assert!(
        device_common::eventually(StdDuration::from_secs(10), || status
            .meter(M1)
            .is_some_and(|m| m.export_unavoidable()))
        .await,
        "{:?}",
        status.meter(M1)
    );
    let mut metrics = String::new();
    status.render_metrics(&mut metrics);
    assert!(
        metrics.contains(&format!(
            "leap_edge_control_export_unavoidable{{meter_id=\"{M1}\",device=\"sim\"}} 1"
        )),
        "{metrics}"
    );
    let audit = s.safety_audit("export-unavoidable").await;
    assert!(
        audit.iter().any(|d| d.starts_with("export-unavoidable")),
        "{audit:?}"
    );
    s.stop().await;
}

/// 30 kW load, discharging 10 kW; at the fault the load falls to 5 kW. Returns the export
/// seconds counted from two control periods after the fault.
async fn meter_fault_mid_event(fault: MeterFault) -> f64 {
    let s = site(device_common::sim_cfg(), "service_kw = 100").await;
    let start = Utc::now() + Duration::milliseconds(1000);
    s.award("blind-1", 10.0, start, 60).await;
    assert!(
        device_common::eventually(StdDuration::from_secs(10), || {
            let x = s.sim.snapshot();
            x.mode == Mode::Remote124 && (x.battery_kw - 10.0).abs() < 0.05
        })
        .await,
        "{:?}",
        s.sim.snapshot()
    );
    s.sim.set_meter_fault(Some(fault));
    s.sim.set_load(Some(5.0));
    let at = Utc::now();
    let from = at + Duration::milliseconds(2 * PERIOD_MS);
    let (export_secs, min_grid) = export_between(&s.sim, from, at + Duration::seconds(5)).await;
    eprintln!(
        "BLIND {fault:?}: export after two control periods: {export_secs:.2} s, lowest grid {min_grid:.2} kW"
    );
    let x = s.sim.snapshot();
    assert_eq!(x.mode, Mode::Normal, "not handed back: {x:?}");
    let st = s.cc.status().meter(M1).unwrap();
    assert!(st.blind.is_some(), "{st:?}");
    let problems = s.cc.status().health_problems();
    assert!(
        problems.iter().any(|p| p.contains("handed back")),
        "{problems:?}"
    );
    let audit = s.safety_audit("blind").await;
    assert!(audit.iter().any(|d| d.starts_with("blind")), "{audit:?}");
    // The meter answers again: the loop resumes by itself.
    s.sim.set_meter_fault(None);
    s.sim.set_load(Some(30.0));
    assert!(
        device_common::eventually(StdDuration::from_secs(10), || {
            let x = s.sim.snapshot();
            x.mode == Mode::Remote124 && (x.battery_kw - 10.0).abs() < 0.05
        })
        .await,
        "did not resume: {:?}",
        s.sim.snapshot()
    );
    assert!(s.cc.status().meter(M1).unwrap().blind.is_none());
    let audit = s.safety_audit("resumed").await;
    assert!(audit.iter().any(|d| d.starts_with("resumed")), "{audit:?}");
    s.stop().await;
    export_secs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_answering_with_exception_0x0b_hands_the_battery_back() {
    assert_eq!(
        meter_fault_mid_event(MeterFault::Exception(0x0B)).await,
        0.0
    );
}

/// The device reconnects (and so binds its points again) while the meter behind it answers
/// 0x0B: that point is not taken as absent for a minute. Once the meter answers again the
/// loop resumes within seconds, as after a shorter outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_point_failing_through_a_rebind_is_bound_again_within_seconds() {
    let s = site(device_common::sim_cfg(), "service_kw = 100").await;
    s.award(
        "blind-3",
        10.0,
        Utc::now() + Duration::milliseconds(1000),
        120,
    )
    .await;
    assert!(
        device_common::eventually(StdDuration::from_secs(10), || {
            s.sim.snapshot().mode == Mode::Remote124
        })
        .await
    );
    s.sim.set_meter_fault(Some(MeterFault::Exception(0x0B)));
    // Connections dropped: the driver reconnects and binds again during the meter fault.
    s.sim.set_fault(leap_edge::sim::Fault::Offline);
    tokio::time::sleep(StdDuration::from_secs(2)).await;
    s.sim.set_fault(leap_edge::sim::Fault::None);
    // Handed back over the new connection: it was bound while the meter answered 0x0B.
    assert!(
        device_common::eventually(StdDuration::from_secs(10), || {
            s.sim.snapshot().mode == Mode::Normal
        })
        .await,
        "not handed back after the reconnect: {:?}",
        s.sim.snapshot()
    );
    tokio::time::sleep(StdDuration::from_secs(1)).await;
    s.sim.set_meter_fault(None);
    let back = Instant::now();
    assert!(
        device_common::eventually(StdDuration::from_secs(20), || {
            s.sim.snapshot().mode == Mode::Remote124
        })
        .await,
        "did not resume: {:?}",
        s.sim.snapshot()
    );
    let took = back.elapsed();
    eprintln!("resumed {took:?} after the meter answered again");
    assert!(took < StdDuration::from_secs(10), "resumed after {took:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_that_times_out_hands_the_battery_back() {
    assert_eq!(meter_fault_mid_event(MeterFault::Timeout).await, 0.0);
}

/// With the shipped timing (a 1 s period and a 1 s Modbus timeout) a meter that stops
/// answering is handed back after one period and one timeout. Before, the release rebound
/// the device first (the timeout had dropped the connection), read the dead meter point
/// again and waited out a second timeout: about 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_meter_is_handed_back_without_waiting_a_second_timeout() {
    let s = site_timed(
        device_common::sim_cfg(),
        "service_kw = 100",
        None,
        (1000, 1000),
    )
    .await;
    s.award(
        "blind-2",
        10.0,
        Utc::now() + Duration::milliseconds(1000),
        60,
    )
    .await;
    assert!(
        device_common::eventually(StdDuration::from_secs(10), || {
            s.sim.snapshot().mode == Mode::Remote124
        })
        .await
    );
    s.sim.set_meter_fault(Some(MeterFault::Timeout));
    let at = Instant::now();
    let back = device_common::eventually(StdDuration::from_secs(6), || {
        s.sim.snapshot().mode == Mode::Normal
    })
    .await;
    let took = at.elapsed();
    eprintln!(
        "SILENT METER: handed back {} ms after the fault",
        took.as_millis()
    );
    assert!(back, "never handed back");
    assert!(took < StdDuration::from_millis(2500), "{took:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_meter_register_hands_the_battery_back() {
    // 32 767 W·10: a stuck i16 with scale factor 1 on a 100 kW service.
    assert_eq!(meter_fault_mid_event(MeterFault::Value(327.67)).await, 0.0);
}

/// A meter gateway that lost its meter keeps serving the last value it had: 20 kW import,
/// while the load has fallen to 5 kW. The range checks pass; the battery moving by kW while
/// the meter does not move at all gives it away (SPEC §2.13, `src/control/frozen.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_frozen_at_a_plausible_value_hands_the_battery_back() {
    let cfg = SimConfig {
        normal: leap_edge::config::NormalMode::Idle,
        ..device_common::sim_cfg()
    };
    let s = site(cfg, "service_kw = 100").await;
    s.sim.set_meter_fault(Some(MeterFault::Value(20.0)));
    s.sim.set_load(Some(5.0));
    let start = Utc::now() + Duration::milliseconds(1000);
    s.award("frozen-1", 30.0, start, 30).await;
    // Three readings and 5 s with the battery moving: handed back at the first reading
    // after that.
    let (early_secs, _) = export_between(&s.sim, start, start + Duration::milliseconds(6500)).await;
    let x = s.sim.snapshot();
    assert_eq!(x.mode, Mode::Normal, "not handed back: {x:?}");
    let (late_secs, _) = export_between(
        &s.sim,
        start + Duration::milliseconds(6500),
        start + Duration::seconds(9),
    )
    .await;
    eprintln!("FROZEN: export before the hand-back {early_secs:.2} s, after it {late_secs:.2} s");
    assert_eq!(late_secs, 0.0);
    let blind = s.cc.status().meter(M1).unwrap().blind.expect("blind");
    assert!(blind.contains("exactly 20.000 kW"), "{blind}");
    let audit = s.safety_audit("blind").await;
    assert!(audit.iter().any(|d| d.contains("frozen")), "{audit:?}");
    // A revision of the event is a new command on the same frozen meter: the finding holds
    // (it used to be forgotten, and the battery was driven on the frozen value for 5 s).
    s.award("frozen-1", 29.0, start, 30).await;
    let now = Utc::now();
    let (revised_secs, _) = export_between(&s.sim, now, now + Duration::seconds(4)).await;
    assert_eq!(revised_secs, 0.0, "exported after the revision");
    assert_eq!(s.sim.snapshot().mode, Mode::Normal);
    // The meter measures again: the loop resumes by itself.
    s.sim.set_meter_fault(None);
    assert!(
        device_common::eventually(StdDuration::from_secs(10), || {
            let x = s.sim.snapshot();
            x.mode == Mode::Remote124 && (x.battery_kw - 4.5).abs() < 0.05
        })
        .await,
        "did not resume: {:?}",
        s.sim.snapshot()
    );
    s.stop().await;
}

// ---- SCENARIOS on the registers (issue 9 point 9): what the simulated site meter shows ----

/// Sim samples (wall time, snapshot) every 20 ms until `until`.
async fn record(sim: &SimHandle, until: DateTime<Utc>) -> Vec<(DateTime<Utc>, Snapshot)> {
    let mut out = Vec::new();
    while Utc::now() < until {
        out.push((Utc::now(), sim.snapshot()));
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    out
}

fn window(
    s: &[(DateTime<Utc>, Snapshot)],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<&Snapshot> {
    let w: Vec<&Snapshot> = s
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, x)| x)
        .collect();
    assert!(!w.is_empty(), "no samples between {from} and {to}");
    w
}

/// Settled (one second after a change): the battery delivers `kw` within ±2 %, under remote
/// control, and the grid import stays at or above `min_grid_kw`.
fn holds(
    s: &[(DateTime<Utc>, Snapshot)],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    kw: f64,
    min_grid_kw: f64,
) {
    for x in window(s, from + Duration::seconds(1), to) {
        assert_ne!(x.mode, Mode::Normal, "normal during {from}..{to}: {x:?}");
        assert!(
            (x.battery_kw - kw).abs() <= kw.abs() * 0.02 + 0.05,
            "not {kw} kW during {from}..{to}: {x:?}"
        );
        assert!(
            x.grid_kw >= min_grid_kw - TOLERANCE_KW,
            "grid below {min_grid_kw} during {from}..{to}: {x:?}"
        );
    }
}

fn normal(s: &[(DateTime<Utc>, Snapshot)], from: DateTime<Utc>, to: DateTime<Utc>) {
    for x in window(s, from, to) {
        assert_eq!(
            x.mode,
            Mode::Normal,
            "not normal during {from}..{to}: {x:?}"
        );
    }
}

fn slot_json(
    id: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut t = json!({"meter_event_id": id, "start_time": ts(start), "end_time": ts(end),
        "cancelled": false, "energy_kw": 10.0, "performance_compensation_cap": "up-to-site-load",
        "priority": 1, "is_voluntary": false, "dispatch_event_types": ["day-ahead"], "programs": ["DRAM"]});
    for (k, v) in extra.as_object().unwrap() {
        t[k] = v.clone();
    }
    t
}

impl Site {
    async fn send(&self, slots: Vec<serde_json::Value>) {
        let body = json!({"integration_test_notification": false, "communication_test": false,
            "meter_dispatches": [{"meter_id": M1, "timeslots": slots}]});
        let r = self.client.post(&body.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

use leap_edge::sim::Snapshot;

fn t(base: DateTime<Utc>, ms: i64) -> DateTime<Utc> {
    base + Duration::milliseconds(ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_1_and_2_back_to_back_awards_on_the_registers() {
    let s = site(device_common::sim_cfg(), "").await;
    let base = Utc::now() + Duration::milliseconds(1500);
    s.send(vec![
        slot_json("s1", base, t(base, 3000), json!({})),
        slot_json(
            "s2",
            t(base, 3000),
            t(base, 6000),
            json!({"energy_kw": 20.0}),
        ),
    ])
    .await;
    let rec = record(&s.sim, t(base, 8000)).await;
    normal(&rec, t(base, -1000), t(base, -200));
    holds(&rec, base, t(base, 3000), 10.0, 0.5);
    holds(&rec, t(base, 3000), t(base, 6000), 20.0, 0.5);
    // No pass through normal at the seam.
    for x in window(&rec, t(base, 2500), t(base, 3500)) {
        assert_ne!(x.mode, Mode::Normal, "normal at the seam: {x:?}");
    }
    normal(&rec, t(base, 6000 + PERIOD_MS + 500), t(base, 8000));
    s.stop().await;
}

/// The frozen meter under an export permit: the law reads 20 kW of import that is not
/// there and discharges to the battery's maximum, far past the 5 kW permit. Before, the
/// frozen check ran only under a no-export bound, so this was never handed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_frozen_under_an_export_permit_hands_the_battery_back() {
    let cfg = SimConfig {
        normal: leap_edge::config::NormalMode::Idle,
        ..device_common::sim_cfg()
    };
    let s = site(cfg, "service_kw = 100\nexport_limit_kw = 5").await;
    s.sim.set_meter_fault(Some(MeterFault::Value(20.0)));
    s.sim.set_load(Some(5.0));
    let start = Utc::now() + Duration::milliseconds(1000);
    s.send(vec![slot_json(
        "frozen-permit",
        start,
        t(start, 30_000),
        json!({"energy_kw": null, "performance_compensation_cap": "grid-exports-allowed"}),
    )])
    .await;
    let handed_back = device_common::eventually(StdDuration::from_secs(9), || {
        s.sim.snapshot().mode == Mode::Normal && Utc::now() > start + Duration::seconds(2)
    })
    .await;
    assert!(handed_back, "not handed back: {:?}", s.sim.snapshot());
    let blind = s.cc.status().meter(M1).unwrap().blind.expect("blind");
    assert!(blind.contains("exactly 20.000 kW"), "{blind}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_3_overlap_then_exports_up_to_the_permit() {
    let s = site(device_common::sim_cfg(), "export_limit_kw = 5").await;
    let base = Utc::now() + Duration::milliseconds(1500);
    s.send(vec![
        slot_json("p1", base, t(base, 3000), json!({"energy_kw": 20.0})),
        slot_json(
            "p3",
            base,
            t(base, 6000),
            json!({"energy_kw": null, "priority": 3,
            "is_voluntary": true, "programs": ["ELRP"],
            "performance_compensation_cap": "grid-exports-allowed"}),
        ),
    ])
    .await;
    let rec = record(&s.sim, t(base, 6000)).await;
    holds(&rec, base, t(base, 3000), 20.0, 0.5);
    // Maximum available, exporting up to the 5 kW permit: 30 kW load + 5 = 35 kW.
    holds(&rec, t(base, 3000), t(base, 6000), 35.0, -5.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_5_to_8_changes_during_an_event_on_the_registers() {
    let s = site(device_common::sim_cfg(), "").await;
    // 8: it arrives after its start: starts at once.
    let base = Utc::now() - Duration::seconds(5);
    let sent = Utc::now();
    s.send(vec![slot_json("ev", base, t(sent, 3000), json!({}))])
        .await;
    // 6: a new energy_kw during the event.
    let rec = record(&s.sim, t(sent, 2000)).await;
    holds(&rec, sent, t(sent, 2000), 10.0, 0.5);
    s.send(vec![slot_json(
        "ev",
        base,
        t(sent, 3000),
        json!({"energy_kw": 15.0}),
    )])
    .await;
    let changed = Utc::now();
    // 7: a later end while active.
    s.send(vec![slot_json(
        "ev",
        base,
        t(sent, 60_000),
        json!({"energy_kw": 15.0}),
    )])
    .await;
    let rec = record(&s.sim, t(sent, 5000)).await;
    holds(&rec, t(changed, PERIOD_MS - 1000), t(sent, 5000), 15.0, 0.5);
    // 5: a cancellation during the event: normal within one control period.
    s.send(vec![slot_json(
        "ev",
        base,
        t(sent, 60_000),
        json!({"energy_kw": 15.0, "cancelled": true}),
    )])
    .await;
    let cancelled = Utc::now();
    let rec = record(&s.sim, t(cancelled, 3000)).await;
    normal(&rec, t(cancelled, PERIOD_MS + 300), t(cancelled, 3000));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_10_fifty_deliveries_one_set_of_commands() {
    let s = site(device_common::sim_cfg(), "").await;
    let base = Utc::now() + Duration::milliseconds(1500);
    let body = json!({"integration_test_notification": false, "communication_test": false,
        "meter_dispatches": [{"meter_id": M1, "timeslots": [slot_json("s10", base, t(base, 4000), json!({}))]}]})
    .to_string();
    let mut counts = (0, 0);
    for _ in 0..5 {
        let posts: Vec<_> = (0..10).map(|_| s.client.post(&body)).collect();
        for r in futures_all(posts).await {
            assert_eq!(r.status, 200, "{}", r.text);
            counts.0 += r.body["new"].as_u64().unwrap();
            counts.1 += r.body["duplicate"].as_u64().unwrap();
        }
    }
    assert_eq!(counts, (1, 49));
    let rec = record(&s.sim, t(base, 4000)).await;
    holds(&rec, base, t(base, 4000), 10.0, 0.5);
    s.stop().await;
}

/// Await every future concurrently (one task each).
async fn futures_all<F>(fs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future,
{
    let mut out = Vec::new();
    let mut pinned: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, d) in pinned.iter_mut().zip(done.iter_mut()) {
            if d.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *d = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_12_group_shares_reach_both_local_batteries() {
    let s = site_with(device_common::sim_cfg(), "", Some(device_common::sim_cfg())).await;
    let base = Utc::now() + Duration::milliseconds(1500);
    let body = json!({"integration_test_notification": false, "communication_test": false,
        "group_dispatches": [{"market_group_id": "g", "meter_ids": [M1, M2, FOREIGN], "timeslots": [{
            "market_group_event_id": "g12", "start_time": ts(base), "end_time": ts(t(base, 4000)),
            "cancelled": false, "energy_kw": 30.0, "performance_compensation_cap": "up-to-site-load",
            "priority": 1, "is_voluntary": false, "dispatch_event_types": ["day-ahead"], "programs": ["DRAM"]}]}]});
    let r = s.client.post(&body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sim2 = s.sim2.as_ref().unwrap();
    let (rec1, rec2) = tokio::join!(record(&s.sim, t(base, 4000)), record(sim2, t(base, 4000)));
    holds(&rec1, base, t(base, 4000), 10.0, 0.5);
    holds(&rec2, base, t(base, 4000), 10.0, 0.5);
    s.stop().await;
}
