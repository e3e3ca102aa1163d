//! Manual overrides as the technician set them, so one outlives a daemon restart: a
//! maintenance `hold` must not end silently at a crash. Each still ends at its own time.

use super::{StoreError, parse_ts, ts};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

/// One meter's override as stored: the action's name (`hold`, `charge`, `discharge`,
/// `release`), its power for charge and discharge, and its end.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SavedOverride {
    pub(crate) meter_id: String,
    pub(crate) action: String,
    pub(crate) kw: Option<f64>,
    pub(crate) until: DateTime<Utc>,
}

/// Set (or replace) the meters' overrides in one transaction.
pub(crate) fn save(
    c: &mut Connection,
    all: &[SavedOverride],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    save_if(c, all, now, || true).map(|_| ())
}

/// [`save`], committed only if `still_wanted()` says so once the rows are written (the
/// writes may have waited seconds for the database's lock); false: nothing was saved.
pub(crate) fn save_if(
    c: &mut Connection,
    all: &[SavedOverride],
    now: DateTime<Utc>,
    still_wanted: impl FnOnce() -> bool,
) -> Result<bool, StoreError> {
    let tx = c.transaction()?;
    // Ended ones are tidied here, not when read: a restart must restore overrides from a
    // database it cannot write.
    tx.execute("DELETE FROM overrides WHERE until <= ?1", [ts(now)])?;
    for o in all {
        tx.execute(
            "INSERT INTO overrides (meter_id, action, kw, until, set_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (meter_id) DO UPDATE SET action = ?2, kw = ?3, until = ?4, set_at = ?5",
            params![o.meter_id, o.action, o.kw, ts(o.until), ts(now)],
        )?;
    }
    if !still_wanted() {
        return Ok(false);
    }
    tx.commit()?;
    Ok(true)
}

/// Forget one meter's override, or every one.
pub(crate) fn delete(c: &Connection, meter: Option<&str>) -> Result<usize, StoreError> {
    Ok(match meter {
        Some(m) => c.execute("DELETE FROM overrides WHERE meter_id = ?1", [m])?,
        None => c.execute("DELETE FROM overrides", [])?,
    })
}

/// The overrides still in force at `now`. Only reads: a database that cannot be written
/// (locked, full) must not stop a technician's hold from being restored.
pub(crate) fn active(c: &Connection, now: DateTime<Utc>) -> Result<Vec<SavedOverride>, StoreError> {
    let mut st = c.prepare(
        "SELECT meter_id, action, kw, until FROM overrides WHERE until > ?1 ORDER BY meter_id",
    )?;
    let rows = st.query_map([ts(now)], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<f64>>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        // One damaged row (a wrong type, an unreadable end) must not keep every other
        // override, and dispatch, waiting: it is skipped and named.
        let (meter_id, action, kw, until) = match row {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "saved manual override row unreadable; not restored");
                continue;
            }
        };
        let Ok(until) = parse_ts(&until) else {
            tracing::warn!(meter_id = %meter_id, until = %until,
                "saved manual override has an unreadable end; not restored");
            continue;
        };
        out.push(SavedOverride {
            meter_id,
            action,
            kw,
            until,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard is asked after the rows are written (they may have waited for the lock):
    /// a save no longer wanted then leaves nothing, not even its tidying of ended rows.
    #[test]
    fn a_save_no_longer_wanted_at_its_commit_leaves_nothing() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(include_str!("migrations/0009_overrides.sql"))
            .unwrap();
        let now = Utc::now();
        let o = SavedOverride {
            meter_id: "m1".into(),
            action: "hold".into(),
            kw: None,
            until: now + chrono::Duration::minutes(10),
        };
        let mut asked = false;
        let saved = save_if(&mut c, std::slice::from_ref(&o), now, || {
            asked = true;
            false
        })
        .unwrap();
        assert!(asked && !saved);
        assert!(active(&c, now).unwrap().is_empty());
        assert!(save_if(&mut c, &[o], now, || true).unwrap());
        assert_eq!(active(&c, now).unwrap().len(), 1);
    }
}
