//! `upload run`: the scheduler daemon, in the foreground (systemd runs it as is).

use super::{Failure, Global};
use crate::config::{Flags, SettingsFor};
use crate::queue::{self, Clock, RunOptions, TokenLookup};
use crate::schedule::{self, Budget, Timetable};
use crate::store::Store;
use crate::units;
use anyhow::{Context, anyhow};
use chrono::Local;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const AFTER_HELP: &str = "\
Examples:
  upload run                                     # send the queue, then exit
  upload run --timetable \"07:00,32kbit 23:00,off\" --daemon
  upload run --timetable \"Mon-07:00,32kbit Sat-00:00,off\" --jobs 2
  upload run --until 07:00                       # stop in the morning, resume tomorrow

Timetable: entries \"HH:MM,BUDGET\" (daily) or \"Day-HH:MM,BUDGET\" (weekly); each budget holds
until the next entry. BUDGET is a rate (32kbit, 16KiB/s), off (no limit) or pause. Before a
pause the last chunk is sized to end at the boundary. `upload limit RATE` changes the budget
of a running daemon. SIGINT/SIGTERM stop within seconds; progress is kept.";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The bandwidth timetable [default: the config file's, else no limit].
    #[arg(long, value_name = "TIMETABLE")]
    pub timetable: Option<String>,
    /// Transfers sent at once; they share the budget by priority [default: the config
    /// file's jobs, else 1].
    #[arg(long, value_name = "N")]
    pub jobs: Option<u32>,
    /// Stop at this local time (e.g. 07:00 or "2026-01-02 07:00"), putting running transfers
    /// back in the queue.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Keep running when the queue is empty, waiting for new transfers (for systemd).
    #[arg(long)]
    pub daemon: bool,
    /// Mark a transfer failed when it has failed continuously this long [default: the config
    /// file's give_up_after, else 1d].
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    pub give_up_after: Option<Duration>,
    /// Bearer token for every server (per-host tokens belong in the config file).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// For https: trust the CA certificates in this PEM file instead of the system's.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// For ssh:// transfers: the ssh program and its options, e.g. "ssh -F ~/.ssh/upload_config"
    /// [default: ssh].
    #[arg(long, value_name = "COMMAND", env = "UPLOAD_SSH")]
    pub ssh_command: Option<String>,

    /// For ssh:// transfers: where `upload` is on the remote side, when not on its PATH.
    #[arg(long, value_name = "PATH", env = "UPLOAD_REMOTE_UPLOAD")]
    pub remote_upload: Option<String>,
}

pub fn run(global: &Global, args: Args) -> Result<(), Failure> {
    let settings = global.settings(Flags {
        timetable: args.timetable.clone(),
        jobs: args.jobs,
        give_up_after: args.give_up_after,
        ..Flags::default()
    })?;
    let timetable: Timetable = match &settings.timetable.value {
        None => Timetable::constant(Budget::Unlimited),
        Some(t) => t.parse().map_err(Failure::usage)?,
    };
    let jobs = settings.jobs.value;
    if jobs == 0 {
        return Err(Failure::usage(anyhow!(
            "--jobs must be at least 1, e.g. --jobs 2"
        )));
    }
    let clock = Clock::from_env().map_err(|e| Failure::usage(anyhow!(e)))?;
    let until = match &args.until {
        None => None,
        Some(u) => {
            let now = clock.now();
            let mut t = schedule::parse_local_time(u, &Local, now).map_err(Failure::usage)?;
            // A bare time already past today means tomorrow's.
            if t <= now && schedule::parse_clock(u).is_some() {
                t += chrono::Duration::days(1);
            }
            Some(t)
        }
    };
    let flag_token = match &args.token_file {
        Some(f) => Some(super::send::read_token_file(f)?),
        None => None,
    };
    let tokens: TokenLookup = {
        let per_host = global.host_tokens()?;
        let env = std::env::var("UPLOAD_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        Arc::new(move |host: &str| {
            per_host
                .get(host)
                .cloned()
                .or_else(|| flag_token.clone())
                .or_else(|| env.clone())
        })
    };
    // Checked now, not at each transfer's start: a bad file would fail every one of them.
    if let Some(ca) = &args.ca {
        crate::tls::client_config(Some(ca)).map_err(Failure::usage)?;
    }
    let opts = RunOptions {
        jobs: jobs as usize,
        timetable,
        until,
        daemon: args.daemon,
        give_up_after: settings
            .give_up_after_for(SettingsFor::Run)
            .unwrap_or(crate::config::RUN_GIVE_UP_AFTER),
        tokens,
        ca: args.ca,
        ssh: crate::send::SshOptions {
            command: args.ssh_command,
            remote_upload: args.remote_upload,
        },
        clock,
    };
    let store = Store::open(&global.db_path()?).context("opening the state database")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    tracing::info!(jobs = opts.jobs, timetable = %opts.timetable, "upload run");
    let report = runtime
        .block_on(queue::run(store, opts, super::send::shutdown_signal()))
        .context("running the queue")?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    tracing::info!(
        done = report.done.len(),
        failed = report.failed.len(),
        "stopped"
    );
    Ok(())
}
