//! Sizes, rates and durations as people write them: parsing, formatting, and
//! refusing whatever could be read two ways.
//!
//! This module owns every conversion between text and [`Size`], [`Rate`] and
//! [`Duration`]; nothing else in the crate should parse or print a unit.
//!
//! Decisions, so that nobody has to rediscover them:
//! - Sizes are exact. `4.7GB` is 4 700 000 000 bytes and `1.5GiB` is
//!   1 610 612 736 bytes, computed with decimal digits, never `f64`. A value
//!   that is not a whole number of bytes (`1.1KiB` = 1126.4 B) is rounded to the
//!   nearest byte, halves away from zero, because refusing it would only annoy.
//! - SI prefixes (`kB`, `MB`, ...) are powers of 1000 and IEC prefixes (`KiB`,
//!   `MiB`, ...) powers of 1024. `KB` is accepted as 1000 bytes: the kilo is
//!   SI, the capital K is just a common typo of it.
//! - In a size every `b`/`B` means bytes: a size is never in bits.
//! - A rate is stored in bits per second, because links are sold in bits. A
//!   bare `128`, `128k` or `1.5M`, and `kb/s`, are refused as ambiguous
//!   (rclone reads `k` as KiB/s, a modem sticker as kbit/s; a factor of 8
//!   matters on a 128 kbit/s uplink).
//! - A bare duration such as `90` is refused (seconds or minutes?), and so is
//!   humantime's `M` (months, easily meant as minutes).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Why a value was refused. Every message quotes the value, says the expected
/// form and gives an example; none starts with "error:" because clap adds that.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error(
        "invalid size {value:?}: {problem}; expected a number and a unit, e.g. 1GiB, 700MB, 4.7GB or 1048576 (bytes)"
    )]
    InvalidSize { value: String, problem: String },
    #[error(
        "invalid rate {value:?}: {problem}; expected a number and a unit, e.g. 128kbit (bits per second) or 16KiB/s (bytes per second)"
    )]
    InvalidRate { value: String, problem: String },
    #[error(
        "invalid duration {value:?}: {problem}; expected numbers with units, e.g. 45m, 1h30m, 90s or 2d"
    )]
    InvalidDuration { value: String, problem: String },
    /// The value means two different things to different people.
    #[error("{value:?} is ambiguous: write {first} ({first_means}) or {second} ({second_means})")]
    Ambiguous {
        value: String,
        first: String,
        first_means: String,
        second: String,
        second_means: String,
    },
}

fn invalid_size(value: &str, problem: impl Into<String>) -> UnitError {
    UnitError::InvalidSize {
        value: value.to_owned(),
        problem: problem.into(),
    }
}

fn invalid_rate(value: &str, problem: impl Into<String>) -> UnitError {
    UnitError::InvalidRate {
        value: value.to_owned(),
        problem: problem.into(),
    }
}

fn invalid_duration(value: &str, problem: impl Into<String>) -> UnitError {
    UnitError::InvalidDuration {
        value: value.to_owned(),
        problem: problem.into(),
    }
}

fn ambiguous(
    value: &str,
    first: String,
    first_means: &str,
    second: String,
    second_means: &str,
) -> UnitError {
    UnitError::Ambiguous {
        value: value.to_owned(),
        first,
        first_means: first_means.to_owned(),
        second,
        second_means: second_means.to_owned(),
    }
}

/// Prefix names by power (index 0 = no prefix). SI and IEC share the letter.
const SI_PREFIX: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
const IEC_PREFIX: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// A unit prefix: `power` 0..=6, SI (1000^power) or binary (1024^power).
#[derive(Debug, Clone, Copy)]
struct Prefix {
    power: u32,
    binary: bool,
}

impl Prefix {
    fn name(self) -> &'static str {
        // power is at most 6 by construction; `get` keeps this panic-free anyway.
        let table = if self.binary { &IEC_PREFIX } else { &SI_PREFIX };
        table.get(self.power as usize).copied().unwrap_or("")
    }

    /// Exact multiplier; 1000^6 and 1024^6 both fit in u64.
    fn multiplier(self) -> u64 {
        if self.binary {
            1u64 << (10 * self.power)
        } else {
            1000u64.pow(self.power)
        }
    }
}

/// Splits a leading prefix letter (and an `i` making it binary) off a unit.
/// Case-insensitive: nobody means milli-bytes or milli-bits.
fn split_prefix(unit: &str) -> (Prefix, &str) {
    let power = match unit.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('k') => 1,
        Some('m') => 2,
        Some('g') => 3,
        Some('t') => 4,
        Some('p') => 5,
        Some('e') => 6,
        _ => {
            return (
                Prefix {
                    power: 0,
                    binary: false,
                },
                unit,
            );
        }
    };
    // The prefix letter is ASCII, so byte 1 is a char boundary.
    let rest = &unit[1..];
    match rest.strip_prefix(['i', 'I']) {
        Some(rest) => (
            Prefix {
                power,
                binary: true,
            },
            rest,
        ),
        None => (
            Prefix {
                power,
                binary: false,
            },
            rest,
        ),
    }
}

/// A decimal number as typed: digits only, at most one point, digits on both
/// sides of it. Kept as text so sizes can be computed exactly.
#[derive(Debug, Clone, Copy)]
struct Number<'a> {
    text: &'a str,
    int: &'a str,
    frac: &'a str,
}

impl Number<'_> {
    fn is_zero(&self) -> bool {
        self.int.bytes().chain(self.frac.bytes()).all(|b| b == b'0')
    }

    /// Number times 10^exp10, correctly rounded by the standard parser.
    fn to_f64(self, exp10: u32) -> f64 {
        let text = if self.frac.is_empty() {
            format!("{}e{exp10}", self.int)
        } else {
            format!("{}.{}e{exp10}", self.int, self.frac)
        };
        text.parse().unwrap_or(f64::NAN)
    }
}

/// Splits trimmed, non-empty, non-negative text into the number and the unit
/// after it (whitespace between them allowed). Err is the problem to report.
fn split_number(s: &str) -> Result<(Number<'_>, &str), String> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let text = &s[..end];
    let rest = s[end..].trim_start();
    if text.is_empty() {
        return Err("it must start with a number".into());
    }
    if rest.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '.' | ',' | '_' | '\'')) {
        // "1 000" and "1,5" are locale-dependent; one spelling avoids guessing.
        return Err("write the number without spaces or separators, with '.' for decimals".into());
    }
    let (int, frac) = match text.split_once('.') {
        None => (text, ""),
        Some((int, frac)) => {
            if frac.contains('.') {
                return Err("the number has more than one decimal point".into());
            }
            if int.is_empty() || frac.is_empty() {
                return Err("a decimal point needs a digit on each side, e.g. 0.5".into());
            }
            (int, frac)
        }
    };
    Ok((Number { text, int, frac }, rest))
}

/// round(number * mult) exactly, or None above u64::MAX.
///
/// Multiplies the digit string by `mult` in base 10 so any number of decimals
/// stays exact; `f64` would make `4.7GB` 4 699 999 999 or 4 700 000 001.
fn scale_exact(n: Number<'_>, mult: u64) -> Option<u64> {
    // Little-endian decimal digits of int‖frac, i.e. the number times 10^k.
    let mut digits: Vec<u8> = n
        .int
        .bytes()
        .chain(n.frac.bytes())
        .rev()
        .map(|b| b - b'0')
        .collect();
    let mut carry: u128 = 0;
    for d in digits.iter_mut() {
        let t = u128::from(*d) * u128::from(mult) + carry;
        *d = (t % 10) as u8;
        carry = t / 10;
    }
    while carry > 0 {
        digits.push((carry % 10) as u8);
        carry /= 10;
    }
    let k = n.frac.len();
    let round_up = k > 0 && digits.get(k - 1).is_some_and(|&d| d >= 5);
    let mut whole: u64 = 0;
    for &d in digits.iter().skip(k).rev() {
        whole = whole.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    whole.checked_add(u64::from(round_up))
}

// ---------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------

/// A number of bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Size(pub u64);

impl Size {
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The shortest text that [`parse_size`] turns back into exactly this
    /// size: "1GiB", "700MB", "1.5GiB", "1048577". For config files and logs,
    /// where the rounded [`Display`](fmt::Display) form would lose bytes.
    pub fn exact(self) -> String {
        let n = self.0;
        // On a tie prefer no decimal point ("700MB" over "0.7GB"), then a
        // unit over plain bytes ("1KiB" over "1024"), then the larger unit:
        // each tells the reader more at a glance.
        let rank = |s: &str, plain: bool| (s.len(), s.contains('.'), plain);
        let mut best = n.to_string();
        let mut best_rank = rank(&best, true);
        for binary in [true, false] {
            for power in (1..=6).rev() {
                let prefix = Prefix { power, binary };
                let Some(candidate) = exact_in(n, prefix, best.len()) else {
                    continue;
                };
                let candidate_rank = rank(&candidate, false);
                if candidate_rank < best_rank {
                    best = candidate;
                    best_rank = candidate_rank;
                }
            }
        }
        best
    }
}

/// `n` written in `prefix`B if that takes at most `max_len` characters.
/// Always terminates: 1/1024^p is a finite decimal.
fn exact_in(n: u64, prefix: Prefix, max_len: usize) -> Option<String> {
    let unit = u128::from(prefix.multiplier());
    let n = u128::from(n);
    let mut s = (n / unit).to_string();
    let mut rem = n % unit;
    if rem != 0 {
        s.push('.');
        while rem != 0 {
            if s.len() + prefix.name().len() + 1 > max_len {
                return None;
            }
            rem *= 10;
            // Digit is 0..=9 because rem < unit before the multiplication.
            s.push(char::from(b'0' + (rem / unit) as u8));
            rem %= unit;
        }
    }
    s.push_str(prefix.name());
    s.push('B');
    (s.len() <= max_len).then_some(s)
}

impl FromStr for Size {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that `{:>10}` aligns columns in progress output.
        f.pad(&format_size(self.0))
    }
}

/// Parses `1GiB`, `1 GiB`, `700MB`, `4.7GB`, `512KiB`, `1.5 TiB`, `10B`,
/// `10 bytes`, `2Gi` or a plain `1048576` (bytes). Units are
/// case-insensitive; see the module doc for rounding and `KB`.
pub fn parse_size(s: &str) -> Result<Size, UnitError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid_size(s, "it is empty"));
    }
    if t.starts_with('-') {
        return Err(invalid_size(s, "a size cannot be negative"));
    }
    let (num, unit) = split_number(t).map_err(|p| invalid_size(s, p))?;
    let mult = size_multiplier(s, num, unit)?;
    scale_exact(num, mult).map(Size).ok_or_else(|| {
        invalid_size(
            s,
            format!(
                "it is more than the largest size, {} bytes (just under 16 EiB)",
                u64::MAX
            ),
        )
    })
}

fn size_multiplier(value: &str, num: Number<'_>, unit: &str) -> Result<u64, UnitError> {
    let lower = unit.to_ascii_lowercase();
    if matches!(lower.as_str(), "" | "b" | "byte" | "bytes") {
        return Ok(1);
    }
    if lower.contains('/') || lower.ends_with("ps") {
        return Err(invalid_size(
            value,
            format!("{unit:?} is a rate, not a size (leave out the \"/s\")"),
        ));
    }
    if lower.ends_with("bit") || lower.ends_with("bits") {
        return Err(invalid_size(
            value,
            format!("{unit:?} is in bits, but a size is in bytes"),
        ));
    }
    let (prefix, base) = split_prefix(&lower);
    if prefix.power == 0 {
        return Err(invalid_size(value, format!("unknown unit {unit:?}")));
    }
    match base {
        "b" | "byte" | "bytes" => Ok(prefix.multiplier()),
        // "2Gi" (Kubernetes style) cannot mean anything but GiB.
        "" if prefix.binary => Ok(prefix.multiplier()),
        // "1G": GiB to rclone and dd, GB to a disk vendor.
        "" => Err(ambiguous(
            value,
            format!("{}{}B", num.text, IEC_PREFIX[prefix.power as usize]),
            "1024-based",
            format!("{}{}B", num.text, SI_PREFIX[prefix.power as usize]),
            "1000-based",
        )),
        _ => Err(invalid_size(value, format!("unknown unit {unit:?}"))),
    }
}

const IEC_UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Human form of a size: "512 B" below 1 KiB, otherwise IEC with one
/// decimal ("2.4 MiB", "1.0 GiB"). Rounded, so use [`Size::exact`] to store.
pub fn format_size(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let n = u128::from(bytes);
    let mut i = 1;
    loop {
        let unit = 1u128 << (10 * i);
        // Integer tenths, so the shown digit is correctly rounded.
        let tenths = (n * 10 + unit / 2) / unit;
        // 1023.96 KiB would show as "1024.0 KiB": step up to "1.0 MiB".
        if tenths >= 10240 && i + 1 < IEC_UNITS.len() {
            i += 1;
            continue;
        }
        return format!("{}.{} {}", tenths / 10, tenths % 10, IEC_UNITS[i]);
    }
}

/// Human form of an observed transfer speed: "2.4 MiB/s", "15.6 KiB/s",
/// "800 B/s". Speeds are measured, not promised, so bytes and IEC like sizes.
/// Not-a-number and infinity (no time elapsed yet) give "? B/s"; zero or
/// negative give "0 B/s".
pub fn format_byte_rate(bytes_per_second: f64) -> String {
    let v = bytes_per_second;
    if !v.is_finite() {
        return "? B/s".to_owned();
    }
    if v <= 0.0 {
        return "0 B/s".to_owned();
    }
    if v.round() < 1024.0 {
        return format!("{v:.0} B/s");
    }
    let mut i = 1;
    loop {
        let x = v / 2f64.powi(10 * i as i32);
        let tenths = (x * 10.0).round();
        if tenths >= 10240.0 && i + 1 < IEC_UNITS.len() {
            i += 1;
            continue;
        }
        return format!("{:.1} {}/s", tenths / 10.0, IEC_UNITS[i]);
    }
}

/// Human form of an observed speed of `bits_per_second`, in `unit`: bytes as
/// [`format_byte_rate`] ("15.6 KiB/s"), bits with SI prefixes and one decimal
/// ("250.3 kbit/s", "1.5 Mbit/s", "800 bit/s"), a fixed shape that does not
/// jump about in a progress display as [`Rate`]'s exact `Display` would.
pub fn format_rate(bits_per_second: f64, unit: RateUnit) -> String {
    let v = bits_per_second;
    if unit == RateUnit::Bytes {
        return format_byte_rate(v / 8.0);
    }
    if !v.is_finite() {
        return "? bit/s".to_owned();
    }
    if v <= 0.0 {
        return "0 bit/s".to_owned();
    }
    if v.round() < 1000.0 {
        return format!("{v:.0} bit/s");
    }
    let mut i = 1;
    loop {
        let tenths = (v / 1000f64.powi(i as i32) * 10.0).round();
        // 999.96 kbit/s would show as "1000.0 kbit/s": step up to "1.0 Mbit/s".
        if tenths >= 10000.0 && i + 1 < RATE_UNITS.len() {
            i += 1;
            continue;
        }
        return format!("{:.1} {}", tenths / 10.0, RATE_UNITS[i]);
    }
}

// ---------------------------------------------------------------------------
// Rates
// ---------------------------------------------------------------------------

/// A link or transfer rate, stored as bits per second (a link is sold in bits).
/// Always finite and more than 0, also when deserialized.
///
/// It remembers whether it was written in bits or in bytes ([`Rate::unit`]), so that
/// speeds measured against it are shown the way the user thinks of it (`--limit 256kbit`
/// reads "250.3 kbit/s", `--limit 16KiB/s` "15.9 KiB/s"). The unit is presentation only:
/// it takes no part in comparisons, and is not serialized.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RawRate")]
pub struct Rate {
    bits_per_second: f64,
    #[serde(skip)]
    unit: RateUnit,
}

/// How a rate was written: in bits per second (`128kbit`) or bytes per second (`16KiB/s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateUnit {
    /// As links are sold; the form of [`Rate`]'s `Display`.
    #[default]
    Bits,
    /// As file sizes are counted.
    Bytes,
}

impl PartialEq for Rate {
    fn eq(&self, other: &Self) -> bool {
        self.bits_per_second == other.bits_per_second
    }
}

impl PartialOrd for Rate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.bits_per_second.partial_cmp(&other.bits_per_second)
    }
}

/// Same shape as [`Rate`]; deserializing through it keeps the invariant.
#[derive(serde::Deserialize)]
struct RawRate {
    bits_per_second: f64,
}

impl TryFrom<RawRate> for Rate {
    type Error = UnitError;
    fn try_from(raw: RawRate) -> Result<Self, Self::Error> {
        Rate::from_bits_per_second(raw.bits_per_second)
    }
}

const RATE_PROBLEM: &str = "a rate must be a finite number more than 0";

impl Rate {
    /// Refuses zero, negative, NaN and infinite rates.
    pub fn from_bits_per_second(bps: f64) -> Result<Rate, UnitError> {
        if bps.is_finite() && bps > 0.0 {
            Ok(Rate {
                bits_per_second: bps,
                unit: RateUnit::Bits,
            })
        } else {
            Err(invalid_rate(&format!("{bps} bit/s"), RATE_PROBLEM))
        }
    }

    /// Refuses zero, negative, NaN and infinite rates, and rates whose bit
    /// count does not fit an `f64`.
    pub fn from_bytes_per_second(bps: f64) -> Result<Rate, UnitError> {
        let bits = bps * 8.0;
        if bits.is_finite() && bits > 0.0 {
            Ok(Rate {
                bits_per_second: bits,
                unit: RateUnit::Bytes,
            })
        } else {
            Err(invalid_rate(&format!("{bps} B/s"), RATE_PROBLEM))
        }
    }

    pub fn bits_per_second(self) -> f64 {
        self.bits_per_second
    }

    pub fn bytes_per_second(self) -> f64 {
        self.bits_per_second / 8.0
    }

    /// Whether it was written in bits or bytes per second.
    pub fn unit(self) -> RateUnit {
        self.unit
    }
}

impl FromStr for Rate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_rate(s)
    }
}

const RATE_UNITS: [&str; 5] = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];

impl fmt::Display for Rate {
    /// Bits with SI prefixes, as links are sold: "128 kbit/s", "1.5 Mbit/s".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.bits_per_second;
        let mut i = 0;
        while i + 1 < RATE_UNITS.len() && v >= 1000f64.powi(i as i32 + 1) {
            i += 1;
        }
        loop {
            let x = v / 1000f64.powi(i as i32);
            let text = trim_decimals(x);
            // 999.9996 kbit/s prints as "1000": say "1 Mbit/s" instead.
            if i + 1 < RATE_UNITS.len() && text.parse::<f64>().is_ok_and(|t| t >= 1000.0) {
                i += 1;
                continue;
            }
            return f.pad(&format!("{text} {}", RATE_UNITS[i]));
        }
    }
}

/// Three decimals with trailing zeros dropped ("128", "1.5", "1.235"); below
/// 1 enough decimals to keep three significant digits, so that a tiny rate
/// never prints as an unparsable "0".
fn trim_decimals(x: f64) -> String {
    let mut decimals = 3usize;
    if x > 0.0 && x < 1.0 {
        let leading_zeros = (-x.log10()).ceil();
        // At most ~324 for the smallest subnormal; the cap is belt and braces.
        decimals += leading_zeros.clamp(0.0, 400.0) as usize;
    }
    let mut s = format!("{x:.decimals$}");
    if s.contains('.') {
        let kept = s.trim_end_matches('0').trim_end_matches('.').len();
        s.truncate(kept);
    }
    s
}

/// The unit's tail after the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateBase {
    /// No base: `128`, `128k`.
    None,
    /// `bit`, `bits`.
    Bits,
    /// `b`: bits to a network engineer, bytes to most users.
    LowerB,
    /// `B`.
    UpperB,
    /// `byte`, `bytes`.
    Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Per {
    None,
    /// `/s`
    Slash,
    /// `ps` as in `kbps`
    Ps,
}

/// Parses a rate. Bits per second: `128kbit`, `128kbps`, `128 kbit/s`,
/// `1.5Mbit`, `10Mbps`, `1Gbit/s`, `800bit/s`, `800bps` (k/M/G are 1000).
/// Bytes per second need the `/s`: `16KiB/s`, `16kB/s`, `2MB/s`, `100B/s`.
/// Refuses as ambiguous `128`, `128k`, `1.5M`, `128kb/s` and `2MBps`.
pub fn parse_rate(s: &str) -> Result<Rate, UnitError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid_rate(s, "it is empty"));
    }
    if t.starts_with('-') {
        return Err(invalid_rate(s, "a rate must be more than 0"));
    }
    let (num, unit) = split_number(t).map_err(|p| invalid_rate(s, p))?;

    let (stem, per) = if let Some(stem) = unit.strip_suffix("/s") {
        (stem.trim_end(), Per::Slash)
    } else if let Some(stem) = unit
        .strip_suffix("ps")
        .filter(|st| st.ends_with(['b', 'B']))
    {
        (stem, Per::Ps)
    } else {
        (unit, Per::None)
    };
    let (prefix, base_text) = split_prefix(stem);
    let base = match base_text {
        "" => RateBase::None,
        "b" => RateBase::LowerB,
        "B" => RateBase::UpperB,
        b if b.eq_ignore_ascii_case("bit") || b.eq_ignore_ascii_case("bits") => RateBase::Bits,
        b if b.eq_ignore_ascii_case("byte") || b.eq_ignore_ascii_case("bytes") => RateBase::Bytes,
        _ => return Err(invalid_rate(s, format!("unknown unit {unit:?}"))),
    };
    if base == RateBase::Bits && per == Per::Ps {
        return Err(invalid_rate(s, format!("unknown unit {unit:?}")));
    }
    if num.is_zero() {
        return Err(invalid_rate(s, "a rate must be more than 0"));
    }

    let n = num.text;
    let p = prefix.name();
    let per_s = if per == Per::None { "" } else { "/s" };
    let is_bytes = match (base, per) {
        (RateBase::Bits, _) | (RateBase::LowerB, Per::Ps) => false,
        (RateBase::UpperB | RateBase::Bytes, Per::Slash) => true,
        (RateBase::None, _) => {
            // Keep the number, suggest the k forms for a bare one.
            let power = prefix.power.max(1) as usize;
            let (bits_p, bytes_p) = if prefix.binary {
                (IEC_PREFIX[power], IEC_PREFIX[power])
            } else {
                (SI_PREFIX[power], IEC_PREFIX[power])
            };
            return Err(ambiguous(
                s,
                format!("{n}{bits_p}bit{per_s}"),
                "bits per second",
                format!("{n}{bytes_p}B/s"),
                "bytes per second",
            ));
        }
        (RateBase::LowerB, _) | (RateBase::UpperB, Per::Ps) => {
            return Err(ambiguous(
                s,
                format!("{n}{p}bit{per_s}"),
                "bits per second",
                format!("{n}{p}B/s"),
                "bytes per second",
            ));
        }
        (RateBase::UpperB | RateBase::Bytes, _) => {
            return Err(invalid_rate(
                s,
                format!("that is a size; a rate needs \"/s\", as in {n}{p}B/s"),
            ));
        }
    };

    let mut value = if prefix.binary {
        // Powers of two scale an f64 exactly.
        num.to_f64(0) * 2f64.powi(10 * prefix.power as i32)
    } else {
        num.to_f64(3 * prefix.power)
    };
    if is_bytes {
        value *= 8.0;
    }
    if value.is_infinite() {
        return Err(invalid_rate(s, "it is too large"));
    }
    let rate = Rate::from_bits_per_second(value)
        .map_err(|_| invalid_rate(s, "a rate must be more than 0"))?;
    Ok(Rate {
        unit: if is_bytes {
            RateUnit::Bytes
        } else {
            RateUnit::Bits
        },
        ..rate
    })
}

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

/// Parses `45m`, `1h30m`, `1h 30m`, `90s`, `2d`, `40min`, `2 days` (humantime
/// syntax). Refuses a bare number other than 0 and the unit `M`.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(invalid_duration(s, "it is empty"));
    }
    if t.starts_with('-') {
        return Err(invalid_duration(s, "a duration cannot be negative"));
    }
    if let Ok((num, "")) = split_number(t) {
        if num.is_zero() {
            // Zero of any unit is zero: nothing to guess.
            return Ok(Duration::ZERO);
        }
        return Err(ambiguous(
            s,
            format!("{}s", num.text),
            "seconds",
            format!("{}m", num.text),
            "minutes",
        ));
    }
    if let Some((start, end)) = letter_runs(t).find(|&(a, b)| &t[a..b] == "M") {
        // humantime reads "M" as months; "45M" was surely meant otherwise.
        let (before, after) = (&t[..start], &t[end..]);
        return Err(ambiguous(
            s,
            format!("{before}min{after}"),
            "minutes",
            format!("{before}months{after}"),
            "months",
        ));
    }
    if seconds_upper_bound(t) >= u128::from(u64::MAX) {
        // humantime 2.x can panic in Duration::new when the sum reaches
        // u64::MAX seconds; refuse long before that.
        return Err(invalid_duration(s, "it is too large"));
    }
    humantime::parse_duration(t).map_err(|e| invalid_duration(s, humantime_problem(t, e)))
}

/// Byte ranges of runs of letters, as humantime delimits units.
fn letter_runs(s: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let is_letter = |c: char| c.is_ascii_alphabetic() || c == 'µ';
    let mut pos = 0;
    std::iter::from_fn(move || {
        let rest = s.get(pos..)?;
        let start = pos + rest.find(is_letter)?;
        let len = s[start..]
            .find(|c: char| !is_letter(c))
            .unwrap_or(s.len() - start);
        pos = start + len;
        Some((start, start + len))
    })
}

/// At least the number of seconds humantime could add up for `s`: each
/// integer part plus one (for carries), times the seconds in the unit that
/// follows it (a year if the unit is unknown); a fraction counts as one unit.
fn seconds_upper_bound(s: &str) -> u128 {
    const YEAR: u128 = 31_557_600;
    let mut total: u128 = 0;
    let mut rest = s;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        let is_fraction = rest[..start].ends_with('.');
        let digits = &rest[start..];
        let len = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        let after = &digits[len..];
        let unit = after
            .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .split(|c: char| !(c.is_ascii_alphabetic() || c == 'µ'))
            .next()
            .unwrap_or("");
        let seconds = unit_seconds(unit).unwrap_or(YEAR);
        let n = if is_fraction {
            1
        } else {
            digits[..len].bytes().fold(0u128, |n, b| {
                n.saturating_mul(10).saturating_add(u128::from(b - b'0'))
            })
        };
        total = total.saturating_add(n.saturating_add(1).saturating_mul(seconds));
        rest = after;
    }
    total
}

/// Whole seconds in one humantime unit, rounded up (sub-second units count 1).
fn unit_seconds(unit: &str) -> Option<u128> {
    Some(match unit {
        "nanos" | "nsec" | "ns" | "usec" | "us" | "µs" | "millis" | "msec" | "ms" => 1,
        "seconds" | "second" | "secs" | "sec" | "s" => 1,
        "minutes" | "minute" | "min" | "mins" | "m" => 60,
        "hours" | "hour" | "hr" | "hrs" | "h" => 3600,
        "days" | "day" | "d" => 86_400,
        "weeks" | "week" | "wk" | "wks" | "w" => 604_800,
        "months" | "month" | "M" => 2_630_016,
        "years" | "year" | "yr" | "yrs" | "y" => 31_557_600,
        _ => return None,
    })
}

fn humantime_problem(s: &str, e: humantime::DurationError) -> String {
    use humantime::DurationError as E;
    match e {
        E::InvalidCharacter(off) => match s.get(off..).and_then(|r| r.chars().next()) {
            Some(c) => format!("unexpected character {c:?}"),
            None => "it ends too early".to_owned(),
        },
        E::NumberExpected(off) => match s.get(off..).and_then(|r| r.split_whitespace().next()) {
            Some(word) => format!("{word:?} has no number before it"),
            None => "expected a number".to_owned(),
        },
        E::UnknownUnit { unit, value, .. } if unit.is_empty() => {
            format!("{value} has no unit")
        }
        E::UnknownUnit { unit, .. } => format!("unknown unit {unit:?} (use s, m or min, h, d, w)"),
        E::NumberOverflow => {
            "a number is too large or too precise (the smallest step is 1ns)".to_owned()
        }
        E::Empty => "it is empty".to_owned(),
    }
}

/// Whole seconds, rounded to nearest, without overflowing at u64::MAX.
fn rounded_seconds(d: Duration) -> u64 {
    d.as_secs()
        .saturating_add(u64::from(d.subsec_nanos() >= 500_000_000))
}

/// For people: "18 h 38 min 29 s", "2 d 3 h 4 min", "12 min 5 s", "45 s",
/// "0 s". Zero parts are left out. From one day on, minutes are the last unit
/// (rounded): seconds of a multi-day upload are noise. humantime (and so
/// [`parse_duration`]) reads the result back.
pub fn format_duration(d: Duration) -> String {
    let secs = rounded_seconds(d);
    let parts: [(u64, &str); 3] = if secs >= 86_400 {
        let mins = secs.saturating_add(30) / 60;
        [
            (mins / 1440, "d"),
            (mins % 1440 / 60, "h"),
            (mins % 60, "min"),
        ]
    } else {
        [
            (secs / 3600, "h"),
            (secs % 3600 / 60, "min"),
            (secs % 60, "s"),
        ]
    };
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n} {unit}"))
        .collect();
    if text.is_empty() {
        "0 s".to_owned()
    } else {
        text.join(" ")
    }
}

/// Compact and exact to the (rounded) second, for logs and config files:
/// "18h38m29s", "2d3h4m5s", "0s". [`parse_duration`] reads it back.
pub fn format_duration_compact(d: Duration) -> String {
    let secs = rounded_seconds(d);
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let text: String = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if text.is_empty() {
        "0s".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_parse_exactly() {
        let cases: &[(&str, u64)] = &[
            ("1GiB", 1_073_741_824),
            ("1 GiB", 1_073_741_824),
            ("  1 GiB  ", 1_073_741_824),
            ("1gib", 1_073_741_824),
            ("1GIB", 1_073_741_824),
            ("2Gi", 2_147_483_648),
            ("700MB", 700_000_000),
            ("700mb", 700_000_000),
            ("4.7GB", 4_700_000_000),
            ("512KiB", 524_288),
            ("1048576", 1_048_576),
            ("1.5 TiB", 1_649_267_441_664),
            ("1.5GiB", 1_610_612_736),
            ("10B", 10),
            ("10b", 10),
            ("10 bytes", 10),
            ("1 byte", 1),
            ("1kB", 1000),
            ("1KB", 1000),
            ("1kb", 1000),
            ("0", 0),
            ("0.5KiB", 512),
            // 1126.4 rounds down, 1.5 bytes rounds up (halves away from zero).
            ("1.1KiB", 1126),
            ("1.5", 2),
            ("0.0005kB", 1),
            ("0.0004999999999999999999999kB", 0),
            ("1.00000000000000000000000000001GiB", 1_073_741_824),
        ];
        for &(text, want) in cases {
            assert_eq!(parse_size(text), Ok(Size(want)), "{text}");
            assert_eq!(text.parse::<Size>(), Ok(Size(want)), "{text}");
        }
        assert_eq!(parse_size("18446744073709551615"), Ok(Size(u64::MAX)));
        assert_eq!(
            parse_size("15.99999999999999999826527652402319290558807551860809326171875EiB"),
            Ok(Size(u64::MAX - 1))
        );
    }

    #[test]
    fn bad_sizes_are_refused_with_the_value() {
        for text in [
            "",
            "   ",
            "-1GiB",
            "1.2.3",
            "GiB",
            "1 GiBs",
            "1 Mbit",
            "16KiB/s",
            "1 000",
            "1,5GB",
            ".5GB",
            "5.GB",
            "1e9",
            "18446744073709551616",
            "16EiB",
            "1x",
            "+5GB",
            "1 Gi B",
            "10 kbps",
        ] {
            let err = parse_size(text).expect_err(text);
            let msg = err.to_string();
            assert!(msg.contains(&format!("{text:?}")), "{msg}");
            assert!(!msg.starts_with("error"), "{msg}");
            assert!(msg.contains("e.g."), "{msg}");
        }
        assert_eq!(
            parse_size("1.2.3").unwrap_err().to_string(),
            "invalid size \"1.2.3\": the number has more than one decimal point; \
             expected a number and a unit, e.g. 1GiB, 700MB, 4.7GB or 1048576 (bytes)"
        );
        let msg = parse_size("1G").unwrap_err().to_string();
        assert_eq!(
            msg,
            "\"1G\" is ambiguous: write 1GiB (1024-based) or 1GB (1000-based)"
        );
    }

    #[test]
    fn sizes_format_for_people() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(1 << 30), "1.0 GiB");
        assert_eq!(format_size(700 << 20), "700.0 MiB");
        assert_eq!(format_size(2_516_582), "2.4 MiB");
        assert_eq!(format_size(1_048_575), "1.0 MiB");
        assert_eq!(format_size(u64::MAX), "16.0 EiB");
        assert_eq!(Size(1 << 30).to_string(), "1.0 GiB");
        assert_eq!(format!("{:>9}", Size(512)), "    512 B");
    }

    #[test]
    fn exact_sizes_are_short() {
        assert_eq!(Size(1 << 30).exact(), "1GiB");
        assert_eq!(Size(700_000_000).exact(), "700MB");
        assert_eq!(Size(4_700_000_000).exact(), "4.7GB");
        assert_eq!(Size(1_610_612_736).exact(), "1.5GiB");
        assert_eq!(Size(1_048_577).exact(), "1048577");
        assert_eq!(Size(1024).exact(), "1KiB");
        assert_eq!(Size(0).exact(), "0");
        assert_eq!(Size(999).exact(), "999");
    }

    fn bits(text: &str) -> f64 {
        parse_rate(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .bits_per_second()
    }

    #[test]
    fn rates_parse() {
        let bit_cases: &[(&str, f64)] = &[
            ("128kbit", 128_000.0),
            ("128kbps", 128_000.0),
            ("128 kbit/s", 128_000.0),
            ("128Kbit", 128_000.0),
            ("128 kbits/s", 128_000.0),
            ("1.5Mbit", 1_500_000.0),
            ("10Mbps", 10_000_000.0),
            ("10mbps", 10_000_000.0),
            ("1Gbit/s", 1e9),
            ("800bit/s", 800.0),
            ("800bps", 800.0),
            ("1Kibit/s", 1024.0),
        ];
        for &(text, want) in bit_cases {
            assert_eq!(bits(text), want, "{text}");
        }
        let byte_cases: &[(&str, f64)] = &[
            ("16KiB/s", 16_384.0),
            ("16kB/s", 16_000.0),
            ("16KB/s", 16_000.0),
            ("2MB/s", 2e6),
            ("2MiB/s", 2_097_152.0),
            ("100B/s", 100.0),
            ("100 bytes/s", 100.0),
        ];
        for &(text, want) in byte_cases {
            let rate: Rate = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(rate.bytes_per_second(), want, "{text}");
            assert_eq!(rate.bits_per_second(), want * 8.0, "{text}");
        }
    }

    #[test]
    fn ambiguous_rates_name_both_readings() {
        let cases = [
            ("128k", "128kbit", "128KiB/s"),
            ("128K", "128kbit", "128KiB/s"),
            ("128", "128kbit", "128KiB/s"),
            ("1.5M", "1.5Mbit", "1.5MiB/s"),
            ("128kb/s", "128kbit/s", "128kB/s"),
            ("128kb", "128kbit", "128kB/s"),
            ("2MBps", "2Mbit/s", "2MB/s"),
            ("800b/s", "800bit/s", "800B/s"),
        ];
        for (text, bits, bytes) in cases {
            let err = parse_rate(text).expect_err(text);
            assert_eq!(
                err.to_string(),
                format!(
                    "\"{text}\" is ambiguous: write {bits} (bits per second) or {bytes} (bytes per second)"
                )
            );
        }
        assert_eq!(
            parse_rate("128k").unwrap_err().to_string(),
            "\"128k\" is ambiguous: write 128kbit (bits per second) or 128KiB/s (bytes per second)"
        );
    }

    #[test]
    fn bad_rates_are_refused_with_the_value() {
        for text in [
            "",
            "0",
            "0kbit",
            "-128kbit",
            "16KiB",
            "2 bytes",
            "1.2.3kbit",
            "kbit",
            "1 parsec",
            "1bitps",
            "1e9bit",
            "9".repeat(400).as_str(),
        ] {
            let msg = parse_rate(text).expect_err(text).to_string();
            assert!(msg.contains(&format!("{text:?}")), "{msg}");
            assert!(!msg.starts_with("error"), "{msg}");
        }
        let msg = parse_rate("16KiB").unwrap_err().to_string();
        assert!(msg.contains("16KiB/s"), "{msg}");
        let msg = parse_rate("0kbit").unwrap_err().to_string();
        assert!(msg.contains("more than 0"), "{msg}");
        assert!(Rate::from_bits_per_second(0.0).is_err());
        assert!(Rate::from_bits_per_second(-1.0).is_err());
        assert!(Rate::from_bits_per_second(f64::NAN).is_err());
        assert!(Rate::from_bits_per_second(f64::INFINITY).is_err());
        assert!(Rate::from_bytes_per_second(f64::MAX).is_err());
    }

    #[test]
    fn rates_format_in_bits() {
        let show = |bps: f64| Rate::from_bits_per_second(bps).unwrap().to_string();
        assert_eq!(show(128_000.0), "128 kbit/s");
        assert_eq!(show(1.5e6), "1.5 Mbit/s");
        assert_eq!(show(1e7), "10 Mbit/s");
        assert_eq!(show(2.4e9), "2.4 Gbit/s");
        assert_eq!(show(800.0), "800 bit/s");
        assert_eq!(show(1_234_567.0), "1.235 Mbit/s");
        assert_eq!(show(999_999.9), "1 Mbit/s");
        assert_eq!(show(0.5), "0.5 bit/s");
        assert_eq!(format_byte_rate(2.4 * 1_048_576.0), "2.4 MiB/s");
        assert_eq!(format_byte_rate(15.6 * 1024.0), "15.6 KiB/s");
        assert_eq!(format_byte_rate(800.0), "800 B/s");
        assert_eq!(format_byte_rate(1023.7), "1.0 KiB/s");
        assert_eq!(format_byte_rate(0.0), "0 B/s");
        assert_eq!(format_byte_rate(f64::NAN), "? B/s");
    }

    /// A rate keeps the unit it was written in, for display only: `--limit 256kbit` shows
    /// speeds in kbit/s, `--limit 16KiB/s` in KiB/s, and the two kinds still compare equal.
    #[test]
    fn rates_remember_their_unit_for_display_only() {
        let bits = parse_rate("256kbit").unwrap();
        let bytes = parse_rate("16KiB/s").unwrap();
        assert_eq!(bits.unit(), RateUnit::Bits);
        assert_eq!(bytes.unit(), RateUnit::Bytes);
        assert_eq!(parse_rate("1Mbps").unwrap().unit(), RateUnit::Bits);
        assert_eq!(parse_rate("2MB/s").unwrap().unit(), RateUnit::Bytes);
        assert_eq!(parse_rate("131072bit").unwrap(), bytes);
        assert!(parse_rate("128kbit").unwrap() < bits);
        assert_eq!(format_rate(250_312.0, bits.unit()), "250.3 kbit/s");
        assert_eq!(format_rate(16_300.0 * 8.0, bytes.unit()), "15.9 KiB/s");
        assert_eq!(format_rate(800.0, RateUnit::Bits), "800 bit/s");
        assert_eq!(format_rate(999_960.0, RateUnit::Bits), "1.0 Mbit/s");
        assert_eq!(format_rate(1.5e6, RateUnit::Bits), "1.5 Mbit/s");
        assert_eq!(format_rate(0.0, RateUnit::Bits), "0 bit/s");
        assert_eq!(format_rate(f64::NAN, RateUnit::Bits), "? bit/s");
        // Not serialized: a stored rate reads back as bits.
        let json = serde_json::to_string(&bytes).unwrap();
        assert_eq!(json, r#"{"bits_per_second":131072.0}"#);
    }

    #[test]
    fn rates_serialize_as_bits_and_refuse_bad_values() {
        let rate = Rate::from_bits_per_second(128_000.0).unwrap();
        let json = serde_json::to_string(&rate).unwrap();
        assert_eq!(json, r#"{"bits_per_second":128000.0}"#);
        assert_eq!(serde_json::from_str::<Rate>(&json).unwrap(), rate);
        assert!(serde_json::from_str::<Rate>(r#"{"bits_per_second":0.0}"#).is_err());
        assert!(serde_json::from_str::<Rate>(r#"{"bits_per_second":-5.0}"#).is_err());
    }

    #[test]
    fn durations_parse() {
        let cases: &[(&str, u64)] = &[
            ("45m", 45 * 60),
            ("1h30m", 5400),
            ("1h 30m", 5400),
            ("90s", 90),
            ("2d", 2 * 86_400),
            ("40min", 2400),
            ("2 days", 2 * 86_400),
            ("0", 0),
            ("18 h 38 min 29 s", 67_109),
        ];
        for &(text, want) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(want)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_durations_are_refused_with_the_value() {
        assert_eq!(
            parse_duration("90").unwrap_err().to_string(),
            "\"90\" is ambiguous: write 90s (seconds) or 90m (minutes)"
        );
        assert_eq!(
            parse_duration("45M").unwrap_err().to_string(),
            "\"45M\" is ambiguous: write 45min (minutes) or 45months (months)"
        );
        for text in [
            "",
            "-5m",
            "1h 30",
            "5 parsecs",
            "1.2.3h",
            "h",
            "1h!",
            "99999999999999999999y",
            "18446744073709551615s 1000ms",
            "1.5",
        ] {
            let msg = parse_duration(text).expect_err(text).to_string();
            assert!(msg.contains(&format!("{text:?}")), "{msg}");
            assert!(!msg.starts_with("error"), "{msg}");
        }
    }

    #[test]
    fn durations_format_for_people() {
        let f = |s: f64| format_duration(Duration::from_secs_f64(s));
        assert_eq!(f(67_108.864), "18 h 38 min 29 s");
        assert_eq!(f((2 * 86_400 + 3 * 3600 + 4 * 60) as f64), "2 d 3 h 4 min");
        assert_eq!(f((2 * 86_400 + 4 * 60 + 29) as f64), "2 d 4 min");
        assert_eq!(f(725.0), "12 min 5 s");
        assert_eq!(f(45.0), "45 s");
        assert_eq!(f(0.0), "0 s");
        assert_eq!(f(0.4), "0 s");
        assert_eq!(f(3605.0), "1 h 5 s");
        assert_eq!(format_duration(Duration::MAX), "213503982334601 d 7 h");
        assert_eq!(
            format_duration_compact(Duration::from_secs_f64(67_108.864)),
            "18h38m29s"
        );
        assert_eq!(format_duration_compact(Duration::ZERO), "0s");
    }

    /// How far the one-decimal display of `n` may be from `n` once parsed:
    /// half a tenth of the display unit, plus one byte of parse rounding.
    fn display_bound(shown: &str) -> u64 {
        let unit = shown.rsplit(' ').next().unwrap_or("B");
        match IEC_UNITS.iter().position(|&u| u == unit) {
            Some(0) | None => 0,
            Some(i) => (1u64 << (10 * i)) / 20 + 1,
        }
    }

    proptest! {
        #[test]
        fn plain_integers_are_bytes(n: u64) {
            prop_assert_eq!(parse_size(&n.to_string()), Ok(Size(n)));
        }

        #[test]
        fn exact_round_trips(n: u64) {
            let text = Size(n).exact();
            prop_assert!(text.len() <= n.to_string().len());
            prop_assert_eq!(parse_size(&text), Ok(Size(n)), "{}", text);
        }

        #[test]
        fn exact_round_trips_round_numbers(m in 0u64..10_000, shift in 0u32..54, dec in 0u32..16) {
            let a = m.checked_shl(shift).unwrap_or(0);
            let b = m.saturating_mul(10u64.pow(dec));
            for n in [a, b] {
                prop_assert_eq!(parse_size(&Size(n).exact()), Ok(Size(n)));
            }
        }

        #[test]
        fn display_round_trips_within_its_precision(n: u64) {
            let shown = Size(n).to_string();
            if shown == "16.0 EiB" {
                // Rounds up to 2^64, one past the largest size: refused, rightly.
                prop_assert!(n >= u64::MAX - (1u64 << 60) / 20);
                prop_assert!(parse_size(&shown).is_err());
                return Ok(());
            }
            let parsed = parse_size(&shown).map_err(|e| TestCaseError::fail(e.to_string()))?.0;
            prop_assert!(parsed.abs_diff(n) <= display_bound(&shown), "{} -> {} -> {}", n, shown, parsed);
        }

        #[test]
        fn rate_display_round_trips(bps in 1e-3f64..1e16) {
            let rate = Rate::from_bits_per_second(bps).unwrap();
            let back = parse_rate(&rate.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!((back.bits_per_second() - bps).abs() <= bps * 1e-3, "{} -> {}", bps, rate);
        }

        #[test]
        fn rate_display_never_panics(bps in proptest::num::f64::POSITIVE | proptest::num::f64::SUBNORMAL) {
            if let Ok(rate) = Rate::from_bits_per_second(bps) {
                let _ = parse_rate(&rate.to_string());
            }
            let _ = format_byte_rate(bps);
            let _ = format_byte_rate(-bps);
        }

        #[test]
        fn duration_round_trips(secs: u64, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs / 2, nanos);
            let shown = format_duration(d);
            let back = parse_duration(&shown).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let slack = if d.as_secs() >= 86_400 { 30.0 } else { 0.5 };
            prop_assert!((back.as_secs_f64() - d.as_secs_f64()).abs() <= slack * (1.0 + 1e-12) + 1e-9 * d.as_secs_f64(), "{:?} -> {}", d, shown);
            let compact = format_duration_compact(d);
            let back = parse_duration(&compact).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.as_secs(), rounded_seconds(d));
        }

        #[test]
        fn parsers_never_panic(s in ".*") {
            let _ = parse_size(&s);
            let _ = parse_rate(&s);
            let _ = parse_duration(&s);
        }

        #[test]
        fn parsers_never_panic_on_near_misses(s in "[0-9. ]{0,6}[a-zA-Z/]{0,6}") {
            for result in [parse_size(&s).err(), parse_rate(&s).err(), parse_duration(&s).err()].into_iter().flatten() {
                let msg = result.to_string();
                prop_assert!(msg.contains(&format!("{s:?}")), "{}", msg);
            }
        }
    }
}
