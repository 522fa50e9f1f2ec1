//! `upload send FILE ssh://host/dir/` against a real sshd on loopback (`helper::sshd`): the
//! remote side is `upload serve --stdio` of the binary under test, started by ssh. They need
//! OpenSSH's server and client, so a plain `cargo test` leaves them out (ignored, with the
//! reason); `.ci/run` installs both and runs them. The takeover between two stdio servers needs
//! neither and always runs.

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
#[ignore = "needs sshd and ssh (openssh-server, openssh-client; .ci/run installs them)"]
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

/// Issue 13 over issue 14: the remote `serve --stdio` keeps indexes like any directory
/// server, so a rebuilt file goes as a delta against the older one in the remote directory.
#[test]
#[ignore = "needs sshd and ssh (openssh-server, openssh-client; .ci/run installs them)"]
fn a_rebuilt_file_goes_over_ssh_as_a_delta_against_the_older_one() {
    let env = Env::new();
    let (sshd, inbox) = setup(&env);
    let rc1_bytes = crate::helper::pattern(3 * 1024 * 1024, 7);
    let mut rc2_bytes = rc1_bytes.clone();
    rc2_bytes.splice(1024 * 1024..1024 * 1024, crate::helper::pattern(20_000, 8));
    let (rc1, rc2) = (env.path("RC1.iso"), env.path("RC2.iso"));
    std::fs::write(&rc1, &rc1_bytes).unwrap();
    std::fs::write(&rc2, &rc2_bytes).unwrap();
    let url = sshd.url(&inbox);
    let (out, _, stderr) = run(env
        .upload()
        .arg("send")
        .arg(&rc1)
        .args(send_args(&sshd, &url)));
    assert!(out.status.success(), "{stderr}");
    let (out, stdout, stderr) = run(env
        .upload()
        .arg("send")
        .arg(&rc2)
        .args(send_args(&sshd, &url))
        .args(["--base", "RC1.iso"]));
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let events = json_events(&stdout);
    let done = event(&events, "done").expect("a done event");
    assert_published(&inbox, "RC2.iso", &rc2);
    assert_published(&inbox, "RC1.iso", &rc1);
    let sent = done["bytes_sent"].as_u64().unwrap();
    assert!(sent < 200_000, "a delta of 20 kB sent {sent} bytes: {done}");
}

/// `--ssh-command` and the URL of this test's server, and `--json`.
fn send_args<'a>(sshd: &'a crate::helper::sshd::Sshd, url: &'a str) -> Vec<&'a str> {
    vec![url, "--ssh-command", &sshd.ssh_command, "--json"]
}

#[test]
#[ignore = "needs sshd and ssh (openssh-server, openssh-client; .ci/run installs them)"]
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
#[ignore = "needs sshd and ssh (openssh-server, openssh-client; .ci/run installs them)"]
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
#[ignore = "needs sshd and ssh (openssh-server, openssh-client; .ci/run installs them)"]
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

/// Runs `send FILE URL --ssh-command COMMAND EXTRA...`, which must end within 30 s; returns
/// the status and stderr.
fn send_fails(env: &Env, url: &str, ssh_command: &str, extra: &[&str]) -> (i32, String) {
    let file = env.path("e.bin");
    if !file.exists() {
        env.file("e.bin", 1000);
    }
    let mut child = env
        .upload()
        .arg("send")
        .arg(&file)
        .arg(url)
        .args(["--ssh-command", ssh_command])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(env.path("err.log")).unwrap())
        .spawn()
        .unwrap();
    let status = wait_at_most(&mut child, Duration::from_secs(30));
    let stderr = std::fs::read_to_string(env.path("err.log")).unwrap();
    (status.code().unwrap_or(-1), stderr)
}

#[test]
#[ignore = "needs sshd and ssh (openssh-server, openssh-client; .ci/run installs them)"]
fn a_missing_remote_upload_is_status_12_and_names_remote_upload() {
    let env = Env::new();
    let (sshd, inbox) = setup(&env);
    for program in ["no-such-upload-program", "/nonexistent/bin/upload"] {
        let (code, stderr) = send_fails(
            &env,
            &sshd.url(&inbox),
            &sshd.ssh_command,
            &["--remote-upload", program],
        );
        assert_eq!(code, 12, "{program}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot run \"{program}\""))
                && stderr.contains("--remote-upload /opt/upload/bin/upload"),
            "{stderr}"
        );
    }
}

#[test]
#[ignore = "needs sshd and ssh (openssh-server, openssh-client; .ci/run installs them)"]
fn a_wrong_remote_directory_is_status_13() {
    let env = Env::new();
    let (sshd, inbox) = setup(&env);
    let missing = inbox.join("typo");
    let (code, stderr) = send_fails(&env, &sshd.url(&missing), &sshd.ssh_command, &[]);
    assert_eq!(code, 13, "{stderr}");
    assert!(
        stderr.contains("does not exist") && stderr.contains("e.g. ssh://"),
        "{stderr}"
    );
    assert!(!missing.exists(), "nothing is created");
    let file = inbox.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let (code, stderr) = send_fails(&env, &sshd.url(&file), &sshd.ssh_command, &[]);
    assert_eq!(code, 13, "{stderr}");
    assert!(stderr.contains("is not a directory"), "{stderr}");
}

#[test]
#[ignore = "needs sshd and ssh (openssh-server, openssh-client; .ci/run installs them)"]
fn refused_keys_are_status_14_without_a_prompt() {
    let env = Env::new();
    let (sshd, inbox) = setup(&env);
    let wrong_key = sshd.client("other_user_key", "known_hosts");
    let (code, stderr) = send_fails(&env, &sshd.url(&inbox), &wrong_key, &[]);
    assert_eq!(code, 14, "{stderr}");
    assert!(
        stderr.contains("refused the ssh login") && stderr.contains("Permission denied"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs sshd and ssh (openssh-server, openssh-client; .ci/run installs them)"]
fn an_unknown_or_changed_host_key_is_status_15() {
    let env = Env::new();
    let (sshd, inbox) = setup(&env);
    let changed = sshd.wrong_known_hosts();
    for known_hosts in ["empty_known_hosts", changed] {
        let client = sshd.client("user_key", known_hosts);
        let (code, stderr) = send_fails(&env, &sshd.url(&inbox), &client, &[]);
        assert_eq!(code, 15, "{known_hosts}: {stderr}");
        assert!(
            stderr.contains("host key of 127.0.0.1") && stderr.contains("ssh-keygen -R"),
            "{stderr}"
        );
    }
}

/// Nobody listens: retried like any unreachable server, and with `--max-retries` it ends with
/// the network status and ssh's own words.
#[test]
#[ignore = "needs sshd and ssh (openssh-server, openssh-client; .ci/run installs them)"]
fn an_unreachable_host_is_retried_then_status_6() {
    let env = Env::new();
    let (sshd, inbox) = setup(&env);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("ssh://127.0.0.1:{port}{}/", inbox.display());
    let (code, stderr) = send_fails(&env, &url, &sshd.ssh_command, &["--max-retries", "1"]);
    assert_eq!(code, 6, "{stderr}");
    assert!(
        stderr.contains("could not reach 127.0.0.1") && stderr.contains("Connection refused"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs sshd and ssh (openssh-server, openssh-client; .ci/run installs them)"]
fn queue_add_and_run_over_ssh() {
    let env = Env::new();
    let (sshd, inbox) = setup(&env);
    let file = env.file("queued.bin", 600 * 1024);
    let url = sshd.url(&inbox);
    let (out, _, stderr) = run(env.upload().args(["queue", "add"]).arg(&file).arg(&url));
    assert!(out.status.success(), "{stderr}");
    let (out, _, stderr) = run(env
        .upload()
        .args(["run", "--ssh-command", &sshd.ssh_command]));
    assert!(out.status.success(), "{stderr}");
    assert_published(&inbox, "queued.bin", &file);
}

/// One HTTP/1.1 exchange on a `serve --stdio` process' pipes: writes `request` (and `body`)
/// and returns the response head.
fn exchange(
    stdin: &mut std::process::ChildStdin,
    stdout: &mut std::io::BufReader<std::process::ChildStdout>,
    request: &str,
    body: &[u8],
) -> String {
    use std::io::{BufRead, Write};
    stdin.write_all(request.as_bytes()).unwrap();
    stdin.write_all(body).unwrap();
    stdin.flush().unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the server closed: {head}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut rest = vec![0; length];
    std::io::Read::read_exact(stdout, &mut rest).unwrap();
    head
}

fn stdio_server(env: &Env, dir: &Path) -> std::process::Child {
    env.upload()
        .args(["serve", "--stdio", "--dir"])
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(env.path(&format!("stdio.{}.log", rand_suffix()))).unwrap())
        .spawn()
        .unwrap()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or_else(|| panic!("no {name} in {head}"))
}

/// Two real `serve --stdio` processes on one directory: the first holds an upload in a PATCH
/// whose body stopped coming (its session died); the second takes it over, the first is gone
/// before the second answers, and what the first received is kept.
#[test]
fn a_second_stdio_server_takes_an_upload_over_from_the_first() {
    let env = Env::new();
    let dir = env.path("inbox");
    std::fs::create_dir_all(&dir).unwrap();
    let data = crate::helper::pattern(1000, 3);

    let mut first = stdio_server(&env, &dir);
    let mut first_in = first.stdin.take().unwrap();
    let mut first_out = std::io::BufReader::new(first.stdout.take().unwrap());
    let created = exchange(
        &mut first_in,
        &mut first_out,
        "POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 1000\r\n\
         Upload-Metadata: filename dGFrZW4uYmlu\r\nContent-Length: 0\r\n\r\n",
        b"",
    );
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let location = header(&created, "location").to_string();
    // A PATCH of 1000 bytes of which 400 arrive, then nothing: a dead session.
    use std::io::Write;
    first_in
        .write_all(
            format!(
                "PATCH {location} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n\
                 Content-Type: application/offset+octet-stream\r\nContent-Length: 1000\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    first_in.write_all(&data[..400]).unwrap();
    first_in.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let mut second = stdio_server(&env, &dir);
    let mut second_in = second.stdin.take().unwrap();
    let mut second_out = std::io::BufReader::new(second.stdout.take().unwrap());
    let head = exchange(
        &mut second_in,
        &mut second_out,
        &format!("HEAD {location} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n"),
        b"",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The first was told to stop and did before the second answered: it can write no more.
    assert!(
        first.try_wait().unwrap().is_some(),
        "the first server still runs after the second took its upload"
    );
    assert_eq!(
        header(&head, "upload-offset"),
        "400",
        "what the first received is kept"
    );
    let patched = exchange(
        &mut second_in,
        &mut second_out,
        &format!(
            "PATCH {location} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 400\r\n\
             Content-Type: application/offset+octet-stream\r\nContent-Length: 600\r\n\r\n"
        ),
        &data[400..],
    );
    assert!(patched.starts_with("HTTP/1.1 204"), "{patched}");
    assert_eq!(std::fs::read(dir.join("taken.bin")).unwrap(), data);
    drop(second_in);
    let status = wait_at_most(&mut second, Duration::from_secs(10));
    assert!(
        status.success(),
        "the second server ends with its pipe: {status}"
    );
}

/// Through a ProxyCommand ssh has no TCP socket of its own to watch: the probe counts what
/// the pipe accepts and returns instead, and ssh's own keepalive backs it. Stopping the proxy
/// (the link under the session dies) still ends the session, and a new one finishes.
#[test]
#[ignore = "needs sshd and ssh (openssh-server, openssh-client; .ci/run installs them)"]
fn a_dead_link_under_a_proxy_command_is_noticed_too() {
    let env = Env::new();
    let (sshd, inbox) = setup(&env);
    let file = env.file("proxied.bin", 6 * 1024 * 1024);
    // The proxy is another ssh to the same server, forwarding to its port (-W).
    let proxied = format!(
        "{} -o ProxyCommand=\"{} -p {} -W %h:%p 127.0.0.1\"",
        sshd.ssh_command, sshd.ssh_command, sshd.port
    );
    let args = [
        "--ssh-command",
        &proxied,
        "--limit",
        "16Mbit",
        "--chunk",
        "1MiB",
        "--stall-timeout",
        "2s",
    ];
    let stderr_log = env.path("client.log");
    let mut client = crate::helper::send_until(
        &env,
        &file,
        &sshd.url(&inbox),
        &args,
        std::fs::File::create(&stderr_log).unwrap().into(),
        "progress",
        |v| v["event"] == "progress" && v["offset"].as_u64().unwrap() >= 1024 * 1024,
    );
    let ssh = children_named(client.id(), "ssh");
    assert_eq!(ssh.len(), 1, "one ssh child: {ssh:?}");
    let proxy = children_named(ssh[0], "ssh");
    assert_eq!(proxy.len(), 1, "its proxy: {proxy:?}");
    signal(proxy[0], "-STOP");
    let status = wait_at_most(&mut client, Duration::from_secs(90));
    let log = std::fs::read_to_string(&stderr_log).unwrap();
    signal(proxy[0], "-CONT");
    assert!(status.success(), "{log}");
    assert!(
        !alive(ssh[0]),
        "the session over the stopped proxy was ended"
    );
    assert_published(&inbox, "proxied.bin", &file);
}
