//! Leap's interval-data endpoints (LEAP-API.md "Interval data"), as a fake: the load CSV
//! upload validated row by row with Leap's published rules (header, 15 minutes, aligned, UTC,
//! not in the future, non-negative, consistent columns, known meter), jobs that complete at
//! once, their row errors, and the missing-interval search.

use super::{Resp, State, bad, reply};
use chrono::{DateTime, Timelike, Utc};
use serde_json::{Value, json};
use std::sync::Mutex;

pub const HEADER: &str = "meter_id,interval_start_time_utc,interval_end_time_utc,energy_net_kwh,energy_consumed_kwh,energy_generated_kwh,final,region";

#[derive(Default)]
pub struct IntervalData {
    /// Meter ids Leap knows (others fail with MTR_0003).
    pub known_meters: Vec<String>,
    /// `{"meter_id", "data_type", "start_date_time_utc", "end_date_time_utc", ...}`.
    pub missing: Vec<Value>,
    /// (job id, status, errors, the CSV as received).
    pub jobs: Vec<(String, String, Vec<Value>, String)>,
    /// Rows Leap accepted: (meter id, interval start).
    pub accepted: Vec<(String, DateTime<Utc>)>,
    /// At most this many row errors listed in a job's answer (its `error_summary` still
    /// counts them all), as a long list cut short would be.
    pub errors_listed_max: Option<usize>,
}

pub fn handle(
    st: &Mutex<State>,
    method: &str,
    parts: &[&str],
    query: &str,
    text: &str,
    body: &Value,
) -> Resp {
    let mut s = st.lock().unwrap();
    let d = &mut s.intervals;
    match (method, parts) {
        ("POST", ["v1.1", "interval-data"]) => {
            if !query.contains("schema=load") {
                return bad("schema must be load, runtime or performance");
            }
            upload(d, text)
        }
        ("GET", ["v1.1", "jobs", "interval-data-uploads"]) => {
            let uploads: Vec<Value> = d
                .jobs
                .iter()
                .map(|(id, status, _, _)| json!({"last_job_id": id, "status": status,
                    "uploaded_file_path": format!("uploads/{id}.csv"), "current_file_path": format!("uploads/{id}.csv"),
                    "uploaded_at_date_time": Utc::now().to_rfc3339()}))
                .collect();
            reply(
                200,
                Some(json!({"uploads": uploads, "next_page_token": null})),
            )
        }
        ("GET", ["v1.1", "jobs", "interval-data-uploads", id]) => {
            match d.jobs.iter().find(|j| j.0 == *id) {
                Some((id, _, errors, _)) => {
                    let mut summary: Vec<Value> = Vec::new();
                    for e in errors {
                        match summary
                            .iter_mut()
                            .find(|c| c["column"] == e["column"] && c["code"] == e["code"])
                        {
                            Some(c) => c["count"] = json!(c["count"].as_u64().unwrap() + 1),
                            None => summary.push(
                                json!({"column": e["column"], "code": e["code"], "count": 1}),
                            ),
                        }
                    }
                    let listed =
                        &errors[..errors.len().min(d.errors_listed_max.unwrap_or(usize::MAX))];
                    reply(
                        200,
                        Some(json!({"job_id": id, "errors": listed, "error_summary": summary})),
                    )
                }
                None => super::envelope(404, "NOT_FOUND", "NOT_FOUND", "no such job"),
            }
        }
        ("POST", ["v1.1", "missing-interval-data", "search"]) => {
            let wanted: Vec<&str> = body["meter_ids"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let found: Vec<Value> = d
                .missing
                .iter()
                // UUIDs match whatever their case (RFC 4122); the answer keeps Leap's.
                .filter(|m| {
                    let id = m["meter_id"].as_str().unwrap_or_default();
                    wanted.iter().any(|w| w.eq_ignore_ascii_case(id))
                })
                .cloned()
                .collect();
            reply(
                200,
                Some(json!({"missing_intervals": found, "next_page_token": null})),
            )
        }
        _ => super::envelope(404, "NOT_FOUND", "NOT_FOUND", "no such resource"),
    }
}

fn upload(d: &mut IntervalData, text: &str) -> Resp {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return bad("the first line must be the load CSV header");
    }
    let mut errors = Vec::new();
    let mut good = Vec::new();
    for (n, line) in lines.enumerate() {
        match check_row(line, &d.known_meters) {
            Ok(row) => good.push(row),
            Err((column, code)) => errors
                .push(json!({"line": n + 2, "column": column, "code": code,
                "message": format!("{code} on line {}", n + 2)})),
        }
    }
    let id = format!("00000000-0000-4000-8000-{:012}", d.jobs.len() + 1);
    let status = if good.is_empty() && !errors.is_empty() {
        "FAILED"
    } else {
        "COMPLETED"
    };
    for (meter, start) in &good {
        d.missing.retain(|m| {
            !(m["meter_id"]
                .as_str()
                .is_some_and(|id| id.eq_ignore_ascii_case(meter))
                && m["start_date_time_utc"]
                    == json!(start.format("%Y-%m-%dT%H:%M:%SZ").to_string()))
        });
    }
    d.accepted.extend(good);
    d.jobs
        .push((id.clone(), status.into(), errors, text.to_string()));
    reply(200, Some(json!({"job_id": id})))
}

fn check_row(
    line: &str,
    known: &[String],
) -> Result<(String, DateTime<Utc>), (&'static str, &'static str)> {
    let c: Vec<&str> = line.split(',').collect();
    if c.len() != 8 {
        return Err(("meter_id", "NRG_0003"));
    }
    if !known.iter().any(|k| k == c[0]) {
        return Err(("meter_id", "MTR_0003"));
    }
    let t = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .ok()
            .filter(|_| s.ends_with('Z'))
            .map(|t| t.with_timezone(&Utc))
    };
    let start = t(c[1]).ok_or(("interval_start_time_utc", "STM_0003"))?;
    let end = t(c[2]).ok_or(("interval_end_time_utc", "ETM_0003"))?;
    if start.minute() % 15 != 0 || start.second() != 0 || end > Utc::now() || start > Utc::now() {
        return Err(("interval_start_time_utc", "STM_0003"));
    }
    if end - start != chrono::Duration::minutes(15) {
        return Err(("interval_end_time_utc", "DTR_0003"));
    }
    let num = |s: &str| s.parse::<f64>().ok();
    let (net, cons, generated) = (num(c[3]), num(c[4]), num(c[5]));
    let (Some(net), Some(cons), Some(generated)) = (net, cons, generated) else {
        return Err(("energy_net_kwh", "NRG_0003"));
    };
    if cons < 0.0 {
        return Err(("energy_consumed_kwh", "CON_0003"));
    }
    if generated < 0.0 {
        return Err(("energy_generated_kwh", "GEN_0003"));
    }
    if (net - (cons - generated)).abs() > 0.0005 {
        return Err(("energy_net_kwh", "NRG_0003"));
    }
    Ok((c[0].to_string(), start))
}
