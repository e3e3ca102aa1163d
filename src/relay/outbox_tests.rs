//! The outbox's routing in SQL, on a real (in-memory) SQLite: what a gateway already took
//! is never sent again, and undelivered entries follow a meter that moved.

use super::*;
use crate::relay::config::GatewayConfig;
use serde_json::json;

fn gw(name: &str, meters: &[&str]) -> GatewayConfig {
    GatewayConfig {
        name: name.into(),
        transport: Default::default(),
        url: "http://127.0.0.1:1/x".into(),
        key: crate::secret::Secret::new("k"),
        header: "x-api-key".into(),
        path: "/leap/dispatch".into(),
        meters: meters.iter().map(|m| m.to_string()).collect(),
        ca: None,
        tls_name: None,
    }
}

/// Replay window of the tests: everything they commit is inside it.
fn since() -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::days(1)
}

fn db() -> Connection {
    let mut c = Connection::open_in_memory().unwrap();
    c.pragma_update(None, "foreign_keys", "ON").unwrap();
    migrate(&mut c).unwrap();
    c
}

fn incoming(body: serde_json::Value) -> Incoming {
    Incoming {
        received_at: Utc::now(),
        peer: None,
        headers: json!({}),
        body: body.to_string(),
    }
}

/// gateway → (state, meter ids in its body) for every delivery.
fn deliveries(c: &Connection) -> Vec<(String, String, Vec<String>)> {
    let mut stmt = c
        .prepare(
            "SELECT d.gateway, d.state, b.body FROM relay_deliveries d
             JOIN relay_delivery_bodies b ON b.delivery_id = d.id ORDER BY d.gateway, d.id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        let body: String = r.get(2)?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let meters = v["meter_dispatches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["meter_id"].as_str().unwrap().to_string())
            .collect();
        Ok((r.get(0)?, r.get(1)?, meters))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[test]
fn a_moved_meter_takes_its_undelivered_entry_and_nothing_taken_is_sent_again() {
    let mut c = db();
    let n = json!({"meter_dispatches": [
        {"meter_id": "a1", "timeslots": []},
        {"meter_id": "b1", "timeslots": []},
        {"meter_id": "zz", "timeslots": []},
    ]});
    let before = Routes::new(&[gw("a", &["a1"]), gw("b", &["b1"])]);
    let done = commit(&mut c, &incoming(n), &before).unwrap();
    assert_eq!(done.gateways, ["a", "b"]);
    assert_eq!(done.unrouted, 1);
    // a took its entry; b's is still pending when b1 moves to a and zz gets a home at c.
    let a_head = head(&c, "a").unwrap().unwrap();
    record(
        &mut c,
        "a",
        a_head.id,
        &Attempt::Delivered { status: 200 },
        Utc::now(),
    )
    .unwrap();
    let after = Routes::new(&[gw("a", &["a1", "b1"]), gw("b", &[]), gw("c", &["zz"])]);
    assert_eq!(reroute_all(&mut c, &after, since()).unwrap(), 1);
    assert_eq!(
        deliveries(&c),
        [
            ("a".into(), "delivered".into(), vec!["a1".to_string()]),
            ("a".into(), "pending".into(), vec!["b1".to_string()]),
            ("c".into(), "pending".into(), vec!["zz".to_string()]),
        ]
    );
    let unrouted: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM relay_entries WHERE unrouted = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unrouted, 0);
    // Re-routing again with the same routes changes nothing (the pending ones keep their place).
    let ids: Vec<i64> = {
        let mut s = c
            .prepare("SELECT id FROM relay_deliveries ORDER BY id")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    reroute_all(&mut c, &after, since()).unwrap();
    let again: Vec<i64> = {
        let mut s = c
            .prepare("SELECT id FROM relay_deliveries ORDER BY id")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(ids, again);
}

/// Deliver whatever heads `gateway`'s queue with `attempt`; the notification id it carried.
fn settle(c: &mut Connection, gateway: &str, attempt: Attempt) -> i64 {
    let h = head(c, gateway).unwrap().unwrap();
    record(c, gateway, h.id, &attempt, Utc::now()).unwrap();
    h.notification_id
}

/// Every notification id queued for `gateway`, head first.
fn queue(c: &mut Connection, gateway: &str) -> Vec<i64> {
    let mut out = Vec::new();
    while let Some(h) = head(c, gateway).unwrap() {
        out.push(h.notification_id);
        record(
            c,
            gateway,
            h.id,
            &Attempt::Delivered { status: 200 },
            Utc::now(),
        )
        .unwrap();
    }
    out
}

/// A meter moved to a new gateway: that gateway gets every stored notification for it, in
/// order, so it ends on the latest revision. Before, it got only notifications that still
/// had something pending elsewhere: here the old 10 kW revision and never the 20 kW one.
#[test]
fn a_moved_meter_gets_every_revision_in_order_at_its_new_gateway() {
    let mut c = db();
    let before = Routes::new(&[gw("a", &["m"]), gw("b", &[])]);
    let n1 = json!({"meter_dispatches": [
        {"meter_id": "m", "timeslots": [{"event_id": "e1", "energy_kw": 10}]},
        {"meter_id": "nobody", "timeslots": []},
    ]});
    let n2 = json!({"meter_dispatches": [
        {"meter_id": "m", "timeslots": [{"event_id": "e1", "energy_kw": 20}]},
    ]});
    let first = commit(&mut c, &incoming(n1), &before)
        .unwrap()
        .notification_id;
    let second = commit(&mut c, &incoming(n2), &before)
        .unwrap()
        .notification_id;
    assert_eq!(queue(&mut c, "a"), [first, second]);
    let after = Routes::new(&[gw("a", &[]), gw("b", &["m"])]);
    reroute_all(&mut c, &after, since()).unwrap();
    assert_eq!(queue(&mut c, "b"), [first, second]);
    assert_eq!(queue(&mut c, "a"), Vec::<i64>::new());
    // Once it has them, nothing is sent again.
    reroute_all(&mut c, &after, since()).unwrap();
    assert_eq!(queue(&mut c, "b"), Vec::<i64>::new());
}

/// Only notifications that can still hold a live timeslot are replayed to a meter's new
/// gateway: a year of history would queue its next live dispatch behind it.
#[test]
fn a_moved_meter_is_not_sent_notifications_older_than_any_live_timeslot() {
    let mut c = db();
    let before = Routes::new(&[gw("a", &["m"]), gw("b", &[])]);
    let body =
        |e: &str| json!({"meter_dispatches": [{"meter_id": "m", "timeslots": [{"event_id": e}]}]});
    let mut old = incoming(body("old"));
    old.received_at = Utc::now() - chrono::Duration::days(60);
    let old = commit(&mut c, &old, &before).unwrap().notification_id;
    let recent = commit(&mut c, &incoming(body("recent")), &before)
        .unwrap()
        .notification_id;
    assert_eq!(queue(&mut c, "a"), [old, recent]);
    let after = Routes::new(&[gw("a", &[]), gw("b", &["m"])]);
    reroute_all(&mut c, &after, Utc::now() - chrono::Duration::days(33)).unwrap();
    assert_eq!(queue(&mut c, "b"), [recent]);
}

/// The same for a meter no gateway served before (enrolled at Leap before its site was
/// added to the relay): before, every unrouted notification was replayed, however old. The
/// old one is no longer counted as unrouted (its meter is served) and is kept until the
/// retention; one whose meter nobody serves is kept past it (SPEC §2.12).
#[test]
fn a_newly_served_meter_is_not_sent_old_unrouted_notifications() {
    let mut c = db();
    let before = Routes::new(&[gw("a", &[])]);
    let body =
        |e: &str| json!({"meter_dispatches": [{"meter_id": "m", "timeslots": [{"event_id": e}]}]});
    let mut old = incoming(body("old"));
    old.received_at = Utc::now() - chrono::Duration::days(60);
    commit(&mut c, &old, &before).unwrap();
    let recent = commit(&mut c, &incoming(body("recent")), &before)
        .unwrap()
        .notification_id;
    let mut nobody = incoming(
        json!({"meter_dispatches": [{"meter_id": "x", "timeslots": [{"event_id": "x"}]}]}),
    );
    nobody.received_at = Utc::now() - chrono::Duration::days(60);
    commit(&mut c, &nobody, &before).unwrap();
    let after = Routes::new(&[gw("a", &["m"])]);
    reroute_all(&mut c, &after, Utc::now() - chrono::Duration::days(33)).unwrap();
    assert_eq!(queue(&mut c, "a"), [recent]);
    let unrouted: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM relay_entries WHERE unrouted = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unrouted, 1, "only the entry of the meter nobody serves");
    let pruned = prune(&mut c, Utc::now() - chrono::Duration::days(30)).unwrap();
    assert_eq!(
        pruned, 1,
        "the settled old one goes at the retention, the unrouted one stays"
    );
}

/// SPEC §2.12 "in order": a requeued dead letter goes out with what was delivered after it,
/// behind it, so the gateway does not end on the dead letter's older revision.
#[test]
fn a_requeued_dead_letter_is_followed_by_what_was_delivered_after_it() {
    let mut c = db();
    let routes = Routes::new(&[gw("a", &["m"])]);
    let body = |kw| {
        json!({"meter_dispatches": [
            {"meter_id": "m", "timeslots": [{"event_id": "e1", "energy_kw": kw}]}]})
    };
    let ids: Vec<i64> = [5, 10, 20]
        .map(|kw| {
            commit(&mut c, &incoming(body(kw)), &routes)
                .unwrap()
                .notification_id
        })
        .to_vec();
    assert_eq!(
        settle(&mut c, "a", Attempt::Delivered { status: 200 }),
        ids[0]
    );
    let dead = Attempt::Dead {
        status: 404,
        answer: "not found".into(),
    };
    assert_eq!(settle(&mut c, "a", dead), ids[1]);
    assert_eq!(
        settle(&mut c, "a", Attempt::Delivered { status: 200 }),
        ids[2]
    );
    // Received before the replay window: nothing is sent again, the dead letter stays.
    let window = Utc::now() + chrono::Duration::hours(1);
    let n = requeue_dead(&mut c, &["a".into()], window).unwrap();
    assert_eq!(
        n,
        Requeued {
            dead: 0,
            later: 0,
            left: 1
        }
    );
    let since = Utc::now() - chrono::Duration::hours(1);
    let n = requeue_dead(&mut c, &["a".into()], since).unwrap();
    assert_eq!(
        n,
        Requeued {
            dead: 1,
            later: 1,
            left: 0
        }
    );
    assert_eq!(queue(&mut c, "a"), [ids[1], ids[2]]);
}

#[test]
fn a_gateway_database_is_refused() {
    let mut c = Connection::open_in_memory().unwrap();
    c.execute_batch("CREATE TABLE notifications (id INTEGER); PRAGMA user_version = 1;")
        .unwrap();
    let e = migrate(&mut c).unwrap_err().to_string();
    assert!(e.contains("not a relay outbox"), "{e}");
    // A real gateway database has more migrations than the relay's: still named for what
    // it is, not as an outbox from a newer build to upgrade for.
    c.execute_batch("PRAGMA user_version = 11;").unwrap();
    let e = migrate(&mut c).unwrap_err().to_string();
    assert!(e.contains("not a relay outbox"), "{e}");
}
