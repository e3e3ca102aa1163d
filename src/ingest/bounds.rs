//! Issue 10.5: limits on what one notification may make the gateway store, each a key of
//! `[limits]`. Counts are taken on the JSON before any timeslot is built, so an oversized
//! notification costs its parse and nothing more; a timeslot longer or further ahead than
//! Leap's programs ever are is rejected with its reason (SPEC §2.2: the rest stands).

use super::NotificationError;
use crate::config::LimitsConfig;
use crate::model::Timeslot;
use chrono::{DateTime, Utc};
use serde::de::DeserializeSeed;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BoundedError {
    #[error(transparent)]
    Invalid(#[from] NotificationError),
    /// → 413, nothing stored.
    #[error(
        "the notification holds {found} {what}, over the limit of {limit} (limits.{key}); nothing was stored"
    )]
    OverLimit {
        what: &'static str,
        key: &'static str,
        found: usize,
        limit: usize,
    },
    /// → 413, nothing stored. Each parsed timeslot holds its entry's ids, references and
    /// warnings: a long text in an entry of many timeslots is copied that many times.
    #[error(
        "the notification's dispatch entries hold {found} bytes of ids, references and other entry fields once copied into each of their timeslots, over the limit of {limit} (limits.max_meter_ids × {COPIED_BYTES_PER_ID} bytes, at least 64 MiB); nothing was stored: raise limits.max_meter_ids for larger groups, but Leap's ids are 36 characters, so an entry field of kilobytes is not Leap's"
    )]
    OverCopied { found: usize, limit: usize },
}

/// Entry-level text (meter ids, references, other entry fields) times the entry's
/// timeslots may be this many bytes per allowed meter id (`max_meter_ids` counts ids the same
/// way): it bounds what parsing one notification can allocate, and scales with the groups a
/// site or relay is set up for. A 36-character id with a 420-character reference is about
/// 460 bytes: 1,600 meters × 96 quarter hours of those copy 70 MB, within the default's
/// 100 MB.
pub(crate) const COPIED_BYTES_PER_ID: usize = 512;
/// Whatever `max_meter_ids` a small site sets: Leap puts no length on `partner_reference`.
const MIN_COPIED_BYTES: usize = 64 * 1024 * 1024;

/// Meter ids, timeslots and JSON values in the whole notification, against the limits.
/// Counted while reading the bytes, before any JSON tree is built: a 1 MiB body of tiny
/// objects would otherwise cost some 60 MB as a tree before any count could refuse it.
pub(crate) fn check_counts(body: &[u8], limits: &LimitsConfig) -> Result<(), BoundedError> {
    let (values_cap, objects_cap) = caps(limits);
    let mut t = Tally {
        cap: values_cap,
        objects_cap,
        ..Tally::default()
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    // Not JSON (or nested too deep) is reported by the parse that follows, by its own words.
    let _ = Walk {
        at: At::Root,
        copied: false,
        t: &mut t,
    }
    .deserialize(&mut de);
    copies_within(&t, limits)?;
    let over = |what, key, found, limit| {
        (found > limit).then_some(BoundedError::OverLimit {
            what,
            key,
            found,
            limit,
        })
    };
    if let Some(e) = over(
        "timeslots",
        "max_timeslots",
        t.timeslots,
        limits.max_timeslots,
    ) {
        return Err(e);
    }
    if let Some(e) = over(
        "meter ids (each counted once per timeslot it is listed with)",
        "max_meter_ids",
        t.meter_ids,
        limits.max_meter_ids,
    ) {
        return Err(e);
    }
    if let Some(e) = over(
        "JSON values (more than a notification within max_timeslots and max_meter_ids has)",
        "max_timeslots",
        t.values,
        values_cap,
    ) {
        return Err(e);
    }
    // Objects are the costliest values to hold as a tree (a map each).
    if let Some(e) = over(
        "JSON objects (more than a notification within max_timeslots has)",
        "max_timeslots",
        t.objects,
        objects_cap,
    ) {
        return Err(e);
    }
    Ok(())
}

fn copies_within(t: &Tally, limits: &LimitsConfig) -> Result<(), BoundedError> {
    let limit = limits
        .max_meter_ids
        .saturating_mul(COPIED_BYTES_PER_ID)
        .max(MIN_COPIED_BYTES);
    if t.copied > limit {
        return Err(BoundedError::OverCopied {
            found: t.copied,
            limit,
        });
    }
    Ok(())
}

/// A Leap timeslot has about twenty fields: room for 64 values each, every meter id and
/// the envelope; and for a few objects per timeslot (dispatch entries, the root).
fn caps(l: &LimitsConfig) -> (usize, usize) {
    let values = l
        .max_timeslots
        .saturating_mul(64)
        .saturating_add(l.max_meter_ids)
        .saturating_add(4096);
    let objects = l.max_timeslots.saturating_mul(4).saturating_add(1024);
    (values, objects)
}

#[derive(Default)]
struct Tally {
    cap: usize,
    objects_cap: usize,
    values: usize,
    objects: usize,
    meter_ids: usize,
    timeslots: usize,
    entry_ids: usize,
    entry_slots: usize,
    /// Bytes of text in the current entry outside its timeslots.
    entry_text: usize,
    /// Sum over entries of `entry_text` × their timeslots.
    copied: usize,
}

/// Where in a notification the walk is.
#[derive(Clone, Copy)]
enum At {
    Root,
    Dispatches,
    Entry,
    Timeslots,
    MeterIds,
    MeterId,
    Other,
}

struct Walk<'a> {
    at: At,
    /// Inside a dispatch entry but not in its timeslots: copied into each timeslot.
    copied: bool,
    t: &'a mut Tally,
}

impl Walk<'_> {
    fn count<E: serde::de::Error>(&mut self) -> Result<(), E> {
        self.t.values += 1;
        if self.t.values > self.t.cap {
            return Err(E::custom("over the value cap"));
        }
        Ok(())
    }

    fn scalar<E: serde::de::Error>(mut self, is_str: bool) -> Result<(), E> {
        self.count()?;
        if matches!(self.at, At::MeterId) && is_str {
            self.t.entry_ids = self.t.entry_ids.max(1);
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar(false)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar(false)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar(false)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar(false)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        if self.copied {
            self.t.entry_text = self.t.entry_text.saturating_add(v.len());
        }
        self.scalar(true)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.scalar(false)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.count()?;
        let child = match self.at {
            At::Dispatches => At::Entry,
            _ => At::Other,
        };
        let mut n = 0;
        while seq
            .next_element_seed(Walk {
                at: child,
                copied: self.copied,
                t: &mut *self.t,
            })?
            .is_some()
        {
            n += 1;
        }
        match self.at {
            At::Timeslots => self.t.entry_slots = n,
            At::MeterIds => self.t.entry_ids = self.t.entry_ids.max(n),
            _ => {}
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.count()?;
        self.t.objects += 1;
        if self.t.objects > self.t.objects_cap {
            return Err(serde::de::Error::custom("over the object cap"));
        }
        let entry = matches!(self.at, At::Entry);
        if entry {
            (self.t.entry_ids, self.t.entry_slots, self.t.entry_text) = (0, 0, 0);
        }
        while let Some(key) = map.next_key::<String>()? {
            let child = match (self.at, key.as_str()) {
                (At::Root, "meter_dispatches" | "group_dispatches") => At::Dispatches,
                (At::Entry, "timeslots") => At::Timeslots,
                (At::Entry, "meter_ids") => At::MeterIds,
                (At::Entry, "meter_id") => At::MeterId,
                _ => At::Other,
            };
            map.next_value_seed(Walk {
                at: child,
                copied: self.copied || (entry && !matches!(child, At::Timeslots)),
                t: &mut *self.t,
            })?;
        }
        if entry {
            // Every parsed timeslot holds its entry's meter ids: that product is what a
            // notification costs in memory, however few bytes it was sent in (the database
            // stores a group's list once, migration 6).
            let t = &mut *self.t;
            t.timeslots += t.entry_slots;
            t.meter_ids = t
                .meter_ids
                .saturating_add(t.entry_ids.saturating_mul(t.entry_slots.max(1)));
            t.copied = t
                .copied
                .saturating_add(t.entry_text.saturating_mul(t.entry_slots));
        }
        Ok(())
    }
}

/// Why a well-formed timeslot is beyond the limits, if it is.
pub(crate) fn timeslot_problem(
    ts: &Timeslot,
    limits: &LimitsConfig,
    now: DateTime<Utc>,
) -> Option<String> {
    let hours = (ts.end_time - ts.start_time).num_minutes() as f64 / 60.0;
    if hours > f64::from(limits.max_timeslot_hours) {
        return Some(format!(
            "timeslot lasts {hours:.1} h, longer than limits.max_timeslot_hours = {}",
            limits.max_timeslot_hours
        ));
    }
    let ahead = chrono::Duration::days(i64::from(limits.max_start_ahead_days));
    if ts.start_time > now + ahead {
        return Some(format!(
            "start_time {} is more than limits.max_start_ahead_days = {} days ahead",
            ts.start_time, limits.max_start_ahead_days
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A 1 MB meter id in an entry of 2,000 timeslots would be copied into each of them
    /// (2 GB while parsing); refused before any timeslot is built. Text in the timeslots
    /// themselves is held once and does not count.
    #[test]
    fn entry_text_copied_into_every_timeslot_is_bounded() {
        let limits = LimitsConfig::default();
        let long = "x".repeat(1_000_000);
        let slots: Vec<_> = (0..200).map(|_| json!({})).collect();
        let body = json!({"meter_dispatches": [{"meter_id": long, "timeslots": slots}]});
        let e = check_counts(body.to_string().as_bytes(), &limits).unwrap_err();
        assert!(
            matches!(e, BoundedError::OverCopied { found, limit } if found >= 200_000_000 && limit == 200_000 * 512),
            "{e}"
        );
        assert!(
            e.to_string().contains("limits.max_meter_ids × 512 bytes"),
            "{e}"
        );
        // References in a wrong-typed field count too (parse.rs repeats it in a warning).
        let refs = json!({"group_dispatches": [{"meter_ids": ["a"], "partner_references": {"x": long},
                          "timeslots": slots}]});
        assert!(check_counts(refs.to_string().as_bytes(), &limits).is_err());
        let inside: Vec<_> = (0..100).map(|_| json!({"note": long})).collect();
        let ok = json!({"meter_dispatches": [{"meter_id": "a", "timeslots": inside}]});
        assert_eq!(check_counts(ok.to_string().as_bytes(), &limits), Ok(()));
        // A large real group: 1,600 meters with long references, a day of quarter hours
        // (153,600 ids counted, within the default max_meter_ids; 70 MB of copies).
        let ids: Vec<String> = (0..1600)
            .map(|i| format!("{i:08x}-e392-4f00-b0cf-32e716204f78"))
            .collect();
        let refs: Vec<String> = (0..1600)
            .map(|i| format!("ref-{i:06}-{}", "y".repeat(400)))
            .collect();
        let day: Vec<_> = (0..96).map(|_| json!({})).collect();
        let big = json!({"group_dispatches": [{"meter_ids": ids, "partner_references": refs, "timeslots": day}]});
        assert_eq!(check_counts(big.to_string().as_bytes(), &limits), Ok(()));
    }

    #[test]
    fn counts_every_dispatch_entry() {
        let limits = LimitsConfig {
            max_meter_ids: 3,
            max_timeslots: 2,
            ..LimitsConfig::default()
        };
        let b = |v: serde_json::Value| v.to_string().into_bytes();
        let ok = json!({"meter_dispatches": [{"meter_id": "a", "timeslots": [{}]}],
                        "group_dispatches": [{"meter_ids": ["b", "c"], "timeslots": [{}]}]});
        // Two ids in each of two timeslots are four stored references.
        let product =
            json!({"group_dispatches": [{"meter_ids": ["b", "c"], "timeslots": [{}, {}]}]});
        assert!(check_counts(&b(product), &limits).is_err());
        // A `meter_id` beside the list (before or after it) does not make it count as one.
        for product in [
            json!({"group_dispatches": [{"meter_ids": ["b", "c"], "meter_id": "x", "timeslots": [{}, {}]}]}),
            json!({"group_dispatches": [{"meter_id": "x", "meter_ids": ["b", "c"], "timeslots": [{}, {}]}]}),
        ] {
            assert!(check_counts(&b(product), &limits).is_err());
        }
        assert_eq!(check_counts(&b(ok), &limits), Ok(()));
        let ids =
            json!({"group_dispatches": [{"meter_ids": ["a", "b"]}, {"meter_ids": ["c", "d"]}]});
        let e = check_counts(&b(ids), &limits).unwrap_err().to_string();
        assert!(
            e.contains("holds 4 meter ids") && e.contains("limits.max_meter_ids"),
            "{e}"
        );
        let slots = json!({"meter_dispatches": [{"meter_id": "a", "timeslots": [{}, {}, {}]}]});
        let e = check_counts(&b(slots), &limits).unwrap_err().to_string();
        assert!(e.contains("limits.max_timeslots"), "{e}");
        // Bulk anywhere else in the body counts too.
        let bulk = format!(
            r#"{{"meter_dispatches":[],"x":[{}]}}"#,
            vec!["{}"; 20_000].join(",")
        );
        let e = check_counts(bulk.as_bytes(), &limits)
            .unwrap_err()
            .to_string();
        assert!(e.contains("JSON objects"), "{e}");
        let bulk = format!(
            r#"{{"meter_dispatches":[],"x":[{}]}}"#,
            vec!["1"; 20_000].join(",")
        );
        let e = check_counts(bulk.as_bytes(), &limits)
            .unwrap_err()
            .to_string();
        assert!(e.contains("JSON values"), "{e}");
    }
}
