//! Dispatch search: the window rule, the real-time filter and paging.

use super::{PAGE_SIZE, Resp, State, bad, reply};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::sync::Mutex;

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub(super) fn search(st: &Mutex<State>, level: &str, body: &Value) -> Resp {
    let (Some(start), Some(end)) = (
        parse_time(&body["start_date"]),
        parse_time(&body["end_date"]),
    ) else {
        return bad("start_date and end_date must be RFC 3339 times");
    };
    if end <= start || end - start > chrono::Duration::days(31) {
        return bad("end_date must be after start_date and at most 31 days later");
    }
    let exclude_rt = body["exclude_real_time_events"].as_bool().unwrap_or(true);
    let exclude_vol = body["exclude_voluntary_events"].as_bool().unwrap_or(false);
    let mut s = st.lock().unwrap();
    let offset = match body["page_token"].as_str() {
        None => 0,
        Some(t) => match s.tokens.get(t) {
            Some(o) => *o,
            None => return bad("unknown page_token"),
        },
    };
    let (data, id_key, filter_key, flag) = if level == "meter" {
        (
            &s.meter_results,
            "meter_id",
            "meter_ids",
            "communication_test",
        )
    } else {
        (
            &s.group_results,
            "market_group_id",
            "market_group_ids",
            "is_communication_test",
        )
    };
    let wanted: Option<Vec<String>> = body[filter_key].as_array().map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_ascii_lowercase))
            .collect()
    });
    let all: Vec<Value> = data
        .iter()
        .filter(|r| {
            wanted.as_ref().is_none_or(|w| {
                w.contains(&r[id_key].as_str().unwrap_or_default().to_ascii_lowercase())
            })
        })
        .filter_map(|r| {
            let slots: Vec<Value> = r["timeslots"]
                .as_array()?
                .iter()
                .filter(|t| {
                    let (Some(ts), Some(te)) =
                        (parse_time(&t["start_time"]), parse_time(&t["end_time"]))
                    else {
                        return false;
                    };
                    let rt = t["dispatch_event_types"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "5m"));
                    ts < end
                        && te > start
                        && !(exclude_rt && rt)
                        && !(exclude_vol && t["is_voluntary"] == true)
                })
                .map(|t| {
                    let mut t = t.clone();
                    t[flag] = t.get(flag).cloned().unwrap_or(json!(false));
                    t
                })
                .collect();
            (!slots.is_empty()).then(|| {
                let mut r = r.clone();
                r["timeslots"] = json!(slots);
                r
            })
        })
        .collect();
    let page: Vec<Value> = all.iter().skip(offset).take(PAGE_SIZE).cloned().collect();
    let next = if offset + PAGE_SIZE < all.len() {
        s.next_token += 1;
        let token = format!("00000000-0000-4000-8000-{:012x}", s.next_token);
        s.tokens.insert(token.clone(), offset + PAGE_SIZE);
        Some(token)
    } else {
        None
    };
    reply(200, Some(json!({"next_page_token": next, "results": page})))
}
