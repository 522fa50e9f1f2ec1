//! The command line: argument structs (plain data, parsed into typed values by clap), one file
//! per command, and the one place that prints and turns errors into exit statuses.
//!
//! Exit statuses are part of the interface (scripts and the scheduler read them); see
//! [`exit`].

mod completions;
mod config;
mod estimate;
mod queue;
mod run;
mod send;
mod serve;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit statuses, documented in README and `upload send --help`.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Anything not covered below (e.g. the state database cannot be opened).
    pub const FAILURE: u8 = 1;
    /// Bad arguments or input (a malformed size, rate, time or URL): fix the command line.
    pub const USAGE: u8 = 2;
    /// The source file is missing or unreadable.
    pub const SOURCE: u8 = 3;
    /// The source is not a regular file (a directory, a device).
    pub const NOT_A_FILE: u8 = 4;
    /// The source file changed since its upload began; `--restart` starts over.
    pub const CHANGED: u8 = 5;
    /// The server could not be reached, or kept failing, within `--max-retries`.
    pub const NETWORK: u8 = 6;
    /// The server refused the credentials (401/403), or we refused the server's: its TLS
    /// certificate is not trusted.
    pub const AUTH: u8 = 7;
    /// The server refused the size (413).
    pub const TOO_LARGE: u8 = 8;
    /// The server received the whole file but its SHA-256 did not match: nothing was published.
    pub const VERIFY: u8 = 9;
    /// Another `upload` process is sending this transfer right now.
    pub const BUSY: u8 = 10;
    /// The server answered in a way tus does not allow, or the upload vanished from it.
    pub const PROTOCOL: u8 = 11;
    /// ssh:// only: the remote side has no `upload` to run (not on its PATH, or not at
    /// `--remote-upload`).
    pub const REMOTE_UPLOAD: u8 = 12;
    /// ssh:// only: the remote directory is missing, not a directory, or not writable; also
    /// the status `upload serve --stdio` exits with then, which is how the client knows.
    pub const REMOTE_DIR: u8 = crate::send::ssh::REMOTE_DIR_STATUS as u8;
    /// ssh:// only: the ssh login was refused (no key the server accepts, BatchMode).
    pub const SSH_LOGIN: u8 = 14;
    /// ssh:// only: the server's host key is unknown or changed (known_hosts).
    pub const SSH_HOST_KEY: u8 = 15;
    /// Interrupted by SIGINT or SIGTERM; progress is saved, rerun to continue.
    pub const INTERRUPTED: u8 = 130;

    /// The status of a failed pipe (ssh). Unreachable and closed are retried, so they end
    /// as [`NETWORK`] when retries run out; seen here they were not retried.
    pub fn for_pipe(kind: crate::client::PipeFailure) -> u8 {
        use crate::client::PipeFailure;
        match kind {
            PipeFailure::NoProgram => USAGE,
            PipeFailure::LoginRefused => SSH_LOGIN,
            PipeFailure::HostKey => SSH_HOST_KEY,
            PipeFailure::NoRemoteUpload => REMOTE_UPLOAD,
            PipeFailure::RemoteDir => REMOTE_DIR,
            PipeFailure::Unreachable | PipeFailure::Closed => NETWORK,
        }
    }

    /// The table printed in `upload send --help` and README.
    pub const TABLE: &str = "\
Exit status:
  0   done: the file is on the server, verified
  1   other failure (e.g. the state database cannot be opened)
  2   bad arguments (size, rate, time, URL), or no tus endpoint at the URL (404)
  3   the source file is missing or unreadable
  4   the source is not a regular file
  5   the source changed since its upload began (--restart starts over)
  6   the server could not be reached or kept failing (see --max-retries)
  7   the server refused the credentials (401/403), or its TLS certificate is not trusted
      (a private CA needs --ca FILE)
  8   the server refused the size (413)
  9   the server's SHA-256 of the whole file did not match: nothing was published
  10  another upload process is sending this transfer
  11  the server broke the tus protocol, or the upload vanished from it
  12  ssh:// the remote side cannot run upload (not on its PATH: see --remote-upload)
  13  ssh:// the remote directory is missing, not a directory, or not writable
  14  ssh:// the ssh login was refused (no key the server accepts; BatchMode=yes)
  15  ssh:// the server's host key is unknown or changed (known_hosts)
  130 interrupted: progress is saved, rerun the same command to continue";
}

/// Get big files over slow, flaky uplinks, resumably and verified (tus 1.0).
#[derive(Debug, Parser)]
#[command(name = "upload", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The state database (transfers, link history).
    /// [default: $XDG_STATE_HOME/upload/upload.db]
    #[arg(long, global = true, env = "UPLOAD_DB", value_name = "PATH")]
    pub db: Option<PathBuf>,

    /// The configuration file. [default: $XDG_CONFIG_HOME/upload/config.toml]
    #[arg(long, global = true, env = "UPLOAD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// More log output on stderr (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log lines for people, or one JSON object per line (for journald and log shippers).
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Logs go to stderr. The server and the scheduler log what they do by default; a client
/// shows its progress display instead and logs only errors unless asked.
fn init_logging(verbose: u8, format: LogFormat, command: &Command) {
    let default = match (verbose, command) {
        (0, Command::Serve(_) | Command::Run(_)) => "upload=info",
        (0, _) => "upload=error",
        (1, _) => "upload=info",
        _ => "upload=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let builder = builder.with_timer(LogTime);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// Log times in the one format of every JSON output (`schedule::json_time`: RFC 3339 UTC to
/// the second), instead of tracing's microseconds: `run --log-format json` and `send --json`
/// read alike.
struct LogTime;

impl tracing_subscriber::fmt::time::FormatTime for LogTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        w.write_str(&crate::schedule::json_time(&chrono::Utc::now()))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// How long an upload takes on this link, when it finishes within the allowed windows,
    /// and whether building on the remote side is faster.
    #[command(after_help = estimate::AFTER_HELP)]
    Estimate(estimate::Args),

    /// Upload a file to a tus server, or over ssh: chunked, checksummed, resumable; rerun to resume.
    #[command(after_help = send::after_help())]
    Send(send::Args),

    /// Receive uploads: a tus 1.0 server that publishes only complete, verified files.
    #[command(after_help = serve::AFTER_HELP)]
    Serve(serve::Args),

    /// The persistent queue of transfers for `upload run`.
    #[command(after_help = queue::AFTER_HELP)]
    Queue(queue::Args),

    /// Send the queue: priorities, deadlines, one shared budget, a bandwidth timetable.
    #[command(after_help = run::AFTER_HELP)]
    Run(run::Args),

    /// Each transfer's state, offset, rate, finish time within the timetable, last error.
    Status(queue::StatusArgs),

    /// Show or change the budget of `upload run` (rate, off, pause), or --clear it.
    Limit(queue::LimitArgs),

    /// Show the configuration in force: the file read, each setting and where it comes from.
    #[command(after_help = config::after_help())]
    Config(config::Args),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    #[command(after_help = completions::COMPLETIONS_HELP)]
    Completions(completions::CompletionsArgs),

    /// Print the manual page (roff) of upload, or of one command, on stdout.
    #[command(after_help = completions::MAN_HELP)]
    Man(completions::ManArgs),
}

/// An error on its way out, with the exit status it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code,
            error: error.into(),
        }
    }

    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self::new(exit::USAGE, error)
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::new(exit::FAILURE, e)
    }
}

/// Parses the command line, runs the command, prints, and returns the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(f) => {
            // An interruption is what the user asked for, not an error: it says how to go on.
            if f.code == exit::INTERRUPTED {
                eprintln!("{}", error_text(&f.error));
            } else {
                eprintln!("error: {}", error_text(&f.error));
            }
            ExitCode::from(f.code)
        }
    }
}

/// An error and its causes on one line, each cause once. Many errors (ours, and std's wrapped
/// by other crates) already show their source in their own message and return it from
/// `source()` as well; anyhow's `{:#}` then printed it twice ("File exists (os error 17): File
/// exists (os error 17)"). A cause whose text is already on the line adds nothing.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !cause.is_empty() && !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn run(cli: Cli) -> Result<(), Failure> {
    init_logging(cli.verbose, cli.log_format, &cli.command);
    if !matches!(
        cli.command,
        Command::Send(_) | Command::Run(_) | Command::Serve(_)
    ) {
        // `upload status | head` ends quietly, as Unix tools do, instead of panicking on the
        // closed pipe. Long-running commands keep Rust's default (ignore SIGPIPE) and ignore
        // write errors on their output: a vanished reader must not stop an upload.
        // SAFETY: restoring a signal's default disposition before any thread writes output.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let global = Global {
        db: cli.db,
        config: cli.config,
        loaded: std::cell::OnceCell::new(),
    };
    match cli.command {
        Command::Estimate(args) => estimate::run(&global, args),
        Command::Send(args) => send::run(&global, args),
        Command::Serve(args) => serve::run(&global, args),
        Command::Queue(args) => queue::run(&global, args),
        Command::Run(args) => run::run(&global, args),
        Command::Status(args) => queue::status(&global, args),
        Command::Limit(args) => queue::limit(&global, args),
        Command::Config(args) => config::run(&global, args),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
    }
}

/// Options every command may use, and the configuration file behind them.
pub struct Global {
    /// `--db` or `UPLOAD_DB`.
    pub db: Option<PathBuf>,
    /// `--config` or `UPLOAD_CONFIG`.
    pub config: Option<PathBuf>,
    loaded: std::cell::OnceCell<crate::config::Config>,
}

impl Global {
    pub fn config_path(&self) -> Result<crate::config::ConfigPath, Failure> {
        crate::config::ConfigPath::resolve(self.config.as_deref()).map_err(Failure::usage)
    }

    /// The configuration file's settings (all defaults without a file), read once.
    pub fn config(&self) -> Result<&crate::config::Config, Failure> {
        if let Some(c) = self.loaded.get() {
            return Ok(c);
        }
        let config = match crate::config::ConfigPath::resolve(self.config.as_deref()) {
            Ok(path) => path.load().map_err(Failure::usage)?,
            // No HOME and no XDG_CONFIG_HOME: nothing to read, and nothing was asked for.
            Err(_) if self.config.is_none() => crate::config::Config::default(),
            Err(e) => return Err(Failure::usage(e)),
        };
        Ok(self.loaded.get_or_init(|| config))
    }

    /// The settings in force for a command: its `flags` (clap folds their environment
    /// variables in) over the configuration file over the defaults. The one place where they
    /// are combined; every command reads what this returns.
    pub fn settings(
        &self,
        flags: crate::config::Flags,
    ) -> Result<crate::config::Effective, Failure> {
        let flags = crate::config::Flags {
            db: self.db.clone(),
            db_from_env: self.db_from_env(),
            ..flags
        };
        Ok(crate::config::Effective::merge(
            &flags,
            self.config()?,
            crate::store::default_db_path().ok(),
        ))
    }

    /// `--db` came from `UPLOAD_DB`: clap gives both as one value, and the variable wins the
    /// attribution when it holds the same path.
    fn db_from_env(&self) -> bool {
        self.db
            .as_deref()
            .is_some_and(|db| std::env::var_os("UPLOAD_DB").as_deref() == Some(db.as_os_str()))
    }

    /// The state database path: `--db`/`UPLOAD_DB`, else the config file's, else the XDG
    /// default.
    pub fn db_path(&self) -> Result<PathBuf, Failure> {
        match self.settings(crate::config::Flags::default())?.db.value {
            Some(p) => Ok(p),
            None => crate::store::default_db_path().map_err(Failure::usage),
        }
    }

    /// The configured token of `host`, if any.
    pub fn token_for(&self, host: &str) -> Result<Option<String>, Failure> {
        self.config()?.token_for(host).map_err(Failure::usage)
    }

    /// Every configured host's token.
    pub fn host_tokens(&self) -> Result<std::collections::HashMap<String, String>, Failure> {
        let config = self.config()?;
        let mut out = std::collections::HashMap::new();
        for host in config.hosts.keys() {
            if let Some(t) = config.token_for(host).map_err(Failure::usage)? {
                out.insert(host.clone(), t);
            }
        }
        Ok(out)
    }
}

/// "first", "second", ... for nights and windows, as people say them.
pub fn ordinal(n: u32) -> String {
    const WORDS: [&str; 10] = [
        "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth",
        "tenth",
    ];
    match n {
        1..=10 => WORDS[n as usize - 1].to_string(),
        _ => {
            let suffix = match (n % 10, n % 100) {
                (_, 11..=13) => "th",
                (1, _) => "st",
                (2, _) => "nd",
                (3, _) => "rd",
                _ => "th",
            };
            format!("{n}{suffix}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn readme_documents_every_exit_status() {
        let readme = include_str!("../../README.md");
        let codes = |text: &str, prefix: &str| -> Vec<u8> {
            text.lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                .collect()
        };
        let in_help = codes(exit::TABLE, "  ");
        assert_eq!(in_help.len(), 17, "{in_help:?}");
        // The exit table's section only: other tables have rows that start with a number too
        // ("| 128 kbit/s | ...").
        let section = readme
            .split_once("### `upload send` exit statuses")
            .map(|(_, rest)| rest.split("\n#").next().unwrap_or(rest))
            .expect("README has an exit statuses section");
        assert_eq!(
            codes(section, "| "),
            in_help,
            "README's exit table differs from --help's"
        );
    }

    /// A source shown in its wrapper's message and returned by `source()` is printed once; a
    /// source the wrapper does not show still is.
    #[test]
    fn each_cause_is_printed_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open \"x\": {source}")]
        struct Shown {
            #[source]
            source: std::io::Error,
        }
        let os = || std::io::Error::from_raw_os_error(20);
        let shown =
            anyhow::Error::new(Shown { source: os() }).context("opening the state database");
        let text = error_text(&shown);
        let once = os().to_string();
        assert_eq!(text.matches(&once).count(), 1, "{text}");
        assert_eq!(
            text,
            format!("opening the state database: cannot open \"x\": {once}")
        );
        let hidden = anyhow::Error::new(os()).context("reading the token file");
        assert_eq!(
            error_text(&hidden),
            format!("reading the token file: {once}")
        );
    }

    #[test]
    fn ordinals() {
        assert_eq!(ordinal(3), "third");
        assert_eq!(ordinal(11), "11th");
        assert_eq!(ordinal(22), "22nd");
        assert_eq!(ordinal(101), "101st");
    }
}
