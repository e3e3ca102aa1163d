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
/// Shared, not copied, by every timeslot of a group dispatch (a 1,000-meter group's lists
/// are ~460 KB, and a day of quarter hours is 96 timeslots).
#[derive(Clone)]
pub(crate) struct Lists {
    pub(crate) hash: String,
    meter_ids: std::sync::Arc<str>,
    partner_references: std::sync::Arc<str>,
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
        let lists = Lists::new(
            json_strings(&slot.meter_ids)?,
            json_strings(&slot.partner_references)?,
        );
        StoredForm::with_lists(slot, lists)
    }

    /// A group timeslot whose lists are already known (the timeslot before it in the same
    /// dispatch carries the same ones: every timeslot of a group dispatch does).
    pub(crate) fn with_lists(slot: &mut Timeslot, lists: Lists) -> Result<StoredForm, StoreError> {
        let meter_ids = std::mem::take(&mut slot.meter_ids);
        let refs = std::mem::take(&mut slot.partner_references);
        let content = serde_json::to_string(slot);
        slot.meter_ids = meter_ids;
        slot.partner_references = refs;
        Ok(StoredForm {
            content: content.map_err(corrupt)?,
            group: Some(lists),
        })
    }

    /// The stored form of every timeslot of a notification, in order.
    pub(crate) fn of_all(slots: &mut [Timeslot]) -> Result<Vec<StoredForm>, StoreError> {
        let mut forms: Vec<StoredForm> = Vec::with_capacity(slots.len());
        for i in 0..slots.len() {
            let shared = match (i.checked_sub(1), forms.last()) {
                (Some(prev), Some(StoredForm { group: Some(g), .. }))
                    if slots[i].kind == Kind::Group
                        && slots[prev].meter_ids == slots[i].meter_ids
                        && slots[prev].partner_references == slots[i].partner_references =>
                {
                    Some(g.clone())
                }
                _ => None,
            };
            forms.push(match shared {
                Some(lists) => StoredForm::with_lists(&mut slots[i], lists)?,
                None => StoredForm::of_mut(&mut slots[i])?,
            });
        }
        Ok(forms)
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
            .execute(params![g.hash, &*g.meter_ids, &*g.partner_references])?;
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
            meter_ids: meter_ids.into(),
            partner_references: partner_references.into(),
        }
    }
}

/// serde_json's text for a list of strings (compact, the same bytes), without its escaping
/// loop for strings that need none: under the size-tuned release profile that loop costs
/// a call per byte, and a 1,000-meter group's lists are ~460 KB.
fn json_strings(list: &[String]) -> Result<String, StoreError> {
    let mut out = String::with_capacity(list.iter().map(|s| s.len() + 3).sum::<usize>() + 2);
    out.push('[');
    for (i, s) in list.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
            out.push_str(&serde_json::to_string(s).map_err(corrupt)?);
        } else {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
    }
    out.push(']');
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The lists' text is serde_json's to the byte, escapes included: stored lists and
    /// their keys must not depend on which of the two wrote them.
    #[test]
    fn list_text_is_serde_jsons() {
        let cases: [&[&str]; 4] = [
            &[],
            &["abae2779-e392-4f00-b0cf-32e716204f78"],
            &[
                "",
                "a\"b",
                "back\\slash",
                "tab\tnl\n\u{1}",
                "\u{7f}é€😀",
                "/",
            ],
            &["x", "y", "z"],
        ];
        for case in cases {
            let list: Vec<String> = case.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                json_strings(&list).unwrap(),
                serde_json::to_string(&list).unwrap()
            );
        }
    }
}
