//! Device profiles: what `devices/*.toml` may say. A profile names the registers a device
//! offers for each reading (state of charge, battery power, site grid power, ...) and the
//! writes for each control operation (enter and leave remote control, the power setpoint,
//! the reversion timeout). Alternatives are listed in order; the driver uses the first one
//! the device actually offers. Parsing is strict (unknown keys are errors with file and
//! line); `check` then catches what types cannot.

mod check;

pub use check::check;

use super::client::Function;
use super::codec::{RegType, WordOrder};
use crate::config::line_col;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: cannot read the device profile: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {}", problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("{dir}: no device profiles (*.toml) found")]
    Empty { dir: PathBuf },
}

/// How the profile names registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Addressing {
    /// `model` + `point`, resolved by SunSpec discovery; type and scale factor from the
    /// SunSpec model.
    Sunspec,
    /// `address` + `type` (+ `scale`, `word_order`, `function`, `unit`).
    Fixed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    // The file's own words for the reader; required/accepted so a profile documents itself.
    #[expect(
        dead_code,
        reason = "for whoever reads the profile file, never the daemon"
    )]
    name: String,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "for whoever reads the profile file, never the daemon"
    )]
    description: String,
    pub(crate) addressing: Addressing,
    /// A template to copy and fill in: checked like any profile, but never driven.
    #[serde(default)]
    pub(crate) template: bool,
    pub(crate) read: ReadSpec,
    #[serde(default)]
    pub(crate) control: Vec<ControlSpec>,
}

/// Each reading: alternatives in order of preference. Units after scaling: % for SoC,
/// W for powers (battery: discharge positive; grid: import positive), Wh for capacity.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadSpec {
    #[serde(default)]
    pub(crate) soc: Vec<RegSpec>,
    #[serde(default)]
    pub(crate) battery_power: Vec<RegSpec>,
    #[serde(default)]
    pub(crate) grid_power: Vec<RegSpec>,
    #[serde(default)]
    pub(crate) capacity: Vec<RegSpec>,
    #[serde(default)]
    pub(crate) max_charge: Vec<RegSpec>,
    #[serde(default)]
    pub(crate) max_discharge: Vec<RegSpec>,
    /// Site meter energy accumulators, Wh, ever increasing: imported from and exported to
    /// the grid. Absent: interval energy is integrated from `grid_power` and marked
    /// estimated (issue 14).
    #[serde(default)]
    pub(crate) grid_import_energy: Vec<RegSpec>,
    #[serde(default)]
    pub(crate) grid_export_energy: Vec<RegSpec>,
}

/// One register. SunSpec profiles give `model` + `point`; fixed profiles give `address` +
/// `type`. `value` is used only in `enter`/`leave` writes (engineering units).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegSpec {
    pub(crate) model: Option<u16>,
    pub(crate) point: Option<String>,
    pub(crate) address: Option<u16>,
    /// Modbus unit id when it differs from the device's (Victron GX: 100 for the system
    /// and settings services, the VE.Bus unit for the inverter).
    pub(crate) unit: Option<u8>,
    #[serde(default)]
    pub(crate) function: Function,
    #[serde(rename = "type")]
    pub(crate) ty: Option<RegType>,
    #[serde(default)]
    pub(crate) word_order: WordOrder,
    /// Multiplier from the raw register value to the canonical unit (W, %, Wh, s). With
    /// SunSpec it multiplies on top of the point's scale factor.
    pub(crate) scale: Option<f64>,
    /// Flip the sign (a meter that reports export as positive, an inverter that reports
    /// charging as positive).
    #[serde(default)]
    pub(crate) negate: bool,
    /// Written value (enter/leave only).
    pub(crate) value: Option<f64>,
    /// Reads only: registers added to this one (a meter that reports each phase).
    #[serde(default)]
    pub(crate) plus: Vec<RegSpec>,
    /// Engineering range a written value is clamped to.
    pub(crate) min: Option<f64>,
    pub(crate) max: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ControlSpec {
    pub(crate) label: String,
    /// Written (in order, each read back) after the setpoint, on every command refresh.
    #[serde(default)]
    pub(crate) enter: Vec<RegSpec>,
    /// Written to hand the battery back to its own mode.
    #[serde(default)]
    pub(crate) leave: Vec<RegSpec>,
    /// Device-side reversion timeout, seconds. Absent: the device has none (say so in the
    /// profile header: the battery then keeps the last command if the daemon dies).
    pub(crate) reversion: Option<RegSpec>,
    pub(crate) power: PowerSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum PowerSpec {
    /// SunSpec 124 style: two signed percentages forming a window. Discharge at p % is
    /// `discharge = p, charge = -p`; charge at p % is `discharge = -p, charge = p`.
    /// `reference` gives the W that 100 % means (alternatives; else the configured limit).
    PercentWindow {
        discharge: RegSpec,
        charge: RegSpec,
        #[serde(default)]
        reference: Vec<RegSpec>,
    },
    /// A signed watt setpoint, discharge positive (after `negate`).
    Watts { setpoint: RegSpec },
    /// A grid setpoint (import positive): the driver writes grid + battery − target so that
    /// the battery ends at the target (Victron ESS mode 2).
    GridSetpoint { setpoint: RegSpec },
}

impl RegSpec {
    /// A short name for logs and status: `124.OutWRte` or `hr 2700@100`.
    pub(crate) fn label(&self) -> String {
        match (self.model, &self.point, self.address) {
            (Some(m), Some(p), _) => format!("{m}.{p}"),
            (_, _, Some(a)) => {
                let f = match self.function {
                    Function::Holding => "hr",
                    Function::Input => "ir",
                };
                match self.unit {
                    Some(u) => format!("{f} {a}@{u}"),
                    None => format!("{f} {a}"),
                }
            }
            _ => "(unnamed register)".into(),
        }
    }
}

/// Read and parse a profile; errors name the file and line.
impl Profile {
    /// Every control method sets a device-side reversion timeout (SPEC §2.10): a daemon
    /// that dies leaves no setpoint behind for long. False for e.g. Victron ESS mode 2.
    pub fn reverts_by_itself(&self) -> bool {
        !self.control.is_empty() && self.control.iter().all(|c| c.reversion.is_some())
    }
}

pub fn load(path: &Path) -> Result<Profile, ProfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let profile = parse_str(&text, path)?;
    let problems = check(&profile);
    if !problems.is_empty() {
        return Err(ProfileError::Invalid {
            path: path.to_path_buf(),
            problems,
        });
    }
    Ok(profile)
}

pub fn parse_str(text: &str, path: &Path) -> Result<Profile, ProfileError> {
    toml::from_str::<Profile>(text).map_err(|e| {
        let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
        ProfileError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().to_string(),
        }
    })
}

/// Validate every `*.toml` in `dir`; returns how many files were checked. For
/// `leap-edge config check` and CI.
pub fn check_dir(dir: &Path) -> Result<usize, Vec<ProfileError>> {
    let entries = std::fs::read_dir(dir).map_err(|source| {
        vec![ProfileError::Read {
            path: dir.to_path_buf(),
            source,
        }]
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(vec![ProfileError::Empty {
            dir: dir.to_path_buf(),
        }]);
    }
    let errors: Vec<ProfileError> = files.iter().filter_map(|f| load(f).err()).collect();
    if errors.is_empty() {
        Ok(files.len())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_file_and_line() {
        let text = "name = \"x\"\naddressing = \"fixed\"\n[read]\nsoc = [{ adress = 3, type = \"u16\" }]\n";
        let e = parse_str(text, Path::new("devices/x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("devices/x.toml:4:"), "{e}");
        assert!(e.contains("adress"), "{e}");
    }

    #[test]
    fn semantic_problems_are_listed() {
        let text = r#"
name = "x"
addressing = "sunspec"
[read]
soc = [{ model = 713, point = "SoC" }]
[[control]]
label = "bad"
enter = [{ model = 713, point = "SoC", value = 1 }]
power = { kind = "watts", setpoint = { model = 704, point = "Nope" } }
"#;
        let p = parse_str(text, Path::new("x.toml")).unwrap();
        let problems = check(&p).join("\n");
        assert!(problems.contains("713.SoC is read-only"), "{problems}");
        assert!(problems.contains("704.Nope"), "{problems}");
        assert!(problems.contains("`leave` is empty"), "{problems}");
    }

    /// Issue 16: the setpoint and the reversion are written, so an input register (fixed
    /// addressing) is refused for them as for enter/leave, and they carry no `value`.
    #[test]
    fn computed_writes_are_checked_as_writes() {
        let text = r#"
name = "x"
addressing = "fixed"
[read]
soc = [{ address = 1, type = "u16" }]
[[control]]
label = "vendor"
reversion = { address = 2, function = "input", type = "u16" }
leave = [{ address = 3, type = "u16", value = 0 }]
power = { kind = "watts", setpoint = { address = 4, type = "i16", value = 5 } }
"#;
        let p = parse_str(text, Path::new("x.toml")).unwrap();
        let problems = check(&p).join("\n");
        assert!(
            problems.contains("reversion: input registers cannot be written"),
            "{problems}"
        );
        assert!(
            problems.contains("power.setpoint: `value` only belongs in enter/leave writes"),
            "{problems}"
        );
    }

    /// A grid-setpoint device without `leave` would keep regulating to the dispatch's last
    /// setpoint after the dispatch (release wrote nothing, yet logged "released").
    #[test]
    fn a_grid_setpoint_without_leave_is_refused() {
        let text = r#"
name = "x"
addressing = "fixed"
[read]
soc = [{ address = 1, type = "u16" }]
[[control]]
label = "grid"
power = { kind = "grid-setpoint", setpoint = { address = 4, type = "i16" } }
"#;
        let p = parse_str(text, Path::new("x.toml")).unwrap();
        let problems = check(&p).join("\n");
        assert!(problems.contains("`leave` is empty"), "{problems}");
    }
}
