//! The daemon's interval recorder: readings from the control loops in, intervals out to
//! SQLite. A finished interval is written at once; the open one every [`FLUSH_EVERY`] and
//! at shutdown, so a restart resumes it (and, with accumulators, stays exact).

use super::MeterReading;
use super::db;
use super::recorder::{Acc, Recorder};
use crate::config::Config;
use crate::store::Store;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// How often (in reading time) the open interval is saved: the most a SIGKILL loses.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Meter {
    rec: Recorder,
    saved_at_ms: i64,
    /// The last reading's wall time and when it arrived (monotonic): a clock step shows as
    /// the two gaps disagreeing.
    seen: Option<(i64, std::time::Instant)>,
    /// Finished intervals a failed store write did not keep: saved with the next ones.
    unsaved: Vec<Acc>,
}

/// A day of quarter hours: what a store that keeps failing may hold back in memory.
const MAX_UNSAVED: usize = 96;

/// Wall and monotonic time between two readings may differ by this much (delivery jitter)
/// before it counts as a clock step.
const STEP_MS: i64 = 5_000;

impl Meter {
    /// What the next write saves: the intervals a failed write left, then `done`.
    fn batch(&mut self, done: Vec<Acc>) -> Vec<Acc> {
        let mut all = std::mem::take(&mut self.unsaved);
        all.extend(done);
        all
    }

    /// A write of `batch` failed: keep it for the next one (the newest day of it).
    fn keep_unsaved(&mut self, mut batch: Vec<Acc>) {
        let over = batch.len().saturating_sub(MAX_UNSAVED);
        batch.drain(..over);
        self.unsaved = batch;
    }

    /// Compares capture stamps, not arrival: a recorder busy with the store, readings
    /// queued meanwhile, is not a clock step.
    fn check_clock(&mut self, meter_id: &str, at_ms: i64, taken: Option<std::time::Instant>) {
        let Some(now) = taken else {
            self.seen = None;
            return;
        };
        if let Some((wall, mono)) = self.seen {
            let real = i64::try_from(now.duration_since(mono).as_millis()).unwrap_or(i64::MAX);
            let stepped = (at_ms - wall).saturating_sub(real);
            if stepped.abs() > STEP_MS {
                tracing::warn!(
                    meter_id,
                    stepped_ms = stepped,
                    "intervals: the wall clock stepped; the open interval's counter energy is left unknown (a gap) rather than put in the wrong quarter hour"
                );
                self.rec.clock_stepped();
            }
        }
        self.seen = Some((at_ms, now));
    }
}

/// `config`: the meters (and group weights) that event reports are written for.
pub async fn run(
    store: Store,
    config: Option<Arc<Config>>,
    mut readings: broadcast::Receiver<MeterReading>,
    mut stop: watch::Receiver<bool>,
) {
    let mut meters: HashMap<String, Meter> = HashMap::new();
    let period = config
        .as_ref()
        .map(|c| Duration::from_millis(c.site.control_period_ms));
    while !*stop.borrow() {
        tokio::select! {
            r = stop.changed() => if r.is_err() { break },
            r = readings.recv() => match r {
                Ok(reading) => {
                    let at = reading.at;
                    if take(&store, &mut meters, reading, period).await {
                        audit_ended(&store, config.as_ref(), at).await;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "intervals: recorder fell behind, readings skipped");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    save_open(&store, &meters).await;
}

/// The recorder for a meter seen for the first time since start: the stored open interval,
/// resumed.
async fn resume(store: &Store, meter_id: &str, at_ms: i64, period: Option<Duration>) -> Meter {
    let id = meter_id.to_string();
    let open = store
        .read(move |c| db::load_open(c, &id))
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "intervals: cannot resume the open interval");
            None
        });
    // A stored reading later than now (a gateway without a battery-backed clock,
    // booted before NTP), or a clock known to be unsynchronised: the downtime's energy
    // cannot be placed, so it is not bridged into the resumed interval.
    let untrusted = open
        .as_ref()
        .and_then(|o| o.last)
        .is_some_and(|l| l.at_ms > at_ms)
        // On a blocking thread: it may run `timedatectl` (up to 2 s).
        || tokio::task::spawn_blocking(crate::clock::synchronised)
            .await
            .is_ok_and(|s| s == Some(false));
    let mut m = Meter {
        rec: match period {
            Some(p) => Recorder::resume(open).with_period(p),
            None => Recorder::resume(open),
        },
        saved_at_ms: at_ms,
        seen: None,
        unsaved: Vec::new(),
    };
    if untrusted {
        tracing::warn!(
            meter_id,
            "intervals: the clock is behind the last stored reading or unsynchronised; the resumed interval is not bridged across the restart"
        );
        m.rec.clock_stepped();
    }
    m
}

/// Record one reading; true when it saved something (then also time to audit).
async fn take(
    store: &Store,
    meters: &mut HashMap<String, Meter>,
    reading: MeterReading,
    period: Option<Duration>,
) -> bool {
    let Some(sample) = reading.sample() else {
        return false;
    };
    if !meters.contains_key(&reading.meter_id) {
        let m = resume(store, &reading.meter_id, sample.at_ms, period).await;
        meters.insert(reading.meter_id.clone(), m);
    }
    let m = meters.get_mut(&reading.meter_id).expect("inserted above");
    m.check_clock(&reading.meter_id, sample.at_ms, reading.mono);
    let done = m.rec.push(sample);
    let due = sample.at_ms - m.saved_at_ms >= FLUSH_EVERY.as_millis() as i64;
    if done.is_empty() && !due {
        return false;
    }
    m.saved_at_ms = sample.at_ms;
    for acc in &done {
        log_done(&reading.meter_id, acc);
    }
    let batch = m.batch(done);
    let id = reading.meter_id.clone();
    let open = m.rec.open.clone();
    let kept = batch.clone();
    let dropped = m.rec.take_dropped();
    let saved = store
        .call(move |c| {
            let tx = c.transaction()?;
            if let Some(start) = dropped {
                db::drop_open(&tx, &id, start)?;
            }
            for acc in &kept {
                db::save(&tx, &id, acc, false)?;
            }
            if let Some(o) = &open {
                db::save(&tx, &id, o, true)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await;
    if let Err(e) = saved {
        tracing::error!(meter_id = %reading.meter_id, error = %e, intervals = batch.len(),
            "intervals: cannot store intervals; kept to be saved with the next ones");
        m.keep_unsaved(batch);
        if let Some(start) = dropped {
            m.rec.keep_dropped(start);
        }
    }
    true
}

/// Issue 14 point 4: the summary of each timeslot that ended goes to the audit log.
async fn audit_ended(
    store: &Store,
    config: Option<&Arc<Config>>,
    now: chrono::DateTime<chrono::Utc>,
) {
    let Some(config) = config.cloned() else {
        return;
    };
    if let Err(e) = store
        .call(move |c| super::gather::audit_ended(c, &config, now))
        .await
    {
        tracing::warn!(error = %e, "report: cannot write event summaries to the audit log");
    }
}

fn log_done(meter_id: &str, acc: &Acc) {
    let start = super::csv::utc(acc.start);
    match acc.energy() {
        Some(e) => tracing::debug!(%meter_id, %start, import_wh = e.import_wh,
            export_wh = e.export_wh, source = e.source.as_str(), "intervals: interval complete"),
        None => tracing::info!(%meter_id, %start, covered_s = acc.covered_ms / 1000,
            "intervals: interval incomplete (readings missing), kept as a gap"),
    }
}

async fn save_open(store: &Store, meters: &HashMap<String, Meter>) {
    let open: Vec<(String, Acc)> = meters
        .iter()
        .filter_map(|(id, m)| m.rec.open.clone().map(|o| (id.clone(), o)))
        .collect();
    if open.is_empty() {
        return;
    }
    let saved = store
        .call(move |c| {
            for (id, o) in &open {
                db::save(c, id, o, true)?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = saved {
        tracing::warn!(error = %e, "intervals: cannot save the open interval");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store write that failed loses no finished interval: they go with the next write,
    /// the newest day of them if the store keeps failing. Before, they were dropped, and
    /// their row stayed `open` ("recording") for ever.
    #[test]
    fn finished_intervals_a_failed_write_left_go_with_the_next() {
        let mut m = Meter {
            rec: Recorder::default(),
            saved_at_ms: 0,
            seen: None,
            unsaved: Vec::new(),
        };
        let acc = |n: i64| Acc::new(n * 900);
        let first = m.batch(vec![acc(1), acc(2)]);
        m.keep_unsaved(first);
        let next = m.batch(vec![acc(3)]);
        let starts: Vec<i64> = next.iter().map(|a| a.start).collect();
        assert_eq!(starts, [900, 1800, 2700]);
        m.keep_unsaved((0..200).map(acc).collect());
        assert_eq!(m.unsaved.len(), MAX_UNSAVED);
        assert_eq!(m.unsaved.last().unwrap().start, 199 * 900);
        assert!(m.batch(vec![]).len() == MAX_UNSAVED && m.unsaved.is_empty());
    }
}
