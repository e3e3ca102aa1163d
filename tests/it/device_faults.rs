//! The driver under faults, over real TCP: connection refused, a device that accepts but
//! never answers, a Modbus exception on write, a connection dropped mid-write, a write the
//! device acknowledges but does not keep (read-back mismatch), a device offline and back.

use crate::device_common;

use device_common::*;
use leap_edge::device::{Battery, DeviceError};
use leap_edge::sim::{Fault, Mode};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);

#[tokio::test]
async fn connection_refused_is_reported_and_does_not_block_open() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    // Lazy: opening a battery whose device is down succeeds.
    let mut bat = battery(addr);
    let e = bat.read().await.unwrap_err();
    assert!(matches!(e, DeviceError::Connect { .. }), "{e}");
    // The next call inside the backoff pause fails at once, without touching the network.
    let e2 = bat.set_power(5.0, 30).await.unwrap_err();
    assert!(e2.to_string().contains("waiting"), "{e2}");
    let st = bat.state().lock().unwrap().clone();
    assert!(!st.connected);
    assert_eq!(st.error_count, 2);
    assert!(st.last_error.is_some() && st.last_error_at.is_some());
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // A bare TCP server that accepts and holds connections without a byte in reply.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let mut bat =
        leap_edge::device::open("bess", &device_cfg("sunspec", addr, 300), &devices_dir()).unwrap();
    let t0 = Instant::now();
    let e = bat.read().await.unwrap_err();
    assert!(matches!(e, DeviceError::Timeout { ms: 300, .. }), "{e}");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(
        !bat.state().lock().unwrap().connected,
        "connection dropped after a timeout"
    );
    holder.abort();
}

#[tokio::test]
async fn silent_device_times_out_then_the_driver_reconnects() {
    let sim = start_sim().await;
    let mut bat = leap_edge::device::open(
        "bess",
        &device_cfg("sunspec", sim.local_addr(), 300),
        &devices_dir(),
    )
    .unwrap();
    bat.read().await.unwrap();
    sim.set_fault(Fault::Silent);
    let e = bat.read().await.unwrap_err();
    assert!(matches!(e, DeviceError::Timeout { .. }), "{e}");
    sim.set_fault(Fault::None);
    retry(LONG, async || bat.read().await).await.unwrap();
    let st = bat.state().lock().unwrap().clone();
    assert_eq!(
        st.connects, 2,
        "a fresh connection after the timeout: {st:?}"
    );
    assert!(st.connected);
    bat.set_power(3.0, 30).await.unwrap();
    assert_eq!(sim.point(124, "OutWRte"), Some(6.0));
}

#[tokio::test]
async fn modbus_exception_on_write_is_an_error_and_keeps_the_connection() {
    let sim = start_sim().await;
    let mut bat = battery(sim.local_addr());
    bat.read().await.unwrap();
    sim.set_fault(Fault::RejectWrites);
    let e = bat.set_power(10.0, 30).await.unwrap_err();
    match &e {
        DeviceError::Exception { code, .. } => assert!(code.starts_with("0x04"), "{e}"),
        other => panic!("expected an exception, got {other}"),
    }
    // Named as a technician reads it (the audit log's `refused` row): the point and the
    // value, not only raw words at an address.
    assert!(e.to_string().contains("write 124.OutWRte = 20"), "{e}");
    sim.set_fault(Fault::None);
    bat.set_power(10.0, 30).await.unwrap();
    assert_eq!(
        bat.state().lock().unwrap().connects,
        1,
        "an exception is an answer: no reconnect"
    );
    assert_eq!(sim.point(124, "StorCtl_Mod"), Some(3.0));
}

/// Control does not need the energy counters: a meter refusing them leaves the reading
/// whole (the interval falls back to its estimate) instead of failing it, which would hand
/// the battery back mid-dispatch.
#[tokio::test]
async fn refused_energy_counters_do_not_fail_the_reading() {
    let sim = start_sim().await;
    let mut bat = battery(sim.local_addr());
    let t = bat.read().await.unwrap();
    assert!(t.grid_import_wh.is_some(), "{t:?}");
    sim.set_fault(Fault::RejectCounterReads);
    let t = bat.read().await.expect("a reading without counters");
    assert!(t.grid_kw.is_some() && t.grid_import_wh.is_none(), "{t:?}");
}

#[tokio::test]
async fn disconnect_mid_write_then_the_command_goes_through() {
    let sim = start_sim().await;
    let mut bat = battery(sim.local_addr());
    bat.read().await.unwrap();
    sim.set_fault(Fault::DropOnWrite);
    let e = bat.set_power(10.0, 30).await.unwrap_err();
    assert!(
        matches!(e, DeviceError::Io { .. } | DeviceError::Timeout { .. }),
        "{e}"
    );
    assert_eq!(
        sim.point(124, "StorCtl_Mod"),
        Some(0.0),
        "nothing was applied"
    );
    sim.set_fault(Fault::None);
    retry(LONG, async || bat.set_power(10.0, 30).await)
        .await
        .unwrap();
    assert_eq!(sim.point(124, "StorCtl_Mod"), Some(3.0));
    assert!(bat.state().lock().unwrap().connects >= 2);
}

#[tokio::test]
async fn a_write_the_device_does_not_keep_is_a_read_back_error() {
    let sim = start_sim().await;
    let mut bat = battery(sim.local_addr());
    sim.set_fault(Fault::IgnoreWrites);
    let e = bat.set_power(10.0, 30).await.unwrap_err();
    match &e {
        DeviceError::ReadBack {
            point, wrote, read, ..
        } => {
            // The power goes first: a refused one leaves the reversion timer alone.
            assert_eq!(point, "124.OutWRte");
            assert_eq!((wrote.as_str(), read.as_str()), ("20", "100"));
        }
        other => panic!("expected a read-back error, got {other}"),
    }
    assert_eq!(sim.snapshot().mode, Mode::Normal);
}

#[tokio::test]
async fn device_offline_then_back_takes_the_command_on_return() {
    let sim = start_sim().await;
    let mut bat = battery(sim.local_addr());
    bat.set_power(8.0, 30).await.unwrap();
    sim.set_fault(Fault::Offline);
    let e = bat.set_power(9.0, 30).await.unwrap_err();
    assert!(
        !matches!(e, DeviceError::ReadBack { .. } | DeviceError::Range { .. }),
        "{e}"
    );
    let errors = bat.state().lock().unwrap().error_count;
    assert!(errors >= 1);
    sim.set_fault(Fault::None);
    retry(LONG, async || bat.set_power(9.0, 30).await)
        .await
        .unwrap();
    assert_eq!(sim.point(124, "OutWRte"), Some(18.0));
    assert!(eventually(LONG, || (sim.snapshot().battery_kw - 9.0).abs() < 0.01).await);
}

#[tokio::test]
async fn device_state_tells_a_technician_what_is_wrong() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let mut bat = battery(addr);
    let _ = bat.read().await;
    let st = bat.state().lock().unwrap().clone();
    let text = st.to_string();
    assert!(
        text.contains("NOT connected") && text.contains("cannot connect"),
        "{text}"
    );
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["connected"], false);
    assert_eq!(json["error_count"], 1);
    assert!(json["last_error_at"].is_string());
}

/// SPEC §2.13: a device may re-range a scale factor live. Each value is read with its scale
/// factor and each setpoint written after reading it again, so neither is 10× off until the
/// next rebinding (a minute).
#[tokio::test]
async fn a_scale_factor_changed_live_is_followed_at_once() {
    let sim = start_sim().await;
    sim.set_load(Some(20.0));
    let mut bat = battery(sim.local_addr());
    bat.set_power(10.0, 30).await.unwrap();
    let before = bat.read().await.unwrap();
    for (model, sf) in [(203, "W_SF"), (103, "W_SF")] {
        let raw = sim.point(model, sf).unwrap() as i16;
        sim.set_scale_factor(model, sf, raw + 1);
    }
    let after = bat.read().await.unwrap();
    let (g0, g1) = (before.grid_kw.unwrap(), after.grid_kw.unwrap());
    let (b0, b1) = (before.battery_kw.unwrap(), after.battery_kw.unwrap());
    assert!((g0 - g1).abs() < 1.0, "grid {g0} kW then {g1} kW");
    assert!((b0 - b1).abs() < 1.0, "battery {b0} kW then {b1} kW");
    // 124's setpoints are percent under InOutWRte_SF (-2 at start): 12 kW of 50 is 24 %.
    sim.set_scale_factor(124, "InOutWRte_SF", -1);
    bat.set_power(12.0, 30).await.unwrap();
    assert_eq!(sim.point(124, "OutWRte"), Some(24.0));
}

/// A rebind that finds the bound control method unusable (124's rate scale factor reads
/// "not implemented") binds the profile's next one (704). 124's remote mode is left
/// before 704 is commanded, so two methods never hold the battery at once, and a release
/// then hands back through 704. Before, 124 kept forcing its window until its own
/// reversion timeout while `release` wrote only 704's enable.
#[tokio::test]
async fn a_control_method_replaced_at_a_rebind_is_left_first() {
    let sim = start_sim().await;
    let mut bat = battery(sim.local_addr());
    bat.set_power(10.0, 30).await.unwrap();
    assert_eq!(sim.point(124, "StorCtl_Mod"), Some(3.0));
    sim.set_scale_factor(124, "InOutWRte_SF", i16::MIN);
    // A dropped connection makes the next call bind again.
    sim.set_fault(Fault::Offline);
    let _ = bat.read().await;
    sim.set_fault(Fault::None);
    retry(LONG, async || bat.set_power(8.0, 30).await)
        .await
        .unwrap();
    assert_eq!(sim.point(704, "WSetEna"), Some(1.0), "704 bound");
    assert_eq!(sim.point(124, "StorCtl_Mod"), Some(0.0), "124 left");
    bat.release().await.unwrap();
    assert_eq!(sim.point(704, "WSetEna"), Some(0.0));
}
