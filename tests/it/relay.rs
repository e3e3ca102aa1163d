//! `leap-edge relay` end to end (SPEC §2.12): a real relay process (HTTPS, as Leap reaches
//! it) in front of real gateway daemons on loopback, each with its own SQLite file.

use crate::relay_support;

use relay_support::*;
use serde_json::{Value, json};
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn spec<'a>(name: &'a str, g: &Gateway, meters: &[&'a str]) -> GatewaySpec<'a> {
    GatewaySpec {
        name,
        url: g.url(),
        meters: meters.to_vec(),
    }
}

fn wait_for(what: &str, limit: Duration, f: impl FnMut() -> bool) {
    let held = crate::common::eventually_blocking(limit, f);
    assert!(held, "timed out waiting for {what}");
}

#[test]
fn three_gateways_each_get_exactly_their_own_entries_and_unknown_meters_are_unrouted() {
    let (a, b, c) = (Gateway::start(), Gateway::start(), Gateway::start());
    let relay = Relay::start(&[
        spec("site-a", &a, &["A1", "A2"]),
        spec("site-b", &b, &["b1", "B2"]),
        spec("site-c", &c, &["C1"]),
    ]);
    let notification = json!({
        "integration_test_notification": false,
        "communication_test": false,
        "meter_dispatches": [
            meter_entry("a1", &["m-a1"]),
            meter_entry("B1", &["m-b1"]),
            meter_entry("C1", &["m-c1"]),
            meter_entry("UNKNOWN", &["m-unknown"]),
        ],
        "group_dispatches": [
            group_entry("grp-ab", &["A2", "B2"], &["g-ab"]),
            group_entry("grp-none", &["nobody", "nobody-2"], &["g-none"]),
        ],
    });
    let (status, answer) = rt().block_on(relay.client().post_until_ok(&notification.to_string()));
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["gateways"], json!(["site-a", "site-b", "site-c"]));
    assert_eq!(answer["unrouted"], 2);
    let s = relay.wait_drained(Duration::from_secs(30));
    assert_eq!(a.event_ids(), ["g-ab", "m-a1"]);
    assert_eq!(b.event_ids(), ["g-ab", "m-b1"]);
    assert_eq!(c.event_ids(), ["m-c1"]);
    // Top-level flags travel unchanged: the gateways stored real (non-test) dispatches.
    let ev = a.0.cli_json(&["events", "--json"]);
    assert!(
        ev["timeslots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["integration_test_notification"] == false)
    );
    assert_eq!(s["unrouted_count"], 2, "{s:#}");
    let mut unrouted: Vec<Value> = s["unrouted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["meter_ids"].clone())
        .collect();
    unrouted.sort_by_key(|v| v.to_string());
    assert_eq!(
        unrouted,
        [json!(["UNKNOWN"]), json!(["nobody", "nobody-2"])]
    );
    for g in s["gateways"].as_array().unwrap() {
        assert_eq!(g["delivered"], 1, "{g:#}");
        assert!(g["last_success_at"].is_string(), "{g:#}");
    }
    // The text view names them too.
    let (code, text, _) = relay.p.cli(&["relay", "status"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("unrouted entries 2") && text.contains("UNKNOWN"),
        "{text}"
    );
}

#[test]
fn bad_input_is_answered_exactly_as_a_gateway_answers_and_nothing_is_queued() {
    let g = Gateway::start();
    let relay = Relay::start(&[spec("site", &g, &["M1"])]);
    let good = json!({"meter_dispatches": [meter_entry("M1", &["e1"])]}).to_string();
    // One timeslot over the default limits.max_timeslots (2,000), under max_body_bytes:
    // both answer 413 naming the bound.
    let ids: Vec<String> = (0..2_001).map(|i| format!("o{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let over = json!({"meter_dispatches": [meter_entry("M1", &ids)]}).to_string();
    let cases: [(&str, &str, &str); 6] = [
        (
            "wrong-key-wrong-key-wrong-key-wrong-key",
            "application/json",
            &good,
        ),
        ("", "application/xml", &good),
        ("", "application/json", "{not json"),
        ("", "application/json", "{\"hello\": 1}"),
        (
            "",
            "application/json",
            "{\"meter_dispatches\": [{\"meter_id\": 5}]}",
        ),
        ("", "application/json", &over),
    ];
    let client = relay.client();
    for (key, ctype, body) in cases {
        let relay_key = if key.is_empty() { RELAY_KEY } else { key };
        let gw_key = if key.is_empty() { GATEWAY_KEY } else { key };
        let from_relay = rt().block_on(client.post(relay_key, ctype, body)).unwrap();
        let from_gateway = http(
            g.0.addr,
            "POST",
            PATH,
            &[("x-api-key", gw_key), ("content-type", ctype)],
            body,
        );
        assert_eq!(from_relay, from_gateway, "{ctype} {body}");
        assert!((400..500).contains(&from_relay.0), "{from_relay:?}");
        if body == over {
            assert_eq!(from_relay.0, 413, "{from_relay:?}");
            assert!(from_relay.1.contains("max_timeslots"), "{from_relay:?}");
        }
    }
    let big = format!(
        "{{\"meter_dispatches\": [], \"pad\": \"{}\"}}",
        "x".repeat(2 << 20)
    );
    // Refused from the declared length, before the upload ends (as the gateway does): the
    // client sees 413 or a cut-off upload, never a 200.
    let from_relay = rt().block_on(client.post(RELAY_KEY, "application/json", &big));
    assert!(
        matches!(from_relay, Ok((413, _)) | Err(_)),
        "{from_relay:?}"
    );
    assert_eq!(relay.status()["notifications"], 0);
}

/// Harden's protections on the relay's public listener too (issues 10.1, 10.8): a
/// connection that never shows the key ends at read_timeout_secs (2 s here) however busy,
/// and wrong-key requests are logged once per interval, not once each.
#[test]
fn the_public_listener_has_the_keyless_deadline_and_quiet_401_logs() {
    let g = Gateway::start();
    let relay = Relay::start(&[spec("site", &g, &["M1"])]);
    let client = relay.client();
    let life = rt().block_on(client.keyless_connection_life(Duration::from_secs(8)));
    assert!(
        life < Duration::from_secs(5),
        "keyless connection lived {life:?}"
    );
    let body = json!({"meter_dispatches": [meter_entry("M1", &["k1"])]}).to_string();
    for _ in 0..5 {
        let r = rt().block_on(client.post(
            "wrong-key-0123456789abcdef-0123456789",
            "application/json",
            &body,
        ));
        assert_eq!(r.unwrap().0, 401);
    }
    let log = relay.p.log();
    let lines = log.matches("missing or wrong credentials").count();
    assert_eq!(lines, 1, "{log}");
    assert_eq!(relay.status()["notifications"], 0);
}

#[test]
fn a_refused_delivery_is_a_dead_letter_kept_and_shown_then_requeued_when_the_key_is_fixed() {
    let g = Gateway::start();
    let mut relay = Relay::start(&[spec("site", &g, &["M1"])]);
    relay.gateways = relay
        .gateways
        .replace(GATEWAY_KEY, "not-the-gateway-key-0123456789abcdef");
    relay.write_config();
    relay.p.kill9();
    relay.restart();
    let n = json!({"meter_dispatches": [meter_entry("M1", &["dead-1"])]}).to_string();
    rt().block_on(relay.client().post_until_ok(&n));
    let s = relay.wait_drained(Duration::from_secs(30));
    assert_eq!(s["dead_letter_count"], 1, "{s:#}");
    assert_eq!(s["dead_letters"][0]["answer_status"], 401);
    assert!(
        s["dead_letters"][0]["answer_body"]
            .as_str()
            .unwrap()
            .contains("credentials")
    );
    assert!(
        s["gateways"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("401")
    );
    assert!(g.event_ids().is_empty());
    // Fix the key and reload: the dead letter goes out again.
    relay.gateways = relay
        .gateways
        .replace("not-the-gateway-key-0123456789abcdef", GATEWAY_KEY);
    relay.write_config();
    relay.reload();
    wait_for("the requeued delivery", Duration::from_secs(30), || {
        g.event_ids() == ["dead-1"]
    });
    wait_for("dead letters cleared", Duration::from_secs(10), || {
        relay.status()["dead_letter_count"] == 0
    });
}

/// A dead letter fixed by anything but a reload that changes that gateway (a relay restart,
/// a fix on the gateway's side) stays dead until the operator sends it again:
/// `relay requeue`, beside the running relay.
#[test]
fn relay_requeue_sends_dead_letters_again_after_any_fix() {
    let g = Gateway::start();
    let mut relay = Relay::start(&[spec("site", &g, &["M1"])]);
    let wrong = "not-the-gateway-key-0123456789abcdef";
    relay.gateways = relay.gateways.replace(GATEWAY_KEY, wrong);
    relay.write_config();
    relay.p.kill9();
    relay.restart();
    let n = json!({"meter_dispatches": [meter_entry("M1", &["dead-2"])]}).to_string();
    rt().block_on(relay.client().post_until_ok(&n));
    assert_eq!(
        relay.wait_drained(Duration::from_secs(30))["dead_letter_count"],
        1
    );
    let (code, text, _) = relay.p.cli(&["relay", "status"]);
    assert_eq!(code, 1, "unhealthy: {text}");
    assert!(
        text.contains("leap-edge relay requeue --gateway site"),
        "{text}"
    );
    // The queue is empty, yet the site executes nothing: that is unhealthy.
    assert!(
        text.contains("UNHEALTHY: gateway site: 1 notification(s) refused"),
        "{text}"
    );
    let (code, body) = http(relay.metrics_addr, "GET", "/healthz", &[], "");
    assert!(code == 503 && body.contains("refused"), "{code} {body}");
    // Fixed, and restarted: a restart does not resend dead letters.
    relay.gateways = relay.gateways.replace(wrong, GATEWAY_KEY);
    relay.write_config();
    relay.p.kill9();
    relay.restart();
    assert_eq!(relay.status()["dead_letter_count"], 1);

    let (code, _, err) = relay.p.cli(&["relay", "requeue", "--gateway", "nowhere"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("configured: site"), "{err}");
    let (code, out, err) = relay.p.cli(&["relay", "requeue", "--gateway", "site"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("requeued 1 dead letter(s) for site"), "{out}");
    wait_for("the requeued delivery", Duration::from_secs(45), || {
        g.event_ids() == ["dead-2"]
    });
    assert_eq!(relay.status()["dead_letter_count"], 0);
    wait_for("healthz green again", Duration::from_secs(10), || {
        http(relay.metrics_addr, "GET", "/healthz", &[], "").0 == 200
    });
}

#[test]
fn reload_moves_undelivered_items_with_their_meter_and_routes_what_was_unrouted() {
    let a = Gateway::start();
    let down = format!("http://127.0.0.1:{}{PATH}", dead_port());
    let mut relay = Relay::start(&[
        spec("site-a", &a, &["A1"]),
        GatewaySpec {
            name: "site-down",
            url: down.clone(),
            meters: vec!["MOVER"],
        },
    ]);
    let client = relay.client();
    let first = json!({"meter_dispatches": [meter_entry("MOVER", &["moved-1"]), meter_entry("A1", &["a-1"])]});
    let second = json!({"meter_dispatches": [meter_entry("NEWCOMER", &["new-1"])]});
    rt().block_on(client.post_until_ok(&first.to_string()));
    rt().block_on(client.post_until_ok(&second.to_string()));
    wait_for("a-1 at site-a", Duration::from_secs(30), || {
        a.event_ids() == ["a-1"]
    });
    let s = relay.status();
    let down_status = s["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "site-down")
        .unwrap()
        .clone();
    assert_eq!(down_status["queue_depth"], 1, "{s:#}");
    assert!(
        down_status["last_error"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{s:#}"
    );
    assert_eq!(s["unrouted_count"], 1);
    // The meter moves to site-a, and the newcomer is added there.
    relay.set_gateways(&[
        spec("site-a", &a, &["A1", "MOVER", "NEWCOMER"]),
        GatewaySpec {
            name: "site-down",
            url: down,
            meters: vec!["OTHER"],
        },
    ]);
    relay.reload();
    wait_for("moved items at site-a", Duration::from_secs(30), || {
        a.event_ids() == ["a-1", "moved-1", "new-1"]
    });
    let s = relay.wait_drained(Duration::from_secs(10));
    assert_eq!(s["unrouted_count"], 0, "{s:#}");
    // a-1 was not sent twice: one delivery per notification to site-a (3 notifications' worth: 1 + moved + new).
    assert_eq!(
        a.events().iter().map(|e| e.1).collect::<Vec<_>>(),
        [1, 1, 1]
    );
}

#[test]
fn metrics_and_healthz_are_on_loopback_only_and_healthz_fails_on_an_old_queue() {
    let a = Gateway::start();
    let down = format!("http://127.0.0.1:{}{PATH}", dead_port());
    let mut relay = Relay::start(&[spec("site-a", &a, &["A1"])]);
    relay.relay_extra = "max_undelivered_age_secs = 2".into();
    relay.set_gateways(&[
        spec("site-a", &a, &["A1"]),
        GatewaySpec {
            name: "site-down",
            url: down,
            meters: vec!["D1"],
        },
    ]);
    relay.p.kill9();
    relay.restart();
    // Not on the public listener.
    for path in ["/metrics", "/healthz"] {
        let public = rt()
            .block_on(
                relay
                    .client()
                    .request("GET", path, RELAY_KEY, "text/plain", ""),
            )
            .unwrap();
        assert_eq!(public.0, 404, "{path} on the public listener");
    }
    let (code, _) = http(relay.metrics_addr, "GET", "/healthz", &[], "");
    assert_eq!(code, 200);
    let n = json!({"meter_dispatches": [meter_entry("D1", &["d-1"]), meter_entry("A1", &["a-1"]), meter_entry("Z", &["z-1"])]});
    rt().block_on(relay.client().post_until_ok(&n.to_string()));
    wait_for("healthz to fail", Duration::from_secs(20), || {
        http(relay.metrics_addr, "GET", "/healthz", &[], "").0 == 503
    });
    let (_, body) = http(relay.metrics_addr, "GET", "/healthz", &[], "");
    assert!(body.contains("site-down"), "{body}");
    let (code, metrics) = http(relay.metrics_addr, "GET", "/metrics", &[], "");
    assert_eq!(code, 200);
    for line in [
        "leap_edge_relay_queue_depth{gateway=\"site-down\"} 1",
        "leap_edge_relay_queue_depth{gateway=\"site-a\"} 0",
        "leap_edge_relay_unrouted_entries 1",
        "leap_edge_relay_unrouted_entries_total 1",
        "leap_edge_relay_deliveries_total{gateway=\"site-a\"} 1",
        "leap_edge_relay_requests_total{result=\"accepted\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line}:\n{metrics}");
    }
    assert!(
        metrics.contains("leap_edge_relay_failed_attempts_total{gateway=\"site-down\"}"),
        "{metrics}"
    );
}

/// `relay check` on `path`: it must exit 78; its error text.
fn refused_by_relay_check(path: &std::path::Path) -> String {
    let out = std::process::Command::new(bin())
        .arg("--config")
        .arg(path)
        .args(["relay", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn relay_check_exits_78_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nkeys = [\"{RELAY_KEY}\"]\n\
             [[gateways]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/x\"\nkey = \"{GATEWAY_KEY}\"\nmeters = [\"M\"]\n\
             [[gateways]]\nname = \"b\"\nurl = \"http://127.0.0.1:2/x\"\nkey = \"{GATEWAY_KEY}\"\nmeters = [\"m\"]\n"
        ),
    )
    .unwrap();
    let err = refused_by_relay_check(&path);
    assert!(
        err.contains("gateways[1].meters") && err.contains("also served by gateway \"a\""),
        "{err}"
    );
    // A url without a path would post to "/": every delivery a 404 dead letter.
    let no_path = std::fs::read_to_string(&path)
        .unwrap()
        .replace("http://127.0.0.1:2/x", "http://127.0.0.1:2")
        .replace("meters = [\"m\"]", "meters = [\"n\", \"N\"]");
    std::fs::write(&path, no_path).unwrap();
    let err = refused_by_relay_check(&path);
    assert!(
        err.contains("has no path") && err.contains("http://127.0.0.1:2/leap/dispatch"),
        "{err}"
    );
    assert!(err.contains("lists meter \"N\" twice"), "{err}");
    // A header name no HTTP request can carry: refused here, not retried every minute.
    let spaced = std::fs::read_to_string(&path).unwrap().replacen(
        "meters = [\"n\", \"N\"]",
        "meters = [\"n\"]\nheader = \"x api key\"",
        1,
    );
    std::fs::write(&path, spaced).unwrap();
    let err = refused_by_relay_check(&path);
    assert!(
        err.contains("gateways[1].header = \"x api key\" is not an HTTP header name"),
        "{err}"
    );
    // The packaged example is complete but for its keys: placeholders printed in every
    // .deb, refused on a public listener until replaced; with real keys it passes.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/relay.toml");
    let check = |path: &std::path::Path| {
        std::process::Command::new(bin())
            .arg("--config")
            .arg(path)
            .args(["relay", "check"])
            .output()
            .unwrap()
    };
    let out = check(&example);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    for key in ["auth.keys", "gateways[0].key", "gateways[1].key"] {
        assert!(
            err.contains(key) && err.contains("placeholder"),
            "{key}: {err}"
        );
    }
    let text = std::fs::read_to_string(&example).unwrap();
    let mut n = 0;
    let real = text
        .lines()
        .map(|l| {
            if l.contains("CHANGE-ME") {
                n += 1;
                l.replace("CHANGE-ME", &format!("k{n}-0123456789abcdef"))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let filled = dir.path().join("filled.toml");
    // Its TLS pair is loaded as `relay run` would: absent, the check says so.
    std::fs::write(&filled, &real).unwrap();
    let out = check(&filled);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("/etc/leap-edge-relay/cert.pem"), "{err}");
    crate::common::write_cert(dir.path());
    let here = |f: &str| dir.path().join(f).display().to_string();
    let real = real
        .replace("/etc/leap-edge-relay/cert.pem", &here("cert.pem"))
        .replace("/etc/leap-edge-relay/key.pem", &here("key.pem"));
    std::fs::write(&filled, &real).unwrap();
    let out = check(&filled);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A gateway's CA file that cannot be loaded: refused naming the gateway, not left to
    // a worker that logs and waits.
    let https = format!(
        "{real}\n[[gateways]]\nname = \"tls-site\"\nurl = \"https://127.0.0.1:9/leap/dispatch\"\n\
         key = \"k9-0123456789abcdef0123456789abcdef\"\nca = \"/nonexistent/ca.pem\"\n\
         meters = [\"tls-meter\"]\n"
    );
    std::fs::write(&filled, https).unwrap();
    let out = check(&filled);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("gateways[2]") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}

#[test]
fn https_delivery_trusts_only_the_gateways_own_certificate() {
    let (good, other) = (Gateway::start_tls(), Gateway::start_tls());
    let dummy = format!("http://127.0.0.1:{}{PATH}", dead_port());
    let mut relay = Relay::start(&[GatewaySpec {
        name: "dummy",
        url: dummy,
        meters: vec!["D"],
    }]);
    let https = |name: &str, g: &Gateway, meter: &str| {
        format!(
            "[[gateways]]\nname = \"{name}\"\nurl = \"https://{}{PATH}\"\nkey = \"{GATEWAY_KEY}\"\n\
             ca = {:?}\ntls_name = \"gateway.test\"\nmeters = [\"{meter}\"]\n",
            g.0.addr,
            good.cert_path()
        )
    };
    // "impostor" presents another certificate than the one configured as its ca.
    relay.gateways = https("site", &good, "G1") + &https("impostor", &other, "W1");
    relay.write_config();
    relay.p.kill9();
    relay.restart();
    let n =
        json!({"meter_dispatches": [meter_entry("G1", &["tls-1"]), meter_entry("W1", &["tls-2"])]});
    rt().block_on(relay.client().post_until_ok(&n.to_string()));
    wait_for("delivery over HTTPS", Duration::from_secs(30), || {
        good.event_ids() == ["tls-1"]
    });
    wait_for("the impostor's failure", Duration::from_secs(30), || {
        let s = relay.status();
        let g = s["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "impostor")
            .unwrap()
            .clone();
        g["queue_depth"] == 1 && g["last_error"].as_str().is_some_and(|e| e.contains("TLS"))
    });
    assert!(other.event_ids().is_empty());
}

#[test]
fn deliveries_to_a_gateway_keep_arrival_order_across_an_outage() {
    let mut g = Gateway::start();
    let relay = Relay::start(&[spec("site", &g, &["M1"])]);
    g.0.kill9();
    // Five revisions of one timeslot while the gateway is away; the last one must win.
    for kw in 1..=5 {
        let mut slot = timeslot("meter", "ordered");
        slot["energy_kw"] = json!(kw as f64);
        let n = json!({"meter_dispatches": [{"meter_id": "M1", "timeslots": [slot]}]});
        rt().block_on(relay.client().post_until_ok(&n.to_string()));
    }
    assert_eq!(relay.status()["gateways"][0]["queue_depth"], 5);
    g.restart();
    relay.wait_drained(Duration::from_secs(60));
    let ev = g.0.cli_json(&["events", "--json"]);
    let t = &ev["timeslots"][0];
    assert_eq!(t["energy_kw"], json!(5.0), "{t:#}");
    assert_eq!(t["revisions"], 5, "{t:#}");
}

/// What `ssh -R /path.sock:127.0.0.1:PORT` does on the relay host: a Unix socket whose
/// connections reach the gateway's TCP listener.
fn unix_forward(sock: &std::path::Path, to: std::net::SocketAddr) {
    use std::net::Shutdown;
    let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut u) = conn else { break };
            let mut t = std::net::TcpStream::connect(to).unwrap();
            let (mut u2, mut t2) = (u.try_clone().unwrap(), t.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut t2);
                let _ = t2.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut t, &mut u);
                let _ = u.shutdown(Shutdown::Write);
            });
        }
    });
}

#[test]
fn delivery_over_a_unix_socket_that_ssh_r_would_bind() {
    let g = Gateway::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("site.sock");
    unix_forward(&sock, g.0.addr);
    let relay = Relay::start(&[GatewaySpec {
        name: "site",
        url: format!("unix:{}", sock.display()),
        meters: vec!["M1"],
    }]);
    let n = json!({"meter_dispatches": [meter_entry("M1", &["unix-1"])]});
    rt().block_on(relay.client().post_until_ok(&n.to_string()));
    wait_for(
        "delivery through the socket",
        Duration::from_secs(30),
        || g.event_ids() == ["unix-1"],
    );
}

/// Two relays on one outbox would deliver everything twice: the second refuses, naming the
/// first, as a second gateway daemon does; `relay status` says whether one runs.
#[test]
fn one_relay_per_outbox_and_status_says_whether_it_runs() {
    let g = Gateway::start();
    let mut relay = Relay::start(&[spec("site", &g, &["M1"])]);
    let pid = relay.p.child.as_ref().unwrap().id();
    let (code, _, err) = relay.p.cli(&["relay", "run"]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains(&format!("leap-edge relay is already running (pid {pid})"))
            && err.contains("systemctl stop leap-edge-relay"),
        "{err}"
    );
    let s = relay.status();
    assert_eq!(s["process"]["running"], true, "{s:#}");
    assert_eq!(s["process"]["last_run"]["pid"], pid, "{s:#}");
    let (_, text, _) = relay.p.cli(&["relay", "status"]);
    assert!(
        text.starts_with(&format!("relay: running (pid {pid}) since ")),
        "{text}"
    );

    relay.p.kill9();
    let (code, text, _) = relay.p.cli(&["relay", "status"]);
    assert_eq!(code, 3, "a stopped relay is not fine: {text}");
    assert!(
        text.starts_with(&format!(
            "relay: NOT RUNNING (last run: pid {pid}, started "
        )),
        "{text}"
    );
    assert!(text.contains("by hand"), "{text}");
    // The lock died with the process: a new relay starts on the same outbox.
    relay.restart();
    assert_eq!(relay.status()["process"]["running"], true);
    // Pointed at an outbox that was never made (never run there, or a wrong path): not
    // running (3), said, not an error exit.
    let cfg = std::fs::read_to_string(relay.p.config_path()).unwrap();
    let elsewhere = relay.p.dir.path().join("elsewhere.toml");
    std::fs::write(&elsewhere, cfg.replace("relay.db", "never-run.db")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leap-edge"))
        .arg("--config")
        .arg(&elsewhere)
        .args(["relay", "status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("no relay outbox at"), "{err}");
    // Scripts read --json: one document there too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leap-edge"))
        .arg("--config")
        .arg(&elsewhere)
        .args(["relay", "status", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["process"]["running"], false, "{doc}");
}

/// The broker link is built at the start: a reload that adds or changes `[mqtt]` is
/// refused, named, and the old configuration stays. Before, it logged "reloaded" and every
/// MQTT part then failed on the old settings (or on none), retried for ever.
#[test]
fn a_reload_that_changes_mqtt_is_refused_and_says_restart() {
    let a = Gateway::start();
    let relay = Relay::start(&[spec("site-a", &a, &["A1"])]);
    let mut text = std::fs::read_to_string(relay.p.config_path()).unwrap();
    text.push_str("\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nclient_id = \"relay\"\n");
    std::fs::write(relay.p.config_path(), text).unwrap();
    relay.reload();
    wait_for("the refusal in the log", Duration::from_secs(10), || {
        relay.p.log().contains("reload refused: [mqtt] changed")
    });
    assert!(
        !relay.p.log().contains("relay configuration reloaded"),
        "{}",
        relay.p.log()
    );
}

/// An attempt's outcome that cannot be written (the outbox refuses updates) is written
/// again with back-off before anything more is sent: the gateway gets one copy, not one a
/// second (each a duplicate there, and for an MQTT gateway a message queued at the broker).
#[test]
fn an_outcome_that_cannot_be_written_is_not_sent_again() {
    let a = Gateway::start();
    let relay = Relay::start(&[spec("site-a", &a, &["A1"])]);
    let outbox = rusqlite::Connection::open(relay.p.dir.path().join("relay.db")).unwrap();
    outbox
        .execute_batch(
            "CREATE TRIGGER hold_outcomes BEFORE UPDATE ON relay_deliveries
             BEGIN SELECT RAISE(ABORT, 'held by the test'); END;",
        )
        .unwrap();
    let note = json!({"integration_test_notification": false, "communication_test": false,
        "meter_dispatches": [meter_entry("A1", &["m-held"])]});
    let (status, answer) = rt().block_on(relay.client().post_until_ok(&note.to_string()));
    assert_eq!(status, 200, "{answer}");
    wait_for("the first delivery", Duration::from_secs(15), || {
        a.event_ids() == ["m-held"]
    });
    std::thread::sleep(Duration::from_secs(4));
    let duplicates = || {
        let v = a.0.cli_json(&["events", "--json"]);
        v["timeslots"][0]["duplicates"].as_i64().unwrap()
    };
    assert_eq!(
        duplicates(),
        0,
        "sent again while its outcome was unwritten"
    );
    outbox.execute_batch("DROP TRIGGER hold_outcomes").unwrap();
    let s = relay.wait_drained(Duration::from_secs(30));
    assert_eq!(s["gateways"][0]["delivered"], 1, "{s:#}");
    assert_eq!(duplicates(), 0);
}

/// A package downgrade: the outbox was written by a newer build. `relay check` (run by the
/// package before restarting the relay) refuses it, so the running relay keeps the fleet
/// instead of being restarted into a start that exits 78.
#[test]
fn relay_check_refuses_an_outbox_from_a_newer_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nkeys = [\"{RELAY_KEY}\"]\n[storage]\npath = \"relay.db\"\n\
             [[gateways]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/x\"\nkey = \"{GATEWAY_KEY}\"\nmeters = [\"M\"]\n"
        ),
    )
    .unwrap();
    // A gateway's database given by mistake (more migrations than the relay's): named for
    // what it is, not as an outbox to upgrade for.
    let c = rusqlite::Connection::open(dir.path().join("relay.db")).unwrap();
    c.execute_batch("CREATE TABLE notifications (id INTEGER);")
        .unwrap();
    c.pragma_update(None, "user_version", 11).unwrap();
    drop(c);
    let err = refused_by_relay_check(&path);
    assert!(err.contains("a gateway database"), "{err}");
    std::fs::remove_file(dir.path().join("relay.db")).unwrap();
    let c = rusqlite::Connection::open(dir.path().join("relay.db")).unwrap();
    c.execute_batch("CREATE TABLE relay_deliveries (id INTEGER);")
        .unwrap();
    c.pragma_update(None, "user_version", 999).unwrap();
    drop(c);
    let err = refused_by_relay_check(&path);
    assert!(
        err.contains("schema version 999 is newer than this build"),
        "{err}"
    );
}
