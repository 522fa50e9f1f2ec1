//! `upload send FILE ssh://host/dir/` against a real sshd on loopback (`helper::sshd`): the
//! remote side is `upload serve --stdio` of the binary under test, started by ssh.

use crate::helper::sshd::{alive, children_named, pids_with};
use crate::helper::{
    Env, event, json_events, kill9, run, send_until_progress, signal, wait_at_most,
};
use std::path::Path;
use std::time::Duration;

/// The sshd for a test, and its inbox (with a space in its name: paths are quoted for the
/// remote shell).
fn setup(env: &Env) -> (crate::helper::sshd::Sshd, std::path::PathBuf) {
    let sshd = env.sshd();
    let inbox = env.path("in box");
    std::fs::create_dir_all(&inbox).unwrap();
    (sshd, inbox)
}

fn assert_published(inbox: &Path, name: &str, source: &Path) {
    let published = inbox.join(name);
    assert!(
        published.is_file(),
        "{name} is not published in {}",
        inbox.display()
    );
    assert_eq!(
        crate::helper::sha256_file(&published),
        crate::helper::sha256_file(source),
        "{name} differs"
    );
}

#[test]
fn a_file_goes_over_ssh_and_is_published_verified() {
    let env = Env::new();
    let (sshd, inbox) = setup(&env);
    let file = env.file("image.iso", 3 * 1024 * 1024 + 17);
    let (out, stdout, stderr) = run(env
        .upload()
        .arg("send")
        .arg(&file)
        .arg(sshd.url(&inbox))
        .args(["--ssh-command", &sshd.ssh_command, "--json"]));
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let events = json_events(&stdout);
    let done = event(&events, "done").expect("a done event");
    assert_eq!(done["published_as"], "image.iso");
    assert!(
        done["upload_url"].as_str().unwrap().starts_with(&format!(
            "{}.partial/",
            url::Url::parse(&sshd.url(&inbox)).unwrap()
        )),
        "{done}"
    );
    assert_published(&inbox, "image.iso", &file);
    let left: Vec<_> = std::fs::read_dir(inbox.join(".partial"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "part files left: {left:?}");
}

/// `--ssh-command` and the URL of this test's server, and `--json`.
fn send_args<'a>(sshd: &'a crate::helper::sshd::Sshd, url: &'a str) -> Vec<&'a str> {
    vec![url, "--ssh-command", &sshd.ssh_command, "--json"]
}

#[test]
fn kill_9_of_the_client_then_the_rerun_resumes_without_resending() {
    let env = Env::new();
    let (sshd, inbox) = setup(&env);
    let size = 4 * 1024 * 1024;
    let file = env.file("resume.bin", size);
    let url = sshd.url(&inbox);
    let chunk = 256 * 1024;
    let args = [
        "--ssh-command",
        &sshd.ssh_command,
        "--limit",
        "4Mbit",
        "--chunk",
        "256KiB",
    ];
    let mut first = send_until_progress(&env, &file, &url, &args, 1024 * 1024);
    kill9(&mut first);
    let (out, stdout, stderr) = run(env
        .upload()
        .arg("send")
        .arg(&file)
        .args(send_args(&sshd, &url)));
    assert!(out.status.success(), "{stderr}");
    let events = json_events(&stdout);
    let started = event(&events, "started").unwrap();
    assert_eq!(started["resumed"], true, "{started}");
    assert!(
        started["offset"].as_u64().unwrap() > 1024 * 1024,
        "{started}"
    );
    let done = event(&events, "done").unwrap();
    // Counted over both processes: at most the chunk that was on its way when the first died.
    let resent = done["resent_bytes"].as_u64().unwrap();
    assert!(
        resent <= chunk,
        "re-sent {resent} bytes, more than one chunk"
    );
    assert_published(&inbox, "resume.bin", &file);
}

/// A stopped ssh is what a dead link looks like from here: nothing moves on its socket. The
/// stall timer ends that session, a new one starts, and the upload finishes.
#[test]
fn a_dead_link_is_noticed_and_a_new_ssh_session_finishes_the_upload() {
    let env = Env::new();
    let (sshd, inbox) = setup(&env);
    let file = env.file("cut.bin", 3 * 1024 * 1024);
    let url = sshd.url(&inbox);
    let args = [
        "--ssh-command",
        &sshd.ssh_command,
        "--limit",
        "4Mbit",
        "--chunk",
        "256KiB",
        "--stall-timeout",
        "2s",
    ];
    let stderr_log = env.path("client.log");
    let mut client = crate::helper::send_until(
        &env,
        &file,
        &url,
        &args,
        std::fs::File::create(&stderr_log).unwrap().into(),
        "progress",
        |v| v["event"] == "progress" && v["offset"].as_u64().unwrap() > 512 * 1024,
    );
    let ssh = children_named(client.id(), "ssh");
    assert_eq!(ssh.len(), 1, "one ssh child: {ssh:?}");
    signal(ssh[0], "-STOP");
    let status = wait_at_most(&mut client, Duration::from_secs(60));
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&stderr_log).unwrap()
    );
    assert!(!alive(ssh[0]), "the stopped ssh was killed");
    assert_published(&inbox, "cut.bin", &file);
}

/// The remote `serve --stdio` of a session stops answering (stopped, as a process on the far
/// side of a dead session that sshd has not noticed): the next session's server takes the
/// upload over from it instead of waiting, and the upload finishes.
#[test]
fn a_lingering_remote_server_is_taken_over_by_the_next_session() {
    let env = Env::new();
    let (sshd, inbox) = setup(&env);
    let file = env.file("linger.bin", 4 * 1024 * 1024);
    let url = sshd.url(&inbox);
    let args = [
        "--ssh-command",
        &sshd.ssh_command,
        "--limit",
        "8Mbit",
        "--chunk",
        "512KiB",
        "--stall-timeout",
        "2s",
    ];
    let stderr_log = env.path("client.log");
    let mut client = crate::helper::send_until(
        &env,
        &file,
        &url,
        &args,
        std::fs::File::create(&stderr_log).unwrap().into(),
        "progress",
        |v| v["event"] == "progress" && v["offset"].as_u64().unwrap() > 512 * 1024,
    );
    let inbox_text = inbox.display().to_string();
    let remote = pids_with("upload", &["serve", "--stdio", &inbox_text]);
    assert_eq!(remote.len(), 1, "one remote server: {remote:?}");
    signal(remote[0], "-STOP");
    let status = wait_at_most(&mut client, Duration::from_secs(90));
    let log = std::fs::read_to_string(&stderr_log).unwrap();
    assert!(status.success(), "{log}");
    assert_published(&inbox, "linger.bin", &file);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alive(remote[0]) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(remote[0]), "the lingering server is gone");
}
