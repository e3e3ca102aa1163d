//! The relay's MQTT transport against a real Mosquitto (Debian's `mosquitto`) started by
//! each test on a loopback port with its own configuration, persistence and the shipped ACL
//! (`packaging/mosquitto/leap-edge.acl`): relay in process, gateways as real daemons.
//! `.ci/run` installs mosquitto and runs these with `--ignored`.

use crate::common;
use crate::mqtt_support;

use common::{Daemon, meter_notification, timeslot_json};
use mqtt_support::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn a_mixed_notification_reaches_each_of_three_gateways_once() {
    let broker = Broker::start(&["leap-edge-relay", "site-a", "site-b", "site-c"]);
    let gws: Vec<Daemon> = ["site-a", "site-b", "site-c"]
        .iter()
        .map(|n| gateway(&broker, n))
        .collect();
    let relay = relay(
        &broker,
        &[
            ("site-a", "meter-a"),
            ("site-b", "meter-b"),
            ("site-c", "meter-c"),
        ],
    )
    .await;
    let r = relay
        .post(&notification(&[
            ("meter-a", "ev-a"),
            ("meter-b", "ev-b"),
            ("meter-c", "ev-c"),
        ]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body["mqtt_published"], true,
        "PUBACKs before the answer: {}",
        r.text
    );
    for (d, ev) in gws.iter().zip(["ev-a", "ev-b", "ev-c"]) {
        wait_for(ev, || !stored(d).is_empty());
    }
    // Give a stray duplicate time to arrive before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (d, ev) in gws.iter().zip(["ev-a", "ev-b", "ev-c"]) {
        assert_eq!(stored(d), once(&[ev]));
        assert_eq!(d.count("notifications"), 1);
    }
    // A group dispatch far above rumqttc's default 10 KiB packet limit still arrives.
    let start = chrono::Utc::now() + chrono::Duration::hours(3);
    let mut meters: Vec<String> = (0..1000).map(|i| format!("meter-x-{i:05}")).collect();
    meters.push("meter-b".into());
    let mut slot = timeslot_json("", "big", start, 900, Some(9.0), json!({}));
    let id = slot
        .as_object_mut()
        .unwrap()
        .remove("meter_event_id")
        .unwrap();
    slot["market_group_event_id"] = id;
    let big = json!({"integration_test_notification": false, "communication_test": false,
        "group_dispatches": [{"market_group_id": "g", "meter_ids": meters, "timeslots": [slot]}]})
    .to_string();
    assert!(big.len() > 16 * 1024);
    let r = relay.post(&big).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["mqtt_published"], true, "{}", r.text);
    wait_for("the big group dispatch", || stored(&gws[1]).len() == 2);
    // relay status: every gateway online, with the time of its last status.
    let online: i64 = relay
        .db()
        .query_row(
            "SELECT COUNT(*) FROM relay_mqtt_status WHERE online = 1 AND received_at IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(online, 3);
    relay.running.stop().await;
}

/// The broker over TLS (rustls with ring, trusting only the broker's certificate), both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn relay_and_gateway_reach_the_broker_over_tls() {
    let broker = Broker::start_with(&["leap-edge-relay", "site-a"], true);
    let gw = gateway(&broker, "site-a");
    let relay = relay(&broker, &[("site-a", "meter-a")]).await;
    let r = relay.post(&notification(&[("meter-a", "ev-tls")])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["mqtt_published"], true, "{}", r.text);
    wait_for("ev-tls", || !stored(&gw).is_empty());
    assert_eq!(stored(&gw), once(&["ev-tls"]));
    relay.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn an_offline_gateway_gets_all_three_in_order_when_back() {
    let broker = Broker::start(&["leap-edge-relay", "site-a"]);
    let mut gw = gateway(&broker, "site-a");
    let relay = relay(&broker, &[("site-a", "meter-a")]).await;
    assert!(gw.terminate(), "gateway stops cleanly");
    for ev in ["ev-1", "ev-2", "ev-3"] {
        let r = relay.post(&notification(&[("meter-a", ev)])).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            r.body["mqtt_published"], true,
            "the broker queues for the session: {}",
            r.text
        );
    }
    wait_for("relay sees site-a offline", || {
        relay
            .db()
            .query_row(
                "SELECT online FROM relay_mqtt_status WHERE gateway = 'site-a'",
                [],
                |r| r.get::<_, bool>(0),
            )
            .is_ok_and(|online| !online)
    });
    let status = relay.status_json();
    let a = &status["gateways"][0];
    assert_eq!(a["name"], "site-a");
    assert_eq!(a["mqtt"]["online"], false, "{status}");
    assert!(a["mqtt"]["last_status_at"].is_string(), "{status}");
    assert!(stored(&gw).is_empty());
    gw.spawn();
    wait_for("three timeslots", || stored(&gw).len() == 3);
    assert_eq!(stored(&gw), once(&["ev-1", "ev-2", "ev-3"]));
    let bodies: Vec<String> = {
        let db = gw.db();
        let mut s = db
            .prepare("SELECT body FROM notifications ORDER BY id")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let order: Vec<&str> = bodies
        .iter()
        .map(|b| {
            ["ev-1", "ev-2", "ev-3"]
                .into_iter()
                .find(|e| b.contains(e))
                .unwrap()
        })
        .collect();
    assert_eq!(order, ["ev-1", "ev-2", "ev-3"], "in publication order");
    relay.running.stop().await;
}

/// A gateway back after an outage reads a burst of queued messages faster than its MQTT
/// event loop takes requests. Every committed message must still be acknowledged: an ack
/// dropped for want of room meant a redelivery at each later reconnect (a stored raw copy
/// and a duplicate each time, and an older revision re-applied for a moment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn a_burst_after_an_outage_is_acknowledged_in_full() {
    const N: usize = 150;
    let broker = Broker::start(&["leap-edge-relay", "site-a"]);
    let mut gw = gateway(&broker, "site-a");
    let relay = relay(&broker, &[("site-a", "meter-a")]).await;
    assert!(gw.terminate(), "gateway stops cleanly");
    let events: Vec<String> = (0..N).map(|i| format!("burst-{i:03}")).collect();
    for ev in &events {
        let r = relay.post(&notification(&[("meter-a", ev)])).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    gw.spawn();
    wait_for("every queued message stored", || stored(&gw).len() == N);
    // Reconnect: whatever was not acknowledged comes again now.
    assert!(gw.terminate());
    gw.spawn();
    wait_log(&gw, "mqtt uplink connected", 3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = stored(&gw);
    assert_eq!(all.len(), N);
    let twice: Vec<_> = all
        .iter()
        .filter(|(_, rev, dup)| *rev != 1 || *dup != 0)
        .collect();
    assert!(twice.is_empty(), "{} came again: {twice:?}", twice.len());
    assert_eq!(gw.count("notifications"), N as i64);
    relay.running.stop().await;
}

/// A part larger than the broker takes must not cost the other gateways their link: handed
/// to the client, it failed the relay's one connection, which came back, republished the
/// same part and failed again. It waits in the outbox with an error naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn a_part_over_the_brokers_packet_limit_leaves_the_link_to_the_others() {
    let broker = Broker::start_configured(
        &["leap-edge-relay", "site-a", "site-b"],
        false,
        "max_packet_size 4096\n",
    );
    let gw_b = gateway(&broker, "site-b");
    let relay = relay(&broker, &[("site-a", "meter-a"), ("site-b", "meter-b")]).await;
    let big = quarter_hours("meter-a", "big", 40);
    assert!(big.len() > 8_000, "{}", big.len());
    let r = relay.post(&big).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = relay.post(&notification(&[("meter-b", "small-b")])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait_for("site-b has its dispatch", || stored(&gw_b).len() == 1);
    wait_for("the big part's error is recorded", || {
        relay
            .db()
            .query_row(
                "SELECT last_error FROM relay_deliveries WHERE gateway = 'site-a'",
                [],
                |r| r.get::<_, Option<String>>(0),
            )
            .ok()
            .flatten()
            .is_some_and(|e| e.contains("maximum packet size is 4096"))
    });
    let (_, metrics) = http_get(relay.running.metrics_addr, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "leap_edge_relay_mqtt_connections_total 1"),
        "the link broke: {metrics}"
    );
    relay.running.stop().await;
}

/// A gateway whose username is not its client id, under the shipped ACL (topics by
/// username): Mosquitto grants its subscription and then drops every dispatch on delivery,
/// so the relay counts them delivered. The refused status publish is the sign the gateway
/// gets; `status` now shows it. Before, the gateway said "connected" and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn a_gateway_the_acl_does_not_cover_says_so_in_status() {
    let broker = Broker::start(&["leap-edge-relay", "site-a"]);
    let config =
        uplink(&broker, "site-a").replace("client_id = \"site-a\"", "client_id = \"site_a\"");
    assert!(config.contains("site_a"));
    let gw = Daemon::start_with(&config);
    wait_log(&gw, "mqtt uplink connected", 1);
    wait_for("status naming the refused status publish", || {
        status_json(&gw)["uplink"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused the status publish") && e.contains("ACL"))
    });
    let (_, text, _) = gw.cli(&["status", "--wide"]);
    assert!(
        text.contains("MQTT uplink: connected") && text.contains("but the broker refused"),
        "{text}"
    );
}

/// SPEC §2.5/§2.12: a relayed message the gateway cannot store (here over its own
/// `max_body_bytes`) is acknowledged — redelivery cannot fix it — but not silently: the
/// relay had counted it delivered, so the gateway's status, its retained status and
/// `relay status` all show it refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn a_message_the_gateway_refuses_shows_on_both_sides() {
    let broker = Broker::start(&["leap-edge-relay", "site-a"]);
    let gw = Daemon::start_custom("max_body_bytes = 1024\n", &uplink(&broker, "site-a"));
    wait_log(&gw, "mqtt uplink connected", 1);
    let relay = relay(&broker, &[("site-a", "meter-a")]).await;
    let body = quarter_hours("meter-a", "too-big", 6);
    assert!(body.len() > 1024);
    let r = relay.post(&body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait_for("the gateway reports the refusal", || {
        status_json(&gw)["uplink"]["refused"]["total"] == 1
    });
    assert!(stored(&gw).is_empty());
    let up = status_json(&gw);
    assert!(
        up["uplink"]["refused"]["last_error"]
            .as_str()
            .unwrap()
            .contains("max_body_bytes"),
        "{up}"
    );
    let (_, text, _) = gw.cli(&["status"]);
    assert!(text.contains("1 message(s) REFUSED"), "{text}");
    wait_for("relay status shows it", || {
        relay.status_json()["gateways"][0]["mqtt"]["refused_total"] == 1
    });
    let (_, text, _) = relay.status_text();
    assert!(text.contains("REFUSED 1 message(s)"), "{text}");
    relay.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn sigkill_between_receipt_and_commit_means_redelivery_stored_once() {
    let broker = Broker::start(&["leap-edge-relay", "site-a"]);
    let mut gw = gateway(&broker, "site-a");
    let relay = relay(&broker, &[("site-a", "meter-a")]).await;
    gw.kill9();
    // The same gateway, holding every message between receipt and commit.
    let hold = gw.dir.path().join("held");
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(gw.log_path())
        .unwrap();
    let mut held = Command::new(common::bin())
        .args(["--config", gw.config_path().to_str().unwrap(), "run"])
        .env("LEAP_EDGE_TEST_MQTT_HOLD_FILE", &hold)
        .env("LEAP_EDGE_LOG", "info,leap_edge=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let r = relay.post(&notification(&[("meter-a", "ev-k")])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait_for("the held message", || hold.exists());
    held.kill().unwrap(); // SIGKILL
    held.wait().unwrap();
    assert!(stored(&gw).is_empty(), "nothing committed before the kill");
    gw.spawn();
    wait_for("redelivery", || !stored(&gw).is_empty());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stored(&gw), once(&["ev-k"]));
    assert_eq!(gw.count("notifications"), 1);
    relay.running.stop().await;
}

/// The relay reads its TLS files again at each connection. One caught mid-replacement (here
/// the CA left empty while the broker is down) is retried like an unreachable broker; before,
/// the link gave up for good and every later part waited in the outbox until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn a_tls_file_unreadable_at_a_reconnection_is_retried() {
    let mut broker = Broker::start_with(&["leap-edge-relay", "site-a"], true);
    let gw = gateway(&broker, "site-a");
    let relay = relay(&broker, &[("site-a", "meter-a")]).await;
    let ca = broker.dir.path().join("broker.pem");
    let pem = std::fs::read(&ca).unwrap();
    broker.stop();
    std::fs::write(&ca, b"").unwrap();
    let metrics = relay.running.metrics_addr;
    tokio::task::block_in_place(|| {
        wait_for("relay status naming the empty CA file", || {
            relay.status_json()["broker"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("broker settings unusable") && e.contains("ca"))
        })
    });
    assert!(
        http_get(metrics, "/metrics")
            .1
            .lines()
            .any(|l| l == "leap_edge_relay_mqtt_connected 0")
    );
    std::fs::write(&ca, &pem).unwrap();
    broker.spawn();
    let r = relay.post(&notification(&[("meter-a", "ev-after")])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    wait_for("the part sent after the CA file was back", || {
        !stored(&gw).is_empty()
    });
    assert_eq!(stored(&gw), once(&["ev-after"]));
    relay.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn a_broker_restart_mid_stream_loses_nothing_acknowledged() {
    let mut broker = Broker::start(&["leap-edge-relay", "site-a"]);
    let gw = gateway(&broker, "site-a");
    let relay = relay(&broker, &[("site-a", "meter-a")]).await;
    let events: Vec<String> = (0..24).map(|i| format!("ev-{i:02}")).collect();
    let mut published = 0;
    for (i, ev) in events.iter().enumerate() {
        if i == 8 {
            broker.stop();
        }
        if i == 16 {
            broker.spawn();
        }
        let r = relay.post(&notification(&[("meter-a", ev)])).await;
        assert_eq!(r.status, 200, "{}", r.text);
        published += usize::from(r.body["mqtt_published"] == true);
    }
    assert!(
        published < events.len(),
        "some were answered from the outbox alone"
    );
    wait_for("every acknowledged notification", || {
        stored(&gw).len() == events.len()
    });
    let want: Vec<&str> = events.iter().map(String::as_str).collect();
    // Redeliveries after the restart are counted as duplicates; each timeslot is stored once.
    let got: Vec<(String, i64)> = stored(&gw).into_iter().map(|(e, r, _)| (e, r)).collect();
    let want: Vec<(String, i64)> = once(&want).into_iter().map(|(e, r, _)| (e, r)).collect();
    assert_eq!(got, want);
    relay.running.stop().await;
}

/// Mosquitto 2.0 grants the SUBACK but applies the read ACL to every message: what counts
/// is that nothing published for site-b ever reaches site-a.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn the_acl_keeps_a_gateway_off_another_gateways_topic() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let broker = Broker::start(&["leap-edge-relay", "site-a", "site-b"]);
    let connect = |user: &str| {
        let mut o = MqttOptions::new(user, "127.0.0.1", broker.port);
        o.set_credentials(user, password(user));
        AsyncClient::new(o, 16)
    };
    let (a, mut a_events) = connect("site-a");
    a.subscribe("leap-edge/site-b/dispatch", QoS::AtLeastOnce)
        .await
        .unwrap();
    a.subscribe("leap-edge/+/dispatch", QoS::AtLeastOnce)
        .await
        .unwrap();
    let received = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut subacks = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        while let Ok(ev) = tokio::time::timeout_at(deadline, a_events.poll()).await {
            match ev.expect("site-a connection") {
                Event::Incoming(Packet::SubAck(_)) => subacks += 1,
                Event::Incoming(Packet::Publish(p)) => {
                    got.push(String::from_utf8_lossy(&p.topic).into_owned())
                }
                _ => {}
            }
        }
        (subacks, got)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (relay, mut relay_events) = connect("leap-edge-relay");
    tokio::spawn(async move { while relay_events.poll().await.is_ok() {} });
    for gw in ["site-b", "site-a", "site-b"] {
        relay
            .publish(
                format!("leap-edge/{gw}/dispatch"),
                QoS::AtLeastOnce,
                false,
                gw,
            )
            .await
            .unwrap();
    }
    let (subacks, got) = received.await.unwrap();
    assert_eq!(subacks, 2);
    assert_eq!(
        got,
        ["leap-edge/site-a/dispatch"],
        "site-a reads only its own dispatch topic"
    );
}

/// The broker connection as the operator sees it, through an outage and back: the gateway's
/// `status` (text and JSON), `/metrics` and `/healthz`, and the relay's `/metrics`. Before,
/// a broker outage showed only as dispatches that never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn the_broker_connection_shows_in_status_metrics_and_healthz() {
    let mut broker = Broker::start(&["leap-edge-relay", "site-a"]);
    // Two keep-alives (10 s) without the broker make /healthz fail.
    let gw = Daemon::start_with(&format!(
        "{}\nkeep_alive_secs = 5\n",
        uplink(&broker, "site-a")
    ));
    wait_log(&gw, "mqtt uplink connected", 1);
    let relay = relay(&broker, &[("site-a", "meter-a")]).await;
    let (gm, rm) = (gw.metrics_addr, relay.running.metrics_addr);
    let gauge = |addr, name: &str, v: &str| {
        http_get(addr, "/metrics")
            .1
            .lines()
            .any(|l| l == format!("{name} {v}"))
    };
    tokio::task::block_in_place(|| {
        let up = status_json(&gw)["uplink"].clone();
        assert_eq!(up["connected"], true, "{up}");
        assert_eq!(up["connections"], 1, "{up}");
        assert!(up["url"].as_str().unwrap().starts_with("mqtt"), "{up}");
        let (_, text, _) = gw.cli(&["status"]);
        assert!(text.contains("MQTT uplink: connected to mqtt"), "{text}");
        assert!(gauge(gm, "leap_edge_mqtt_connected", "1"));
        assert!(gauge(gm, "leap_edge_mqtt_connections_total", "1"));
        wait_for("the relay connected", || {
            gauge(rm, "leap_edge_relay_mqtt_connected", "1")
        });
        assert_eq!(http_get(gm, "/healthz").0, 200);
        wait_for("relay status showing the broker", || {
            relay.status_json()["broker"]["connected"] == true
        });
        let (code, text, _) = relay.status_text();
        // The relay runs in this test's process, without the run lock: "not running".
        assert_eq!(code, 3, "{text}");
        assert!(
            text.contains("broker (when the relay last ran) mqtt")
                && text.contains(": connected since ")
                && text.contains("(1 connection(s))"),
            "{text}"
        );

        broker.stop();
        wait_for("the gateway seeing the broker gone", || {
            status_json(&gw)["uplink"]["connected"] == false
        });
        let down = status_json(&gw)["uplink"].clone();
        assert!(down["last_error"].is_string(), "{down}");
        let (code, text, _) = gw.cli(&["status", "--wide"]);
        assert_eq!(code, 0);
        assert!(
            text.contains("MQTT uplink: NOT CONNECTED to mqtt")
                && text.contains("relayed dispatches wait in the broker"),
            "{text}"
        );
        assert!(gauge(gm, "leap_edge_mqtt_connected", "0"));
        wait_for("the relay seeing the broker gone", || {
            gauge(rm, "leap_edge_relay_mqtt_connected", "0")
        });
        wait_for("relay status showing the broker gone", || {
            let b = relay.status_json()["broker"].clone();
            b["connected"] == false && b["last_error"].is_string()
        });
        let (_, text, _) = relay.status_text();
        assert!(
            text.contains(": NOT CONNECTED since ")
                && text.contains("MQTT parts wait in the outbox"),
            "{text}"
        );
        wait_for("/healthz failing after two keep-alives", || {
            let (code, body) = http_get(gm, "/healthz");
            code == 503 && body.contains("uplink.mqtt: not connected to the MQTT broker")
        });

        broker.spawn();
        wait_for("the gateway back on the broker", || {
            let up = status_json(&gw)["uplink"].clone();
            up["connected"] == true && up["connections"] == 2
        });
        assert!(gauge(gm, "leap_edge_mqtt_connections_total", "2"));
        assert_eq!(http_get(gm, "/healthz").0, 200);
        wait_for("the relay back on the broker", || {
            gauge(rm, "leap_edge_relay_mqtt_connected", "1")
        });
        wait_for("relay status showing the broker back", || {
            let b = relay.status_json()["broker"].clone();
            b["connected"] == true && b["connections"] == 2
        });
    });
    relay.running.stop().await;
}

/// One meter notification of `n` back-to-back quarter hours from two hours ahead: a body
/// of a chosen size (~400 bytes a timeslot).
fn quarter_hours(meter: &str, prefix: &str, n: i64) -> String {
    let start = chrono::Utc::now() + chrono::Duration::hours(2);
    let slots = (0..n)
        .map(|i| {
            let at = start + chrono::Duration::minutes(15 * i);
            timeslot_json(
                meter,
                &format!("{prefix}-{i}"),
                at,
                900,
                Some(5.0),
                json!({}),
            )
        })
        .collect();
    meter_notification(meter, slots)
}

/// The gateway's database and its folder made read-only (root), undone on drop.
fn read_only_store(d: &Daemon) -> common::Immutable {
    let db = d.db_path();
    let paths: Vec<_> = ["", "-wal"]
        .iter()
        .map(|s| std::path::PathBuf::from(format!("{}{s}", db.display())))
        .filter(|p| p.exists())
        .chain([d.dir.path().to_path_buf()])
        .collect();
    common::Immutable::set(&paths)
}

/// While the gateway's store fails, a received message waits, unacknowledged, and is
/// tried again; meanwhile the connection must stay alive (keep-alives answered), or the
/// broker takes the gateway for gone, publishes its offline will and the relay shows it
/// down. Once the store works again the message is stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and root (chattr)"]
async fn a_failing_store_keeps_the_gateway_connected_and_stores_after() {
    let broker = Broker::start(&["leap-edge-relay", "site-a"]);
    let gw = Daemon::start_with(&format!(
        "{}\nkeep_alive_secs = 5\n",
        uplink(&broker, "site-a")
    ));
    wait_log(&gw, "mqtt uplink connected", 1);
    let relay = relay(&broker, &[("site-a", "meter-a")]).await;
    // What the broker says of the gateway, as the relay records it (retained status, or
    // the offline will the broker publishes when the keep-alive lapses).
    let online = || {
        relay
            .db()
            .query_row(
                "SELECT online FROM relay_mqtt_status WHERE gateway = 'site-a'",
                [],
                |r| r.get::<_, bool>(0),
            )
            .ok()
    };
    tokio::task::block_in_place(|| {
        wait_for("the relay sees site-a online", || online() == Some(true))
    });
    let frozen = read_only_store(&gw);
    let r = relay.post(&notification(&[("meter-a", "ev-held")])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    tokio::task::block_in_place(|| {
        wait_log(&gw, "cannot store", 1);
        // Three keep-alive periods: a gateway not polling its connection is cut after 1.5.
        std::thread::sleep(Duration::from_secs(15));
        assert_eq!(
            online(),
            Some(true),
            "the broker gave up on the gateway\n{}",
            gw.log()
        );
        let up = status_json(&gw)["uplink"].clone();
        assert_eq!(
            (up["connected"].clone(), up["connections"].clone()),
            (serde_json::json!(true), serde_json::json!(1)),
            "{up}\n{}",
            gw.log()
        );
        assert!(stored(&gw).is_empty());
        drop(frozen);
        wait_for("stored once the store works", || {
            stored(&gw) == once(&["ev-held"])
        });
    });
    relay.running.stop().await;
}

/// A broker limited to QoS 0 (mosquitto `max_qos 0`, some managed tiers) would hand
/// messages over without acknowledgement or redelivery. Mosquitto refuses the gateway's
/// QoS 1 will at connect; status says so. (A broker that connects and then grants QoS 0 is
/// treated as a refused subscription: unit test in `mqtt::uplink`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn a_broker_limited_to_qos_0_shows_in_status() {
    let broker = Broker::start_configured(&["site-a"], false, "max_qos 0\n");
    let gw = Daemon::start_with(&uplink(&broker, "site-a"));
    wait_for("the broker's refusal in status", || {
        status_json(&gw)["uplink"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("QoSNotSupported"))
    });
    let (_, text, _) = gw.cli(&["status", "--wide"]);
    assert!(text.contains("QoSNotSupported"), "{text}");
}
