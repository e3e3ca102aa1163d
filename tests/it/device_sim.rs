//! The Modbus driver against the site simulator over real TCP on 127.0.0.1: discovery,
//! commands visible in the device's registers, release, reversion, clamping.

use crate::device_common;

use device_common::*;
use leap_edge::device::{Battery, DeviceError};
use leap_edge::sim::{Mode, SimOptions};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);

#[tokio::test]
async fn discovers_the_sunspec_map_and_reads_the_site() {
    let sim = start_sim().await;
    let mut bat = battery(sim.local_addr());
    assert!(
        eventually(LONG, || sim.snapshot().battery_kw > 29.0).await,
        "sim self-consumption"
    );
    let t = bat.read().await.unwrap();
    assert!(
        (t.soc_pct.unwrap() - sim.snapshot().soc_pct).abs() < 0.2,
        "{t:?}"
    );
    assert!((t.battery_kw.unwrap() - 30.0).abs() < 0.1, "{t:?}");
    assert!(
        t.grid_kw.unwrap().abs() < 0.1,
        "normal mode covers the load: {t:?}"
    );
    assert_eq!(t.capacity_kwh, Some(100.0));
    assert_eq!(t.max_discharge_kw, Some(50.0));
    let st = bat.state().lock().unwrap().clone();
    assert!(st.connected);
    assert_eq!(st.sunspec_base, Some(40000));
    assert_eq!(st.models, vec![1, 103, 124, 704, 713, 203]);
    assert!(st.control.unwrap().starts_with("SunSpec 124"));
    assert!(
        st.points.contains(&"soc=713.SoC".to_string()),
        "{:?}",
        st.points
    );
    assert!(
        st.points.contains(&"grid_power=203.W".to_string()),
        "{:?}",
        st.points
    );
}

#[tokio::test]
async fn set_power_lands_in_model_124_and_release_hands_back() {
    let sim = start_sim().await;
    let mut bat = battery(sim.local_addr());
    bat.set_power(10.0, 30).await.unwrap();
    assert_eq!(sim.point(124, "StorCtl_Mod"), Some(3.0));
    assert_eq!(sim.point(124, "OutWRte"), Some(20.0)); // 10 kW of 50 kW
    assert_eq!(sim.point(124, "InWRte"), Some(-20.0));
    assert_eq!(sim.point(124, "InOutWRte_RvrtTms"), Some(30.0));
    assert!(eventually(LONG, || (sim.snapshot().battery_kw - 10.0).abs() < 0.01).await);
    let s = sim.snapshot();
    assert_eq!(s.mode, Mode::Remote124);
    assert!(
        (s.grid_kw - 20.0).abs() < 0.01,
        "grid = load - battery: {s:?}"
    );

    bat.set_power(-5.0, 30).await.unwrap();
    assert_eq!(sim.point(124, "OutWRte"), Some(-10.0));
    assert_eq!(sim.point(124, "InWRte"), Some(10.0));
    assert!(eventually(LONG, || (sim.snapshot().battery_kw + 5.0).abs() < 0.01).await);
    let t = bat.read().await.unwrap();
    assert!(
        (t.battery_kw.unwrap() + 5.0).abs() < 0.1 && (t.grid_kw.unwrap() - 35.0).abs() < 0.1,
        "{t:?}"
    );

    bat.release().await.unwrap();
    assert_eq!(sim.point(124, "StorCtl_Mod"), Some(0.0));
    assert!(eventually(LONG, || sim.snapshot().mode == Mode::Normal).await);
    assert!(eventually(LONG, || (sim.snapshot().battery_kw - 30.0).abs() < 0.01).await);
}

#[tokio::test]
async fn device_reverts_when_the_command_is_not_refreshed() {
    let sim = start_sim().await;
    let mut bat = battery(sim.local_addr());
    // Refreshed at a fraction of its 4 s timeout: stays in remote control.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        bat.set_power(12.0, 4).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(sim.snapshot().mode, Mode::Remote124);
    }
    assert_eq!(sim.snapshot().reversions, 0);
    // Not refreshed: the device goes back by itself, no sooner than its timeout.
    let last = Instant::now();
    bat.set_power(12.0, 2).await.unwrap();
    assert!(
        eventually(LONG, || sim.snapshot().mode == Mode::Normal).await,
        "never reverted"
    );
    assert!(
        last.elapsed() >= Duration::from_secs(2),
        "reverted early: {:?}",
        last.elapsed()
    );
    assert_eq!(sim.snapshot().reversions, 1);
    assert_eq!(sim.point(124, "StorCtl_Mod"), Some(0.0));
}

#[tokio::test]
async fn out_of_range_setpoints_are_clamped_never_wrapped() {
    let sim = start_sim().await;
    let mut bat = battery(sim.local_addr());
    bat.set_power(1000.0, 30).await.unwrap();
    assert_eq!(sim.point(124, "OutWRte"), Some(100.0));
    assert_eq!(sim.point(124, "InWRte"), Some(-100.0));
    bat.set_power(-1e9, 30).await.unwrap();
    assert_eq!(sim.point(124, "OutWRte"), Some(-100.0));
    assert_eq!(sim.point(124, "InWRte"), Some(100.0));
    // A reversion time beyond the u16 register is clamped to its maximum, not wrapped.
    bat.set_power(1.0, 70_000).await.unwrap();
    assert_eq!(sim.point(124, "InOutWRte_RvrtTms"), Some(65535.0));
    let writes = sim.snapshot().writes;
    for bad in [f64::NAN, f64::INFINITY] {
        let e = bat.set_power(bad, 30).await.unwrap_err();
        assert!(matches!(e, DeviceError::Range { .. }), "{e}");
    }
    assert_eq!(
        sim.snapshot().writes,
        writes,
        "nothing written for a non-finite setpoint"
    );
}

#[tokio::test]
async fn falls_back_to_model_704_when_124_is_absent() {
    let opts = SimOptions {
        model_124: false,
        ..SimOptions::default()
    };
    let sim = start_sim_with(sim_cfg(), opts).await;
    let mut bat = battery(sim.local_addr());
    bat.set_power(7.5, 3).await.unwrap();
    assert!(
        bat.state()
            .lock()
            .unwrap()
            .control
            .clone()
            .unwrap()
            .starts_with("SunSpec 704")
    );
    assert_eq!(sim.point(704, "WSetEna"), Some(1.0));
    assert_eq!(sim.point(704, "WSet"), Some(7500.0));
    assert_eq!(sim.point(704, "WSetRvrtTms"), Some(3.0));
    assert!(eventually(LONG, || (sim.snapshot().battery_kw - 7.5).abs() < 0.01).await);
    assert_eq!(sim.snapshot().mode, Mode::Remote704);
    bat.set_power(-20.0, 30).await.unwrap();
    assert_eq!(sim.point(704, "WSet"), Some(-20000.0));
    bat.release().await.unwrap();
    assert_eq!(sim.point(704, "WSetEna"), Some(0.0));
    assert!(eventually(LONG, || sim.snapshot().mode == Mode::Normal).await);
}

#[tokio::test]
async fn soc_limits_hold_in_the_simulator() {
    let sim = start_sim().await;
    sim.set_soc(0.0);
    let mut bat = battery(sim.local_addr());
    bat.set_power(20.0, 30).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = sim.snapshot();
    assert_eq!(
        s.battery_kw, 0.0,
        "an empty battery cannot discharge: {s:?}"
    );
    assert_eq!(s.grid_kw, 30.0);
}

#[tokio::test]
async fn probe_reports_identity_models_and_points() {
    let sim = start_sim().await;
    let addr = sim.local_addr().to_string();
    let r = leap_edge::device::probe(&addr, 1, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(r.sunspec_base, 40000);
    let ids: Vec<u16> = r.models.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![1, 103, 124, 704, 713, 203]);
    let id = r.identity.clone().unwrap();
    assert_eq!(
        (id.manufacturer.as_str(), id.serial.as_str()),
        ("leap-edge", "SIM-0001")
    );
    assert!(r.control.as_deref().unwrap().starts_with("SunSpec 124"));
    let text = r.to_string();
    assert!(
        text.contains("storage control") && text.contains("SIM-0001"),
        "{text}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["identity"]["model"], "site-simulator");
}

#[tokio::test]
async fn victron_profile_drives_the_simulators_victron_face() {
    let opts = SimOptions {
        victron: true,
        ..SimOptions::default()
    };
    let sim = start_sim_with(sim_cfg(), opts).await;
    let cfg = device_cfg("victron-gx-ess", sim.local_addr(), 1000);
    let mut bat = leap_edge::device::open("gx", &cfg, &devices_dir()).unwrap();
    assert!(eventually(LONG, || (sim.snapshot().battery_kw - 30.0).abs() < 0.01).await);
    let t = bat.read().await.unwrap();
    assert!(
        (t.battery_kw.unwrap() - 30.0).abs() < 0.01 && t.grid_kw.unwrap().abs() < 0.01,
        "{t:?}"
    );
    // The driver turns a battery target into a grid setpoint: 30 kW load, 12 kW battery.
    bat.set_power(12.0, 60).await.unwrap();
    assert!(
        eventually(LONG, || (sim.snapshot().battery_kw - 12.0).abs() < 0.01).await,
        "{:?}",
        sim.snapshot()
    );
    assert_eq!(sim.snapshot().mode, Mode::VictronSetpoint);
    assert!((sim.snapshot().grid_kw - 18.0).abs() < 0.01);
    // From the control loop, the grid target comes from the reading the loop checked, not
    // from another one taken at the write: that reading said 8 kW grid with 12 kW from
    // the battery (20 kW net), so the GX is told to hold the grid at 8 kW, whatever the
    // site reads now (30 kW net: the battery then gives 22 kW).
    let checked = leap_edge::device::Telemetry {
        grid_kw: Some(8.0),
        battery_kw: Some(12.0),
        ..t
    };
    bat.set_power_on(12.0, 60, &checked).await.unwrap();
    assert!(
        eventually(LONG, || (sim.snapshot().grid_kw - 8.0).abs() < 0.01).await,
        "{:?}",
        sim.snapshot()
    );
    bat.release().await.unwrap();
    assert!(eventually(LONG, || sim.snapshot().mode == Mode::Normal).await);
}

#[tokio::test]
async fn base_address_and_unit_id_follow_the_configuration() {
    let cfg = leap_edge::config::SimConfig {
        base_address: 0,
        unit_id: 7,
        ..sim_cfg()
    };
    let sim = start_sim_with(cfg, SimOptions::default()).await;
    // Wrong unit: the simulator answers with an exception, discovery finds nothing.
    let mut wrong = battery(sim.local_addr());
    let e = wrong.read().await.unwrap_err().to_string();
    // What to check, not only what is missing.
    assert!(e.contains("check the unit id"), "{e}");
    let mut dcfg = device_cfg("sunspec", sim.local_addr(), 1000);
    dcfg.unit_id = 7;
    let mut bat = leap_edge::device::open("bess", &dcfg, &devices_dir()).unwrap();
    bat.read().await.unwrap();
    assert_eq!(bat.state().lock().unwrap().sunspec_base, Some(0));
    // A configured base is the only one tried.
    dcfg.base_address = Some(40000);
    let mut fixed = leap_edge::device::open("bess", &dcfg, &devices_dir()).unwrap();
    let e = fixed.read().await.unwrap_err();
    assert!(e.to_string().contains("no SunSpec marker"), "{e}");
}

/// A fixed-address profile whose setpoint register is unsigned: a negative setpoint is
/// refused before anything is written (the OpenEMS lesson in ARCHITECTURE).
#[tokio::test]
async fn a_negative_never_reaches_an_unsigned_register() {
    let sim = start_sim().await;
    // Sim layout at 40000: SunS(2) 1(68) 103(52) 124 at 40122 → WChaMax 40124,
    // StorCtl_Mod 40127; 704(67) 713 at 40215 → SoC 40219.
    assert_eq!(sim.registers(40122, 1), Some(vec![124]));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("unsigned.toml"),
        r#"# test profile
name = "unsigned setpoint"
addressing = "fixed"
[read]
soc = [{ address = 40219, type = "u16", scale = 0.1 }]
[[control]]
label = "u16 watts"
leave = [{ address = 40127, type = "u16", value = 0 }]
power = { kind = "watts", setpoint = { address = 40124, type = "u16", scale = 1 } }
"#,
    )
    .unwrap();
    let cfg = device_cfg("unsigned", sim.local_addr(), 1000);
    let mut bat = leap_edge::device::open("u", &cfg, dir.path()).unwrap();
    let soc = bat.read().await.unwrap().soc_pct.unwrap();
    assert!((soc - 80.0).abs() < 0.5, "{soc}");
    let before = (sim.snapshot().writes, sim.point(124, "WChaMax"));
    let e = bat.set_power(-5.0, 30).await.unwrap_err();
    assert!(matches!(e, DeviceError::Range { .. }), "{e}");
    assert_eq!(
        (sim.snapshot().writes, sim.point(124, "WChaMax")),
        before,
        "nothing written"
    );
    bat.set_power(5.0, 30).await.unwrap();
    assert_eq!(
        sim.registers(40124, 1),
        Some(vec![5000]),
        "raw W, as the profile says"
    );
}

/// Issue 16 bug: the simulator's physics follows 704 `WSetPct` (WSetMod 0, a percentage
/// of its maximum power), so the point must be in its map and writable over Modbus TCP.
/// Offsets from the SunSpec model 704 JSON, counted from the model's ID register.
#[tokio::test]
async fn model_704_percent_setpoint_is_honoured_over_modbus() {
    use tokio_modbus::client::{Reader, Writer, tcp};
    const WSET_ENA: u16 = 22;
    const WSET_MOD: u16 = 23;
    const WSET_PCT: u16 = 28;
    const WSET_PCT_SF: u16 = 56;
    let opts = SimOptions {
        model_124: false,
        ..SimOptions::default()
    };
    let sim = start_sim_with(sim_cfg(), opts).await;
    // Walk the model chain after the `SunS` marker to model 704's ID register.
    let mut model = 40002;
    while sim.registers(model, 1).unwrap()[0] != 704 {
        let header = sim.registers(model, 2).unwrap();
        assert_ne!(header[0], 0xFFFF, "no model 704 in the simulator's map");
        model += 2 + header[1];
    }
    let mut ctx = tcp::connect_slave(sim.local_addr(), tokio_modbus::Slave(1))
        .await
        .unwrap();
    let sf = ctx
        .read_holding_registers(model + WSET_PCT_SF, 1)
        .await
        .unwrap()
        .unwrap()[0] as i16;
    // 40 % of the simulator's 50 kW; self-consumption alone would cover the 30 kW load.
    let raw = (40.0 / 10f64.powi(sf.into())).round() as i16 as u16;
    ctx.write_multiple_registers(model + WSET_PCT, &[raw])
        .await
        .unwrap()
        .expect("WSetPct is writable");
    ctx.write_single_register(model + WSET_MOD, 0)
        .await
        .unwrap()
        .unwrap();
    ctx.write_single_register(model + WSET_ENA, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sim.point(704, "WSetPct"), Some(40.0));
    assert!(
        eventually(LONG, || (sim.snapshot().battery_kw - 20.0).abs() < 0.01).await,
        "battery at {} kW, not 40 % of 50 kW",
        sim.snapshot().battery_kw
    );
    assert_eq!(sim.snapshot().mode, Mode::Remote704);
    // A real inverter refuses a percentage beyond ±100.
    let too_much = (150.0 / 10f64.powi(sf.into())).round() as i16 as u16;
    let refused = ctx
        .write_multiple_registers(model + WSET_PCT, &[too_much])
        .await
        .unwrap();
    assert!(refused.is_err(), "150 % accepted");
    assert_eq!(sim.point(704, "WSetPct"), Some(40.0));
}
