//! `leap-edge devices`: connection state and live values of every configured device, read
//! directly over Modbus (works whether or not the daemon runs); `devices probe` discovers
//! an unknown device — the first thing a technician runs on site.

use super::exit;
use super::text::clean;
use crate::config::Config;
use crate::device::{self, Battery};
use serde_json::{Value, json};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub(crate) struct DevicesArgs {
    #[command(subcommand)]
    pub(crate) probe: Option<ProbeCommand>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum ProbeCommand {
    /// Discover SunSpec models at HOST[:PORT]; print identity and the points leap-edge would use.
    Probe {
        /// Host name or address, optionally with :PORT (default 502).
        target: String,
        /// Modbus unit id (slave address) of the inverter.
        #[arg(long, default_value_t = 1)]
        unit: u8,
        /// Give up on each Modbus call after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Print the probe report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `devices probe`: needs no configuration (the first thing run on an empty site).
pub(crate) fn probe(args: &DevicesArgs) -> anyhow::Result<u8> {
    let Some(ProbeCommand::Probe {
        target,
        unit,
        timeout_ms,
        json,
    }) = &args.probe
    else {
        return Ok(exit::USAGE);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match device::probe(target, *unit, Duration::from_millis(*timeout_ms)).await {
            Ok(report) => {
                if *json {
                    crate::outln!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    crate::outln!("{}", clean_lines(&report.to_string()));
                }
                Ok(exit::OK)
            }
            Err(e) => {
                eprintln!(
                    "leap-edge: probe {} unit {unit}: {}",
                    clean(target),
                    clean(&e.to_string())
                );
                Ok(exit::FAILURE)
            }
        }
    })
}

/// Device text escaped line by line (a device's identity strings are not trusted).
fn clean_lines(s: &str) -> String {
    s.lines().map(clean).collect::<Vec<_>>().join("\n")
}

pub(super) fn run(config: &Config, args: &DevicesArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut all = Vec::new();
    let mut any_down = false;
    for (name, cfg) in &config.devices {
        let meters: Vec<&str> = config
            .meters
            .iter()
            .filter(|m| &m.device == name)
            .map(|m| m.id.as_str())
            .collect();
        let entry = match device::open(name, cfg, &config.devices_dir) {
            Err(e) => {
                any_down = true;
                json!({"device": name, "meters": meters, "error": e.to_string()})
            }
            Ok(mut bat) => {
                let state = bat.state();
                let reading = rt.block_on(bat.read());
                any_down |= reading.is_err();
                let state = state
                    .lock()
                    .map(|s| serde_json::to_value(&*s).unwrap_or_default())
                    .unwrap_or_default();
                json!({"device": name, "meters": meters, "state": state,
                       "telemetry": reading.as_ref().ok(), "error": reading.err().map(|e| e.to_string())})
            }
        };
        all.push(entry);
    }
    if args.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"devices": all}))?
        );
    } else if all.is_empty() {
        crate::outln!("No devices configured.");
    } else {
        for d in &all {
            print_device(d);
        }
    }
    Ok(if any_down { exit::FAILURE } else { exit::OK })
}

fn print_device(d: &Value) {
    let name = d["device"].as_str().unwrap_or("?");
    let meters = d["meters"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    crate::outln!("device {} (meters: {})", clean(name), clean(&meters));
    let st = &d["state"];
    if !st.is_null() {
        crate::outln!(
            "  address {} unit {}  profile {}",
            clean(st["addr"].as_str().unwrap_or("?")),
            st["unit_id"],
            clean(st["profile"].as_str().unwrap_or("?"))
        );
        if let Some(c) = st["control"].as_str() {
            crate::outln!("  control via {}", clean(c));
        }
    }
    let t = &d["telemetry"];
    if !t.is_null() {
        let f = |k: &str, unit: &str| {
            t[k].as_f64()
                .map_or("-".into(), |v| format!("{v:.2} {unit}"))
        };
        crate::outln!(
            "  connected; SoC {}  battery {} (discharge +)  grid {} (import +)  capacity {}",
            f("soc_pct", "%"),
            f("battery_kw", "kW"),
            f("grid_kw", "kW"),
            f("capacity_kwh", "kWh")
        );
    }
    if let Some(e) = d["error"].as_str() {
        crate::outln!("  ERROR: {}", clean(e));
    }
}
