//! `leap-edge override ...`: a manual override that expires by itself, sent to the running
//! daemon over the admin socket.

use super::text::{self, Zone, clean};
use super::{duration, exit};
use crate::admin::{AdminClient, OverrideAction, OverrideRequest};
use crate::config::Config;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum OverrideCommand {
    /// Keep the battery idle (no charge, no discharge).
    Hold(Common),
    /// Charge at KW kilowatts.
    Charge {
        /// Charging power in kW.
        #[arg(value_parser = positive_kw)]
        kw: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Discharge at KW kilowatts (still never into export).
    Discharge {
        /// Discharging power in kW; above the battery's rating it runs at the rating (a warning says so).
        #[arg(value_parser = positive_kw)]
        kw: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Normal (self-consumption) operation, ignoring Leap dispatches.
    Release(Common),
    /// End overrides now; Leap dispatches govern again.
    Clear {
        /// Only this Leap meter id (default: every meter).
        #[arg(long)]
        meter: Option<String>,
        /// Print the daemon's reply as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct Common {
    /// How long the override lasts (e.g. 15m, 2h); it then expires by itself.
    #[arg(long = "for", value_parser = duration::parse)]
    pub(crate) duration: std::time::Duration,
    /// Only this Leap meter id (default: every local meter).
    #[arg(long)]
    pub(crate) meter: Option<String>,
    /// Print the daemon's reply as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(super) fn run(config: &Config, cmd: &OverrideCommand) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = AdminClient::new(&config.admin.socket);
    let (action, c) = match cmd {
        OverrideCommand::Clear { meter, json } => {
            if let Some(code) = super::unknown_meter(config, meter.as_deref()) {
                return Ok(code);
            }
            let r = rt.block_on(client.clear_override(meter.clone()))?;
            for w in &r.warnings {
                eprintln!("leap-edge: warning: {}", clean(w));
            }
            if *json {
                crate::outln!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.cleared == 0 {
                crate::outln!("no override was set");
            } else {
                crate::outln!(
                    "cleared {} override(s); Leap dispatches govern again",
                    r.cleared
                );
            }
            return Ok(exit::OK);
        }
        OverrideCommand::Hold(c) => (OverrideAction::Hold, c),
        OverrideCommand::Charge { kw, common } => (OverrideAction::Charge(*kw), common),
        OverrideCommand::Discharge { kw, common } => (OverrideAction::Discharge(*kw), common),
        OverrideCommand::Release(c) => (OverrideAction::Release, c),
    };
    if let Err(e) = check(config, c) {
        eprintln!("leap-edge: {e}");
        return Ok(exit::USAGE);
    }
    // The id as configured: ids are matched without regard to case everywhere else.
    let meter = c
        .meter
        .as_deref()
        .map(|m| config.meter(m).map_or(m, |x| x.id.as_str()).to_string());
    let r = rt.block_on(client.set_override(OverrideRequest {
        meter,
        action,
        seconds: c.duration.as_secs(),
        expires_at: None,
    }))?;
    for w in &r.warnings {
        eprintln!("leap-edge: warning: {}", clean(w));
    }
    if c.json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        crate::outln!(
            "override set on {}: {} until {} (in {})",
            clean(&r.meters.join(", ")),
            crate::daemon::describe_override(action),
            Zone::Utc.time(r.until),
            text::duration((r.until - chrono::Utc::now()).num_seconds().max(0) + 1),
        );
    }
    Ok(exit::OK)
}

/// A power on the command line: a number of kW above zero (`nan`, `inf`, 0 and negatives are
/// refused here, with the usage, rather than by the daemon).
pub(super) fn positive_kw(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(kw) if kw.is_finite() && kw > 0.0 => Ok(kw),
        Ok(_) => Err(format!("{s:?}: give a power above 0 kW, e.g. 5 or 2.5")),
        Err(_) => Err(format!("{s:?} is not a number of kW; e.g. 5 or 2.5")),
    }
}

/// An `energy_kw` for a test timeslot, within Leap's range: outside it the daemon stores
/// the timeslot as rejected, and the test would report a failure of the path instead.
pub(super) fn leap_kw(s: &str) -> Result<f64, String> {
    let range = crate::ingest::KW_RANGE;
    match s.trim().parse::<f64>() {
        Ok(kw) if range.contains(&kw) => Ok(kw),
        Ok(_) => Err(format!(
            "{s:?}: Leap's energy_kw is {}–{} kW; e.g. 5 or 2.5",
            range.start(),
            range.end()
        )),
        Err(_) => Err(format!("{s:?} is not a number of kW; e.g. 5 or 2.5")),
    }
}

/// What the daemon would refuse anyway, said before asking it: usage errors (exit 2).
fn check(config: &Config, c: &Common) -> Result<(), String> {
    let max = crate::dispatch::overrides::MAX_OVERRIDE_SECS;
    if c.duration.as_secs() > max {
        return Err(format!(
            "--for {} h: an override lasts at most {} h (write e.g. --for 8h)",
            crate::textfmt::num(c.duration.as_secs_f64() / 3600.0),
            max / 3600
        ));
    }
    if let Some(m) = &c.meter
        && config.meter(m).is_none()
    {
        let ids: Vec<&str> = config.meters.iter().map(|m| m.id.as_str()).collect();
        return Err(format!(
            "--meter {}: not configured here; configured meters: {}",
            clean(m),
            ids.join(", ")
        ));
    }
    Ok(())
}
