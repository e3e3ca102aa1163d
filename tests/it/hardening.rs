//! Issue 10: the gateway tried as an attacker on Leap's network path, through the real
//! listener, the real admin socket and the real files. Each test fails without its point.

use crate::common;

use common::{Daemon, KEY, PATH, fixture, local_get, raw_tls};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// 10.1: the configured maximum of connections, each pipelining requests without a key
/// and never reading a reply, cannot keep a valid POST waiting past the read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_cannot_hold_the_connection_cap() {
    let d = Daemon::start_custom("max_connections = 8", "");
    let read_timeout = Duration::from_secs(2);
    let mut attackers = Vec::new();
    for _ in 0..8 {
        let mut s = raw_tls(d.addr, d.cert_der.clone()).await;
        attackers.push(tokio::spawn(async move {
            let burst = "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n".repeat(1000);
            // Write until the daemon stops reading (buffers full) or drops us.
            while s.write_all(burst.as_bytes()).await.is_ok() {}
        }));
    }
    // Every slot is taken now; this POST waits for one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let r = d
        .client()
        .try_post(
            &fixture("leap-sample-meter.json"),
            read_timeout + Duration::from_secs(1),
        )
        .await
        .expect("valid POST answered within read_timeout_secs + 1 s");
    assert_eq!(r.status, 200, "{}", r.text);
    eprintln!(
        "valid POST answered in {:.2} s with 8 stalled connections",
        started.elapsed().as_secs_f64()
    );
    for a in attackers {
        let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
    }
}

/// 10.1: a client holding the key that stops reading its replies is dropped by the write
/// deadline, not kept until `connection_max_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_client_that_stops_reading_is_dropped() {
    let d = Daemon::start_custom("connection_max_secs = 600", "");
    let mut s = raw_tls(d.addr, d.cert_der.clone()).await;
    // Shows the key (the body is not JSON: 400, but the connection is now trusted).
    let first = format!(
        "POST {PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\ncontent-length: 1\r\n\r\nx"
    );
    s.write_all(first.as_bytes()).await.unwrap();
    let burst = format!("GET {PATH} HTTP/1.1\r\nhost: x\r\n\r\n").repeat(1000);
    let started = Instant::now();
    let flood = async { while s.write_all(burst.as_bytes()).await.is_ok() {} };
    let dropped = tokio::time::timeout(Duration::from_secs(20), flood).await;
    assert!(dropped.is_ok(), "a keyed client that never reads was kept");
    eprintln!("dropped after {:.1} s", started.elapsed().as_secs_f64());
}

/// 10.1: even a connection that shows the key ends after `connection_max_secs`.
#[tokio::test]
async fn a_keyed_connection_ends_at_connection_max_secs() {
    let d = Daemon::start_custom("connection_max_secs = 3", "");
    let mut s = raw_tls(d.addr, d.cert_der.clone()).await;
    let post = format!(
        "POST {PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\ncontent-length: 1\r\n\r\nx"
    );
    let started = Instant::now();
    let mut answer = Vec::new();
    // Keep it busy: a keyed request every second, so no idle timeout can be what ends it.
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if s.write_all(post.as_bytes()).await.is_err() {
                break;
            }
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "connection still open after 15 s");
    let secs = started.elapsed().as_secs_f64();
    assert!((2.5..8.0).contains(&secs), "ended after {secs:.1} s");
    assert!(String::from_utf8_lossy(&answer).contains("HTTP/1.1 400"));
}

/// 10.2: the webhook listener (the internet, through the tunnel) serves neither page; the
/// loopback metrics listener serves both.
#[tokio::test]
async fn metrics_and_healthz_only_on_the_loopback_listener() {
    let d = Daemon::start();
    let c = d.client();
    for path in ["/metrics", "/healthz"] {
        let r = c.request("GET", path, &[], vec![]).await;
        assert_eq!(r.status, 404, "{path} on the webhook listener: {}", r.text);
        let r = c.request("GET", path, &[("x-api-key", KEY)], vec![]).await;
        assert_eq!(r.status, 404, "{path} with the key: {}", r.text);
    }
    assert_ne!(d.metrics_addr, d.addr);
    assert!(d.metrics_addr.ip().is_loopback());
    let m = local_get(d.metrics_addr, "/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.text.contains("leap_edge_webhook_requests_total"),
        "{}",
        m.text
    );
    assert_eq!(local_get(d.metrics_addr, "/healthz").await.status, 200);
    // The webhook path is not on the metrics listener either.
    assert_eq!(local_get(d.metrics_addr, PATH).await.status, 404);
}

/// A certificate renewed with one that expires in three days (or a renewal that never
/// came): Leap's pushes would fail TLS from then on, and the daemon sees only silence. The
/// expiry is a metric, and /healthz fails a week ahead, after `reload` too.
#[tokio::test]
async fn a_certificate_close_to_expiry_makes_healthz_fail() {
    let d = Daemon::start();
    assert_eq!(local_get(d.metrics_addr, "/healthz").await.status, 200);
    let soon = chrono::Utc::now() + chrono::Duration::days(3);
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.not_after = rcgen::date_time_ymd(
        chrono::Datelike::year(&soon),
        chrono::Datelike::month(&soon) as u8,
        chrono::Datelike::day(&soon) as u8,
    );
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(d.dir.path().join("cert.pem"), cert.pem()).unwrap();
    common::write_private_key(&d.dir.path().join("key.pem"), &key.serialize_pem());
    let (code, out, err) = d.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let h = local_get(d.metrics_addr, "/healthz").await;
    assert_eq!(h.status, 503, "{}", h.text);
    assert!(
        h.text.contains("cert.pem expires at") && h.text.contains("leap-edge reload"),
        "{}",
        h.text
    );
    let m = local_get(d.metrics_addr, "/metrics").await;
    let line = m
        .text
        .lines()
        .find(|l| l.starts_with("leap_edge_tls_certificate_not_after_seconds "))
        .unwrap_or_else(|| panic!("{}", m.text));
    let t: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((t - soon.timestamp()).abs() < 86_400, "{line}");
}

#[test]
fn metrics_listen_must_be_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let key = "k".repeat(40);
    common::write_file(
        &path,
        &format!(
            "[server]\nlisten = \"127.0.0.1:8443\"\nmetrics_listen = \"0.0.0.0:9464\"\n[auth]\nkeys = [\"{key}\"]\n"
        ),
    );
    let (code, err) = config_check(&path);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("server.metrics_listen"), "{err}");
    assert!(err.contains("not a loopback address"), "{err}");
}

fn config_check(path: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(common::bin())
        .args(["--config", path.to_str().unwrap(), "config", "check"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

/// The leaf certificate a TLS server presents, trusting `trust` only.
async fn presented(
    addr: std::net::SocketAddr,
    trust: rustls::pki_types::CertificateDer<'static>,
) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .map_err(|e| e.to_string())?;
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    Ok(certs[0].to_vec())
}

/// 10.3: a renewed certificate goes into service on `reload`; a broken renewal is refused
/// and the certificate in service stays.
#[tokio::test]
async fn reload_puts_a_renewed_certificate_in_service() {
    let d = Daemon::start();
    let old = d.cert_der.clone();
    assert_eq!(presented(d.addr, old.clone()).await.unwrap(), old.to_vec());
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let new = ck.cert.der().clone();
    assert_ne!(new.to_vec(), old.to_vec());
    std::fs::write(d.dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
    common::write_private_key(
        &d.dir.path().join("key.pem"),
        &ck.signing_key.serialize_pem(),
    );
    // Not before reload: the files alone change nothing.
    assert!(presented(d.addr, new.clone()).await.is_err());
    let (code, out, err) = d.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("server.tls"), "{out}");
    assert_eq!(presented(d.addr, new.clone()).await.unwrap(), new.to_vec());
    assert!(presented(d.addr, old.clone()).await.is_err());
    assert!(d.log().contains("tls_fingerprint"), "{}", d.log());

    // A half-written renewal: refused, and the certificate in service stays.
    std::fs::write(
        d.dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\n",
    )
    .unwrap();
    let (code, out, err) = d.cli(&["reload"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("certificate in service is unchanged"), "{err}");
    assert_eq!(presented(d.addr, new.clone()).await.unwrap(), new.to_vec());
}

/// 10.6: short keys and keys with surrounding whitespace are refused with how to make a
/// good one; a key given with the wrong type is never echoed.
#[test]
fn key_rules_and_no_secret_in_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let write = |keys: &str| {
        common::write_file(
            &path,
            &format!("[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = {keys}\n"),
        )
    };
    write("[\"short-key-1234\"]");
    let (code, err) = config_check(&path);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("auth.keys[0] is shorter than 32"), "{err}");
    assert!(err.contains("openssl rand -hex 32"), "{err}");
    assert!(!err.contains("short-key-1234"), "{err}");
    let padded = format!(" {} ", "x".repeat(40));
    write(&format!("[\"{padded}\"]"));
    let (code, err) = config_check(&path);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("auth.keys[0] has spaces"), "{err}");
    write("\"a-secret-given-as-a-string-not-a-list\"");
    let (code, err) = config_check(&path);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("c.toml:4:"), "{err}");
    assert!(!err.contains("a-secret-given"), "the key was echoed: {err}");
}

/// 10.6: `reload` of a configuration with the key given as a string does not echo it
/// (the reload answer ends up in the journal under systemd).
#[tokio::test]
async fn reload_error_does_not_echo_the_key() {
    let d = Daemon::start();
    let cfg = std::fs::read_to_string(d.config_path()).unwrap();
    let broken = cfg.replace(
        &format!("keys = [\"{KEY}\", \"second-key-for-rotation-0123456789\"]"),
        "keys = \"typed-as-a-string-0123456789abcdef\"",
    );
    assert_ne!(broken, cfg);
    std::fs::write(d.config_path(), broken).unwrap();
    let (code, out, err) = d.cli(&["reload"]);
    assert_ne!(code, 0);
    assert!(
        !format!("{out}{err}").contains("typed-as-a-string"),
        "{out}{err}"
    );
    assert!(!d.log().contains("typed-as-a-string"));
}

/// 10.8: requests without a key cost one log line per interval, are all counted, and the
/// summary says how many were not logged.
#[tokio::test]
async fn unauthenticated_requests_are_logged_once_per_interval() {
    let mut d = Daemon::start();
    let c = d.client();
    for _ in 0..40 {
        let r = c
            .request(
                "POST",
                PATH,
                &[
                    ("x-api-key", "wrong-wrong-wrong"),
                    ("content-type", "application/json"),
                ],
                b"{}".to_vec(),
            )
            .await;
        assert_eq!(r.status, 401);
    }
    let m = local_get(d.metrics_addr, "/metrics").await.text;
    assert!(
        m.contains("leap_edge_webhook_requests_total{result=\"unauthorized\"} 40"),
        "{m}"
    );
    assert!(
        m.contains("leap_edge_unauthorized_log_suppressed_total 39"),
        "{m}"
    );
    assert!(d.terminate());
    let log = d.log();
    assert_eq!(
        log.matches("webhook rejected: missing or wrong credentials")
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("requests without a valid key in the last interval"),
        "{log}"
    );
    assert!(log.contains("rejected=40"), "{log}");
}

/// 10.8: a request with both Content-Length and Transfer-Encoding gets 400 and stores
/// nothing, in either header order, also after an ordinary request on the connection.
#[tokio::test]
async fn both_content_length_and_transfer_encoding_get_400() {
    let d = Daemon::start();
    let body = fixture("leap-sample-meter.json");
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    for (first, second) in [
        (
            format!("content-length: {}", body.len()),
            "transfer-encoding: chunked".to_string(),
        ),
        (
            "transfer-encoding: chunked".to_string(),
            format!("content-length: {}", body.len()),
        ),
    ] {
        let mut s = raw_tls(d.addr, d.cert_der.clone()).await;
        let head = format!(
            "POST {PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\n{first}\r\n{second}\r\n\r\n{chunked}"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("Transfer-Encoding"), "{answer}");
    }
    // Second request on a connection whose first was ordinary.
    let mut s = raw_tls(d.addr, d.cert_der.clone()).await;
    let ok = format!(
        "GET {PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{{}}\
         POST {PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n{chunked}",
        body.len()
    );
    s.write_all(ok.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    // The same after a request with no body at all (it once shifted the count).
    let mut s = raw_tls(d.addr, d.cert_der.clone()).await;
    let bodiless = format!(
        "GET {PATH} HTTP/1.1\r\nhost: x\r\n\r\n\
         POST {PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n{chunked}",
        body.len()
    );
    s.write_all(bodiless.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    assert_eq!(d.count("notifications"), 0);
}
