//! "Did you mean" for serde's unknown-field and unknown-variant messages (edit distance
//! from `strsim`, already in the tree through clap).

/// Rewrites `unknown field `listn`, expected one of `listen`, `path`` into a message that
/// names the nearest valid key first, which is what a technician at a terminal needs.
pub(crate) fn improve(message: &str) -> String {
    let message = message.trim_end();
    let words: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let is_unknown = message.starts_with("unknown field") || message.starts_with("unknown variant");
    if !is_unknown || words.len() < 2 {
        return message.to_string();
    }
    let (wrong, valid) = (words[0], &words[1..]);
    match nearest(wrong, valid) {
        Some(best) => format!("{message} (did you mean `{best}`?)"),
        None => message.to_string(),
    }
}

fn nearest<'a>(wrong: &str, valid: &[&'a str]) -> Option<&'a str> {
    let wrong = wrong.to_lowercase();
    valid
        .iter()
        .map(|v| (strsim::levenshtein(&wrong, &v.to_lowercase()), *v))
        .filter(|(d, v)| *d <= (v.len() / 2).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_key() {
        let m = improve("unknown field `listn`, expected one of `listen`, `path`, `tls`");
        assert!(m.ends_with("(did you mean `listen`?)"), "{m}");
    }

    #[test]
    fn no_suggestion_when_nothing_is_close() {
        let m = improve("unknown field `zzzzzzzz`, expected `listen` or `path`");
        assert!(!m.contains("did you mean"), "{m}");
    }
}
