//! `leap-edge leap test`: Leap's integration-test endpoint posts a notification for the
//! configured meters to the registered URL from Leap's own infrastructure; we print Leap's
//! account of that delivery next to what the daemon stored for the same event ids.

use super::exit;
use super::leap::TestArgs;
use super::text::clean;
use crate::config::Config;
use crate::leap::LeapClient;
use crate::leap::types::{IntegrationTestAnswer, Level};
use serde_json::{Value, json};

pub(super) async fn run(config: &Config, a: &TestArgs) -> anyhow::Result<u8> {
    let client = match LeapClient::from_config(&config.leap) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leap-edge: {e}");
            return Ok(exit::CONFIG);
        }
    };
    if config.meters.is_empty() {
        eprintln!(
            "leap-edge: no [[meters]] configured: the test notification needs Leap meter ids"
        );
        return Ok(exit::CONFIG);
    }
    let start = chrono::Utc::now() + chrono::Duration::from_std(a.start_in)?;
    let end = start + chrono::Duration::minutes(5);
    let (level, body, ids) = build(config, a, start, end);
    say_policy(config, a.kw, start);
    let mut answer = match client.integration_test(level, &body).await {
        Ok(a) => a,
        Err(e) if e.maybe_delivered() => {
            eprintln!(
                "leap-edge: {e}\nThe request may have reached Leap, and its test notification may \
                 have been posted: check `leap-edge events` (an integration test) before running \
                 the test again."
            );
            return Ok(exit::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    mask_credentials(&mut answer, &config.auth.header);
    let delivered = answer.http_status.is_some_and(|s| (200..300).contains(&s));
    let stored = match stored_soon(config, level, &ids, delivered).await {
        Ok(s) => s,
        Err(e) => {
            let leap = answer
                .http_status
                .map_or("no answer".into(), |s| format!("HTTP {s}"));
            eprintln!(
                "leap-edge: Leap's side: the test notification got {leap}; but {} cannot be read here ({e}), so whether it was stored is unknown: run as root or as a member of the leap-edge group, or check storage.path",
                config.storage.path.display()
            );
            return Ok(exit::FAILURE);
        }
    };
    let ok = delivered && stored.iter().all(|s| !s.is_null());
    if a.json {
        let out = json!({"leap": answer, "event_ids": ids, "stored": stored, "ok": ok});
        crate::outln!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print(&answer, &ids, &stored, ok);
    }
    Ok(if ok { exit::OK } else { exit::FAILURE })
}

/// SPEC §2.6: whether Leap's test notification moves the battery is the `[policy]`'s
/// call; a technician starting one should know before it starts.
fn say_policy(config: &Config, kw: f64, start: chrono::DateTime<chrono::Utc>) {
    let what = match config.policy.integration_test {
        crate::config::TestPolicy::Execute => format!(
            "\"execute\": this test DISCHARGES the battery ({kw} kW for 5 minutes from {})",
            start.format("%H:%M:%S UTC")
        ),
        crate::config::TestPolicy::DryRun => {
            "\"dry-run\": the battery does not move (`history` shows a would-apply)".into()
        }
        crate::config::TestPolicy::Ignore => "\"ignore\": nothing is dispatched".into(),
    };
    eprintln!("leap-edge: note: [policy] integration_test = {what}");
}

/// Leap's account may echo the headers of the exchange: a credential among them is never
/// printed (`--json` output ends up in tickets and chat).
fn mask_credentials(answer: &mut IntegrationTestAnswer, key_header: &str) {
    for (name, values) in &mut answer.headers {
        let n = name.to_ascii_lowercase();
        // The relay's key header may differ from this gateway's: x-api-key is masked too.
        if n == key_header.to_ascii_lowercase()
            || ["authorization", "cookie", "x-api-key"].contains(&n.as_str())
        {
            *values = vec!["MASKED".into()];
        }
    }
}

/// One test timeslot per configured meter (meter level), or one group timeslot for all of
/// them (group level), with fresh event ids so the result is unambiguous.
fn build(
    config: &Config,
    a: &TestArgs,
    start: chrono::DateTime<chrono::Utc>,
    end: chrono::DateTime<chrono::Utc>,
) -> (Level, Value, Vec<String>) {
    let slot = |id_field: &str, id: &str| {
        json!({
            id_field: id, "start_time": crate::textfmt::ts(start), "end_time": crate::textfmt::ts(end),
            "cancelled": false, "energy_kw": a.kw, "performance_compensation_cap": "up-to-site-load",
            "priority": 1, "is_voluntary": false, "dispatch_event_types": ["standard"],
            "programs": ["CCA"],
        })
    };
    if a.group {
        let id = test_uuid(0);
        let group = config
            .leap
            .market_group_ids
            .first()
            .cloned()
            .unwrap_or_else(|| test_uuid(99));
        let meters: Vec<&str> = config.meters.iter().map(|m| m.id.as_str()).collect();
        let body = json!({"group_dispatches": [{"market_group_id": group, "meter_ids": meters,
            "timeslots": [slot("market_group_event_id", &id)]}]});
        return (Level::Group, body, vec![id]);
    }
    let mut ids = Vec::new();
    let entries: Vec<Value> = config
        .meters
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let id = test_uuid(i as u64);
            let e = json!({"meter_id": m.id, "timeslots": [slot("meter_event_id", &id)]});
            ids.push(id);
            e
        })
        .collect();
    (Level::Meter, json!({"meter_dispatches": entries}), ids)
}

/// A uuid-shaped id (Leap's ids are uuids) unique to this run.
fn test_uuid(n: u64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let nanos = t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (nanos >> 32) as u32,
        (nanos >> 16) as u16,
        (nanos & 0xfff) as u16,
        (n & 0xfff) as u16,
        nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) & 0xffff_ffff_ffff
    )
}

/// [`stored`], read again for a few seconds while Leap says it delivered and an id is still
/// missing: behind a relay, Leap's 200 comes from the relay, before the gateway has it.
async fn stored_soon(
    config: &Config,
    level: Level,
    ids: &[String],
    delivered: bool,
) -> Result<Vec<Value>, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let found = stored(config, level, ids)?;
        if !delivered || found.iter().all(|s| !s.is_null()) || std::time::Instant::now() >= deadline
        {
            return Ok(found);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// What the daemon's database holds for each event id (null: nothing arrived).
fn stored(config: &Config, level: Level, ids: &[String]) -> Result<Vec<Value>, String> {
    let conn =
        crate::store::open_gateway_read_only(&config.storage.path).map_err(|e| e.to_string())?;
    let kind = level.path();
    Ok(ids
        .iter()
        .map(|id| {
            conn.query_row(
                "SELECT t.first_received, t.first_source, t.revisions, n.integration_test, n.id
                 FROM timeslots t JOIN timeslot_revisions r ON r.slot = t.rowid AND r.revision = 1
                 LEFT JOIN notifications n ON n.id = r.notification_id
                 WHERE t.kind=?1 AND t.event_id=?2",
                rusqlite::params![kind, id],
                |r| {
                    Ok(
                        json!({"event_id": id, "received_at": r.get::<_, String>(0)?,
                        "source": r.get::<_, String>(1)?, "revisions": r.get::<_, i64>(2)?,
                        "integration_test": r.get::<_, Option<bool>>(3)?,
                        "notification_id": r.get::<_, Option<i64>>(4)?}),
                    )
                },
            )
            .unwrap_or(Value::Null)
        })
        .collect())
}

fn print(answer: &IntegrationTestAnswer, ids: &[String], stored: &[Value], ok: bool) {
    let or_dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    crate::outln!("Leap's delivery");
    crate::outln!(
        "  HTTP status from leap-edge: {}",
        answer
            .http_status
            .map_or("none (no answer)".into(), |s| s.to_string())
    );
    crate::outln!("  sent:      {}", or_dash(&answer.sent_time));
    crate::outln!("  received:  {}", or_dash(&answer.received_time));
    if let Some(e) = &answer.error_message {
        crate::outln!("  error:     {}", clean(e));
    }
    if let Some(b) = &answer.body {
        crate::outln!(
            "  answer:    {}",
            clean(&b.chars().take(300).collect::<String>())
        );
    }
    crate::outln!("What the daemon stored");
    for (id, s) in ids.iter().zip(stored) {
        if s.is_null() {
            crate::outln!("  {id}: NOT STORED");
        } else {
            crate::outln!(
                "  {id}: stored at {} (source {}, notification {}, integration test {})",
                s["received_at"].as_str().unwrap_or("?"),
                s["source"].as_str().unwrap_or("?"),
                s["notification_id"],
                s["integration_test"]
            );
        }
    }
    if ok {
        crate::outln!("end to end: OK (DNS, TLS, relay, tunnel and daemon all work)");
    } else {
        crate::outln!(
            "{}",
            super::output::alarm(
                "end to end: FAILED — see Leap's status and error above; `leap-edge leap webhook show` checks the URL and key"
            )
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_leaps_echoed_headers_are_masked() {
        let mut a: super::IntegrationTestAnswer = serde_json::from_value(serde_json::json!({
            "http_status": 200,
            "headers": {"X-Api-Key": ["secret-1"], "authorization": ["Bearer x"], "content-type": ["application/json"]}
        }))
        .unwrap();
        super::mask_credentials(&mut a, "x-api-key");
        let text = serde_json::to_string(&a).unwrap();
        assert!(
            !text.contains("secret-1") && !text.contains("Bearer"),
            "{text}"
        );
        assert!(text.contains("application/json"), "{text}");
    }
}
