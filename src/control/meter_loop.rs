//! One task per local meter: every control period read the site, run the control law and
//! write the setpoint; hand the battery back to normal when asked. Failures are logged,
//! kept in status and retried on the next period (SCENARIOS 20), and a command that does
//! not change is still re-written before the device's reversion timeout (SPEC §2.10).

use super::frozen::FrozenMeter;
use super::law::{Decision, Flags, Limits, decide, grid_floor_kw};
use super::sanity::{blind_reason, recordable, stale_reason};
use super::signs::SignCheck;
use super::status::{CommandSummary, ControlEvent, MeterStatus};
use super::unheld::{Observed, UnheldSetpoint};
use crate::clock::Clock;
use crate::config::SiteConfig;
use crate::device::{Battery, DeviceError, Telemetry};
use crate::model::{Cap, Command, ExecMode};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// A setpoint differing from the last written one by less than this is not re-written
/// (until the refresh is due): below any inverter's resolution.
const DEADBAND_KW: f64 = 0.01;
/// For a device that holds the grid at a written target itself (Victron ESS 2700): the
/// target follows the site's load, which moves by more than 10 W every second, and each
/// write wears the device's flash (Victron's own warning). The device keeps the grid at the
/// old target meanwhile, so no export comes of a stale one; only the delivered power is off
/// by at most this much.
const GRID_TARGET_DEADBAND_KW: f64 = 0.2;
/// Grid readings this close to a bound are not counted as a violation (meter noise).
const VIOLATION_TOLERANCE_KW: f64 = 0.05;
/// A failure that repeats unchanged is logged at WARN at most this often.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(30);

/// What dispatch wants from one meter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Desired {
    Normal,
    Follow(Command),
}

/// A numbered request; the loop answers each with the outcome of its first step.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) seq: u64,
    pub(crate) desired: Desired,
}

#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) seq: u64,
    pub(crate) result: Result<(), String>,
}

/// Fixed settings of one meter's loop.
#[derive(Debug, Clone)]
pub(crate) struct LoopSettings {
    pub(crate) meter_id: String,
    pub(crate) device: String,
    pub(crate) period: Duration,
    pub(crate) reversion_secs: u32,
    pub(crate) site: SiteConfig,
    /// Configured nameplate (the smaller of this and the device's report is used).
    pub(crate) nameplate: Limits,
}

pub(crate) struct Channels {
    pub(crate) requests: watch::Receiver<Request>,
    pub(crate) outcomes: watch::Sender<Outcome>,
    pub(crate) shutdown: watch::Receiver<Option<Duration>>,
    /// Issue 14: every successful reading, for the interval recorder (none listening: dropped).
    pub(crate) readings: tokio::sync::broadcast::Sender<crate::intervals::MeterReading>,
}

struct LastWrite {
    at: Instant,
    setpoint_kw: f64,
    held: f64,
}

pub(crate) struct MeterLoop {
    s: LoopSettings,
    battery: Box<dyn Battery>,
    clock: Arc<dyn Clock>,
    ch: Channels,
    status: Arc<Mutex<MeterStatus>>,
    desired: Desired,
    /// Request awaiting its first outcome.
    pending: Option<u64>,
    /// True when the device is known to be in normal operation (nothing written since
    /// the last acknowledged release). Unknown at start, so it is released at dispatch's
    /// first word or after `STARTUP_HOLD`: a daemon killed mid-dispatch may have left it
    /// under remote control.
    released: bool,
    /// When the last command was written, its setpoint and what it held the device to
    /// (`Battery::held_target`).
    last_write: Option<LastWrite>,
    last_read: Option<Instant>,
    last_flags: Flags,
    /// Whether the site meter still sees the battery (`frozen.rs`).
    frozen: FrozenMeter,
    /// Whether the battery holds its setpoint where that matters for export (`unheld.rs`).
    unheld: UnheldSetpoint,
    /// Whether the site meter moves against the battery, as it must (`signs.rs`).
    signs: SignCheck,
    /// A reversed-sign finding made at this reading, whose `blind` row is due.
    finding_due: Option<String>,
    last_logged_error: Option<(String, Instant)>,
    /// A setpoint the device refused, and until when it is not written again (unless the
    /// command changes): each attempt is a refused write, a hand-back write and a log line.
    refused: Option<(Instant, DeviceError)>,
    /// Setpoint writes in a row that failed without a refusal (a timeout, a busy device, a
    /// scale factor gone bad): after [`UNWRITTEN_LIMIT`] the battery is handed back.
    unwritten: u32,
    /// Until dispatch's first request (or `STARTUP_HOLD`): when this loop started.
    awaiting_first: Option<Instant>,
}

/// Failed setpoint writes in a row after which the battery is handed back as on a
/// refusal: meanwhile the device holds the last setpoint it took, whatever the load does
/// (until its own reversion timeout, a minute or more), which under a no-export cap is an
/// export when the load falls. One failure is tried again next period.
pub(crate) const UNWRITTEN_LIMIT: u32 = 2;
/// How long a refused setpoint waits before it is tried again.
pub(crate) const REFUSED_RETRY: Duration = Duration::from_secs(30);
/// At start, how long the loop waits for dispatch's first word before it hands the battery
/// back on its own: a restart mid-timeslot must not pass the battery through normal
/// operation for the moment before the first plan re-applies the command.
pub(crate) const STARTUP_HOLD: Duration = Duration::from_secs(5);

impl MeterLoop {
    pub(crate) fn new(
        s: LoopSettings,
        battery: Box<dyn Battery>,
        clock: Arc<dyn Clock>,
        ch: Channels,
        status: Arc<Mutex<MeterStatus>>,
    ) -> MeterLoop {
        MeterLoop {
            s,
            battery,
            clock,
            ch,
            status,
            desired: Desired::Normal,
            pending: None,
            released: false,
            last_write: None,
            last_read: None,
            last_flags: Flags::default(),
            frozen: FrozenMeter::default(),
            unheld: UnheldSetpoint::default(),
            signs: SignCheck::default(),
            finding_due: None,
            last_logged_error: None,
            refused: None,
            unwritten: 0,
            awaiting_first: Some(Instant::now()),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(self.s.period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                r = self.ch.shutdown.changed() => {
                    let limit = if r.is_ok() { *self.ch.shutdown.borrow() } else { None };
                    self.stop(limit.unwrap_or(Duration::from_secs(5))).await;
                    return;
                }
                r = self.ch.requests.changed() => {
                    if r.is_err() {
                        self.stop(Duration::from_secs(5)).await;
                        return;
                    }
                    self.take_request();
                    // A new command is acted on at once; the next period counts from here.
                    tick.reset();
                }
                _ = tick.tick() => {}
            }
            self.step().await;
        }
    }

    fn take_request(&mut self) {
        let req = self.ch.requests.borrow_and_update().clone();
        let summary = match &req.desired {
            Desired::Follow(c) => Some(CommandSummary::from(c)),
            Desired::Normal => None,
        };
        if let Desired::Follow(c) = &req.desired {
            tracing::info!(
                meter_id = %self.s.meter_id, device = %self.s.device, event_id = %c.event_id,
                cap = c.cap.as_str(), command_target = %c.target, until = %c.until,
                "control: following command"
            );
        }
        let event = |d: &Desired| match d {
            Desired::Follow(c) => Some(format!("{}/{}", c.kind.as_str(), c.event_id)),
            Desired::Normal => None,
        };
        let other_event = event(&req.desired) != event(&self.desired);
        {
            let mut st = self.lock();
            // Blindness is about a command's needs: normal operation needs no readings,
            // and another event gets its own `blind` row if the readings are still bad.
            if req.desired == Desired::Normal || other_event {
                st.blind = None;
                st.blind_since = None;
            }
            // What limited the last command is not this one's (status, `limited` rows).
            st.last_decision = None;
            st.last_decision_at = None;
        }
        // A refusal is about one event's setpoints: another event is tried at once and gets
        // its own `refused` row (and no `resumed` one for the event before it).
        if req.desired == Desired::Normal || other_event {
            self.refused = None;
            self.unwritten = 0;
        }
        self.desired = req.desired;
        self.pending = Some(req.seq);
        self.awaiting_first = None;
        // A new command starts its own flag transitions and violation accounting.
        self.last_flags = Flags::default();
        self.last_read = None;
        self.frozen.new_command();
        self.unheld.start(event(&self.desired));
        self.signs.start(event(&self.desired));
        self.lock().command = summary;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MeterStatus> {
        self.status.lock().expect("meter status lock")
    }

    async fn step(&mut self) {
        let waiting = self
            .awaiting_first
            .is_some_and(|t| t.elapsed() < STARTUP_HOLD);
        // A release asked of a battery already handed back (blind, refused, or never
        // taken) is done, whatever this period's reading does: that shows in status.
        let done = self.released && self.desired == Desired::Normal;
        let result = match self.desired.clone() {
            Desired::Normal if waiting => self.observe().await,
            Desired::Normal => self.ensure_released().await,
            Desired::Follow(cmd) if self.overdue(&cmd) => self.hand_back_overdue(&cmd).await,
            Desired::Follow(cmd) => self.follow(&cmd).await,
        };
        match &result {
            Ok(()) => self.note_success(),
            Err(e) => self.note_error(e),
        }
        if let Some(seq) = self.pending.take() {
            let result = if done {
                Ok(())
            } else {
                result
                    .map_err(|e| e.to_string())
                    .and_then(|()| self.handed_back_on_first_step())
            };
            self.ch.outcomes.send_replace(Outcome { seq, result });
        }
    }

    /// A command whose first step found the readings untrusted was not applied: the battery
    /// was handed back instead. Dispatch's audit row must say so, not `ok` (and the event
    /// report must not take its time as the first setpoint's).
    fn handed_back_on_first_step(&self) -> Result<(), String> {
        match (&self.desired, self.lock().blind.clone()) {
            (Desired::Follow(_), Some(why)) => Err(format!(
                "not applied: {why}; battery handed back (`status` shows when the loop follows the command again)"
            )),
            _ => Ok(()),
        }
    }

    /// SPEC §2.10, a second line behind dispatch (which releases at the end itself): a
    /// command still here well after its timeslot ended means dispatch is stuck or gone.
    fn overdue(&self, cmd: &Command) -> bool {
        let grace = self.s.period * 2 + Duration::from_secs(1);
        chrono::Duration::from_std(grace).is_ok_and(|g| self.clock.now() >= cmd.until + g)
    }

    async fn hand_back_overdue(&mut self, cmd: &Command) -> Result<(), DeviceError> {
        tracing::error!(meter_id = %self.s.meter_id, device = %self.s.device,
            event_id = %cmd.event_id, until = %cmd.until,
            "control: the command's timeslot has ended and no new instruction came; battery handed back");
        self.push_event(
            cmd,
            "expired",
            &format!(
                "its timeslot ended at {} and nothing replaced it",
                cmd.until
            ),
        );
        self.desired = Desired::Normal;
        {
            // Blindness is about a command's needs; none is followed now.
            let mut st = self.lock();
            st.command = None;
            st.blind = None;
        }
        self.ensure_released().await
    }

    /// Read without acting: status, metrics and /healthz show the site as it is now, and an
    /// unreachable device is noticed before the next dispatch needs it.
    async fn observe(&mut self) -> Result<(), DeviceError> {
        let tel = self.battery.read().await?;
        let now = self.clock.now();
        self.hand_reading(&tel, now);
        let mut st = self.lock();
        st.last_telemetry = Some(tel);
        st.last_telemetry_at = Some(now);
        Ok(())
    }

    async fn ensure_released(&mut self) -> Result<(), DeviceError> {
        if self.released {
            return self.observe().await;
        }
        self.battery.release().await?;
        self.released = true;
        self.last_write = None;
        let now = self.clock.now();
        let mut st = self.lock();
        st.released = true;
        st.last_release_at = Some(now);
        drop(st);
        tracing::info!(meter_id = %self.s.meter_id, device = %self.s.device,
            "control: battery released to normal operation");
        Ok(())
    }

    /// A reading and how long its values took (discovery and scale factors excluded: they
    /// are redone once a minute and would make a slow device look stale then).
    async fn timed_read(&mut self) -> Result<(Telemetry, Duration), DeviceError> {
        self.battery.prepare().await?;
        let asked = Instant::now();
        let tel = self.battery.read().await?;
        Ok((tel, asked.elapsed()))
    }

    async fn follow(&mut self, cmd: &Command) -> Result<(), DeviceError> {
        let (tel, took) = match self.timed_read().await {
            Ok(read) => read,
            Err(e) => {
                if let Err(re) = self.blind(cmd, format!("reading failed: {e}")).await {
                    tracing::warn!(meter_id = %self.s.meter_id, device = %self.s.device,
                        error = %re, "control: release after a failed reading failed too");
                }
                return Err(e);
            }
        };
        let limits = Limits::merge(&tel, self.s.nameplate);
        let doubt = self.doubt(cmd, &tel);
        let untrusted = stale_reason(took, self.s.period)
            .or_else(|| blind_reason(cmd, &tel, limits, &self.s.site))
            .or(doubt);
        if let Some(finding) = self.finding_due.take() {
            // `blind()` writes a row only for the first reason of a hand-back: the finding
            // gets its own unless it is that first reason.
            let blind_writes_it =
                self.lock().blind.is_none() && untrusted.as_ref() == Some(&finding);
            if !blind_writes_it {
                self.push_event(cmd, "blind", &finding);
            }
        }
        if let Some(why) = untrusted {
            {
                let mut st = self.lock();
                st.last_telemetry = Some(tel);
                st.last_telemetry_at = Some(self.clock.now());
            }
            return self.blind(cmd, why).await;
        }
        self.see_again(cmd);
        self.account(cmd, &tel);
        let now = self.clock.now();
        let d = decide(cmd, now, &tel, limits, &self.s.site);
        self.log_flag_changes(cmd, &d);
        {
            let mut st = self.lock();
            st.last_decision = Some(d);
            st.last_decision_at = Some(now);
        }
        if cmd.mode == ExecMode::DryRun {
            // SPEC §2.6: a dry run writes nothing; the battery stays (or goes) normal.
            return self.ensure_released().await;
        }
        let held = self.battery.held_target(d.setpoint_kw, &tel);
        if !self.write_due(held) {
            return Ok(());
        }
        self.write(cmd, &d, held, &tel).await
    }

    async fn write(
        &mut self,
        cmd: &Command,
        d: &Decision,
        held: f64,
        tel: &Telemetry,
    ) -> Result<(), DeviceError> {
        if let Some((until, e)) = &self.refused
            && Instant::now() < *until
            && self.pending.is_none()
        {
            // Still handed back: say why, without another refused write. A hand-back that
            // failed is tried again every period: until it is taken, the battery holds the
            // last setpoint it accepted whatever the load does.
            let e = e.clone();
            if !self.released {
                // Warned of once at the refusal; the step's own error is `e` meanwhile.
                match self.ensure_released().await {
                    Ok(()) => tracing::info!(meter_id = %self.s.meter_id, device = %self.s.device,
                        "control: hand-back after the refused setpoint taken at last"),
                    Err(r) => tracing::debug!(meter_id = %self.s.meter_id, device = %self.s.device,
                        error = %r, "control: hand-back after a refused setpoint failed again"),
                }
            }
            return Err(e);
        }
        let taken = self.refused.take();
        let was_refused = taken.is_some();
        self.released = false;
        self.lock().released = false;
        if let Err(e) = self
            .battery
            .set_power_on(d.setpoint_kw, self.s.reversion_secs, tel)
            .await
        {
            // Unknown what the device holds now: write again next period.
            self.last_write = None;
            self.unwritten += 1;
            if e.is_refusal() || self.unwritten >= UNWRITTEN_LIMIT {
                self.refused_now(cmd, &e, was_refused).await;
            } else {
                // Not an answer (a timeout, a busy device): still handed back after the
                // refusal, tried again next period, and its `resumed` row still due.
                self.refused = taken;
            }
            return Err(e);
        }
        self.unwritten = 0;
        tracing::debug!(meter_id = %self.s.meter_id, device = %self.s.device,
            kw = d.setpoint_kw, limited_by = ?d.bound, site_load_kw = d.site_load_kw,
            "control: setpoint written");
        if was_refused {
            self.push_event(cmd, "resumed", "the device takes the setpoint again");
        }
        self.last_write = Some(LastWrite {
            at: Instant::now(),
            setpoint_kw: d.setpoint_kw,
            held,
        });
        let mut st = self.lock();
        st.last_write_at = Some(self.clock.now());
        st.last_written_kw = Some(d.setpoint_kw);
        st.writes += 1;
        Ok(())
    }

    /// SPEC §2.13: the device answers but does not hold what we ask; hand it back now
    /// instead of leaving it under remote control on a half-written command.
    async fn refused_now(&mut self, cmd: &Command, e: &DeviceError, was_refused: bool) {
        let what = if e.is_refusal() {
            "refused the setpoint".to_string()
        } else {
            format!(
                "did not take the setpoint {} times in a row",
                self.unwritten
            )
        };
        tracing::warn!(meter_id = %self.s.meter_id, device = %self.s.device, error = %e,
            "control: the device {what}; handing the battery back");
        let handed_back = match self.ensure_released().await {
            Ok(()) => "battery handed back".to_string(),
            Err(r) => {
                tracing::warn!(meter_id = %self.s.meter_id, device = %self.s.device,
                    error = %r, "control: hand-back after a refused setpoint failed");
                format!("hand-back failed too ({r}), tried again every period")
            }
        };
        // SPEC §2.13 "says why": in the audit log once, not at every retry, and what
        // became of the hand-back.
        if !was_refused {
            self.push_event(
                cmd,
                "refused",
                &format!(
                    "the device {what} ({e}); {handed_back}; the setpoint is tried again every {} s",
                    REFUSED_RETRY.as_secs()
                ),
            );
        }
        self.refused = Some((Instant::now() + REFUSED_RETRY, e.clone()));
    }

    /// SPEC §2.13 blind is not safe: a reading the decision depends on failed, is stale or
    /// out of range. Hand the battery back to its own logic in this very step (no later
    /// than the next control period after the fault) rather than hold a setpoint computed
    /// from what the site was; the loop keeps reading and resumes by itself.
    async fn blind(&mut self, cmd: &Command, why: String) -> Result<(), DeviceError> {
        let now = self.clock.now();
        let first = {
            let mut st = self.lock();
            let first = st.blind.is_none();
            if first {
                st.blind_since = Some(now);
                st.blind_total += 1;
            }
            st.blind = Some(why.clone());
            // The setpoint decided before is not what the battery does now.
            st.last_decision = None;
            st.last_decision_at = None;
            first
        };
        if first {
            tracing::warn!(meter_id = %self.s.meter_id, device = %self.s.device,
                event_id = %cmd.event_id, reason = %why,
                "control: cannot trust the readings or the device, battery handed back to normal operation");
            self.push_event(cmd, "blind", &why);
        }
        // What happened while blind is unknown: no violation accounting across the gap.
        self.last_read = None;
        // A write that failed before the hand-back is not the first of a row after it.
        self.unwritten = 0;
        if self.released {
            return Ok(());
        }
        // Forgotten before the release is tried: if it fails (the device is rebooting),
        // what the device holds when it answers again is unknown, and the first period
        // that trusts the readings again must write, not wait for the refresh.
        self.last_write = None;
        self.battery.release().await?;
        self.released = true;
        let mut st = self.lock();
        st.released = true;
        st.last_release_at = Some(self.clock.now());
        Ok(())
    }

    /// Readings are trustworthy again: say so once; the caller decides and writes.
    fn see_again(&mut self, cmd: &Command) {
        let mut st = self.lock();
        let Some(why) = st.blind.take() else { return };
        let since = st.blind_since.take();
        drop(st);
        tracing::info!(meter_id = %self.s.meter_id, device = %self.s.device,
            event_id = %cmd.event_id, was = %why, since = ?since,
            "control: site readings trustworthy again, following the command");
        self.push_event(
            cmd,
            "resumed",
            &format!("readings trustworthy again (was: {why})"),
        );
    }

    fn push_event(&self, cmd: &Command, what: &'static str, detail: &str) {
        self.lock().push_event(ControlEvent {
            at: self.clock.now(),
            meter_id: self.s.meter_id.clone(),
            event_id: cmd.event_id.clone(),
            what,
            detail: detail.to_string(),
        });
    }

    /// SPEC §2.10: write when what the device is held to moved (the setpoint, or a grid
    /// target with the load), when a new request waits for its first outcome, and in any
    /// case before half the reversion timeout has passed — checked one period early, since
    /// the next chance to write is a period away.
    fn write_due(&self, held: f64) -> bool {
        let Some(last) = &self.last_write else {
            return true;
        };
        let refresh = Duration::from_millis(u64::from(self.s.reversion_secs) * 500);
        let deadband = if self.battery.regulates_grid() {
            GRID_TARGET_DEADBAND_KW
        } else {
            DEADBAND_KW
        };
        self.pending.is_some()
            || (held - last.held).abs() >= deadband
            || last.at.elapsed() + self.s.period >= refresh
    }

    /// Status bookkeeping for a reading: telemetry, control error, violation time.
    fn account(&mut self, cmd: &Command, tel: &Telemetry) {
        let now = Instant::now();
        // A gap in readings is not counted beyond two periods: what happened then is unknown.
        let dt = self
            .last_read
            .map(|t| (now - t).min(self.s.period * 2).as_secs_f64())
            .unwrap_or(0.0);
        self.last_read = Some(now);
        let wall = self.clock.now();
        self.hand_reading(tel, wall);
        let last_kw = self.last_write.as_ref().map(|w| w.setpoint_kw);
        let mut st = self.lock();
        st.last_telemetry = Some(*tel);
        st.last_telemetry_at = Some(wall);
        st.control_error_kw = match (last_kw, tel.battery_kw) {
            (Some(sp), Some(b)) => Some((sp - b).abs()),
            _ => None,
        };
        let Some(grid) = tel.grid_kw else { return };
        let no_export = cmd.cap == Cap::UpToSiteLoad || cmd.export_allowed_kw <= 0.0;
        let allowed_export = if no_export {
            0.0
        } else {
            cmd.export_allowed_kw
        };
        if grid < -allowed_export - VIOLATION_TOLERANCE_KW {
            st.export_violation_secs += dt;
        }
        if no_export && grid < cmd.import_margin_kw - VIOLATION_TOLERANCE_KW {
            st.below_margin_secs += dt;
        }
    }

    /// SPEC §2.13, the checks that need the readings before this one: a site meter frozen
    /// at a plausible value (`frozen.rs`), a battery that does not hold its setpoint while
    /// the site exports (`unheld.rs`) and a reversed sign (`signs.rs`). None applies to a
    /// device that holds the grid itself (Victron ESS): its battery moves precisely to keep
    /// the grid still.
    fn doubt(&mut self, cmd: &Command, tel: &Telemetry) -> Option<String> {
        if self.battery.regulates_grid() {
            return None;
        }
        let now = Instant::now();
        // The site meter is needed under every cap: an export permit is kept by it too
        // (`sanity.rs`), and a meter frozen at an import lets the law discharge past it.
        let frozen = self.frozen.observe(tel.grid_kw, tel.battery_kw, now);
        let seen = Observed {
            written_kw: self.last_write.as_ref().map(|w| w.setpoint_kw),
            reading_kw: tel.battery_kw,
            grid_kw: tel.grid_kw,
            floor_kw: grid_floor_kw(cmd),
        };
        let unheld = self.unheld.observe(&seen, now);
        let reversed = self
            .signs
            .observe(tel.grid_kw, tel.battery_kw, now, !self.released);
        if self.signs.take_new_finding() {
            self.finding_due.clone_from(&reversed);
        }
        frozen.or(unheld).or(reversed)
    }

    /// Issue 14: the interval recorder gets every reading the loop takes.
    fn hand_reading(&self, tel: &Telemetry, at: chrono::DateTime<chrono::Utc>) {
        let limits = Limits::merge(tel, self.s.nameplate);
        let _ = self.ch.readings.send(crate::intervals::MeterReading {
            meter_id: self.s.meter_id.clone(),
            at,
            telemetry: recordable(tel, limits, &self.s.site),
            mono: Some(std::time::Instant::now()),
        });
    }

    fn log_flag_changes(&mut self, cmd: &Command, d: &Decision) {
        let (was, now) = (self.last_flags, d.flags);
        let (meter_id, event_id) = (&self.s.meter_id, &cmd.event_id);
        if now.reserve_reached && !was.reserve_reached {
            tracing::warn!(%meter_id, %event_id, shortfall_kw = d.shortfall_kw,
                reserve_soc_pct = self.s.site.reserve_soc_pct,
                "control: reserve state of charge reached, discharge stopped");
        }
        if now.energy_limited && !was.energy_limited {
            tracing::info!(%meter_id, %event_id, setpoint_kw = d.setpoint_kw,
                shortfall_kw = d.shortfall_kw, until = %cmd.until,
                "control: not enough stored energy for the target, spreading it to the end");
        }
        if now.using_fallback_load && !was.using_fallback_load {
            tracing::warn!(%meter_id, %event_id,
                fallback_site_load_kw = self.s.site.fallback_site_load_kw,
                "control: no site meter reading, assuming the configured fallback site load");
        }
        if now.export_unavoidable && !was.export_unavoidable {
            tracing::warn!(%meter_id, %event_id, setpoint_kw = d.setpoint_kw,
                site_load_kw = d.site_load_kw,
                "control: the site's generation exceeds what the battery can absorb, export unavoidable");
            let detail = format!(
                "site load {:.1} kW, battery at {:.1} kW ({:?}): export is the site's generation",
                d.site_load_kw, d.setpoint_kw, d.bound
            );
            self.push_event(cmd, "export-unavoidable", &detail);
        }
        if now.soc_unknown && !was.soc_unknown {
            tracing::warn!(%meter_id, %event_id,
                "control: no state of charge reading, discharge withheld (reserve cannot be guarded)");
        }
        self.last_flags = now;
    }

    fn note_success(&mut self) {
        let mut st = self.lock();
        if st.consecutive_errors > 0 {
            tracing::info!(meter_id = %self.s.meter_id, device = %self.s.device,
                failed_steps = st.consecutive_errors, "control: device answering again");
        }
        st.consecutive_errors = 0;
        drop(st);
        self.last_logged_error = None;
    }

    fn note_error(&mut self, e: &DeviceError) {
        let msg = e.to_string();
        let now = Instant::now();
        let repeat = matches!(&self.last_logged_error,
            Some((m, at)) if *m == msg && now - *at < REPEAT_LOG_EVERY);
        let mut st = self.lock();
        st.consecutive_errors += 1;
        st.errors_total += 1;
        st.last_error = Some(msg.clone());
        st.last_error_at = Some(self.clock.now());
        let failed_steps = st.consecutive_errors;
        drop(st);
        if repeat {
            tracing::debug!(meter_id = %self.s.meter_id, device = %self.s.device, error = %msg,
                failed_steps, "control: device step failed again, retrying");
        } else {
            tracing::warn!(meter_id = %self.s.meter_id, device = %self.s.device, error = %msg,
                failed_steps, "control: device step failed, retrying every period");
            self.last_logged_error = Some((msg, now));
        }
    }

    /// Shutdown (SPEC §2.10): hand the battery back before exit, bounded by `limit`.
    async fn stop(&mut self, limit: Duration) {
        self.desired = Desired::Normal;
        self.lock().command = None;
        if self.released {
            return;
        }
        // A device in its reconnect back-off fails at once: try again until the limit.
        let mut last_error = None;
        let attempts = async {
            loop {
                match self.ensure_released().await {
                    Ok(()) => return,
                    Err(e) => last_error = Some(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        if tokio::time::timeout(limit, attempts).await.is_ok() {
            return;
        }
        let fallback = if self.lock().no_reversion {
            "this device has no reversion timeout: run `leap-edge release` (the systemd unit's ExecStopPost does)"
        } else {
            "the device reverts by its own timeout"
        };
        tracing::error!(meter_id = %self.s.meter_id, device = %self.s.device,
            error = last_error.as_deref().unwrap_or("timed out"), limit_ms = limit.as_millis() as u64,
            "control: release at shutdown failed; {fallback}");
    }
}
