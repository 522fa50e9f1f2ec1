//! The planner behind `upload estimate`: how long a file takes on this uplink, when it arrives
//! given the upload windows, and whether sending sources and building remotely wins.
//!
//! The windows are placed as a timetable ([`Timetable::from_windows`]) by the same
//! [`Timetable::place`], at the same [`LinkRate::payload_rate`], as the scheduler's finish
//! outlook, so `estimate`, `status` and `queue add` agree.
//!
//! ## Wire model
//! `link_seconds` is the payload alone at the link rate. `total_seconds` adds what really
//! crosses the uplink:
//! - HTTP: every chunk is one tus `PATCH` whose request line and headers (Host, Tus-Resumable,
//!   Upload-Offset, Content-Type, Content-Length, Upload-Checksum, Authorization) cost about
//!   [`HTTP_REQUEST_BYTES`]; the upload's creation `POST` and a resume `HEAD` cost about
//!   [`SESSION_BYTES`] once. Responses travel down the link and cost the uplink nothing.
//! - TLS (https URLs): each record of up to 16 KiB carries [`TLS_RECORD_OVERHEAD`] bytes
//!   (TLS 1.3 AES-GCM: 5 header, 1 content type, 16 tag) and the handshake sends about
//!   [`TLS_HANDSHAKE_BYTES`] up.
//! - ssh (`ssh://` URLs, tus over ssh's channel): ssh's packets add
//!   [`SSH_OVERHEAD_PER_MIB`] bytes per MiB of stream (0.11 %) and a session's key exchange,
//!   authentication and channel about [`SSH_SESSION_BYTES`], measured with the default cipher
//!   (chacha20-poly1305) by `scripts/bench_ssh.py --only overhead`.
//! - TCP/IP over Ethernet: the stream is cut into segments of [`MSS`] bytes, each framed with
//!   [`FRAME_OVERHEAD`] bytes of Ethernet, IPv4 and TCP (with timestamps) headers, so a full
//!   1448-byte segment costs 1514 bytes on the wire (4.6 %).
//!
//! A rate measured by earlier transfers (`link_samples`) is goodput, payload bytes per second,
//! with all of this overhead already inside it; then `total_seconds` equals `link_seconds`
//! and the model is not applied twice.

use crate::schedule::{self, PlaceError, Timetable, Window};
use crate::send::chunking::Chunking;
use crate::units::Rate;
use chrono::{DateTime, FixedOffset, TimeZone};
use serde::Serialize;

/// TCP payload per segment at MTU 1500 with TCP timestamps.
pub const MSS: u64 = 1448;
/// Ethernet (14) + IPv4 (20) + TCP with timestamps (32) bytes per segment.
pub const FRAME_OVERHEAD: u64 = 66;
/// A tus PATCH request's line and headers, measured from our client with a bearer token.
pub const HTTP_REQUEST_BYTES: u64 = 400;
/// The creation POST and one resume HEAD.
pub const SESSION_BYTES: u64 = 1024;
/// Bytes a TLS 1.3 record adds to up to 16 KiB of data.
pub const TLS_RECORD_OVERHEAD: u64 = 22;
/// Bytes ssh's packets add per MiB of channel data (length, padding, MAC, channel header):
/// 1151.9 measured by `scripts/bench_ssh.py --only overhead` (OpenSSH, chacha20-poly1305),
/// as the difference between a 1 MiB and a 65 MiB stream.
pub const SSH_OVERHEAD_PER_MIB: u64 = 1152;
/// Bytes one ssh session sends before and around the data: version exchange, key exchange,
/// authentication, the channel's opening (3331 measured likewise).
pub const SSH_SESSION_BYTES: u64 = 3331;

/// The encryption layer between HTTP and TCP, which the wire model charges for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// http: HTTP straight on TCP.
    Plain,
    /// https: TLS records.
    Tls,
    /// ssh://: ssh's packets.
    Ssh,
}

impl Framing {
    /// The framing a destination URL implies.
    pub fn for_url(url: &str) -> Framing {
        if url.starts_with("https:") {
            Framing::Tls
        } else if url.starts_with("ssh:") {
            Framing::Ssh
        } else {
            Framing::Plain
        }
    }
}

impl From<bool> for Framing {
    /// `true`: TLS (the model's older, two-valued form).
    fn from(tls: bool) -> Framing {
        if tls { Framing::Tls } else { Framing::Plain }
    }
}

/// Plaintext bytes a TLS record carries at most.
pub const TLS_RECORD_PAYLOAD: u64 = 16_384;
/// ClientHello, key share and Finished, sent up once per connection.
pub const TLS_HANDSHAKE_BYTES: u64 = 2048;
/// The rate assumed when nothing else is known: a common ADSL uplink.
pub const DEFAULT_RATE_BPS: f64 = 128_000.0;
/// How many recent link samples the history rate is the median of.
pub const HISTORY_SAMPLES: usize = 20;

/// Where the rate came from, so the output can say it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateSource {
    /// Given with `--rate`.
    Flag,
    /// The median goodput of this many recent transfers.
    History { samples: usize },
    /// Nothing known: [`DEFAULT_RATE_BPS`].
    Default,
}

impl RateSource {
    pub fn name(&self) -> &'static str {
        match self {
            RateSource::Flag => "flag",
            RateSource::History { .. } => "history",
            RateSource::Default => "default",
        }
    }
}

/// The median goodput of measured transfers (bytes, seconds), as a rate.
pub fn median_goodput(samples: &[(u64, f64)]) -> Option<Rate> {
    let mut rates: Vec<f64> = samples
        .iter()
        .filter(|(b, s)| *b > 0 && *s > 0.0)
        .map(|(b, s)| *b as f64 / s)
        .collect();
    if rates.is_empty() {
        return None;
    }
    rates.sort_by(f64::total_cmp);
    let n = rates.len();
    let median = if n % 2 == 1 {
        rates[n / 2]
    } else {
        (rates[n / 2 - 1] + rates[n / 2]) / 2.0
    };
    Rate::from_bytes_per_second(median).ok()
}

/// The bytes that cross the uplink to deliver `payload` bytes, and in how many chunks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Wire {
    pub payload: u64,
    pub chunks: u64,
    pub http_bytes: u64,
    pub tls_bytes: u64,
    /// ssh's packets, for ssh:// destinations.
    pub ssh_bytes: u64,
    pub framing_bytes: u64,
    pub total: u64,
}

/// Applies the wire model (see the module doc).
pub fn wire_bytes(payload: u64, chunk: u64, framing: impl Into<Framing>) -> Wire {
    let framing = framing.into();
    let chunks = payload.div_ceil(chunk.max(1)).max(1);
    let http_bytes = chunks * HTTP_REQUEST_BYTES + SESSION_BYTES;
    let app = payload + http_bytes;
    let tls_bytes = if framing == Framing::Tls {
        app.div_ceil(TLS_RECORD_PAYLOAD) * TLS_RECORD_OVERHEAD + TLS_HANDSHAKE_BYTES
    } else {
        0
    };
    let ssh_bytes = if framing == Framing::Ssh {
        (app * SSH_OVERHEAD_PER_MIB).div_ceil(1 << 20) + SSH_SESSION_BYTES
    } else {
        0
    };
    let stream = app + tls_bytes + ssh_bytes;
    let framing_bytes = stream.div_ceil(MSS) * FRAME_OVERHEAD;
    Wire {
        payload,
        chunks,
        http_bytes,
        tls_bytes,
        ssh_bytes,
        framing_bytes,
        total: stream + framing_bytes,
    }
}

/// The rate a planner may assume for the link, and whether it was measured: a measured
/// goodput already has the wire overhead inside it, an assumed or given link rate does not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkRate {
    pub rate: Rate,
    pub measured: bool,
}

impl LinkRate {
    /// The payload rate this link gives an upload of `payload` bytes in `chunk`-byte PATCHes:
    /// the wire model's share of the link for a rate that does not include it. Every finish
    /// time the tool prints goes through here or [`plan`], so they agree.
    pub fn payload_rate(&self, payload: u64, chunk: u64, framing: impl Into<Framing>) -> Rate {
        if self.measured || payload == 0 {
            return self.rate;
        }
        let wire = wire_bytes(payload, chunk, framing);
        let share = payload as f64 / wire.total as f64;
        Rate::from_bits_per_second(self.rate.bits_per_second() * share).unwrap_or(self.rate)
    }
}

/// Timestamps in `--json` output: [`schedule::json_time`], as in every other command's.
fn json_time<S: serde::Serializer>(t: &DateTime<FixedOffset>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&schedule::json_time(t))
}

/// What to plan.
#[derive(Debug, Clone)]
pub struct Request<Tz: TimeZone> {
    pub bytes: u64,
    pub rate: Rate,
    pub rate_source: RateSource,
    /// Chunk size; `None` derives it from the rate.
    pub chunk: Option<u64>,
    /// What the destination adds between HTTP and TCP (https, ssh://).
    pub framing: Framing,
    pub start: DateTime<Tz>,
    pub windows: Vec<Window>,
    pub remote_build: Option<RemoteBuildRequest>,
    /// A delta upload (issue 13): then `bytes` is the recipe's size, what crosses the link,
    /// and the plan says beside it what the whole file would take.
    pub delta: Option<DeltaRequest>,
}

/// What matching the file against a base found (`upload estimate FILE --base NAME` or
/// `--base-file OLD`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaRequest {
    /// The base's name (or path, for a local one).
    pub base: String,
    /// The file's own size, and how much of it the base provides.
    pub file_bytes: u64,
    pub copied_bytes: u64,
    /// The index's size, downloaded first (from a server; `None` for a local base).
    pub index_bytes: Option<u64>,
}

/// The delta beside the full upload.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaPlan {
    pub base: String,
    pub file_bytes: u64,
    /// The recipe: the plan's `bytes`.
    pub recipe_bytes: u64,
    pub copied_bytes: u64,
    pub copied_percent: f64,
    pub index_bytes: Option<u64>,
    /// The whole file, as `upload send --no-base` would send it.
    pub full_total_seconds: f64,
    #[serde(serialize_with = "json_time")]
    pub full_finish_at: DateTime<FixedOffset>,
    pub full_elapsed_seconds: f64,
    /// How many times sooner the delta is there than the whole file.
    pub speedup: f64,
}

/// The alternative: upload `sources_bytes`, then build for `build_seconds` on the remote side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RemoteBuildRequest {
    pub sources_bytes: u64,
    pub build_seconds: f64,
}

/// The plan for the artefact, and the remote-build comparison when asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub bytes: u64,
    pub rate_bps: f64,
    pub rate_source: &'static str,
    pub rate_samples: usize,
    pub chunk_size: u64,
    pub wire: Wire,
    pub link_seconds: f64,
    pub total_seconds: f64,
    #[serde(serialize_with = "json_time")]
    pub start_at: DateTime<FixedOffset>,
    #[serde(serialize_with = "json_time")]
    pub finish_at: DateTime<FixedOffset>,
    pub elapsed_seconds: f64,
    pub windows: Vec<String>,
    pub windows_used: u32,
    pub remote_build: Option<RemoteBuild>,
    pub recommendation: Recommendation,
    pub delta: Option<DeltaPlan>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemoteBuild {
    pub sources_bytes: u64,
    pub upload_seconds: f64,
    pub build_seconds: f64,
    /// From the start until the build is done, waits between windows included.
    pub seconds: f64,
    #[serde(serialize_with = "json_time")]
    pub finish_at: DateTime<FixedOffset>,
    /// How many times sooner the remote build is done than the artefact's upload.
    pub speedup: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Recommendation {
    #[serde(rename = "upload")]
    Upload,
    #[serde(rename = "build-remotely")]
    BuildRemotely,
}

/// Seconds on the link for `bytes`: (payload only, with overhead).
fn link_time(
    bytes: u64,
    chunk: u64,
    framing: Framing,
    rate: Rate,
    measured: bool,
) -> (Wire, f64, f64) {
    let wire = wire_bytes(bytes, chunk, framing);
    let link = bytes as f64 * 8.0 / rate.bits_per_second();
    let total = if measured {
        link
    } else {
        wire.total as f64 * 8.0 / rate.bits_per_second()
    };
    (wire, link, total)
}

/// Plans the upload (and the remote build) of a request.
pub fn plan<Tz: TimeZone>(req: &Request<Tz>) -> Result<Estimate, PlaceError> {
    let measured = matches!(req.rate_source, RateSource::History { .. });
    let chunk = Chunking::from_flag(req.chunk).planned(Some(req.rate));
    let (wire, link_seconds, total_seconds) =
        link_time(req.bytes, chunk, req.framing, req.rate, measured);
    let timetable = Timetable::from_windows(&req.windows);
    let link = LinkRate {
        rate: req.rate,
        measured,
    };
    let place = |bytes: u64| {
        let rate = link.payload_rate(bytes, chunk, req.framing);
        timetable.place(req.start.clone(), bytes, rate)
    };
    let placed = place(req.bytes)?;

    let remote_build = match req.remote_build {
        None => None,
        Some(rb) => {
            let (_, _, upload_seconds) =
                link_time(rb.sources_bytes, chunk, req.framing, req.rate, measured);
            let uploaded = place(rb.sources_bytes)?;
            // The build runs on the remote machine, whenever the sources are there: the
            // windows only limit the uplink.
            let seconds = uploaded.elapsed_seconds + rb.build_seconds;
            let finish_at = uploaded.finish_at.fixed_offset()
                + chrono::Duration::milliseconds((rb.build_seconds * 1000.0).round() as i64);
            Some(RemoteBuild {
                sources_bytes: rb.sources_bytes,
                upload_seconds,
                build_seconds: rb.build_seconds,
                seconds,
                finish_at,
                speedup: placed.elapsed_seconds / seconds.max(f64::MIN_POSITIVE),
            })
        }
    };
    let delta = match &req.delta {
        None => None,
        Some(d) => {
            let (_, _, full_total_seconds) =
                link_time(d.file_bytes, chunk, req.framing, req.rate, measured);
            let full = place(d.file_bytes)?;
            Some(DeltaPlan {
                base: d.base.clone(),
                file_bytes: d.file_bytes,
                recipe_bytes: req.bytes,
                copied_bytes: d.copied_bytes,
                copied_percent: d.copied_bytes as f64 * 100.0 / d.file_bytes.max(1) as f64,
                index_bytes: d.index_bytes,
                full_total_seconds,
                full_finish_at: full.finish_at.fixed_offset(),
                full_elapsed_seconds: full.elapsed_seconds,
                speedup: full.elapsed_seconds / placed.elapsed_seconds.max(f64::MIN_POSITIVE),
            })
        }
    };
    let recommendation = match &remote_build {
        Some(rb) if rb.speedup > 1.0 => Recommendation::BuildRemotely,
        _ => Recommendation::Upload,
    };
    Ok(Estimate {
        bytes: req.bytes,
        rate_bps: req.rate.bits_per_second(),
        rate_source: req.rate_source.name(),
        rate_samples: match req.rate_source {
            RateSource::History { samples } => samples,
            _ => 0,
        },
        chunk_size: chunk,
        wire,
        link_seconds,
        total_seconds,
        start_at: req.start.fixed_offset(),
        finish_at: placed.finish_at.fixed_offset(),
        elapsed_seconds: placed.elapsed_seconds,
        windows: req.windows.iter().map(Window::to_string).collect(),
        windows_used: placed.windows_used,
        remote_build,
        recommendation,
        delta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    const GIB: u64 = 1 << 30;

    fn rate(bps: f64) -> Rate {
        Rate::from_bits_per_second(bps).unwrap()
    }

    fn request(bytes: u64) -> Request<Utc> {
        Request {
            bytes,
            rate: rate(DEFAULT_RATE_BPS),
            rate_source: RateSource::Default,
            chunk: None,
            framing: Framing::Plain,
            start: Utc::now(),
            windows: vec![],
            remote_build: None,
            delta: None,
        }
    }

    /// Issue 13's figure: a 1 GiB image of which 1.7 % must cross the link is about 25
    /// minutes at 128 kbit/s, beside 19.5 hours for the whole file.
    #[test]
    fn a_delta_is_planned_beside_the_whole_file() {
        let recipe = GIB * 17 / 1000;
        let mut req = request(recipe);
        req.delta = Some(DeltaRequest {
            base: "RC1.iso".into(),
            file_bytes: GIB,
            copied_bytes: GIB - recipe,
            index_bytes: Some(2_400_000),
        });
        let e = plan(&req).unwrap();
        let d = e.delta.as_ref().unwrap();
        assert_eq!(
            (e.bytes, d.recipe_bytes, d.file_bytes),
            (recipe, recipe, GIB)
        );
        assert!(
            e.total_seconds > 18.0 * 60.0 && e.total_seconds < 21.0 * 60.0,
            "{}",
            e.total_seconds
        );
        assert!(
            d.full_total_seconds > 19.0 * 3600.0,
            "{}",
            d.full_total_seconds
        );
        assert!(d.speedup > 50.0 && d.speedup < 60.0, "{}", d.speedup);
        assert!(
            (d.copied_percent - 98.3).abs() < 0.1,
            "{}",
            d.copied_percent
        );
        assert!(plan(&request(GIB)).unwrap().delta.is_none());
    }

    #[test]
    fn one_gibibyte_at_128_kbit() {
        let e = plan(&request(GIB)).unwrap();
        // 8 589 934 592 bits at 128 000 bit/s.
        assert!((e.link_seconds - 67_108.864).abs() < 1e-6);
        assert!(e.total_seconds > 19.0 * 3600.0 && e.total_seconds < 19.75 * 3600.0);
        assert_eq!(e.windows_used, 1);
        assert_eq!(e.recommendation, Recommendation::Upload);
    }

    #[test]
    fn a_full_segment_costs_1514_bytes() {
        let w = wire_bytes(
            MSS * 1000 - HTTP_REQUEST_BYTES - SESSION_BYTES,
            u64::MAX,
            false,
        );
        assert_eq!(w.total, 1514 * 1000);
    }

    #[test]
    fn tls_adds_record_overhead() {
        let plain = wire_bytes(GIB, 1 << 20, false);
        let tls = wire_bytes(GIB, 1 << 20, true);
        let extra = tls.total - plain.total;
        // 22 bytes per 16 KiB record plus their framing: about 0.14 %.
        assert!(extra > GIB / 1000 && extra < GIB / 500, "{extra}");
    }

    /// ssh's packets cost 0.11 % and a session: more than plain TCP, less than TLS's records.
    #[test]
    fn ssh_adds_its_measured_framing() {
        let plain = wire_bytes(GIB, 1 << 20, Framing::Plain);
        let ssh = wire_bytes(GIB, 1 << 20, Framing::Ssh);
        let tls = wire_bytes(GIB, 1 << 20, Framing::Tls);
        let app = GIB + plain.http_bytes;
        assert_eq!(ssh.ssh_bytes, (app * 1152).div_ceil(1 << 20) + 3331);
        assert!(plain.total < ssh.total && ssh.total < tls.total, "{ssh:?}");
        assert_eq!(Framing::for_url("ssh://h/d/"), Framing::Ssh);
        assert_eq!(Framing::for_url("https://h/files/"), Framing::Tls);
        assert_eq!(Framing::for_url("http://h/files/"), Framing::Plain);
    }

    #[test]
    fn third_night_with_windows() {
        let tz = FixedOffset::east_opt(3600).unwrap();
        let start =
            schedule::parse_local_time("2026-01-01 23:00", &tz, Utc::now().with_timezone(&tz))
                .unwrap();
        let req = Request {
            bytes: 1_000_000_000,
            rate: rate(128_000.0),
            rate_source: RateSource::Flag,
            chunk: None,
            framing: Framing::Plain,
            start,
            windows: vec!["23:00-07:00".parse().unwrap()],
            remote_build: None,
            delta: None,
        };
        let e = plan(&req).unwrap();
        assert!((e.link_seconds / 3600.0 - 17.36).abs() < 0.01);
        assert_eq!(e.windows_used, 3);
        let lo = schedule::parse_local_time("2026-01-04 01:00", &tz, start).unwrap();
        let hi = schedule::parse_local_time("2026-01-04 02:30", &tz, start).unwrap();
        assert!(e.finish_at > lo && e.finish_at < hi, "{}", e.finish_at);
    }

    #[test]
    fn remote_build_wins_for_a_small_patch() {
        let mut req = request(GIB);
        req.remote_build = Some(RemoteBuildRequest {
            sources_bytes: 25 << 20,
            build_seconds: 40.0 * 60.0,
        });
        let e = plan(&req).unwrap();
        let rb = e.remote_build.unwrap();
        assert!(rb.speedup > 15.0, "{}", rb.speedup);
        assert_eq!(e.recommendation, Recommendation::BuildRemotely);
    }

    #[test]
    fn upload_wins_when_the_build_is_slow() {
        let mut req = request(10 << 20);
        req.remote_build = Some(RemoteBuildRequest {
            sources_bytes: 5 << 20,
            build_seconds: 10.0 * 3600.0,
        });
        assert_eq!(plan(&req).unwrap().recommendation, Recommendation::Upload);
    }

    #[test]
    fn measured_rates_are_not_charged_overhead_twice() {
        let mut req = request(GIB);
        req.rate_source = RateSource::History { samples: 3 };
        let e = plan(&req).unwrap();
        assert_eq!(e.link_seconds, e.total_seconds);
    }

    #[test]
    fn median_of_samples() {
        assert!(median_goodput(&[]).is_none());
        let r = median_goodput(&[(1000, 1.0), (3000, 1.0), (2000, 1.0), (0, 0.0)]).unwrap();
        assert_eq!(r.bytes_per_second(), 2000.0);
        let r = median_goodput(&[(1000, 1.0), (3000, 1.0)]).unwrap();
        assert_eq!(r.bytes_per_second(), 2000.0);
    }
}
