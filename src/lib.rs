//! leap-edge: receives Leap demand-response dispatches, keeps them in SQLite, and drives
//! on-site batteries over Modbus TCP at each timeslot. See ARCHITECTURE in the README for
//! the data path: ingest → store → plan → dispatch → control → device.

pub mod admin;
pub mod alloc;
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
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod plan;
pub mod relay;
pub mod secret;
pub mod server;
pub mod sim;
pub mod store;
pub mod systemd;
