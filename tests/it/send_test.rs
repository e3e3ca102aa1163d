//! `send-test` over TLS with the kind of certificate a site really has: issued by a CA for
//! the site's public name, not for `localhost`. The CLI trusts exactly the certificate the
//! configuration names, and says what to do when the daemon serves another one.

use crate::common;

use common::*;

const METER: &str = "dd21c76c-7126-4ef7-b0a6-f190fad300b2";

fn with_meter() -> String {
    format!(
        "[[meters]]\nid = \"{METER}\"\ndevice = \"bat\"\n[devices.bat]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nport = 9\ntimeout_ms = 200\n"
    )
}

/// A CA and a leaf for `edge.example.com` signed by it, written as the daemon's
/// `cert.pem` (leaf, then the CA: the chain a site installs) and `key.pem`.
fn write_site_chain(dir: &std::path::Path) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["edge.example.com".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem() + &ca.pem()).unwrap();
    write_private_key(&dir.join("key.pem"), &key.serialize_pem());
}

fn send_test(d: &Daemon) -> (i32, String, String) {
    d.cli(&["send-test", "--in", "1h", "--duration", "5m", "--json"])
}

#[tokio::test]
async fn send_test_trusts_the_configured_certificate_whatever_its_name() {
    let d = Daemon::start_with(&with_meter());
    let (code, out, err) = send_test(&d);
    assert_eq!(code, 0, "self-signed localhost certificate: {out} {err}");
    // The default policy: the technician is told the battery will not move.
    assert!(
        err.contains("integration_test = \"dry-run\" makes this test a dry run"),
        "{err}"
    );

    // The site's real certificate replaces the file; the daemon still serves the old one.
    write_site_chain(d.dir.path());
    let (code, out, err) = send_test(&d);
    assert_eq!(code, 1, "{out} {err}");
    assert!(
        err.contains("serves a different certificate") && err.contains("leap-edge reload"),
        "{err}"
    );

    let (code, out, err) = d.cli(&["reload"]);
    assert_eq!(code, 0, "{out} {err}");
    let (code, out, err) = send_test(&d);
    assert_eq!(
        code, 0,
        "CA-signed edge.example.com certificate: {out} {err}"
    );
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["http_status"], 200, "{answer}");
    let event = answer["meter_event_id"].as_str().unwrap();
    let stored = d.events_json();
    assert!(
        stored.to_string().contains(event),
        "{event} not stored: {stored}"
    );
}
