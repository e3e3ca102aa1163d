//! Issue 13, the partner-side commands: the real `leap-edge` binary (daemon and CLI)
//! against the local fake of Leap's API (tests/fake_leap): webhook registration with its
//! refusal rules, the integration-test round trip through the real HTTPS daemon, errors
//! and timeouts, and `config check` of `[leap]`/`[schedule]`.

use crate::common;
use crate::fake_leap;

use common::{Daemon, KEY};
use fake_leap::site::{METER, cli, site};
use fake_leap::{API_KEY, FakeLeap};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_show_set_delete_bodies_headers_and_refusal() {
    let fake = FakeLeap::start().await;
    let d = Daemon::start_with(&fake.config());
    let (code, out, err) = cli(&d, &["leap", "webhook", "show"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no webhook registered"), "{out}");

    let url = "https://edge.example.com/leap/dispatch";
    let (code, out, err) = cli(&d, &["leap", "webhook", "set", "--url", url]);
    assert_eq!(code, 0, "{out}{err}");
    let puts = fake.requests("/v2/dispatch/meter/webhook");
    let put = puts.iter().find(|r| r.method == "PUT").expect("a PUT");
    assert_eq!(
        put.body,
        json!({"url": url, "headers": [{"name": "x-api-key", "value": KEY}]})
    );
    assert_eq!(put.headers["authorization"], format!("Bearer {API_KEY}"));
    assert_eq!(put.headers["content-type"], "application/json");
    assert!(!out.contains(KEY), "the key must never be printed: {out}");

    // One URL per account: replacing asks, and without a terminal or --yes it refuses.
    let other = "https://other.example.com/leap/dispatch";
    let (code, out, err) = cli(&d, &["leap", "webhook", "set", "--url", other]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("refusing without a terminal") && err.contains("--yes"),
        "{err}"
    );
    assert!(out.contains(url), "shows the current one first: {out}");
    assert_eq!(fake.state.lock().unwrap().hooks["meter"]["url"], url);
    let (code, _, err) = cli(&d, &["leap", "webhook", "set", "--url", other, "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fake.state.lock().unwrap().hooks["meter"]["url"], other);

    let (code, out, _) = cli(&d, &["leap", "webhook", "show", "--json"]);
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        shown["headers"][0],
        json!({"name": "x-api-key", "value": "MASKED", "matches": "auth.keys[0]"})
    );

    let (code, _, err) = cli(&d, &["leap", "webhook", "delete"]);
    assert_eq!(code, 2, "{err}");
    assert!(fake.state.lock().unwrap().hooks.contains_key("meter"));
    let (code, _, err) = cli(&d, &["leap", "webhook", "delete", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        fake.requests("/webhook")
            .iter()
            .any(|r| r.method == "DELETE")
    );
    assert!(!fake.state.lock().unwrap().hooks.contains_key("meter"));

    let (code, _, err) = cli(&d, &["leap", "webhook", "set", "--group", "--url", url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fake.state.lock().unwrap().hooks["group"]["url"], url);
    assert!(!err.contains("warning"), "the path is [server] path: {err}");

    // --json prints one JSON document; what is for the reader goes to stderr. A URL whose
    // path is not [server] path is accepted (a relay may map it) with a warning.
    let no_path = "https://edge.example.com";
    let (code, out, err) = cli(
        &d,
        &[
            "leap", "webhook", "set", "--group", "--url", no_path, "--yes", "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let set: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(set["url"], no_path, "{set}");
    assert!(
        err.contains("warning") && err.contains("is not [server] path"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_api_key_is_a_clear_error_and_not_retried() {
    let fake = FakeLeap::start().await;
    let cfg = fake.config().replace(API_KEY, "not-the-partner-key");
    let d = Daemon::start_with(&cfg);
    let before = fake.requests("/webhook").len();
    let (code, _, err) = cli(&d, &["leap", "webhook", "show"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("401 UNAUTHORIZED (DISPATCH_UNAUTHORIZED)") && err.contains("api_key"),
        "{err}"
    );
    assert_eq!(
        fake.requests("/webhook").len(),
        before + 1,
        "a 401 is final"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leap_test_round_trip_through_the_daemon() {
    let fake = FakeLeap::start().await;
    let d = Daemon::start_with(&site(&fake, ""));
    fake.state.lock().unwrap().daemon_cert = Some(d.cert_der.clone());
    let url = format!("https://127.0.0.1:{}{}", d.addr.port(), common::PATH);
    assert_eq!(cli(&d, &["leap", "webhook", "set", "--url", &url]).0, 0);

    let (code, out, err) = cli(&d, &["leap", "test", "--json", "--in", "2m", "--kw", "5"]);
    assert_eq!(code, 0, "{out}{err}");
    // Whether the test moves the battery is said before it is sent (the site's policy).
    assert!(err.contains("note: [policy] integration_test = "), "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["leap"]["http_status"], 200, "{r}");
    assert!(
        r["leap"]["body"]
            .as_str()
            .unwrap()
            .contains("\"status\":\"ok\""),
        "{r}"
    );
    assert_eq!(r["stored"][0]["source"], "push", "{r}");
    assert_eq!(r["stored"][0]["integration_test"], true, "{r}");
    let sent = &fake.requests("integration_test")[0].body;
    assert_eq!(sent["meter_dispatches"][0]["meter_id"], METER);
    assert_eq!(
        sent["meter_dispatches"][0]["timeslots"][0]["energy_kw"],
        5.0
    );

    // A webhook registered with a key the daemon does not accept: Leap reports the 401 and
    // nothing is stored; the command says so and fails.
    fake.state.lock().unwrap().hooks.get_mut("meter").unwrap()["headers"][0]["value"] =
        json!("wrong-key-123");
    let (code, out, _) = cli(&d, &["leap", "test"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("HTTP status from leap-edge: 401") && out.contains("NOT STORED"),
        "{out}"
    );

    // Leap delivered, but this technician cannot read the database: say that, not
    // "NOT STORED … check the URL and key".
    fake.state.lock().unwrap().hooks.get_mut("meter").unwrap()["headers"][0]["value"] =
        json!(common::KEY);
    let text = std::fs::read_to_string(d.config_path()).unwrap();
    let elsewhere = d.dir.path().join("unreadable-db.toml");
    std::fs::write(
        &elsewhere,
        text.replace("leap-edge.db", "no-such-folder/leap-edge.db"),
    )
    .unwrap();
    let (code, out, err) =
        tokio::task::block_in_place(|| common::cli_with(&elsewhere, &["leap", "test"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("got HTTP 200") && err.contains("cannot be read here"),
        "{out}{err}"
    );
    assert!(!out.contains("NOT STORED"), "{out}");
}

#[test]
fn config_check_names_a_bad_schedule_and_a_too_frequent_poll() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = common::inproc_config(
        dir.path(),
        "x.db",
        &[],
        "[schedule]\nprune = \"every night\"\npoll = \"*/10 * * * * *\"\n[leap]\nbase_url = \"http://api.leap.energy\"\n",
    );
    let out = std::process::Command::new(common::bin())
        .args(["--config", path.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("schedule.prune = \"every night\" is not a cron expression"),
        "{err}"
    );
    assert!(
        err.contains("schedule.poll") && err.contains("once a minute"),
        "{err}"
    );
    assert!(
        err.contains("leap.base_url") && err.contains("loopback"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_leap_times_out_each_attempt_and_says_so() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let cfg = format!(
        "[leap]\napi_key = \"{API_KEY}\"\nbase_url = \"http://{addr}\"\ntimeout_secs = 1\nretries = 1\nretry_base_ms = 10\n"
    );
    let d = Daemon::start_with(&cfg);
    let t0 = Instant::now();
    let (code, _, err) = cli(&d, &["leap", "webhook", "show"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("could not be reached") && err.contains("no complete answer within 1s"),
        "{err}"
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "two attempts of 1 s each"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
}
