//! What the webhook side counts, for `/metrics`. Every label is a variant of a fixed set
//! (issue 16.2): the request's result, the timeslot's outcome, the rejection's reason.

use crate::ingest::RejectReason;
use crate::metrics::{EnumCounter, Histogram, RequestResult, TimeslotOutcome, gauge};
use std::sync::atomic::{AtomicU64, Ordering};

const ACK_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// What the webhook side counts.
pub(crate) struct IngestMetrics {
    pub(crate) requests: EnumCounter<RequestResult>,
    pub(crate) timeslots: EnumCounter<TimeslotOutcome>,
    pub(crate) rejected_by_reason: EnumCounter<RejectReason>,
    pub(crate) ack_latency: Histogram,
    pub(crate) last_notification_unix: AtomicU64,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        IngestMetrics {
            requests: EnumCounter::default(),
            timeslots: EnumCounter::default(),
            rejected_by_reason: EnumCounter::default(),
            ack_latency: Histogram::new(ACK_BOUNDS),
            last_notification_unix: AtomicU64::new(0),
        }
    }
}

impl IngestMetrics {
    pub(crate) fn render(&self, out: &mut String) {
        self.requests.render(
            out,
            "leap_edge_webhook_requests_total",
            "result",
            "Webhook requests by result.",
        );
        self.timeslots.render(
            out,
            "leap_edge_timeslots_total",
            "outcome",
            "Timeslots received by outcome.",
        );
        self.rejected_by_reason.render(
            out,
            "leap_edge_timeslots_rejected_total",
            "reason",
            "Timeslots rejected, by reason.",
        );
        self.ack_latency.render(
            out,
            "leap_edge_ack_latency_seconds",
            "Time from request start to the 2XX, storage commit included.",
        );
        gauge(
            out,
            "leap_edge_last_notification_timestamp_seconds",
            "Unix time of the last accepted notification (0 = none since start).",
            self.last_notification_unix.load(Ordering::Relaxed) as f64,
        );
    }
}
