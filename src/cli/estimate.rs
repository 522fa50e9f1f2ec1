//! `upload estimate <SIZE|FILE>`: turns the arguments into an [`estimate::Request`], finds the
//! rate (flag, link history, default), and prints the plan for people or as JSON.

use super::{Failure, Global, exit, ordinal};
use crate::delta;
use crate::estimate::{
    self, DeltaRequest, Estimate, Framing, RateSource, Recommendation, RemoteBuildRequest,
};
use crate::schedule::{self, Window};
use crate::store::Store;
use crate::units::{self, Rate, Size, format_duration, format_size};
use anyhow::{Context, anyhow};
use chrono::{DateTime, FixedOffset, Local};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const AFTER_HELP: &str = "\
Examples:
  upload estimate 1GiB
  upload estimate debian.iso --rate 128kbit --window 23:00-07:00
  upload estimate 1GB --rate 128kbit --window 23:00-07:00 --start \"2026-01-01 23:00\"
  upload estimate 1GiB --remote-build 40m --sources 25MiB
  upload estimate 4.7GB --to https://files.example.org/files/ --json
  upload estimate RC2.iso --base RC1.iso --to https://files.example.org/files/
  upload estimate RC2.iso --base-file RC1.iso

Without --rate, the rate is the median goodput of the last 20 transfers recorded in the
state database (of --to's host when given), else 128 kbit/s.";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to send: a size (1GiB, 700MB, 4.7GB, 1048576) or a file whose size is used.
    #[arg(value_name = "SIZE|FILE")]
    pub target: String,

    /// The uplink rate, in bits (128kbit, 1.5Mbit) or bytes per second (16KiB/s).
    #[arg(long, value_name = "RATE")]
    pub rate: Option<Rate>,

    /// The destination host or upload URL: picks its link history; https adds TLS overhead.
    #[arg(long, value_name = "HOST|URL")]
    pub to: Option<String>,

    /// Upload only inside this daily window, local time (repeatable), e.g. 23:00-07:00.
    #[arg(long = "window", value_name = "START-END")]
    pub windows: Vec<Window>,

    /// When the upload starts, local time [default: now], e.g. "2026-01-01 23:00" or 23:00.
    #[arg(long, value_name = "TIME")]
    pub start: Option<String>,

    /// Compare with building remotely: how long the build takes there, e.g. 40m or 1h30m.
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration, requires = "sources")]
    pub remote_build: Option<Duration>,

    /// With --remote-build: the size of the sources or patch to send instead, e.g. 25MiB.
    #[arg(long, value_name = "SIZE", requires = "remote_build")]
    pub sources: Option<Size>,

    /// Plan a delta upload against NAME, a file published on the server of --to URL: its
    /// index is fetched and the file matched against it (the token as for `upload send`:
    /// UPLOAD_TOKEN or the configuration file).
    #[arg(
        long,
        value_name = "NAME",
        requires = "to",
        conflicts_with = "base_file"
    )]
    pub base: Option<String>,

    /// Plan a delta upload against a local copy of the base, e.g. --base-file RC1.iso: the
    /// same figures as --base, with no network.
    #[arg(long, value_name = "OLD")]
    pub base_file: Option<PathBuf>,

    /// Chunk size the upload would use [default: about 20 s of link time].
    #[arg(long, value_name = "SIZE")]
    pub chunk: Option<Size>,

    /// Print one JSON object (bytes, bits per second, seconds, RFC 3339 times).
    #[arg(long)]
    pub json: bool,
}

/// The size to plan for: an existing path is a file (its size), anything else must be a size.
fn target_bytes(target: &str) -> Result<u64, Failure> {
    let path = Path::new(target);
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(Failure::usage(anyhow!(
            "\"{target}\" is a directory: give a file or a size, e.g. 1GiB"
        ))),
        Ok(meta) => {
            // Opening proves it is readable: an estimate for a file `send` cannot read helps
            // no one.
            std::fs::File::open(path)
                .with_context(|| format!("cannot read \"{target}\""))
                .map_err(|e| Failure::new(exit::SOURCE, e))?;
            Ok(meta.len())
        }
        Err(io) if io.kind() == std::io::ErrorKind::NotFound => {
            target.parse::<Size>().map(Size::bytes).map_err(|e| {
                Failure::usage(anyhow!(
                    "\"{target}\" is neither an existing file nor a size ({e})"
                ))
            })
        }
        Err(io) => Err(Failure::new(
            exit::SOURCE,
            anyhow!(io).context(format!("cannot read \"{target}\"")),
        )),
    }
}

/// The host and TLS flag of `--to`, which may be a bare host or a URL.
fn destination(to: Option<&str>) -> Result<(Option<String>, Framing), Failure> {
    let Some(to) = to else {
        return Ok((None, Framing::Plain));
    };
    if to.contains("://") {
        let url = url::Url::parse(to).map_err(|e| {
            Failure::usage(anyhow!(
                "invalid URL \"{to}\": {e}; expected e.g. https://files.example.org/files/"
            ))
        })?;
        let host = url
            .host_str()
            .ok_or_else(|| Failure::usage(anyhow!("the URL \"{to}\" has no host")))?;
        Ok((Some(host.to_string()), Framing::for_url(to)))
    } else {
        Ok((Some(to.to_string()), Framing::Plain))
    }
}

/// The rate and where it came from: the flag, the link history, or the default.
fn choose_rate(
    global: &Global,
    flag: Option<Rate>,
    host: Option<&str>,
) -> Result<(Rate, RateSource), Failure> {
    if let Some(r) = flag {
        return Ok((r, RateSource::Flag));
    }
    let path = global.db_path()?;
    // No database yet means no history; estimating should not create one.
    if path.exists() {
        let store = Store::open(&path).context("reading link history")?;
        let samples = store
            .recent_unthrottled_link_samples(host, estimate::HISTORY_SAMPLES)
            .context("reading link history")?;
        let pairs: Vec<(u64, f64)> = samples.iter().map(|s| (s.bytes, s.seconds)).collect();
        if let Some(r) = estimate::median_goodput(&pairs) {
            return Ok((
                r,
                RateSource::History {
                    samples: pairs.len(),
                },
            ));
        }
    }
    let r =
        Rate::from_bits_per_second(estimate::DEFAULT_RATE_BPS).expect("default rate is positive");
    Ok((r, RateSource::Default))
}

/// Matches the file against the base asked for (`--base` on the server, `--base-file`
/// here); `None` without either.
/// Also returns the recipe's size, which becomes the plan's bytes.
fn delta_request(global: &Global, args: &Args) -> Result<Option<(DeltaRequest, u64)>, Failure> {
    let needs_file = || {
        let path = Path::new(&args.target);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Failure::usage(anyhow!(
                "a delta is planned for a file, not a size: give the new file, e.g. upload \
                 estimate RC2.iso --base-file RC1.iso"
            )))
        }
    };
    let (index, base, index_bytes) = match (&args.base, &args.base_file) {
        (None, None) => return Ok(None),
        (Some(name), _) => {
            needs_file()?;
            let url = args.to.clone().unwrap_or_default();
            let bytes = fetch_index(global, &url, name)?;
            let index = delta::Index::decode(&bytes).map_err(|e| {
                Failure::new(
                    exit::PROTOCOL,
                    anyhow!("the server's index of {name:?} is unusable: {e}"),
                )
            })?;
            (index, name.clone(), Some(bytes.len() as u64))
        }
        (None, Some(old)) => {
            needs_file()?;
            let index = delta::index_file(old)
                .with_context(|| format!("cannot read the base \"{}\"", old.display()))
                .map_err(|e| Failure::new(exit::SOURCE, e))?;
            // Named as it would be on the server: the recipe carries the base's name.
            let name = old.file_name().map_or_else(
                || old.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            (index, name, None)
        }
    };
    let matched = delta::measure_file(needs_file()?, &index, &base)
        .with_context(|| format!("cannot read \"{}\"", args.target))
        .map_err(|e| Failure::new(exit::SOURCE, e))?;
    let request = DeltaRequest {
        base,
        file_bytes: matched.copied + matched.literal,
        copied_bytes: matched.copied,
        index_bytes,
    };
    Ok(Some((request, matched.recipe_len)))
}

/// The index of `name` on the server at `url`.
fn fetch_index(global: &Global, url: &str, name: &str) -> Result<Vec<u8>, Failure> {
    let endpoint = crate::client::parse_endpoint(url).map_err(|e| Failure::usage(anyhow!(e)))?;
    let token = super::send::token(global, None, url)?;
    let mut client = crate::client::TusClient::new(endpoint.clone(), token);
    if endpoint.scheme() == "https" {
        client = client
            .with_tls(crate::tls::client_config(None).map_err(|e| Failure::usage(anyhow!(e)))?);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let fetched = runtime.block_on(async {
        let caps = client.options().await?;
        if !caps.has(crate::protocol::ext::DELTA) {
            return Ok(None);
        }
        client.index(name).await
    });
    match fetched {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(Failure::new(
            exit::FAILURE,
            anyhow!(
                "the server at {url} has no published file {name:?} for this token, or does not \
                 take delta uploads: `upload send` would send the whole file (plan it without \
                 --base)"
            ),
        )),
        Err(e) => {
            let code = match e {
                crate::client::ClientError::Auth { .. }
                | crate::client::ClientError::Untrusted(_) => exit::AUTH,
                crate::client::ClientError::BadUrl { .. }
                | crate::client::ClientError::NoEndpoint { .. } => exit::USAGE,
                _ => exit::NETWORK,
            };
            Err(Failure::new(code, anyhow!(e)))
        }
    }
}

pub fn run(global: &Global, args: Args) -> Result<(), Failure> {
    let delta = delta_request(global, &args)?;
    let bytes = match &delta {
        Some((_, recipe)) => *recipe,
        None => target_bytes(&args.target)?,
    };
    let delta = delta.map(|(d, _)| d);
    let (host, framing) = destination(args.to.as_deref())?;
    let (rate, rate_source) = choose_rate(global, args.rate, host.as_deref())?;
    let now = Local::now();
    let start = match &args.start {
        None => now,
        Some(s) => schedule::parse_local_time(s, &Local, now).map_err(Failure::usage)?,
    };
    let request = estimate::Request {
        bytes,
        rate,
        rate_source,
        chunk: args.chunk.map(Size::bytes),
        framing,
        start,
        windows: args.windows,
        remote_build: match (args.remote_build, args.sources) {
            (Some(build), Some(sources)) => Some(RemoteBuildRequest {
                sources_bytes: sources.bytes(),
                build_seconds: build.as_secs_f64(),
            }),
            _ => None,
        },
        delta,
    };
    let plan = estimate::plan(&request).map_err(|e| match e {
        // Say how long it really is, and what to do instead: the figure is the point of asking.
        schedule::PlaceError::TooLong(_) => Failure::usage(anyhow!(
            "{} at {} needs {} of link time alone: {e}. A faster uplink (--rate), or sending \
             sources and building remotely (--remote-build 40m --sources 25MiB), is the way",
            format_size(request.bytes),
            request.rate,
            format_duration(Duration::from_secs_f64(
                request.bytes as f64 * 8.0 / request.rate.bits_per_second()
            )),
        )),
        other => Failure::usage(other),
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).context("encoding JSON")?
        );
    } else {
        print!("{}", human(&plan, host.as_deref()));
    }
    Ok(())
}

fn when(t: &DateTime<FixedOffset>) -> String {
    t.format("%a %Y-%m-%d %H:%M").to_string()
}

fn secs(s: f64) -> String {
    format_duration(Duration::from_secs_f64(s.max(0.0)))
}

/// `rate` to three significant digits.
fn significant(rate: Rate) -> Rate {
    let v = rate.bits_per_second();
    let step = 10f64.powi(v.log10().floor() as i32 - 2);
    Rate::from_bits_per_second((v / step).round() * step).unwrap_or(rate)
}

/// The plan as people read it.
fn human(e: &Estimate, host: Option<&str>) -> String {
    use std::fmt::Write;
    let rate = Rate::from_bits_per_second(e.rate_bps).expect("plan rates are positive");
    let source = match e.rate_source {
        "flag" => "from --rate".to_string(),
        "history" => format!(
            "median of the last {}{}",
            match e.rate_samples {
                1 => "transfer".to_string(),
                n => format!("{n} transfers"),
            },
            host.map(|h| format!(" to {h}")).unwrap_or_default()
        ),
        _ => "default: no link history yet; set it with --rate".to_string(),
    };
    let w = &e.wire;
    let overhead = (w.total - w.payload) as f64 / w.payload.max(1) as f64 * 100.0;
    let mut out = String::new();
    // A measured median has no meaningful sixth digit ("981.617 kbit/s"): three are shown.
    let rate = match e.rate_source {
        "history" => significant(rate),
        _ => rate,
    };
    let _ = writeln!(out, "{} at {} ({source})", format_size(e.bytes), rate);
    let _ = writeln!(
        out,
        "  link time      {}  (payload only)",
        secs(e.link_seconds)
    );
    if e.rate_source == "history" {
        let _ = writeln!(
            out,
            "  with overhead  {}  (a measured rate already includes it)",
            secs(e.total_seconds)
        );
    } else {
        let _ = writeln!(
            out,
            "  with overhead  {}  (+{overhead:.1} %: TCP/IP framing, HTTP{}; {} chunks of {})",
            secs(e.total_seconds),
            if w.tls_bytes > 0 {
                ", TLS"
            } else if w.ssh_bytes > 0 {
                ", ssh"
            } else {
                ""
            },
            w.chunks,
            format_size(e.chunk_size),
        );
    }
    if e.windows.is_empty() {
        let _ = writeln!(out, "  finishes       {}", when(&e.finish_at));
    } else {
        let _ = writeln!(out, "  windows        {}", e.windows.join(", "));
        let _ = writeln!(
            out,
            "  finishes       {}, in the {} window ({} after the start)",
            when(&e.finish_at),
            ordinal(e.windows_used),
            secs(e.elapsed_seconds)
        );
    }
    if let Some(d) = &e.delta {
        let _ = writeln!(
            out,
            "delta against {}: {} of {} to send ({:.1} % copied from the base{})",
            d.base,
            format_size(d.recipe_bytes),
            format_size(d.file_bytes),
            d.copied_percent,
            d.index_bytes
                .map(|b| format!("; its index, {} down", format_size(b)))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "whole file: {} with overhead, finishes {} ({} after the start); the delta is \
             there {:.1} times sooner",
            secs(d.full_total_seconds),
            when(&d.full_finish_at),
            secs(d.full_elapsed_seconds),
            d.speedup
        );
    }
    if let Some(rb) = &e.remote_build {
        let _ = writeln!(
            out,
            "remote build: send {} of sources ({}) + build {} = done {} ({} after the start)",
            format_size(rb.sources_bytes),
            secs(rb.upload_seconds),
            secs(rb.build_seconds),
            when(&rb.finish_at),
            secs(rb.seconds)
        );
        let _ = match e.recommendation {
            Recommendation::BuildRemotely => writeln!(
                out,
                "recommendation: build remotely, {:.1} times sooner than uploading the artefact",
                rb.speedup
            ),
            Recommendation::Upload => writeln!(
                out,
                "recommendation: upload the artefact, {:.1} times sooner than building remotely",
                1.0 / rb.speedup
            ),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_rates_show_three_digits() {
        let r = |bps: f64| significant(Rate::from_bits_per_second(bps).unwrap()).to_string();
        assert_eq!(r(981_617.0), "982 kbit/s");
        assert_eq!(r(1_234_567_890.0), "1.23 Gbit/s");
        assert_eq!(r(128_000.0), "128 kbit/s");
        assert_eq!(r(99.96), "100 bit/s");
    }
}
