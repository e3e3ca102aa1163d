//! `leap-edge override ...`: a manual override that expires by itself, sent to the running
//! daemon over the admin socket.

use super::{duration, exit};
use crate::admin::{AdminClient, OverrideAction, OverrideRequest, Request};
use crate::config::Config;

#[derive(clap::Subcommand, Debug)]
pub enum OverrideCommand {
    /// Keep the battery idle (no charge, no discharge).
    Hold(Common),
    /// Charge at KW kilowatts.
    Charge {
        kw: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Discharge at KW kilowatts (still never into export).
    Discharge {
        kw: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Normal (self-consumption) operation, ignoring Leap dispatches.
    Release(Common),
    /// End overrides now.
    Clear {
        #[arg(long)]
        meter: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct Common {
    /// How long the override lasts (e.g. 15m, 2h); it then expires by itself.
    #[arg(long = "for", value_parser = duration::parse)]
    pub duration: std::time::Duration,
    /// Only this Leap meter id (default: every local meter).
    #[arg(long)]
    pub meter: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, cmd: &OverrideCommand) -> anyhow::Result<u8> {
    let (req, json) = match cmd {
        OverrideCommand::Clear { meter } => (
            Request::OverrideClear {
                meter: meter.clone(),
            },
            false,
        ),
        OverrideCommand::Hold(c) => (request(c, OverrideAction::Hold), c.json),
        OverrideCommand::Charge { kw, common } => {
            (request(common, OverrideAction::Charge(*kw)), common.json)
        }
        OverrideCommand::Discharge { kw, common } => {
            (request(common, OverrideAction::Discharge(*kw)), common.json)
        }
        OverrideCommand::Release(c) => (request(c, OverrideAction::Release), c.json),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = rt.block_on(AdminClient::new(&config.admin.socket).call(&req))?;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&body)?);
    } else if let Some(n) = body.get("cleared") {
        crate::outln!("cleared {n} override(s)");
    } else {
        crate::outln!(
            "override set on {} until {}",
            body["meters"],
            body["until"].as_str().unwrap_or("?")
        );
    }
    Ok(exit::OK)
}

fn request(c: &Common, action: OverrideAction) -> Request {
    Request::Override(OverrideRequest {
        meter: c.meter.clone(),
        action,
        seconds: c.duration.as_secs(),
    })
}
