//! `upload serve`: the tus server booted in-process on a temp dir and spoken to in raw HTTP,
//! one test per rule, laid out by tus extension; and the real binary for start-up and signals.
//! The helpers below are shared by every module.

use crate::helper::http::{Reply, TestServer, read_head, stalled_patch};
use crate::helper::{Env, pattern, run};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;
use upload::protocol::{Algorithm, Checksum, Metadata, format_repr_digest};
use upload::server::{Config, Cors, Token};

mod auth;
mod checksum;
mod core;
mod cors;
mod creation;
mod expiration;
mod names;
mod startup;
mod termination;

fn metadata(pairs: &[(&str, &[u8])]) -> String {
    let mut m = Metadata::default();
    for (k, v) in pairs {
        m.insert(k, v.to_vec());
    }
    m.to_string()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Creates an upload of `len` bytes named `name` and returns its path (`/files/<id>`).
async fn create(server: &TestServer, len: u64, meta: &[(&str, &[u8])]) -> String {
    let reply = server
        .req("POST", "/files/")
        .header("Upload-Length", len)
        .header("Upload-Metadata", metadata(meta))
        .send()
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    reply.header("Location").expect("Location").to_string()
}

async fn patch(server: &TestServer, path: &str, offset: u64, data: &[u8]) -> Reply {
    server
        .req("PATCH", path)
        .header("Upload-Offset", offset)
        .chunk(data.to_vec())
        .send()
        .await
}

async fn head(server: &TestServer, path: &str) -> Reply {
    server.req("HEAD", path).send().await
}

/// A request with `token` as its bearer token.
fn with_token(
    server: &TestServer,
    token: &str,
    method: &str,
    path: &str,
) -> crate::helper::http::Req {
    server
        .req(method, path)
        .header("Authorization", format!("Bearer {token}"))
}

/// What a client can see of a reply, but for its `Date`.
fn seen(reply: &Reply) -> (u16, Vec<(String, String)>, String) {
    let mut headers: Vec<(String, String)> = reply
        .headers
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
        .collect();
    headers.sort();
    (reply.status, headers, reply.body.clone())
}

fn two_maintainers(env: &Env) -> Config {
    let mut config = Config::new(env.path("up"));
    config.tokens = Some(vec![
        Token::named("tok-a", "alice"),
        Token::named("tok-b", "bob"),
    ]);
    config
}
