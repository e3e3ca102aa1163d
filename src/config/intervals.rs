//! `[intervals]`: interval data for Leap (issue 14).

use serde::{Deserialize, Serialize};

/// `[intervals]`: what goes into Leap's CSV besides the measurements.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalsConfig {
    /// The CSV `region` column (Leap's transmission region of the site, e.g. "CAISO");
    /// empty when Leap already knows it from the meter.
    #[serde(default)]
    pub(crate) region: String,
}
