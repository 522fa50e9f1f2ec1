//! A real OpenSSH server on a free loopback port, for `ssh://` destinations: a throwaway host
//! key and user key in the test's temp dir, `StrictModes no`, the authorized key file pointing
//! at the temp key, running as the current user (root here: `PermitRootLogin yes`), and the
//! binary under test first on the remote PATH (`SetEnv`), so that the remote side runs exactly
//! the `upload` being tested and nothing installed on the machine. Killed when dropped; its
//! log is shown when a test fails.
//!
//! The client side is an ssh config file (the user key, a known_hosts file holding the host
//! key, nothing global), given to `upload` as `--ssh-command "ssh -F FILE"`.

use super::Env;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The sshd binary, where Debian puts it.
pub const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    pub child: Child,
    pub port: u16,
    /// Keys, configs and the log.
    pub keys: PathBuf,
    /// `--ssh-command` for a client with the right key and known host.
    pub ssh_command: String,
    pub log: PathBuf,
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "upload-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen")
        .success();
    assert!(ok, "ssh-keygen {}", path.display());
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Env {
    /// Starts sshd for this test (see the module doc).
    pub fn sshd(&self) -> Sshd {
        let keys = self.path("ssh");
        std::fs::create_dir_all(&keys).unwrap();
        for key in ["host_key", "user_key", "other_user_key", "other_host_key"] {
            keygen(&keys.join(key));
        }
        std::fs::copy(keys.join("user_key.pub"), keys.join("authorized_keys")).unwrap();
        // sshd refuses to start without its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_upload")).parent().unwrap();
        let log = keys.join("sshd.log");
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = keys.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {k}/host_key\n\
                     PidFile {k}/sshd.pid\nAuthorizedKeysFile {k}/authorized_keys\n\
                     StrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nUsePAM no\nLogLevel VERBOSE\n\
                     SetEnv PATH={bin}:/usr/local/bin:/usr/bin:/bin\n",
                    k = keys.display(),
                    bin = bin_dir.display()
                ),
            )
            .unwrap();
            let log_file = std::fs::File::create(&log).unwrap();
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .expect("start sshd");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let known = format!(
                        "[127.0.0.1]:{port} {}",
                        std::fs::read_to_string(keys.join("host_key.pub")).unwrap()
                    );
                    std::fs::write(keys.join("known_hosts"), known).unwrap();
                    let mut sshd = Sshd {
                        child,
                        port,
                        keys: keys.clone(),
                        ssh_command: String::new(),
                        log,
                    };
                    sshd.ssh_command = sshd.client("user_key", "known_hosts");
                    return sshd;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            last_error = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("sshd did not start: {last_error}");
    }
}

impl Sshd {
    /// `--ssh-command` for a client with `identity` (a key file in `keys`) and `known_hosts`
    /// (a file in `keys`, created empty when missing).
    pub fn client(&self, identity: &str, known_hosts: &str) -> String {
        let known = self.keys.join(known_hosts);
        if !known.exists() {
            std::fs::write(&known, "").unwrap();
        }
        let config = self
            .keys
            .join(format!("ssh_config.{identity}.{known_hosts}"));
        std::fs::write(
            &config,
            format!(
                "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
                 GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  \
                 UpdateHostKeys no\n",
                self.keys.join(identity).display(),
                known.display()
            ),
        )
        .unwrap();
        format!("ssh -F {}", config.display())
    }

    /// A known_hosts file in `keys` that names another key for this server.
    pub fn wrong_known_hosts(&self) -> &'static str {
        let line = format!(
            "[127.0.0.1]:{} {}",
            self.port,
            std::fs::read_to_string(self.keys.join("other_host_key.pub")).unwrap()
        );
        std::fs::write(self.keys.join("wrong_known_hosts"), line).unwrap();
        "wrong_known_hosts"
    }

    /// The ssh:// URL of `dir` on this server.
    pub fn url(&self, dir: &Path) -> String {
        format!("ssh://127.0.0.1:{}{}/", self.port, dir.display())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- sshd log ({}) ---\n{log}", self.log.display());
        }
    }
}

/// Whether sshd is installed (`.ci/run` installs it; tests need it).
pub fn have_sshd() -> bool {
    Path::new(SSHD).exists()
}

/// The pids of processes named `name` whose command line contains every one of `words`.
pub fn pids_with(name: &str, words: &[&str]) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == name && words.iter().all(|w| cmdline.contains(w)) {
            pids.push(pid);
        }
    }
    pids
}

/// The pids of the children of `pid` named `name`.
pub fn children_named(pid: u32, name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if comm.trim() == name {
                found.push(child);
            }
        }
    }
    found
}

/// Whether process `pid` still exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}
