//! Every shipped profile in `devices/` parses strictly and passes the semantic check, and
//! starts with a header comment naming its source (ARCHITECTURE: "Layout").

use leap_edge::device::profile;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("devices")
}

#[test]
fn every_shipped_profile_is_valid() {
    let n = profile::check_dir(&dir()).unwrap_or_else(|errs| {
        panic!(
            "{}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(
        n >= 3,
        "expected sunspec, victron-gx-ess and generic, saw {n} file(s)"
    );
}

#[test]
fn every_shipped_profile_names_its_source() {
    let mut seen = 0;
    for e in std::fs::read_dir(dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with('#'),
            "{} must start with a header comment",
            p.display()
        );
        let header: String = text.lines().take_while(|l| l.starts_with('#')).collect();
        assert!(
            header.contains("Source"),
            "{}: header names no source",
            p.display()
        );
        assert!(
            header.contains("hecked against"),
            "{}: header says nothing about checks",
            p.display()
        );
        seen += 1;
    }
    assert!(seen > 0, "no profile files seen");
}

#[test]
fn a_broken_profile_is_reported_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("ok.toml"),
        std::fs::read_to_string(dir().join("sunspec.toml")).unwrap(),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("bad.toml"),
        "name = \"x\"\naddressing = \"fixed\"\n[read]\nsoc = [{ address = 1, type = \"u17\" }]\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "not a profile").unwrap();
    let errs = profile::check_dir(tmp.path()).unwrap_err();
    assert_eq!(errs.len(), 1);
    let msg = errs[0].to_string();
    assert!(msg.contains("bad.toml:4:"), "{msg}");
    assert!(profile::check_dir(&tmp.path().join("missing")).is_err());
    let empty = tempfile::tempdir().unwrap();
    assert!(
        profile::check_dir(empty.path()).is_err(),
        "a folder without profiles is an error"
    );
}

#[test]
fn the_generic_template_is_never_driven() {
    let cfg: leap_edge::config::DeviceConfig =
        toml::from_str("profile = \"generic\"\nhost = \"127.0.0.1\"").unwrap();
    let e = leap_edge::device::open("bess", &cfg, &dir())
        .err()
        .expect("template refused");
    assert!(e.to_string().contains("template"), "{e}");
}

/// Issue 16 bug: the controller writes the power setpoint and the reversion timeout, so a
/// profile that names read-only points for them is refused by `config check`, naming the
/// file and the point (it used to pass: they were checked as reads).
#[test]
fn a_read_only_setpoint_is_refused_by_config_check() {
    let tmp = tempfile::tempdir().unwrap();
    let devices = tmp.path().join("devices");
    std::fs::create_dir(&devices).unwrap();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/profiles/readonly-setpoint.toml");
    std::fs::copy(&fixture, devices.join("readonly.toml")).unwrap();
    let cfg = format!(
        "devices_dir = \"devices\"\n[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nkeys = [\"{}\"]\n\
         [storage]\npath = \"db\"\n[admin]\nsocket = \"admin.sock\"\n\
         [[meters]]\nid = \"m1\"\ndevice = \"bat\"\n[devices.bat]\nprofile = \"readonly\"\nhost = \"127.0.0.1\"\n",
        crate::common::KEY
    );
    std::fs::write(tmp.path().join("c.toml"), cfg).unwrap();
    let out = std::process::Command::new(crate::common::bin())
        .args(["--config", "c.toml", "config", "check"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("readonly.toml"),
        "names the profile file: {err}"
    );
    // The daemon refuses to start on it with the same exit code, which systemd does not
    // restart (it exited 1 and was restarted every 5 s, forever).
    let out = std::process::Command::new(crate::common::bin())
        .args(["--config", "c.toml", "run"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let run_err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{run_err}");
    assert!(run_err.contains("readonly.toml"), "{run_err}");
    assert!(
        err.contains("power.setpoint: SunSpec point 704.WSetRvrtRem is read-only"),
        "{err}"
    );
    assert!(
        err.contains("reversion: SunSpec point 704.WSet_SF is read-only"),
        "{err}"
    );
}
