//! How times and powers are written, in one place below every module that writes them:
//! the database, the JSON of the CLI and of Leap requests, audit texts and the CLI's
//! tables all agree. Imports nothing from the crate.

use chrono::{DateTime, SecondsFormat, Utc};

/// RFC 3339 UTC with milliseconds (`2026-07-01T14:00:00.000Z`): how times are stored (the
/// text sorts as time) and how they appear in JSON.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `12 kW`, `29.5 kW`, `-` when unknown.
pub(crate) fn kw(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{} kW", num(x)))
}

/// A number without needless decimals: 12, 29.5, 0.25.
pub(crate) fn num(x: f64) -> String {
    let r = (x * 100.0).round() / 100.0;
    let r = if r == 0.0 { 0.0 } else { r };
    format!("{r}")
}

/// `91 s`, `2 min 5 s`, `3 h 20 min`, `2 d 4 h`.
pub(crate) fn duration(secs: i64) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let s = secs.unsigned_abs();
    let (d, h, m, r) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let body = if d > 0 {
        pair(d, "d", h, "h")
    } else if h > 0 {
        pair(h, "h", m, "min")
    } else if m > 0 {
        pair(m, "min", r, "s")
    } else {
        format!("{r} s")
    };
    format!("{sign}{body}")
}

fn pair(a: u64, ua: &str, b: u64, ub: &str) -> String {
    if b == 0 {
        format!("{a} {ua}")
    } else {
        format!("{a} {ua} {b} {ub}")
    }
}

/// Milliseconds as a person reads them: `4 ms` below a second, else [`duration`].
pub(crate) fn millis(ms: i64) -> String {
    if ms.abs() < 1000 {
        format!("{ms} ms")
    } else {
        duration(ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_have_milliseconds_and_z() {
        let t = Utc.with_ymd_and_hms(2026, 7, 1, 14, 0, 0).unwrap();
        assert_eq!(ts(t), "2026-07-01T14:00:00.000Z");
    }

    #[test]
    fn powers_drop_needless_decimals() {
        assert_eq!(kw(Some(12.0)), "12 kW");
        assert_eq!(kw(Some(29.504)), "29.5 kW");
        assert_eq!(kw(Some(-0.001)), "0 kW");
        assert_eq!(kw(None), "-");
    }
}
