//! SCENARIOS.md 16 on the real process and the simulated inverter's registers: the daemon
//! SIGKILLed in the middle of a timeslot. Nothing of leap-edge runs any more, so only the
//! device's own reversion timer (written with every command, `reversion_secs`) can hand the
//! battery back to normal. Then what a technician or systemd does next: started again, it
//! takes the battery for the rest of the timeslot (scenario 15); stopped with SIGTERM, it
//! hands it back itself (SPEC §2.10), without waiting for the timer.

use crate::common::{self, Daemon};
use crate::device_common;
use chrono::{Duration as Span, Utc};
use leap_edge::sim::{Mode, SimHandle, SimOptions};
use serde_json::json;
use std::time::{Duration, Instant};

const M1: &str = "5a0b6a51-3f0e-4f55-9d1f-9b1a5f4c2e16";
/// The smallest the config accepts: refreshed every 2 s, reverted 4 s after the last write.
const REVERSION_SECS: u64 = 4;

fn config(sim: &SimHandle) -> String {
    format!(
        "[site]\ncontrol_period_ms = 500\n\
         [[meters]]\nid = \"{M1}\"\ndevice = \"inverter\"\n\
         [devices.inverter]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         reversion_secs = {REVERSION_SECS}\n",
        port = sim.local_addr().port()
    )
}

fn controlled(sim: &SimHandle) -> bool {
    sim.snapshot().mode != Mode::Normal
}

/// Blocking harness calls (spawn, wait for the log line, kill) off the runtime's workers,
/// so the simulator in this process keeps answering meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn killed_then_reverted_by_the_device(opts: SimOptions) {
    let sim = device_common::start_sim_with(device_common::sim_cfg(), opts).await;
    let extra = config(&sim);
    let mut d = blocking(|| Daemon::start_with(&extra));

    let start = Utc::now() + Span::seconds(2);
    let slot = common::timeslot_json(M1, "kill-mid-1", start, 60, Some(10.0), json!({}));
    let r = d
        .client()
        .post(&common::meter_notification(M1, vec![slot]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        device_common::eventually(Duration::from_secs(10), || controlled(&sim)).await,
        "the timeslot never took the battery: {:?}\n{}",
        sim.snapshot(),
        d.log()
    );
    // Past a refresh, so the kill lands between two writes of a running command.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(controlled(&sim));
    let before = sim.snapshot();
    assert_eq!(before.reversions, 0, "reverted while the daemon ran");

    blocking(|| d.kill9());
    let killed = Instant::now();
    let writes = sim.snapshot().writes;
    // The last write was at most half the reversion time before the kill; the slack is for
    // a busy machine, the exact timing is the simulator's own (`sim/physics.rs`).
    let limit = Duration::from_secs(REVERSION_SECS + 3);
    let reverted = device_common::eventually(limit, || !controlled(&sim)).await;
    let reverted_after = killed.elapsed();
    let after = sim.snapshot();
    assert!(
        reverted,
        "still under remote control {reverted_after:?} after the kill: {after:?}"
    );
    assert_eq!(after.reversions, 1, "reverted by its own timer: {after:?}");
    assert_eq!(after.writes, writes, "something wrote after the kill");

    // Restarted mid-timeslot: the command is applied again at once.
    blocking(|| d.spawn());
    let restarted = Instant::now();
    assert!(
        device_common::eventually(Duration::from_secs(5), || controlled(&sim)).await,
        "not taken again after the restart:\n{}",
        d.log()
    );
    eprintln!(
        "KILL: reverted by the device {reverted_after:?} after SIGKILL; taken again {:?} after the restart",
        restarted.elapsed()
    );

    // SIGTERM: handed back by the daemon itself (the dispatcher's audited release, then each
    // control loop's stop as a second line), not by the timer.
    assert!(blocking(|| d.terminate()), "SIGTERM exit was not 0");
    // Within one simulator tick (100 ms): the release was written before the exit.
    let released =
        device_common::eventually(Duration::from_millis(300), || !controlled(&sim)).await;
    let last = sim.snapshot();
    assert!(released, "not handed back at stop: {last:?}\n{}", d.log());
    assert_eq!(last.reversions, 1, "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_killed_the_device_reverts_by_itself_then_restart_and_stop() {
    killed_then_reverted_by_the_device(SimOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_killed_the_der_storage_model_704_reverts_too() {
    let opts = SimOptions {
        model_124: false,
        ..SimOptions::default()
    };
    killed_then_reverted_by_the_device(opts).await;
}
