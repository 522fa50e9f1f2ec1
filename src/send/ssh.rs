//! The ssh destination, `ssh://[user@]host[:port]/path/`: tus over a pipe. The system's `ssh`
//! (so keys, agent, `~/.ssh/config`, ProxyJump and known_hosts behave as the user's ssh does)
//! runs `upload serve --stdio --dir PATH` on the remote side, and the same tus client that
//! speaks to an http endpoint speaks HTTP/1.1 over ssh's stdin and stdout: the same requests,
//! chunk checksums and whole-file digest, the same publishing of verified files only.
//!
//! What only ssh needs lives here:
//! - the URL: `ssh://user@host:2222/srv/inbox/` (absolute), `ssh://host/~/inbox/` (under the
//!   remote user's home); the upload's own URL is the directory's plus `.partial/ID`, where
//!   its bytes wait;
//! - the command line: `--ssh-command` / `UPLOAD_SSH` (split as a shell would, e.g.
//!   `ssh -F ./cfg`), always with `BatchMode=yes` (a password or host-key prompt would hang an
//!   unattended transfer; ssh fails at once instead), `ServerAliveInterval` (ssh itself gives
//!   up on a dead link even where we cannot watch its socket), and the remote command with
//!   every path quoted for the remote shell (`--remote-upload` for a binary outside PATH);
//! - liveness: a pipe has no TCP_INFO of ours, and ssh accepts up to its channel window (2 MiB,
//!   two minutes at 128 kbit/s) into the pipe on a dead link. So the probe reads TCP_INFO of
//!   ssh's own socket, borrowed with `pidfd_getfd` (Linux 5.6+; ssh is our child); where there
//!   is none (a ProxyCommand) it counts what the pipe accepted and returned. A stalled chunk
//!   drops the connection, which kills the ssh child; the next attempt starts a new session,
//!   and the remote side takes the upload over from a lingering `serve --stdio` of the dead one
//!   (`server::dir_store`'s claim);
//! - errors: ssh's stderr (the last 8 KiB) and exit status say why a session ended, and each
//!   cause becomes its [`PipeFailure`]: keys refused, host key not verified, no remote
//!   `upload`, a wrong remote directory (permanent); unreachable or closed (retried).
//!
//! Pacing happens before ssh: the throttle paces what is written into the pipe, and ssh adds
//! its framing (measured in `estimate`, [`crate::estimate::SSH_OVERHEAD_PER_MIB`]).

use super::SendError;
use super::destination::{Capabilities, DeltaBase, Destination};
use super::tus::Tus;
use crate::client::{
    ChannelBody, ClientError, DialFuture, Dialed, Dialer, LinkProbe, PatchOutcome, PipeFailure,
    TusClient, UploadInfo,
};
use crate::protocol::Checksum;
use crate::units::Rate;
use std::collections::VecDeque;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::process::{ChildStdin, ChildStdout, Command};
use url::Url;

/// The exit status of `upload serve --stdio` when its directory is missing, not a directory
/// or not writable: the client tells it from every other ending by this (see `cli::exit`).
pub const REMOTE_DIR_STATUS: i32 = 13;

/// How ssh is run, from `--ssh-command` / `UPLOAD_SSH` and `--remote-upload`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshOptions {
    /// The ssh program and its own options, as a shell would split them [default: `ssh`].
    pub command: Option<String>,
    /// The path of `upload` on the remote side [default: `upload`, found on its PATH].
    pub remote_upload: Option<String>,
}

/// Where `ssh://[user@]host[:port]/path/` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// The remote directory as the remote shell is to see it: absolute, or under the home
    /// directory (`~/inbox/`).
    pub dir: String,
    /// The URL as given, normalised to end in `/`.
    pub url: Url,
}

/// Parses an `ssh://` URL (see the module doc).
pub fn parse_ssh_url(text: &str) -> Result<SshTarget, ClientError> {
    let bad = |why: &str| ClientError::BadSshUrl {
        url: text.to_string(),
        why: why.to_string(),
    };
    let mut url = Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "ssh" {
        return Err(bad("the scheme is not ssh"));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("it has no host"))?;
    // `[::1]` in a URL is `::1` to ssh.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.starts_with('-') {
        return Err(bad("a host name cannot start with -"));
    }
    if url.password().is_some() {
        return Err(bad(
            "it carries a password: ssh logs in with keys (BatchMode), never a password",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it has a query or fragment"));
    }
    let user = (!url.username().is_empty())
        .then(|| percent_decode(url.username()))
        .filter(|u| !u.starts_with('-'));
    let path = percent_decode(url.path());
    let dir = match path.strip_prefix("/~") {
        Some("") | Some("/") => "~/".to_string(),
        Some(rest) if rest.starts_with('/') => format!("~{rest}"),
        _ if path.is_empty() || path == "/" => {
            return Err(bad(
                "it names no directory (the root is not one to upload into)",
            ));
        }
        _ => path,
    };
    let dir = if dir.ends_with('/') {
        dir
    } else {
        format!("{dir}/")
    };
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(SshTarget {
        user,
        host,
        port: url.port(),
        dir,
        url,
    })
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Quotes `s` for a POSIX shell: one word, nothing expanded. A leading `~/` stays outside
/// the quotes so the remote shell puts the home directory there.
pub fn shell_quote(s: &str) -> String {
    let (tilde, rest) = match s.strip_prefix("~/") {
        Some(rest) => ("~/", rest),
        None => ("", s),
    };
    if rest.is_empty() {
        return if tilde.is_empty() {
            "''".into()
        } else {
            tilde.into()
        };
    }
    let safe = rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,=@%".contains(&b));
    if safe {
        format!("{tilde}{rest}")
    } else {
        format!("{tilde}'{}'", rest.replace('\'', r"'\''"))
    }
}

/// Splits a command line as a POSIX shell would (quotes and backslashes; no expansion).
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("an unclosed ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("an unclosed \" quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("an unclosed \" quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("a \\ at the end".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

impl SshTarget {
    /// The ssh command line: the program and its options, ours, the destination, and the
    /// remote command.
    pub fn argv(&self, opts: &SshOptions) -> Result<Vec<String>, ClientError> {
        let command = opts.command.as_deref().unwrap_or("ssh");
        let mut argv = shell_split(command).map_err(|why| ClientError::Pipe {
            kind: PipeFailure::NoProgram,
            message: format!(
                "--ssh-command \"{command}\" cannot be split into words ({why}); expected e.g. \
                 --ssh-command \"ssh -F ~/.ssh/upload_config\""
            ),
        })?;
        if argv.is_empty() {
            return Err(ClientError::Pipe {
                kind: PipeFailure::NoProgram,
                message: "--ssh-command is empty; expected e.g. --ssh-command \"ssh -i \
                          ~/.ssh/id_upload\""
                    .into(),
            });
        }
        for option in [
            // Never a prompt: an unattended transfer would hang on it.
            "BatchMode=yes",
            // ssh gives up on a dead link by itself, even where our probe sees no socket.
            "ServerAliveInterval=5",
            "ServerAliveCountMax=3",
            // Short: while the link is down each attempt is a probe, and a fresh one sends its
            // SYN within seconds of the link's return (as the TCP client's 3 s connect timeout).
            "ConnectTimeout=5",
            // A forwarding in the user's config that cannot be set up must not stop uploads.
            "ClearAllForwardings=yes",
        ] {
            argv.extend(["-o".to_string(), option.to_string()]);
        }
        argv.extend(["-T".into(), "-x".into()]);
        if let Some(port) = self.port {
            argv.extend(["-p".to_string(), port.to_string()]);
        }
        if let Some(user) = &self.user {
            argv.extend(["-l".to_string(), user.clone()]);
        }
        argv.push(self.host.clone());
        argv.push("--".into());
        argv.push(self.remote_command(opts));
        Ok(argv)
    }

    /// What the remote shell runs.
    pub fn remote_command(&self, opts: &SshOptions) -> String {
        let program = opts.remote_upload.as_deref().unwrap_or("upload");
        format!(
            "{} serve --stdio --dir {}",
            shell_quote(program),
            shell_quote(&self.dir)
        )
    }

    /// `user@host:port`, for messages.
    fn login(&self) -> String {
        let mut s = String::new();
        if let Some(u) = &self.user {
            s.push_str(u);
            s.push('@');
        }
        s.push_str(&self.host);
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s
    }
}

/// The ssh destination: [`Tus`] over an [`SshDialer`], with upload URLs in the ssh form.
pub(super) struct Ssh {
    tus: Tus,
    target: SshTarget,
}

/// The endpoint the requests name over the pipe: the remote server does not care which host,
/// and Location comes back relative to it.
const PIPE_ENDPOINT: &str = "http://localhost/files/";

impl Ssh {
    pub(super) fn open(url: &str, opts: &SshOptions) -> Result<Ssh, SendError> {
        let target = parse_ssh_url(url).map_err(SendError::Url)?;
        let argv = target.argv(opts).map_err(SendError::Url)?;
        let dialer = SshDialer {
            argv,
            target: target.clone(),
            remote_upload: opts.remote_upload.clone(),
        };
        let endpoint = Url::parse(PIPE_ENDPOINT).expect("a valid URL");
        let client = TusClient::new(endpoint, None).with_dialer(Arc::new(dialer));
        Ok(Ssh {
            tus: Tus::over(client),
            target,
        })
    }

    /// `ssh://host/dir/.partial/ID` for the pipe's `http://localhost/files/ID`.
    fn to_ssh(&self, tus: &Url) -> Result<Url, ClientError> {
        let id = tus
            .path()
            .strip_prefix("/files/")
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "the remote server created the upload at {tus}, not under /files/"
                ))
            })?;
        self.target
            .url
            .join(&format!(".partial/{id}"))
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The pipe's URL for an upload's ssh URL.
    fn to_tus(&self, ssh: &Url) -> Result<Url, ClientError> {
        let id = ssh
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| ClientError::Protocol(format!("{ssh} names no upload")))?;
        Url::parse(PIPE_ENDPOINT)
            .and_then(|e| e.join(id))
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// The smallest write into ssh's pipe when paced: ssh sends what it reads as one packet, about
/// 36 bytes of length, padding, MAC and channel header each. The throttle's pieces of 1/20 s
/// (819 bytes at 16 KiB/s) cost 5.2 % that way (`scripts/bench_ssh.py --only pacing`: 105.15 %
/// of the limit crossed sshd's TCP, busiest second 1.05x the mean); pieces of at least 4 KiB
/// cost under 1 % (101.24 %, busiest second 1.22x: four pieces a second), and a quarter second
/// of data at 128 kbit/s is still an even rate to the link.
pub const SSH_PIECE_FLOOR: usize = 4 * 1024;

impl Destination for Ssh {
    async fn discover(&mut self) -> Result<Capabilities, ClientError> {
        let caps = self.tus.discover().await?;
        Ok(Capabilities {
            piece_floor: SSH_PIECE_FLOOR,
            ..caps
        })
    }

    async fn create(&mut self, size: u64, name: &str) -> Result<Url, ClientError> {
        let tus = self.tus.create(size, name).await?;
        self.to_ssh(&tus)
    }

    async fn offset(&mut self, upload: &Url) -> Result<UploadInfo, ClientError> {
        let tus = self.to_tus(upload)?;
        self.tus.offset(&tus).await
    }

    async fn connect(&mut self, rate: Option<Rate>) -> Result<LinkProbe, ClientError> {
        self.tus.connect(rate).await
    }

    async fn append(
        &mut self,
        upload: &Url,
        offset: u64,
        len: u64,
        body: ChannelBody,
        checksum: Option<&Checksum>,
        digest: Option<&[u8; 32]>,
    ) -> Result<PatchOutcome, ClientError> {
        let tus = self.to_tus(upload)?;
        self.tus
            .append(&tus, offset, len, body, checksum, digest)
            .await
    }

    async fn delete(&mut self, upload: &Url) -> Result<(), ClientError> {
        let tus = self.to_tus(upload)?;
        self.tus.delete(&tus).await
    }

    fn disconnect(&mut self) {
        self.tus.disconnect();
    }

    fn host(&self) -> &str {
        &self.target.host
    }

    /// The remote `serve --stdio` keeps indexes as any directory server does: a delta's
    /// base can be any file published in the remote directory.
    async fn index(&mut self, name: &str) -> Result<Option<Vec<u8>>, ClientError> {
        self.tus.index(name).await
    }

    async fn create_delta(
        &mut self,
        size: u64,
        name: &str,
        base: &DeltaBase,
    ) -> Result<Url, ClientError> {
        let tus = self.tus.create_delta(size, name, base).await?;
        self.to_ssh(&tus)
    }
}

/// Starts ssh sessions: one child `ssh` per connection, killed when the connection goes.
struct SshDialer {
    argv: Vec<String>,
    target: SshTarget,
    remote_upload: Option<String>,
}

/// The last bytes of ssh's stderr: enough for its diagnosis, bounded whatever the remote side
/// logs.
const STDERR_KEPT: usize = 8 * 1024;

/// How long to wait for ssh to exit and say why, once its connection failed.
const EXIT_WAIT: Duration = Duration::from_secs(3);

/// What one ssh session left: its exit status (once it exited) and its stderr.
struct SessionEnd {
    stderr: Mutex<VecDeque<u8>>,
    stderr_done: tokio::sync::Notify,
    stderr_closed: std::sync::atomic::AtomicBool,
    /// `Some(code)` once ssh exited (`None` inside for a signal or our kill).
    status: tokio::sync::watch::Sender<Option<Option<i32>>>,
}

impl Dialer for SshDialer {
    fn dial(&self) -> DialFuture<'_, Result<Dialed, ClientError>> {
        Box::pin(async move {
            let mut cmd = Command::new(&self.argv[0]);
            cmd.args(&self.argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            tracing::debug!(argv = ?self.argv, "starting ssh");
            let mut child = cmd.spawn().map_err(|e| ClientError::Pipe {
                kind: PipeFailure::NoProgram,
                message: format!(
                    "cannot run \"{}\": {e}; install OpenSSH's client (e.g. apt install \
                     openssh-client) or name yours with --ssh-command, e.g. --ssh-command \
                     \"/usr/local/bin/ssh -F ~/.ssh/config\"",
                    self.argv[0]
                ),
            })?;
            let pid = child.id();
            let stdin = child.stdin.take().expect("piped stdin");
            let stdout = child.stdout.take().expect("piped stdout");
            let mut stderr = child.stderr.take().expect("piped stderr");
            let end = Arc::new(SessionEnd {
                stderr: Mutex::default(),
                stderr_done: tokio::sync::Notify::new(),
                stderr_closed: std::sync::atomic::AtomicBool::new(false),
                status: tokio::sync::watch::Sender::new(None),
            });
            {
                let end = end.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match stderr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let mut kept = end.stderr.lock().expect("stderr lock");
                                kept.extend(&buf[..n]);
                                let excess = kept.len().saturating_sub(STDERR_KEPT);
                                kept.drain(..excess);
                            }
                        }
                    }
                    end.stderr_closed.store(true, Ordering::SeqCst);
                    end.stderr_done.notify_waiters();
                });
            }
            // The child is waited for (or killed) by its own task: the pipe's end only says
            // "go", so a connection dropped anywhere kills its ssh.
            let (kill, killed) = tokio::sync::oneshot::channel::<()>();
            {
                let end = end.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        biased;
                        status = child.wait() => {
                            end.status.send_replace(Some(status.ok().and_then(|s| s.code())));
                        }
                        _ = killed => {
                            // It may have exited by itself just before: then its own status
                            // stands; killed, it has none.
                            let _ = child.start_kill();
                            let status = child.wait().await;
                            end.status.send_replace(Some(status.ok().and_then(|s| s.code())));
                        }
                    }
                });
            }
            let counted = Arc::new(AtomicU64::new(0));
            let pipe = SshPipe {
                stdin,
                stdout,
                counted: counted.clone(),
                _kill: kill,
            };
            let socket: Arc<Mutex<Option<socket2::Socket>>> = Arc::new(Mutex::new(None));
            let probe = LinkProbe::from_fn(move || {
                let mut found = socket.lock().expect("socket lock");
                if found.is_none()
                    && let Some(pid) = pid
                {
                    *found = borrow_tcp_socket(pid);
                    if found.is_some() {
                        tracing::debug!(pid, "watching the TCP socket of ssh");
                    }
                }
                match found.as_ref() {
                    Some(s) => crate::client::socket_progress(s),
                    None => Some(counted.load(Ordering::Relaxed)),
                }
            });
            let (target, remote_upload) = (self.target.clone(), self.remote_upload.clone());
            let why_closed = Arc::new(move || {
                let (end, target, remote_upload) =
                    (end.clone(), target.clone(), remote_upload.clone());
                Box::pin(async move {
                    let mut exited = end.status.subscribe();
                    let status = tokio::time::timeout(EXIT_WAIT, exited.wait_for(Option::is_some))
                        .await
                        .ok()
                        .and_then(|r| r.ok().and_then(|s| *s))
                        .flatten();
                    // The stderr reader may lag the exit by a moment.
                    if !end.stderr_closed.load(Ordering::SeqCst) {
                        let _ = tokio::time::timeout(
                            Duration::from_millis(500),
                            end.stderr_done.notified(),
                        )
                        .await;
                    }
                    let stderr = {
                        let kept = end.stderr.lock().expect("stderr lock");
                        String::from_utf8_lossy(&kept.iter().copied().collect::<Vec<u8>>())
                            .into_owned()
                    };
                    tracing::debug!(?status, %stderr, "the ssh session ended");
                    status.map(|code| classify(code, &stderr, &target, remote_upload.as_deref()))
                }) as DialFuture<'static, Option<ClientError>>
            });
            Ok(Dialed {
                io: Box::new(pipe),
                probe,
                why_closed,
            })
        })
    }
}

/// ssh's stdin and stdout as one connection; dropping it kills ssh.
struct SshPipe {
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Bytes the pipe accepted plus bytes it returned: the probe's fallback.
    counted: Arc<AtomicU64>,
    _kill: tokio::sync::oneshot::Sender<()>,
}

impl AsyncRead for SshPipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stdout).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.counted.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for SshPipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stdin).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.counted.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdin).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stdin).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stdin).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.counted.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stdin.is_write_vectored()
    }
}

/// A copy of ssh's TCP socket (process `pid`), to read its TCP_INFO: the first socket among
/// its descriptors that answers TCP_INFO. `None` before ssh connected, where ssh has no TCP
/// socket of its own (a ProxyCommand), or where `pidfd_getfd` is not allowed.
#[cfg(target_os = "linux")]
fn borrow_tcp_socket(pid: u32) -> Option<socket2::Socket> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if pidfd < 0 {
        return None;
    }
    // SAFETY: a descriptor we just opened and own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as libc::c_int) };
    for entry in fds.flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        let Some(target) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_getfd duplicates descriptor `target` of the process into ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
        if fd < 0 {
            continue;
        }
        // SAFETY: a new descriptor that we own.
        let sock = unsafe { socket2::Socket::from_raw_fd(fd as libc::c_int) };
        if crate::client::socket_progress(&sock).is_some() {
            return Some(sock);
        }
    }
    None
}

#[cfg(not(target_os = "linux"))]
fn borrow_tcp_socket(_pid: u32) -> Option<socket2::Socket> {
    None
}

/// Why an ssh session ended, from its exit status and stderr: the remote command's own
/// status, or 255 for ssh's failures, told apart by what ssh printed.
pub fn classify(
    status: i32,
    stderr: &str,
    target: &SshTarget,
    remote_upload: Option<&str>,
) -> ClientError {
    let login = target.login();
    let said = last_lines(stderr, 3);
    let said = said.strip_prefix("error: ").unwrap_or(&said).to_string();
    let pipe = |kind, message: String| ClientError::Pipe { kind, message };
    let has = |needle: &str| stderr.contains(needle);
    let program = remote_upload.unwrap_or("upload");
    match status {
        127 | 126 => pipe(
            PipeFailure::NoRemoteUpload,
            format!(
                "{login} cannot run \"{program}\" (the remote shell said: {said}): install \
                 upload there (e.g. copy target/release/upload to ~/bin/ on {host}), or give \
                 its path with --remote-upload, e.g. --remote-upload /opt/upload/bin/upload",
                host = target.host
            ),
        ),
        // An `upload` from before ssh:// refuses the flag as a usage error (clap: status 2):
        // retrying would never help.
        2 if has("--stdio") => pipe(
            PipeFailure::NoRemoteUpload,
            format!(
                "the \"{program}\" on {login} is too old to serve over ssh (it said: {said}): \
                 install this version there, or give the path of one that is with \
                 --remote-upload, e.g. --remote-upload ~/bin/upload"
            ),
        ),
        REMOTE_DIR_STATUS => pipe(
            PipeFailure::RemoteDir,
            format!(
                "the remote directory {dir} on {login} cannot take uploads: {said}; give one \
                 that exists and the ssh user can write, e.g. ssh://{login}/srv/inbox/ (or \
                 create it first: ssh {host} mkdir -p {dir})",
                dir = target.dir,
                host = target.host
            ),
        ),
        255 if has("Permission denied") || has("Too many authentication failures") => pipe(
            PipeFailure::LoginRefused,
            format!(
                "{login} refused the ssh login ({said}): ssh runs with BatchMode=yes, so it \
                 needs a key the server accepts, without a password prompt; check with e.g. \
                 ssh -o BatchMode=yes {login} true, load the key into ssh-agent, or name it \
                 with --ssh-command \"ssh -i ~/.ssh/id_upload\""
            ),
        ),
        255 if has("Host key verification failed")
            || has("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || has("host key") =>
        {
            pipe(
                PipeFailure::HostKey,
                format!(
                    "the host key of {login} could not be verified ({said}): ssh never \
                     accepts an unknown or changed key without asking, and there is nobody \
                     to ask. Connect once by hand (ssh {host}) to check and record it, or, if \
                     the server was reinstalled, remove the old key with ssh-keygen -R {host}",
                    host = target.host
                ),
            )
        }
        255 if has("Connection refused")
            || has("timed out")
            || has("No route to host")
            || has("Network is unreachable")
            || has("Could not resolve hostname")
            || has("Name or service not known")
            || has("Temporary failure in name resolution") =>
        {
            pipe(
                PipeFailure::Unreachable,
                format!("ssh could not reach {login}: {said}"),
            )
        }
        _ => pipe(
            PipeFailure::Closed,
            format!(
                "the ssh session to {login} ended (status {status}){}",
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {said}")
                }
            ),
        ),
    }
}

/// The last `n` non-empty lines of `text`, joined: what a message quotes of ssh's stderr.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Retry;

    #[test]
    fn ssh_urls_name_login_port_and_directory() {
        let t = parse_ssh_url("ssh://alice@files.example.org:2222/srv/inbox").unwrap();
        assert_eq!(t.user.as_deref(), Some("alice"));
        assert_eq!(t.host, "files.example.org");
        assert_eq!(t.port, Some(2222));
        assert_eq!(t.dir, "/srv/inbox/");
        assert_eq!(
            t.url.as_str(),
            "ssh://alice@files.example.org:2222/srv/inbox/"
        );
        let home = parse_ssh_url("ssh://host/~/in box/").unwrap();
        assert_eq!(home.dir, "~/in box/");
        assert_eq!(home.user, None);
        assert_eq!(parse_ssh_url("ssh://[::1]/d/").unwrap().host, "::1");
        for bad in [
            "ssh://host",
            "ssh://host/",
            "ssh://u:pw@host/d/",
            "ssh:///d/",
            "ssh://-oProxyCommand=x/d/",
        ] {
            let e = parse_ssh_url(bad).unwrap_err().to_string();
            assert!(e.contains("e.g. ssh://"), "{bad}: {e}");
        }
    }

    #[test]
    fn remote_paths_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/srv/inbox/"), "/srv/inbox/");
        assert_eq!(shell_quote("/srv/it's $HOME/"), r"'/srv/it'\''s $HOME/'");
        assert_eq!(shell_quote("~/in box/"), "~/'in box/'");
        assert_eq!(shell_quote("~/"), "~/");
        let t = parse_ssh_url("ssh://h/srv/a;rm -rf ~/").unwrap();
        let opts = SshOptions {
            command: None,
            remote_upload: Some("/opt/my upload/upload".into()),
        };
        assert_eq!(
            t.remote_command(&opts),
            "'/opt/my upload/upload' serve --stdio --dir '/srv/a;rm -rf ~/'"
        );
    }

    #[test]
    fn the_ssh_command_is_split_like_a_shell_and_never_prompts() {
        assert_eq!(
            shell_split(r#"ssh -F "my cfg" -i 'a b' c\ d"#).unwrap(),
            ["ssh", "-F", "my cfg", "-i", "a b", "c d"]
        );
        assert!(shell_split("ssh 'open").is_err());
        let t = parse_ssh_url("ssh://bob@h:2200/d/").unwrap();
        let opts = SshOptions {
            command: Some("ssh -F cfg".into()),
            remote_upload: None,
        };
        let argv = t.argv(&opts).unwrap();
        assert_eq!(&argv[..3], ["ssh", "-F", "cfg"]);
        assert!(
            argv.windows(2).any(|w| w == ["-o", "BatchMode=yes"]),
            "{argv:?}"
        );
        assert!(argv.windows(2).any(|w| w == ["-p", "2200"]), "{argv:?}");
        assert!(argv.windows(2).any(|w| w == ["-l", "bob"]), "{argv:?}");
        assert_eq!(
            argv[argv.len() - 2..],
            ["--", "upload serve --stdio --dir /d/"]
        );
        let empty = SshOptions {
            command: Some("  ".into()),
            remote_upload: None,
        };
        assert!(t.argv(&empty).is_err());
    }

    #[test]
    fn session_ends_are_told_apart_and_classified() {
        let t = parse_ssh_url("ssh://u@h/d/").unwrap();
        let kind = |status, stderr: &str| match classify(status, stderr, &t, None) {
            ClientError::Pipe { kind, .. } => kind,
            other => panic!("{other:?}"),
        };
        let cases = [
            (
                127,
                "bash: line 1: upload: command not found",
                PipeFailure::NoRemoteUpload,
                Retry::Permanent,
            ),
            (
                13,
                "--dir /d/ does not exist",
                PipeFailure::RemoteDir,
                Retry::Permanent,
            ),
            (
                2,
                "error: unexpected argument '--stdio' found",
                PipeFailure::NoRemoteUpload,
                Retry::Permanent,
            ),
            (
                255,
                "u@h: Permission denied (publickey).",
                PipeFailure::LoginRefused,
                Retry::Permanent,
            ),
            (
                255,
                "Host key verification failed.",
                PipeFailure::HostKey,
                Retry::Permanent,
            ),
            (
                255,
                "@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @",
                PipeFailure::HostKey,
                Retry::Permanent,
            ),
            (
                255,
                "ssh: connect to host h port 22: Connection refused",
                PipeFailure::Unreachable,
                Retry::Temporary,
            ),
            (
                255,
                "ssh: connect to host h port 22: Connection timed out",
                PipeFailure::Unreachable,
                Retry::Temporary,
            ),
            (
                255,
                "Timeout, server h not responding.",
                PipeFailure::Closed,
                Retry::Temporary,
            ),
            (0, "", PipeFailure::Closed, Retry::Temporary),
        ];
        for (status, stderr, want, retry) in cases {
            assert_eq!(kind(status, stderr), want, "{status} {stderr}");
            assert_eq!(
                classify(status, stderr, &t, None).retry(),
                retry,
                "{stderr}"
            );
        }
        let msg = classify(127, "upload: command not found", &t, None).to_string();
        assert!(
            msg.contains("--remote-upload") && msg.contains("e.g."),
            "{msg}"
        );
    }
}
