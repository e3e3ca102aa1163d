//! The simulator's Victron GX face (optional): the com.victronenergy.system registers on
//! unit id 100 that `devices/victron-gx-ess.toml` reads (820-822 grid per phase, 842
//! battery power with charging positive, 843 SoC) and the ESS mode-2 grid setpoint 2700
//! (int16 W, import positive). Like a GX in ESS mode 2, the battery then works to hold the
//! grid at the setpoint; 0 W is plain self-consumption. There is no reversion: the
//! setpoint stays until written again, as on the real device.

use super::physics::Physics;

pub(crate) const UNIT: u8 = 100;
pub(crate) const SETPOINT: u16 = 2700;
const SIZE: usize = 2800;

pub(crate) struct VictronImage {
    regs: Vec<u16>,
}

impl Default for VictronImage {
    fn default() -> Self {
        VictronImage {
            regs: vec![0; SIZE],
        }
    }
}

impl VictronImage {
    pub(crate) fn read(&self, addr: u16, count: u16) -> Option<Vec<u16>> {
        let (a, n) = (addr as usize, count as usize);
        (n > 0 && a + n <= SIZE).then(|| self.regs[a..a + n].to_vec())
    }

    /// Only the grid setpoint is writable.
    pub(crate) fn write(&mut self, addr: u16, words: &[u16]) -> bool {
        if addr != SETPOINT || words.len() != 1 {
            return false;
        }
        self.regs[SETPOINT as usize] = words[0];
        true
    }

    pub(crate) fn setpoint_kw(&self) -> f64 {
        self.regs[SETPOINT as usize] as i16 as f64 / 1000.0
    }

    pub(crate) fn publish(&mut self, p: &Physics) {
        let sat = |w: f64| w.round().clamp(i16::MIN as f64, i16::MAX as f64) as i16 as u16;
        self.regs[820] = sat(p.grid_kw() * 1000.0);
        self.regs[821] = 0;
        self.regs[822] = 0;
        self.regs[842] = sat(-p.battery_kw * 1000.0);
        self.regs[843] = p.soc_pct.round() as u16;
    }
}
