//! Where a key is written in a configuration file, so a semantic problem ("site.service_kw =
//! 0 must be > 0") is reported as `file:line:` like a parse error, one per line: a
//! technician fixing a file on a gateway goes straight to it.

use std::collections::HashMap;
use std::path::Path;

/// Each problem as `path:line: problem` (or `path: problem` for a key the file does not
/// write, such as a missing one). The file is read again: it was just parsed from there.
pub(crate) fn locate(path: &Path, problems: Vec<String>) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let index = key_lines(&text);
    problems
        .into_iter()
        .map(|p| match line_of(&index, &p) {
            Some(n) => format!("{}:{n}: {p}", path.display()),
            None => format!("{}: {p}", path.display()),
        })
        .collect()
}

/// Dotted key → first line (from 1) that writes it; tables by their header line, the
/// entries of an array of tables as `name[i]` (as problems name them: `meters[0].id`).
fn key_lines(text: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    let mut table = String::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    // Brackets a multi-line array value still has open: its lines are not keys or tables.
    let mut open = 0i64;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if open > 0 {
            open += depth(line);
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        // Problems name keys unquoted (`devices.bess.2.host` for `[devices."bess.2"]`).
        let bare = |s: &str| s.trim().replace('"', "");
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let n = arrays.entry(bare(name)).or_insert(0);
            table = format!("{}[{n}]", bare(name));
            *n += 1;
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = bare(name);
        } else if let Some((key, value)) = line.split_once('=') {
            open = depth(value).max(0);
            let key = bare(key);
            let full = match table.as_str() {
                "" => key.to_string(),
                t => format!("{t}.{key}"),
            };
            out.entry(full).or_insert(i + 1);
            continue;
        } else {
            continue;
        }
        out.entry(table.clone()).or_insert(i + 1);
    }
    out
}

/// Brackets opened minus closed outside strings and comments (naive about escapes, which
/// only matters for a line that is not a key anyway).
fn depth(s: &str) -> i64 {
    let mut quote = None;
    let mut d = 0;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => break,
            (None, '[') => d += 1,
            (None, ']') => d -= 1,
            _ => {}
        }
    }
    d
}

/// The line of the key a problem starts with, or of the nearest table around it.
fn line_of(index: &HashMap<String, usize>, problem: &str) -> Option<usize> {
    let mut key = problem
        .split_whitespace()
        .next()?
        .trim_end_matches([':', ',']);
    if !key.contains(['.', '[']) {
        return None;
    }
    while !key.is_empty() {
        if let Some(n) = index.get(key) {
            return Some(*n);
        }
        key = &key[..key.rfind(['.', '[']).unwrap_or(0)];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_point_at_their_key_or_its_table() {
        let text = "[server]\nlisten = \"127.0.0.1:8443\"\n\n[site]\n# the permit\nservice_kw = 0\n\
                    [[meters]]\nid = \"a\"\n[[meters]]\nid = \"\"\n[devices.bess]\nhost = \"x\"\n\
                    [auth]\nkeys = [\n  \"abc=\",\n  [\"nested\"],\n]\nheader = \"x\"\n\
                    [devices.\"bess.2\"]  # the second\nhost = \"\"\n";
        let index = key_lines(text);
        let at = |p: &str| line_of(&index, p);
        assert_eq!(at("site.service_kw = 0 must be > 0"), Some(6));
        assert_eq!(at("meters[1].id is empty: give Leap's meter id"), Some(10));
        assert_eq!(
            at("devices.bess.reversion_secs must be at least 4"),
            Some(11)
        );
        assert_eq!(at("auth.keys is empty"), Some(14));
        assert_eq!(at("auth.header must be lower case"), Some(18));
        // A line inside the array is no key: the table's header, not a junk `auth.abc`.
        assert_eq!(at("auth.abc is junk"), Some(13));
        assert_eq!(at("devices.bess.2.host is empty"), Some(20));
        assert_eq!(at("no [[meters]]: every dispatch"), None);
    }
}
