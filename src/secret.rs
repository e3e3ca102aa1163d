//! Secrets (API keys) in a type that never prints its value: `Debug`, `Display` and
//! `Serialize` all say `MASKED`, so a key cannot reach a log line or a `--json` dump by accident.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    #[cfg(test)]
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The only way to the value; call sites are easy to audit with grep.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the value: keys are compared as digests, so the comparison takes the same
    /// time whatever the lengths of the key and of the guess (issue 10.6).
    pub(crate) fn digest(&self) -> [u8; 32] {
        sha256(self.0.as_bytes())
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("MASKED")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "MASKED MASKED");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"MASKED\"");
        assert_eq!(s.expose(), "hunter2");
    }
}
