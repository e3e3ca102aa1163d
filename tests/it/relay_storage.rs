//! The relay's outbox unwritable (SPEC §2.1, §2.12): its folder and files made immutable
//! with `chattr +i` (binds root too). Every POST then gets 503 and nothing is acked or
//! queued; `/healthz` says the outbox is not writable; once writable again the same relay
//! acks, and every acked notification reaches the gateway.
//! Needs root and a filesystem with immutable files: `.ci/run` runs it with `--ignored`.

use crate::relay_support;

use relay_support::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(paths: &[PathBuf]) -> Immutable {
        for p in paths {
            let out = Command::new("chattr")
                .arg("+i")
                .arg(p)
                .output()
                .expect("run chattr");
            assert!(
                out.status.success(),
                "chattr +i {}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Immutable(paths.to_vec())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(p).status();
        }
    }
}

#[test]
#[ignore = "needs root and chattr on ext4/xfs/btrfs (.ci/run runs it)"]
fn unwritable_outbox_answers_503_acks_nothing_and_recovers_without_restart() {
    let g = Gateway::start();
    let relay = Relay::start(&[GatewaySpec {
        name: "site",
        url: g.url(),
        meters: vec!["M1"],
    }]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = relay.client();
    let note = |id: &str| json!({"meter_dispatches": [meter_entry("M1", &[id])]}).to_string();
    let ok = rt
        .block_on(client.post(RELAY_KEY, "application/json", &note("before")))
        .unwrap();
    assert_eq!(ok.0, 200, "{ok:?}");
    let dir = relay.p.dir.path();
    let frozen = Immutable::set(&[
        dir.join("relay.db"),
        dir.join("relay.db-wal"),
        dir.to_path_buf(),
    ]);
    for i in 0..3 {
        let r = rt
            .block_on(client.post(RELAY_KEY, "application/json", &note(&format!("frozen-{i}"))))
            .unwrap();
        assert_eq!(r.0, 503, "an unwritable outbox must not be acked: {r:?}");
        assert!(r.1.contains("storage unavailable"), "{r:?}");
    }
    let (code, body) = http(relay.metrics_addr, "GET", "/healthz", &[], "");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("outbox not writable"), "{body}");
    drop(frozen);
    let r = rt
        .block_on(client.post(RELAY_KEY, "application/json", &note("after")))
        .unwrap();
    assert_eq!(r.0, 200, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while g.event_ids() != ["after", "before"] {
        assert!(Instant::now() < deadline, "gateway has {:?}", g.event_ids());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(relay.status()["notifications"], 2);
    assert_eq!(http(relay.metrics_addr, "GET", "/healthz", &[], "").0, 200);
}

/// Issue 10.4 for the relay: an outbox folder it cannot write stops the start with exit 78
/// (no restart loop) naming the path, also now that the run lock is taken first.
#[test]
#[ignore = "needs root and chattr on ext4/xfs/btrfs (.ci/run runs it)"]
fn an_outbox_folder_it_cannot_write_stops_the_start_with_exit_78() {
    let g = Gateway::start();
    let mut relay = Relay::start(&[GatewaySpec {
        name: "site",
        url: g.url(),
        meters: vec!["M1"],
    }]);
    relay.p.kill9();
    let dir = relay.p.dir.path().to_path_buf();
    let files = [dir.join("relay.db"), dir.join("relay.db.lock"), dir.clone()];
    let _frozen = Immutable::set(&files);
    let (code, _, err) = relay.p.cli(&["relay", "run"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("relay.db.lock"), "{err}");
    assert!(err.contains("check storage.path"), "{err}");
}
