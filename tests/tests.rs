//! Integration tests, built into one binary so they link once (two cores).

mod helper;

mod cli;
mod estimate;
mod faults;
mod interop;
mod link;
mod queue;
mod s3;
mod send;
mod server;
mod tls;
