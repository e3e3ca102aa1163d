//! Leap's request and answer bodies (LEAP-API.md), typed. Timeslot objects inside search
//! results stay raw JSON on purpose: they go through the same ingest parser as a push
//! (SPEC §2.14), which keeps unknown fields and rejects only what it must.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Meter or group: Leap keeps one webhook URL of each per partner account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Meter,
    Group,
}

impl Level {
    pub(crate) fn path(self) -> &'static str {
        match self {
            Level::Meter => "meter",
            Level::Group => "group",
        }
    }
}

/// `GET|PUT /v2/dispatch/{meter,group}/webhook`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Webhook {
    pub(crate) url: String,
    #[serde(default)]
    pub(crate) headers: Vec<WebhookHeader>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct WebhookHeader {
    pub(crate) name: String,
    pub(crate) value: String,
}

/// The value is a credential: never in a log line.
impl std::fmt::Debug for WebhookHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: MASKED", self.name)
    }
}

/// `POST /v2/dispatch/{meter,group}/webhook/integration_test` answers what happened when
/// Leap posted to the registered URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct IntegrationTestAnswer {
    pub(crate) http_status: Option<u16>,
    #[serde(default)]
    pub(crate) sent_time: Option<String>,
    #[serde(default)]
    pub(crate) received_time: Option<String>,
    #[serde(default)]
    pub(crate) headers: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(crate) body: Option<String>,
    #[serde(default)]
    pub(crate) error_message: Option<String>,
}

/// `POST /v2/dispatch/{meter,group}/search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SearchRequest {
    #[serde(with = "rfc3339")]
    pub(crate) start_date: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub(crate) end_date: DateTime<Utc>,
    /// Leap's default (true) hides CAISO 5-minute real-time events: always send false.
    pub(crate) exclude_real_time_events: bool,
    pub(crate) exclude_voluntary_events: bool,
    pub(crate) page_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) meter_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) market_group_ids: Option<Vec<String>>,
}

/// One page of search results; `next_page_token` is null on the last page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SearchPage<R> {
    pub(crate) next_page_token: Option<String>,
    #[serde(default = "Vec::new")]
    pub(crate) results: Vec<R>,
}

/// One search result (a meter's or a market group's dispatches) as Leap sent it. Only its
/// being an object is checked here: the push parser judges the rest, so one odd field
/// rejects what it must and no more (SPEC §2.2), instead of failing the whole poll.
pub(crate) type SearchEntry = serde_json::Map<String, serde_json::Value>;

/// Leap's error body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(crate) struct ErrorEnvelope {
    #[serde(default)]
    pub(crate) code: Option<String>,
    #[serde(default)]
    pub(crate) message: Option<String>,
    #[serde(default)]
    pub(crate) error_code: Option<String>,
}

mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Issue 14: `POST /v1.1/interval-data?schema=load` → `{"job_id"}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct UploadAnswer {
    pub(crate) job_id: String,
}

/// `GET /v1.1/jobs/interval-data-uploads/{job_id}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct UploadJob {
    pub(crate) job_id: String,
    #[serde(default)]
    pub(crate) errors: Vec<RowError>,
    /// Errors counted by column and code: more than `errors` lists means the list was cut
    /// short, and a row missing from it may still have been refused.
    #[serde(default)]
    pub(crate) error_summary: Vec<ErrorCount>,
}

impl UploadJob {
    /// Every refused row is listed in `errors` (as far as Leap's own counts tell).
    pub(crate) fn errors_complete(&self) -> bool {
        let counted: u64 = self.error_summary.iter().map(|c| c.count).sum();
        counted <= self.errors.len() as u64
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ErrorCount {
    #[serde(default)]
    pub(crate) count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RowError {
    pub(crate) line: Option<i64>,
    pub(crate) column: Option<String>,
    pub(crate) code: Option<String>,
    pub(crate) message: Option<String>,
}

/// `GET /v1.1/jobs/interval-data-uploads`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct UploadList {
    #[serde(default)]
    pub(crate) uploads: Vec<UploadStatus>,
    pub(crate) next_page_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct UploadStatus {
    pub(crate) last_job_id: Option<String>,
    /// QUEUED, PROCESSING, COMPLETED or FAILED.
    pub(crate) status: String,
}

/// `POST /v1.1/missing-interval-data/search`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct MissingSearch {
    pub(crate) meter_ids: Vec<String>,
    pub(crate) missing_interval_window_start_date_time_utc: String,
    pub(crate) missing_interval_window_end_date_time_utc: String,
    pub(crate) state: String,
    pub(crate) page_size: u32,
    pub(crate) page_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct MissingPage {
    #[serde(default)]
    pub(crate) missing_intervals: Vec<MissingInterval>,
    pub(crate) next_page_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct MissingInterval {
    pub(crate) meter_id: String,
    pub(crate) data_type: String,
    pub(crate) start_date_time_utc: DateTime<Utc>,
    pub(crate) end_date_time_utc: DateTime<Utc>,
}
