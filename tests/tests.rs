//! Integration tests, built into one binary so they link once (two cores).

mod helper;

mod cli;
mod delta;
mod estimate;
mod faults;
mod interop;
mod link;
mod polite;
mod queue;
mod s3;
mod s3_store;
mod send;
mod server;
mod ssh;
mod tls;
