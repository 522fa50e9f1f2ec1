//! A TCP proxy between client and server that understands just enough HTTP/1.1 (requests with
//! Content-Length bodies, as our client sends) to count PATCH body bytes and to damage one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Default)]
pub struct Counters {
    /// Body bytes of PATCH requests that passed towards the server.
    pub patch_body_bytes: AtomicU64,
    pub patches: AtomicU64,
    /// Each PATCH's `Upload-Checksum` algorithm, in order ("" for none).
    pub checksum_algorithms: Mutex<Vec<String>>,
    /// Flip one byte of the PATCHes with these (1-based) indexes, at this body position.
    pub corrupt_patch: AtomicU64,
    pub corrupt_through: AtomicU64,
    pub corrupt_at: AtomicU64,
    pub corrupted: AtomicBool,
    /// Connections opened before this generation stop moving data (a silently dead link).
    pub frozen_before: AtomicU64,
    pub connections: AtomicU64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                // A small receive buffer, so a frozen connection stops acknowledging soon,
                // as a dead link would, instead of swallowing megabytes into the kernel.
                let _ = socket2::SockRef::from(&client).set_recv_buffer_size(32 * 1024);
                let generation = c.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let c = c.clone();
                let (client2, server2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || upstream(client, server, &c, generation));
                thread::spawn(move || copy_plain(server2, client2));
            }
        });
        Proxy { addr, counters }
    }

    pub fn url(&self) -> String {
        format!("http://{}/files/", self.addr)
    }

    /// Each PATCH's `Upload-Checksum` algorithm so far, in order ("" for none).
    pub fn checksum_algorithms(&self) -> Vec<String> {
        self.counters.checksum_algorithms.lock().unwrap().clone()
    }

    pub fn patch_body_bytes(&self) -> u64 {
        self.counters.patch_body_bytes.load(Ordering::SeqCst)
    }

    /// Every connection open now stops moving data, silently (no FIN, no RST); new ones work.
    pub fn freeze_open_connections(&self) {
        let next = self.counters.connections.load(Ordering::SeqCst) + 1;
        self.counters.frozen_before.store(next, Ordering::SeqCst);
    }

    /// Damage one byte of the `index`-th PATCH (1-based) at body position `at`.
    pub fn corrupt(&self, index: u64, at: u64) {
        self.corrupt_several(index, 1, at);
    }

    /// Damage one byte at body position `at` of `count` PATCHes in a row, from the
    /// `first`-th (1-based).
    pub fn corrupt_several(&self, first: u64, count: u64, at: u64) {
        self.counters.corrupt_at.store(at, Ordering::SeqCst);
        let through = &self.counters.corrupt_through;
        through.store(first + count.max(1) - 1, Ordering::SeqCst);
        self.counters.corrupt_patch.store(first, Ordering::SeqCst);
    }
}

fn copy_plain(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Client to server: parse request heads, count and maybe damage PATCH bodies.
fn upstream(mut from: TcpStream, mut to: TcpStream, c: &Counters, generation: u64) {
    let mut head: Vec<u8> = Vec::new();
    let mut body_left: u64 = 0;
    let mut body_pos: u64 = 0;
    let mut in_patch = false;
    let mut patch_index = 0u64;
    let mut buf = [0u8; 64 * 1024];
    loop {
        while generation < c.frozen_before.load(Ordering::SeqCst) {
            // Frozen: hold the connection open and read nothing, forever.
            thread::sleep(std::time::Duration::from_millis(100));
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut data = buf[..n].to_vec();
        let mut i = 0;
        while i < data.len() {
            if body_left > 0 {
                let take = (body_left as usize).min(data.len() - i);
                if in_patch {
                    c.patch_body_bytes.fetch_add(take as u64, Ordering::SeqCst);
                    let at = c.corrupt_at.load(Ordering::SeqCst);
                    let first = c.corrupt_patch.load(Ordering::SeqCst);
                    if first > 0
                        && (first..=c.corrupt_through.load(Ordering::SeqCst)).contains(&patch_index)
                        && at >= body_pos
                        && at < body_pos + take as u64
                    {
                        data[i + (at - body_pos) as usize] ^= 0x01;
                        c.corrupted.store(true, Ordering::SeqCst);
                    }
                }
                body_pos += take as u64;
                body_left -= take as u64;
                i += take;
                continue;
            }
            head.push(data[i]);
            i += 1;
            if head.ends_with(b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                in_patch = text.starts_with("patch ");
                if in_patch {
                    patch_index = c.patches.fetch_add(1, Ordering::SeqCst) + 1;
                    let algorithm = text
                        .lines()
                        .find_map(|l| l.strip_prefix("upload-checksum:"))
                        .and_then(|v| v.split_whitespace().next())
                        .unwrap_or_default();
                    let mut seen = c.checksum_algorithms.lock().unwrap();
                    seen.push(algorithm.to_string());
                }
                body_left = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                body_pos = 0;
                head.clear();
            }
        }
        if to.write_all(&data).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
