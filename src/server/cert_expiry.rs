//! When the served certificate stops being valid. Leap's pushes fail TLS from that moment,
//! and the daemon itself sees nothing but silence; so the expiry is read at load (and at
//! every `reload`), exported as a metric and made a `/healthz` problem ahead of time.
//!
//! Only X.509's validity is needed, which sits at a fixed place in the DER: certificate →
//! tbsCertificate → [version] serial signature issuer validity(notBefore, notAfter). A
//! small walker reads it rather than a certificate parser for one field.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};

/// One DER element: (tag, contents, what follows it).
fn element(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// notAfter of a DER certificate; None when it cannot be read.
pub(crate) fn not_after(der: &[u8]) -> Option<DateTime<Utc>> {
    let (SEQUENCE, cert, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = element(rest)?.2;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, validity, _) = element(rest)? else {
        return None;
    };
    let after = element(validity)?.2;
    let (tag, time, _) = element(after)?;
    time_of(tag, std::str::from_utf8(time).ok()?)
}

/// UTCTime `YYMMDDHHMMSSZ` (years 1950–2049) or GeneralizedTime `YYYYMMDDHHMMSSZ`.
fn time_of(tag: u8, s: &str) -> Option<DateTime<Utc>> {
    let s = s.strip_suffix('Z')?;
    let (year, rest) = match tag {
        UTC_TIME => {
            let yy: i32 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        GENERALIZED_TIME => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<u32> { rest.get(i..i + 2)?.parse().ok() };
    let date = NaiveDate::from_ymd_opt(year, field(0)?, field(2)?)?;
    let naive = date.and_hms_opt(field(4)?, field(6)?, field(8)?)?;
    Some(Utc.from_utc_datetime(&naive))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate valid until `until`, as DER.
    fn cert_until(until: (i32, u8, u8)) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["gw.example".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_not_after_in_both_time_forms() {
        // Before 2050 X.509 writes UTCTime, from 2050 on GeneralizedTime.
        for (y, m, d) in [(2027, 3, 14), (2049, 12, 31), (2050, 1, 1), (4096, 1, 1)] {
            let got = not_after(&cert_until((y, m, d))).expect("read");
            assert_eq!(
                got.date_naive(),
                NaiveDate::from_ymd_opt(y, m.into(), d.into()).unwrap()
            );
        }
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x02\x01\x00",
        ] {
            assert_eq!(not_after(bad), None);
        }
        let mut c = cert_until((2030, 1, 1));
        c.truncate(c.len() / 3);
        assert_eq!(not_after(&c), None);
    }
}
