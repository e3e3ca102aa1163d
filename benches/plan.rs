//! Planning time for 10,000 stored timeslots across 100 local meters, 48 h window.
//! Run with `cargo bench --bench plan` (bench profile = release settings). Prints one row
//! per scenario: min / p50 / p99 / max over N runs.
//!
//! - `dense-48h`: every timeslot inside the window (100 per meter, heavily overlapping,
//!   a fifth of them group timeslots over 5 meters) — the worst case the planner can meet.
//! - `store-30d`: the same count spread over 30 days around the window, as a store that
//!   keeps history returns them; most are excluded (ended / after the window).
//! - `group-2000`: one market group of 2,000 meters (100 of them local) with 96
//!   quarter-hour timeslots — a day-ahead award as a relay delivers it whole to every
//!   gateway: 192,000 meter ids walked by every plan.

use chrono::{DateTime, Duration, TimeZone, Utc};
use leap_edge::model::{EnergyKw, Kind, StoredTimeslot, Timeslot};
use leap_edge::plan::{PlanConfig, PlanInput, PlanMeter, plan};
use std::hint::black_box;
use std::time::Instant;

const TIMESLOTS: usize = 10_000;
const METERS: usize = 100;
const RUNS: usize = 200;

/// xorshift64*: deterministic input without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn meter_id(i: usize) -> String {
    format!("{i:08x}-0000-4000-8000-000000000000")
}

fn timeslot(rng: &mut Rng, i: usize, origin: DateTime<Utc>, span_min: u64) -> StoredTimeslot {
    let group = rng.below(5) == 0;
    let first = rng.below(METERS as u64) as usize;
    let meter_ids = if group {
        // Four local meters and one foreign, as a market group spans several sites.
        let mut ids: Vec<String> = (0..4).map(|k| meter_id((first + k) % METERS)).collect();
        ids.push(meter_id(METERS + 1));
        ids
    } else {
        vec![meter_id(first)]
    };
    let start = origin + Duration::minutes((rng.below(span_min / 5) * 5) as i64);
    let length = Duration::minutes((15 + rng.below(16) * 15) as i64);
    let cap = [
        "up-to-nomination",
        "up-to-site-load",
        "grid-exports-allowed",
    ][rng.below(3) as usize];
    let timeslot = Timeslot {
        kind: if group { Kind::Group } else { Kind::Meter },
        event_id: format!("{:016x}-{i}", rng.next()),
        meter_ids,
        market_group_id: group.then(|| "11aa7aae-24e5-455f-91e9-e0f5f145f2ae".into()),
        partner_references: vec![],
        start_time: start,
        end_time: start + length,
        cancelled: rng.below(20) == 0,
        energy_kw: if rng.below(4) == 0 {
            EnergyKw::Null
        } else {
            EnergyKw::Kw(1.0 + rng.below(50) as f64)
        },
        nomination_kw: (rng.below(2) == 0).then(|| 1.0 + rng.below(60) as f64),
        performance_compensation_cap: Some(cap.into()),
        priority: Some(1 + rng.below(10) as i64),
        is_voluntary: rng.below(2) == 0,
        dispatch_event_types: vec!["day-ahead".into()],
        programs: vec![["DRAM", "ELRP", "CCA", "PJM-CAPACITY"][rng.below(4) as usize].into()],
        communication_test: None,
        integration_test_notification: rng.below(50) == 0,
        notification_communication_test: false,
        warnings: vec![],
    };
    StoredTimeslot {
        timeslot,
        cancelled_final: false,
        conflict: false,
        revisions: 1,
        duplicates: 0,
        first_received: origin,
        last_received: origin,
    }
}

fn config() -> PlanConfig {
    PlanConfig {
        meters: (0..METERS)
            .map(|i| PlanMeter {
                id: meter_id(i),
                weight: 1.0,
            })
            .collect(),
        export_limit_kw: 10.0,
        import_margin_kw: 0.5,
        ..PlanConfig::default()
    }
}

fn scenario(name: &str, origin: DateTime<Utc>, span_min: u64, from: DateTime<Utc>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let slots: Vec<StoredTimeslot> = (0..TIMESLOTS)
        .map(|i| timeslot(&mut rng, i, origin, span_min))
        .collect();
    measure(name, &slots, from);
}

/// 96 quarter-hour timeslots of one group listing 2,000 meters, the local ones spread
/// through the list.
fn big_group(from: DateTime<Utc>) {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let ids: Vec<String> = (0..2_000)
        .map(|k| {
            if k % 20 == 0 {
                meter_id(k / 20)
            } else {
                meter_id(METERS + k)
            }
        })
        .collect();
    let slots: Vec<StoredTimeslot> = (0..96)
        .map(|i| {
            let mut s = timeslot(&mut rng, i, from, 60);
            s.timeslot.kind = Kind::Group;
            s.timeslot.meter_ids = ids.clone();
            s.timeslot.cancelled = false;
            s.timeslot.start_time = from + Duration::minutes(15 * i as i64);
            s.timeslot.end_time = s.timeslot.start_time + Duration::minutes(15);
            s
        })
        .collect();
    measure("group-2000", &slots, from);
}

fn measure(name: &str, slots: &[StoredTimeslot], from: DateTime<Utc>) {
    let count = slots.len();
    let cfg = config();
    let input = PlanInput {
        timeslots: slots,
        config: &cfg,
        from,
        to: from + Duration::hours(48),
    };
    let warm = plan(&input);
    let intervals: usize = warm.meters.values().map(Vec::len).sum();
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            black_box(plan(black_box(&input)));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    println!(
        "{name:<10} {count:>9} {METERS:>6} {intervals:>9} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        warm.excluded.len(),
        pct(0.0),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

fn main() {
    let from = Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap();
    println!("plan(): {RUNS} runs per scenario, window 48 h, times in ms");
    println!(
        "{:<10} {:>9} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "scenario", "timeslots", "meters", "intervals", "excluded", "min", "p50", "p99", "max"
    );
    scenario("dense-48h", from, 48 * 60, from);
    scenario("store-30d", from - Duration::days(15), 30 * 24 * 60, from);
    big_group(from);
}
