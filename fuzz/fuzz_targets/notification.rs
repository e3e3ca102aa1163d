//! Any bytes as a webhook body: `parse_notification` must answer (a notification or a
//! 400 reason), never panic, and what it accepts must be storable (serialisable).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = leap_edge::ingest::parse_notification(data) {
        for t in &parsed.timeslots {
            let _ = serde_json::to_string(t).expect("an accepted timeslot serialises");
            assert!(
                t.start_time < t.end_time,
                "accepted timeslot ends before it starts"
            );
        }
        for r in &parsed.rejected {
            assert!(!r.reason.is_empty(), "a rejection always says why");
        }
    }
});
