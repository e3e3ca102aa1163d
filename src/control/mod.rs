//! The closed loop per meter (SPEC §2.9–2.10): the pure control law, the loop that reads
//! the site, decides and writes the battery setpoint every control period, and the
//! [`ControlCommander`] through which dispatch drives it.
//!
//! One loop per meter, each owning its meter's device. Two meters on one device are
//! refused by `config check` ([`check_meters`]): each loop would overwrite the other's
//! setpoint, and a site meter shared by two batteries needs a joint law that does not exist
//! yet. Daemon wiring: `ControlCommander::start_modbus(&config, clock)` as the commander,
//! `status()` as a `/metrics`+`/healthz` source and `status().snapshot()` for `status`,
//! and `shutdown(timeout)` after dispatch has stopped.

mod frozen;
pub(crate) mod law;
pub(crate) mod loops;
pub(crate) mod meter_loop;
mod sanity;
mod signs;
pub(crate) mod status;
mod unheld;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod law_props;
#[cfg(test)]
mod law_tests;
#[cfg(test)]
mod loop_tests;

pub(crate) use law::Bound;
pub use loops::{ControlCommander, ControlError, DEFAULT_APPLY_TIMEOUT, check_meters};
pub(crate) use status::{ControlEvent, ControlStatus, MeterStatus};
