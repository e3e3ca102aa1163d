//! `leap-edge send-test`: post a Leap-shaped test notification to the running daemon,
//! through the same HTTP path and authentication Leap uses — as Leap's
//! `POST /dispatch/meter/webhook/integration_test` would.

use super::{duration, exit};
use crate::config::{Config, TestPolicy};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub(crate) struct SendTestArgs {
    /// Leap meter id (default: the first configured meter).
    #[arg(long)]
    pub(crate) meter: Option<String>,
    /// Start this long from now.
    #[arg(long = "in", value_parser = duration::parse, default_value = "10s")]
    pub(crate) start_in: std::time::Duration,
    /// Length of the timeslot.
    #[arg(long, value_parser = duration::parse, default_value = "5m")]
    pub(crate) duration: std::time::Duration,
    /// energy_kw of the timeslot.
    #[arg(long, default_value_t = 5.0, value_parser = super::overrides::leap_kw)]
    pub(crate) kw: f64,
    /// performance_compensation_cap.
    #[arg(long, default_value = "up-to-site-load")]
    pub(crate) cap: String,
    /// Leap's priority of the timeslot (a higher one displaces a lower one).
    #[arg(long, default_value_t = 1)]
    pub(crate) priority: i64,
    /// Send it as a real dispatch (integration_test_notification = false).
    #[arg(long)]
    pub(crate) real: bool,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(super) fn run(config: &Config, args: &SendTestArgs) -> anyhow::Result<u8> {
    // A typo would post a timeslot that is stored, never dispatched, and raises the
    // NOT DISPATCHED alarm for its whole length: refused first, as `events` does.
    if let Some(code) = super::unknown_meter(config, args.meter.as_deref()) {
        return Ok(code);
    }
    let Some(meter) = args
        .meter
        .clone()
        .or_else(|| config.meters.first().map(|m| m.id.clone()))
    else {
        eprintln!("leap-edge: no meter configured; give --meter ID");
        return Ok(exit::USAGE);
    };
    let start = chrono::Utc::now() + chrono::Duration::from_std(args.start_in)?;
    let end = start + chrono::Duration::from_std(args.duration)?;
    let event = format!("send-test-{}", start.timestamp_millis());
    let body = json!({
        "integration_test_notification": !args.real,
        "communication_test": false,
        "meter_dispatches": [{"meter_id": meter, "timeslots": [{
            "meter_event_id": event,
            "start_time": crate::textfmt::ts(start), "end_time": crate::textfmt::ts(end),
            "cancelled": false, "energy_kw": args.kw, "performance_compensation_cap": args.cap,
            "priority": args.priority, "is_voluntary": false,
            "dispatch_event_types": ["standard"], "programs": ["CCA"],
        }]}],
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, answer) = rt.block_on(post(config, body.to_string()))?;
    if args.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"http_status": status, "meter_event_id": event, "body": answer})
            )?
        );
    } else {
        crate::outln!("HTTP {status}: {}", super::text::clean(&answer.to_string()));
        crate::outln!(
            "meter_event_id {event}: {} kW from {} to {}",
            args.kw,
            crate::textfmt::ts(start),
            crate::textfmt::ts(end)
        );
    }
    if let Some(code) = what_became_of_it(config, args.real, &event, status, &answer) {
        return Ok(code);
    }
    Ok(if (200..300).contains(&status) {
        exit::OK
    } else {
        exit::FAILURE
    })
}

/// After a 2XX: a timeslot the daemon rejected is a failure, not a quiet success; a dry
/// run under the policy is said to be one.
fn what_became_of_it(
    config: &Config,
    real: bool,
    event: &str,
    status: u16,
    answer: &str,
) -> Option<u8> {
    let counts = serde_json::from_str::<Counts>(answer).unwrap_or_default();
    if (200..300).contains(&status) && counts.rejected > 0 {
        // Stored, as Leap's would be, but not scheduled: say so instead of a quiet success.
        eprintln!(
            "leap-edge: the daemon stored this timeslot as REJECTED (a [limits] bound or a bad field); `leap-edge events --event {event}` says why"
        );
        return Some(exit::FAILURE);
    }
    // SPEC §2.6: an integration test moves the battery only under `execute` (default
    // dry-run), which a technician watching `status` should know before the start.
    let said = match config.policy.integration_test {
        TestPolicy::Execute => None,
        TestPolicy::DryRun => Some((
            "dry-run",
            "a dry run: the battery does not move; `status` shows `dry-run: …`, `history` a would-apply",
        )),
        TestPolicy::Ignore => Some(("ignore", "ignored: nothing is dispatched")),
    };
    if let Some((policy, what)) = said.filter(|_| !real) {
        eprintln!(
            "leap-edge: note: [policy] integration_test = \"{policy}\" makes this test {what} (--real sends a real dispatch)"
        );
    }
    None
}

/// The part of the daemon's answer (SPEC §3) that says what became of the timeslot.
#[derive(serde::Deserialize, Default)]
struct Counts {
    #[serde(default)]
    rejected: u64,
}

/// The whole exchange with the daemon, connect to answer: a daemon that accepts and then
/// hangs must not hang the technician's shell.
const EXCHANGE: std::time::Duration = std::time::Duration::from_secs(15);

async fn post(config: &Config, body: String) -> anyhow::Result<(u16, String)> {
    let mut addr = config.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    match tokio::time::timeout(EXCHANGE, exchange(config, addr, body)).await {
        Ok(answer) => answer,
        Err(_) => anyhow::bail!(
            "the daemon at {addr} did not answer within {} s; see `leap-edge status` and its log",
            EXCHANGE.as_secs()
        ),
    }
}

async fn exchange(
    config: &Config,
    addr: std::net::SocketAddr,
    body: String,
) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the daemon at {addr}: {e} (is it running?)"))?;
    let key = config
        .auth
        .keys
        .first()
        .ok_or_else(|| anyhow::anyhow!("auth.keys is empty"))?;
    let req = hyper::Request::post(&config.server.path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header(config.auth.header.as_str(), key.expose())
        .body(Full::new(Bytes::from(body)))?;
    let Some(tls) = &config.server.tls else {
        return send(TokioIo::new(tcp), req).await;
    };
    let cfg = super::pinned_tls::client_config(&tls.cert)?;
    // The name only goes into SNI; the certificate check is the pin, not the name.
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            if e.to_string().contains(super::pinned_tls::NOT_OURS) {
                anyhow::anyhow!(
                    "{} than {} (server.tls.cert): after renewing it, run `leap-edge reload`",
                    super::pinned_tls::NOT_OURS,
                    tls.cert.display()
                )
            } else {
                anyhow::anyhow!("TLS handshake with the daemon at {addr} failed: {e}")
            }
        })?;
    send(TokioIo::new(stream), req).await
}

async fn send<T>(io: T, req: hyper::Request<Full<Bytes>>) -> anyhow::Result<(u16, String)>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
