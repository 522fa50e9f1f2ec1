//! Integration tests, built into one binary so they link once (two cores).

mod helper;

mod estimate;
mod send;
mod server;
