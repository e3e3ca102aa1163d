//! The domain values every stage hands to the next: a Leap timeslot as we keep it, and the
//! command a local meter must follow. Plain data; parsing lives in `ingest`, storage in
//! `store`, and the rules that turn one into the other in `plan`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// SPEC §2.3: a timeslot is identified by (kind, event id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Meter,
    Group,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Meter => "meter",
            Kind::Group => "group",
        }
    }
}

/// SPEC §1 `performance_compensation_cap`. The raw text is always kept alongside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cap {
    UpToNomination,
    UpToSiteLoad,
    GridExportsAllowed,
}

impl Cap {
    /// SPEC §2.2: an unknown cap is treated as the most restrictive one.
    pub(crate) fn from_leap(s: Option<&str>) -> Cap {
        match s {
            Some("up-to-site-load") => Cap::UpToSiteLoad,
            Some("grid-exports-allowed") => Cap::GridExportsAllowed,
            _ => Cap::UpToNomination,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cap::UpToNomination => "up-to-nomination",
            Cap::UpToSiteLoad => "up-to-site-load",
            Cap::GridExportsAllowed => "grid-exports-allowed",
        }
    }
}

/// `energy_kw` as Leap sent it. Null ("the maximum the site can manage") and absent are
/// kept apart so the stored record says exactly what arrived; both dispatch the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "kw")]
pub enum EnergyKw {
    #[default]
    Absent,
    Null,
    Kw(f64),
}

impl EnergyKw {
    pub(crate) fn kw(self) -> Option<f64> {
        match self {
            EnergyKw::Kw(v) => Some(v),
            _ => None,
        }
    }

    /// Leap's JSON form: a number, or null for both null and absent.
    pub(crate) fn to_json(self) -> serde_json::Value {
        match self {
            EnergyKw::Kw(v) => serde_json::json!(v),
            _ => serde_json::Value::Null,
        }
    }
}

/// One accepted timeslot with its parent entry's context, as stored in a revision.
/// Field names follow Leap's where Leap has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeslot {
    pub kind: Kind,
    /// `meter_event_id` or `market_group_event_id`.
    pub event_id: String,
    /// Meter dispatch: the one meter. Group dispatch: `meter_ids` of the group.
    pub meter_ids: Vec<String>,
    /// Group dispatch only.
    pub market_group_id: Option<String>,
    /// `partner_reference` (meter) or `partner_references` (group).
    pub partner_references: Vec<String>,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub cancelled: bool,
    pub energy_kw: EnergyKw,
    pub nomination_kw: Option<f64>,
    /// The cap text as Leap sent it (None when absent); see [`Timeslot::cap`].
    pub performance_compensation_cap: Option<String>,
    /// 1 is highest. Absent is stored as None and planned as the lowest (10).
    pub priority: Option<i64>,
    pub is_voluntary: bool,
    pub dispatch_event_types: Vec<String>,
    pub programs: Vec<String>,
    /// The per-timeslot flag some Leap answers carry.
    pub communication_test: Option<bool>,
    /// Notification-level flags, copied so a timeslot carries what its policy depends on.
    pub integration_test_notification: bool,
    pub notification_communication_test: bool,
    /// SPEC §2.2: what was wrong in optional fields (wrong type, out of range) and how it
    /// was read instead; the timeslot is dispatched all the same. Not part of Leap's data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Priority used for planning when Leap sent none: the lowest there is.
pub(crate) const LOWEST_PRIORITY: i64 = 10;

impl Timeslot {
    pub(crate) fn cap(&self) -> Cap {
        Cap::from_leap(self.performance_compensation_cap.as_deref())
    }

    pub(crate) fn plan_priority(&self) -> i64 {
        self.priority.unwrap_or(LOWEST_PRIORITY)
    }

    /// True when this is a communication test at either level.
    pub(crate) fn is_communication_test(&self) -> bool {
        self.notification_communication_test || self.communication_test.unwrap_or(false)
    }

    #[cfg(test)]
    pub(crate) fn is_active_at(&self, t: DateTime<Utc>) -> bool {
        self.start_time <= t && t < self.end_time
    }
}

/// A timeslot as the store hands it out: the effective revision plus bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredTimeslot {
    pub timeslot: Timeslot,
    /// SPEC §2.4: once seen cancelled, cancelled for good, whatever arrives later.
    pub cancelled_final: bool,
    /// A revision tried to un-cancel it (SPEC §2.4 conflict).
    pub conflict: bool,
    pub revisions: i64,
    pub duplicates: i64,
    pub first_received: DateTime<Utc>,
    pub last_received: DateTime<Utc>,
}

impl StoredTimeslot {
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled_final || self.timeslot.cancelled
    }
}

/// Whether a command moves the battery (SPEC §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecMode {
    Execute,
    DryRun,
}

/// SPEC §2.9 per-program strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    Award,
    Maximize,
}

/// What the battery is asked for, before the closed loop sees the site.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "kw")]
pub enum Target {
    /// Reduce site import (or export) by this many kW.
    Kw(f64),
    /// The maximum the site can manage within the cap.
    Maximum,
    /// A technician's manual override: this battery power (kW, discharge positive, charge
    /// negative), still inside the reserve and the no-export rule.
    Setpoint(f64),
}

/// The command for one local meter over one plan interval (SPEC §2.9). Two commands are
/// equal when they ask the battery for the same thing: see the `PartialEq` below.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Command {
    pub kind: Kind,
    pub event_id: String,
    pub mode: ExecMode,
    pub target: Target,
    pub cap: Cap,
    /// Upper bound on the reduction in kW (up-to-nomination), if any.
    pub limit_kw: Option<f64>,
    /// Export the site may reach (kW, ≥ 0). 0 means grid import is held at the margin.
    pub export_allowed_kw: f64,
    /// Grid import kept at or above this when export is not allowed.
    pub import_margin_kw: f64,
    pub strategy: Strategy,
    pub priority: i64,
    pub programs: Vec<String>,
    /// End of the governing timeslot: the closed loop spreads stored energy up to here.
    pub until: DateTime<Utc>,
    /// Why this timeslot governs (for schedule and logs). Free text: not part of equality.
    pub reason: String,
    /// When the gateway first stored the governing timeslot (None: not from Leap, e.g. a
    /// manual override). Tells a late arrival from a take-over; not part of equality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_since: Option<DateTime<Utc>>,
}

/// Equality by what the battery is asked to do. The free-text `reason` takes no part: a
/// runner-up timeslot that appears changes the words, not the command, and must not
/// re-apply and re-audit the running event. (The destructuring makes a new field choose.)
impl PartialEq for Command {
    fn eq(&self, other: &Self) -> bool {
        let Command {
            kind,
            event_id,
            mode,
            target,
            cap,
            limit_kw,
            export_allowed_kw,
            import_margin_kw,
            strategy,
            priority,
            programs,
            until,
            reason: _,
            known_since: _,
        } = self;
        *kind == other.kind
            && *event_id == other.event_id
            && *mode == other.mode
            && *target == other.target
            && *cap == other.cap
            && *limit_kw == other.limit_kw
            && *export_allowed_kw == other.export_allowed_kw
            && *import_margin_kw == other.import_margin_kw
            && *strategy == other.strategy
            && *priority == other.priority
            && *programs == other.programs
            && *until == other.until
    }
}

/// What a technician sees in `leap-edge events` (issue: events listing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum TimeslotStatus {
    Upcoming,
    Active,
    Ended,
    Cancelled,
    Rejected,
    UnmappedMeter,
}

impl TimeslotStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TimeslotStatus::Upcoming => "upcoming",
            TimeslotStatus::Active => "active",
            TimeslotStatus::Ended => "ended",
            TimeslotStatus::Cancelled => "cancelled",
            TimeslotStatus::Rejected => "rejected",
            TimeslotStatus::UnmappedMeter => "unmapped-meter",
        }
    }
}

impl StoredTimeslot {
    /// Cancellation wins over everything; a timeslot no local meter serves is flagged
    /// (SPEC §2.7) whatever its time.
    pub(crate) fn status(&self, now: DateTime<Utc>, has_local_meter: bool) -> TimeslotStatus {
        let t = &self.timeslot;
        if self.is_cancelled() {
            TimeslotStatus::Cancelled
        } else if !has_local_meter {
            TimeslotStatus::UnmappedMeter
        } else if now < t.start_time {
            TimeslotStatus::Upcoming
        } else if now < t.end_time {
            TimeslotStatus::Active
        } else {
            TimeslotStatus::Ended
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Kw(kw) => write!(f, "{kw:.2} kW"),
            Target::Maximum => f.write_str("maximum"),
            Target::Setpoint(kw) if *kw < 0.0 => write!(f, "charge {:.2} kW (manual)", -kw),
            Target::Setpoint(kw) if *kw > 0.0 => write!(f, "discharge {kw:.2} kW (manual)"),
            Target::Setpoint(_) => f.write_str("hold (manual)"),
        }
    }
}

/// What the planner makes for one active p1 up-to-site-load meter timeslot: the common
/// starting point of the tests, which change the fields they are about.
#[cfg(any(test, feature = "test-util"))]
impl Command {
    pub fn award(event_id: &str, kw: f64, until: DateTime<Utc>) -> Command {
        Command {
            kind: Kind::Meter,
            event_id: event_id.into(),
            mode: ExecMode::Execute,
            target: Target::Kw(kw),
            cap: Cap::UpToSiteLoad,
            limit_kw: None,
            export_allowed_kw: 0.0,
            import_margin_kw: 0.5,
            strategy: Strategy::Award,
            priority: 1,
            programs: vec!["DRAM".into()],
            until,
            reason: "p1 commitment, the only active timeslot".into(),
            known_since: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn command() -> Command {
        Command::award(
            "e1",
            10.0,
            Utc.with_ymd_and_hms(2026, 11, 1, 13, 0, 0).unwrap(),
        )
    }

    #[test]
    fn commands_differing_only_in_reason_are_equal() {
        let a = command();
        let b = Command {
            reason: "p1 commitment over p3 voluntary e2: lower priority number".into(),
            known_since: None,
            ..command()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn commands_differing_in_what_the_battery_does_are_not() {
        let a = command();
        assert_ne!(
            a,
            Command {
                target: Target::Kw(9.0),
                ..command()
            }
        );
        assert_ne!(
            a,
            Command {
                event_id: "e2".into(),
                ..command()
            }
        );
        assert_ne!(
            a,
            Command {
                mode: ExecMode::DryRun,
                ..command()
            }
        );
        assert_ne!(
            a,
            Command {
                cap: Cap::UpToNomination,
                ..command()
            }
        );
        assert_ne!(
            a,
            Command {
                until: a.until + chrono::Duration::seconds(1),
                ..command()
            }
        );
    }
}
