//! Crash soak for the relay (SPEC §2.1, §2.12): senders retry like Leap into the relay while
//! it is SIGKILLed and restarted again and again, and one gateway is down for a while.
//! Every notification the relay acknowledged must reach each of its gateways; each gateway
//! must store each timeslot exactly once (one row, one revision; redeliveries are duplicates).
//! Scale with RELAY_SOAK_SENDERS / RELAY_SOAK_PER_SENDER / RELAY_SOAK_KILLS.

use crate::relay_support;

use relay_support::*;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn relay_killed_repeatedly_and_a_gateway_down_loses_nothing_and_duplicates_nothing() {
    let (senders, per_sender, kills) = (
        env("RELAY_SOAK_SENDERS", 4),
        env("RELAY_SOAK_PER_SENDER", 25),
        env("RELAY_SOAK_KILLS", 12),
    );
    let (a, b, mut c) = (Gateway::start(), Gateway::start(), Gateway::start());
    let mut relay = Relay::start(&[
        GatewaySpec {
            name: "a",
            url: a.url(),
            meters: vec!["A"],
        },
        GatewaySpec {
            name: "b",
            url: b.url(),
            meters: vec!["B"],
        },
        GatewaySpec {
            name: "c",
            url: c.url(),
            meters: vec!["C"],
        },
    ]);
    c.0.kill9(); // site c's tunnel is down for the first half
    let client = relay.client();
    let acked = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sending = {
        let (acked, done) = (acked.clone(), done.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut tasks = Vec::new();
                for s in 0..senders {
                    let (client, acked) = (client.clone(), acked.clone());
                    tasks.push(tokio::spawn(async move {
                        for i in 0..per_sender {
                            let n = json!({
                                "integration_test_notification": false,
                                "meter_dispatches": [
                                    meter_entry("A", &[&format!("a-{s}-{i}")]),
                                    meter_entry("X-unknown", &[&format!("x-{s}-{i}")]),
                                ],
                                "group_dispatches": [group_entry("g", &["B", "C"], &[&format!("g-{s}-{i}")])],
                            });
                            client.post_until_ok(&n.to_string()).await;
                            acked.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(60)).await;
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            });
            done.store(true, Ordering::Relaxed);
        })
    };
    let mut k = 0;
    while k < kills || !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(150 + (k as u64 * 37) % 250));
        relay.p.kill9();
        std::thread::sleep(Duration::from_millis(30));
        relay.restart();
        k += 1;
        if k == kills / 2 {
            c.restart();
        }
        assert!(k < kills * 20, "senders did not finish");
    }
    sending.join().unwrap();
    assert_eq!(acked.load(Ordering::Relaxed), senders * per_sender);
    let s = relay.wait_drained(Duration::from_secs(120));
    let expect = |prefix: &str| {
        let mut v: Vec<(String, i64)> = (0..senders)
            .flat_map(|s| (0..per_sender).map(move |i| (s, i)))
            .map(|(s, i)| (format!("{prefix}-{s}-{i}"), 1))
            .collect();
        v.sort();
        v
    };
    assert_eq!(a.events(), expect("a"), "gateway a");
    assert_eq!(b.events(), expect("g"), "gateway b");
    assert_eq!(c.events(), expect("g"), "gateway c");
    // Every unknown-meter entry is kept as unrouted (at least once each; a retried
    // notification the relay had committed before it was killed is stored again).
    assert!(
        s["unrouted_count"].as_u64().unwrap() >= (senders * per_sender) as u64,
        "{s:#}"
    );
    assert_eq!(s["dead_letter_count"], 0, "{s:#}");
    eprintln!(
        "soak: {k} relay kills, {} notifications acked, relay stored {}",
        senders * per_sender,
        s["notifications"]
    );
}
