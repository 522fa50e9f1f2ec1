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
