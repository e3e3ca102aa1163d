//! Human durations on the command line: `90s`, `15m`, `2h`, `1h30m` (parsed by
//! `humantime`, which reports an overflowing number instead of wrapping).

use std::time::Duration;

/// Nothing on the command line waits or lasts longer than this; a larger value is a typo,
/// and would overflow the date arithmetic it feeds.
const MAX: Duration = Duration::from_secs(366 * 86_400);

pub(crate) fn parse(s: &str) -> Result<Duration, String> {
    let example = "write e.g. 30s, 15m, 2h or 1h30m";
    let d = humantime::parse_duration(s.trim()).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => format!("{s:?} is too long; {example}"),
        e => format!("{s:?} is not a duration ({e}); {example}"),
    })?;
    // Overrides and test notifications count in whole seconds.
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is shorter than a second; {example}"));
    }
    if d > MAX {
        return Err(format!("{s:?} is longer than 366 days; {example}"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse("90s").unwrap().as_secs(), 90);
        assert_eq!(parse("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse("2d").unwrap().as_secs(), 172_800);
        assert!(parse("10").is_err());
        assert!(parse("5x").is_err());
        assert!(parse("0s").is_err());
        assert!(parse("500ms").is_err());
    }

    /// The hand-written parser multiplied without a check: 5,124,095,576,030,432 h
    /// wrapped past u64 (a panic in a debug build).
    #[test]
    fn a_huge_value_is_a_clear_error() {
        for s in ["5124095576030432h", "99999999999999999999s", "400d"] {
            let e = parse(s).unwrap_err();
            assert!(e.contains(s), "{e}");
            assert!(e.contains("write e.g."), "{e}");
        }
    }
}
