//! Planning, pure: stored timeslots + site configuration + a time window → for each local
//! meter an ordered list of command intervals (SPEC §2.6–2.9). No I/O and no clock reads:
//! the caller passes the window, so dispatch, the CLI's `schedule` and the tests all see the
//! same answer for the same input.
//!
//! Pipeline: [`select`] decides which (timeslot, local meter) pairs are candidates and why
//! the others are excluded; [`timeline`] sweeps each meter's candidates and keeps the
//! governing one at every instant; [`command`] turns a governing candidate into a
//! [`Command`].
//!
//! Decision (SPEC §2.6 leaves it open): a timeslot that executes always governs over a
//! dry-run one active at the same instant, whatever their priorities — a test notification
//! must never displace a real dispatch. Priority and the SPEC §2.8 ties only order
//! timeslots of the same mode.

mod command;
mod select;
pub(crate) use command::paid_share_kw;
pub(crate) use select::{group_weight, test_policy};
mod timeline;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_rules;

use crate::config::{Config, PolicyConfig, StrategyConfig};
use crate::model::{Command, Kind, StoredTimeslot};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// The part of the configuration planning depends on. Build it once per configuration
/// load with [`PlanConfig::from_config`].
#[derive(Debug, Clone, Default)]
pub struct PlanConfig {
    pub meters: Vec<PlanMeter>,
    /// `site.export_limit_kw`: the most a grid-exports-allowed timeslot may export.
    pub export_limit_kw: f64,
    /// `site.import_margin_kw`, copied into every command.
    pub import_margin_kw: f64,
    pub policy: PolicyConfig,
    pub strategy: StrategyConfig,
}

/// A local meter: Leap's meter id as configured, and its weight in group shares.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanMeter {
    pub id: String,
    pub weight: f64,
}

impl PlanConfig {
    pub(crate) fn from_config(config: &Config) -> PlanConfig {
        PlanConfig {
            meters: config
                .meters
                .iter()
                .map(|m| PlanMeter {
                    id: m.id.clone(),
                    weight: m.weight,
                })
                .collect(),
            export_limit_kw: config.site.export_limit_kw,
            import_margin_kw: config.site.import_margin_kw,
            policy: config.policy.clone(),
            strategy: config.strategy.clone(),
        }
    }
}

impl From<&Config> for PlanConfig {
    fn from(config: &Config) -> Self {
        PlanConfig::from_config(config)
    }
}

/// What to plan: every stored timeslot (cancelled ones included; they are excluded here,
/// with their reason) over the window `[from, to)`.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub timeslots: &'a [StoredTimeslot],
    pub config: &'a PlanConfig,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// One meter follows `command` over `[start, end)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interval {
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
    pub(crate) command: Command,
}

/// Why a timeslot (or a timeslot on one meter) does not appear in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "code")]
pub(crate) enum ExcludeReason {
    /// end_time ≤ start_time, or a kW value that is negative or not a number. Ingest
    /// rejects these (SPEC §2.2); planning refuses them again rather than trust it.
    Invalid { why: String },
    /// SPEC §2.4: cancelled, or seen cancelled once (`conflict`: a later revision tried to
    /// un-cancel it).
    Cancelled { conflict: bool },
    /// SPEC §2.7: a meter timeslot for a meter not configured here.
    UnmappedMeter,
    /// SPEC §2.7: a group timeslot none of whose `meter_ids` is configured here.
    NoLocalMeterInGroup,
    /// SPEC §2.6: the test policy for this kind of notification is `ignore`.
    IgnoredByPolicy { policy: TestKind },
    /// Ended at or before the window's start.
    Ended,
    /// Starts at or after the window's end.
    AfterWindow,
    /// Planned on `meter_id` but never governs there within the window: another timeslot
    /// takes precedence at every instant it is active.
    Overridden,
}

/// Which SPEC §2.6 policy applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum TestKind {
    IntegrationTest,
    CommunicationTest,
}

impl fmt::Display for ExcludeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExcludeReason::Invalid { why } => write!(f, "invalid: {why}"),
            ExcludeReason::Cancelled { conflict: false } => f.write_str("cancelled"),
            ExcludeReason::Cancelled { conflict: true } => {
                f.write_str("cancelled (a later revision tried to un-cancel it)")
            }
            ExcludeReason::UnmappedMeter => f.write_str("unmapped meter"),
            ExcludeReason::NoLocalMeterInGroup => f.write_str("no local meter in group"),
            ExcludeReason::IgnoredByPolicy { policy } => match policy {
                TestKind::IntegrationTest => f.write_str("ignored: integration test policy"),
                TestKind::CommunicationTest => f.write_str("ignored: communication test policy"),
            },
            ExcludeReason::Ended => f.write_str("ended before the window"),
            ExcludeReason::AfterWindow => f.write_str("starts after the window"),
            ExcludeReason::Overridden => {
                f.write_str("overridden throughout the planned window (it may govern outside it)")
            }
        }
    }
}

/// A timeslot left out of the plan. `meter_id` is set when the reason concerns one local
/// meter only ([`ExcludeReason::Overridden`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Excluded {
    pub(crate) kind: Kind,
    pub(crate) event_id: String,
    pub(crate) meter_id: Option<String>,
    pub(crate) reason: ExcludeReason,
}

/// Per local meter (every configured meter has an entry; empty = normal operation all
/// window long), the command intervals: sorted, never overlapping, gaps only where no
/// timeslot is active, adjacent pieces of one governing timeslot merged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub(crate) from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub meters: BTreeMap<String, Vec<Interval>>,
    pub excluded: Vec<Excluded>,
}

/// Plan the window. Deterministic: the same input gives the same plan.
pub fn plan(input: &PlanInput) -> Plan {
    let selection = select::select(input);
    let mut excluded = selection.excluded;
    let mut meters = BTreeMap::new();
    for (m, meter) in input.config.meters.iter().enumerate() {
        let out = timeline::sweep(&selection.candidates, &selection.by_meter[m], input.config);
        for c in out.never_governed {
            let ts = selection.candidates[c].ts;
            excluded.push(Excluded {
                kind: ts.kind,
                event_id: ts.event_id.clone(),
                meter_id: Some(meter.id.clone()),
                reason: ExcludeReason::Overridden,
            });
        }
        meters.insert(meter.id.clone(), out.intervals);
    }
    Plan {
        from: input.from,
        to: input.to,
        meters,
        excluded,
    }
}

impl Plan {
    fn intervals_of(&self, meter: &str) -> Option<&[Interval]> {
        self.meters
            .get(meter)
            .or_else(|| {
                self.meters
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(meter))
                    .map(|(_, v)| v)
            })
            .map(Vec::as_slice)
    }

    /// The interval `meter` is in at `t` (None: normal operation, or `t` outside the window).
    /// The meter id is matched exactly, then case-insensitively.
    pub(crate) fn command_at(&self, meter: &str, t: DateTime<Utc>) -> Option<&Interval> {
        let ivs = self.intervals_of(meter)?;
        let i = ivs.partition_point(|iv| iv.start <= t);
        let iv = ivs.get(i.checked_sub(1)?)?;
        (t < iv.end).then_some(iv)
    }

    /// The first instant strictly after `t` at which `meter`'s command changes.
    #[cfg(test)]
    pub(crate) fn next_boundary_for(&self, meter: &str, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        next_in(self.intervals_of(meter)?, t)
    }

    /// The first instant strictly after `t` at which any meter's command changes. An
    /// interval cut at the window's end reports `to` as a boundary: replan before then.
    pub(crate) fn next_boundary_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.meters.values().filter_map(|ivs| next_in(ivs, t)).min()
    }
}

fn next_in(ivs: &[Interval], t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Intervals are sorted and disjoint, so ends are sorted too: the first interval ending
    // after t holds the answer (its start if that is still ahead, else its end).
    let i = ivs.partition_point(|iv| iv.end <= t);
    let iv = ivs.get(i)?;
    Some(if iv.start > t { iv.start } else { iv.end })
}
