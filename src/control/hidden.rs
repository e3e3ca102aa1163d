//! Generation the battery's power reading includes but its setpoint does not move (SPEC
//! §2.9 no export, on the sites partners have).
//!
//! On a hybrid inverter with PV on its DC bus, the reading a SunSpec profile offers as
//! battery power (the inverter's AC output, 701/103 W) is battery plus PV, while a storage
//! command (SunSpec 124 OutWRte/InWRte) sets the battery alone. The law's site load, grid
//! plus that reading, then counts the PV as load, and an event bounded by the site load
//! exports the PV less the margin for as long as it runs.
//!
//! The estimate is the reading's excess over the setpoint written, measured only when the
//! battery has settled: it has responded to the last write (its reading moved at least
//! half the way the write asked for), and at least [`SETTLED_READINGS`] readings over
//! [`SETTLED_SPAN`] show the setpoint and the excess both unchanged (within noise). It
//! is set to that measurement, never accumulated. A battery still ramping changes its
//! excess from reading to reading; one that has not responded yet has not moved; either
//! way nothing is measured and the estimate holds.
//! (An estimate fed by readings taken mid-ramp would lower the setpoint, which widens the
//! gap to the lagging battery, which raises the estimate: a runaway into charging from
//! the grid.)
//!
//! It is kept for one command only: a new command measures again. Until the first
//! settled measurement it is 0, so a hybrid exports at the start of an event for about
//! [`SETTLED_SPAN`] plus the battery's ramp, as it did before this existed; after that,
//! not. Where the reading is what the command sets (an AC setpoint such as SunSpec 704, a
//! battery inverter without DC PV) the settled excess is ~0 and nothing changes. A device
//! that holds the grid itself (Victron ESS) is not measured at all.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Settled means this many readings in a row…
pub(crate) const SETTLED_READINGS: usize = 3;
/// …spanning at least this long (a device's response time, and meter refresh)…
pub(crate) const SETTLED_SPAN: Duration = Duration::from_secs(2);
/// …with the setpoint and the excess each within this of the newest (meter noise)…
const STEADY_KW: f64 = 0.2;
/// …or this share of it, on large batteries.
const STEADY_SHARE: f64 = 0.02;
/// A settled excess below this is noise or conversion loss, not generation.
const NOISE_KW: f64 = 0.1;
/// Readings kept to look back over (enough for the span at short control periods).
const KEPT: usize = 16;
/// A write that asks the reading to move less than this needs no proof of response.
const RESPOND_KW: f64 = 1.0;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    written_kw: f64,
    excess_kw: f64,
}

/// The last write: its setpoint, the reading in the step that wrote it, and how far that
/// reading should move if the battery follows (as far as the estimate knows).
#[derive(Debug, Clone, Copy)]
struct Anchor {
    written_kw: f64,
    reading_kw: f64,
    expected_move_kw: f64,
}

#[derive(Debug, Default)]
pub(crate) struct HiddenGeneration {
    kw: f64,
    recent: VecDeque<Sample>,
    anchor: Option<Anchor>,
}

fn steady(a: f64, b: f64) -> bool {
    (a - b).abs() <= STEADY_KW.max(STEADY_SHARE * b.abs())
}

impl HiddenGeneration {
    /// The current estimate, kW (≥ 0).
    pub(crate) fn kw(&self) -> f64 {
        self.kw
    }

    /// `written_kw` was written in the step that read `reading_kw`. A refresh of the same
    /// setpoint keeps the write it repeats: the move asked for is that write's.
    pub(crate) fn wrote(&mut self, written_kw: f64, reading_kw: Option<f64>) {
        if self
            .anchor
            .is_some_and(|a| steady(a.written_kw, written_kw))
        {
            return;
        }
        self.anchor = reading_kw
            .filter(|r| r.is_finite() && written_kw.is_finite())
            .map(|r| Anchor {
                written_kw,
                reading_kw: r,
                expected_move_kw: written_kw - (r - self.kw),
            });
    }

    /// Whether the reading has moved the way the last write asked for.
    fn responded(&self, written_kw: f64, measured_kw: f64) -> bool {
        let Some(a) = self.anchor.filter(|a| steady(a.written_kw, written_kw)) else {
            return false;
        };
        let asked = a.expected_move_kw;
        asked.abs() < RESPOND_KW
            || (measured_kw - a.reading_kw) * asked.signum() >= asked.abs() / 2.0
    }

    /// A reading taken a control period or more after `written_kw` (discharge positive)
    /// was written. Returns the estimate.
    pub(crate) fn observe(&mut self, written_kw: f64, measured_kw: f64, at: Instant) -> f64 {
        if !(written_kw.is_finite() && measured_kw.is_finite()) {
            self.recent.clear();
            return self.kw;
        }
        if self.recent.len() == KEPT {
            self.recent.pop_front();
        }
        let newest = Sample {
            at,
            written_kw,
            excess_kw: measured_kw - written_kw,
        };
        self.recent.push_back(newest);
        let run: Vec<&Sample> = self
            .recent
            .iter()
            .rev()
            .take_while(|s| {
                steady(s.written_kw, newest.written_kw) && steady(s.excess_kw, newest.excess_kw)
            })
            .collect();
        let span = run.last().map_or(Duration::ZERO, |first| {
            at.saturating_duration_since(first.at)
        });
        if run.len() >= SETTLED_READINGS
            && span >= SETTLED_SPAN
            && self.responded(written_kw, measured_kw)
        {
            self.kw = if newest.excess_kw < NOISE_KW {
                0.0
            } else {
                newest.excess_kw
            };
        }
        self.kw
    }

    /// Nothing held (released, a failed write or reading): the readings before and after
    /// do not belong to one settled stretch. The estimate stands.
    pub(crate) fn interrupted(&mut self) {
        self.recent.clear();
        self.anchor = None;
    }

    /// A new command: measure again.
    pub(crate) fn reset(&mut self) {
        self.kw = 0.0;
        self.interrupted();
    }
}

#[cfg(test)]
#[path = "hidden_tests.rs"]
mod tests;
