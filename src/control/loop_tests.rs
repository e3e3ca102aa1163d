//! The control loop and its commander under tokio's paused clock, against a battery with
//! simple physics ([`super::fake`]).

use super::fake::{Call, FakeBattery, FakeState};
use super::{ControlCommander, ControlError};
use crate::clock::TokioClock;
use crate::config::Config;
use crate::device::Battery;
use crate::dispatch::{CommandError, Commander};
use crate::model::{Command, ExecMode, Target};
use crate::seam::StatusSource;
use chrono::{DateTime, TimeZone, Utc};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::time::{Duration, Instant, sleep};

const METER: &str = "dd21c76c-0000-4000-8000-000000000001";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 5, 18, 0, 0).unwrap()
}

fn config(reversion_secs: u32, extra_meter: bool) -> Config {
    let mut text = format!(
        r#"
[server]
listen = "127.0.0.1:8443"
[auth]
keys = ["0123456789abcdef0123456789abcdef"]
[site]
control_period_ms = 1000
[[meters]]
id = "{METER}"
device = "bess"
[devices.bess]
profile = "sunspec"
host = "127.0.0.1"
reversion_secs = {reversion_secs}
"#
    );
    if extra_meter {
        text.push_str("[[meters]]\nid = \"other\"\ndevice = \"bess\"\n");
    }
    Config::parse_str(&text, Path::new("test.toml")).unwrap()
}

fn command(kw: f64) -> Command {
    Command::award("ev-1", kw, t0() + chrono::Duration::hours(1))
}

/// A commander over one fake battery (80 % SoC, 30 kW load), clock at `t0()`.
fn start(reversion_secs: u32) -> (ControlCommander, Arc<Mutex<FakeState>>) {
    let fake = FakeBattery::new(80.0, 30.0);
    let state = fake.state.clone();
    let mut slot = Some(fake);
    let clock = Arc::new(TokioClock::starting_at(t0()));
    let cc = ControlCommander::start(&config(reversion_secs, false), clock, |_, _| {
        Ok(Box::new(slot.take().expect("one device")) as Box<dyn Battery>)
    })
    .unwrap();
    (cc, state)
}

#[tokio::test(start_paused = true)]
async fn a_command_is_written_at_once_and_refreshed_before_half_the_reversion() {
    let (cc, st) = start(10);
    let asked = Instant::now();
    cc.apply(METER, &command(10.0)).await.unwrap();
    sleep(Duration::from_secs(120)).await;
    let s = st.lock().unwrap();
    let writes = s.writes();
    assert_eq!(writes[0].0, asked, "first write not immediate");
    assert!(writes.iter().all(|(_, kw)| *kw == 10.0));
    let max_gap = writes.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap();
    assert!(
        max_gap <= Duration::from_secs(5),
        "gap {max_gap:?} > reversion/2"
    );
    assert!(writes.last().unwrap().0 >= asked + Duration::from_secs(115));
    assert_eq!(
        s.reversions, 0,
        "device reverted while the command was held"
    );
    assert!(s.remote());
    assert!(s.calls.iter().any(|(_, c)| *c
        == Call::Set {
            kw: 10.0,
            reversion_secs: 10
        }));
}

#[tokio::test(start_paused = true)]
async fn release_returns_the_battery_to_normal_within_one_period() {
    let (cc, st) = start(60);
    cc.apply(METER, &command(10.0)).await.unwrap();
    sleep(Duration::from_millis(5500)).await;
    let asked = Instant::now();
    cc.release(METER).await.unwrap();
    sleep(Duration::from_secs(10)).await;
    let s = st.lock().unwrap();
    let last = *s.releases().last().expect("released");
    assert!(
        last - asked <= Duration::from_secs(1),
        "released {:?} after",
        last - asked
    );
    assert!(!s.remote());
    assert_eq!(s.battery_kw, 0.0);
    assert!(
        s.writes().iter().all(|(t, _)| *t < last),
        "written after release"
    );
    let status = cc.status().meter(METER).unwrap();
    assert!(status.command.is_none() && status.released);
}

#[tokio::test(start_paused = true)]
async fn a_device_down_at_the_start_gets_the_command_as_soon_as_it_is_back() {
    let (cc, st) = start(60);
    st.lock().unwrap().down = true;
    let err = cc.apply(METER, &command(10.0)).await.unwrap_err();
    assert!(
        matches!(err, CommandError::Device { ref meter, .. } if meter == METER),
        "{err}"
    );
    sleep(Duration::from_secs(120)).await;
    let s = cc.status().meter(METER).unwrap();
    assert!(s.consecutive_errors >= 100, "{s:?}");
    assert!(
        s.last_error
            .as_deref()
            .unwrap()
            .contains("connection refused")
    );
    assert!(!cc.status().health_problems().is_empty());
    let back = Instant::now();
    st.lock().unwrap().down = false;
    sleep(Duration::from_secs(3)).await;
    let writes = st.lock().unwrap().writes();
    let (at, kw) = writes[0];
    assert_eq!(kw, 10.0);
    assert!(
        at - back <= Duration::from_secs(1),
        "applied {:?} after return",
        at - back
    );
    let s = cc.status().meter(METER).unwrap();
    assert_eq!(s.consecutive_errors, 0);
    assert!(cc.status().health_problems().is_empty());
}

#[tokio::test(start_paused = true)]
async fn discharge_follows_a_load_step_down_within_one_period() {
    let (cc, st) = start(60);
    cc.apply(METER, &command(10.0)).await.unwrap();
    sleep(Duration::from_millis(3500)).await;
    st.lock().unwrap().load_kw = 6.0;
    let step = Instant::now();
    sleep(Duration::from_secs(5)).await;
    let s = st.lock().unwrap();
    let first_after = s.writes().into_iter().find(|(t, _)| *t > step).unwrap();
    assert!(first_after.0 - step <= Duration::from_secs(1));
    assert!((first_after.1 - 5.5).abs() < 1e-9, "{first_after:?}");
    drop(s);
    let status = cc.status().meter(METER).unwrap();
    let d = status.last_decision.unwrap();
    assert!(d.flags.cap_limited);
    // The site exported for at most the one period before the loop saw the step.
    assert!(status.export_violation_secs <= 1.0 + 1e-9, "{status:?}");
    assert!(status.export_violation_secs > 0.0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_every_battery() {
    let (cc, st) = start(60);
    cc.apply(METER, &command(10.0)).await.unwrap();
    sleep(Duration::from_secs(2)).await;
    cc.shutdown(Duration::from_secs(2)).await;
    let calls = {
        let s = st.lock().unwrap();
        assert!(!s.releases().is_empty());
        assert!(!s.remote());
        s.calls.len()
    };
    sleep(Duration::from_secs(10)).await;
    assert_eq!(
        st.lock().unwrap().calls.len(),
        calls,
        "loop still running after shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_command_writes_nothing() {
    let (cc, st) = start(60);
    let mut c = command(10.0);
    c.mode = ExecMode::DryRun;
    cc.apply(METER, &c).await.unwrap();
    sleep(Duration::from_secs(5)).await;
    assert!(st.lock().unwrap().writes().is_empty());
    let s = cc.status().meter(METER).unwrap();
    assert_eq!(s.last_decision.unwrap().setpoint_kw, 10.0);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_meter_and_a_shared_device_are_refused() {
    let (cc, _st) = start(60);
    let err = cc.apply("nope", &command(1.0)).await.unwrap_err();
    assert!(matches!(err, CommandError::UnknownMeter { .. }));
    let clock = Arc::new(TokioClock::starting_at(t0()));
    let r = ControlCommander::start(&config(60, true), clock, |_, _| {
        Ok(Box::new(FakeBattery::new(50.0, 1.0)) as Box<dyn Battery>)
    });
    assert!(matches!(r, Err(ControlError::SharedDevice { .. })));
    assert_eq!(super::check_meters(&config(60, true)).len(), 1);
    // A 1 s period cannot refresh a 1 s reversion timeout at half its period.
    let problems = super::check_meters(&config(1, false));
    assert!(problems[0].contains("control_period_ms"), "{problems:?}");
}

#[tokio::test(start_paused = true)]
async fn an_updated_command_takes_effect_at_once() {
    let (cc, st) = start(60);
    cc.apply(METER, &command(10.0)).await.unwrap();
    sleep(Duration::from_millis(2500)).await;
    let asked = Instant::now();
    cc.apply(METER, &command(20.0)).await.unwrap();
    let writes = st.lock().unwrap().writes();
    let (at, kw) = *writes.last().unwrap();
    assert_eq!((at, kw), (asked, 20.0));
    let s = cc.status().meter(METER).unwrap();
    assert_eq!(s.command.unwrap().target, Target::Kw(20.0));
    assert_eq!(s.last_written_kw, Some(20.0));
    let mut out = String::new();
    cc.status().render_metrics(&mut out);
    let line =
        format!("leap_edge_control_setpoint_kw{{meter_id=\"{METER}\",device=\"bess\"}} 20\n");
    assert!(out.contains(&line), "{out}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_device_bounds_apply_and_shutdown() {
    let (cc, st) = start(60);
    cc.apply(METER, &command(10.0)).await.unwrap();
    st.lock().unwrap().hang = true;
    let asked = Instant::now();
    let err = cc.apply(METER, &command(20.0)).await.unwrap_err();
    assert!(
        err.to_string().contains("no answer within 2000 ms"),
        "{err}"
    );
    assert_eq!(Instant::now() - asked, super::DEFAULT_APPLY_TIMEOUT);
    let asked = Instant::now();
    cc.shutdown(Duration::from_secs(1)).await;
    let took = Instant::now() - asked;
    assert!(
        took <= Duration::from_secs(1) + super::loops::SHUTDOWN_MARGIN,
        "shutdown took {took:?}"
    );
}

/// A restart mid-timeslot: before dispatch's first word the loop only reads, so the
/// command dispatch re-applies does not follow a pass through normal operation; without any
/// word it hands the battery back itself once `STARTUP_HOLD` is over.
#[tokio::test(start_paused = true)]
async fn at_start_the_loop_waits_for_dispatch_before_releasing() {
    let (cc, st) = start(60);
    sleep(Duration::from_secs(1)).await;
    assert!(
        st.lock().unwrap().releases().is_empty(),
        "released before dispatch spoke"
    );
    cc.apply(METER, &command(10.0)).await.unwrap();
    assert!(st.lock().unwrap().releases().is_empty());
    assert!(st.lock().unwrap().remote());
    let (_idle, st2) = start(60);
    sleep(crate::control::meter_loop::STARTUP_HOLD + Duration::from_secs(2)).await;
    assert!(!st2.lock().unwrap().releases().is_empty(), "never released");
}

/// A release asked of a battery already handed back is done, even while its readings
/// fail: dispatch's `release` row must not say the device did not take it.
#[tokio::test(start_paused = true)]
async fn releasing_a_battery_already_handed_back_succeeds_while_reads_fail() {
    let (cc, st) = start(60);
    cc.apply(METER, &command(10.0)).await.unwrap();
    cc.release(METER).await.unwrap();
    st.lock().unwrap().down = true;
    sleep(Duration::from_secs(3)).await;
    cc.release(METER).await.expect("already released");
    let m = cc.status().meter(METER).unwrap();
    assert!(m.consecutive_errors > 0, "the failing reads no longer show");
}

/// What limited one event's setpoint is not shown (or audited as `limited`) for the next:
/// here the next event's readings fail, so nothing has been decided for it.
#[tokio::test(start_paused = true)]
async fn a_new_event_does_not_inherit_the_last_decision_or_blindness() {
    let (cc, st) = start(60);
    cc.apply(METER, &command(10.0)).await.unwrap();
    sleep(Duration::from_secs(2)).await;
    assert!(cc.status().meter(METER).unwrap().last_decision.is_some());
    st.lock().unwrap().down = true;
    let _ = cc.apply(METER, &command(12.0)).await;
    let m = cc.status().meter(METER).unwrap();
    assert!(m.last_decision.is_none(), "{:?}", m.last_decision);
    assert_eq!(m.blind_total, 1);
    let next = Command::award("ev-2", 10.0, t0() + chrono::Duration::hours(1));
    let _ = cc.apply(METER, &next).await;
    let m = cc.status().meter(METER).unwrap();
    assert_eq!(
        m.blind_total, 2,
        "the next event got no blind row of its own"
    );
}

/// SPEC §2.13 "says why": a refused setpoint hands the battery back with a `refused` row,
/// once (not at every retry), and a `resumed` row when the device takes it again. Before,
/// only the first step's outcome reached dispatch's row; a refusal mid-event left nothing.
#[tokio::test(start_paused = true)]
async fn a_refused_setpoint_is_recorded_once_and_its_end_too() {
    let (cc, st) = start(60);
    cc.apply(METER, &command(10.0)).await.unwrap();
    st.lock().unwrap().refuse = true;
    let _ = cc.apply(METER, &command(12.0)).await;
    sleep(super::meter_loop::REFUSED_RETRY * 3).await;
    st.lock().unwrap().refuse = false;
    sleep(super::meter_loop::REFUSED_RETRY + Duration::from_secs(2)).await;
    let what: Vec<&str> = cc.status().take_events().iter().map(|e| e.what).collect();
    assert_eq!(what, ["refused", "resumed"]);
}

/// A device that answers "busy" to every setpoint (or times out, or whose scale factor went
/// bad) is not refusing: one failure is tried again next period. But meanwhile it holds the
/// last setpoint it took whatever the load does, so a second failure in a row hands the
/// battery back like a refusal, with its row, and the loop resumes when writes are taken.
#[tokio::test(start_paused = true)]
async fn setpoint_writes_failing_twice_in_a_row_hand_the_battery_back() {
    let (cc, st) = start(60);
    cc.apply(METER, &command(10.0)).await.unwrap();
    st.lock().unwrap().busy_writes = true;
    let _ = cc.apply(METER, &command(12.0)).await;
    assert!(st.lock().unwrap().remote(), "one busy answer is retried");
    sleep(Duration::from_millis(1500)).await;
    assert!(!st.lock().unwrap().remote(), "handed back after the second");
    sleep(Duration::from_secs(5)).await;
    assert!(
        !st.lock().unwrap().remote(),
        "not retaken while writes fail"
    );
    st.lock().unwrap().busy_writes = false;
    sleep(super::meter_loop::REFUSED_RETRY + Duration::from_secs(2)).await;
    assert!(st.lock().unwrap().remote(), "taken again");
    let events = cc.status().take_events();
    let what: Vec<&str> = events.iter().map(|e| e.what).collect();
    assert_eq!(what, ["refused", "resumed"]);
    assert!(
        events[0]
            .detail
            .contains("did not take the setpoint 2 times in a row"),
        "{}",
        events[0].detail
    );
}

/// The refusal belongs to its event: the next event refused too gets its own row, and
/// one that is taken gets no `resumed` row for the event before it.
#[tokio::test(start_paused = true)]
async fn a_refusal_does_not_carry_over_to_the_next_event() {
    let (cc, st) = start(60);
    st.lock().unwrap().refuse = true;
    let _ = cc.apply(METER, &command(10.0)).await;
    let next = Command::award("ev-2", 10.0, t0() + chrono::Duration::hours(1));
    let _ = cc.apply(METER, &next).await;
    st.lock().unwrap().refuse = false;
    let third = Command::award("ev-3", 10.0, t0() + chrono::Duration::hours(1));
    cc.apply(METER, &third).await.unwrap();
    let seen: Vec<(String, &str)> = cc
        .status()
        .take_events()
        .iter()
        .map(|e| (e.event_id.clone(), e.what))
        .collect();
    assert_eq!(
        seen,
        [
            ("ev-1".to_string(), "refused"),
            ("ev-2".to_string(), "refused")
        ]
    );
}

/// A refused setpoint whose hand-back fails too: the hand-back is tried again every period,
/// not only when the setpoint is retried 30 s later. Until then the battery holds the last
/// setpoint it accepted whatever the load does (on a Victron, with no reversion, for good).
#[tokio::test(start_paused = true)]
async fn a_failed_hand_back_after_a_refusal_is_retried_every_period() {
    let (cc, st) = start(60);
    cc.apply(METER, &command(10.0)).await.unwrap();
    {
        let mut s = st.lock().unwrap();
        s.refuse = true;
        s.refuse_release = true;
    }
    let _ = cc.apply(METER, &command(12.0)).await;
    assert!(st.lock().unwrap().remote(), "the release was refused");
    st.lock().unwrap().refuse_release = false;
    sleep(Duration::from_secs(3)).await;
    assert!(
        !st.lock().unwrap().remote(),
        "still under remote control 3 s after the device took releases again"
    );
    let events = cc.status().take_events();
    let refused = events.iter().find(|e| e.what == "refused").expect("row");
    assert!(
        refused.detail.contains("hand-back failed too"),
        "{}",
        refused.detail
    );
}

/// A command whose first step finds the readings untrusted hands the battery back instead:
/// dispatch is told it was not applied (its audit row said `apply ok` before), and once
/// the readings are back the loop follows it by itself.
#[tokio::test(start_paused = true)]
async fn a_command_handed_back_at_its_first_step_is_not_reported_applied() {
    let (cc, st) = start(60);
    st.lock().unwrap().no_grid = true;
    let e = cc
        .apply(METER, &command(10.0))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not applied") && e.contains("site-meter"), "{e}");
    assert!(!st.lock().unwrap().remote());
    st.lock().unwrap().no_grid = false;
    sleep(Duration::from_secs(3)).await;
    assert!(
        st.lock().unwrap().remote(),
        "followed once readings returned"
    );
}

#[tokio::test(start_paused = true)]
async fn a_device_back_from_an_outage_whose_hand_back_failed_is_commanded_at_once() {
    // A long reversion: the refresh alone would come ~5 minutes after the last write.
    let (cc, st) = start(600);
    cc.apply(METER, &command(10.0)).await.unwrap();
    sleep(Duration::from_secs(3)).await;
    // The inverter reboots: reads and the hand-back fail, and it comes back in its own mode.
    st.lock().unwrap().down = true;
    sleep(Duration::from_secs(5)).await;
    {
        let mut s = st.lock().unwrap();
        s.down = false;
        s.remote_until = None;
        s.battery_kw = 0.0;
    }
    let back = Instant::now();
    sleep(Duration::from_secs(3)).await;
    let s = st.lock().unwrap();
    let after: Vec<_> = s.writes().into_iter().filter(|(t, _)| *t >= back).collect();
    assert!(
        after
            .first()
            .is_some_and(|(t, kw)| *kw == 10.0 && *t - back <= Duration::from_secs(1)),
        "the setpoint was not written again within a period of the device's return: {after:?}"
    );
    assert!(s.remote(), "the battery is not under the command again");
}
