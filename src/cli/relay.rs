//! `leap-edge relay run | status [--json] | check`. The relay reads its own file
//! (default /etc/leap-edge-relay/relay.toml); `status` reads the outbox read-only, so it works
//! whether or not the relay runs.

use super::exit;
use crate::relay::{RelayConfig, RelayProcess, RelayStatus};
use std::path::{Path, PathBuf};

pub(crate) const DEFAULT_CONFIG: &str = "/etc/leap-edge-relay/relay.toml";

#[derive(clap::Subcommand, Debug)]
pub(crate) enum RelayCommand {
    /// Run the relay: receive Leap's notifications for the whole fleet, deliver each gateway its own.
    Run,
    /// Whether the relay runs, its broker link; per gateway: queue, oldest undelivered, last success and error; unrouted and dead letters. Exit 3 when the relay is not running, 1 when it reports UNHEALTHY.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Parse and check the relay configuration; exit 78 if bad.
    Check,
    /// Send dead letters again (after fixing what the gateway refused): every gateway's, or one's.
    Requeue {
        /// Only this gateway's (its [[gateways]] name).
        #[arg(long)]
        gateway: Option<String>,
    },
}

/// The global `--config` names the gateway's file by default; the relay's default is its own.
pub(crate) fn config_path(global: &Path) -> PathBuf {
    if global == Path::new("/etc/leap-edge/config.toml") {
        PathBuf::from(DEFAULT_CONFIG)
    } else {
        global.to_path_buf()
    }
}

pub(super) fn run(global: &Path, cmd: &RelayCommand) -> anyhow::Result<u8> {
    let path = config_path(global);
    let config = match RelayConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leap-edge: {e}");
            return Ok(exit::CONFIG);
        }
    };
    match cmd {
        RelayCommand::Check => {
            // A downgrade: the relay would refuse this outbox at start (the package runs
            // this check before restarting it).
            let newest = crate::relay::outbox_latest();
            // What the file is comes first: a gateway's database has more migrations than
            // the relay's, and "newer than this build" would send the operator astray.
            if let Some(why) = not_an_outbox(&config.storage.path) {
                eprintln!("leap-edge: {}: {why}", config.storage.path.display());
                return Ok(exit::CONFIG);
            }
            if let Some(e) = crate::store::newer_than(&config.storage.path, newest) {
                eprintln!("leap-edge: {}: {e}", config.storage.path.display());
                return Ok(exit::CONFIG);
            }
            // What `relay run` loads: its TLS pair, and each gateway's address and CA
            // (a file the check can read but the pair does not match, or a typo in a
            // path, is found here, not by a start that exits 78 or a worker that waits).
            let mut problems = Vec::new();
            if let Some(tls) = &config.server.tls
                && let Err(e) = crate::server::tls::ReloadableTls::load(&tls.cert, &tls.key)
            {
                problems.push(e.to_string());
            }
            problems.extend(crate::relay::target_problems(&config));
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("leap-edge: {}: {p}", path.display());
                }
                return Ok(exit::CONFIG);
            }
            crate::outln!(
                "{}: OK ({} gateways, {} meters)",
                path.display(),
                config.gateways.len(),
                config
                    .gateways
                    .iter()
                    .map(|g| g.meters.len())
                    .sum::<usize>()
            );
            Ok(exit::OK)
        }
        RelayCommand::Run => {
            super::init_logging();
            super::serve(
                crate::relay::run(config),
                crate::relay::RelayError::is_config,
            )
        }
        RelayCommand::Status { json } => status(&config, *json),
        RelayCommand::Requeue { gateway } => requeue(&config, gateway.as_deref()),
    }
}

/// Dead letters back to pending, in their order. Written beside a running relay (SQLite
/// serialises the two writers); its idle workers look at their queues every 30 s.
/// Why the file at `storage.path` is not a relay outbox (a gateway's database), if so.
fn not_an_outbox(path: &Path) -> Option<String> {
    if !path.exists() {
        return None;
    }
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .ok()?;
    (version > 0 && !crate::relay::is_outbox(&conn).ok()?).then(|| {
        "a gateway database, not a relay outbox: give the relay its own storage.path".into()
    })
}

fn requeue(config: &RelayConfig, gateway: Option<&str>) -> anyhow::Result<u8> {
    let names: Vec<String> = config.gateways.iter().map(|g| g.name.clone()).collect();
    let chosen = match gateway {
        Some(g) if !names.iter().any(|n| n == g) => {
            eprintln!(
                "leap-edge: --gateway {}: no such [[gateways]] name; configured: {}",
                printable(g),
                names.join(", ")
            );
            return Ok(exit::USAGE);
        }
        Some(g) => vec![g.to_string()],
        None => names,
    };
    if !config.storage.path.exists() {
        anyhow::bail!(
            "no relay outbox at {}: nothing to requeue (is storage.path right?)",
            config.storage.path.display()
        );
    }
    let mut conn = rusqlite::Connection::open(&config.storage.path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    if !crate::relay::is_outbox(&conn)? {
        anyhow::bail!(
            "{} is not a relay outbox (a gateway database?): check storage.path",
            config.storage.path.display()
        );
    }
    let n = crate::relay::requeue_dead(&mut conn, config, &chosen)?;
    crate::outln!(
        "requeued {} dead letter(s) for {}, and {} notification(s) delivered after them, sent again behind them so the gateway ends on the latest (it counts those as duplicates)",
        n.dead,
        chosen.join(", "),
        n.later
    );
    if n.left > 0 {
        crate::outln!(
            "{} dead letter(s) received before the replay window ({} h) left as they are: their timeslots have ended, and sent now they would put the gateway back on revisions it had superseded",
            n.left,
            crate::relay::replay_window_hours(&config.limits)
        );
    }
    crate::outln!(
        "a running relay sends them within a minute; `leap-edge relay status` shows whether it runs"
    );
    Ok(exit::OK)
}

fn status(config: &RelayConfig, json: bool) -> anyhow::Result<u8> {
    if !config.storage.path.exists() && crate::runlock::held(&config.storage.path) {
        // Running, its outbox deleted or moved under it: it answers 503 until put back.
        let why = format!(
            "its outbox {} was deleted or moved while it runs: it refuses notifications (503) \
             until the file is renamed back",
            config.storage.path.display()
        );
        if json {
            let doc = serde_json::json!({"process": {"running": true}, "problem": why});
            crate::outln!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            eprintln!("leap-edge: relay: running, but {why}");
        }
        return Ok(exit::FAILURE);
    }
    if !config.storage.path.exists() {
        // Never run here (or storage.path is wrong): "not running", as the README's exit
        // codes say, not a failure of the command.
        let why = match crate::store::files::orphaned_wal(&config.storage.path) {
            Some(wal) => format!(
                "the relay outbox {} is missing but its {} is still there: it was deleted or \
                 moved after the last run, and `relay run` refuses to start over it",
                config.storage.path.display(),
                wal.display()
            ),
            None => format!(
                "no relay outbox at {} yet: `leap-edge relay run` creates it on first start (is storage.path right?)",
                config.storage.path.display()
            ),
        };
        if json {
            let doc = serde_json::json!({"process": {"running": false}, "problem": why});
            crate::outln!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            eprintln!("leap-edge: relay: not running; {why}");
        }
        return Ok(super::status::NOT_RUNNING);
    }
    let s = crate::relay::read_status(config, chrono::Utc::now())?;
    let max_age = config.relay.max_undelivered_age_secs;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_text(&s, max_age);
    }
    Ok(status_code(&s, max_age))
}

/// As `status` does for the daemon: a monitoring script or `&&` must not read a stopped or
/// unhealthy relay (Leap's notifications piling up undelivered) as fine.
fn status_code(s: &RelayStatus, max_age: u64) -> u8 {
    if s.process.as_ref().is_some_and(|p| !p.running) {
        super::status::NOT_RUNNING
    } else if s.problems(max_age).is_empty() {
        exit::OK
    } else {
        exit::FAILURE
    }
}

fn print_text(s: &RelayStatus, max_age: u64) {
    if let Some(p) = &s.process {
        crate::outln!("{}", process_line(p));
    }
    if let Some(b) = &s.broker {
        let running = s.process.as_ref().is_some_and(|p| p.running);
        crate::outln!("{}", broker_line(b, running));
    }
    crate::outln!(
        "notifications {}   unrouted entries {}   dead letters {}",
        s.notifications,
        s.unrouted_count,
        s.dead_letter_count
    );
    print_gateways(s);
    for p in s.problems(max_age) {
        crate::outln!("UNHEALTHY: {p}");
    }
    print_undelivered(s);
}

/// Whether the relay runs: the outbox's lock is held by a live process, or who held it last.
fn process_line(p: &RelayProcess) -> String {
    let by = |r: &crate::admin::state::LastRun| match &r.systemd_unit {
        Some(unit) => format!("by systemd ({})", printable(unit)),
        None => "by hand".to_string(),
    };
    let when = |t| super::text::Zone::Utc.time(t);
    match (&p.last_run, p.running) {
        (Some(r), true) => format!(
            "relay: running (pid {}) since {}, {}",
            r.pid,
            when(r.started_at),
            by(r)
        ),
        (None, true) => "relay: running".to_string(),
        (Some(r), false) => format!(
            "relay: NOT RUNNING (last run: pid {}, started {}, {}); start it with `systemctl start leap-edge-relay`",
            r.pid,
            when(r.started_at),
            by(r)
        ),
        (None, false) => {
            "relay: NOT RUNNING (never run on this outbox); start it with `systemctl start leap-edge-relay`".to_string()
        }
    }
}

/// The relay's broker connection as it last recorded it; from a stopped relay, a record only.
fn broker_line(b: &crate::admin::state::BrokerConnection, running: bool) -> String {
    let since = super::text::Zone::Utc.time(b.since);
    let head = if running {
        "broker"
    } else {
        "broker (when the relay last ran)"
    };
    let url = printable(&b.url);
    if b.connected {
        format!(
            "{head} {url}: connected since {since} ({} connection(s))",
            b.connections
        )
    } else {
        let e = printable(b.last_error.as_deref().unwrap_or("no answer yet"));
        format!("{head} {url}: NOT CONNECTED since {since}: {e}; MQTT parts wait in the outbox")
    }
}

/// One line per gateway (queue, last success, last error), then each MQTT gateway's link.
fn print_gateways(s: &RelayStatus) {
    crate::outln!(
        "{:<16} {:>6} {:>9} {:>6} {:<20} LAST ERROR",
        "GATEWAY",
        "QUEUE",
        "OLDEST",
        "DEAD",
        "LAST SUCCESS"
    );
    for g in &s.gateways {
        let age = g
            .oldest_undelivered_age_secs
            .map_or("-".into(), |a| format!("{a}s"));
        let name = if g.configured {
            g.name.clone()
        } else {
            format!("{} (removed)", g.name)
        };
        crate::outln!(
            "{:<16} {:>6} {:>9} {:>6} {:<20} {}",
            name,
            g.queue_depth,
            age,
            g.dead_letters,
            g.last_success_at.as_deref().unwrap_or("never"),
            printable(g.current_error().as_deref().unwrap_or("-"))
        );
    }
    for g in &s.gateways {
        if let Some(m) = &g.mqtt {
            crate::outln!(
                "mqtt {:<16} {:<8} last status {}   last commit {}",
                g.name,
                if m.online { "online" } else { "OFFLINE" },
                m.last_status_at.as_deref().unwrap_or("never"),
                m.last_commit_at.as_deref().unwrap_or("-")
            );
            if let Some(n) = m.refused_total.filter(|n| *n > 0) {
                crate::outln!(
                    "mqtt {:<16} REFUSED {n} message(s), acknowledged but not stored (last {}: {})",
                    g.name,
                    m.last_refused_at.as_deref().unwrap_or("?"),
                    printable(m.last_refused_error.as_deref().unwrap_or("?"))
                );
            }
        }
    }
}

/// Entries no gateway took: unrouted ones and dead letters.
fn print_undelivered(s: &RelayStatus) {
    for u in &s.unrouted {
        crate::outln!(
            "unrouted: notification {} ({}) {} meters {:?}",
            u.notification_id,
            u.received_at,
            u.entry,
            u.meter_ids
        );
    }
    for d in &s.dead_letters {
        let configured = s
            .gateways
            .iter()
            .any(|g| g.configured && g.name == d.gateway);
        let what = if configured {
            format!(
                "after fixing it: leap-edge relay requeue --gateway {}",
                d.gateway
            )
        } else {
            "gateway no longer configured: it cannot be requeued; a meter now served by another gateway got its recent notifications there on reload".into()
        };
        crate::outln!(
            "dead letter: notification {} → {}: HTTP {} {} ({what})",
            d.notification_id,
            d.gateway,
            d.answer_status.unwrap_or(0),
            printable(d.answer_body.as_deref().unwrap_or("")),
        );
    }
}

/// A gateway's answer is foreign text: never let it move the cursor or recolour the terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
