//! `upload send FILE URL`: runs the send engine and shows its events as a progress bar, as
//! plain lines (when stderr is not a terminal), or as JSON lines (`--json`).

use super::{Failure, Global, exit};
use crate::client::ClientError;
use crate::send::{self, Event, SendError, SendOptions};
use crate::store::Store;
use crate::throttle::{Gate, Throttle};
use crate::units::{self, Rate, Size, format_byte_rate, format_duration, format_size};
use anyhow::{Context, anyhow};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const EXAMPLES: &str = "\
Examples:
  upload send debian.iso http://server:8080/files/
  upload send debian.iso http://server:8080/files/ --limit 100kbit --token-file ~/.upload-token
  upload send debian.iso http://server:8080/files/ --json
  upload send debian.iso https://files.example.org/files/ --ca /etc/upload/ca.pem

Rerunning the same command after a crash, kill, reboot or lost link resumes from what the
server holds; progress is saved after every acknowledged chunk.
";

/// Examples, then the exit statuses (one table, in `exit`, for help and README alike).
pub fn after_help() -> String {
    format!("{EXAMPLES}\n{}", super::exit::TABLE)
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file to upload.
    pub file: PathBuf,

    /// The server's tus creation URL, e.g. http://server:8080/files/
    pub url: String,

    /// Bytes per request, e.g. 1MiB [default: about 20 s at --limit; without a limit it starts
    /// at 256 KiB and follows the confirmed rate].
    #[arg(long, value_name = "SIZE")]
    pub chunk: Option<Size>,

    /// Throttle to this rate, e.g. 100kbit or 12KiB/s [default: the config file's limit,
    /// else unlimited].
    #[arg(long, value_name = "RATE")]
    pub limit: Option<Rate>,

    /// The name to publish under on the server [default: the file's name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Read the bearer token from this file (its first line). Or set UPLOAD_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// For https: trust the CA certificates in this PEM file instead of the system's.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Give up after this many failed attempts in a row [default: retry forever].
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,

    /// Give up when the server has been unreachable or failing for this long, e.g. 12h
    /// [default: the config file's give_up_after, else never].
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    pub give_up_after: Option<Duration>,

    /// Forget an unfinished upload of this file to this URL and start from the beginning.
    #[arg(long)]
    pub restart: bool,

    /// A connection that moves no data for this long is dropped and reopened.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, default_value = "10s")]
    pub stall_timeout: Duration,

    /// Print newline-delimited JSON events on stdout instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

/// The first line of a token file that is not empty or a `#` comment.
pub fn read_token_file(f: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(f)
        .with_context(|| format!("cannot read the token file \"{}\"", f.display()))
        .map_err(Failure::usage)?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| {
            Failure::usage(anyhow!(
                "the token file \"{}\" holds no token: expected one line, e.g. 3f9c2a…",
                f.display()
            ))
        })?;
    Ok(token.to_string())
}

/// A line on stdout. A reader that went away (a closed pipe) must not stop an upload that
/// runs unattended, so write errors are ignored instead of panicking as `println!` does.
fn say_out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// A line on stderr, likewise.
fn say_err(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The token from `--token-file`, else `UPLOAD_TOKEN`, else the config file's for the host.
fn token(global: &Global, file: Option<&Path>, url: &str) -> Result<Option<String>, Failure> {
    if let Some(f) = file {
        return read_token_file(f).map(Some);
    }
    if let Some(t) = std::env::var("UPLOAD_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok(Some(t));
    }
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
    {
        Some(host) => global.token_for(&host),
        None => Ok(None),
    }
}

/// The exit status a failure maps to.
fn exit_code(e: &SendError) -> u8 {
    match e {
        SendError::Url(_) | SendError::Tls(_) => exit::USAGE,
        SendError::SourceMissing { .. } | SendError::SourceUnreadable { .. } => exit::SOURCE,
        SendError::NotAFile { .. } => exit::NOT_A_FILE,
        SendError::SourceChanged { .. } | SendError::ChangedAfterPublished { .. } => exit::CHANGED,
        SendError::GaveUp { .. } => exit::NETWORK,
        SendError::Busy { .. } => exit::BUSY,
        SendError::Interrupted => exit::INTERRUPTED,
        SendError::Store(_) => exit::FAILURE,
        SendError::Server(c) => match c {
            ClientError::Auth { .. } | ClientError::Untrusted(_) => exit::AUTH,
            ClientError::TooLarge(_) => exit::TOO_LARGE,
            ClientError::Verification(_) => exit::VERIFY,
            ClientError::BadUrl { .. } => exit::USAGE,
            _ => exit::PROTOCOL,
        },
    }
}

/// Renders events for people: a bar on a terminal, a line every few seconds otherwise.
struct Display {
    bar: Option<ProgressBar>,
    last_line: Mutex<Option<Instant>>,
}

impl Display {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{wide_bar:.cyan/blue} {bytes}/{total_bytes} confirmed  {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Display {
            bar,
            last_line: Mutex::new(None),
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => say_err(text),
        }
    }

    fn event(&self, e: &Event) {
        match e {
            Event::Started {
                size,
                offset,
                upload_url,
                resumed,
            } => {
                if *resumed {
                    self.line(&format!(
                        "resuming {upload_url} at {} of {}",
                        format_size(*offset),
                        format_size(*size)
                    ));
                } else {
                    self.line(&format!("uploading {} to {upload_url}", format_size(*size)));
                }
                if let Some(bar) = &self.bar {
                    bar.set_length(*size);
                    bar.set_position(*offset);
                }
            }
            Event::Notice(text) => self.line(&format!("note: {text}")),
            Event::Retry {
                attempt,
                delay,
                error,
            } => self.line(&format!(
                "retry {attempt} in {}: {error}",
                format_duration(*delay)
            )),
            Event::Progress {
                offset,
                size,
                rate_bps,
                eta_seconds,
            } => {
                let msg = format!(
                    "{}  ETA {}",
                    format_byte_rate(rate_bps / 8.0),
                    eta_seconds.map_or("?".into(), |s| format_duration(Duration::from_secs_f64(s)))
                );
                match &self.bar {
                    Some(bar) => {
                        bar.set_position(*offset);
                        bar.set_message(msg);
                    }
                    None => {
                        let mut last = self.last_line.lock().expect("display lock");
                        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
                        if due || offset == size {
                            *last = Some(Instant::now());
                            say_err(&format!(
                                "{} of {} confirmed  {msg}",
                                format_size(*offset),
                                format_size(*size)
                            ));
                        }
                    }
                }
            }
            Event::Done(s) => {
                if let Some(bar) = &self.bar {
                    bar.finish_and_clear();
                }
                let name = s
                    .published_as
                    .as_deref()
                    .map(|n| format!(" as {n}"))
                    .unwrap_or_default();
                say_err(&format!(
                    "done: {} published{name}, sha256 {} ({} sent in {}, {} re-sent)",
                    format_size(s.size),
                    s.sha256,
                    format_size(s.bytes_sent),
                    format_duration(Duration::from_secs_f64(s.seconds)),
                    format_size(s.resent_bytes)
                ));
            }
        }
    }
}

/// The event as one JSON line.
fn json_event(e: &Event) -> serde_json::Value {
    match e {
        Event::Started {
            size,
            offset,
            upload_url,
            resumed,
        } => {
            json!({"event": "started", "size": size, "offset": offset, "upload_url": upload_url, "resumed": resumed})
        }
        Event::Notice(text) => json!({"event": "notice", "message": text}),
        Event::Retry {
            attempt,
            delay,
            error,
        } => {
            json!({"event": "retry", "attempt": attempt, "delay_seconds": delay.as_secs_f64(), "error": error})
        }
        Event::Progress {
            offset,
            size,
            rate_bps,
            eta_seconds,
        } => {
            json!({"event": "progress", "offset": offset, "size": size, "rate_bps": rate_bps, "eta_seconds": eta_seconds})
        }
        Event::Done(s) => json!({
            "event": "done",
            "sha256": s.sha256,
            "size": s.size,
            "bytes_sent": s.bytes_sent,
            "resent_bytes": s.resent_bytes,
            "published_as": s.published_as,
            "upload_url": s.upload_url,
            "seconds": s.seconds,
        }),
    }
}

/// A chunk of 0 bytes can never move an upload forward.
pub fn check_chunk(chunk: Option<Size>) -> Result<(), Failure> {
    if chunk.is_some_and(|c| c.bytes() == 0) {
        return Err(Failure::usage(anyhow!(
            "--chunk must be more than 0 bytes, e.g. --chunk 1MiB"
        )));
    }
    Ok(())
}

pub fn run(global: &Global, args: Args) -> Result<(), Failure> {
    check_chunk(args.chunk)?;
    let token = token(global, args.token_file.as_deref(), &args.url)?;
    let settings = global.settings(crate::config::Flags {
        limit: args.limit,
        give_up_after: args.give_up_after,
        ..Default::default()
    })?;
    let limit = settings.limit.value;
    let db = global.db_path()?;
    let store = Store::open(&db).context("opening the state database")?;
    let opts = SendOptions {
        file: args.file,
        url: args.url,
        name: args.name,
        chunk: args.chunk.map(Size::bytes),
        limit,
        token,
        ca: args.ca,
        max_retries: args.max_retries,
        restart: args.restart,
        stall_timeout: args.stall_timeout,
        give_up_after: settings.give_up_after_for(crate::config::SettingsFor::Send),
        transfer_id: None,
        gate: Gate::always_open(),
    };
    let json = args.json;
    let display = Display::new();
    let events = move |e: Event| {
        if json {
            say_out(&json_event(&e).to_string());
        } else {
            display.event(&e);
        }
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let throttle = Throttle::new(opts.limit);
        send::send(store, opts, throttle, &events, shutdown_signal()).await
    });
    // Do not wait for blocked reads or lingering connections on the way out.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            let code = exit_code(&e);
            if json {
                say_out(
                    &json!({"event": "error", "message": e.to_string(), "exit_code": code})
                        .to_string(),
                );
            }
            Err(Failure::new(code, e))
        }
    }
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
