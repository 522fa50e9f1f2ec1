//! `upload send FILE URL`: runs the send engine and shows its events as a progress bar, as
//! plain lines (when stderr is not a terminal), or as JSON lines (`--json`).

use super::{Failure, Global, exit};
use crate::client::ClientError;
use crate::outage::{Outage, RetryReport};
use crate::polite::{self, Steer};
use crate::send::{self, Event, SendError, SendOptions};
use crate::store::Store;
use crate::throttle::{Gate, Throttle};
use crate::units::{self, Rate, RateUnit, Size, format_duration, format_rate, format_size};
use anyhow::{Context, anyhow};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EXAMPLES: &str = "\
Examples:
  upload send debian.iso ssh://alice@server/srv/inbox/      (over ssh: no server to set up)
  upload send debian.iso ssh://server:2222/~/inbox/ --limit 100kbit
  upload send debian.iso http://server:8080/files/
  upload send debian.iso http://server:8080/files/ --limit 100kbit --token-file ~/.upload-token
  upload send debian.iso http://server:8080/files/ --json
  upload send debian.iso https://files.example.org/files/ --ca /etc/upload/ca.pem
  upload send debian-rc2.iso http://server:8080/files/ --base debian-rc1.iso

A file the server already holds an older version of (--base NAME, or one of the same name)
is sent as a delta: only what the server lacks crosses the link.

  upload send debian.iso s3://my-bucket/images/ --limit 100kbit
  upload send debian.iso s3://my-bucket/images/debian.iso --endpoint http://127.0.0.1:9000

For s3:// the credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and
AWS_SESSION_TOKEN), else the AWS_PROFILE (or default) profile in ~/.aws/credentials; the region
from AWS_REGION, AWS_DEFAULT_REGION or ~/.aws/config.

Rerunning the same command after a crash, kill, reboot or lost link resumes from what the
server holds; progress is saved after every acknowledged chunk.

ssh://[USER@]HOST[:PORT]/DIR/ runs the system's ssh (your keys, agent, ~/.ssh/config,
ProxyJump and known_hosts) with BatchMode=yes, and `upload serve --stdio --dir DIR` on HOST
(`upload` must be on the remote PATH, or give --remote-upload PATH); /~/DIR/ is under the
remote home. Files are published in DIR once verified, exactly as by `upload serve --dir`.
";

/// Examples, then the exit statuses (one table, in `exit`, for help and README alike).
pub fn after_help() -> String {
    format!("{EXAMPLES}\n{}", super::exit::TABLE)
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The file to upload.
    pub file: PathBuf,

    /// Where to: a tus creation URL, e.g. http://server:8080/files/, a directory over ssh,
    /// e.g. ssh://user@server/srv/inbox/, or an S3 object, s3://BUCKET/KEY (a KEY ending in /
    /// gets the file's name added).
    pub url: String,

    /// For s3:// URLs: the S3-compatible store to use instead of AWS, e.g.
    /// http://127.0.0.1:9000 (MinIO, Ceph, Garage), addressed path-style [default:
    /// AWS_ENDPOINT_URL, else AWS in AWS_REGION].
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,

    /// Bytes per request, e.g. 1MiB [default: about 20 s at --limit; without a limit it starts
    /// at 256 KiB and follows the confirmed rate]. For s3:// it sets the part size, in whole
    /// MiB, at least S3's 5 MiB and enough for 10 000 parts.
    #[arg(long, value_name = "SIZE")]
    pub chunk: Option<Size>,

    /// Throttle to this rate, e.g. 100kbit or 12KiB/s [default: the config file's limit,
    /// else unlimited].
    #[arg(long, value_name = "RATE")]
    pub limit: Option<Rate>,

    /// Use what the uplink has spare and yield within seconds to any other traffic on it:
    /// the rate is steered so the queueing delay this upload adds at the modem stays at or
    /// below about 100 ms (like Windows' background transfers). With --limit, never above it.
    #[arg(long)]
    pub polite: bool,

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

    #[command(flatten)]
    pub base: BaseArgs,

    /// Print newline-delimited JSON events on stdout instead of a progress bar.
    #[arg(long)]
    pub json: bool,

    /// For ssh:// URLs: the ssh program and its options, split as a shell would, e.g.
    /// "ssh -F ~/.ssh/upload_config" [default: ssh].
    #[arg(long, value_name = "COMMAND", env = "UPLOAD_SSH")]
    pub ssh_command: Option<String>,

    /// For ssh:// URLs: where `upload` is on the remote side, when not on its PATH, e.g.
    /// /opt/upload/bin/upload [default: upload].
    #[arg(long, value_name = "PATH", env = "UPLOAD_REMOTE_UPLOAD")]
    pub remote_upload: Option<String>,
}

/// `--base NAME` and `--no-base`, of `upload send` and `upload queue add` (issue 13).
#[derive(Debug, Clone, clap::Args)]
pub struct BaseArgs {
    /// Send only what the server lacks: a delta against NAME, a file already published on
    /// that server (in this token's namespace), e.g. --base debian-rc1.iso [default: a
    /// published file of the same name, if the server holds one]. If the server no longer has
    /// it, or it changed, the whole file is sent.
    #[arg(long, value_name = "NAME", conflicts_with = "no_base")]
    pub base: Option<String>,

    /// Send the whole file, even if the server holds a file of the same name.
    #[arg(long)]
    pub no_base: bool,
}

impl BaseArgs {
    pub fn choice(&self) -> send::BaseChoice {
        match (&self.base, self.no_base) {
            (_, true) => send::BaseChoice::Full,
            (Some(name), false) => send::BaseChoice::Named(name.clone()),
            (None, false) => send::BaseChoice::SameName,
        }
    }
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
pub(super) fn token(
    global: &Global,
    file: Option<&Path>,
    url: &str,
) -> Result<Option<String>, Failure> {
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
        SendError::Url(ClientError::Pipe { kind, .. }) => exit::for_pipe(*kind),
        SendError::Url(_) | SendError::Tls(_) | SendError::S3(_) => exit::USAGE,
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
            ClientError::BadUrl { .. }
            | ClientError::BadSshUrl { .. }
            | ClientError::NoEndpoint { .. } => exit::USAGE,
            ClientError::Pipe { kind, .. } => exit::for_pipe(*kind),
            _ => exit::PROTOCOL,
        },
    }
}

/// The rate a transfer is expected to go at before its first chunk is confirmed, and why: a
/// chunk at 128 kbit/s takes about 20 s, and a display with "?" for that long tells nothing
/// that the command line and the link history did not already know.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    pub rate: Rate,
    pub from: &'static str,
}

/// The limit, else the median goodput of recent transfers to this host, else nothing known.
fn planned_rate(store: &Store, limit: Option<Rate>, url: &str) -> Option<Planned> {
    if let Some(rate) = limit {
        return Some(Planned {
            rate,
            from: "--limit",
        });
    }
    let host = url::Url::parse(url).ok()?.host_str()?.to_string();
    let samples = store
        .recent_link_samples(Some(&host), crate::estimate::HISTORY_SAMPLES)
        .ok()?;
    let pairs: Vec<(u64, f64)> = samples.iter().map(|s| (s.bytes, s.seconds)).collect();
    crate::estimate::median_goodput(&pairs).map(|rate| Planned {
        rate,
        from: "link history",
    })
}

/// What the display knows, shared by the bar's redraws, the plain lines and `--json`, so
/// that all three show the same numbers.
struct View {
    size: u64,
    /// Confirmed by the server.
    offset: u64,
    started_at: Option<Instant>,
    planned: Option<Planned>,
    /// The engine's confirmed rate (bits per second) and ETA at the last acknowledgement.
    measured: Option<(f64, Option<f64>, Instant)>,
    /// Speeds are shown in the unit the limit was given in; bytes without a limit.
    unit: RateUnit,
    last_line: Option<Instant>,
    outage: Outage,
    retry_delay: Duration,
    /// What polite mode decided last, with `--polite`.
    polite: Option<tokio::sync::watch::Receiver<Option<Steer>>>,
}

/// The numbers of one progress report.
struct Figures {
    /// Floored to a tenth, so 100.0 means done.
    percent: f64,
    rate_bps: Option<f64>,
    eta_seconds: Option<f64>,
}

impl View {
    fn figures(&self, now: Instant) -> Figures {
        let percent = match self.size {
            0 => 100.0,
            size => (u128::from(self.offset) * 1000 / u128::from(size)) as f64 / 10.0,
        };
        let left = self.size.saturating_sub(self.offset) as f64 * 8.0;
        let (rate_bps, eta_seconds) = match (self.measured, self.planned, self.started_at) {
            (Some((rate, eta, at)), _, _) if rate > 0.0 => {
                let eta = eta.unwrap_or(left / rate);
                // Counting down between acknowledgements: a throttled chunk takes ~20 s.
                let since = now.saturating_duration_since(at).as_secs_f64();
                (Some(rate), Some((eta - since).max(0.0)))
            }
            (_, Some(p), Some(started)) => {
                let rate = p.rate.bits_per_second();
                let since = now.saturating_duration_since(started).as_secs_f64();
                (Some(rate), Some((left / rate - since).max(0.0)))
            }
            _ => (None, None),
        };
        Figures {
            percent,
            rate_bps,
            eta_seconds,
        }
    }

    /// "41.2 %  1.6 MiB of 4.0 MiB  250.3 kbit/s  ETA 2 min 5 s": one shape for the bar and
    /// the plain lines, the bytes those the server confirmed, short enough for 80 columns
    /// beside the bar.
    fn progress_text(&self, now: Instant) -> String {
        let f = self.figures(now);
        let polite = self.polite().map_or_else(String::new, |s| {
            format!(
                "  polite: {} at {}",
                s.state.describe(),
                format_rate(s.rate * 8.0, self.unit)
            )
        });
        format!(
            "{:.1} %  {} of {}  {}  ETA {}{polite}",
            f.percent,
            format_size(self.offset),
            format_size(self.size),
            format_rate(f.rate_bps.unwrap_or(f64::NAN), self.unit),
            f.eta_seconds.map_or_else(
                || "?".into(),
                |s| format_duration(Duration::from_secs_f64(s))
            )
        )
    }

    fn polite(&self) -> Option<Steer> {
        *self.polite.as_ref()?.borrow()
    }

    /// The bar's message: the progress, or while attempts fail, the outage.
    fn status_text(&self, now: Instant) -> String {
        match self.outage.current(now, self.retry_delay) {
            Some(r) => format!(
                "retry {} (failing for {}): {}",
                r.attempts,
                format_duration(r.failing_for),
                r.error
            ),
            None => self.progress_text(now),
        }
    }
}

/// A retry worth a line in plain output.
fn retry_line(r: &RetryReport) -> String {
    // The half-second probes of a dead link would all read "in 0 s".
    let delay = if r.delay < Duration::from_secs(1) {
        format!("{:.1} s", r.delay.as_secs_f64())
    } else {
        format_duration(r.delay)
    };
    let mut line = format!("retry {} in {delay}", r.attempts);
    if r.attempts > 1 {
        line.push_str(&format!(
            " (failing for {})",
            format_duration(r.failing_for)
        ));
    }
    format!("{line}: {}", r.error)
}

/// Renders events for people: on a terminal a bar of fixed width whose status line is redrawn
/// in place (retries included); otherwise a line every few seconds, and retries folded by
/// [`Outage`].
struct Display {
    bar: Option<ProgressBar>,
    view: Arc<Mutex<View>>,
}

/// How often the bar's status line is redrawn: the ETA counts down between acknowledgements.
const REDRAW: Duration = Duration::from_secs(1);
/// How often plain output reports progress.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

impl Display {
    fn new(planned: Option<Planned>, unit: RateUnit, terminal: bool) -> Self {
        let view = Arc::new(Mutex::new(View {
            size: 0,
            offset: 0,
            started_at: None,
            planned,
            measured: None,
            unit,
            last_line: None,
            outage: Outage::new(),
            retry_delay: Duration::ZERO,
            polite: None,
        }));
        let bar = terminal.then(|| {
            let bar = ProgressBar::new(0);
            // No bar until the size is known (a bar of 0 bytes is drawn full), only the
            // status: a server down from the start shows its retries.
            bar.set_style(ProgressStyle::with_template("{wide_msg}").expect("valid template"));
            let (redraw, view) = (bar.clone(), view.clone());
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(REDRAW);
                    // Under the view's lock, which finishing the bar also takes: a redraw
                    // after the bar was cleared would draw it again.
                    let view = view.lock().expect("display lock");
                    if redraw.is_finished() {
                        return;
                    }
                    redraw.set_message(view.status_text(Instant::now()));
                }
            });
            bar
        });
        Display { bar, view }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => say_err(text),
        }
    }

    fn redraw(&self, view: &View) {
        if let Some(bar) = &self.bar {
            bar.set_message(view.status_text(Instant::now()));
            bar.set_length(view.size);
            bar.set_position(view.offset);
        }
    }

    /// The bar goes; the error or interruption line that follows says where things stand.
    fn stop(&self) {
        let _view = self.view.lock().expect("display lock");
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// Ends an outage, if there was one, with a line that says how long it lasted.
    fn recovered(&self, v: &mut View, now: Instant) {
        if let Some(r) = v.outage.recovered(now) {
            self.line(&format!(
                "sending again after {} failed attempts over {}",
                r.attempts,
                format_duration(r.lasted)
            ));
        }
    }

    /// Confirmed and total bytes, for the interruption message.
    fn confirmed(&self) -> Option<(u64, u64)> {
        let v = self.view.lock().expect("display lock");
        v.started_at.map(|_| (v.offset, v.size))
    }

    fn event(&self, e: &Event) {
        let now = Instant::now();
        let mut v = self.view.lock().expect("display lock");
        match e {
            Event::Started {
                size,
                offset,
                upload_url,
                resumed,
            } => {
                v.size = *size;
                v.offset = *offset;
                v.started_at = Some(now);
                // The server answered: an outage before the first contact is over.
                self.recovered(&mut v, now);
                if let Some(bar) = &self.bar {
                    bar.set_style(
                        // A fixed width: a bar that shrinks and grows with the text beside it
                        // is hard to read. `wide_msg` cuts the text to the terminal's width
                        // instead of wrapping it.
                        ProgressStyle::with_template("{bar:20.cyan/blue} {wide_msg}")
                            .expect("valid template")
                            .progress_chars("=> "),
                    );
                }
                if *resumed {
                    self.line(&format!(
                        "resuming {upload_url} at {} of {} ({:.1} %)",
                        format_size(*offset),
                        format_size(*size),
                        v.figures(now).percent
                    ));
                } else {
                    self.line(&format!("uploading {} to {upload_url}", format_size(*size)));
                }
                if let (Some(p), Some(eta)) = (v.planned, v.figures(now).eta_seconds) {
                    self.line(&format!(
                        "planned: {} ({}), about {}",
                        format_rate(p.rate.bits_per_second(), v.unit),
                        p.from,
                        format_duration(Duration::from_secs_f64(eta))
                    ));
                }
                self.redraw(&v);
            }
            Event::Notice(text) => self.line(&format!("note: {text}")),
            Event::Retry {
                attempt,
                delay,
                error,
            } => {
                v.retry_delay = *delay;
                let report = v.outage.retry(now, *attempt, *delay, error);
                match (&self.bar, report) {
                    (Some(_), _) => self.redraw(&v),
                    (None, Some(r)) => say_err(&retry_line(&r)),
                    (None, None) => {}
                }
            }
            Event::Progress {
                offset,
                size,
                rate_bps,
                eta_seconds,
            } => {
                v.offset = *offset;
                v.size = *size;
                v.measured = Some((*rate_bps, *eta_seconds, now));
                self.recovered(&mut v, now);
                if self.bar.is_some() {
                    self.redraw(&v);
                } else {
                    let due = v.last_line.is_none_or(|t| t.elapsed() >= PLAIN_EVERY);
                    if due || offset == size {
                        v.last_line = Some(now);
                        say_err(&v.progress_text(now));
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

/// The event as one JSON line: the engine's fields, the same percentage, rate and ETA as the
/// bar shows, and the time (`schedule::json_time`, as in every `--json` output and
/// `--log-format json`).
fn json_event(e: &Event, view: &Mutex<View>) -> serde_json::Value {
    let now = Instant::now();
    let mut v = view.lock().expect("display lock");
    let mut line = match e {
        Event::Started {
            size,
            offset,
            upload_url,
            resumed,
        } => {
            v.size = *size;
            v.offset = *offset;
            v.started_at = Some(now);
            let f = v.figures(now);
            json!({"event": "started", "size": size, "offset": offset, "upload_url": upload_url,
                   "resumed": resumed, "percent": f.percent,
                   "planned_rate_bps": v.planned.map(|p| p.rate.bits_per_second()),
                   "planned_from": v.planned.map(|p| p.from), "eta_seconds": f.eta_seconds})
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
            v.offset = *offset;
            v.size = *size;
            v.measured = Some((*rate_bps, *eta_seconds, now));
            let f = v.figures(now);
            let mut line = json!({"event": "progress", "offset": offset, "size": size,
                   "percent": f.percent, "rate_bps": rate_bps, "eta_seconds": eta_seconds});
            if let Some(s) = v.polite() {
                line["polite"] = polite_json(&s);
            }
            line
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
    };
    line["timestamp"] = json_now();
    line
}

/// What polite mode is doing, in progress events.
fn polite_json(s: &Steer) -> serde_json::Value {
    json!({"state": s.state.word(), "rate_bps": s.rate * 8.0,
           "queue_delay_ms": s.queue_delay.as_secs_f64() * 1000.0,
           "capacity_bps": s.capacity.map(|c| c * 8.0)})
}

/// Now, as every JSON output writes a time.
fn json_now() -> serde_json::Value {
    serde_json::Value::String(crate::schedule::json_time(&chrono::Utc::now()))
}

/// Polite mode over this send's throttle, starting from the link's known rate, never above
/// `limit`; what it learns of the link goes into the history every minute.
async fn start_polite(
    store: &Store,
    throttle: &Throttle,
    limit: Option<Rate>,
    host: Option<String>,
    tx: tokio::sync::watch::Sender<Option<Steer>>,
    mut rx: tokio::sync::watch::Receiver<Option<Steer>>,
) -> (polite::Steering, tokio::task::JoinHandle<()>) {
    let db = crate::store::AsyncStore::new(store.clone());
    let params = polite::Params {
        max: limit.map(Rate::bytes_per_second),
        known_capacity: polite::known_capacity(&db, host.clone()).await,
        ..polite::Params::default()
    };
    let steering = polite::steer(throttle.uplink(), params, tx);
    let learn = tokio::spawn(async move {
        let mut learning = polite::Learning::default();
        while rx.changed().await.is_ok() {
            let steer = *rx.borrow_and_update();
            if let (Some(steer), Some(host)) = (steer, host.as_deref()) {
                // A failed write of a history sample is no reason to stop the upload.
                let _ = learning.note(&db, host, &steer).await;
            }
        }
    });
    (steering, learn)
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

/// The destination URL with `--endpoint` folded in (S3 only), so the transfer's URL says
/// where it goes and a rerun or `upload run` finds the same store.
pub fn destination_url(url: &str, endpoint: Option<&str>) -> Result<String, Failure> {
    match endpoint {
        None => Ok(url.to_string()),
        Some(e) if url.starts_with("s3://") => {
            crate::s3::with_endpoint(url, e).map_err(|e| Failure::usage(anyhow!(e)))
        }
        Some(_) => Err(Failure::usage(anyhow!(
            "--endpoint is for s3:// URLs (an S3-compatible store), e.g. upload send image.iso \
             s3://my-bucket/image.iso --endpoint http://127.0.0.1:9000"
        ))),
    }
}

pub fn run(global: &Global, mut args: Args) -> Result<(), Failure> {
    check_chunk(args.chunk)?;
    args.url = destination_url(&args.url, args.endpoint.as_deref())?;
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
        base: args.base.choice(),
        ssh: send::SshOptions {
            command: args.ssh_command,
            remote_upload: args.remote_upload,
        },
    };
    let json = args.json;
    let planned = planned_rate(&store, limit, &opts.url);
    let unit = limit.map_or(RateUnit::Bytes, Rate::unit);
    let display = Arc::new(Display::new(
        planned,
        unit,
        !json && std::io::stderr().is_terminal(),
    ));
    let shown = display.clone();
    let events = move |e: Event| {
        if json {
            say_out(&json_event(&e, &shown.view).to_string());
        } else {
            shown.event(&e);
        }
    };
    let (polite_tx, polite_rx) = tokio::sync::watch::channel(None);
    if args.polite {
        display.view.lock().expect("display lock").polite = Some(polite_rx.clone());
    }
    let host = url::Url::parse(&opts.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string));
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let throttle = Throttle::new(opts.limit);
        let _steering = match args.polite {
            true => Some(
                start_polite(&store, &throttle, limit, host, polite_tx, polite_rx.clone()).await,
            ),
            false => None,
        };
        // With --json, what polite mode does, once a second: chunks are acknowledged only
        // every ~20 s, too rarely to see it yield.
        let polite_events = (args.polite && json).then(|| {
            let mut rx = polite_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let steer = *rx.borrow_and_update();
                    if let Some(s) = steer {
                        let mut line = polite_json(&s);
                        line["event"] = "polite".into();
                        line["timestamp"] = json_now();
                        say_out(&line.to_string());
                    }
                }
            })
        });
        let result = send::send(store, opts, throttle, &events, shutdown_signal()).await;
        if let Some(task) = polite_events {
            task.abort();
        }
        result
    });
    // Do not wait for blocked reads or lingering connections on the way out.
    runtime.shutdown_timeout(Duration::from_millis(200));
    display.stop();
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            let code = exit_code(&e);
            let error = match e {
                SendError::Interrupted => anyhow!(interrupted_text(display.confirmed())),
                e => anyhow::Error::new(e),
            };
            if json {
                say_out(
                    &json!({"event": "error", "message": error.to_string(), "exit_code": code,
                            "timestamp": json_now()})
                    .to_string(),
                );
            }
            Err(Failure { code, error })
        }
    }
}

/// What Ctrl-C leaves behind, and how to go on: nothing acknowledged is lost.
fn interrupted_text(confirmed: Option<(u64, u64)>) -> String {
    let so_far = confirmed.map_or_else(String::new, |(offset, size)| {
        format!(
            " ({} of {} confirmed)",
            format_size(offset),
            format_size(size)
        )
    });
    format!("interrupted: progress is saved{so_far}; run the same command again to continue")
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
