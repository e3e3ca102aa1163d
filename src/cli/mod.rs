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
pub(crate) mod output;
mod overrides;
mod pinned_tls;
mod relay;
mod release;
mod report;
mod schedule;
mod send_test;
mod service_access;
mod sim;
mod status;
mod status_view;
mod table;
pub(crate) mod text;
mod watch;

use crate::config::{Config, EXIT_CONFIG};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "leap-edge",
    version,
    about = "Edge controller for on-site batteries driven by Leap dispatches"
)]
pub(crate) struct Cli {
    /// Configuration file. `devices probe` never reads one (the address is on its command
    /// line); `sim` reads it only when given or present.
    #[arg(
        long,
        global = true,
        env = "LEAP_EDGE_CONFIG",
        default_value = DEFAULT_CONFIG,
        value_name = "PATH"
    )]
    pub(crate) config: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run the daemon: receive Leap webhooks, store them, dispatch the batteries.
    Run,
    /// One screen: daemon, clock, tunnel or MQTT uplink, last notification, and per meter the command and device.
    Status(status::StatusArgs),
    /// Stored timeslots with their status (reads the database; works while the daemon runs).
    Events(events::EventsArgs),
    /// Per meter, what the plan will do over the next hours (default 48).
    Schedule(schedule::ScheduleArgs),
    /// The audit log of commands applied, released, or only "would apply" (dry-run).
    History(history::HistoryArgs),
    /// A manual override that expires by itself (hold, charge, discharge, release, clear).
    #[command(subcommand)]
    Override(overrides::OverrideCommand),
    /// Post a Leap-shaped test notification to the running daemon (same path and auth).
    SendTest(send_test::SendTestArgs),
    /// Live state of each configured device; `devices probe HOST[:PORT]` discovers one.
    Devices(devices::DevicesArgs),
    /// Run the site simulator (Modbus TCP: battery inverter + site meter, SunSpec map).
    Sim(sim::SimArgs),
    /// Re-read the configuration in the running daemon (keys, policies, strategies).
    Reload(ReloadArgs),
    /// Hand every configured battery back to normal operation over Modbus, without the
    /// daemon (the systemd unit's ExecStopPost; usable by hand).
    Release(release::ReleaseArgs),
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
    /// The fleet relay on the partner's public host (own config, default /etc/leap-edge-relay/relay.toml).
    #[command(subcommand)]
    Relay(relay::RelayCommand),
    /// 15-minute interval energy per meter, as recorded for Leap (`--csv`: Leap's load CSV).
    Intervals(intervals::IntervalsArgs),
    /// Per ended event: award, delivered energy, site import per 15 minutes, and a verdict.
    Report(report::ReportArgs),
}

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Parse and check the configuration and every device profile it uses; exit 78 if bad.
    Check,
}

/// Exit codes that scripts can rely on.
pub(crate) mod exit {
    pub(crate) const OK: u8 = 0;
    /// Something failed at run time (database unreadable, daemon unreachable, ...).
    pub(crate) const FAILURE: u8 = 1;
    pub(crate) const USAGE: u8 = 2;
    pub(crate) const CONFIG: u8 = super::EXIT_CONFIG;
}

pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    // Commissioning commands read the file only when it was named (flag or environment).
    let named = matches.value_source("config") != Some(clap::parser::ValueSource::DefaultValue);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli, named) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("leap-edge: {}", chain(&e));
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// The error and its causes, each once: many messages already include their cause, and
/// `{:#}` would print it again ("… Address in use …: Address in use").
fn chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    text::clean(&out)
}

fn load_config(path: &std::path::Path) -> Result<Config, u8> {
    crate::preflight::load(path).map_err(|e| config_refused(&e))
}

fn config_refused(e: &crate::config::ConfigError) -> u8 {
    eprintln!("leap-edge: {e}");
    exit::CONFIG
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

/// For `status` and `override`, which talk to the running daemon or read its database:
/// the daemon keeps the configuration it read, so a file edited since (a key rotation half
/// done, a renewed TLS key with loose permissions) must not lock the technician out of the
/// site or out of stopping a dispatch. Its problems are warnings; only a file that cannot
/// be read or parsed stops the command.
fn with_running_config(
    path: &std::path::Path,
    f: impl FnOnce(&Config) -> anyhow::Result<u8>,
) -> anyhow::Result<u8> {
    match Config::load_for_release(path) {
        Ok((c, mut problems)) => {
            if problems.is_empty() {
                problems = crate::preflight::problems(&c);
            }
            for p in problems {
                eprintln!(
                    "leap-edge: warning: {}: {} (the running daemon keeps what it read; fix it before its next start or reload)",
                    path.display(),
                    text::clean(&p)
                );
            }
            f(&c)
        }
        Err(e) => {
            eprintln!("leap-edge: {e}");
            Ok(exit::CONFIG)
        }
    }
}

/// Where the configuration is when `--config` is not given.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/leap-edge/config.toml";

/// For commands that work without a configuration (commissioning: `devices probe`, `sim`):
/// the file when given or present, else built-in defaults.
fn optional_config(given: Option<&std::path::Path>) -> Result<Option<Config>, u8> {
    let default = std::path::Path::new(DEFAULT_CONFIG);
    match given {
        Some(p) => load_config(p).map(Some),
        // Present but not readable by this user: commissioning still works, on defaults.
        None if default.exists() && std::fs::File::open(default).is_err() => {
            eprintln!("leap-edge: note: cannot read {DEFAULT_CONFIG}; using built-in defaults");
            Ok(None)
        }
        None if default.exists() => load_config(default).map(Some),
        None => Ok(None),
    }
}

/// The simulator needs only `[sim]`: the gateway's own file, not finished yet during
/// commissioning (no keys, no certificate), must not stop it. A file named with `--config`
/// is checked as every command checks it.
fn sim_config(given: Option<&std::path::Path>) -> Result<Option<Config>, u8> {
    sim_config_at(given, std::path::Path::new(DEFAULT_CONFIG))
}

fn sim_config_at(
    given: Option<&std::path::Path>,
    default: &std::path::Path,
) -> Result<Option<Config>, u8> {
    let path = match given {
        Some(_) => return optional_config(given),
        None if default.exists() && std::fs::File::open(default).is_ok() => default,
        None => return optional_config(None),
    };
    match Config::load_for_release(path) {
        Ok((config, problems)) => {
            if !problems.is_empty() {
                eprintln!(
                    "leap-edge: note: {} has {} problem(s) (`leap-edge config check` lists them; a key in [sim] it does not know is left out); the simulator uses its [sim] table",
                    path.display(),
                    problems.len()
                );
            }
            Ok(Some(config))
        }
        // Unreadable or not TOML: said the way every command says it.
        Err(_) => load_config(path).map(Some),
    }
}

fn run(cli: Cli, config_named: bool) -> anyhow::Result<u8> {
    let given = config_named.then(|| cli.config.clone());
    match cli.command {
        Command::Devices(args) if args.probe.is_some() => devices::probe(&args),
        Command::Sim(args) => match sim_config(given.as_deref()) {
            Ok(c) => sim::run(c.as_ref().map(|c| &c.sim), &args),
            Err(code) => Ok(code),
        },
        Command::Config(ConfigCommand::Check) => Ok(check::run(&cli.config)),
        Command::Run => {
            let config = match crate::preflight::load_for_start(&cli.config) {
                Ok(c) => c,
                Err(e) => return Ok(config_refused(&e)),
            };
            crate::alloc::tune();
            logging::init();
            write_running_snapshot(&config, &cli.config);
            serve(
                crate::daemon::run(config),
                crate::daemon::DaemonError::is_config,
            )
        }
        Command::Events(args) => with_config(&cli.config, |c| {
            note_if_down(c);
            events::run(c, &args)
        }),
        Command::Status(args) => with_running_config(&cli.config, |c| status::run(c, &args)),
        Command::Override(cmd) => with_running_config(&cli.config, |c| overrides::run(c, &cmd)),
        Command::SendTest(args) => with_config(&cli.config, |c| send_test::run(c, &args)),
        Command::Devices(args) => with_config(&cli.config, |c| devices::run(c, &args)),
        Command::Reload(args) => with_config(&cli.config, |c| reload(c, &args)),
        Command::Release(args) => match release_config(&cli.config) {
            Ok((c, from, problems)) => {
                for p in problems {
                    eprintln!(
                        "leap-edge: warning: {}: {p} (release goes on: it needs only [devices])",
                        from.display()
                    );
                }
                release::run(&c, &args)
            }
            Err(e) => {
                eprintln!("leap-edge: {e}");
                Ok(exit::CONFIG)
            }
        },
        Command::Completions(args) => docs::completions(&args),
        Command::Man => docs::man(),
        Command::Relay(cmd) => relay::run(&cli.config, &cmd),
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

pub(crate) fn init_logging() {
    logging::init();
}

/// Run a long-lived role (the daemon or the relay) until it stops. Issue 10.4: a read-only
/// database or unusable TLS files are configuration problems: exit 78 so systemd does not
/// restart in a loop.
pub(crate) fn serve<E>(
    role: impl std::future::Future<Output = Result<(), E>>,
    is_config: impl Fn(&E) -> bool,
) -> anyhow::Result<u8>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(role);
    // A blocking task still running (an integrity check started just before a stop) must
    // not hold the exit past the unit's TimeoutStopSec: the stages are bounded already.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => Ok(exit::OK),
        Err(e) if is_config(&e) => {
            // Once, on stderr (the journal under systemd), as any other start error.
            eprintln!("leap-edge: {e}");
            Ok(exit::CONFIG)
        }
        Err(e) => Err(e.into()),
    }
}

fn reload(config: &Config, args: &ReloadArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(crate::admin::AdminClient::new(&config.admin.socket).reload())?;
    for w in &r.warnings {
        eprintln!("leap-edge: warning: {}", text::clean(w));
    }
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(exit::OK);
    }
    if r.applied.is_empty() && r.restart_needed_for.is_empty() {
        crate::outln!("reloaded: nothing changed");
    } else if r.applied.is_empty() {
        crate::outln!("reloaded: nothing applied");
    } else {
        crate::outln!("reloaded: applied {}", r.applied.join(", "));
    }
    if !r.restart_needed_for.is_empty() {
        crate::outln!(
            "changed but NOT applied (restart the service for these): {}",
            r.restart_needed_for.join(", ")
        );
    }
    if let Some(fp) = &r.tls_fingerprint
        && r.applied.iter().any(|a| a.starts_with("server.tls"))
    {
        crate::outln!("TLS certificate now in service: {fp}");
    }
    Ok(exit::OK)
}

#[derive(clap::Args, Debug)]
pub(crate) struct ReloadArgs {
    /// Print the daemon's reply as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--meter ID` that is not configured: an error listing the configured ids (exit 2).
/// For records of the past (`history`, `intervals`): a meter no longer (or never) in
/// `[[meters]]` may still have them, so it is said, not refused: a typo shows as a note
/// beside an empty answer, a removed meter's records stay reachable.
fn note_unconfigured_meter(config: &Config, meter: Option<&str>) {
    if let Some(m) = meter.filter(|m| config.meter(m).is_none()) {
        eprintln!(
            "leap-edge: note: meter {} is not in [[meters]] (a typo, or a meter removed since); showing what the database has for it",
            text::clean(m)
        );
    }
}

fn unknown_meter(config: &Config, meter: Option<&str>) -> Option<u8> {
    let m = meter?;
    if config.meter(m).is_some() {
        return None;
    }
    eprintln!(
        "leap-edge: {}",
        text::clean(&crate::daemon::not_configured_meter(m, config))
    );
    Some(exit::USAGE)
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

/// Where systemd keeps the daemon's runtime files (`RuntimeDirectory=`): set for the
/// daemon and for the unit's `ExecStopPost` release, not in a technician's shell.
fn running_snapshot_path() -> Option<PathBuf> {
    let dirs = std::env::var_os("RUNTIME_DIRECTORY")?;
    let first = std::env::split_paths(&dirs).next()?;
    Some(first.join("running-config.toml"))
}

/// The snapshot's first line names the configuration file it was loaded from.
const SNAPSHOT_OF: &str = "# snapshot of ";

/// A file's path as written in the snapshot: resolved, so two spellings of one file match.
fn same_file_key(file: &std::path::Path) -> String {
    // A file missing now (replaced while the daemon ran) still names its path.
    std::fs::canonicalize(file)
        .or_else(|_| std::path::absolute(file))
        .unwrap_or_else(|_| file.to_path_buf())
        .display()
        .to_string()
}

/// Under systemd, keep the configuration as loaded for the release after the stop.
fn write_running_snapshot(config: &Config, file: &std::path::Path) {
    let Some(path) = running_snapshot_path() else {
        return;
    };
    // Tied to its file: a release for another configuration does not take it.
    let written = config.running_snapshot().and_then(|text| {
        let text = format!("{SNAPSHOT_OF}{}\n{text}", same_file_key(file));
        std::fs::write(&path, text).map_err(|e| e.to_string())
    });
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e,
            "cannot keep the running configuration for the release after a stop; it will read the file on disk");
    }
}

/// The configuration `release` uses: the one the stopped daemon ran with when systemd
/// kept it (the file on disk may be broken or edited since: its devices are not
/// necessarily the ones left under remote control), else the file on disk.
fn release_config(
    file: &std::path::Path,
) -> Result<(Config, PathBuf, Vec<String>), crate::config::ConfigError> {
    let of_this_file = |p: &PathBuf| {
        std::fs::read_to_string(p).is_ok_and(|t| {
            t.lines().next() == Some(&format!("{SNAPSHOT_OF}{}", same_file_key(file)))
        })
    };
    if let Some(snap) = running_snapshot_path().filter(of_this_file) {
        match Config::load_for_release(&snap) {
            Ok((c, problems)) => {
                eprintln!(
                    "leap-edge: release: the devices of the configuration the daemon ran with ({})",
                    snap.display()
                );
                // The snapshot's masked keys are not a problem of the release.
                let problems = problems
                    .into_iter()
                    .filter(|p| !p.starts_with("auth."))
                    .collect();
                return Ok((c, snap, problems));
            }
            Err(e) => eprintln!(
                "leap-edge: warning: {}: {e}; using {} instead",
                snap.display(),
                file.display()
            ),
        }
    }
    let (c, problems) = Config::load_for_release(file)?;
    Ok((c, file.to_path_buf(), problems))
}

#[cfg(test)]
mod tests {
    /// The packaged file as installed (no keys yet, a certificate not made yet) does not stop
    /// `leap-edge sim` during commissioning; its `[sim]` table is used.
    #[test]
    fn sim_runs_on_an_unfinished_gateway_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let packaged = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/config.toml"),
        )
        .unwrap();
        std::fs::write(&path, format!("{packaged}\n[sim]\nunit_id = 7\n")).unwrap();
        let config = super::sim_config_at(None, &path)
            .expect("not refused")
            .expect("read");
        assert_eq!(config.sim.unit_id, 7);
        assert!(
            crate::config::Config::load(&path).is_err(),
            "unfinished indeed"
        );
    }
}
