//! `leap-edge sim`: the site simulator in the foreground.

use super::exit;
use crate::config::SimConfig;
use crate::sim::{self, SimOptions};
use std::net::SocketAddr;

#[derive(clap::Args, Debug)]
pub(crate) struct SimArgs {
    /// Listen address (default: [sim] listen from the config, 127.0.0.1:1502).
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// Also answer on unit 100 as a Victron GX in ESS mode.
    #[arg(long)]
    pub(crate) victron: bool,
    /// Seconds between state lines.
    #[arg(long, default_value_t = 5)]
    pub(crate) every: u64,
}

/// `config`: `[sim]` from the configuration when there is one, else the defaults.
pub(super) fn run(config: Option<&SimConfig>, args: &SimArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let opts = SimOptions {
        victron: args.victron,
        ..SimOptions::default()
    };
    let defaults = SimConfig::default();
    rt.block_on(sim::run_cli(
        config.unwrap_or(&defaults),
        args.listen,
        opts,
        std::time::Duration::from_secs(args.every.max(1)),
    ))?;
    Ok(exit::OK)
}
