//! The Leap API client: bearer key, base URL, per-attempt deadline, retries with back-off on
//! connection errors, timeouts and 5XX, a longer back-off on 429 (Retry-After honoured),
//! and Leap's error envelope turned into a message that says what to do.

use super::LeapError;
use super::http::{self, Answer, TransportError};
use super::types::*;
use crate::secret::Secret;
use hyper::{Method, StatusCode, Uri};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// Longest back-off of our own (connection errors, 5XX).
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Longest Retry-After waited out: the callers' windows are minutes.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct LeapClient {
    base: Uri,
    key: Secret,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for LeapClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeapClient({})", self.base)
    }
}

impl LeapClient {
    /// From `[leap]`; fails when no `api_key` is configured or the base URL is refused.
    pub fn from_config(c: &super::LeapConfig) -> Result<LeapClient, LeapError> {
        let key = c.api_key.clone().ok_or(LeapError::NoApiKey)?;
        let base = super::config::resolve_base_url(&c.base_url).map_err(LeapError::BaseUrl)?;
        Ok(LeapClient {
            base,
            key,
            timeout: Duration::from_secs(c.timeout_secs),
            retries: c.retries,
            backoff: Duration::from_millis(c.retry_base_ms),
            tls: http::tls_config(),
        })
    }

    pub(crate) fn base_url(&self) -> String {
        self.base.to_string().trim_end_matches('/').to_string()
    }

    fn url(&self, path: &str) -> Result<Uri, LeapError> {
        format!("{}{path}", self.base_url())
            .parse()
            .map_err(|e| LeapError::BaseUrl(format!("{path}: {e}")))
    }

    pub(crate) async fn get_webhook(&self, level: Level) -> Result<Option<Webhook>, LeapError> {
        let path = format!("/v2/dispatch/{}/webhook", level.path());
        match self.call::<(), Webhook>(Method::GET, &path, None).await {
            Ok(w) => Ok(w),
            // No webhook registered yet: Leap's own 404, with its error envelope. A 404
            // without it comes from something else at that address (a wrong `base_url`),
            // and "nothing registered" would then be a guess that hides the mistake.
            Err(LeapError::Api {
                status: 404,
                ref code,
                ..
            }) if code == "NOT_FOUND" => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn put_webhook(
        &self,
        level: Level,
        hook: &Webhook,
    ) -> Result<Webhook, LeapError> {
        let path = format!("/v2/dispatch/{}/webhook", level.path());
        self.call(Method::PUT, &path, Some(hook))
            .await?
            .ok_or_else(|| LeapError::BadAnswer(format!("PUT {path}: empty answer")))
    }

    pub(crate) async fn delete_webhook(&self, level: Level) -> Result<(), LeapError> {
        let path = format!("/v2/dispatch/{}/webhook", level.path());
        match self
            .call::<(), serde_json::Value>(Method::DELETE, &path, None)
            .await
        {
            // Gone is what was asked: a retry after a 204 that was lost on the way back
            // finds nothing left to delete.
            Ok(_) => Ok(()),
            Err(LeapError::Api {
                status: 404,
                ref code,
                ..
            }) if code == "NOT_FOUND" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Ask Leap to post a test notification to the registered URL; the body is
    /// `{"meter_dispatches": …}` or `{"group_dispatches": …}`.
    pub(crate) async fn integration_test<B: Serialize>(
        &self,
        level: Level,
        body: &B,
    ) -> Result<IntegrationTestAnswer, LeapError> {
        let path = format!("/v2/dispatch/{}/webhook/integration_test", level.path());
        let body = serde_json::to_vec(body).map_err(|e| LeapError::BadAnswer(e.to_string()))?;
        // Each POST makes Leap post a test notification: a timeout after Leap took it is
        // not retried, so one command gives one test, and its answer is the one shown.
        self.call_bytes(
            Method::POST,
            &path,
            Some(body),
            "application/json",
            Retry::IfNotSent,
        )
        .await?
        .ok_or_else(|| LeapError::BadAnswer(format!("POST {path}: empty answer")))
    }

    pub(crate) async fn search<R: DeserializeOwned>(
        &self,
        level: Level,
        req: &SearchRequest,
    ) -> Result<SearchPage<R>, LeapError> {
        let path = format!("/v2/dispatch/{}/search", level.path());
        self.call(Method::POST, &path, Some(req))
            .await?
            .ok_or_else(|| LeapError::BadAnswer(format!("POST {path}: empty answer")))
    }

    /// Issue 14: `POST /v1.1/interval-data?schema=load` with Leap's load CSV.
    pub(crate) async fn upload_load_csv(&self, csv: String) -> Result<UploadAnswer, LeapError> {
        let path = "/v1.1/interval-data?schema=load";
        // Each POST creates a job: retried only when Leap certainly did not get it, so a
        // timeout after Leap took it does not put the same rows in a second job.
        self.call_bytes(
            Method::POST,
            path,
            Some(csv.into_bytes()),
            "text/csv",
            Retry::IfNotSent,
        )
        .await?
        .ok_or_else(|| LeapError::BadAnswer(format!("POST {path}: empty answer")))
    }

    /// `GET /v1.1/jobs/interval-data-uploads/{job_id}`: the job's row errors.
    pub(crate) async fn upload_job(&self, job_id: &str) -> Result<UploadJob, LeapError> {
        let path = format!("/v1.1/jobs/interval-data-uploads/{job_id}");
        self.call::<(), UploadJob>(Method::GET, &path, None)
            .await?
            .ok_or_else(|| LeapError::BadAnswer(format!("GET {path}: empty answer")))
    }

    /// `GET /v1.1/jobs/interval-data-uploads?from=&to=`: one page of uploads with status.
    pub(crate) async fn upload_list(
        &self,
        from: &str,
        to: &str,
        page_token: Option<&str>,
    ) -> Result<UploadList, LeapError> {
        let mut path =
            format!("/v1.1/jobs/interval-data-uploads?from={from}&to={to}&page_size=500");
        if let Some(t) = page_token {
            // Leap's tokens are opaque: a '+' or '&' in one must not change the query.
            path.push_str(&format!("&page_token={}", query_escape(t)));
        }
        self.call::<(), UploadList>(Method::GET, &path, None)
            .await?
            .ok_or_else(|| LeapError::BadAnswer(format!("GET {path}: empty answer")))
    }

    /// `POST /v1.1/missing-interval-data/search`: one page.
    pub(crate) async fn missing_intervals(
        &self,
        req: &MissingSearch,
    ) -> Result<MissingPage, LeapError> {
        let path = "/v1.1/missing-interval-data/search";
        self.call(Method::POST, path, Some(req))
            .await?
            .ok_or_else(|| LeapError::BadAnswer(format!("POST {path}: empty answer")))
    }

    /// One call with retries. `Ok(None)` for an empty answer (204).
    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Option<R>, LeapError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| LeapError::BadAnswer(e.to_string()))?;
        self.call_bytes(method, path, body, "application/json", Retry::Always)
            .await
    }

    /// [`Self::call`] with a body already encoded as `content_type` (issue 14: text/csv).
    async fn call_bytes<R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
        retry: Retry,
    ) -> Result<Option<R>, LeapError> {
        let uri = self.url(path)?;
        // Trimmed: a key pasted with a line break at its end is the key.
        let mut auth = vec![(
            "authorization",
            format!("Bearer {}", self.key.expose().trim()),
        )];
        if body.is_some() {
            auth.push(("content-type", content_type.to_string()));
        }
        let mut attempt = 0;
        loop {
            let got = http::exchange(
                &self.tls,
                method.clone(),
                &uri,
                &auth,
                body.clone(),
                self.timeout,
            )
            .await;
            let wait = match (&got, retry) {
                (Err(e), Retry::IfNotSent) if !unsent(e) => None,
                (Ok(a), Retry::IfNotSent) if a.status != StatusCode::TOO_MANY_REQUESTS => None,
                (Err(e), _) => retry_after_transport(e),
                (Ok(a), _) => retry_after_status(a, attempt),
            };
            match wait {
                // Leap asks for longer than a call may sit waiting: the next poll or upload
                // tries again (sending sooner would only be refused again).
                Some(Some(hint)) if hint > MAX_RETRY_AFTER => return finish(&method, path, got),
                Some(hint) if attempt < self.retries => {
                    // Leap's own wait is honoured whole; ours is capped.
                    let delay = hint.unwrap_or_else(|| {
                        (self.backoff * 2u32.pow(attempt.min(16))).min(MAX_BACKOFF)
                    });
                    tracing::warn!(
                        %method, path, attempt = attempt + 1, retry_in_ms = delay.as_millis() as u64,
                        problem = %describe(&got),
                        "Leap API call failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                _ => return finish(&method, path, got),
            }
        }
    }
}

/// Which failures a call is tried again after.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Retry {
    /// Reads and idempotent writes: transport errors, 5XX and 429.
    Always,
    /// A POST that creates something: only when the request certainly did not reach Leap
    /// (no connection, no TLS) or Leap refused it unprocessed (429).
    IfNotSent,
}

/// The request never left: nothing at Leap can have acted on it.
pub(crate) fn unsent(e: &TransportError) -> bool {
    matches!(
        e,
        TransportError::Connect { .. } | TransportError::Tls { .. }
    )
}

/// Some(None): retry with the usual back-off; Some(Some(d)): retry after d; None: final.
fn retry_after_transport(_e: &TransportError) -> Option<Option<Duration>> {
    Some(None)
}

fn retry_after_status(a: &Answer, attempt: u32) -> Option<Option<Duration>> {
    if a.status == StatusCode::TOO_MANY_REQUESTS {
        let hinted = a
            .headers
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Without a hint, wait longer than for a 5XX, and longer each time: the limit is
        // per minute and per account, which the gateways of a fleet share.
        let unhinted = Duration::from_secs(5) * 2u32.pow(attempt.min(3));
        return Some(Some(hinted.unwrap_or(unhinted)));
    }
    a.status.is_server_error().then_some(None)
}

fn describe(got: &Result<Answer, TransportError>) -> String {
    match got {
        Err(e) => e.to_string(),
        Ok(a) => format!("HTTP {}", a.status.as_u16()),
    }
}

fn finish<R: DeserializeOwned>(
    method: &Method,
    path: &str,
    got: Result<Answer, TransportError>,
) -> Result<Option<R>, LeapError> {
    let a = got.map_err(|e| LeapError::Transport {
        call: format!("{method} {path}"),
        source: e,
    })?;
    if a.status.is_success() {
        if a.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        return serde_json::from_slice(&a.body).map(Some).map_err(|e| {
            LeapError::BadAnswer(format!(
                "{method} {path}: answer is not what Leap documents: {e}"
            ))
        });
    }
    let env: ErrorEnvelope = serde_json::from_slice(&a.body).unwrap_or_default();
    Err(LeapError::Api {
        call: format!("{method} {path}"),
        status: a.status.as_u16(),
        code: env.code.unwrap_or_default(),
        error_code: env.error_code.unwrap_or_default(),
        message: env
            .message
            .unwrap_or_else(|| String::from_utf8_lossy(&a.body).chars().take(200).collect()),
    })
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hyper::HeaderMap;

    /// A 429 without Retry-After waits longer each time (the limit is per account, which a
    /// fleet shares); before, 5 s every time, so every retry of a fleet fell in one minute.
    #[test]
    fn an_unhinted_429_backs_off_more_each_time() {
        let answer = |retry_after: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(v) = retry_after {
                headers.insert(hyper::header::RETRY_AFTER, v.parse().unwrap());
            }
            Answer {
                status: StatusCode::TOO_MANY_REQUESTS,
                headers,
                body: Bytes::new(),
            }
        };
        let waits: Vec<_> = (0..5)
            .map(|n| retry_after_status(&answer(None), n))
            .collect();
        let secs = |s| Some(Some(Duration::from_secs(s)));
        assert_eq!(waits, [secs(5), secs(10), secs(20), secs(40), secs(40)]);
        assert_eq!(retry_after_status(&answer(Some("7")), 3), secs(7));
    }

    #[test]
    fn page_tokens_are_escaped_in_the_query() {
        assert_eq!(super::query_escape("abc-_.~09"), "abc-_.~09");
        assert_eq!(super::query_escape("a+b/c=&d"), "a%2Bb%2Fc%3D%26d");
    }
}
