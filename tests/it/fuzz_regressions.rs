//! The fuzz targets' inputs on stable, in every `cargo test`: each seed of the committed
//! corpus (fuzz/corpus/) and each input a fuzzer once crashed on (fuzz/regressions/)
//! goes through the same calls as `fuzz/fuzz_targets/*.rs` and must not panic. A new
//! finding is added by copying the artifact into fuzz/regressions/<target>/.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            out.extend(entries.map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out
}

#[test]
fn notification_inputs_parse_or_are_refused_without_panicking() {
    let files = inputs("notification");
    assert!(files.len() >= 5, "seed corpus missing: {files:?}");
    let mut accepted = 0;
    for f in files {
        let data = std::fs::read(&f).unwrap();
        if let Ok(p) = leap_edge::ingest::parse_notification(&data) {
            accepted += 1;
            for t in &p.timeslots {
                serde_json::to_string(t).unwrap();
                assert!(t.start_time < t.end_time, "{}", f.display());
            }
        }
    }
    assert!(accepted >= 3, "the Leap samples must parse");
}

#[test]
fn config_and_profile_inputs_parse_or_give_a_positioned_error() {
    let files = inputs("config");
    assert!(files.len() >= 4, "seed corpus missing: {files:?}");
    let mut parsed = 0;
    for f in files {
        let data = std::fs::read(&f).unwrap();
        let Some((which, rest)) = data.split_first() else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(rest) else {
            continue;
        };
        let name = Path::new("fuzz.toml");
        // Same selector as the fuzz target: an even first byte is a config.
        let ok = if which % 2 == 0 {
            leap_edge::config::Config::parse_str(text, name)
                .map(|c| drop(c.check()))
                .map_err(|e| e.to_string())
        } else {
            leap_edge::device::profile::parse_str(text, name)
                .map(|p| drop(leap_edge::device::profile::check(&p)))
                .map_err(|e| e.to_string())
        };
        match ok {
            Ok(()) => parsed += 1,
            Err(e) => assert!(e.contains("fuzz.toml:"), "{}: {e}", f.display()),
        }
    }
    assert!(parsed >= 4, "the shipped config and profiles must parse");
}
