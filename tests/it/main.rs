//! The one integration test binary: every integration test is a module here, so the whole
//! stack is linked once (`cargo test --test it <module>::` selects one area).
// A test reads as one story from setup to assertion; the 60-line limit is for product code.
#![allow(clippy::too_many_lines)]

mod common;
mod device_common;
mod fake_leap;
mod mqtt_support;
mod relay_support;

mod admin;
mod cli;
mod cli_live;
mod control_chain;
mod control_sim;
mod device_faults;
mod device_interop;
mod device_profiles;
mod device_sim;
mod fuzz_regressions;
mod group_commit;
mod hardening;
mod hardening_files;
mod hardening_limits;
mod ingest_safety;
mod intervals;
mod intervals_upload;
mod killed_mid_timeslot;
mod layering;
mod leap_backstop;
mod leap_cli;
mod log_full;
mod mqtt;
mod relay;
mod relay_soak;
mod relay_storage;
mod release;
mod replan_coalesce;
mod report_svg;
mod resilience_clock;
mod resilience_crash;
mod resilience_modbus;
mod resilience_storage;
mod resilience_storm;
mod scenarios;
mod send_test;
mod shutdown;
mod site_safety;
mod webhook;
