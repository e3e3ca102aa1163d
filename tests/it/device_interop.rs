//! Interoperability with Modbus implementations leap-edge did not write, so the driver and
//! the simulator are not only tested against each other:
//! - Debian's `mbpoll` reads and commands the simulator;
//! - a pymodbus server presenting a SunSpec map (at 50000) and Victron GX registers is
//!   discovered, read and commanded by the driver.
//!
//! Needs `mbpoll` (apt-get install -y mbpoll) and `pymodbus` for python3
//! (pip install pymodbus), so the tests are `#[ignore]`d: `.ci/run` installs both and runs
//! them with `--ignored`, where a missing tool fails the test (a skip is never a pass).

use crate::device_common;

use device_common::*;
use leap_edge::device::Battery;
use leap_edge::sim::Mode;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_modbus::Slave;
use tokio_modbus::client::{Reader, tcp};

const LONG: Duration = Duration::from_secs(20);

fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// mbpoll with 0-based addresses (`-0`), holding registers, one poll; `extra` = options
/// (`-c N`), `write` = values to write (they follow the host on mbpoll's command line).
fn mbpoll(addr: SocketAddr, unit: u8, reg: u16, extra: &[&str], write: &[&str]) -> String {
    let port = addr.port().to_string();
    let unit = unit.to_string();
    let reg = reg.to_string();
    let mut args = vec![
        "-m", "tcp", "-p", &port, "-a", &unit, "-0", "-t", "4", "-r", &reg, "-1",
    ];
    args.extend_from_slice(extra);
    let out = Command::new("mbpoll")
        .args(&args)
        .arg(addr.ip().to_string())
        .args(write)
        .output()
        .expect("run mbpoll");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "mbpoll {args:?} failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `[40000]: \t21365` lines → values (signed form when mbpoll shows one).
fn values(text: &str) -> Vec<i64> {
    text.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix('[')
                .and_then(|r| r.split_once("]:"))
                .map(|x| x.1.trim().to_string())
        })
        .map(|v| match v.split_once('(') {
            Some((_, signed)) => signed.trim_end_matches(')').parse().unwrap(),
            None => v.parse().unwrap(),
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs mbpoll (apt-get install -y mbpoll); .ci/run runs it"]
async fn mbpoll_reads_and_commands_the_simulator() {
    assert!(
        have("mbpoll", &["-V"]),
        "mbpoll not installed (apt-get install -y mbpoll)"
    );
    let sim = start_sim().await;
    let addr = sim.local_addr();
    let r = leap_edge::device::probe(&addr.to_string(), 1, Duration::from_secs(2))
        .await
        .unwrap();
    let model = |id: u16| r.models.iter().find(|m| m.id == id).unwrap().address;
    let out = tokio::task::spawn_blocking(move || mbpoll(addr, 1, 40000, &["-c", "4"], &[]))
        .await
        .unwrap();
    assert_eq!(values(&out), vec![0x5375, 0x6E53, 1, 66], "{out}");
    let soc_addr = model(713) + 4;
    let out = tokio::task::spawn_blocking(move || mbpoll(addr, 1, soc_addr, &["-c", "1"], &[]))
        .await
        .unwrap();
    let soc = values(&out)[0] as f64 / 10.0;
    assert!(
        (soc - sim.snapshot().soc_pct).abs() < 0.2,
        "mbpoll SoC {soc} vs sim {:?}",
        sim.snapshot()
    );
    // Command through mbpoll: 20 % (SF -2) window, then StorCtl_Mod = 3.
    let m124 = model(124);
    tokio::task::spawn_blocking(move || {
        mbpoll(addr, 1, m124 + 15, &[], &["30"]);
        mbpoll(addr, 1, m124 + 12, &[], &["2000", "63536"]); // OutWRte 20 %, InWRte -20 %
        mbpoll(addr, 1, m124 + 5, &[], &["3"]);
    })
    .await
    .unwrap();
    assert!(
        eventually(LONG, || (sim.snapshot().battery_kw - 10.0).abs() < 0.01).await,
        "{:?}",
        sim.snapshot()
    );
    assert_eq!(sim.snapshot().mode, Mode::Remote124);
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_pymodbus() -> (Child, SocketAddr) {
    assert!(
        have("python3", &["-c", "import pymodbus"]),
        "python3 module pymodbus not installed (pip install 'pymodbus>=3.6,<4')"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/pymodbus_site.py"
    );
    let child = Command::new("python3")
        .args([script, &port.to_string(), "50000"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start python3");
    let child = Child(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let end = Instant::now() + LONG;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < end,
            "pymodbus server did not start on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, addr)
}

#[tokio::test]
#[ignore = "needs python3 with pymodbus; .ci/run installs it and runs this"]
async fn driver_discovers_and_commands_a_pymodbus_sunspec_device() {
    let (_child, addr) = start_pymodbus().await;
    let mut bat =
        leap_edge::device::open("pym", &device_cfg("sunspec", addr, 2000), &devices_dir()).unwrap();
    let t = bat.read().await.unwrap();
    assert_eq!(t.soc_pct, Some(55.5), "713.SoC with Pct_SF -1: {t:?}");
    assert_eq!(t.battery_kw, Some(2.0), "701.W: {t:?}");
    assert_eq!(t.grid_kw, Some(-1.234), "203.W: {t:?}");
    assert_eq!(t.capacity_kwh, Some(10.0));
    let st = bat.state().lock().unwrap().clone();
    assert_eq!(
        st.sunspec_base,
        Some(50000),
        "found after trying 40000 and 0"
    );
    assert_eq!(st.models, vec![1, 124, 713, 701, 203]);

    bat.set_power(2.5, 20).await.unwrap();
    // Check with a client that is not ours.
    let mut ctx = tcp::connect_slave(addr, Slave(1)).await.unwrap();
    let m124 = 50000 + 2 + 68;
    let w = ctx.read_holding_registers(m124, 16).await.unwrap().unwrap();
    assert_eq!(w[5], 3, "StorCtl_Mod");
    assert_eq!(
        (w[12] as i16, w[13] as i16),
        (50, -50),
        "OutWRte/InWRte: 2.5 kW of 5 kW"
    );
    assert_eq!(w[15], 20, "InOutWRte_RvrtTms");
    bat.release().await.unwrap();
    let w = ctx
        .read_holding_registers(m124 + 5, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w[0], 0);

    let r = leap_edge::device::probe(&addr.to_string(), 1, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(r.identity.unwrap().manufacturer, "pymodbus-interop");
}

#[tokio::test]
#[ignore = "needs python3 with pymodbus; .ci/run installs it and runs this"]
async fn driver_commands_victron_registers_on_a_pymodbus_server() {
    let (_child, addr) = start_pymodbus().await;
    let mut bat = leap_edge::device::open(
        "gx",
        &device_cfg("victron-gx-ess", addr, 2000),
        &devices_dir(),
    )
    .unwrap();
    let t = bat.read().await.unwrap();
    assert_eq!(t.soc_pct, Some(64.0));
    assert_eq!(
        t.battery_kw,
        Some(3.0),
        "842 = -3000 W (charging positive in Victron's sign)"
    );
    assert_eq!(t.grid_kw, Some(1.3), "820 + 821 + 822");
    // Grid setpoint = grid + battery − target = 1300 + 3000 − 5000.
    bat.set_power(5.0, 60).await.unwrap();
    let mut ctx = tcp::connect_slave(addr, Slave(100)).await.unwrap();
    let w = ctx.read_holding_registers(2700, 1).await.unwrap().unwrap();
    assert_eq!(w[0] as i16, -700);
    bat.release().await.unwrap();
    let w = ctx.read_holding_registers(2700, 1).await.unwrap().unwrap();
    assert_eq!(w[0], 0);
}
