//! Human durations on the command line: `90s`, `15m`, `2h`, `1h30m`.

pub fn parse(s: &str) -> Result<std::time::Duration, String> {
    let err = || format!("{s:?} is not a duration; write e.g. 30s, 15m, 2h or 1h30m");
    let mut total = 0u64;
    let mut digits = String::new();
    for ch in s.trim().chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        digits.clear();
        total += n * match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(err()),
        };
    }
    if !digits.is_empty() || total == 0 {
        return Err(err());
    }
    Ok(std::time::Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(super::parse("90s").unwrap().as_secs(), 90);
        assert_eq!(super::parse("1h30m").unwrap().as_secs(), 5400);
        assert!(super::parse("10").is_err());
        assert!(super::parse("5x").is_err());
        assert!(super::parse("0s").is_err());
    }
}
