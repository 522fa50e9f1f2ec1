//! A real `upload serve` process on a free loopback port, killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct ServeProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// "http", or "https" when it serves TLS.
    pub scheme: &'static str,
    pub dir: PathBuf,
    /// The server's log (its stderr), shown when a test fails.
    pub log: PathBuf,
}

impl ServeProcess {
    /// Starts `cmd` (an `upload` command with `serve` arguments, `--listen` included) and waits
    /// for its "listening on http://ADDR/files/" (or https://) line.
    pub fn start(mut cmd: Command, dir: &Path) -> Self {
        let log = dir.with_extension(format!("{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("server log file");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start upload serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("upload serve printed its address");
        let (scheme, rest) = match line.strip_prefix("listening on https://") {
            Some(rest) => ("https", Some(rest)),
            None => ("http", line.strip_prefix("listening on http://")),
        };
        let addr = rest
            .and_then(|r| r.strip_suffix("/files/"))
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .parse()
            .expect("a socket address");
        ServeProcess {
            child,
            addr,
            scheme,
            dir: dir.to_path_buf(),
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}/files/", self.scheme, self.addr)
    }

    /// Asserts that `name` is published in the server's directory with `source`'s content.
    pub fn assert_delivered(&self, name: &str, source: &Path) {
        let published = self.dir.join(name);
        assert!(
            published.is_file(),
            "{name} is not published in {}",
            self.dir.display()
        );
        assert_eq!(
            super::sha256_file(&published),
            super::sha256_file(source),
            "{name} differs from {}",
            source.display()
        );
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- upload serve log ({}) ---\n{log}", self.log.display());
        }
    }
}
