//! The pure part of interval recording: readings in, finished 15-minute intervals out.
//! With the meter's accumulators (TotWhImp/TotWhExp) an interval's energy is the counter
//! difference between its two boundaries, each interpolated between the readings on either
//! side of it; so it stays exact across a restart that does not hide a boundary for long.
//! Without them, grid power is integrated and the interval is marked estimated. An
//! interval whose energy cannot be known (a boundary inside an outage, too little coverage)
//! is incomplete: a gap, never filled in.

/// Leap's interval length (LEAP-API.md: exactly 15 minutes, aligned to the quarter hour).
pub const INTERVAL_SECS: i64 = 900;
const INTERVAL_MS: i64 = INTERVAL_SECS * 1000;
/// A power reading stands for the time until the next one only when that comes within
/// this; a longer silence is uncovered time (a few control periods of slack).
pub(crate) const HOLD_MS: i64 = 10_000;
/// Accumulator values at a boundary are interpolated only between readings at most this
/// far apart: the counters make the total exact, the split at the boundary is linear.
pub(crate) const BRIDGE_MS: i64 = 60_000;
/// An estimated interval counts as complete when readings covered at least this share of
/// it (a restart of a few seconds); its energy is then scaled to the whole interval.
pub(crate) const MIN_COVERAGE: f64 = 0.95;
/// Grid power below minus this counts as export (meter noise around zero does not).
const EXPORT_KW: f64 = 0.05;

/// One reading of the site meter (and the battery beside it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub(crate) at_ms: i64,
    /// Import positive.
    pub(crate) grid_kw: f64,
    /// Discharge positive.
    pub(crate) battery_kw: Option<f64>,
    pub(crate) soc_pct: Option<f64>,
    pub(crate) imp_wh: Option<f64>,
    pub(crate) exp_wh: Option<f64>,
}

/// Where an interval's energy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The meter's own accumulators.
    Meter,
    /// Integrated from power readings.
    Estimated,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Meter => "meter",
            Source::Estimated => "estimated",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Energy {
    pub(crate) import_wh: f64,
    pub(crate) export_wh: f64,
    pub(crate) source: Source,
}

/// One interval being (or having been) recorded; also what is stored.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Acc {
    /// Unix seconds, a multiple of 900.
    pub start: i64,
    pub imp_start: Option<f64>,
    pub exp_start: Option<f64>,
    pub imp_end: Option<f64>,
    pub exp_end: Option<f64>,
    pub est_imp_wh: f64,
    pub est_exp_wh: f64,
    pub battery_wh: f64,
    pub covered_ms: i64,
    /// Of `covered_ms`, the time with a battery power reading (what `battery_wh` covers).
    pub battery_ms: i64,
    pub export_ms: i64,
    pub min_soc: Option<f64>,
    /// Some reading in this interval carried accumulators.
    pub metered: bool,
    /// The latest reading (kept so a restarted daemon can bridge to the next one).
    pub last: Option<Sample>,
}

impl Acc {
    pub(crate) fn new(start: i64) -> Acc {
        Acc {
            start,
            ..Acc::default()
        }
    }

    pub(crate) fn end(&self) -> i64 {
        self.start + INTERVAL_SECS
    }

    /// The interval's energy, or `None` for a gap.
    pub(crate) fn energy(&self) -> Option<Energy> {
        if let (Some(i0), Some(i1), Some(e0), Some(e1)) =
            (self.imp_start, self.imp_end, self.exp_start, self.exp_end)
        {
            let (import_wh, export_wh) = (i1 - i0, e1 - e0);
            // A counter that went backwards was reset or wrapped: unknown, not negative.
            return (import_wh >= 0.0 && export_wh >= 0.0).then_some(Energy {
                import_wh,
                export_wh,
                source: Source::Meter,
            });
        }
        if self.metered {
            return None;
        }
        let covered = self.covered_ms as f64 / INTERVAL_MS as f64;
        (covered >= MIN_COVERAGE).then(|| Energy {
            import_wh: self.est_imp_wh / covered.min(1.0),
            export_wh: self.est_exp_wh / covered.min(1.0),
            source: Source::Estimated,
        })
    }

    fn integrate(&mut self, held: &Sample, from_ms: i64, to_ms: i64) {
        let ms = to_ms - from_ms;
        if ms <= 0 {
            return;
        }
        let wh = held.grid_kw * ms as f64 / 3600.0;
        if wh > 0.0 {
            self.est_imp_wh += wh;
        } else {
            self.est_exp_wh -= wh;
        }
        if let Some(kw) = held.battery_kw {
            self.battery_wh += kw * ms as f64 / 3600.0;
            self.battery_ms += ms;
        }
        self.covered_ms += ms;
        if held.grid_kw < -EXPORT_KW {
            self.export_ms += ms;
        }
    }

    fn take(&mut self, s: &Sample) {
        if let Some(soc) = s.soc_pct {
            self.min_soc = Some(self.min_soc.map_or(soc, |m: f64| m.min(soc)));
        }
        self.metered |= s.imp_wh.is_some() && s.exp_wh.is_some();
        self.last = Some(*s);
    }
}

/// The quarter hour (unix seconds) that contains `at_ms`.
pub(crate) fn interval_start(at_ms: i64) -> i64 {
    at_ms.div_euclid(INTERVAL_MS) * INTERVAL_SECS
}

fn interpolate(a: Option<f64>, b: Option<f64>, frac: f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b >= a => Some(a + (b - a) * frac),
        _ => None,
    }
}

/// One meter's recorder.
#[derive(Debug, Default)]
pub struct Recorder {
    pub(crate) open: Option<Acc>,
    /// Three control periods (0: the defaults alone). Readings come once a period, so a
    /// long `control_period_ms` must not make every gap between two readings uncovered
    /// time (an estimated interval would then always be a gap).
    period_slack_ms: i64,
    /// The start of an open interval dropped because the clock went back before it (it was
    /// opened while the clock ran ahead): its stored row must go too, or a restart would
    /// resume it (see [`Recorder::take_dropped`]).
    dropped: Option<i64>,
}

impl Recorder {
    /// Continue from the stored open interval (after a restart).
    pub(crate) fn resume(open: Option<Acc>) -> Recorder {
        Recorder {
            open,
            period_slack_ms: 0,
            dropped: None,
        }
    }

    /// The start of an open interval dropped since the last call (its stored row is stale).
    pub(crate) fn take_dropped(&mut self) -> Option<i64> {
        self.dropped.take()
    }

    /// A dropped interval whose stored row could not be deleted: tried with the next save.
    pub(crate) fn keep_dropped(&mut self, start: i64) {
        self.dropped.get_or_insert(start);
    }

    /// Readings come every `period`: hold and bridge at least three of them.
    pub(crate) fn with_period(mut self, period: std::time::Duration) -> Recorder {
        self.period_slack_ms = 3 * i64::try_from(period.as_millis()).unwrap_or(i64::MAX / 3);
        self
    }

    /// The wall clock stepped (or cannot be trusted across a restart): what the counters did
    /// since the last reading cannot be placed in time. The open interval gets no counter
    /// energy (a metered one becomes a gap) and nothing is bridged or held across the step;
    /// readings are placed by the clock from here on. Its power estimate starts again too:
    /// after a step back the same quarter hour is lived twice, and the readings from before
    /// the step would be counted beside those after it (133 % of an interval, as complete).
    /// So an estimated interval keeps only the readings after the step: too few (a gap),
    /// unless the clock went back before its start and it is lived again whole.
    pub(crate) fn clock_stepped(&mut self) {
        if let Some(cur) = self.open.as_mut() {
            *cur = Acc {
                metered: cur.metered,
                ..Acc::new(cur.start)
            };
        }
    }

    /// Take one reading; returns the intervals it closed, oldest first.
    pub(crate) fn push(&mut self, s: Sample) -> Vec<Acc> {
        let mut done = Vec::new();
        // After a step back (or an untrusted restart) to a whole quarter hour or more before
        // the open interval: that interval was opened while the clock ran ahead and has not
        // happened. Recording goes on in the reading's own quarter hour; kept, the future
        // one would take every reading until the clock caught up with it, and close nothing
        // meanwhile. A smaller step back (NTP's seconds across a boundary) keeps the open
        // interval, which is real. A complete interval stored before is never overwritten
        // by a quarter hour lived again (`db::save`).
        if let Some(cur) = self
            .open
            .as_mut()
            .filter(|c| c.last.is_none() && interval_start(s.at_ms) + INTERVAL_SECS < c.start)
        {
            self.dropped = Some(cur.start);
            *cur = Acc {
                metered: cur.metered,
                ..Acc::new(interval_start(s.at_ms))
            };
        }
        let cur = self
            .open
            .get_or_insert_with(|| Acc::new(interval_start(s.at_ms)));
        let last = cur.last;
        if last.is_some_and(|l| s.at_ms <= l.at_ms) {
            return done; // a repeated or out-of-order reading adds nothing
        }
        let gap = last.map(|l| s.at_ms - l.at_ms);
        match last {
            Some(l) if gap.is_some_and(|g| g <= BRIDGE_MS.max(self.period_slack_ms)) => {
                let hold = gap.is_some_and(|g| g <= HOLD_MS.max(self.period_slack_ms));
                let mut from = l.at_ms.max(cur.start * 1000);
                while s.at_ms >= cur.end() * 1000 {
                    let b = cur.end() * 1000;
                    if hold {
                        cur.integrate(&l, from, b);
                    }
                    let frac = (b - l.at_ms) as f64 / (s.at_ms - l.at_ms) as f64;
                    let mut next = Acc::new(cur.end());
                    next.imp_start = interpolate(l.imp_wh, s.imp_wh, frac);
                    next.exp_start = interpolate(l.exp_wh, s.exp_wh, frac);
                    cur.imp_end = next.imp_start;
                    cur.exp_end = next.exp_start;
                    done.push(std::mem::replace(cur, next));
                    from = b;
                }
                if hold {
                    cur.integrate(&l, from, s.at_ms);
                }
            }
            _ => {
                // A first reading or a long silence: nothing is known about the time since.
                if s.at_ms >= cur.end() * 1000 {
                    let next = Acc::new(interval_start(s.at_ms));
                    done.push(std::mem::replace(cur, next));
                }
            }
        }
        // A counter that went down between two readings of this interval was reset or
        // replaced: its boundary difference could still look plausible, so it is a gap.
        let went_down = |a: Option<f64>, b: Option<f64>| a.zip(b).is_some_and(|(a, b)| b < a);
        if last.is_some_and(|l| {
            interval_start(l.at_ms) == cur.start
                && (went_down(l.imp_wh, s.imp_wh) || went_down(l.exp_wh, s.exp_wh))
        }) {
            cur.imp_start = None;
            cur.exp_start = None;
        }
        cur.take(&s);
        done
    }
}

#[cfg(test)]
#[path = "recorder_tests.rs"]
mod tests;
