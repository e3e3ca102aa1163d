//! A group timeslot's meter list, stored once (migration 6, issue 17). A 1,000-meter group
//! carries ~460 KB of `meter_ids` and `partner_references`; copying them into every
//! timeslot row and every revision wrote ~1.8 MB per notification. The lists live in
//! `meter_groups`, keyed by a SHA-256 of their JSON text exactly as received (order kept,
//! so every reader sees the lists it saw before), and rows name that key in `meter_group`
//! with empty lists in `content`. Two rows compare equal (SPEC §2.3 duplicates) exactly when
//! their content and their key are equal, which is when their full JSON was equal before.

use super::StoreError;
use crate::model::{Kind, Timeslot};
use rusqlite::{Connection, OptionalExtension, params};

/// A timeslot as stored: its content without the group lists, and the lists' key.
pub(crate) struct StoredForm {
    pub(crate) content: String,
    pub(crate) group: Option<Lists>,
}

/// A group's two lists as JSON text, and their content address.
pub(crate) struct Lists {
    pub(crate) hash: String,
    meter_ids: String,
    partner_references: String,
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl StoredForm {
    /// Meter timeslots keep their one meter inline; group timeslots move their lists out.
    pub(crate) fn of(mut slot: Timeslot) -> Result<StoredForm, StoreError> {
        StoredForm::of_mut(&mut slot)
    }

    /// [`StoredForm::of`] without copying the lists: they are lent out of `slot` while its
    /// content is written, and put back.
    pub(crate) fn of_mut(slot: &mut Timeslot) -> Result<StoredForm, StoreError> {
        if slot.kind != Kind::Group {
            let content = serde_json::to_string(slot).map_err(corrupt)?;
            return Ok(StoredForm {
                content,
                group: None,
            });
        }
        let meter_ids = std::mem::take(&mut slot.meter_ids);
        let refs = std::mem::take(&mut slot.partner_references);
        let content = serde_json::to_string(slot);
        let lists = (
            serde_json::to_string(&meter_ids),
            serde_json::to_string(&refs),
        );
        slot.meter_ids = meter_ids;
        slot.partner_references = refs;
        Ok(StoredForm {
            content: content.map_err(corrupt)?,
            group: Some(Lists::new(
                lists.0.map_err(corrupt)?,
                lists.1.map_err(corrupt)?,
            )),
        })
    }

    pub(crate) fn key(&self) -> Option<&str> {
        self.group.as_ref().map(|g| g.hash.as_str())
    }

    /// Make sure the lists this form names are stored (once: the key is their content).
    pub(crate) fn save_lists(&self, tx: &Connection) -> Result<(), StoreError> {
        let Some(g) = &self.group else {
            return Ok(());
        };
        let known: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM meter_groups WHERE hash = ?1)")?
            .query_row([&g.hash], |r| r.get(0))?;
        if !known {
            tx.prepare_cached(
                "INSERT INTO meter_groups (hash, meter_ids, partner_references) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![g.hash, g.meter_ids, g.partner_references])?;
        }
        Ok(())
    }
}

impl Lists {
    fn new(meter_ids: String, partner_references: String) -> Lists {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        h.update(meter_ids.as_bytes());
        // A separator no JSON array text contains, so ([a],[b]) and ([a,b],[]) differ.
        h.update(b"\0");
        h.update(partner_references.as_bytes());
        let hash = h
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Lists {
            hash,
            meter_ids,
            partner_references,
        }
    }
}

/// Read a stored row back into the timeslot it was: `content`, plus the group lists when
/// the row names them (`meter_ids`/`partner_references` come from the `meter_groups` join).
pub(crate) fn load(
    content: &str,
    meter_ids: Option<String>,
    partner_references: Option<String>,
) -> Result<Timeslot, StoreError> {
    let mut slot: Timeslot = serde_json::from_str(content).map_err(corrupt)?;
    if let (Some(ids), Some(refs)) = (meter_ids, partner_references) {
        slot.meter_ids = serde_json::from_str(&ids).map_err(corrupt)?;
        slot.partner_references = serde_json::from_str(&refs).map_err(corrupt)?;
    }
    Ok(slot)
}

/// The current timeslot row of an event, with its lists (for a cancellation, SPEC §2.13).
pub(crate) fn current(
    tx: &Connection,
    kind: Kind,
    event_id: &str,
) -> Result<Option<(Timeslot, bool)>, StoreError> {
    let row: Option<(String, bool, Option<String>, Option<String>)> = tx
        .query_row(
            "SELECT t.content, t.cancelled_final, g.meter_ids, g.partner_references
             FROM timeslots t LEFT JOIN meter_groups g ON g.hash = t.meter_group
             WHERE t.kind=?1 AND t.event_id=?2",
            params![kind.as_str(), event_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    row.map(|(content, fin, ids, refs)| Ok((load(&content, ids, refs)?, fin)))
        .transpose()
}

/// Migration 6, after its SQL: move the lists of every group row already stored into
/// `meter_groups`, in place. Rows are rewritten from their parsed content, which is what
/// a new delivery of the same timeslot is compared with, so a redelivery after the
/// upgrade is still a duplicate.
pub(super) fn migrate(tx: &Connection) -> Result<(), StoreError> {
    for table in ["timeslots", "timeslot_revisions"] {
        let rows: Vec<(i64, String)> = tx
            .prepare(&format!(
                "SELECT rowid, content FROM {table} WHERE kind = 'group' AND meter_group IS NULL"
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (rowid, content) in rows {
            let form = StoredForm::of(load(&content, None, None)?)?;
            form.save_lists(tx)?;
            tx.execute(
                &format!("UPDATE {table} SET content = ?1, meter_group = ?2 WHERE rowid = ?3"),
                params![form.content, form.key(), rowid],
            )?;
        }
    }
    Ok(())
}

/// Lists no row names any more (their revisions were pruned, SPEC §2.5).
pub(crate) fn prune(conn: &Connection) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM meter_groups WHERE hash NOT IN
           (SELECT meter_group FROM timeslots WHERE meter_group IS NOT NULL
            UNION SELECT meter_group FROM timeslot_revisions WHERE meter_group IS NOT NULL)",
        [],
    )?)
}
