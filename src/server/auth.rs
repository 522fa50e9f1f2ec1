//! Bearer tokens: reading the token file and checking `Authorization` in constant time.
//!
//! Tokens are compared by their SHA-256 digests with `subtle`, so neither the position of the
//! first wrong byte nor the length of a valid token shows in the response time. Every candidate
//! is compared (no early exit), and a refusal never says what was wrong.

use super::ServerError;
use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::ConstantTimeEq;

/// The accepted tokens, kept only as digests.
#[derive(Clone)]
pub(crate) struct Tokens(Vec<[u8; 32]>);

impl Tokens {
    pub fn new<S: AsRef<str>>(tokens: &[S]) -> Tokens {
        Tokens(
            tokens
                .iter()
                .map(|t| digest(t.as_ref().as_bytes()))
                .collect(),
        )
    }

    /// Whether an `Authorization` header value carries one of the tokens.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = authorization.and_then(bearer) else {
            return false;
        };
        let presented = digest(token);
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, t| {
                found | t.ct_eq(&presented)
            })
            .into()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// `Bearer <token>`; the scheme is case-insensitive (RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    let token = scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then_some(rest.trim_ascii())?;
    (!token.is_empty()).then_some(token)
}

/// Reads a token file: one token per line; blank lines and lines starting with `#` are ignored.
/// A file without any token is an error: it would lock everyone out, which is never meant.
pub fn load_token_file(path: &Path) -> Result<Vec<String>, ServerError> {
    let text = std::fs::read_to_string(path).map_err(|source| ServerError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let tokens = parse_tokens(&text);
    if tokens.is_empty() {
        return Err(ServerError::NoTokens {
            path: Some(path.to_path_buf()),
        });
    }
    Ok(tokens)
}

fn parse_tokens(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_lines() {
        let text = "# ops team\n\n  alpha  \r\nbeta\n#gamma\n";
        assert_eq!(parse_tokens(text), ["alpha", "beta"]);
        assert!(parse_tokens("# only a comment\n\n").is_empty());
    }

    #[test]
    fn empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# nothing yet\n").unwrap();
        assert!(matches!(
            load_token_file(&path),
            Err(ServerError::NoTokens { .. })
        ));
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(load_token_file(&path).unwrap(), ["s3cret"]);
        assert!(matches!(
            load_token_file(&dir.path().join("missing")),
            Err(ServerError::TokenFile { .. })
        ));
    }

    #[test]
    fn bearer_tokens() {
        let tokens = Tokens::new(&["alpha", "beta"]);
        assert!(tokens.allows(Some(b"Bearer alpha")));
        assert!(tokens.allows(Some(b"bearer beta")));
        assert!(!tokens.allows(Some(b"Bearer alph")));
        assert!(!tokens.allows(Some(b"Bearer alphaa")));
        assert!(!tokens.allows(Some(b"Basic alpha")));
        assert!(!tokens.allows(Some(b"Bearer ")));
        assert!(!tokens.allows(Some(b"alpha")));
        assert!(!tokens.allows(None));
    }
}
