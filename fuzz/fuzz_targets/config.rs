//! Any text as a site configuration and as a device profile: parsing and checking must
//! give a value or an error with a position, never panic. The first byte picks the parser
//! so one corpus serves both: seeds starting with `0` are configs, with `1` profiles.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which % 2 == 0 {
        match leap_edge::config::Config::parse_str(text, Path::new("fuzz.toml")) {
            Ok(cfg) => {
                let _ = cfg.check();
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    } else {
        match leap_edge::device::profile::parse_str(text, Path::new("fuzz-profile.toml")) {
            Ok(p) => {
                let _ = leap_edge::device::profile::check(&p);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
