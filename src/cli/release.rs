//! `leap-edge release`: hand every configured battery back to its own (normal) operation,
//! directly over Modbus, without the daemon. The systemd unit runs it as `ExecStopPost=`,
//! so a daemon that stopped for any reason — a crash, SIGKILL, an OOM kill — never leaves
//! a setpoint behind on a device that cannot revert by itself (issue 9; the Victron ESS
//! profile). Usable by hand too.

use super::exit;
use crate::config::Config;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub(crate) struct ReleaseArgs {
    /// Give up on a device after this many seconds (each device is tried in parallel).
    #[arg(long, default_value_t = 10)]
    pub(crate) timeout_secs: u64,
    /// Release even while a daemon runs on this database (it commands them again next period).
    #[arg(long)]
    pub(crate) force: bool,
}

pub(super) fn run(config: &Config, args: &ReleaseArgs) -> anyhow::Result<u8> {
    // A daemon holding the database's run lock commands the batteries: releasing under it
    // would fight it every period. This is also what keeps the unit's ExecStopPost, after a
    // start refused because a daemon run by hand holds the lock, from touching the devices.
    if crate::runlock::held(&config.storage.path) && !args.force {
        let pid = crate::runlock::read(&crate::runlock::path_for(&config.storage.path))
            .map_or("unknown".to_string(), |r| r.pid.to_string());
        eprintln!(
            "leap-edge: a daemon is running on {} (pid {pid}) and commands the batteries: nothing released. Stop it first (`systemctl stop leap-edge`, or kill {pid}), use `leap-edge override release --for DURATION`, or add --force",
            config.storage.path.display()
        );
        return Ok(exit::FAILURE);
    }
    if daemon_running(config) {
        eprintln!(
            "leap-edge: warning: the daemon answers on {}: it will command the batteries again on its next control period (stop it first, or use `leap-edge override release`)",
            config.admin.socket.display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let limit = Duration::from_secs(args.timeout_secs.max(1));
    let results = rt.block_on(release_all(config, limit));
    // A meter whose device is not in the file as read (its line left out above, as one a
    // newer version wrote): its battery is not released, and that is a failure.
    let mut failed = 0;
    for m in config
        .meters
        .iter()
        .filter(|m| !config.devices.contains_key(&m.device))
    {
        failed += 1;
        eprintln!(
            "leap-edge: meter {}: its device {} is not in the configuration as read: NOT released",
            m.id, m.device
        );
    }
    for (name, r) in results {
        match r {
            Ok(()) => crate::outln!("{name}: released to normal operation"),
            Err(e) => {
                failed += 1;
                eprintln!("leap-edge: {name}: NOT released: {e}");
            }
        }
    }
    Ok(if failed == 0 { exit::OK } else { exit::FAILURE })
}

async fn release_all(config: &Config, limit: Duration) -> Vec<(String, Result<(), String>)> {
    // Devices are independent: one hanging device must not delay another's release.
    let mut set = tokio::task::JoinSet::new();
    for (name, dev) in &config.devices {
        let dir = config.devices_dir.clone();
        let (name, dev) = (name.clone(), dev.clone());
        set.spawn(async move {
            let mut last_error = None;
            let attempt = async {
                let mut b = crate::device::open(&name, &dev, &dir).map_err(|e| e.to_string())?;
                // A device that is just coming back may refuse the first connects: retry
                // until the limit (the client paces its reconnects).
                loop {
                    match b.release_control().await {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            tracing::debug!(device = %name, error = %e, "release failed, retrying");
                            last_error = Some(e.to_string());
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                    }
                }
            };
            let r = tokio::time::timeout(limit, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no success within {} s at {}:{} (unit {}); last error: {}",
                        limit.as_secs(),
                        dev.host,
                        dev.port,
                        dev.unit_id,
                        last_error.as_deref().unwrap_or("none (every attempt hung)")
                    ))
                });
            (name, r)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(x) => out.push(x),
            Err(e) => out.push(("?".into(), Err(format!("release task failed: {e}")))),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn daemon_running(config: &Config) -> bool {
    std::os::unix::net::UnixStream::connect(&config.admin.socket).is_ok()
}
