//! leap-edge: receives Leap demand-response dispatches, keeps them in SQLite, and drives
//! on-site batteries over Modbus TCP at each timeslot. See ARCHITECTURE in the README for
//! the data path: ingest → store → plan → dispatch → control → device.
//!
//! Layering: a module may import (`crate::…`) only modules on the lines above its own;
//! modules on one line do not import each other. `tests/it/layering.rs` checks this list
//! against every `crate::` path under `src/`.
//!
//! 1. model, clock, secret, alloc, metrics, systemd, seam, stage, textfmt
//! 2. config
//! 3. ingest, plan, device
//! 4. store, sim
//! 5. server
//! 6. leap
//! 7. admin
//! 8. dispatch
//! 9. intervals
//! 10. control, mqtt
//! 11. preflight, runlock
//! 12. daemon, relay
//! 13. cli

// Issue 16.3: items are `pub(crate)` unless the binary, the integration tests or the
// benches use them; the lint keeps it so. (Only the library: tests and benches are binaries.)
#![warn(unreachable_pub)]

pub mod admin;
pub(crate) mod alloc;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod device;
pub mod dispatch;
pub mod ingest;
pub mod intervals;
pub mod leap;
pub(crate) mod metrics;
pub mod model;
pub mod mqtt;
pub mod plan;
pub(crate) mod preflight;
pub mod relay;
pub(crate) mod runlock;
pub mod seam;
pub(crate) mod secret;
pub mod server;
pub mod sim;
pub(crate) mod stage;
pub mod store;
pub(crate) mod systemd;
pub(crate) mod textfmt;
