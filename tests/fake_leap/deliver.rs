//! The integration-test endpoint: a real HTTPS POST to the registered URL, as Leap does.

use super::{Resp, State, bad, reply};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(super) async fn integration_test(st: &Mutex<State>, level: &str, body: Value) -> Resp {
    let key = if level == "meter" {
        "meter_dispatches"
    } else {
        "group_dispatches"
    };
    if body[key].as_array().is_none_or(|a| a.is_empty()) {
        return bad(&format!("{key} must hold at least one item"));
    }
    let (hook, cert) = {
        let s = st.lock().unwrap();
        (s.hooks.get(level).cloned(), s.daemon_cert.clone())
    };
    let Some(hook) = hook else {
        return bad("no webhook registered for this account");
    };
    let notification =
        json!({"integration_test_notification": true, "communication_test": false, key: body[key]});
    let sent = Utc::now();
    let result = deliver(&hook, cert, notification.to_string()).await;
    let received = Utc::now();
    let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let answer = match result {
        Ok((status, headers, text)) => json!({"http_status": status, "sent_time": ts(sent),
            "received_time": ts(received), "headers": headers, "body": text, "error_message": null}),
        Err(e) => json!({"http_status": null, "sent_time": ts(sent), "received_time": null,
            "headers": {}, "body": null, "error_message": e}),
    };
    reply(200, Some(answer))
}

/// POST the notification to the registered URL as Leap would: its headers with lower-case
/// names, a 10-second limit.
async fn deliver(
    hook: &Value,
    cert: Option<CertificateDer<'static>>,
    body: String,
) -> Result<(u16, Value, String), String> {
    let url: hyper::Uri = hook["url"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("{e}"))?;
    let host = url.host().unwrap_or_default().to_string();
    let port = url.port_u16().unwrap_or(443);
    let attempt = async {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(c) = cert {
            roots.add(c).map_err(|e| e.to_string())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method("POST")
            .uri(url.path())
            .header("host", format!("{host}:{port}"))
            .header("content-type", "application/json");
        for h in hook["headers"].as_array().into_iter().flatten() {
            let name = h["name"].as_str().unwrap_or_default().to_ascii_lowercase();
            req = req.header(name, h["value"].as_str().unwrap_or_default());
        }
        let resp = send
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers: serde_json::Map<String, Value> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), json!([v.to_str().unwrap_or_default()])))
            .collect();
        let text = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            status,
            Value::Object(headers),
            String::from_utf8_lossy(&text).into_owned(),
        ))
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "no 2XX within 10 seconds".to_string())?
}
