//! `leap-edge release` (issue 9): the real binary hands a battery left under remote
//! control back to normal operation over Modbus TCP with no daemon running, and the
//! systemd unit runs it after every stop.

use crate::common;
use crate::device_common;

use leap_edge::sim::{MeterFault, Mode};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_hands_a_battery_left_under_remote_control_back() {
    released_by_the_cli(None, common::KEY, "").await;
}

/// Under systemd the daemon keeps the configuration it ran with in its runtime folder;
/// the unit's release after a crash uses it, so a file on disk broken (or whose devices
/// were edited) since still hands back the batteries the daemon drove. Before, a syntax
/// error in the file left the battery on the dead daemon's setpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_after_a_crash_uses_the_configuration_the_daemon_ran_with() {
    let stderr = released_by_the_cli(None, common::KEY, BREAK_THE_FILE).await;
    assert!(
        stderr.contains("the configuration the daemon ran with"),
        "{stderr}"
    );
}

/// Marks a run whose file on disk is broken after the daemon kept its snapshot.
const BREAK_THE_FILE: &str = "<break the file>";

/// A key rotation half done (a new key too short, with a stray space) makes the file
/// invalid for the daemon. The release after a crash must still hand the battery back:
/// it needs only `[devices]`, and says what else is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_works_with_a_config_problem_elsewhere() {
    let stderr = released_by_the_cli(None, "newkey ", "").await;
    assert!(
        stderr.contains("warning") && stderr.contains("auth.keys"),
        "{stderr}"
    );
}

/// SPEC §2.13 with §2.10: the site meter stopped answering (a dead RS-485 meter behind
/// the inverter). The release binds only what hands the battery back, not every reading
/// point, so a fresh `leap-edge release` (the unit's ExecStopPost) still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_works_while_the_site_meter_does_not_answer() {
    released_by_the_cli(Some(MeterFault::Timeout), common::KEY, "").await;
}

/// An upgrade whose new version does not know a key of the file (or a typo) stops the
/// daemon's start with 78; the release after the stop must still hand the battery back
/// (before, it exited 78 on the same parse error, and a device without reversion held its
/// last setpoint). The line is named and ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_works_with_a_key_this_version_does_not_know() {
    let stderr = released_by_the_cli(None, common::KEY, "no_such_key = 1\n").await;
    assert!(
        stderr.contains("unknown field `no_such_key`") && stderr.contains("ignored"),
        "{stderr}"
    );
}

/// Runs `leap-edge release` on a config with `key` and `server_extra` in `[server]`;
/// returns its stderr.
async fn released_by_the_cli(
    meter_fault: Option<MeterFault>,
    key: &str,
    server_extra: &str,
) -> String {
    let sim = device_common::start_sim().await;
    // A daemon killed mid-dispatch left a 10 kW discharge behind.
    let mut b = device_common::battery(sim.local_addr());
    device_common::retry(Duration::from_secs(10), async || b.command(10.0, 600).await)
        .await
        .unwrap();
    assert!(
        device_common::eventually(Duration::from_secs(5), || sim.snapshot().mode
            == Mode::Remote124)
        .await
    );
    drop(b);
    sim.set_meter_fault(meter_fault);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let snapshot = server_extra == BREAK_THE_FILE;
    let server_extra = if snapshot { "" } else { server_extra };
    let text = format!(
        "devices_dir = {devices:?}\n[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}[auth]\nkeys = [\"{key}\"]\n\
         [storage]\npath = {db:?}\n[admin]\nsocket = {sock:?}\n\
         [[meters]]\nid = \"m1\"\ndevice = \"sim\"\n[devices.sim]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nport = {port}\ntimeout_ms = 300\n",
        devices = device_common::devices_dir(),
        port = sim.local_addr().port(),
        db = dir.path().join("leap-edge.db"),
        sock = dir.path().join("admin.sock"),
    );
    let runtime = dir.path().join("run");
    if snapshot {
        // What the daemon kept at start; the file on disk broken since.
        std::fs::create_dir(&runtime).unwrap();
        std::fs::write(&config, "[server\nlisten = ").unwrap();
        let of = std::fs::canonicalize(&config).unwrap();
        // The snapshot names the file it was loaded from.
        let snap = format!("# snapshot of {}\n{text}", of.display());
        std::fs::write(runtime.join("running-config.toml"), snap).unwrap();
    } else {
        std::fs::write(&config, &text).unwrap();
    }
    let run = |config: std::path::PathBuf| {
        let runtime = runtime.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut cmd = std::process::Command::new(common::bin());
                cmd.args(["--config", config.to_str().unwrap(), "release"]);
                if snapshot {
                    cmd.env("RUNTIME_DIRECTORY", &runtime);
                }
                cmd.output().unwrap()
            })
            .await
            .unwrap()
        }
    };
    // A daemon holding the database's run lock (one run by hand while systemd's start was
    // refused): the release leaves its batteries alone.
    let lock = std::fs::File::create(dir.path().join("leap-edge.db.lock")).unwrap();
    lock.lock().unwrap();
    let out = run(config.clone()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing released"), "{stderr}");
    assert_eq!(sim.point(124, "StorCtl_Mod"), Some(3.0));
    drop(lock);
    let out = run(config).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sim: released"), "{stdout}");
    assert_eq!(sim.point(124, "StorCtl_Mod"), Some(0.0));
    assert!(
        device_common::eventually(Duration::from_secs(5), || sim.snapshot().mode
            == Mode::Normal)
        .await
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_unit_releases_every_device_after_any_stop() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/leap-edge.service"),
    )
    .unwrap();
    let line = unit
        .lines()
        .find(|l| l.starts_with("ExecStopPost="))
        .expect("no ExecStopPost= in the unit");
    assert!(line.contains("leap-edge release"), "{line}");
}
