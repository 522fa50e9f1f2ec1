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
