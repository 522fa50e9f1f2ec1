//! The configuration file: where it lives, what it may say, and how its settings combine with
//! command-line flags and built-in defaults.
//!
//! It exists for `upload run` (the scheduler daemon), which runs unattended and so cannot take
//! everything on its command line, and for per-host tokens, which do not belong there at all.
//!
//! Decisions, so that nobody has to rediscover them:
//! - The file is TOML at `$XDG_CONFIG_HOME/upload/config.toml`, else
//!   `$HOME/.config/upload/config.toml` ([`default_config_path`]); `--config PATH` or
//!   `UPLOAD_CONFIG` names another. A missing file at the default place means "all defaults"; a
//!   missing file named explicitly is an error, since the user expected it to be read.
//! - Every value is checked here, once, when the file is read: rates and durations become
//!   [`Rate`] and [`Duration`], paths are expanded. An error names the file, the line and the key,
//!   says what was expected and shows an example. An unknown key is an error, not a warning: a
//!   misspelt `limt` silently ignored would send at full speed over a metered link.
//! - `timetable` stays a string here; `schedule` parses it where it is used.
//! - `~` and `~/…` in paths mean `$HOME`; a relative path is relative to the configuration
//!   file's directory, so the file means the same thing whatever directory `upload` starts in.
//! - Host names are compared case-insensitively (the `url` crate lowercases them), without a
//!   port: a key such as `"files.example.org:8443"` or a URL is refused with an example.
//! - Tokens are never printed: [`HostConfig`]'s `Debug` hides them, and `upload config show`
//!   says only where a token comes from.
//! - The key path of a type error comes from `toml::de::Error`'s `Display` when it is given no
//!   input ([`error_key_path`]); the `error_messages_name_*` tests pin that down.

use crate::units::{self, Rate};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// How many transfers `upload run` sends at once when neither flag nor file says.
pub const DEFAULT_JOBS: u32 = 1;

/// An example file, for error messages and documentation.
pub const EXAMPLE: &str = r#"db = "~/.local/state/upload/upload.db"
timetable = "07:00,32kbit 23:00,off"
jobs = 1
limit = "100kbit"
give_up_after = "1d"

[hosts."files.example.org"]
token_file = "~/.config/upload/example.token"
"#;

/// Why the configuration could not be read. Each message says what was wrong, what was
/// expected, and gives an example; none starts with "error:".
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot find the configuration directory: neither XDG_CONFIG_HOME nor HOME is set; \
         set one, or name the file, e.g. --config ~/.config/upload/config.toml"
    )]
    NoConfigDir,

    #[error(
        "the configuration file \"{}\" does not exist; it was named by --config or UPLOAD_CONFIG, \
         so it must be there, e.g. a file with the line `jobs = 1`",
        path.display()
    )]
    NotFound { path: PathBuf },

    #[error("cannot read the configuration file \"{}\": {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error(
        "\"{}\" line {line}, column {column} is not valid TOML: {message}; \
         expected lines of key = value, e.g. limit = \"100kbit\"",
        path.display()
    )]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error(
        "unknown key `{key}` in \"{}\" line {line}; expected {expected}",
        path.display()
    )]
    UnknownKey {
        path: PathBuf,
        line: usize,
        /// The full key, e.g. `limt` or `hosts."files.example.org".tokn`.
        key: String,
        /// The keys allowed there, with an example.
        expected: String,
    },

    /// A value of the wrong type or that does not parse.
    #[error("{key} in \"{}\" line {line}: {problem}", path.display())]
    Value {
        path: PathBuf,
        line: usize,
        key: String,
        /// What was wrong and what was expected, with an example.
        problem: String,
    },

    #[error(
        "cannot read the token for {host} from \"{}\": {problem}; expected a file whose first \
         line is the token, e.g. 3f9c2a…",
        file.display()
    )]
    TokenFile {
        host: String,
        file: PathBuf,
        problem: String,
    },
}

/// The configuration file's contents, checked and typed. Every setting is optional; the default
/// (an empty file) is `Config::default()`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// The state database.
    pub db: Option<PathBuf>,
    /// The bandwidth timetable for `upload run`, unparsed (see `schedule`).
    pub timetable: Option<String>,
    /// Concurrent transfers in `upload run`, at least 1.
    pub jobs: Option<u32>,
    /// The default per-transfer limit for `upload send`.
    pub limit: Option<Rate>,
    /// Stop retrying a transfer after this long without progress.
    pub give_up_after: Option<Duration>,
    /// Per destination host (lowercase, no port).
    pub hosts: BTreeMap<String, HostConfig>,
}

/// Settings for one destination host.
#[derive(Clone, Default, PartialEq)]
pub struct HostConfig {
    pub token: Option<TokenSource>,
}

/// Where a host's bearer token comes from.
#[derive(Clone, PartialEq)]
pub enum TokenSource {
    /// Written in the configuration file itself.
    Inline(String),
    /// Read from this file (its first non-empty line not starting with `#`) when needed.
    File(PathBuf),
}

/// Hides the token: configurations get logged and printed.
impl fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostConfig")
            .field("token", &self.token)
            .finish()
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Inline(_) => f.write_str("Inline(<hidden>)"),
            TokenSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl Config {
    /// The bearer token for `host` (the host of the upload URL), reading its token file if
    /// that is where it lives. `None` when the file configures no token for the host.
    pub fn token_for(&self, host: &str) -> Result<Option<String>, ConfigError> {
        let Some(source) = self
            .hosts
            .get(&host.to_ascii_lowercase())
            .and_then(|h| h.token.as_ref())
        else {
            return Ok(None);
        };
        match source {
            TokenSource::Inline(token) => Ok(Some(token.clone())),
            TokenSource::File(file) => {
                let problem = |problem: String| ConfigError::TokenFile {
                    host: host.to_owned(),
                    file: file.clone(),
                    problem,
                };
                let text = std::fs::read_to_string(file).map_err(|e| problem(e.to_string()))?;
                let token = text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .ok_or_else(|| problem("the file holds no token".into()))?;
                Ok(Some(token.to_owned()))
            }
        }
    }
}

/// `$XDG_CONFIG_HOME/upload/config.toml`, else `$HOME/.config/upload/config.toml`; `None` when
/// neither variable is usable.
pub fn default_config_path() -> Option<PathBuf> {
    // The XDG spec says relative values are invalid and must be ignored.
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = match xdg {
        Some(dir) => dir,
        None => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".config"),
    };
    Some(base.join("upload").join("config.toml"))
}

/// Which configuration file to read, and whether the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    pub path: PathBuf,
    /// Named by `--config` or `UPLOAD_CONFIG`: it must exist.
    pub explicit: bool,
}

impl ConfigPath {
    /// The file named by `--config`/`UPLOAD_CONFIG` if any, else the default place.
    pub fn resolve(explicit: Option<&Path>) -> Result<ConfigPath, ConfigError> {
        match explicit {
            Some(p) => Ok(ConfigPath {
                path: p.to_path_buf(),
                explicit: true,
            }),
            None => Ok(ConfigPath {
                path: default_config_path().ok_or(ConfigError::NoConfigDir)?,
                explicit: false,
            }),
        }
    }

    /// Whether the file is there.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// The configuration: the file's, or all defaults when a default-placed file is absent.
    pub fn load(&self) -> Result<Config, ConfigError> {
        if !self.explicit && !self.exists() {
            return Ok(Config::default());
        }
        load(&self.path)
    }
}

/// Reads and checks the configuration file at `path`, which must exist.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            ConfigError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            ConfigError::Read {
                path: path.to_path_buf(),
                error,
            }
        }
    })?;
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    parse(&text, path, home.as_deref())
}

/// The file as written: serde checks keys and types, [`parse`] the values.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    db: Option<Spanned<String>>,
    timetable: Option<Spanned<String>>,
    jobs: Option<Spanned<i64>>,
    limit: Option<Spanned<String>>,
    give_up_after: Option<Spanned<String>>,
    #[serde(default)]
    hosts: BTreeMap<String, Spanned<RawHost>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    token_file: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
}

const TOP_KEYS: &str = "one of db, timetable, jobs, limit, give_up_after, [hosts.\"NAME\"], \
                        e.g. limit = \"100kbit\"";
const HOST_KEYS: &str = "token_file or token, e.g. token_file = \"~/.config/upload/example.token\"";

/// What a key expects, with an example, for type errors.
fn expectation(key: &Key) -> &'static str {
    match key {
        Key::Top(k) => match k.as_str() {
            "db" => "a path in quotes, e.g. db = \"~/.local/state/upload/upload.db\"",
            "timetable" => "a timetable in quotes, e.g. timetable = \"07:00,32kbit 23:00,off\"",
            "jobs" => "a whole number of transfers at once, at least 1, e.g. jobs = 2",
            "limit" => "a rate in quotes, e.g. limit = \"100kbit\"",
            "give_up_after" => "a duration in quotes, e.g. give_up_after = \"1d\"",
            "hosts" => {
                "a table per host, e.g. [hosts.\"files.example.org\"] and below it token_file = \"~/.config/upload/example.token\""
            }
            _ => "a value as in the example configuration",
        },
        Key::Host(_, None) => {
            "a table, e.g. [hosts.\"files.example.org\"] and below it token_file = \"~/.config/upload/example.token\""
        }
        Key::Host(_, Some(k)) if k == "token" => "the token in quotes, e.g. token = \"3f9c2a…\"",
        Key::Host(_, Some(_)) => {
            "a path in quotes, e.g. token_file = \"~/.config/upload/example.token\""
        }
    }
}

/// A key in the file, for messages.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    Top(String),
    /// `hosts."NAME"` or `hosts."NAME".field`.
    Host(String, Option<String>),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Top(k) => f.write_str(k),
            Key::Host(host, None) => write!(f, "hosts.{host:?}"),
            Key::Host(host, Some(k)) => write!(f, "hosts.{host:?}.{k}"),
        }
    }
}

impl Key {
    fn top(k: &str) -> Key {
        Key::Top(k.to_owned())
    }

    fn host(host: &str, field: &str) -> Key {
        Key::Host(host.to_owned(), Some(field.to_owned()))
    }

    /// From the dotted path `toml` reports; a host name may itself contain dots.
    fn from_dotted(path: &str) -> Key {
        let Some(rest) = path.strip_prefix("hosts.") else {
            return Key::Top(path.to_owned());
        };
        for field in ["token_file", "token"] {
            if let Some(host) = rest.strip_suffix(&format!(".{field}")) {
                return Key::host(host, field);
            }
        }
        Key::Host(rest.to_owned(), None)
    }
}

/// 1-based line and column of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// The dotted key path `toml` recorded for an error, e.g. `hosts.files.example.org`. It is not
/// public API, but `Display` shows it as "in `PATH`" when the error carries no input.
fn error_key_path(error: &toml::de::Error) -> Option<String> {
    let mut bare = error.clone();
    bare.set_input(None);
    let shown = bare.to_string();
    shown
        .lines()
        .find_map(|l| l.strip_prefix("in `")?.strip_suffix('`').map(str::to_owned))
}

/// Turns `toml`'s error into one that names the key, the line and the file.
fn toml_error(error: &toml::de::Error, text: &str, path: &Path) -> ConfigError {
    let (line, column) = position(text, error.span().map_or(0, |s| s.start));
    let path = path.to_path_buf();
    let message = error.message();
    let key_path = error_key_path(error);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let (key, expected) = match key_path.as_deref().map(Key::from_dotted) {
            Some(Key::Host(host, _)) => (Key::host(&host, name), HOST_KEYS.to_owned()),
            _ => (Key::top(name), TOP_KEYS.to_owned()),
        };
        return ConfigError::UnknownKey {
            path,
            line,
            key: key.to_string(),
            expected,
        };
    }
    match key_path {
        Some(dotted) => {
            let key = Key::from_dotted(&dotted);
            // serde says "invalid type: string \"2\", expected u32": keep what was found, and
            // say what is expected in words.
            let found = match message.strip_prefix("invalid type: ") {
                // serde's words for TOML's arrays and tables
                Some(f) => match f.split(", expected").next().unwrap_or(f) {
                    "sequence" => "found an array".to_owned(),
                    "map" => "found a table".to_owned(),
                    f => format!("found {f}"),
                },
                None => message.to_owned(),
            };
            ConfigError::Value {
                path,
                line,
                key: key.to_string(),
                problem: format!("{found}; expected {}", expectation(&key)),
            }
        }
        None => ConfigError::Syntax {
            path,
            line,
            column,
            message: message.trim_end().replace('\n', "; "),
        },
    }
}

/// Checks and types a configuration file's text. `path` is for messages and relative paths;
/// `home` expands `~`.
fn parse(text: &str, path: &Path, home: Option<&Path>) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(&e, text, path))?;
    let base = path.parent().unwrap_or(Path::new(""));
    let value_error =
        |key: Key, span: std::ops::Range<usize>, problem: String| ConfigError::Value {
            path: path.to_path_buf(),
            line: position(text, span.start).0,
            key: key.to_string(),
            problem,
        };
    let path_value = |key: Key, value: Spanned<String>| {
        expand_path(value.get_ref(), base, home)
            .map_err(|problem| value_error(key, value.span(), problem))
    };

    let db = raw.db.map(|v| path_value(Key::top("db"), v)).transpose()?;
    let timetable = raw.timetable.map(Spanned::into_inner);
    let jobs = match raw.jobs {
        None => None,
        Some(v) => match u32::try_from(*v.get_ref()) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(value_error(
                    Key::top("jobs"),
                    v.span(),
                    format!(
                        "{} is not a number of transfers; expected {}",
                        v.get_ref(),
                        expectation(&Key::top("jobs"))
                    ),
                ));
            }
        },
    };
    let limit = raw
        .limit
        .map(|v| {
            units::parse_rate(v.get_ref())
                .map_err(|e| value_error(Key::top("limit"), v.span(), e.to_string()))
        })
        .transpose()?;
    let give_up_after = match raw.give_up_after {
        None => None,
        Some(v) => match units::parse_duration(v.get_ref()) {
            Ok(d) if d.is_zero() => {
                return Err(value_error(
                    Key::top("give_up_after"),
                    v.span(),
                    format!(
                        "{:?} would give up before trying; expected more than 0, e.g. give_up_after = \"1d\"",
                        v.get_ref()
                    ),
                ));
            }
            Ok(d) => Some(d),
            Err(e) => {
                return Err(value_error(
                    Key::top("give_up_after"),
                    v.span(),
                    e.to_string(),
                ));
            }
        },
    };

    let mut hosts = BTreeMap::new();
    for (name, entry) in raw.hosts {
        let span = entry.span();
        let key = Key::Host(name.clone(), None);
        check_host_name(&name).map_err(|p| value_error(key.clone(), span.clone(), p))?;
        let entry = entry.into_inner();
        let token = match (entry.token, entry.token_file) {
            (Some(t), Some(f)) => {
                let first = if t.span().start < f.span().start {
                    t.span()
                } else {
                    f.span()
                };
                return Err(value_error(
                    key,
                    first,
                    "sets both token and token_file; expected one of them, e.g. \
                     token_file = \"~/.config/upload/example.token\""
                        .into(),
                ));
            }
            (Some(t), None) if t.get_ref().trim().is_empty() => {
                return Err(value_error(
                    Key::host(&name, "token"),
                    t.span(),
                    "is empty; expected the token in quotes, e.g. token = \"3f9c2a…\"".into(),
                ));
            }
            (Some(t), None) => Some(TokenSource::Inline(t.into_inner().trim().to_owned())),
            (None, Some(f)) => Some(TokenSource::File(path_value(
                Key::host(&name, "token_file"),
                f,
            )?)),
            (None, None) => None,
        };
        let lower = name.to_ascii_lowercase();
        if hosts.contains_key(&lower) {
            return Err(value_error(
                key,
                span,
                format!(
                    "names the host {lower:?} a second time (host names ignore case); \
                     expected one table per host, e.g. [hosts.\"files.example.org\"]"
                ),
            ));
        }
        hosts.insert(lower, HostConfig { token });
    }

    Ok(Config {
        db,
        timetable,
        jobs,
        limit,
        give_up_after,
        hosts,
    })
}

/// A host table is keyed by the bare host name of the upload URL.
fn check_host_name(name: &str) -> Result<(), String> {
    let example = "expected the host name of the upload URL, e.g. [hosts.\"files.example.org\"]";
    if name.trim().is_empty() {
        return Err(format!("the host name is empty; {example}"));
    }
    if name.contains('/') {
        return Err(format!("{name:?} is not a host name; {example}"));
    }
    if !name.starts_with('[') && name.contains(':') {
        return Err(format!(
            "{name:?} has a port, but tokens are per host, whatever the port; {example}"
        ));
    }
    Ok(())
}

/// `~` and `~/…` become `home`; a relative path is relative to `base` (the file's directory).
fn expand_path(raw: &str, base: &Path, home: Option<&Path>) -> Result<PathBuf, String> {
    let example = "e.g. \"~/.local/state/upload/upload.db\" or \"/var/lib/upload/upload.db\"";
    if raw.trim().is_empty() {
        return Err(format!("the path is empty; expected a path, {example}"));
    }
    let expanded = if raw == "~" || raw.starts_with("~/") {
        let home = home.ok_or_else(|| {
            format!("{raw:?} starts with ~ but HOME is not set; expected a full path, {example}")
        })?;
        match raw.strip_prefix("~/") {
            Some(rest) => home.join(rest),
            None => home.to_path_buf(),
        }
    } else if raw.starts_with('~') {
        return Err(format!(
            "{raw:?}: ~user is not supported, only ~ for your own home; expected a full path, {example}"
        ));
    } else {
        PathBuf::from(raw)
    };
    Ok(if expanded.is_relative() {
        base.join(expanded)
    } else {
        expanded
    })
}

/// How long `upload run` lets a transfer fail continuously before marking it failed, when
/// neither flag nor file says: unattended, it must not retry a dead destination forever.
/// `upload send` has a person watching, and retries until stopped.
pub const RUN_GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The commands whose defaults differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingsFor {
    Send,
    Run,
}

/// Where an effective setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Flag,
    Env,
    Config,
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::Config => "config",
            Source::Default => "default",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

/// Settings given on the command line (or by environment variables that clap folds into
/// flags); `None` where not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flags {
    pub db: Option<PathBuf>,
    /// `db` came from `UPLOAD_DB`, not `--db` (clap gives both as one value).
    pub db_from_env: bool,
    pub timetable: Option<String>,
    pub jobs: Option<u32>,
    pub limit: Option<Rate>,
    pub give_up_after: Option<Duration>,
}

/// The settings in force: flags over the configuration file over built-in defaults, merged
/// once ([`Effective::merge`]) and read by every command, so that `--help`, `config show` and
/// what a command does cannot disagree. `None` values mean "none": no timetable, no limit;
/// for `give_up_after`, the command's own default ([`Effective::give_up_after_for`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    /// `None` only when no default could be found (no HOME).
    pub db: Setting<Option<PathBuf>>,
    pub timetable: Setting<Option<String>>,
    pub jobs: Setting<u32>,
    pub limit: Setting<Option<Rate>>,
    pub give_up_after: Setting<Option<Duration>>,
}

/// Wraps a setting whose default is "none".
fn some<T>(o: Option<T>) -> Option<Option<T>> {
    o.map(Some)
}

/// The first of flag, config, default that is set.
fn pick<T>(flag: Option<T>, flag_source: Source, config: Option<T>, default: T) -> Setting<T> {
    match (flag, config) {
        (Some(value), _) => Setting {
            value,
            source: flag_source,
        },
        (None, Some(value)) => Setting {
            value,
            source: Source::Config,
        },
        (None, None) => Setting {
            value: default,
            source: Source::Default,
        },
    }
}

impl Effective {
    /// When `command` gives a transfer up: the flag's or the file's setting, else the
    /// command's default ([`RUN_GIVE_UP_AFTER`] for `upload run`, never for `upload send`).
    pub fn give_up_after_for(&self, command: SettingsFor) -> Option<Duration> {
        match (self.give_up_after.source, command) {
            (Source::Default, SettingsFor::Run) => Some(RUN_GIVE_UP_AFTER),
            _ => self.give_up_after.value,
        }
    }

    /// Merges `flags` over `config` over the defaults; `default_db` is the XDG default
    /// (`store::default_db_path`), if there is one.
    pub fn merge(flags: &Flags, config: &Config, default_db: Option<PathBuf>) -> Effective {
        let db_source = if flags.db_from_env {
            Source::Env
        } else {
            Source::Flag
        };
        Effective {
            db: pick(
                some(flags.db.clone()),
                db_source,
                some(config.db.clone()),
                default_db,
            ),
            timetable: pick(
                some(flags.timetable.clone()),
                Source::Flag,
                some(config.timetable.clone()),
                None,
            ),
            jobs: pick(flags.jobs, Source::Flag, config.jobs, DEFAULT_JOBS),
            limit: pick(some(flags.limit), Source::Flag, some(config.limit), None),
            give_up_after: pick(
                some(flags.give_up_after),
                Source::Flag,
                some(config.give_up_after),
                None,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: &str = "/home/ada";

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(
            text,
            Path::new("/etc/upload/config.toml"),
            Some(Path::new(HOME)),
        )
    }

    fn error(text: &str) -> String {
        parse_str(text).expect_err(text).to_string()
    }

    #[test]
    fn full_file_parses() {
        let config = parse_str(EXAMPLE).unwrap();
        assert_eq!(
            config.db,
            Some(PathBuf::from("/home/ada/.local/state/upload/upload.db"))
        );
        assert_eq!(config.timetable.as_deref(), Some("07:00,32kbit 23:00,off"));
        assert_eq!(config.jobs, Some(1));
        assert_eq!(config.limit.unwrap().bits_per_second(), 100_000.0);
        assert_eq!(config.give_up_after, Some(Duration::from_secs(86_400)));
        assert_eq!(
            config.hosts["files.example.org"].token,
            Some(TokenSource::File(PathBuf::from(
                "/home/ada/.config/upload/example.token"
            )))
        );
    }

    #[test]
    fn defaults_when_missing() {
        assert_eq!(parse_str("").unwrap(), Config::default());
        let absent = ConfigPath {
            path: PathBuf::from("/nonexistent/upload/config.toml"),
            explicit: false,
        };
        assert_eq!(absent.load().unwrap(), Config::default());
        let named = ConfigPath {
            explicit: true,
            ..absent
        };
        let msg = named.load().unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/upload/config.toml"), "{msg}");
        assert!(msg.contains("does not exist"), "{msg}");

        let e = Effective::merge(&Flags::default(), &Config::default(), Some("/d.db".into()));
        assert_eq!(
            e.jobs,
            Setting {
                value: 1,
                source: Source::Default
            }
        );
        assert_eq!(e.db.value, Some(PathBuf::from("/d.db")));
        assert_eq!(e.limit.source, Source::Default);
        assert_eq!(e.limit.value, None);
        assert_eq!(e.give_up_after_for(SettingsFor::Send), None);
        assert_eq!(
            e.give_up_after_for(SettingsFor::Run),
            Some(RUN_GIVE_UP_AFTER)
        );
    }

    #[test]
    fn a_configured_give_up_after_holds_for_every_command() {
        let config = parse_str("give_up_after = \"2s\"").unwrap();
        let e = Effective::merge(&Flags::default(), &config, None);
        for command in [SettingsFor::Send, SettingsFor::Run] {
            assert_eq!(e.give_up_after_for(command), Some(Duration::from_secs(2)));
        }
        let flags = Flags {
            give_up_after: Some(Duration::from_secs(60)),
            ..Flags::default()
        };
        let e = Effective::merge(&flags, &config, None);
        assert_eq!(e.give_up_after.source, Source::Flag);
        assert_eq!(
            e.give_up_after_for(SettingsFor::Send),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn flags_override_config_over_defaults() {
        let config = parse_str("jobs = 3\nlimit = \"1Mbit\"\ndb = \"/c.db\"").unwrap();
        let flags = Flags {
            jobs: Some(5),
            db: Some("/e.db".into()),
            db_from_env: true,
            ..Flags::default()
        };
        let e = Effective::merge(&flags, &config, None);
        assert_eq!(
            e.jobs,
            Setting {
                value: 5,
                source: Source::Flag
            }
        );
        assert_eq!(e.limit.source, Source::Config);
        assert_eq!(e.db.source, Source::Env);
        assert_eq!(e.give_up_after.source, Source::Default);
    }

    #[test]
    fn error_messages_name_unknown_keys() {
        let msg = error("jobs = 1\nlimt = \"100kbit\"\n");
        assert!(msg.contains("unknown key `limt`"), "{msg}");
        assert!(msg.contains("/etc/upload/config.toml"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("limit"), "{msg}");

        let msg = error("[hosts.\"files.example.org\"]\n\ntokn = \"x\"\n");
        assert!(
            msg.contains(r#"unknown key `hosts."files.example.org".tokn`"#),
            "{msg}"
        );
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("token_file"), "{msg}");
    }

    #[test]
    fn error_messages_name_wrong_types() {
        let msg = error("\n\njobs = \"2\"\n");
        assert_eq!(
            msg,
            "jobs in \"/etc/upload/config.toml\" line 3: found string \"2\"; expected a whole \
             number of transfers at once, at least 1, e.g. jobs = 2"
        );
        let msg = error("[hosts.\"a.example\"]\ntoken_file = 5\n");
        assert!(
            msg.starts_with(r#"hosts."a.example".token_file in"#),
            "{msg}"
        );
        assert!(msg.contains("line 2"), "{msg}");
        let msg = error("timetable = 7\n");
        assert!(msg.contains("timetable = \"07:00"), "{msg}");
        assert!(error("jobs = 0").contains("at least 1"));
        assert!(error("jobs = -1").contains("at least 1"));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let msg = error("jobs = 1\nlimit = \n");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(msg.contains("not valid TOML"), "{msg}");
    }

    #[test]
    fn token_and_token_file_together_are_refused() {
        let msg = error("[hosts.\"files.example.org\"]\ntoken_file = \"/t\"\ntoken = \"abc\"\n");
        assert!(msg.contains(r#"hosts."files.example.org""#), "{msg}");
        assert!(msg.contains("both token and token_file"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(!msg.contains("abc"), "{msg}");
    }

    #[test]
    fn tilde_expands_and_relative_paths_follow_the_file() {
        let config = parse_str("db = \"~\"").unwrap();
        assert_eq!(config.db, Some(PathBuf::from(HOME)));
        let config = parse_str("db = \"state/u.db\"").unwrap();
        assert_eq!(config.db, Some(PathBuf::from("/etc/upload/state/u.db")));
        let config = parse_str("db = \"/a/~/b\"").unwrap();
        assert_eq!(config.db, Some(PathBuf::from("/a/~/b")));
        assert!(error("db = \"~bob/u.db\"").contains("~user is not supported"));
        let msg = parse("db = \"~/u.db\"", Path::new("/c.toml"), None)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("HOME is not set"), "{msg}");
    }

    #[test]
    fn bad_units_name_the_key() {
        let msg = error("limit = \"100k\"");
        assert!(
            msg.starts_with("limit in \"/etc/upload/config.toml\" line 1: \"100k\" is ambiguous"),
            "{msg}"
        );
        let msg = error("\ngive_up_after = \"90\"");
        assert!(msg.starts_with("give_up_after in"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        assert!(error("give_up_after = \"0s\"").contains("more than 0"));
    }

    #[test]
    fn host_names_are_bare_and_case_insensitive() {
        let config = parse_str("[hosts.\"Files.Example.ORG\"]\ntoken = \"s3cret\"").unwrap();
        assert_eq!(
            config.token_for("files.example.org").unwrap().as_deref(),
            Some("s3cret")
        );
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(config.token_for("other.example").unwrap(), None);
        assert!(
            error("[hosts.\"https://a.example/files\"]\ntoken = \"x\"").contains("not a host name")
        );
        assert!(error("[hosts.\"a.example:8443\"]\ntoken = \"x\"").contains("has a port"));
    }

    #[test]
    fn token_files_are_read_when_needed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "# comment\n\n  tok-123  \n").unwrap();
        let text = format!(
            "[hosts.\"a.example\"]\ntoken_file = {:?}\n",
            file.to_str().unwrap()
        );
        let config = parse_str(&text).unwrap();
        assert_eq!(
            config.token_for("a.example").unwrap().as_deref(),
            Some("tok-123")
        );

        std::fs::write(&file, "# only a comment\n").unwrap();
        let msg = config.token_for("a.example").unwrap_err().to_string();
        assert!(msg.contains(file.to_str().unwrap()), "{msg}");
        assert!(msg.contains("holds no token"), "{msg}");

        std::fs::remove_file(&file).unwrap();
        let msg = config.token_for("a.example").unwrap_err().to_string();
        assert!(msg.contains(file.to_str().unwrap()), "{msg}");
    }
}
