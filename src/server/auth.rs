//! Bearer tokens: reading the token file, and finding which token a request carries in
//! constant time.
//!
//! A token file line is `TOKEN` or `TOKEN NAME`. The name stands for the token wherever the
//! server must say who did something, so the token itself is never written down: an upload's
//! info file records its owner by name, and with per-token directories a token's uploads are
//! published in `DIR/<NAME>/`. A token without a name is `token-<first 12 hex digits of its
//! SHA-256>`: stable when the file is reordered, and 48 bits of a hash reveal nothing usable
//! about a random token.
//!
//! Tokens are compared by their SHA-256 digests with `subtle`, so neither the position of the
//! first wrong byte nor the length of a valid token shows in the response time. Every token
//! is compared (no early exit) and the index of the match is kept by conditional selection, so
//! which token matched does not show either. A refusal never says what was wrong.

use super::error::ServerError;
use super::names::check_dir_name;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// One accepted token, as configured.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub secret: String,
    /// `None`: the default name, `token-<first 12 hex of SHA-256(secret)>`.
    pub name: Option<String>,
}

impl Token {
    pub fn named(secret: impl Into<String>, name: impl Into<String>) -> Token {
        Token {
            secret: secret.into(),
            name: Some(name.into()),
        }
    }

    /// The name the server knows this token by.
    pub fn name(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!(
                "token-{}",
                &hex::encode(digest(self.secret.as_bytes()))[..12]
            ),
        }
    }
}

impl From<&str> for Token {
    fn from(secret: &str) -> Token {
        Token::from(secret.to_string())
    }
}

impl From<String> for Token {
    fn from(secret: String) -> Token {
        Token { secret, name: None }
    }
}

/// Never prints the secret: a `Config` ends up in logs.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.name())
    }
}

/// The accepted tokens, kept only as digests, and their names.
#[derive(Clone)]
pub(crate) struct Tokens {
    digests: Vec<[u8; 32]>,
    names: Vec<String>,
}

impl Tokens {
    /// Checks the list (see [`check`]); an error names the token by its place in the list.
    pub fn new(tokens: &[Token]) -> Result<Tokens, ServerError> {
        check(tokens, |i| format!("token {} of the list", i + 1))
    }

    /// The index of the token an `Authorization` header value carries, if it carries one.
    pub fn find(&self, authorization: Option<&[u8]>) -> Option<usize> {
        let token = authorization.and_then(bearer)?;
        let presented = digest(token);
        // Tokens are unique (checked at load), so at most one digest matches.
        let (found, index) = self.digests.iter().enumerate().fold(
            (subtle::Choice::from(0), 0u64),
            |(found, index), (i, t)| {
                let same = t.ct_eq(&presented);
                (
                    found | same,
                    u64::conditional_select(&index, &(i as u64), same),
                )
            },
        );
        bool::from(found).then_some(index as usize)
    }

    pub fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    pub fn count(&self) -> usize {
        self.digests.len()
    }
}

/// Refuses an empty token, a name that is not a safe directory name, and duplicates (two equal
/// tokens, or two tokens with one name, default names included). `at(i)` says where the i-th
/// token came from, for the message.
fn check(tokens: &[Token], at: impl Fn(usize) -> String) -> Result<Tokens, ServerError> {
    let bad = |i: usize, why: String| ServerError::BadToken { at: at(i), why };
    let mut digests = Vec::with_capacity(tokens.len());
    let mut names = Vec::with_capacity(tokens.len());
    let mut by_digest = HashMap::new();
    let mut by_name = HashMap::new();
    for (i, token) in tokens.iter().enumerate() {
        if token.secret.is_empty() || token.secret.chars().any(char::is_whitespace) {
            return Err(bad(i, "a token is one word, without spaces".into()));
        }
        let name = token.name();
        check_dir_name(&name).map_err(|why| bad(i, format!("bad name {name:?}: {why}")))?;
        let d = digest(token.secret.as_bytes());
        if let Some(first) = by_digest.insert(d, i) {
            return Err(bad(i, format!("the same token as {}", at(first))));
        }
        if let Some(first) = by_name.insert(name.clone(), i) {
            return Err(bad(
                i,
                format!("the name {name:?} is already used by {}", at(first)),
            ));
        }
        digests.push(d);
        names.push(name);
    }
    Ok(Tokens { digests, names })
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

/// Reads a token file: one `TOKEN` or `TOKEN NAME` per line; blank lines and lines starting
/// with `#` are ignored. A file without any token is an error: it would lock everyone out,
/// which is never meant. So is a bad name or a duplicate, named by its line number.
pub fn load_token_file(path: &Path) -> Result<Vec<Token>, ServerError> {
    let text = std::fs::read_to_string(path).map_err(|source| ServerError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let at = |line: usize| format!("{} line {line}", path.display());
    let lines =
        parse_tokens(&text).map_err(|(line, why)| ServerError::BadToken { at: at(line), why })?;
    if lines.is_empty() {
        return Err(ServerError::NoTokens {
            path: Some(path.to_path_buf()),
        });
    }
    let (numbers, tokens): (Vec<usize>, Vec<Token>) = lines.into_iter().unzip();
    check(&tokens, |i| at(numbers[i]))?;
    Ok(tokens)
}

/// The tokens and their line numbers (from 1); `Err((line, why))` for a line that is neither
/// `TOKEN` nor `TOKEN NAME`.
fn parse_tokens(text: &str) -> Result<Vec<(usize, Token)>, (usize, String)> {
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let token = match *line.split_whitespace().collect::<Vec<_>>() {
            [secret] => Token::from(secret),
            [secret, name] => Token::named(secret, name),
            _ => {
                return Err((
                    i + 1,
                    "expected TOKEN or TOKEN NAME, separated by a space".into(),
                ));
            }
        };
        tokens.push((i + 1, token));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<(usize, String, String)> {
        parse_tokens(text)
            .unwrap()
            .into_iter()
            .map(|(line, t)| (line, t.name(), t.secret))
            .collect()
    }

    fn load(text: &str) -> Result<Vec<Token>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).unwrap();
        load_token_file(&path).map_err(|e| {
            // The path is in every message; the tests check the rest.
            e.to_string().replace(&path.display().to_string(), "FILE")
        })
    }

    #[test]
    fn token_file_lines() {
        let text = "# ops team\n\n  alpha  \r\nbeta   bob\n#gamma\n\tgamma\talice.ops \n";
        let alpha = format!("token-{}", &hex::encode(Sha256::digest("alpha"))[..12]);
        assert_eq!(
            parsed(text),
            [
                (3, alpha, "alpha".into()),
                (4, "bob".into(), "beta".into()),
                (6, "alice.ops".into(), "gamma".into()),
            ]
        );
        assert!(parsed("# only a comment\n\n").is_empty());
        assert_eq!(
            parse_tokens("ok\na b c\n").unwrap_err().0,
            2,
            "three words are neither TOKEN nor TOKEN NAME"
        );
    }

    #[test]
    fn default_names_do_not_depend_on_the_order() {
        let forward = load("alpha\nbeta\n").unwrap();
        let backward = load("beta\nalpha\n").unwrap();
        assert_eq!(forward[0].name(), backward[1].name());
        assert_eq!(forward[1].name(), backward[0].name());
        assert_ne!(forward[0].name(), forward[1].name());
        assert!(forward[0].name().starts_with("token-"));
        assert_eq!(forward[0].name().len(), "token-".len() + 12);
    }

    #[test]
    fn bad_names_and_duplicates_are_refused_with_their_line() {
        let table = [
            ("alpha ../etc\n", "FILE line 1: bad name \"../etc\""),
            (
                "# c\nalpha .partial\n",
                "FILE line 2: bad name \".partial\"",
            ),
            ("alpha al/ice\n", "FILE line 1: bad name"),
            ("alpha a b\n", "FILE line 1: expected TOKEN or TOKEN NAME"),
            (
                "alpha alice\n\nbeta alice\n",
                "FILE line 3: the name \"alice\" is already used by FILE line 1",
            ),
            (
                "alpha alice\nalpha bob\n",
                "FILE line 2: the same token as FILE line 1",
            ),
            (
                "alpha\nalpha\n",
                "FILE line 2: the same token as FILE line 1",
            ),
        ];
        for (text, want) in table {
            let got = load(text).unwrap_err();
            assert!(got.starts_with(want), "{text:?}: {got}");
        }
        // A name may not take another token's default name either.
        let taken = Token::from("alpha").name();
        let got = load(&format!("alpha\nbeta {taken}\n")).unwrap_err();
        assert!(got.contains("already used by FILE line 1"), "{got}");
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
        assert_eq!(load_token_file(&path).unwrap(), [Token::from("s3cret")]);
        assert!(matches!(
            load_token_file(&dir.path().join("missing")),
            Err(ServerError::TokenFile { .. })
        ));
    }

    #[test]
    fn configured_lists_are_checked_too() {
        let err = Tokens::new(&[Token::named("a", "x"), Token::named("b", "x")])
            .err()
            .expect("a repeated name");
        assert!(err.to_string().starts_with("token 2 of the list"), "{err}");
        assert!(Tokens::new(&[Token::from("")]).is_err());
        assert!(Tokens::new(&[Token::from("a b")]).is_err());
    }

    #[test]
    fn bearer_tokens() {
        let tokens = Tokens::new(&["alpha".into(), Token::named("beta", "bob")]).unwrap();
        assert_eq!(tokens.find(Some(b"Bearer alpha")), Some(0));
        assert_eq!(tokens.find(Some(b"bearer beta")), Some(1));
        assert_eq!(tokens.name(1), "bob");
        for refused in [
            &b"Bearer alph"[..],
            b"Bearer alphaa",
            b"Basic alpha",
            b"Bearer ",
            b"alpha",
        ] {
            assert_eq!(tokens.find(Some(refused)), None, "{refused:?}");
        }
        assert_eq!(tokens.find(None), None);
    }
}
