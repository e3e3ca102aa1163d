//! Issue 2: receiving Leap's webhooks and keeping them safely, through the real binary,
//! real HTTPS and the real SQLite file.

use crate::common;

use common::*;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

fn find<'a>(events: &'a Value, id: &str) -> &'a Value {
    events["timeslots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["meter_event_id"] == id || t["market_group_event_id"] == id)
        .unwrap_or_else(|| panic!("timeslot {id} not listed: {events:#}"))
}

#[tokio::test]
async fn leap_samples_are_stored_field_for_field() {
    let d = Daemon::start();
    let c = d.client();
    for name in ["leap-sample-meter.json", "leap-sample-group.json"] {
        let r = c.post(&fixture(name)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["status"], "ok");
    }
    let ev = d.events_json();
    assert_eq!(ev["timeslots"].as_array().unwrap().len(), 6);

    // Every field of every timeslot in the samples comes back with Leap's name and value.
    for (name, kind, id_field) in [
        (
            "leap-sample-meter.json",
            "meter_dispatches",
            "meter_event_id",
        ),
        (
            "leap-sample-group.json",
            "group_dispatches",
            "market_group_event_id",
        ),
    ] {
        let sample: Value = serde_json::from_str(&fixture(name)).unwrap();
        for entry in sample[kind].as_array().unwrap() {
            for ts in entry["timeslots"].as_array().unwrap() {
                let got = find(&ev, ts[id_field].as_str().unwrap());
                for (k, v) in ts.as_object().unwrap() {
                    match k.as_str() {
                        "start_time" | "end_time" => {
                            let a =
                                chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
                            let b = chrono::DateTime::parse_from_rfc3339(got[k].as_str().unwrap())
                                .unwrap();
                            assert_eq!(a, b, "{k}");
                        }
                        _ => assert_eq!(&got[k], v, "field {k} of {}", ts[id_field]),
                    }
                }
                if kind == "meter_dispatches" {
                    assert_eq!(got["meter_id"], entry["meter_id"]);
                } else {
                    assert_eq!(got["market_group_id"], entry["market_group_id"]);
                    assert_eq!(got["meter_ids"], entry["meter_ids"]);
                }
                assert_eq!(got["integration_test_notification"], true);
                assert_eq!(got["revisions"], 1);
            }
        }
    }
    // Leap's sample has the same meter twice; the ELRP slot keeps energy_kw null (not absent).
    let elrp = find(&ev, "33cfced0-16f4-4fb7-b72e-5ff939ae541e");
    assert_eq!(elrp["energy_kw"], Value::Null);
    assert_eq!(elrp["energy_kw_absent"], false);
    // Raw notifications are kept, with the credential header stripped.
    let headers: String = d
        .db()
        .query_row("SELECT headers FROM notifications LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        !headers.contains(KEY) && headers.contains("content-type"),
        "{headers}"
    );
}

#[tokio::test]
async fn optional_fields_and_time_formats() {
    // Fixed dates years ahead: beyond the default limits.max_start_ahead_days.
    let d = Daemon::start_with("[limits]\nmax_start_ahead_days = 36500\n");
    let body = json!({
        "integration_test_notification": false,
        "communication_test": true,
        "unknown_top_level": {"ignored": true},
        "meter_dispatches": [{
            "meter_id": "m-1", "partner_reference": "site-7",
            "timeslots": [{
                "meter_event_id": "e-frac", "start_time": "2030-01-01T00:00:00.000Z",
                "end_time": "2030-01-01T01:00:00Z", "cancelled": false, "nomination_kw": 12.5,
                "performance_compensation_cap": "some-new-cap", "priority": 4, "is_voluntary": true,
                "dispatch_event_types": ["5m", "brand-new-type"], "programs": ["NEW-PROGRAM"],
                "is_communication_test": true, "future_field": 1
            }]
        }],
        "group_dispatches": [{
            "market_group_id": "g-1", "meter_ids": ["m-1", "m-2"], "partner_references": ["a", "b"],
            "timeslots": [{"market_group_event_id": "g-e", "start_time": "2030-01-01T00:00:00Z",
                "end_time": "2030-01-01T02:00:00Z", "energy_kw": 30, "priority": 2}]
        }]
    });
    let r = d.client().post(&body.to_string()).await;
    assert_eq!(
        (r.status, r.body["new"].clone()),
        (200, json!(2)),
        "{}",
        r.text
    );
    let ev = d.events_json();
    let m = find(&ev, "e-frac");
    assert_eq!(m["energy_kw"], Value::Null);
    assert_eq!(m["energy_kw_absent"], true);
    assert_eq!(m["nomination_kw"], 12.5);
    assert_eq!(m["performance_compensation_cap"], "some-new-cap");
    assert_eq!(m["dispatch_event_types"], json!(["5m", "brand-new-type"]));
    assert_eq!(m["programs"], json!(["NEW-PROGRAM"]));
    assert_eq!(m["communication_test"], true);
    assert_eq!(m["notification_communication_test"], true);
    assert_eq!(m["partner_reference"], "site-7");
    let g = find(&ev, "g-e");
    assert_eq!(g["partner_references"], json!(["a", "b"]));
    assert_eq!(g["energy_kw"], 30.0);
}

#[tokio::test]
async fn fifty_redeliveries_ten_concurrent_give_one_timeslot() {
    let d = Daemon::start();
    let c = d.client();
    let start = chrono::Utc::now() + chrono::Duration::hours(1);
    let body = meter_notification(
        "m-1",
        vec![timeslot_json(
            "m-1",
            "e-dup",
            start,
            3600,
            Some(5.0),
            json!({}),
        )],
    );
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (c, b) = (c.clone(), body.clone());
        tasks.push(tokio::spawn(async move { c.post(&b).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    for _ in 0..40 {
        assert_eq!(c.post(&body).await.status, 200);
    }
    let ev = d.events_json();
    let t = find(&ev, "e-dup");
    assert_eq!(ev["timeslots"].as_array().unwrap().len(), 1);
    assert_eq!(
        (t["revisions"].clone(), t["duplicates"].clone()),
        (json!(1), json!(49))
    );
    assert_eq!(d.count("notifications"), 50, "every delivery is kept raw");
}

#[tokio::test]
async fn update_keeps_earlier_revision_and_cancel_is_final() {
    let d = Daemon::start();
    let c = d.client();
    let start = chrono::Utc::now() + chrono::Duration::hours(1);
    let v1 = meter_notification(
        "m-1",
        vec![timeslot_json(
            "m-1",
            "e-up",
            start,
            3600,
            Some(5.0),
            json!({}),
        )],
    );
    let v2 = meter_notification(
        "m-1",
        vec![timeslot_json(
            "m-1",
            "e-up",
            start,
            3600,
            Some(8.0),
            json!({}),
        )],
    );
    let v3 = meter_notification(
        "m-1",
        vec![timeslot_json(
            "m-1",
            "e-up",
            start,
            3600,
            Some(8.0),
            json!({"cancelled": true}),
        )],
    );
    assert_eq!(c.post(&v1).await.body["new"], 1);
    assert_eq!(c.post(&v2).await.body["updated"], 1);
    assert_eq!(c.post(&v3).await.body["updated"], 1);
    // Older, un-cancelled retries arrive after the cancellation (SPEC §2.4).
    let r = c.post(&v2).await;
    assert_eq!(r.body["conflict"], 1, "{}", r.text);
    assert_eq!(
        c.post(&v2).await.body["duplicate"],
        1,
        "the same stale retry again is a duplicate"
    );
    let ev = d.cli(&["events", "--json", "--event", "e-up"]).1;
    let ev: Value = serde_json::from_str(&ev).unwrap();
    let t = find(&ev, "e-up");
    assert_eq!(t["status"], "cancelled");
    assert_eq!(t["cancelled"], true);
    assert_eq!(t["cancel_conflict"], true);
    assert_eq!(t["energy_kw"], 8.0);
    let hist = t["revision_history"].as_array().unwrap();
    let kws: Vec<f64> = hist
        .iter()
        .map(|r| r["timeslot"]["energy_kw"]["kw"].as_f64().unwrap())
        .collect();
    assert_eq!(kws, vec![5.0, 8.0, 8.0, 8.0], "{hist:#?}");
    assert_eq!(hist[3]["conflict"], true);
    assert!(d.log().contains("stays cancelled"), "conflict is logged");
    let (_, table, _) = d.cli(&["events"]);
    assert!(table.contains("un-cancel ignored"), "{table}");
}

/// A field read differently from what Leap sent (a priority clamped) is shown by `events`:
/// a `!` on the row and the reason below the table, and `warnings` in `--json`. It used to
/// be visible only deep in one event's revision history.
#[tokio::test]
async fn events_show_what_was_read_differently() {
    let d = Daemon::start();
    let start = chrono::Utc::now() + chrono::Duration::hours(1);
    let body = meter_notification(
        "m-1",
        vec![timeslot_json(
            "m-1",
            "odd-prio",
            start,
            3600,
            Some(5.0),
            json!({"priority": 99}),
        )],
    );
    assert_eq!(d.client().post(&body).await.status, 200);
    let (_, table, _) = d.cli(&["events"]);
    assert!(table.contains("unmapped-meter !"), "{table}");
    assert!(
        table.contains("odd-prio: priority = 99 is outside 1–10; clamped to 10"),
        "{table}"
    );
    let ev: Value = serde_json::from_str(&d.cli(&["events", "--json"]).1).unwrap();
    let t = find(&ev, "odd-prio");
    assert!(
        t["warnings"][0].as_str().unwrap().contains("clamped"),
        "{t}"
    );
}

#[tokio::test]
async fn one_bad_timeslot_does_not_sink_the_rest() {
    let d = Daemon::start();
    let start = chrono::Utc::now() + chrono::Duration::hours(1);
    let body = meter_notification(
        "m-1",
        vec![
            timeslot_json("m-1", "good", start, 3600, Some(5.0), json!({})),
            timeslot_json("m-1", "backwards", start, -60, Some(5.0), json!({})),
            json!({"start_time": "2030-01-01T00:00:00Z", "end_time": "2030-01-01T01:00:00Z"}),
        ],
    );
    let r = d.client().post(&body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (r.body["new"].clone(), r.body["rejected"].clone()),
        (json!(1), json!(2))
    );
    let ev = d.events_json();
    assert_eq!(ev["timeslots"].as_array().unwrap().len(), 1);
    let reasons: Vec<&str> = ev["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("is not after start_time")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("missing meter_event_id")),
        "{reasons:?}"
    );
    let (_, table, _) = d.cli(&["events"]);
    assert!(table.contains("Rejected timeslots"), "{table}");
    // Issue 16: each rejection counts under its reason's fixed label, not the words.
    let m = crate::common::local_get(d.metrics_addr, "/metrics")
        .await
        .text;
    for label in ["end_not_after_start", "missing_event_id"] {
        let line = format!("leap_edge_timeslots_rejected_total{{reason=\"{label}\"}} 1\n");
        assert!(m.contains(&line), "{line}{m}");
    }
}

/// SPEC §2.2: Leap's guide names no media type, so a notification sent without one, or
/// as plain text, is read (and refused 400 only if it is not JSON); it was refused 415,
/// and every retry for 50 minutes with it.
#[tokio::test]
async fn a_notification_without_a_json_content_type_is_read() {
    let d = Daemon::start();
    let c = d.client();
    let start = chrono::Utc::now() + chrono::Duration::hours(1);
    for (n, ct) in [
        None,
        Some("text/plain; charset=utf-8"),
        Some("application/octet-stream"),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("untyped-{n}");
        let body = meter_notification(
            "m-1",
            vec![timeslot_json("m-1", &id, start, 3600, Some(5.0), json!({}))],
        );
        let mut headers = vec![("x-api-key", KEY)];
        headers.extend(ct.map(|ct| ("content-type", ct)));
        let r = c.request("POST", PATH, &headers, body.into_bytes()).await;
        assert_eq!(r.status, 200, "{ct:?}: {}", r.text);
    }
    let r = c
        .request("POST", PATH, &[("x-api-key", KEY)], b"{not json".to_vec())
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
}

#[tokio::test]
async fn bad_requests_get_their_status_and_change_nothing() {
    let d = Daemon::start();
    let c = d.client();
    let good = fixture("leap-sample-meter.json");
    let json_ct = ("content-type", "application/json");
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        (
            "wrong key",
            "POST",
            vec![("x-api-key", "nope-nope-nope"), json_ct],
            good.clone().into_bytes(),
            401,
        ),
        (
            "missing key",
            "POST",
            vec![json_ct],
            good.clone().into_bytes(),
            401,
        ),
        (
            "not JSON",
            "POST",
            vec![("x-api-key", KEY), json_ct],
            b"{not json".to_vec(),
            400,
        ),
        (
            "not a notification",
            "POST",
            vec![("x-api-key", KEY), json_ct],
            br#"{"hello":1}"#.to_vec(),
            400,
        ),
        (
            "wrong type",
            "POST",
            vec![("x-api-key", KEY), json_ct],
            br#"{"meter_dispatches":{}}"#.to_vec(),
            400,
        ),
        (
            "form body",
            "POST",
            vec![
                ("x-api-key", KEY),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            good.clone().into_bytes(),
            415,
        ),
        ("wrong method", "GET", vec![("x-api-key", KEY)], vec![], 405),
        (
            "other path",
            "POST",
            vec![("x-api-key", KEY), json_ct],
            good.clone().into_bytes(),
            404,
        ),
    ];
    let mut unauthorized = Vec::new();
    for (name, method, headers, body, want) in cases {
        let path = if name == "other path" {
            "/elsewhere"
        } else {
            PATH
        };
        let r = c.request(method, path, &headers, body).await;
        assert_eq!(r.status, want, "{name}: {}", r.text);
        if want == 401 {
            unauthorized.push(r.text);
        }
    }
    assert_eq!(
        unauthorized[0], unauthorized[1],
        "missing and wrong keys look the same"
    );
    // Over 1 MiB: announced by content-length (refused before upload) and unannounced (chunked).
    let mut s = raw_tls(d.addr, d.cert_der.clone()).await;
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\ncontent-length: 1048577\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let mut s = raw_tls(d.addr, d.cert_der.clone()).await;
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 512 * 1024, " ".repeat(512 * 1024));
    let mut answer = Vec::new();
    for _ in 0..3 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut answer),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A slow client: headers that never finish are cut off by the read timeout.
    let mut s = raw_tls(d.addr, d.cert_der.clone()).await;
    s.write_all(b"POST /leap/dispatch HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
    )
    .await;
    assert!(read.is_ok(), "slow client was not disconnected");
    // A slow body: headers complete, body never does → 408.
    let mut s = raw_tls(d.addr, d.cert_der.clone()).await;
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
    )
    .await;
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(d.count("notifications"), 0);
    assert_eq!(d.count("timeslots"), 0);
    assert_eq!(d.count("rejected_timeslots"), 0);
    // The daemon still serves after all that.
    assert_eq!(c.post(&good).await.status, 200);
}

#[tokio::test]
async fn acked_notification_survives_sigkill() {
    let mut d = Daemon::start();
    let r = d.client().post(&fixture("leap-sample-group.json")).await;
    assert_eq!(r.status, 200);
    d.kill9();
    let ev = d.events_json();
    assert_eq!(
        ev["timeslots"].as_array().unwrap().len(),
        3,
        "acked data lost after SIGKILL"
    );
    d.spawn();
    let r = d.client().post(&fixture("leap-sample-group.json")).await;
    assert_eq!(r.body["duplicate"], 3, "{}", r.text);
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let mut d = Daemon::start();
    assert_eq!(
        d.client()
            .post(&fixture("leap-sample-meter.json"))
            .await
            .status,
        200
    );
    assert!(d.terminate(), "exit status after SIGTERM");
    assert!(d.log().contains("stopped cleanly"));
}

#[test]
fn config_check_names_the_line_of_a_misspelled_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    write_file(
        &path,
        "[server]\nlisten = \"127.0.0.1:8443\"\n\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\nheadr = \"x-api-key\"\n",
    );
    let out = std::process::Command::new(bin())
        .args(["--config", path.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("bad.toml:6:"), "{err}");
    assert!(err.contains("did you mean `header`"), "{err}");
    // Plain HTTP on a public address is refused by the semantic check.
    write_file(
        &path,
        "[server]\nlisten = \"0.0.0.0:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n",
    );
    let out = std::process::Command::new(bin())
        .args(["--config", path.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}

#[test]
fn repository_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let out = std::process::Command::new(bin())
        .args(["--config", path.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
