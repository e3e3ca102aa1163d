//! The closed loop per meter (SPEC §2.9–2.10): the pure control law, the loop that reads
//! the site, decides and writes the battery setpoint every control period, and the
//! [`ControlCommander`] through which dispatch drives it.

pub mod law;

#[cfg(test)]
mod law_tests;

pub use law::{Bound, Decision, Flags, Limits, decide};
