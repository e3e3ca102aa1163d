//! SPEC §2.13 blind is not safe, for a site meter that still answers but no longer
//! measures: a meter gateway serving the registers it cached before it lost the meter, or a
//! meter that is not on the battery's circuit at all. Its value is plausible, so the range
//! checks in `sanity.rs` pass, and the law would keep computing from a site that no longer
//! is (a frozen 20 kW import with the load gone to 5 kW exports up to 14.5 kW).
//!
//! What gives it away: the battery behind the meter moved by more than a load could hide
//! to the watt, and the meter's reading did not change at all. Real meters report to the
//! watt or the tens of watts, so an unchanged value across a 2 kW battery move over
//! several readings and seconds is not physics. Waiting for several readings and seconds
//! keeps a meter that refreshes its registers only every second or two from tripping it.
//! A false alarm costs little: the loop hands the battery back and resumes by itself as
//! soon as the reading changes.
//!
//! Not caught: a meter that freezes while the battery holds still (nothing moves that the
//! meter should have seen).

use std::time::Duration;
use tokio::time::Instant;

/// The battery must have moved this much while the meter showed one value.
const MOVED_KW: f64 = 2.0;
/// Over at least this many readings…
const READINGS: u32 = 3;
/// …and this long.
const SPAN: Duration = Duration::from_secs(5);

/// Since when the site meter has shown one value, and what the battery did meanwhile.
struct Unchanged {
    grid_kw: f64,
    since: Instant,
    readings: u32,
    battery_min: f64,
    battery_max: f64,
}

#[derive(Default)]
pub(crate) struct FrozenMeter {
    run: Option<Unchanged>,
    /// The current run was found frozen: it stays so until the value changes, whatever
    /// command comes next (a revision or the next event must not drive on it again).
    found: bool,
}

impl FrozenMeter {
    /// One reading. Returns why the meter cannot be trusted, or None.
    pub(crate) fn observe(
        &mut self,
        grid_kw: Option<f64>,
        battery_kw: Option<f64>,
        at: Instant,
    ) -> Option<String> {
        let (Some(g), Some(b)) = (grid_kw, battery_kw) else {
            self.reset();
            return None;
        };
        match &mut self.run {
            // Exactly the same value: the same register contents.
            Some(u) if u.grid_kw.to_bits() == g.to_bits() => {
                u.readings += 1;
                u.battery_min = u.battery_min.min(b);
                u.battery_max = u.battery_max.max(b);
            }
            _ => {
                self.found = false;
                self.run = Some(Unchanged {
                    grid_kw: g,
                    since: at,
                    readings: 1,
                    battery_min: b,
                    battery_max: b,
                });
                return None;
            }
        }
        let u = self.run.as_ref()?;
        let moved = u.battery_max - u.battery_min;
        let span = at.saturating_duration_since(u.since);
        let frozen = self.found || (u.readings >= READINGS && span >= SPAN && moved >= MOVED_KW);
        self.found = frozen;
        frozen.then(|| {
            format!(
                "site meter has read exactly {g:.3} kW for {} s while the battery moved {moved:.1} kW: frozen, or not measuring the battery's circuit",
                span.as_secs()
            )
        })
    }

    /// Readings are not being followed (normal operation): start again at the next one.
    pub(crate) fn reset(&mut self) {
        self.run = None;
        self.found = false;
    }

    /// A new command: its own run starts, unless the meter was found frozen and still
    /// shows that same value (then the finding holds at once, not after another 5 s of
    /// driving the battery on it).
    pub(crate) fn new_command(&mut self) {
        if !self.found {
            self.run = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(f: &mut FrozenMeter, t0: Instant, readings: &[(u64, f64, f64)]) -> Option<String> {
        let mut last = None;
        for &(ms, g, b) in readings {
            last = f.observe(Some(g), Some(b), t0 + Duration::from_millis(ms));
        }
        last
    }

    #[test]
    fn a_meter_that_does_not_see_the_battery_move_is_frozen() {
        let t0 = Instant::now();
        let mut f = FrozenMeter::default();
        let why = feed(
            &mut f,
            t0,
            &[(0, 20.0, 0.0), (1000, 20.0, 19.5), (2000, 20.0, 19.5)],
        );
        assert_eq!(why, None, "too soon");
        let why = feed(&mut f, t0, &[(5000, 20.0, 19.5)]).expect("frozen");
        assert!(
            why.contains("exactly 20.000 kW for 5 s") && why.contains("19.5 kW"),
            "{why}"
        );
        // It reads something else: trusted again.
        assert_eq!(
            f.observe(Some(0.5), Some(19.5), t0 + Duration::from_secs(6)),
            None
        );
    }

    #[test]
    fn a_live_meter_a_still_battery_or_a_slow_refresh_is_not() {
        let t0 = Instant::now();
        // Live meter, moving battery: the value changes.
        let mut f = FrozenMeter::default();
        let r: Vec<_> = (0..10)
            .map(|i| (i * 1000, 20.0 - i as f64, i as f64))
            .collect();
        assert_eq!(feed(&mut f, t0, &r), None);
        // Battery holding still: nothing the meter should have seen.
        let mut f = FrozenMeter::default();
        let r: Vec<_> = (0..10).map(|i| (i * 1000, 0.5, 19.5)).collect();
        assert_eq!(feed(&mut f, t0, &r), None);
        // A meter that refreshes every 2 s while the battery ramps.
        let mut f = FrozenMeter::default();
        let r: Vec<_> = (0..10)
            .map(|i| (i * 1000, 20.0 - (i / 2) as f64 * 2.0, i as f64 * 2.0))
            .collect();
        assert_eq!(feed(&mut f, t0, &r), None);
        // No reading: nothing to compare.
        assert_eq!(f.observe(None, Some(1.0), t0), None);
    }

    /// A revision or the next event does not clear a finding on a meter that still reads
    /// the frozen value; another value does.
    #[test]
    fn a_finding_outlives_a_new_command_until_the_value_changes() {
        let t0 = Instant::now();
        let mut f = FrozenMeter::default();
        let r = [
            (0, 20.0, 0.0),
            (1000, 20.0, 19.5),
            (2000, 20.0, 19.5),
            (5000, 20.0, 19.5),
        ];
        assert!(feed(&mut f, t0, &r).is_some());
        f.new_command();
        assert!(
            f.observe(Some(20.0), Some(0.0), t0 + Duration::from_secs(6))
                .is_some(),
            "the first reading under the new command is still frozen"
        );
        f.new_command();
        assert_eq!(
            f.observe(Some(3.2), Some(0.0), t0 + Duration::from_secs(7)),
            None
        );
        // Without a finding, a new command starts a run of its own.
        let mut f = FrozenMeter::default();
        let _ = feed(&mut f, t0, &r[..3]);
        f.new_command();
        assert_eq!(
            f.observe(Some(20.0), Some(19.5), t0 + Duration::from_secs(5)),
            None
        );
    }
}
