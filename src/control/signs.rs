//! SPEC §2.9 no export and §2.13 blind is not safe, for a site meter (or a battery power
//! point) whose sign is the wrong way round: a CT clamp turned over, a profile without the
//! `negate` that meter needs. Its values are plausible, so the range checks in `sanity.rs`
//! pass; the law's site load (grid + battery) is then wrong by twice the battery's power,
//! and it drives the battery the wrong way: with PV beyond the load it discharges into an
//! export the meter shows as import, and without PV it charges from the grid during a
//! discharge dispatch.
//!
//! What gives it away is physics: grid import = load − PV − battery discharge, so when the
//! battery's power moves, the grid moves the other way by about as much. With either sign
//! reversed the two readings move the same way. Only moves of the battery of at least
//! [`STEP_KW`] (built up over readings at most [`WITHIN`] apart) while the loop drives the
//! battery are judged, and only by which way the grid went. A grid move the battery's own
//! move does not explain (a load step) starts the measure again after it, so the loop's
//! catch-up a period later is judged on its own: the right way round. A load that changes as fast as the battery steps can mislead one
//! step, and the battery often makes a single step (to its target, then it holds), so the
//! first step the wrong way hands the battery back on suspicion: the hand-back is itself a
//! step, and shows which way the meter moves. A second step the wrong way is a finding, for
//! the rest of the event; a step the right way proves the signs for the rest of the event
//! (wiring does not change mid-event) and the loop resumes. A suspicion that no step
//! settles within [`WITHIN`] lapses (a battery whose own logic holds about the same power);
//! after [`LAPSES`] of them in an event with no step the right way, the next step the wrong
//! way is a finding. The
//! next event checks again.
//!
//! Not caught: both signs reversed (the law's site load is then wrong too, but the two
//! readings agree), a battery that never moves by [`STEP_KW`] within [`WITHIN`], or a
//! battery register that refreshes more slowly than the site meter (the grid's answer
//! comes first and reads as a load step).

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// The battery must move at least this much…
const STEP_KW: f64 = 2.0;
/// …which are at most this far apart (a load drifts more over a longer time).
const WITHIN: Duration = Duration::from_secs(10);
/// The grid moved "the same way" when it moved by more than this share of the battery's
/// step in its direction, "the other way" beyond this share against it; in between the
/// load moved too and the step says nothing.
const SHARE: f64 = 0.5;
/// Steps with the grid moving the same way, before any the other way, that make a finding
/// (the first only hands the battery back on suspicion).
const CONTRARY: u32 = 2;
/// Suspicions no hand-back settled, in an event with no step the right way, after which the
/// next wrong-way step is a finding: a load that ramps faster than the battery can mislead
/// one step, not this many.
const LAPSES: u32 = 5;
/// A battery whose reading moved less than this over the last [`LOOKBACK`] holds still
/// (noise, or its own wobble around a setpoint): the measure then follows the load.
const STILL_KW: f64 = 0.3;
/// Stillness is the net move over this much time, not one reading's step: the slowest
/// ramp that reaches [`STEP_KW`] within [`WITHIN`] (0.2 kW/s) moves 0.4 kW in it, while
/// a wobble comes back. Reading by reading, a ramp under 0.3 kW a reading (or any slow
/// ramp at a sub-second period) read as still and was never built up.
const LOOKBACK: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(crate) struct SignCheck {
    /// The reading steps are measured from: (battery kW, grid kW, when).
    anchor: Option<(f64, f64, Instant)>,
    /// The reading before this one: (battery kW, grid kW).
    prev: Option<(f64, f64)>,
    /// Recent battery readings, back to the newest one at least [`LOOKBACK`] old.
    recent: VecDeque<(Instant, f64)>,
    contrary: u32,
    /// Suspicions in this event that no step settled.
    lapsed: u32,
    /// A finding made by the last reading, not yet written to the audit log.
    new_finding: bool,
    /// Since when, and why, the battery is handed back on one step the wrong way.
    suspect: Option<(Instant, String)>,
    /// A step the right way was seen in this event: the signs are right.
    proven: bool,
    found: Option<String>,
    /// The event (kind and id) the state belongs to.
    event: Option<String>,
}

impl SignCheck {
    /// One reading; `driving`: the loop holds the battery on a setpoint now. Returns why
    /// the readings cannot be trusted, or None.
    pub(crate) fn observe(
        &mut self,
        grid_kw: Option<f64>,
        battery_kw: Option<f64>,
        at: Instant,
        driving: bool,
    ) -> Option<String> {
        if self.found.is_some() || self.proven {
            return self.found.clone();
        }
        self.expire(at);
        let (Some(g), Some(b)) = (grid_kw, battery_kw) else {
            self.anchor = None;
            self.prev = None;
            self.recent.clear();
            return self.suspicion(at);
        };
        let prev = self.prev.replace((b, g));
        let moved = self.moved(b, at);
        let Some((b0, g0, since)) = self.anchor else {
            self.anchor = Some((b, g, at));
            return self.suspicion(at);
        };
        // A grid move the battery's own move does not explain is the load (or PV): the
        // battery's answer to it is measured from here. Measured from before it, the loop's
        // catch-up a period later would look like the two moving together.
        // Only the battery's own movement builds up: while it holds still (or the loop does
        // not drive it) the measure follows the load's drift.
        if let Some((pb, pg)) = prev {
            let (sb, sg) = (b - pb, g - pg);
            let still = moved < STILL_KW || !(driving || self.suspect.is_some());
            if still || (sg.abs() >= STEP_KW && sg.abs() > 2.0 * sb.abs()) {
                self.anchor = Some((b, g, at));
                return self.suspicion(at);
            }
        }
        if at.saturating_duration_since(since) > WITHIN {
            self.anchor = Some((b, g, at));
            return self.suspicion(at);
        }
        let (db, dg) = (b - b0, g - g0);
        // Handed back, the battery follows its own logic: judged only when that step is
        // the hand-back a suspicion asked for.
        if !(driving || self.suspect.is_some()) || db.abs() < STEP_KW {
            return self.suspicion(at);
        }
        self.anchor = Some((b, g, at));
        // Right: the grid moved against the battery (dg ≈ −db); reversed: with it.
        let along = dg / db;
        let moves = format!("battery {b0:.1} → {b:.1} kW, grid {g0:.1} → {g:.1} kW");
        if along < -SHARE {
            self.proven = true;
            self.suspect = None;
            return None;
        }
        if along > SHARE {
            self.contrary += 1;
            // Settled by the hand-back, or the third such step in an event that never
            // showed the right way (hand-backs that did not move the battery enough).
            if self.contrary >= CONTRARY || self.lapsed >= LAPSES {
                self.found = Some(format!(
                    "the site meter moved with the battery instead of against it, {} times (last: {moves}): the site meter's or the battery power's sign is reversed (a CT clamp turned over, or a profile point without `negate`); not followed again in this event. Check with `leap-edge devices`: the grid must read import positive, the battery discharge positive",
                    self.contrary + self.lapsed
                ));
                self.new_finding = true;
                return self.found.clone();
            }
            self.suspect = Some((
                at,
                format!(
                    "the site meter moved with the battery instead of against it ({moves}): its sign or the battery power's may be reversed; handed back to see which way the meter moves when the battery does"
                ),
            ));
        }
        self.suspicion(at)
    }

    /// How far the battery's reading moved since the newest reading at least
    /// [`LOOKBACK`] old (the previous one, at a longer period); after a silence of more
    /// than twice that, since the previous reading.
    fn moved(&mut self, b: f64, at: Instant) -> f64 {
        self.recent.push_back((at, b));
        let age = |t: &Instant| at.saturating_duration_since(*t);
        // A silence of more than twice the lookback between the two oldest: what came
        // before it says nothing about the battery now.
        let silence = |r: &VecDeque<(Instant, f64)>| {
            r.len() > 2 && r[1].0.saturating_duration_since(r[0].0) > 2 * LOOKBACK
        };
        while self.recent.get(1).is_some_and(|(t, _)| age(t) >= LOOKBACK) || silence(&self.recent) {
            self.recent.pop_front();
        }
        let (_, b0) = self.recent[0];
        (b - b0).abs()
    }

    /// Whether the last reading turned a suspicion into a finding (once): the audit log
    /// gets a row of its own for it.
    pub(crate) fn take_new_finding(&mut self) -> bool {
        std::mem::take(&mut self.new_finding)
    }

    /// The standing suspicion, until it lapses.
    fn suspicion(&mut self, at: Instant) -> Option<String> {
        self.expire(at);
        self.suspect.as_ref().map(|(_, why)| why.clone())
    }

    /// A suspicion no step settled within [`WITHIN`] lapses, before the next step is judged:
    /// it does not count towards a finding as a settled one would.
    fn expire(&mut self, at: Instant) {
        if self
            .suspect
            .as_ref()
            .is_some_and(|(since, _)| at.saturating_duration_since(*since) > WITHIN)
        {
            self.suspect = None;
            self.contrary = 0;
            self.lapsed += 1;
        }
    }

    /// A new command: a finding, a suspicion and a proof hold for the rest of their event.
    pub(crate) fn start(&mut self, event: Option<String>) {
        self.anchor = None;
        self.prev = None;
        self.recent.clear();
        if event != self.event {
            self.found = None;
            self.suspect = None;
            self.proven = false;
            self.contrary = 0;
            self.lapsed = 0;
            self.event = event;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut SignCheck, t0: Instant, readings: &[(u64, f64, f64)]) -> Option<String> {
        let mut last = None;
        for &(ms, g, b) in readings {
            last = s.observe(Some(g), Some(b), t0 + Duration::from_millis(ms), true);
        }
        last
    }

    /// SCENARIOS' PV site with a meter reading export as import: 20 kW load, 30 kW PV. The
    /// battery goes from charging 5 kW to discharging 9.5 kW while the meter, reversed,
    /// reads 5 → 10 → 19.5 kW "import".
    #[test]
    fn a_meter_moving_with_the_battery_is_reversed() {
        let t0 = Instant::now();
        let mut s = SignCheck::default();
        let why = feed(&mut s, t0, &[(0, 5.0, -5.0), (1000, 10.0, 0.0)]).expect("suspect");
        assert!(why.contains("may be reversed"), "{why}");
        let why = feed(&mut s, t0, &[(2000, 19.5, 9.5)]).expect("reversed");
        assert!(
            why.contains("sign is reversed") && why.contains("grid 10.0 → 19.5 kW"),
            "{why}"
        );
        // It holds for the rest of the event, whatever comes.
        assert!(feed(&mut s, t0, &[(3000, 0.0, 19.5)]).is_some());
        s.start(Some("meter ev-1".into()));
        s.start(Some("meter ev-2".into()));
        assert_eq!(feed(&mut s, t0, &[(4000, 0.0, 0.0)]), None, "next event");
    }

    /// One step the wrong way, then the hand-back: the battery goes back to 0 and the meter
    /// follows it down (reversed) or goes up (a load step misled the first).
    #[test]
    fn the_hand_back_after_a_suspicion_settles_it() {
        let t0 = Instant::now();
        let mut s = SignCheck::default();
        let r = [(0, 10.0, 0.0), (1000, 20.0, 10.0), (2000, 20.0, 10.0)];
        assert!(feed(&mut s, t0, &r).is_some(), "suspect while it holds");
        assert!(
            feed(&mut s, t0, &[(3000, 10.0, 0.0)]).is_some_and(|w| w.contains("sign is reversed"))
        );
        let mut s = SignCheck::default();
        let r = [(0, 10.0, 0.0), (1000, 20.0, 10.0), (3000, 30.0, 0.0)];
        assert_eq!(
            feed(&mut s, t0, &r),
            None,
            "proven by the hand-back: resumes"
        );
        // A suspicion nothing settles lapses.
        let mut s = SignCheck::default();
        let r = [(0, 10.0, 0.0), (1000, 20.0, 10.0), (5000, 20.0, 10.0)];
        assert!(feed(&mut s, t0, &r).is_some());
        assert_eq!(feed(&mut s, t0, &[(12_000, 20.0, 10.5)]), None);
    }

    #[test]
    fn right_signs_noise_and_small_steps_are_not() {
        let t0 = Instant::now();
        // Right signs: the grid goes down as the battery discharges.
        let mut s = SignCheck::default();
        let r: Vec<_> = (0..10)
            .map(|i| (i * 1000, 30.0 - 3.0 * i as f64, 3.0 * i as f64))
            .collect();
        assert_eq!(feed(&mut s, t0, &r), None);
        // Proven once, a load step afterwards that looks reversed does not count.
        let r = [
            (11_000, 40.0, 30.0),
            (12_000, 50.0, 33.0),
            (13_000, 60.0, 36.0),
        ];
        assert_eq!(feed(&mut s, t0, &r), None);
        // Meter noise while a rising load takes up the battery's ramp: nothing to judge.
        let mut s = SignCheck::default();
        let r: Vec<_> = (0..20)
            .map(|i| (i * 1000, 10.0 + 0.3 * (i % 2) as f64, 0.5 * i as f64))
            .collect();
        assert_eq!(feed(&mut s, t0, &r), None);
        // Steps far apart in time are not compared (the load drifts).
        let mut s = SignCheck::default();
        let r = [(0, 5.0, 0.0), (11_000, 10.0, 5.0), (22_000, 15.0, 10.0)];
        assert_eq!(feed(&mut s, t0, &r), None);
        // A missing reading restarts the comparison.
        let mut s = SignCheck::default();
        assert_eq!(s.observe(None, Some(1.0), t0, true), None);
    }

    /// A load step first shows in the grid alone, then the battery (ramp-limited) catches
    /// up a period later: judged reading by reading, that is the right way round. Against a
    /// reading from before the load step it looked like the two moving together.
    #[test]
    fn the_loops_catch_up_after_a_load_step_is_not_reversed() {
        let t0 = Instant::now();
        let mut s = SignCheck::default();
        let r = [
            (0, 10.0, 0.0),
            (1000, 20.0, 0.0),
            (2000, 17.0, 3.0),
            (3000, 14.0, 6.0),
        ];
        assert_eq!(feed(&mut s, t0, &r), None);
        assert!(s.proven);
    }

    /// A reversed meter behind a battery that ramps 1 kW per reading: the move builds up
    /// over readings (judged reading by reading, no step would ever reach 2 kW).
    #[test]
    fn a_slow_ramp_is_judged_over_several_readings() {
        let t0 = Instant::now();
        let mut s = SignCheck::default();
        let r: Vec<_> = (0..6)
            .map(|i| (i * 1000, 10.0 + i as f64, i as f64))
            .collect();
        assert!(feed(&mut s, t0, &r).is_some_and(|w| w.contains("sign is reversed")));
        // The same ramp with the meter the right way round proves the signs.
        let mut s = SignCheck::default();
        let r: Vec<_> = (0..6)
            .map(|i| (i * 1000, 10.0 - i as f64, i as f64))
            .collect();
        assert_eq!(feed(&mut s, t0, &r), None);
        assert!(s.proven);
        // A load step in the middle of a slow ramp (right signs) is measured around.
        let mut s = SignCheck::default();
        let r = [
            (0, 10.0, 0.0),
            (1000, 9.0, 1.0),
            (2000, 18.0, 2.0),
            (3000, 17.0, 3.0),
            (4000, 16.0, 4.0),
        ];
        assert_eq!(feed(&mut s, t0, &r), None);
        assert!(s.proven);
    }

    /// The load drifts up under 2 kW a reading while the battery holds, then the battery
    /// steps up 3 kW and the grid goes down by as much: the right way. Measured from a
    /// reading before the drift, the grid looked to move with the battery.
    #[test]
    fn load_drift_while_the_battery_holds_is_not_built_up() {
        let t0 = Instant::now();
        let mut s = SignCheck::default();
        let mut r: Vec<_> = (0..8)
            .map(|i| (i * 1000, 10.0 + 0.8 * i as f64, 0.0))
            .collect();
        r.push((8000, 10.0 + 0.8 * 7.0 - 3.0, 3.0));
        assert_eq!(feed(&mut s, t0, &r), None);
        assert!(s.proven);
    }

    /// Handed back for another reason (or not yet written), the battery's own moves are not
    /// judged; and three wrong-way steps in an event with none the right way are a finding
    /// even when no hand-back settled the first two.
    #[test]
    fn only_driven_steps_count_and_unsettled_suspicions_add_up() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = SignCheck::default();
        assert_eq!(s.observe(Some(10.0), Some(0.0), at(0), false), None);
        assert_eq!(s.observe(Some(20.0), Some(10.0), at(1000), false), None);
        assert_eq!(s.contrary, 0);
        let mut s = SignCheck::default();
        let mut t = 0;
        for round in 0..=LAPSES {
            let _ = s.observe(Some(10.0), Some(0.0), at(t), true);
            let why = s.observe(Some(20.0), Some(10.0), at(t + 1000), true);
            if round < LAPSES {
                assert!(why.is_some_and(|w| w.contains("may be reversed")));
                assert!(!s.take_new_finding());
                // The hand-back does not move the battery: the suspicion lapses.
                let _ = s.observe(Some(20.0), Some(10.0), at(t + 12_000), false);
                assert_eq!(
                    s.observe(Some(20.0), Some(10.0), at(t + 13_000), false),
                    None
                );
            } else {
                assert!(why.is_some_and(|w| w.contains("sign is reversed")));
                assert!(s.take_new_finding());
                assert!(!s.take_new_finding(), "said once");
            }
            t += 30_000;
        }
    }

    /// A load that rises with the battery's step only once, then a step the right way:
    /// the signs are proven, the suspicion is over and later steps do not count.
    #[test]
    fn one_misleading_load_step_then_a_right_one_proves_the_signs() {
        let t0 = Instant::now();
        let mut s = SignCheck::default();
        let r = [(0, 10.0, 0.0), (1000, 15.0, 5.0)];
        assert!(feed(&mut s, t0, &r).is_some(), "suspect");
        let r = [(2000, 10.0, 10.0), (3000, 20.0, 15.0), (4000, 30.0, 20.0)];
        assert_eq!(feed(&mut s, t0, &r), None);
    }

    /// A battery that ramps at 0.25 kW/s (under 0.3 kW a reading at the default period, or
    /// 0.05 kW a reading at 200 ms) behind a reversed meter: its move builds up over the
    /// readings, and the hand-back settles it. The same ramps the right way round prove
    /// the signs, and so does a ramp with ±0.08 kW of noise on the battery's reading.
    #[test]
    fn a_ramp_slower_than_the_noise_of_one_reading_is_judged() {
        let t0 = Instant::now();
        for (period, per_reading, last) in [(1000, 0.25, 10), (200, 0.05, 50), (1300, 0.325, 8)] {
            let ramp = |dir: f64, noise: f64| -> Vec<(u64, f64, f64)> {
                (0..=last)
                    .map(|i: u32| {
                        let n = if i.is_multiple_of(2) { noise } else { -noise };
                        let b = (per_reading * f64::from(i)).min(2.5);
                        (u64::from(i) * period, 10.0 + dir * b, b + n)
                    })
                    .collect()
            };
            let mut s = SignCheck::default();
            let why = feed(&mut s, t0, &ramp(1.0, 0.0)).expect("suspect");
            assert!(why.contains("may be reversed"), "{period} ms: {why}");
            // Handed back: the battery drops to 0 and the reversed meter follows it down.
            let t = u64::from(last + 1) * period;
            let why = s.observe(Some(10.0), Some(0.0), t0 + Duration::from_millis(t), false);
            assert!(
                why.is_some_and(|w| w.contains("sign is reversed")),
                "{period} ms"
            );
            let mut s = SignCheck::default();
            assert!(feed(&mut s, t0, &ramp(1.0, 0.08)).is_some(), "{period} ms");
            for noise in [0.0, 0.08] {
                let mut s = SignCheck::default();
                assert_eq!(feed(&mut s, t0, &ramp(-1.0, noise)), None, "{period} ms");
                assert!(s.proven, "{period} ms");
            }
        }
    }

    /// A battery held on its award with its reading jittering by 0.15 kW while the load
    /// falls 0.5 kW/s; at the import margin the law follows the load down. The drift
    /// while it held is followed, so the battery's own move is judged alone (the grid
    /// stays put: nothing to say). Built up from the first reading, the grid's 2.5 kW
    /// fall would have looked like moving with the battery's 2 kW.
    #[test]
    fn a_jittering_battery_holding_its_award_follows_the_load_drift() {
        let t0 = Instant::now();
        let mut s = SignCheck::default();
        let mut r: Vec<(u64, f64, f64)> = (0..6)
            .map(|i| {
                let b = if i % 2 == 0 { 10.0 } else { 10.15 };
                (i * 1000, 3.0 - 0.5 * i as f64, b)
            })
            .collect();
        r.extend((6..10).map(|i| (i * 1000, 0.5, 10.0 - 0.5 * (i - 5) as f64)));
        for (i, reading) in r.iter().enumerate() {
            assert_eq!(feed(&mut s, t0, &[*reading]), None, "reading {i}");
        }
    }

    /// A battery that wobbles around its setpoint by 0.24 kW while the load drifts up
    /// 0.5 kW/s for 6 s (200 ms readings): the drift is followed, so the 3 kW step that
    /// comes after it is judged on its own, the right way round. Built up from the first
    /// reading, the grid would have looked still (3 kW of drift against 3 kW of step).
    #[test]
    fn a_wobbling_battery_holding_its_setpoint_follows_the_load_drift() {
        let t0 = Instant::now();
        let mut s = SignCheck::default();
        let mut r: Vec<(u64, f64, f64)> = (0..30)
            .map(|i| {
                let wobble = if i % 2 == 0 { 0.12 } else { -0.12 };
                (i * 200, 10.0 + 0.1 * i as f64, wobble)
            })
            .collect();
        r.push((6000, 10.0 + 0.1 * 30.0 - 3.0, 3.0));
        assert_eq!(feed(&mut s, t0, &r), None);
        assert!(s.proven);
    }
}
