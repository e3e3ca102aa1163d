//! SunSpec: the point table for the models leap-edge uses (offsets, types and scale-factor
//! points taken from the SunSpec information-model JSON, `shared/reference/sunspec/`), and
//! discovery: find the `SunS` marker at 40000, 0 or 50000 and walk the model chain to the
//! 0xFFFF end marker.

use super::DeviceError;
use super::client::{Function, ModbusClient};
use super::codec::RegType;
use serde::Serialize;

/// One point of a SunSpec model. `offset` counts from the model's ID register (ID = 0,
/// L = 1, first data point = 2), as in the SunSpec JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PointDef {
    pub(crate) model: u16,
    pub(crate) name: &'static str,
    pub(crate) offset: u16,
    pub(crate) ty: RegType,
    pub(crate) sf: Option<&'static str>,
    pub(crate) writable: bool,
}

const fn p(
    model: u16,
    name: &'static str,
    offset: u16,
    ty: RegType,
    sf: Option<&'static str>,
) -> PointDef {
    PointDef {
        model,
        name,
        offset,
        ty,
        sf,
        writable: false,
    }
}

const fn rw(
    model: u16,
    name: &'static str,
    offset: u16,
    ty: RegType,
    sf: Option<&'static str>,
) -> PointDef {
    PointDef {
        model,
        name,
        offset,
        ty,
        sf,
        writable: true,
    }
}

use RegType::{Acc32, F32, I16, I32, U16, U32};

/// Scale-factor points are int16 (`sunssf`).
pub(crate) static POINTS: &[PointDef] = &[
    // model 1, common (strings are read by `probe`)
    rw(1, "DA", 66, U16, None),
    // model 103, three-phase inverter
    p(103, "W", 14, I16, Some("W_SF")),
    p(103, "W_SF", 15, I16, None),
    // Single-phase (101) and split-phase (102) inverters: 103's layout (101 checked against
    // SunSpec's JSON point by point).
    p(101, "W", 14, I16, Some("W_SF")),
    p(101, "W_SF", 15, I16, None),
    p(102, "W", 14, I16, Some("W_SF")),
    p(102, "W_SF", 15, I16, None),
    // model 124, basic storage control
    rw(124, "WChaMax", 2, U16, Some("WChaMax_SF")),
    rw(124, "StorCtl_Mod", 5, U16, None),
    rw(124, "MinRsvPct", 7, U16, Some("MinRsvPct_SF")),
    p(124, "ChaState", 8, U16, Some("ChaState_SF")),
    p(124, "ChaSt", 11, U16, None),
    rw(124, "OutWRte", 12, I16, Some("InOutWRte_SF")),
    rw(124, "InWRte", 13, I16, Some("InOutWRte_SF")),
    rw(124, "InOutWRte_WinTms", 14, U16, None),
    rw(124, "InOutWRte_RvrtTms", 15, U16, None),
    rw(124, "InOutWRte_RmpTms", 16, U16, None),
    rw(124, "ChaGriSet", 17, U16, None),
    p(124, "WChaMax_SF", 18, I16, None),
    p(124, "MinRsvPct_SF", 21, I16, None),
    p(124, "ChaState_SF", 22, I16, None),
    p(124, "InOutWRte_SF", 25, I16, None),
    // model 203, wye-connected three-phase meter (int + SF)
    p(203, "W", 18, I16, Some("W_SF")),
    p(203, "W_SF", 22, I16, None),
    // Energy accumulators (acc32, Wh with TotWh_SF): exact interval energy (issue 14)
    p(203, "TotWhExp", 38, Acc32, Some("TotWh_SF")),
    p(203, "TotWhImp", 46, Acc32, Some("TotWh_SF")),
    p(203, "TotWh_SF", 54, I16, None),
    // model 213, the same meter in float32
    p(213, "W", 28, F32, None),
    p(213, "TotWhExp", 60, F32, None),
    p(213, "TotWhImp", 68, F32, None),
    // Single-phase (201) and split single-phase (202) meters: the same layout as 203
    // (SunSpec's one ac_meter group; 201 checked against the SunSpec JSON point by point).
    p(201, "W", 18, I16, Some("W_SF")),
    p(201, "W_SF", 22, I16, None),
    p(201, "TotWhExp", 38, Acc32, Some("TotWh_SF")),
    p(201, "TotWhImp", 46, Acc32, Some("TotWh_SF")),
    p(201, "TotWh_SF", 54, I16, None),
    p(202, "W", 18, I16, Some("W_SF")),
    p(202, "W_SF", 22, I16, None),
    p(202, "TotWhExp", 38, Acc32, Some("TotWh_SF")),
    p(202, "TotWhImp", 46, Acc32, Some("TotWh_SF")),
    p(202, "TotWh_SF", 54, I16, None),
    // ... and their float32 forms, laid out as 213.
    p(211, "W", 28, F32, None),
    p(211, "TotWhExp", 60, F32, None),
    p(211, "TotWhImp", 68, F32, None),
    p(212, "W", 28, F32, None),
    p(212, "TotWhExp", 60, F32, None),
    p(212, "TotWhImp", 68, F32, None),
    // model 701, DER AC measurement
    p(701, "W", 10, I16, Some("W_SF")),
    p(701, "W_SF", 116, I16, None),
    // model 702, DER capacity
    p(702, "WMaxRtg", 2, U16, Some("W_SF")),
    p(702, "WChaRteMaxRtg", 10, U16, Some("W_SF")),
    p(702, "WDisChaRteMaxRtg", 11, U16, Some("W_SF")),
    p(702, "W_SF", 45, I16, None),
    // model 704, DER AC controls
    rw(704, "WSetEna", 22, U16, None),
    rw(704, "WSetMod", 23, U16, None),
    rw(704, "WSet", 24, I32, Some("WSet_SF")),
    rw(704, "WSetRvrt", 26, I32, Some("WSet_SF")),
    rw(704, "WSetPct", 28, I16, Some("WSetPct_SF")),
    rw(704, "WSetEnaRvrt", 30, U16, None),
    rw(704, "WSetRvrtTms", 31, U32, None),
    p(704, "WSetRvrtRem", 33, U32, None),
    p(704, "WSet_SF", 55, I16, None),
    p(704, "WSetPct_SF", 56, I16, None),
    // model 713, DER storage capacity
    p(713, "WHRtg", 2, U16, Some("WH_SF")),
    p(713, "WHAvail", 3, U16, Some("WH_SF")),
    p(713, "SoC", 4, U16, Some("Pct_SF")),
    p(713, "SoH", 5, U16, Some("Pct_SF")),
    p(713, "WH_SF", 7, I16, None),
    p(713, "Pct_SF", 8, I16, None),
    // model 802, battery base
    p(802, "WHRtg", 3, U16, Some("WHRtg_SF")),
    p(802, "WChaRteMax", 4, U16, Some("WChaDisChaMax_SF")),
    p(802, "WDisChaRteMax", 5, U16, Some("WChaDisChaMax_SF")),
    p(802, "SoC", 11, U16, Some("SoC_SF")),
    p(802, "W", 47, I16, Some("W_SF")),
    p(802, "WHRtg_SF", 53, I16, None),
    p(802, "WChaDisChaMax_SF", 54, I16, None),
    p(802, "SoC_SF", 56, I16, None),
    p(802, "W_SF", 63, I16, None),
];

pub(crate) fn point(model: u16, name: &str) -> Option<&'static PointDef> {
    POINTS.iter().find(|d| d.model == model && d.name == name)
}

/// Where discovery looks for the `SunS` marker, most common first.
pub(crate) const BASES: [u16; 3] = [40000, 0, 50000];
pub(crate) const MARKER: [u16; 2] = [0x5375, 0x6E53];
pub(crate) const END: u16 = 0xFFFF;
/// A real map has a handful of models; a chain longer than this is corrupt.
const MAX_MODELS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct ModelEntry {
    pub(crate) id: u16,
    /// Address of the model's ID register.
    pub(crate) addr: u16,
    /// The model's length L (registers after ID and L).
    pub(crate) len: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SunSpecMap {
    pub(crate) base: u16,
    pub(crate) models: Vec<ModelEntry>,
}

/// SunSpec meter models (single/split/three phase, integer and float).
const METER_MODELS: [u16; 8] = [201, 202, 203, 204, 211, 212, 213, 214];

impl SunSpecMap {
    pub(crate) fn model(&self, id: u16) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id == id)
    }

    /// Several devices in one chain (each opens with a common model 1) and more than one
    /// meter model among them: an inverter with its export meter and a consumption or
    /// production meter. Which one is the site's grid meter cannot be told from the map, and
    /// taking the first could follow a PV meter's reading into export.
    pub(crate) fn meters_ambiguous(&self) -> bool {
        let count = |f: &dyn Fn(u16) -> bool| self.models.iter().filter(|m| f(m.id)).count();
        count(&|id| id == 1) > 1 && count(&|id| METER_MODELS.contains(&id)) > 1
    }

    /// The absolute address of a point, if the device has its model and the model is long
    /// enough to hold it. None for a meter point when the chain's meters are ambiguous.
    pub(crate) fn address(&self, def: &PointDef) -> Option<u16> {
        if METER_MODELS.contains(&def.model) && self.meters_ambiguous() {
            return None;
        }
        let m = self.model(def.model)?;
        let end = def.offset + def.ty.words();
        (end <= m.len + 2).then(|| m.addr.wrapping_add(def.offset))
    }

    pub(crate) fn ids(&self) -> Vec<u16> {
        self.models.iter().map(|m| m.id).collect()
    }
}

/// Find the SunSpec map. `base` given: look only there. An exception at a candidate base
/// means "not here"; a timeout or I/O error ends discovery (the device is unreachable).
pub(crate) async fn discover(
    client: &mut ModbusClient,
    base: Option<u16>,
) -> Result<SunSpecMap, DeviceError> {
    let bases: Vec<u16> = base.map_or(BASES.to_vec(), |b| vec![b]);
    let mut timed_out = None;
    let mut refused = Vec::new();
    for b in &bases {
        match client.read(None, Function::Holding, *b, 2).await {
            Ok(w) if w == MARKER => return walk(client, *b).await,
            Ok(_) => continue,
            Err(DeviceError::Exception { code, .. }) => refused.push(code),
            // Some devices never answer a read of an address they lack; the client has
            // dropped the connection and reconnects for the next base.
            Err(e @ DeviceError::Timeout { .. }) => timed_out = Some(e),
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = timed_out {
        return Err(e);
    }
    // Every base refused with an exception: most often not "no SunSpec here" but nobody
    // answering at that unit id (a Modbus gateway answers 0x0A/0x0B for it).
    let hint = if refused.len() == bases.len() {
        format!(
            "; every read there got exception {}: check the unit id and that the Modbus gateway reaches the device (a device without SunSpec needs a copy of devices/generic.toml)",
            refused.join("/")
        )
    } else {
        "; a device without SunSpec needs its own profile (a copy of devices/generic.toml)".into()
    };
    Err(DeviceError::Profile {
        device: client.device().to_string(),
        reason: format!("no SunSpec marker 'SunS' at {bases:?}{hint}"),
    })
}

async fn walk(client: &mut ModbusClient, base: u16) -> Result<SunSpecMap, DeviceError> {
    let mut models = Vec::new();
    let mut addr = base as u32 + 2;
    while models.len() < MAX_MODELS && addr < u16::MAX as u32 {
        let w = client.read(None, Function::Holding, addr as u16, 2).await?;
        if w[0] == END {
            return Ok(SunSpecMap { base, models });
        }
        models.push(ModelEntry {
            id: w[0],
            addr: addr as u16,
            len: w[1],
        });
        addr += 2 + w[1] as u32;
    }
    Err(DeviceError::Profile {
        device: client.device().to_string(),
        reason: format!(
            "SunSpec model chain from {base} has no end marker (walked {} models)",
            models.len()
        ),
    })
}

/// SunSpec strings: two ASCII bytes per register, padded with NUL or spaces.
pub(crate) fn decode_string(words: &[u16]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    String::from_utf8_lossy(&bytes)
        .trim_end_matches(['\0', ' '])
        .trim()
        .to_string()
}

pub(crate) fn encode_string(s: &str, regs: usize) -> Vec<u16> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.resize(regs * 2, 0);
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of an inverter and two meters (as some inverters expose their export and
    /// consumption meters): no meter point is taken; one device with one meter is read.
    #[test]
    fn meters_of_several_devices_in_one_chain_are_not_guessed() {
        let entry = |id, addr| ModelEntry { id, addr, len: 105 };
        let w = point(203, "W").unwrap();
        let one = SunSpecMap {
            base: 40000,
            models: vec![entry(1, 40002), entry(103, 40070), entry(203, 40200)],
        };
        assert!(one.address(w).is_some());
        let several = SunSpecMap {
            base: 40000,
            models: vec![
                entry(1, 40002),
                entry(103, 40070),
                entry(1, 40121),
                entry(203, 40188),
                entry(1, 40295),
                entry(203, 40362),
            ],
        };
        assert!(several.meters_ambiguous());
        assert_eq!(several.address(w), None);
        assert!(several.address(point(103, "W").unwrap()).is_some());
    }

    #[test]
    fn strings_round_trip() {
        let w = encode_string("leap-edge", 8);
        assert_eq!(w.len(), 8);
        assert_eq!(decode_string(&w), "leap-edge");
    }

    #[test]
    fn every_scale_factor_named_is_in_the_table() {
        for d in POINTS {
            if let Some(sf) = d.sf {
                let s = point(d.model, sf).unwrap_or_else(|| panic!("{}.{sf}", d.model));
                assert_eq!(s.ty, RegType::I16);
            }
        }
    }

    /// Cross-check against the SunSpec JSON when the reference folder is present.
    #[test]
    fn table_matches_sunspec_json_when_available() {
        // shared/ sits beside the repository (development worktrees and CI clones alike).
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let candidates = [
            manifest.join("../shared/reference/sunspec"),
            std::path::PathBuf::from("/work/shared/reference/sunspec"),
        ];
        let Some(dir) = candidates.iter().find(|d| d.is_dir()) else {
            eprintln!("SKIP: shared/reference/sunspec not found beside the repository");
            return;
        };
        if !dir.is_dir() {
            eprintln!("SKIP: {} not present", dir.display());
            return;
        }
        let mut checked = 0;
        for d in POINTS {
            // 101/102, 201/202 and 211/212 share 103's, 203's and 213's layouts; the
            // reference folder holds only the latter.
            let model = match d.model {
                101 | 102 => 103,
                201 | 202 => 203,
                211 | 212 => 213,
                m => m,
            };
            let text = std::fs::read_to_string(dir.join(format!("model_{model}.json")))
                .expect("model json");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let mut off = 0u64;
            let mut found = None;
            for pt in v["group"]["points"].as_array().unwrap() {
                if pt["name"] == d.name {
                    found = Some((off, pt.clone()));
                    break;
                }
                off += pt["size"].as_u64().unwrap();
            }
            let (off, pt) = found.unwrap_or_else(|| panic!("{}.{} not in JSON", d.model, d.name));
            assert_eq!(off, d.offset as u64, "{}.{} offset", d.model, d.name);
            assert_eq!(
                pt["size"].as_u64().unwrap(),
                d.ty.words() as u64,
                "{}.{}",
                d.model,
                d.name
            );
            assert_eq!(pt["sf"].as_str(), d.sf, "{}.{} sf", d.model, d.name);
            // The type decides the "not implemented" value (acc32: 0; uint32: 0xFFFFFFFF).
            let ty = match pt["type"].as_str().unwrap_or_default() {
                "int16" | "sunssf" => RegType::I16,
                "uint16" | "enum16" | "bitfield16" => RegType::U16,
                "uint32" | "enum32" | "bitfield32" => RegType::U32,
                "int32" => RegType::I32,
                "acc32" => RegType::Acc32,
                "float32" => RegType::F32,
                other => panic!("{}.{}: type {other} not mapped", d.model, d.name),
            };
            assert_eq!(ty, d.ty, "{}.{} type", d.model, d.name);
            checked += 1;
        }
        assert!(checked > 0);
    }
}
