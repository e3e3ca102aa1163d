//! Request authentication: the configured header must carry one of the configured keys.
//! Missing and wrong look the same to the caller (401), and the comparison takes the same
//! time whichever key (if any) matches.

use crate::secret::Secret;
use hyper::HeaderMap;
use subtle::ConstantTimeEq;

pub(crate) fn authorized(headers: &HeaderMap, header: &str, keys: &[Secret]) -> bool {
    // HeaderMap lookups are case-insensitive, as Leap lower-cases names anyway.
    let Some(given) = headers.get(header) else {
        return false;
    };
    // Digests of equal length are compared, so neither the key's length nor a matching
    // prefix shows in the timing; every key is compared, with no early exit, so timing
    // does not reveal which one matched either.
    let given = crate::secret::sha256(given.as_bytes());
    let mut ok = subtle::Choice::from(0u8);
    for key in keys {
        ok |= given.ct_eq(&key.digest());
    }
    bool::from(ok)
}

/// Headers kept with the raw notification: everything except credentials (SPEC §2.5).
pub(crate) fn auditable_headers(headers: &HeaderMap, auth_header: &str) -> serde_json::Value {
    const SECRET: [&str; 4] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ];
    let mut out = serde_json::Map::new();
    for (name, value) in headers {
        let n = name.as_str();
        if n.eq_ignore_ascii_case(auth_header) || SECRET.contains(&n) {
            continue;
        }
        out.insert(
            n.to_string(),
            serde_json::Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn accepts_any_configured_key_and_matches_name_case_insensitively() {
        let keys = [Secret::new("old-key-123"), Secret::new("new-key-456")];
        assert!(authorized(
            &headers(&[("x-api-key", "new-key-456")]),
            "X-Api-Key",
            &keys
        ));
        assert!(authorized(
            &headers(&[("x-api-key", "old-key-123")]),
            "x-api-key",
            &keys
        ));
        assert!(!authorized(
            &headers(&[("x-api-key", "new-key-45")]),
            "x-api-key",
            &keys
        ));
        assert!(!authorized(&headers(&[]), "x-api-key", &keys));
        assert!(!authorized(
            &headers(&[("x-api-key", "")]),
            "x-api-key",
            &[]
        ));
    }

    #[test]
    fn audit_copy_strips_credentials() {
        let h = headers(&[
            ("x-api-key", "s3cret-key"),
            ("authorization", "Bearer x"),
            ("user-agent", "leap"),
        ]);
        let kept = auditable_headers(&h, "x-api-key");
        assert_eq!(kept, serde_json::json!({"user-agent": "leap"}));
    }
}
