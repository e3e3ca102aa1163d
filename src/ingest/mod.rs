//! Ingest: turn the bytes of a Leap webhook into plain values — accepted timeslots and
//! rejected ones with their reasons — without ever refusing a real dispatch over something
//! we can handle (SPEC §2.2). Authentication of the request lives in [`auth`].

pub(crate) mod auth;
mod bounds;
mod parse;
mod timeslot;

pub(crate) use bounds::BoundedError;
pub use parse::{parse_bounded, parse_limited, parse_notification};
pub(crate) use timeslot::{KW_RANGE, RejectReason};

use crate::model::{Kind, Timeslot};
use serde::Serialize;

/// A notification that is Leap's (structurally), split into what we keep and what we reject.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedNotification {
    pub(crate) integration_test_notification: bool,
    pub(crate) communication_test: bool,
    pub timeslots: Vec<Timeslot>,
    pub rejected: Vec<RejectedTimeslot>,
}

/// SPEC §2.2: one bad timeslot is stored with its reason; the rest of the notification stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedTimeslot {
    pub(crate) kind: Kind,
    pub(crate) event_id: Option<String>,
    pub(crate) meter_ids: Vec<String>,
    /// Why, in words (stored; may be reworded).
    pub reason: String,
    /// Why, as a closed set: the metric label (not stored; counted at ingest).
    #[serde(skip)]
    pub(crate) code: RejectReason,
    /// The timeslot object exactly as received.
    pub(crate) raw: serde_json::Value,
    /// SPEC §2.13: it says `cancelled: true` under a valid event id. The cancellation is
    /// applied to the stored timeslot even though the rest of the revision is rejected.
    pub(crate) cancels: bool,
}

/// Why a request body is not a Leap notification at all (→ 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotificationError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// Valid JSON this parser cannot hold (`1e400`).
    #[error(
        "body is JSON, but the number at line {line} column {column} is too large to read (beyond a 64-bit float); Leap's kW values and priorities are small numbers: send it as one"
    )]
    NumberTooLarge { line: usize, column: usize },
    #[error(
        "body is JSON but not an object; a Leap notification is an object with meter_dispatches or group_dispatches"
    )]
    NotObject,
    #[error(
        "neither meter_dispatches nor group_dispatches is present; this is not a Leap dispatch notification"
    )]
    NoDispatches,
    #[error("{field}: expected {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
}
