//! Site load profiles for the simulator: `constant:KW`, `steps:KW@SECS,KW@SECS,...` (the
//! load is KW from SECS seconds after start; before the first step, the first KW) or
//! `csv:PATH` (lines `SECS,KW`; blank lines, `#` comments and a header are skipped).

use super::SimError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LoadProfile {
    /// (seconds from start, kW), sorted by time.
    steps: Vec<(f64, f64)>,
}

impl LoadProfile {
    pub(crate) fn parse(spec: &str) -> Result<LoadProfile, SimError> {
        let bad = |reason: String| SimError::Load {
            spec: spec.to_string(),
            reason,
        };
        let (kind, rest) = spec
            .split_once(':')
            .ok_or_else(|| bad("expected constant:KW, steps:KW@SECS,... or csv:PATH".into()))?;
        let mut steps = match kind.trim() {
            "constant" => vec![(0.0, num(rest).map_err(bad)?)],
            "steps" => rest
                .split(',')
                .map(|s| {
                    let (kw, at) = s
                        .split_once('@')
                        .ok_or_else(|| format!("step `{s}` is not KW@SECS"))?;
                    Ok((num(at)?, num(kw)?))
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(bad)?,
            "csv" => {
                let text = std::fs::read_to_string(rest.trim())
                    .map_err(|e| bad(format!("cannot read {}: {e}", rest.trim())))?;
                csv_steps(&text).map_err(bad)?
            }
            other => return Err(bad(format!("unknown load kind `{other}`"))),
        };
        if steps.is_empty() {
            return Err(bad("no load values".into()));
        }
        steps.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(LoadProfile { steps })
    }

    /// Load in kW at `secs` after start.
    pub(crate) fn at(&self, secs: f64) -> f64 {
        self.steps
            .iter()
            .rev()
            .find(|(t, _)| *t <= secs)
            .unwrap_or(&self.steps[0])
            .1
    }

    pub(crate) fn max_kw(&self) -> f64 {
        self.steps.iter().map(|s| s.1.abs()).fold(0.0, f64::max)
    }
}

fn num(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{}` is not a number", s.trim()))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("`{v}` is not finite"))
    }
}

fn csv_steps(text: &str) -> Result<Vec<(f64, f64)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (a, b) = line
            .split_once(',')
            .ok_or_else(|| format!("line {}: expected SECS,KW", i + 1))?;
        match (num(a), num(b)) {
            (Ok(t), Ok(kw)) => out.push((t, kw)),
            _ if out.is_empty() && i == 0 => continue, // header
            _ => return Err(format!("line {}: expected SECS,KW", i + 1)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(LoadProfile::parse("constant:30").unwrap().at(1e6), 30.0);
        let s = LoadProfile::parse("steps:30@0,10@60,20@120").unwrap();
        assert_eq!(
            (s.at(0.0), s.at(59.9), s.at(60.0), s.at(500.0)),
            (30.0, 30.0, 10.0, 20.0)
        );
        assert!(LoadProfile::parse("steps:30").is_err());
        assert!(LoadProfile::parse("sine:3").is_err());
    }

    #[test]
    fn csv_with_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("load.csv");
        std::fs::write(&p, "secs,kw\n0,5\n# dip\n10,2.5\n").unwrap();
        let l = LoadProfile::parse(&format!("csv:{}", p.display())).unwrap();
        assert_eq!((l.at(3.0), l.at(11.0)), (5.0, 2.5));
    }
}
