//! How the CLI writes values for people: control characters escaped (anything read from
//! the database or a device may carry terminal escapes), durations in human units, times to
//! the second in UTC (or local time with `--local`, honouring `TZ`), and kW with units.

use chrono::{DateTime, Local, Utc};

/// `s` with every control character written as a visible escape (`\e[2J`, `\n`, `\u{7}`),
/// so text from the database cannot move the cursor, clear the screen or forge lines.
pub(crate) fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\x1b' => out.push_str("\\e"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

pub(crate) use crate::textfmt::{duration, millis};

/// Whether times are shown in local time (`--local`) or UTC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Zone {
    #[default]
    Utc,
    Local,
}

impl Zone {
    pub(crate) fn from_flag(local: bool) -> Zone {
        if local { Zone::Local } else { Zone::Utc }
    }

    /// `2026-11-29 16:58:39 UTC`, or `2026-11-29 17:58:39 +01:00` in local time.
    pub(crate) fn time(self, t: DateTime<Utc>) -> String {
        match self {
            Zone::Utc => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            Zone::Local => t
                .with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S %:z")
                .to_string(),
        }
    }

    /// Only the time of day when `t` is today (in this zone), else the full time.
    pub(crate) fn short(self, t: DateTime<Utc>, now: DateTime<Utc>) -> String {
        let (a, b) = match self {
            Zone::Utc => (t.date_naive(), now.date_naive()),
            Zone::Local => (
                t.with_timezone(&Local).date_naive(),
                now.with_timezone(&Local).date_naive(),
            ),
        };
        if a == b {
            match self {
                Zone::Utc => t.format("%H:%M:%S").to_string(),
                Zone::Local => t.with_timezone(&Local).format("%H:%M:%S").to_string(),
            }
        } else {
            self.time(t)
        }
    }

    /// Weekday and time of day (`Tue 00:55:00`): a time within the next day in a narrow
    /// column, where the full date and zone would not fit.
    pub(crate) fn weekday_time(self, t: DateTime<Utc>) -> String {
        match self {
            Zone::Utc => t.format("%a %H:%M:%S").to_string(),
            Zone::Local => t.with_timezone(&Local).format("%a %H:%M:%S").to_string(),
        }
    }

    /// A stored RFC 3339 text time, shown like [`Zone::time`]; unparsable text is shown
    /// escaped as it is.
    pub(crate) fn text(self, s: &str) -> String {
        DateTime::parse_from_rfc3339(s)
            .map(|t| self.time(t.with_timezone(&Utc)))
            .unwrap_or_else(|_| clean(s))
    }
}

pub(crate) use crate::textfmt::kw;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_writes_people_units() {
        assert_eq!(clean("ev\x1b[2Jx\ny\u{7}"), "ev\\e[2Jx\\ny\\u{7}");
        assert_eq!(duration(91), "1 min 31 s");
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(125), "2 min 5 s");
        assert_eq!(duration(7200), "2 h");
        assert_eq!(millis(4), "4 ms");
        assert_eq!(kw(Some(29.5)), "29.5 kW");
        assert_eq!(kw(Some(12.0)), "12 kW");
        let t = DateTime::parse_from_rfc3339("2026-11-29T16:58:39.987Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(Zone::Utc.time(t), "2026-11-29 16:58:39 UTC");
    }
}
