//! Leap's request and answer bodies (LEAP-API.md), typed. Timeslot objects inside search
//! results stay raw JSON on purpose: they go through the same ingest parser as a push
//! (SPEC §2.14), which keeps unknown fields and rejects only what it must.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Meter or group: Leap keeps one webhook URL of each per partner account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Meter,
    Group,
}

impl Level {
    pub fn path(self) -> &'static str {
        match self {
            Level::Meter => "meter",
            Level::Group => "group",
        }
    }
}

/// `GET|PUT /v2/dispatch/{meter,group}/webhook`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    #[serde(default)]
    pub headers: Vec<WebhookHeader>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookHeader {
    pub name: String,
    pub value: String,
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
pub struct IntegrationTestAnswer {
    pub http_status: Option<u16>,
    #[serde(default)]
    pub sent_time: Option<String>,
    #[serde(default)]
    pub received_time: Option<String>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
}

/// `POST /v2/dispatch/{meter,group}/search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchRequest {
    #[serde(with = "rfc3339")]
    pub start_date: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub end_date: DateTime<Utc>,
    /// Leap's default (true) hides CAISO 5-minute real-time events: always send false.
    pub exclude_real_time_events: bool,
    pub exclude_voluntary_events: bool,
    pub page_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub meter_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub market_group_ids: Option<Vec<String>>,
}

/// One page of search results; `next_page_token` is null on the last page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchPage<R> {
    pub next_page_token: Option<String>,
    #[serde(default = "Vec::new")]
    pub results: Vec<R>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterResult {
    pub meter_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_reference: Option<String>,
    #[serde(default)]
    pub timeslots: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupResult {
    pub market_group_id: String,
    #[serde(default)]
    pub meter_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partner_references: Vec<String>,
    #[serde(default)]
    pub timeslots: Vec<serde_json::Value>,
}

/// Leap's error body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
}

mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Issue 14: `POST /v1.1/interval-data?schema=load` → `{"job_id"}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UploadAnswer {
    pub job_id: String,
}

/// `GET /v1.1/jobs/interval-data-uploads/{job_id}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UploadJob {
    pub job_id: String,
    #[serde(default)]
    pub errors: Vec<RowError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowError {
    pub line: Option<i64>,
    pub column: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
}

/// `GET /v1.1/jobs/interval-data-uploads`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UploadList {
    #[serde(default)]
    pub uploads: Vec<UploadStatus>,
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UploadStatus {
    pub last_job_id: Option<String>,
    /// QUEUED, PROCESSING, COMPLETED or FAILED.
    pub status: String,
}

/// `POST /v1.1/missing-interval-data/search`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MissingSearch {
    pub meter_ids: Vec<String>,
    pub missing_interval_window_start_date_time_utc: String,
    pub missing_interval_window_end_date_time_utc: String,
    pub state: String,
    pub page_size: u32,
    pub page_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MissingPage {
    #[serde(default)]
    pub missing_intervals: Vec<MissingInterval>,
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MissingInterval {
    pub meter_id: String,
    pub data_type: String,
    pub start_date_time_utc: DateTime<Utc>,
    pub end_date_time_utc: DateTime<Utc>,
}
