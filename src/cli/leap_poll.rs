//! `leap-edge leap poll`: the backstop once. Through the daemon when it runs (so a found
//! dispatch is planned at once); otherwise here, on the database directly.

use super::exit;
use super::leap::PollArgs;
use crate::admin::{AdminClient, ClientError};
use crate::config::Config;
use crate::leap::LeapClient;
use crate::leap::poll::{self, PollReport, Targets, Window};
use std::time::Duration;

pub(super) async fn run(config: &Config, a: &PollArgs) -> anyhow::Result<u8> {
    let client = match LeapClient::from_config(&config.leap) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("leap-edge: {e}");
            return Ok(exit::CONFIG);
        }
    };
    // The daemon gives up first and says why; this only covers a daemon that hangs.
    let limit = crate::leap::poll_time_limit(&config.leap) + Duration::from_secs(10);
    let report = match AdminClient::new(&config.admin.socket)
        .leap_poll(a.days, limit)
        .await
    {
        Ok(r) => r,
        Err(ClientError::NotRunning(_)) if crate::runlock::held(&config.storage.path) => {
            // A daemon runs on this database but not on this socket (a changed `[admin]
            // socket` not yet restarted, another --config): what a direct poll stored would
            // not be planned until something else woke that daemon.
            let pid = crate::runlock::read(&crate::runlock::path_for(&config.storage.path))
                .map_or("unknown".to_string(), |r| r.pid.to_string());
            eprintln!(
                "leap-edge: a daemon (pid {pid}) runs on {} but does not answer on {}: nothing polled. Run this with the configuration that daemon was started with, or restart it (`systemctl restart leap-edge`) after changing [admin] socket",
                config.storage.path.display(),
                config.admin.socket.display()
            );
            return Ok(exit::FAILURE);
        }
        Err(ClientError::NotRunning(_)) => {
            eprintln!(
                "leap-edge: note: the daemon is not running; polling into the database directly"
            );
            match here(config, &client, a.days).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("leap-edge: poll failed: {e}");
                    return Ok(exit::FAILURE);
                }
            }
        }
        Err(ClientError::Refused(e)) => {
            eprintln!("leap-edge: poll failed: {e}");
            return Ok(exit::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    print(&report, a.json)?;
    Ok(exit::OK)
}

async fn here(
    config: &Config,
    client: &LeapClient,
    days: Option<u32>,
) -> anyhow::Result<PollReport> {
    let (store, thread) = crate::store::Store::open(&config.storage.path)?;
    let now = chrono::Utc::now();
    let window = Window::around(
        now,
        days.unwrap_or(config.leap.poll_days_back),
        config.leap.poll_days_ahead,
    );
    let configured = config.leap.market_group_ids.clone();
    let groups = store
        .read(move |c| poll::known_groups(c, &configured, now))
        .await?;
    let targets = Targets {
        meter_ids: config.meters.iter().map(|m| m.id.clone()).collect(),
        market_group_ids: groups,
        limits: config.limits.clone(),
    };
    let out = poll::poll_once(client, &store, &targets, window, &|| {}).await;
    drop(store);
    thread.closed().await;
    Ok(out?)
}

fn print(r: &PollReport, json: bool) -> anyhow::Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    if let Some(w) = r.window {
        crate::outln!(
            "searched {} → {} ({} page(s), {} result(s))",
            crate::textfmt::ts(w.start),
            crate::textfmt::ts(w.end),
            r.pages,
            r.results
        );
    }
    crate::outln!(
        "new (never pushed): {}   updated: {}   already stored: {}   rejected: {}   un-cancel conflicts: {}",
        r.new,
        r.updated,
        r.duplicate,
        r.rejected,
        r.conflict
    );
    for id in &r.new_event_ids {
        crate::outln!("  first seen by polling: {}", super::text::clean(id));
    }
    for why in &r.skipped_entries {
        crate::outln!(
            "{}",
            super::output::alarm(&format!(
                "left out, not the shape of a dispatch (ask Leap about it): {}",
                super::text::clean(why)
            ))
        );
    }
    if r.new > 0 {
        crate::outln!(
            "{}",
            super::output::alarm(
                "timeslots above were never pushed: check the public path with `leap-edge leap test`"
            )
        );
    }
    Ok(())
}
