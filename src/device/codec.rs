//! Register encoding: turning Modbus words into numbers and back, for the register types
//! device profiles name (u16, i16, u32, i32, f32, acc32) in either word order. Encoding refuses
//! any value its register cannot hold, so a negative can never reach an unsigned register.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RegType {
    U16,
    I16,
    U32,
    I32,
    F32,
    /// SunSpec's accumulator: a u32 with no 0xFFFFFFFF sentinel. Its "not implemented"
    /// value is 0, which a real export counter on a site that never exported also reads:
    /// the energy reading treats the import and export pair both at 0 as absent.
    Acc32,
}

/// Order of the two 16-bit words of a 32-bit value. SunSpec is big-endian (high word
/// first); some vendors put the low word first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum WordOrder {
    #[default]
    Big,
    Little,
}

impl RegType {
    pub(crate) fn words(self) -> u16 {
        match self {
            RegType::U16 | RegType::I16 => 1,
            _ => 2,
        }
    }

    /// The raw (unscaled) range the register can hold.
    pub(crate) fn raw_range(self) -> (f64, f64) {
        match self {
            RegType::U16 => (0.0, u16::MAX as f64),
            RegType::I16 => (i16::MIN as f64, i16::MAX as f64),
            RegType::U32 | RegType::Acc32 => (0.0, u32::MAX as f64),
            RegType::I32 => (i32::MIN as f64, i32::MAX as f64),
            RegType::F32 => (f32::MIN as f64, f32::MAX as f64),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("expected {expected} registers, got {got}")]
    Length { expected: u16, got: usize },
    #[error("raw value {value} does not fit a {ty:?} register ({min}..={max})")]
    OutOfRange {
        value: f64,
        ty: RegType,
        min: f64,
        max: f64,
    },
}

fn join(words: &[u16], order: WordOrder) -> u32 {
    let (hi, lo) = match order {
        WordOrder::Big => (words[0], words[1]),
        WordOrder::Little => (words[1], words[0]),
    };
    ((hi as u32) << 16) | lo as u32
}

fn split(v: u32, order: WordOrder) -> Vec<u16> {
    let (hi, lo) = ((v >> 16) as u16, v as u16);
    match order {
        WordOrder::Big => vec![hi, lo],
        WordOrder::Little => vec![lo, hi],
    }
}

/// Decode a raw value (before any scale).
pub(crate) fn decode(words: &[u16], ty: RegType, order: WordOrder) -> Result<f64, CodecError> {
    if words.len() < ty.words() as usize {
        return Err(CodecError::Length {
            expected: ty.words(),
            got: words.len(),
        });
    }
    Ok(match ty {
        RegType::U16 => words[0] as f64,
        RegType::I16 => words[0] as i16 as f64,
        RegType::U32 | RegType::Acc32 => join(words, order) as f64,
        RegType::I32 => join(words, order) as i32 as f64,
        RegType::F32 => f32::from_bits(join(words, order)) as f64,
    })
}

/// SunSpec marks an unimplemented point with a sentinel (0xFFFF, 0x8000, ...).
pub(crate) fn is_sunspec_unimplemented(words: &[u16], ty: RegType, order: WordOrder) -> bool {
    match ty {
        RegType::U16 => words.first() == Some(&0xFFFF),
        RegType::I16 => words.first() == Some(&0x8000),
        RegType::U32 => words.len() >= 2 && join(words, order) == 0xFFFF_FFFF,
        RegType::Acc32 => false,
        RegType::I32 => words.len() >= 2 && join(words, order) == 0x8000_0000,
        RegType::F32 => words.len() >= 2 && f32::from_bits(join(words, order)).is_nan(),
    }
}

/// Encode a raw value (already divided by its scale). Integers are rounded to the nearest
/// step; anything outside the register's range (or not finite) is refused, never wrapped.
pub(crate) fn encode(raw: f64, ty: RegType, order: WordOrder) -> Result<Vec<u16>, CodecError> {
    let (min, max) = ty.raw_range();
    let v = if ty == RegType::F32 { raw } else { raw.round() };
    if !v.is_finite() || v < min || v > max {
        return Err(CodecError::OutOfRange {
            value: raw,
            ty,
            min,
            max,
        });
    }
    Ok(match ty {
        RegType::U16 => vec![v as u16],
        RegType::I16 => vec![v as i16 as u16],
        RegType::U32 | RegType::Acc32 => split(v as u32, order),
        RegType::I32 => split(v as i32 as u32, order),
        RegType::F32 => split((v as f32).to_bits(), order),
    })
}

/// SunSpec scale factor: value = raw × 10^sf.
pub(crate) fn pow10(sf: i16) -> f64 {
    10f64.powi(sf as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_never_reaches_unsigned() {
        assert!(encode(-1.0, RegType::U16, WordOrder::Big).is_err());
        assert!(encode(-0.6, RegType::U32, WordOrder::Big).is_err());
        assert!(encode(65536.0, RegType::U16, WordOrder::Big).is_err());
        assert!(encode(f64::NAN, RegType::I16, WordOrder::Big).is_err());
        assert_eq!(encode(-0.4, RegType::U16, WordOrder::Big).unwrap(), vec![0]);
    }

    #[test]
    fn round_trips_every_type_and_order() {
        for order in [WordOrder::Big, WordOrder::Little] {
            for (ty, v) in [
                (RegType::U16, 65535.0),
                (RegType::I16, -32768.0),
                (RegType::U32, 4_000_000_000.0),
                (RegType::I32, -2_000_000_000.0),
                (RegType::F32, -1234.5),
            ] {
                let w = encode(v, ty, order).unwrap();
                assert_eq!(w.len(), ty.words() as usize);
                assert_eq!(decode(&w, ty, order).unwrap(), v, "{ty:?} {order:?}");
            }
        }
    }

    #[test]
    fn word_order_matters() {
        assert_eq!(
            encode(0x0001_0002 as f64, RegType::U32, WordOrder::Big).unwrap(),
            vec![1, 2]
        );
        assert_eq!(
            encode(0x0001_0002 as f64, RegType::U32, WordOrder::Little).unwrap(),
            vec![2, 1]
        );
    }

    #[test]
    fn sunspec_sentinels() {
        assert!(is_sunspec_unimplemented(
            &[0x8000],
            RegType::I16,
            WordOrder::Big
        ));
        assert!(is_sunspec_unimplemented(
            &[0xFFFF],
            RegType::U16,
            WordOrder::Big
        ));
        assert!(!is_sunspec_unimplemented(
            &[0x7FFF],
            RegType::I16,
            WordOrder::Big
        ));
    }
}
