//! A log that cannot be written must not stop the daemon (found by the memory soak: the
//! disk under the log filled up and the daemon aborted). Real process, stderr on
//! /dev/full (every write fails with ENOSPC), real HTTPS, real SQLite file.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const M1: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_keeps_acknowledging_when_its_log_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let (path, cert) = common::inproc_config(dir.path(), "leap-edge.db", &[M1], "");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "\nlisten = \"127.0.0.1:0\"",
        &format!("\nlisten = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&path, text).unwrap();
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let mut child = Command::new(common::bin())
        .args(["--config", path.to_str().unwrap(), "run"])
        .stdout(Stdio::from(full()))
        .stderr(Stdio::from(full()))
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the daemon exited when its log could not be written"
        );
        assert!(Instant::now() < deadline, "the daemon never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = common::Client::new(addr, cert);
    let start = chrono::Utc::now() + chrono::Duration::hours(1);
    let slot = common::timeslot_json(M1, "E1", start, 600, Some(5.0), serde_json::json!({}));
    let r = client
        .post(&common::meter_notification(M1, vec![slot]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon exited after logging the notification"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
