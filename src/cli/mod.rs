//! The technician's command line. Every subcommand takes `--config`; inspection commands
//! take `--json` and then print one JSON document on stdout (SPEC §3).

mod check;
mod devices;
mod docs;
mod duration;
mod events;
mod history;
mod intervals;
mod leap;
mod leap_poll;
mod leap_test;
mod logging;
mod manual;
pub mod output;
mod report;
mod schedule;
mod send_test;
mod sim;
mod status;
mod table;

use crate::config::{Config, EXIT_CONFIG};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "leap-edge",
    version,
    about = "Edge controller for on-site batteries driven by Leap dispatches"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "LEAP_EDGE_CONFIG",
        default_value = "/etc/leap-edge/config.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: receive Leap webhooks, store them, dispatch the batteries.
    Run,
    /// One screen: daemon, last notification, clock, and per meter the command and device.
    Status(status::StatusArgs),
    /// Stored timeslots with their status (reads the database; works while the daemon runs).
    Events(events::EventsArgs),
    /// Per meter, what the plan will do over the next hours (default 48).
    Schedule(schedule::ScheduleArgs),
    /// The audit log of commands applied, released, or only "would apply" (dry-run).
    History(history::HistoryArgs),
    /// A manual override that expires by itself (hold, charge, discharge, release, clear).
    #[command(subcommand)]
    Override(manual::OverrideCommand),
    /// Post a Leap-shaped test notification to the running daemon (same path and auth).
    SendTest(send_test::SendTestArgs),
    /// Live state of each configured device; `devices probe HOST[:PORT]` discovers one.
    Devices(devices::DevicesArgs),
    /// Run the site simulator (Modbus TCP: battery inverter + site meter, SunSpec map).
    Sim(sim::SimArgs),
    /// Re-read the configuration in the running daemon (keys, policies, strategies).
    Reload,
    /// Print shell completions (bash, zsh, fish, ...) for leap-edge.
    Completions(docs::CompletionsArgs),
    /// Print the man page (roff): `leap-edge man > /usr/local/share/man/man1/leap-edge.1`.
    Man,
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Leap's API: webhook registration, the end-to-end test, the polling backstop.
    #[command(subcommand)]
    Leap(leap::LeapCommand),
    /// 15-minute interval energy per meter, as recorded for Leap (`--csv`: Leap's load CSV).
    Intervals(intervals::IntervalsArgs),
    /// Per ended event: award, delivered energy, site import per 15 minutes, and a verdict.
    Report(report::ReportArgs),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Parse and check the configuration and every device profile it uses; exit 78 if bad.
    Check,
}

/// Exit codes that scripts can rely on.
pub mod exit {
    pub const OK: u8 = 0;
    /// Something failed at run time (database unreadable, daemon unreachable, ...).
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const CONFIG: u8 = super::EXIT_CONFIG;
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("leap-edge: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<Config, u8> {
    Config::load(path).map_err(|e| {
        eprintln!("leap-edge: {e}");
        exit::CONFIG
    })
}

fn with_config(
    path: &std::path::Path,
    f: impl FnOnce(&Config) -> anyhow::Result<u8>,
) -> anyhow::Result<u8> {
    match load_config(path) {
        Ok(c) => f(&c),
        Err(code) => Ok(code),
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Config(ConfigCommand::Check) => Ok(check::run(&cli.config)),
        Command::Run => {
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            logging::init();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(crate::daemon::run(config))?;
            Ok(exit::OK)
        }
        Command::Events(args) => with_config(&cli.config, |c| {
            note_if_down(c);
            events::run(c, &args)
        }),
        Command::Status(args) => with_config(&cli.config, |c| status::run(c, &args)),
        Command::Override(cmd) => with_config(&cli.config, |c| manual::run(c, &cmd)),
        Command::SendTest(args) => with_config(&cli.config, |c| send_test::run(c, &args)),
        Command::Devices(args) => with_config(&cli.config, |c| devices::run(c, &args)),
        Command::Sim(args) => with_config(&cli.config, |c| sim::run(c, &args)),
        Command::Reload => with_config(&cli.config, reload),
        Command::Completions(args) => docs::completions(&args),
        Command::Man => docs::man(),
        Command::Schedule(args) => with_config(&cli.config, |c| {
            note_if_down(c);
            schedule::run(c, &args)
        }),
        Command::Leap(cmd) => with_config(&cli.config, |c| leap::run(c, &cmd)),
        Command::Intervals(args) => with_config(&cli.config, |c| intervals::run(c, &args)),
        Command::Report(args) => with_config(&cli.config, |c| report::run(c, &args)),
        Command::History(args) => with_config(&cli.config, |c| {
            note_if_down(c);
            history::run(c, &args)
        }),
    }
}

fn reload(config: &Config) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = rt.block_on(
        crate::admin::AdminClient::new(&config.admin.socket).call(&crate::admin::Request::Reload),
    )?;
    crate::outln!("reloaded: {}", body["reloaded"]);
    if let Some(r) = body["restart_needed_for"]
        .as_array()
        .filter(|r| !r.is_empty())
    {
        crate::outln!(
            "changed but NOT applied (restart the service for these): {}",
            serde_json::Value::Array(r.clone())
        );
    }
    Ok(exit::OK)
}

/// Read-only commands work from the database whether or not the daemon runs; when it does
/// not, say so (on stderr, so `--json` output stays one document).
fn note_if_down(config: &Config) {
    let down = std::os::unix::net::UnixStream::connect(&config.admin.socket)
        .is_err_and(|e| e.kind() != std::io::ErrorKind::PermissionDenied);
    if down {
        eprintln!(
            "leap-edge: note: the daemon is not running (no answer on {}); showing the database as last written",
            config.admin.socket.display()
        );
    }
}
