//! Site-meter faults for tests and drills (issue 9): from a given moment, reads of the
//! meter's power register (model 203 `W`) fail with a Modbus exception, go unanswered, or
//! return a fixed, out-of-range value. Only the measurement fails: the inverter (and the
//! meter's scale factor) keep answering, as when a separate meter on an RS-485 bus dies
//! behind a gateway, so the controller can still hand the battery back.

use super::SimError;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeterFault {
    /// Reads answered with this Modbus exception code (0x0B: gateway target failed).
    Exception(u8),
    /// Reads never answered.
    Timeout,
    /// Reads return this grid power (kW), saturated to the register (a stuck register).
    Value(f64),
}

/// A fault and when it starts (seconds after the simulator started).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScheduledFault {
    pub(crate) fault: MeterFault,
    pub(crate) from_secs: f64,
}

impl ScheduledFault {
    /// `exception:CODE@SECS`, `timeout@SECS` or `value:KW@SECS` (`@SECS` optional: 0).
    pub(crate) fn parse(spec: &str) -> Result<ScheduledFault, SimError> {
        let bad = |reason: &str| SimError::MeterFault {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (what, at) = spec.split_once('@').unwrap_or((spec, "0"));
        let from_secs: f64 = at
            .trim()
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| bad("SECS after `@` must be a number ≥ 0"))?;
        let (kind, arg) = what.split_once(':').unwrap_or((what, ""));
        let fault = match (kind.trim(), arg.trim()) {
            ("timeout", "") => MeterFault::Timeout,
            ("exception", code) => {
                let code = code.strip_prefix("0x").map_or_else(
                    || code.parse::<u8>().ok(),
                    |h| u8::from_str_radix(h, 16).ok(),
                );
                MeterFault::Exception(
                    code.filter(|c| *c > 0)
                        .ok_or_else(|| bad("exception needs a code 1..255, e.g. exception:11"))?,
                )
            }
            ("value", kw) => MeterFault::Value(
                kw.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| bad("value needs a number of kW, e.g. value:32.767"))?,
            ),
            _ => {
                return Err(bad(
                    "expected exception:CODE@SECS, timeout@SECS or value:KW@SECS",
                ));
            }
        };
        Ok(ScheduledFault { fault, from_secs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let f = |s: &str| ScheduledFault::parse(s).map(|f| (f.fault, f.from_secs));
        assert_eq!(
            f("exception:11@30").unwrap(),
            (MeterFault::Exception(11), 30.0)
        );
        assert_eq!(
            f("exception:0x0B").unwrap(),
            (MeterFault::Exception(11), 0.0)
        );
        assert_eq!(f("timeout@2.5").unwrap(), (MeterFault::Timeout, 2.5));
        assert_eq!(
            f("value:32.767@1").unwrap(),
            (MeterFault::Value(32.767), 1.0)
        );
        for bad in [
            "exception@3",
            "exception:0",
            "value:x",
            "flaky@1",
            "timeout@-1",
        ] {
            assert!(f(bad).is_err(), "{bad}");
        }
    }
}
