//! What the user sees of the command line itself: error lines, shell completions, the man page.

use crate::helper::{Env, run};

/// An OS error reaches the user once: `--db` under a regular file used to print "Not a
/// directory (os error 20): Not a directory (os error 20)".
#[test]
fn an_os_error_is_printed_once() {
    let env = Env::new();
    let file = env.file("plain-file", 10);
    let (out, _, stderr) = run(env
        .upload()
        .arg("status")
        .arg("--db")
        .arg(file.join("state.db")));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("(os error").count(), 1, "{stderr}");
    assert!(stderr.contains("state database"), "{stderr}");
}

/// `upload run`'s log renders the engine's retries as `upload send` does: while a server is
/// down, one line on the first failure and then at growing intervals, not one per attempt
/// (two per half second before, the engine's and the scheduler's).
#[test]
fn the_run_log_folds_retries() {
    let env = Env::new();
    let file = env.file("down.iso", 1000);
    let (out, _, stderr) = run(env
        .upload()
        .args(["queue", "add"])
        .arg(&file)
        .arg("http://127.0.0.1:9/files/"));
    assert!(out.status.success(), "{stderr}");
    let (out, _, stderr) = run(env.upload().args(["run", "--give-up-after", "6s"]));
    assert!(out.status.success(), "{stderr}");
    let refused = stderr
        .lines()
        .filter(|l| l.contains("Connection refused"))
        .collect::<Vec<_>>();
    // The first failure, then the transfer marked failed after 6 s.
    assert_eq!(refused.len(), 2, "{stderr}");
    assert!(
        refused[0].contains("retrying") && refused[0].contains("attempt=1"),
        "{stderr}"
    );
    assert!(refused[1].contains("failed"), "{stderr}");
}

/// Completion scripts come from the command definition: every command and option is there,
/// and bash accepts the script.
#[test]
fn shell_completions_cover_the_commands() {
    let env = Env::new();
    for (shell, marker) in [
        ("bash", "_upload()"),
        ("zsh", "#compdef upload"),
        ("fish", "complete -c upload"),
    ] {
        let (out, script, stderr) = run(env.upload().args(["completions", shell]));
        assert!(out.status.success(), "{shell}: {stderr}");
        assert!(script.contains(marker), "{shell}: {script}");
        for word in ["send", "queue", "limit", "give-up-after", "completions"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    let bash = env.path("upload.bash");
    let (_, script, _) = run(env.upload().args(["completions", "bash"]));
    std::fs::write(&bash, script).unwrap();
    if let Ok(out) = std::process::Command::new("bash")
        .arg("-n")
        .arg(&bash)
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (out, _, stderr) = run(env.upload().args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
}

/// `upload man` prints upload(1), `upload man send` upload-send(1), with the options and the
/// exit statuses of --help.
#[test]
fn man_pages_for_upload_and_each_command() {
    let env = Env::new();
    let (out, page, stderr) = run(env.upload().arg("man"));
    assert!(out.status.success(), "{stderr}");
    assert!(page.contains(".TH upload 1"), "{page}");
    assert!(
        page.contains("estimate") && page.contains("completions"),
        "{page}"
    );
    let (out, page, stderr) = run(env.upload().args(["man", "send"]));
    assert!(out.status.success(), "{stderr}");
    assert!(page.contains(".TH upload-send 1"), "{page}");
    assert!(page.contains(r"\-\-limit"), "{page}");
    assert!(page.contains("interrupted: progress is saved"), "{page}");
    let (out, _, stderr) = run(env.upload().args(["man", "sned"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("upload man send"), "{stderr}");
}

/// `run --log-format json` stamps its lines as `send --json` does: RFC 3339 UTC to the
/// second (tracing's default has microseconds).
#[test]
fn json_logs_use_the_one_timestamp_format() {
    let env = Env::new();
    let (out, _, stderr) = run(env.upload().args(["run", "--log-format", "json"]));
    assert!(out.status.success(), "{stderr}");
    let lines = crate::helper::json_events(&stderr);
    assert!(!lines.is_empty(), "{stderr}");
    for l in &lines {
        let t = l["timestamp"].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.len() == 20 && t.ends_with('Z'),
            "{l}"
        );
    }
}
