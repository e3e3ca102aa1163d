//! Test helpers around a daemon pointed at the fake: a site with one meter, the CLI, status.

use super::FakeLeap;
use crate::common::{self, Daemon};
use serde_json::Value;
use std::time::Duration;

pub const METER: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";

pub fn site(fake: &FakeLeap, extra: &str) -> String {
    format!(
        "[[meters]]\nid = \"{METER}\"\ndevice = \"bat\"\n[devices.bat]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nport = 9\ntimeout_ms = 200\n{}{extra}\n",
        fake.config()
    )
}

/// The CLI blocks; let the fake keep serving on the other worker meanwhile.
pub fn cli(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    tokio::task::block_in_place(|| d.cli(args))
}

pub fn status(d: &Daemon) -> Value {
    let (code, out, err) = cli(d, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

pub async fn wait_first_poll(d: &Daemon) -> Value {
    let mut s = Value::Null;
    let polled = common::eventually(Duration::from_secs(30), || {
        s = status(d);
        !s["leap"]["backstop"]["last_success"].is_null()
    })
    .await;
    assert!(polled, "no successful poll: {s}\n{}", d.log());
    s
}

pub fn slot(event: &str, start_in_s: i64, extra: Value) -> Value {
    let start = chrono::Utc::now() + chrono::Duration::seconds(start_in_s);
    common::timeslot_json(METER, event, start, 3600, Some(5.0), extra)
}
