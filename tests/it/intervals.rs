//! Issue 14: 15-minute interval energy. The simulator's meter accumulators reach the
//! recorder over real Modbus TCP; a simulated day (readings on a simulated clock, a daemon
//! killed and restarted, a meter outage) is recorded into a real SQLite file and printed by
//! the real binary as Leap's load CSV, which must pass Leap's published row rules.

use crate::common;
use crate::device_common;

use chrono::{DateTime, Duration as CDuration, NaiveDate, TimeZone, Timelike, Utc};
use device_common::*;
use leap_edge::clock::SystemClock;
use leap_edge::config::{Config, MeterConfig};
use leap_edge::control::ControlCommander;
use leap_edge::device::{self, Battery, Telemetry};
use leap_edge::intervals::{MeterReading, task};
use leap_edge::store::Store;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

const METERED: &str = "dd21c76c-0000-4000-8000-0000000000a1";
const ESTIMATED: &str = "dd21c76c-0000-4000-8000-0000000000e2";
const HEADER: &str = "meter_id,interval_start_time_utc,interval_end_time_utc,energy_net_kwh,energy_consumed_kwh,energy_generated_kwh,final,region";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accumulators_come_from_the_simulator_over_modbus() {
    let mut cfg = sim_cfg();
    cfg.normal = leap_edge::sim::NormalMode::Idle; // the site imports its 30 kW load
    let sim = start_sim_with(cfg, leap_edge::sim::SimOptions::default()).await;
    let text = "[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n";
    let mut c = Config::parse_str(text, Path::new("test.toml")).unwrap();
    c.site.control_period_ms = 200;
    c.devices_dir = devices_dir();
    c.devices
        .insert("bess".into(), device_cfg("sunspec", sim.local_addr(), 500));
    c.meters.push(MeterConfig {
        id: METERED.into(),
        device: "bess".into(),
        weight: 1.0,
        name: None,
    });
    let dir = c.devices_dir.clone();
    let control = ControlCommander::start(&c, Arc::new(SystemClock), |name, dev| {
        Ok(Box::new(device::open(name, dev, &dir)?) as Box<dyn Battery>)
    })
    .unwrap();
    let mut rx = control.readings();
    let mut got: Vec<MeterReading> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 12 && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            got.push(r);
        }
    }
    control.shutdown(Duration::from_secs(2)).await;
    assert!(
        got.len() >= 12,
        "readings handed to the recorder: {}",
        got.len()
    );
    let (first, last) = (&got[1], got.last().unwrap());
    assert_eq!(first.meter_id, METERED);
    let (i0, i1) = (
        first.telemetry.grid_import_wh.expect("TotWhImp read"),
        last.telemetry.grid_import_wh.expect("TotWhImp read"),
    );
    assert!(
        i0 > 1_000_000.0,
        "the simulator's counter starts in service: {i0}"
    );
    let secs = (last.at - first.at).num_milliseconds() as f64 / 1000.0;
    let expect_wh = 30.0 * secs / 3.6;
    assert!(
        ((i1 - i0) - expect_wh).abs() <= 2.0 + expect_wh * 0.15,
        "30 kW for {secs} s counted {} Wh, expected about {expect_wh}",
        i1 - i0
    );
    assert_eq!(
        last.telemetry.grid_export_wh,
        first.telemetry.grid_export_wh
    );
}

/// The simulated site: a daily load curve, the battery discharging 20 kW 17:00–18:00 (into
/// export after 17:30), the meter counting exactly like a SunSpec 203 (whole Wh).
struct Site {
    imp_wh: f64,
    exp_wh: f64,
}

impl Site {
    fn grid_kw(t: DateTime<Utc>) -> f64 {
        let h = t.hour() as f64 + t.minute() as f64 / 60.0;
        let load = 12.0 + 8.0 * ((h - 6.0) / 24.0 * std::f64::consts::TAU).sin().max(0.0);
        let battery = if (17.0..18.0).contains(&h) {
            20.0 + if h >= 17.5 { 5.0 } else { 0.0 }
        } else {
            0.0
        };
        load - battery
    }

    fn reading(&mut self, meter: &str, t: DateTime<Utc>, dt_s: f64, metered: bool) -> MeterReading {
        // The counters at `t`; the power read at `t` then flows until the next reading.
        let (imp, exp) = (self.imp_wh.floor(), self.exp_wh.floor());
        let g = Site::grid_kw(t);
        if g > 0.0 {
            self.imp_wh += g * dt_s / 3.6;
        } else {
            self.exp_wh -= g * dt_s / 3.6;
        }
        MeterReading {
            meter_id: meter.into(),
            at: t,
            telemetry: Telemetry {
                grid_kw: Some(g),
                battery_kw: Some(0.0),
                soc_pct: Some(50.0),
                grid_import_wh: metered.then_some(imp),
                grid_export_wh: metered.then_some(exp),
                ..Telemetry::default()
            },
            // Simulated time: no monotonic stamp, so no clock-step check.
            mono: None,
        }
    }
}

/// Leap's per-row rules (LEAP-API.md "Interval data"), as a checker: the header, eight
/// columns, known meter (MTR_0003), UTC RFC 3339, aligned to the quarter hour, exactly 15
/// minutes, not in the future (STM/ETM/DTR_0003), non-negative (CON/GEN_0003), consistent
/// energy columns (NRG_0003); plus one row per meter and interval.
fn check_leap_rules(csv: &str, meters: &[&str]) -> Vec<(String, DateTime<Utc>, f64, f64)> {
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(HEADER));
    let now = Utc::now();
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        let c: Vec<&str> = line.split(',').collect();
        assert_eq!(c.len(), 8, "line {n}: {line}");
        assert!(meters.contains(&c[0]), "MTR_0003 line {n}: {line}");
        assert!(
            c[1].ends_with('Z') && c[2].ends_with('Z'),
            "UTC line {n}: {line}"
        );
        let s = DateTime::parse_from_rfc3339(c[1])
            .unwrap()
            .with_timezone(&Utc);
        let e = DateTime::parse_from_rfc3339(c[2])
            .unwrap()
            .with_timezone(&Utc);
        assert!(
            s.minute().is_multiple_of(15) && s.second() == 0 && s.nanosecond() == 0,
            "STM_0003 {line}"
        );
        assert_eq!(e - s, CDuration::minutes(15), "DTR_0003 {line}");
        assert!(e <= now, "ETM_0003 in the future: {line}");
        let num = |x: &str| {
            x.parse::<f64>()
                .unwrap_or_else(|_| panic!("number {x:?} in {line}"))
        };
        let (net, cons, generated) = (num(c[3]), num(c[4]), num(c[5]));
        assert!(cons >= 0.0, "CON_0003 {line}");
        assert!(generated >= 0.0, "GEN_0003 {line}");
        assert!((net - (cons - generated)).abs() < 0.0005, "NRG_0003 {line}");
        assert!(c[6] == "true" || c[6] == "false", "final {line}");
        assert!(seen.insert((c[0].to_string(), s)), "duplicate row {line}");
        rows.push((c[0].to_string(), s, cons, generated));
    }
    rows
}

fn spawn_recorder(
    store: &Store,
    rx: broadcast::Receiver<MeterReading>,
) -> (tokio::task::JoinHandle<()>, watch::Sender<bool>) {
    let (stop, stop_rx) = watch::channel(false);
    (
        tokio::spawn(task::run(store.clone(), None, rx, stop_rx)),
        stop,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_day_gives_a_csv_that_passes_leaps_rules() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("leap-edge.db");
    let day = Utc.from_utc_datetime(
        &NaiveDate::from_ymd_opt(2026, 11, 20)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap(),
    );
    let kill_at = day + CDuration::hours(9) + CDuration::seconds(14 * 60 + 40);
    let back_at = kill_at + CDuration::seconds(30);
    let outage = (
        day + CDuration::minutes(14 * 60 + 5),
        day + CDuration::minutes(14 * 60 + 50),
    );
    let (mut metered, mut estimated) = (
        Site {
            imp_wh: 5e6,
            exp_wh: 1e4,
        },
        Site {
            imp_wh: 0.0,
            exp_wh: 0.0,
        },
    );
    // Exact energy per interval from the model, to compare with what was recorded.
    let mut truth: HashMap<DateTime<Utc>, (f64, f64)> = HashMap::new();

    let (store, thread) = Store::open(&db).unwrap();
    let (tx, rx) = broadcast::channel::<MeterReading>(200_000);
    let (mut recorder, mut stop) = spawn_recorder(&store, rx);
    let step = 2;
    let mut t = day - CDuration::seconds(60);
    while t <= day + CDuration::days(1) + CDuration::seconds(60) {
        if t == back_at {
            // The daemon was SIGKILLed at kill_at: nothing saved since its last flush.
            let (r, s) = spawn_recorder(&store, tx.subscribe());
            (recorder, stop) = (r, s);
        }
        let (ib, eb) = (metered.imp_wh, metered.exp_wh);
        let a = metered.reading(METERED, t, step as f64, true);
        let b = estimated.reading(ESTIMATED, t, step as f64, false);
        let slot = day + CDuration::seconds((t - day).num_seconds().div_euclid(900) * 900);
        let e = truth.entry(slot).or_default();
        e.0 += metered.imp_wh - ib;
        e.1 += metered.exp_wh - eb;
        let down = (t > kill_at && t < back_at) || (t >= outage.0 && t < outage.1);
        if !down {
            tx.send(a).unwrap();
            tx.send(b).unwrap();
        }
        if t == kill_at {
            // Let the recorder take what was sent, then kill it without a goodbye.
            while !tx.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            recorder.abort();
            let _ = (&mut recorder).await;
        }
        t += CDuration::seconds(step);
    }
    while !tx.is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send_replace(true);
    recorder.await.unwrap();
    drop(store);
    thread.closed().await;

    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n[storage]\npath = {:?}\n[intervals]\nregion = \"CAISO\"\n",
            db.display().to_string()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leap-edge"))
        .arg("--config")
        .arg(&cfg)
        .args([
            "intervals",
            "--csv",
            "--from",
            "2026-11-20T00:00:00Z",
            "--to",
            "2026-11-21T00:00:00Z",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows = check_leap_rules(&csv, &[METERED, ESTIMATED]);
    assert!(csv.lines().nth(1).unwrap().ends_with(",true,CAISO"));

    let outage_slots: Vec<DateTime<Utc>> = (0..4)
        .map(|i| day + CDuration::minutes(14 * 60 + 15 * i))
        .collect();
    for meter in [METERED, ESTIMATED] {
        let mine: Vec<_> = rows.iter().filter(|r| r.0 == meter).collect();
        // 96 quarter hours, minus the four the outage touched (gaps stay gaps); the restart
        // costs nothing (accumulators bridge it; the estimate loses under 5 % of one).
        assert_eq!(mine.len(), 92, "{meter}: {csv}");
        for r in &mine {
            assert!(
                !outage_slots.contains(&r.1),
                "{meter}: outage interval sent: {r:?}"
            );
            let (ti, te) = truth[&r.1];
            let tol = if meter == METERED {
                0.0015
            } else {
                0.01 * (ti + te) / 1000.0 + 0.002
            };
            assert!(
                (r.2 - ti / 1000.0).abs() <= tol,
                "{meter} {}: consumed {} vs {}",
                r.1,
                r.2,
                ti / 1000.0
            );
            assert!(
                (r.3 - te / 1000.0).abs() <= tol,
                "{meter} {}: generated {} vs {}",
                r.1,
                r.3,
                te / 1000.0
            );
        }
    }
    // The battery pushed the site into export at 17:30–18:00: generated energy is reported.
    let export: f64 = rows.iter().filter(|r| r.0 == METERED).map(|r| r.3).sum();
    assert!(export > 1.0, "export recorded: {export} kWh");
    // A meter id typed in capitals finds the same rows (as every other command's --meter).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leap-edge"))
        .arg("--config")
        .arg(&cfg)
        .args([
            "intervals",
            "--csv",
            "--from",
            "2026-11-20T00:00:00Z",
            "--to",
        ])
        .args(["2026-11-21T00:00:00Z", "--meter", &METERED.to_uppercase()])
        .output()
        .unwrap();
    let csv = String::from_utf8(out.stdout).unwrap();
    assert_eq!(csv.lines().count(), 1 + 92, "{csv}");
    // `report` for an event that does not exist fails in --json as in text.
    for json in [false, true] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_leap-edge"))
            .arg("--config")
            .arg(&cfg)
            .args(["report", "--event", "no-such-event"])
            .args(json.then_some("--json"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "--json {json}");
    }
}

/// The whole chain on the simulator: a 20 kW, 40 s event over HTTPS → dispatch → control
/// loop → Modbus → the simulated battery; its readings → intervals → `leap-edge report`,
/// which must show the award delivered within 2 %, and the audit log its summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_on_a_simulated_event_shows_the_award_delivered() {
    let mut scfg = sim_cfg();
    scfg.normal = leap_edge::sim::NormalMode::Idle;
    let sim = start_sim_with(scfg, leap_edge::sim::SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cert = common::write_cert(dir.path());
    let db = dir.path().join("leap-edge.db");
    let config = common::TestConfig {
        db: db.display().to_string(),
        tail: format!(
            "[site]\ncontrol_period_ms = 200\n\
             [[meters]]\nid = \"{METERED}\"\ndevice = \"sim\"\n[devices.sim]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nport = {port}\nreversion_secs = 10\n",
            port = sim.local_addr().port(),
        ),
        ..Default::default()
    };
    let cfg_path = config.write(dir.path());
    let config = Config::load(&cfg_path).unwrap();
    let cc = Arc::new(ControlCommander::start_modbus(&config, Arc::new(SystemClock)).unwrap());
    let status = cc.status();
    let readings = cc.readings();
    let parts = leap_edge::daemon::Parts {
        commander: cc.clone(),
        clock: Arc::new(SystemClock),
        live: Arc::new(move || status.snapshot()),
    };
    let mut running = leap_edge::daemon::start(config, parts).await.unwrap();
    running.record_intervals(readings);
    let client = common::Client::new(running.addr, cert);

    // The award/delivery comparison wants the event and its audit inside one quarter hour:
    // the boundary-crossing case (two partial intervals) is the report's unit tests' job.
    let left_in_quarter = 900 - Utc::now().timestamp().rem_euclid(900);
    if left_in_quarter < 2 + 40 + gather_delay() + 25 {
        tokio::time::sleep(Duration::from_secs(left_in_quarter as u64 + 1)).await;
    }
    let start = Utc::now() + CDuration::seconds(2);
    let end = start + CDuration::seconds(40);
    let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = serde_json::json!({"integration_test_notification": false, "communication_test": false,
        "meter_dispatches": [{"meter_id": METERED, "timeslots": [{
            "meter_event_id": "report-1", "start_time": ts(start), "end_time": ts(end),
            "cancelled": false, "energy_kw": 20.0, "performance_compensation_cap": "up-to-site-load",
            "priority": 1, "is_voluntary": false, "dispatch_event_types": ["day-ahead"], "programs": ["DRAM"]}]}]});
    let r = client.post(&body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Read while the daemon runs (WAL): the open interval is saved every 15 s of readings.
    // The summary reaches the audit log 20 s after the end, at the next save of readings.
    let audited = end + CDuration::seconds(gather_delay() + 15 + 5);
    while Utc::now() < audited {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leap-edge"))
        .arg("--config")
        .arg(&cfg_path)
        .args(["report", "--event", "report-1", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rep = &v["reports"][0];
    let (award, delivered) = (
        rep["award_kwh"].as_f64().unwrap(),
        rep["delivered_kwh"].as_f64().unwrap(),
    );
    eprintln!(
        "REPORT: award {award:.4} kWh, delivered {delivered:.4} kWh; {}",
        rep["verdict"]
    );
    assert!((award - 20.0 * 40.0 / 3600.0).abs() < 1e-9);
    assert!(
        (delivered - award).abs() <= 0.02 * award,
        "delivered {delivered} vs award {award}"
    );
    assert!(
        rep["verdict"].as_str().unwrap().starts_with("MET"),
        "{}",
        rep["verdict"]
    );
    assert!(rep["first_setpoint_lateness_ms"].as_i64().is_some());
    assert_eq!(rep["export_seconds"], 0);

    let conn = leap_edge::store::open_read_only(&db).unwrap();
    let detail: String = conn
        .query_row(
            "SELECT detail FROM audit WHERE action = 'report' AND event_id = 'report-1'",
            [],
            |r| r.get(0),
        )
        .expect("the summary is in the audit log");
    assert!(detail.contains("report-1"), "{detail}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leap-edge"))
        .arg("--config")
        .arg(&cfg_path)
        .args(["report", "--event", "report-1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BASELINE*") && text.contains("MET:"),
        "{text}"
    );
    let chart = dir.path().join("event.svg");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leap-edge"))
        .arg("--config")
        .arg(&cfg_path)
        .args(["report", "--event", "report-1", "--svg"])
        .arg(&chart)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.contains("report-1") && svg.contains("delivered (kW)"),
        "{svg}"
    );
    running.stop().await;
    cc.shutdown(Duration::from_secs(3)).await;
}

fn gather_delay() -> i64 {
    leap_edge::intervals::gather::AUDIT_AFTER_SECS
}

/// SPEC §2.6: an integration test the site's `[policy]` ignores was never meant to move the
/// battery. Its report says so instead of judging it; before, the verdict (in the audit log
/// too) was "MISSED … no setpoint recorded". A real dispatch with no data is still judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignored_test_is_not_judged_as_missed() {
    let d = common::Daemon::start_with(&format!(
        "[policy]\nintegration_test = \"ignore\"\n\
         [[meters]]\nid = \"{METERED}\"\ndevice = \"bat\"\n[devices.bat]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nport = 9\ntimeout_ms = 200\n"
    ));
    let start = Utc::now() - CDuration::hours(2);
    for (event, test) in [("it-ignored", true), ("real-1", false)] {
        let body = serde_json::json!({"integration_test_notification": test, "communication_test": false,
            "meter_dispatches": [{"meter_id": METERED, "timeslots": [
                common::timeslot_json(METERED, event, start, 1800, Some(5.0), serde_json::json!({}))]}]});
        let r = d.client().post(&body.to_string()).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let verdict = |event: &str| {
        let (code, out, err) = d.cli(&["report", "--event", event, "--json"]);
        assert_eq!(code, 0, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["reports"][0]["verdict"].as_str().unwrap().to_string()
    };
    let v = verdict("it-ignored");
    assert!(v.starts_with("NOT COMMANDED (a Leap test"), "{v}");
    let v = verdict("real-1");
    assert!(v.starts_with("INCOMPLETE DATA"), "{v}");
}
