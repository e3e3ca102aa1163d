//! The closed loop per meter (SPEC §2.9–2.10): the pure control law, the loop that reads
//! the site, decides and writes the battery setpoint every control period, and the
//! [`ControlCommander`] through which dispatch drives it.

pub mod commander;
pub mod law;
pub mod meter_loop;
pub mod status;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod law_tests;
#[cfg(test)]
mod loop_tests;

pub use commander::{ControlCommander, ControlError, DEFAULT_APPLY_TIMEOUT, check_meters};
pub use law::{Bound, Decision, Flags, Limits, decide};
pub use meter_loop::LoopSettings;
pub use status::{CommandSummary, ControlStatus, MeterStatus};
