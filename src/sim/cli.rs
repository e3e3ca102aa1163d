//! `leap-edge sim [--listen ADDR]`: the simulator as a foreground command for technicians'
//! dry runs and the development configuration.

use super::{SimError, SimOptions, spawn_with, victron};
use crate::config::SimConfig;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

/// Bind (`listen` overrides `cfg.listen`), print where it answers, then print the site
/// state every `every` until Ctrl-C.
pub(crate) async fn run_cli(
    cfg: &SimConfig,
    listen: Option<SocketAddr>,
    opts: SimOptions,
    every: Duration,
) -> Result<(), SimError> {
    let addr = listen.unwrap_or(cfg.listen);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })?;
    let mut handle = spawn_with(cfg, listener, opts)?;
    crate::outln!(
        "leap-edge sim: Modbus TCP on {} unit {}, SunSpec map at {} (models 1, 103, {}{}713, 203){}; Ctrl-C stops",
        handle.local_addr(),
        cfg.unit_id,
        cfg.base_address,
        if opts.model_124 { "124, " } else { "" },
        if opts.model_704 { "704, " } else { "" },
        if opts.victron {
            format!("; Victron GX registers on unit {}", victron::UNIT)
        } else {
            String::new()
        },
    );
    let mut iv = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = iv.tick() => {
                let s = handle.snapshot();
                crate::outln!(
                    "mode {}  SoC {:.1} %  battery {:+.2} kW (target {:+.2})  load {:.2} kW  grid {:+.2} kW",
                    s.mode.describe(), s.soc_pct, s.battery_kw, s.target_kw, s.load_kw, s.grid_kw
                );
            }
        }
    }
    handle.shutdown();
    Ok(())
}
