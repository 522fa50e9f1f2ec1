//! `upload`: get big files over slow, flaky uplinks, unattended, without losing a byte.
//!
//! Data flows one way: `cli` (parses, prints) -> engine (`estimate`, `send`, `queue`)
//! -> destination (`send::destination`: where bytes go, over `client`, `protocol` and `tls`).
//! `server` is the other end. Only `store` speaks SQL; only `cli` prints.

pub mod cli;
pub mod client;
pub mod config;
pub mod delta;
pub mod estimate;
pub mod outage;
pub mod polite;
pub mod protocol;
pub mod queue;
pub mod s3;
pub mod schedule;
pub mod send;
pub mod server;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod units;
