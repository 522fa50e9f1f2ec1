//! `upload completions SHELL` and `upload man [COMMAND]`: shell completions and manual pages,
//! generated from the same clap definition as `--help`, so the three never disagree.

use super::{Cli, Failure};
use anyhow::{Context, anyhow};
use clap::CommandFactory;
use std::io::Write;

pub const COMPLETIONS_HELP: &str = "\
Examples:
  upload completions bash > ~/.local/share/bash-completion/completions/upload
  upload completions zsh > ~/.zfunc/_upload     # with fpath+=(~/.zfunc) before compinit
  upload completions fish > ~/.config/fish/completions/upload.fish";

pub const MAN_HELP: &str = "\
Examples:
  upload man | man -l -
  upload man > ~/.local/share/man/man1/upload.1
  upload man send > ~/.local/share/man/man1/upload-send.1";

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// The command whose page to print (its page is upload-COMMAND) [default: upload's own].
    pub command: Option<String>,
}

/// Prints the completion script on stdout.
pub fn completions(args: CompletionsArgs) -> Result<(), Failure> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "upload", &mut out);
    print(&out)
}

/// Prints a manual page (roff) on stdout.
pub fn man(args: ManArgs) -> Result<(), Failure> {
    let cli = Cli::command();
    let page = match &args.command {
        None => cli,
        Some(name) => {
            let sub = cli.find_subcommand(name).cloned().ok_or_else(|| {
                let names: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
                Failure::usage(anyhow!(
                    "there is no command \"{name}\"; one of {}, e.g. upload man send",
                    names.join(", ")
                ))
            })?;
            // Pages of subcommands are named as git's and cargo's are: upload-send(1).
            let title = format!("upload-{}", sub.get_name());
            sub.name(title).version(env!("CARGO_PKG_VERSION"))
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .context("rendering the manual page")?;
    print(&out)
}

fn print(bytes: &[u8]) -> Result<(), Failure> {
    std::io::stdout()
        .lock()
        .write_all(bytes)
        .context("writing to stdout")?;
    Ok(())
}
