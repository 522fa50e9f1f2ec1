//! `upload config show [--json]`: which configuration file is read, the settings in force and
//! where each comes from (flag, env, config, default), and which hosts have a token. Tokens are
//! never printed, only where they come from.

use super::{Failure, Global, exit};
use crate::config::{
    Config, ConfigPath, Effective, Flags, Setting, SettingsFor, Source, TokenSource,
};
use crate::schedule::Budget;
use crate::units::format_duration;
use serde_json::{Value, json};
use std::path::Path;

/// Examples and the file's format, built around [`crate::config::EXAMPLE`] so the help
/// cannot drift from the example the tests parse.
pub fn after_help() -> String {
    format!(
        "Examples:
  upload config show
  upload config show --json
  upload --config ./test.toml config show

The file is TOML at $XDG_CONFIG_HOME/upload/config.toml (else ~/.config/upload/config.toml);
--config PATH or UPLOAD_CONFIG=PATH names another. Every key is optional:

{}
A host takes token_file (its first line is the token) or token, not both.",
        crate::config::EXAMPLE
    )
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the configuration file used, each setting with its value and source, and the
    /// hosts that have a token.
    Show {
        /// Print one JSON object instead.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(global: &Global, args: Args) -> Result<(), Failure> {
    match args.command {
        Command::Show { json } => show(global, json),
    }
}

/// The configuration file came from `--config` or from `UPLOAD_CONFIG`: the variable wins
/// the attribution when it holds the same path (clap gives both as one).
fn flag_or_env(var: &str, value: &Path) -> Source {
    if std::env::var_os(var).as_deref() == Some(value.as_os_str()) {
        Source::Env
    } else {
        Source::Flag
    }
}

fn show(global: &Global, json: bool) -> Result<(), Failure> {
    let location = global.config_path()?;
    // Read here as well as by `settings` so a missing named file is this command's error.
    location.load().map_err(|e| Failure::new(exit::USAGE, e))?;
    let config = global.config()?;
    let effective = global.settings(Flags::default())?;
    let file_source = if location.explicit {
        flag_or_env("UPLOAD_CONFIG", &location.path)
    } else {
        Source::Default
    };
    // Not a setting of the file but in force all the same: `upload limit`'s saved budget. A
    // database that does not exist yet holds none, and is not created just to say so.
    let over = match effective.db.value.as_deref().filter(|p| p.exists()) {
        Some(path) => {
            let store = crate::store::Store::open(path)?;
            crate::queue::budget_override(&store)?
        }
        None => None,
    };
    if json {
        let mut v = to_json(&location, file_source, &effective, config);
        v["budget_override"] = match over {
            Some(b) => json!({
                "value": b.to_string(),
                "bits_per_second": match b {
                    Budget::Limited(r) => Some(r.bits_per_second()),
                    _ => None,
                },
                "source": "upload limit",
            }),
            None => json!(null),
        };
        println!("{v}");
    } else {
        print!("{}", to_text(&location, file_source, &effective, config));
        if let Some(b) = over {
            println!(
                "budget override: {b} (saved by `upload limit`; holds every `upload run` \
                 instead of the timetable until `upload limit --clear`)"
            );
        }
    }
    Ok(())
}

/// Each setting as (name, value for people, source).
fn rows(e: &Effective) -> [(&'static str, String, Source); 5] {
    fn row<T>(
        name: &'static str,
        s: &Setting<T>,
        show: impl Fn(&T) -> String,
    ) -> (&'static str, String, Source) {
        (name, show(&s.value), s.source)
    }
    [
        row("db", &e.db, |v| {
            v.as_deref().map_or(
                "unknown (neither HOME nor XDG_STATE_HOME is set)".into(),
                |p| p.display().to_string(),
            )
        }),
        row("timetable", &e.timetable, |v| {
            v.clone()
                .unwrap_or_else(|| "none (full speed at all hours)".into())
        }),
        row("jobs", &e.jobs, u32::to_string),
        row("limit", &e.limit, |v| {
            v.map_or("unlimited".into(), |r| r.to_string())
        }),
        row("give_up_after", &e.give_up_after, |v| match v {
            Some(d) => format_duration(*d),
            None => format!(
                "upload run: {}; upload send: never",
                format_duration(e.give_up_after_for(SettingsFor::Run).unwrap_or_default())
            ),
        }),
    ]
}

/// What `config show` says about a host's token; never the token itself.
fn token_status(config: &Config, host: &str, source: Option<&TokenSource>) -> String {
    match source {
        None => "none".into(),
        Some(TokenSource::Inline(_)) => "set (in the configuration file)".into(),
        Some(TokenSource::File(file)) => match config.token_for(host) {
            Ok(_) => format!("set (from file {})", file.display()),
            Err(e) => format!("unusable: {e}"),
        },
    }
}

fn exists_word(location: &ConfigPath) -> &'static str {
    match (location.exists(), location.explicit) {
        (true, _) => "exists",
        (false, false) => "does not exist: all defaults",
        // Loading fails before this is printed; kept for completeness.
        (false, true) => "does not exist",
    }
}

fn to_text(location: &ConfigPath, file_source: Source, e: &Effective, config: &Config) -> String {
    let mut out = format!(
        "config file: {} ({file_source}, {})\n",
        location.path.display(),
        exists_word(location)
    );
    let rows = rows(e);
    let width = rows
        .iter()
        .map(|(_, v, _)| v.chars().count())
        .max()
        .unwrap_or(0);
    for (name, value, source) in rows {
        out += &format!("{name:<14} {value:<width$}  ({source})\n");
    }
    if config.hosts.is_empty() {
        out += "hosts: none configured\n";
    } else {
        out += "hosts:\n";
        let width = config
            .hosts
            .keys()
            .map(|h| h.chars().count())
            .max()
            .unwrap_or(0);
        for (host, h) in &config.hosts {
            out += &format!(
                "  {host:<width$}  token: {}\n",
                token_status(config, host, h.token.as_ref())
            );
        }
    }
    out
}

fn to_json(location: &ConfigPath, file_source: Source, e: &Effective, config: &Config) -> Value {
    let mut settings = serde_json::Map::new();
    for (name, value, source) in rows(e) {
        settings.insert(name.into(), json!({"value": value, "source": source}));
    }
    // Numbers for machines beside the words for people; null for "none".
    match e.limit.value {
        Some(rate) => settings["limit"]["bits_per_second"] = json!(rate.bits_per_second()),
        None => settings["limit"]["value"] = json!(null),
    }
    match e.give_up_after.value {
        Some(d) => settings["give_up_after"]["seconds"] = json!(d.as_secs_f64()),
        None => settings["give_up_after"]["value"] = json!(null),
    }
    // What each command does with it (null: never gives up).
    for (key, command) in [
        ("send_seconds", SettingsFor::Send),
        ("run_seconds", SettingsFor::Run),
    ] {
        settings["give_up_after"][key] =
            json!(e.give_up_after_for(command).map(|d| d.as_secs_f64()));
    }
    settings["jobs"]["value"] = json!(e.jobs.value);
    settings["db"]["value"] = json!(e.db.value);
    settings["timetable"]["value"] = json!(e.timetable.value);

    let hosts: serde_json::Map<String, Value> = config
        .hosts
        .iter()
        .map(|(host, h)| {
            let token = match &h.token {
                None => json!(null),
                Some(TokenSource::Inline(_)) => json!({"from": "config"}),
                Some(TokenSource::File(file)) => json!({
                    "from": "file",
                    "file": file,
                    "error": config.token_for(host).err().map(|e| e.to_string()),
                }),
            };
            (host.clone(), json!({"token": token}))
        })
        .collect();
    json!({
        "config_file": {
            "path": location.path,
            "source": file_source,
            "exists": location.exists(),
        },
        "settings": settings,
        "hosts": hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn help_shows_the_documented_example() {
        assert!(after_help().contains(crate::config::EXAMPLE.trim_end()));
    }

    #[test]
    fn show_never_prints_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("t");
        std::fs::write(&token_file, "file-s3cret\n").unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            format!(
                "limit = \"100kbit\"\n[hosts.\"a.example\"]\ntoken = \"inline-s3cret\"\n\
                 [hosts.\"b.example\"]\ntoken_file = {:?}\n[hosts.\"c.example\"]\n",
                token_file.to_str().unwrap()
            ),
        )
        .unwrap();
        let location = ConfigPath {
            path: path.clone(),
            explicit: true,
        };
        let config = location.load().unwrap();
        let e = Effective::merge(&Flags::default(), &config, Some(PathBuf::from("/s/u.db")));
        let text = to_text(&location, Source::Flag, &e, &config);
        let json = to_json(&location, Source::Flag, &e, &config).to_string();
        for out in [&text, &json] {
            assert!(!out.contains("s3cret"), "{out}");
        }
        assert!(text.contains("(flag, exists)"), "{text}");
        assert!(text.contains("100 kbit/s"), "{text}");
        assert!(text.contains("(config)"), "{text}");
        assert!(
            text.contains(&format!("token: set (from file {})", token_file.display())),
            "{text}"
        );
        assert!(text.contains("  c.example  token: none"), "{text}");
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["settings"]["limit"]["bits_per_second"], 100_000.0);
        assert_eq!(
            v["settings"]["jobs"],
            json!({"value": 1, "source": "default"})
        );
        assert_eq!(v["hosts"]["a.example"]["token"]["from"], "config");
        assert_eq!(v["settings"]["give_up_after"]["value"], json!(null));
        assert_eq!(v["settings"]["give_up_after"]["send_seconds"], json!(null));
        assert_eq!(v["settings"]["give_up_after"]["run_seconds"], 86_400.0);
    }
}
