//! Names: upload ids, the file name a finished upload is published under, and the names of
//! tokens (their directories with per-token directories).
//!
//! Ids and file names come from the network, so both are reduced to something that cannot
//! escape `DIR` or surprise whoever lists it: an id is exactly 32 lowercase hex digits
//! (anything else is a 404 before the filesystem is touched), and a published name is a plain
//! base name (see [`safe_name`]). Token names come from the operator's token file and are
//! refused, not repaired, when unsafe (see [`check_dir_name`]). Pure functions, so the nasty
//! cases are unit-tested in a table.

use std::fmt;
use unicode_normalization::UnicodeNormalization;

/// The longest published name, in bytes. Leaves room for a clash suffix (`.123`) under the
/// usual 255-byte file name limit.
const MAX_NAME_BYTES: usize = 200;

/// An extension longer than this is not kept when a name must be cut: it is more likely part of
/// the name than a type (`report.final-version-for-review`).
const MAX_EXTENSION_BYTES: usize = 16;

/// The longest token name, in bytes.
const MAX_DIR_NAME_BYTES: usize = 64;

/// An upload id: 128 random bits as 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id(String);

impl Id {
    pub fn random() -> Id {
        Id(hex::encode(rand::random::<[u8; 16]>()))
    }

    /// Accepts exactly what [`Id::random`] produces, nothing else (no uppercase, no dots, no
    /// separators), so an id is always safe to put in a path.
    pub fn parse(s: &str) -> Option<Id> {
        let ok = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Id(s.to_string()))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reduces a client-supplied file name to a safe base name: the last path component after any
/// `/` or `\` (so `C:\x\y.iso` is `y.iso` and `../../etc/passwd` is `passwd`), without control
/// characters (NUL included) or invisible ones (see [`is_invisible`]: `rtl\u{202e}TXT.exe`,
/// which a listing shows as "rtlexe.TXT", is `rtlTXT.exe`), with every other kind of white
/// space a plain space, in Unicode NFC (so the NFC and NFD spellings of `café.txt` are one
/// name, as they look), without surrounding white space or leading dots (so never `.`, `..`
/// or a hidden file), at most 200 bytes (cut at a char boundary, keeping a short extension).
/// What is left empty becomes `upload-<id>`.
pub fn safe_name(requested: Option<&[u8]>, id: &Id) -> String {
    let fallback = || format!("upload-{id}");
    let Some(requested) = requested else {
        return fallback();
    };
    let text = String::from_utf8_lossy(requested);
    let last = text.rsplit(['/', '\\']).next().unwrap_or_default();
    // Invisible characters go before composing: `e` + U+034F + U+0301 must become `é`.
    let visible = last
        .chars()
        .filter(|&c| !c.is_control() && !is_invisible(c))
        .map(|c| if c.is_whitespace() { ' ' } else { c });
    let clean: String = visible.nfc().collect();
    // Dots and white space together: stripping one then the other left " . .x" as ".x", a
    // hidden file (found by fuzz/fuzz_targets/safe_name.rs).
    let name = clean
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end();
    if name.is_empty() {
        return fallback();
    }
    truncate_keeping_extension(name, MAX_NAME_BYTES)
}

/// Characters that show nothing in a file listing, or change how the rest is shown: the bidi
/// controls (U+202A-202E, U+2066-2069, U+200E/200F, U+061C), the other format characters
/// (Unicode category Cf: zero-width space and joiners, word joiner, BOM, soft hyphen, tags,
/// ...), the rest of the default-ignorable code points (Hangul fillers U+115F, U+1160, U+3164,
/// U+FFA0; variation selectors; the combining grapheme joiner), line and paragraph separators,
/// and the object replacement character U+FFFC. Letters, digits, punctuation and visible
/// symbols of every script stay.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFC}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

fn truncate_keeping_extension(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let (stem, ext) = split_extension(name);
    // A cut can end in white space; the promise is a name without surrounding spaces.
    if ext.len() <= MAX_EXTENSION_BYTES {
        format!("{}{ext}", cut(stem, max - ext.len()).trim_end())
    } else {
        cut(name, max).trim_end().to_string()
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `debian.iso` → (`debian`, `.iso`); `archive.tar.gz` → (`archive.tar`, `.gz`); `README` →
/// (`README`, ``). A name is never all extension (leading dots are gone by now).
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    }
}

/// Whether `name` may name a token and so a directory in `DIR`: 1 to 64 ASCII letters,
/// digits, `-`, `_` and `.`, not starting with `.` (never `.`, `..`, `.partial` or hidden).
/// `Err` says what is wrong, for the operator.
pub fn check_dir_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_DIR_NAME_BYTES {
        return Err(format!("a name has 1 to {MAX_DIR_NAME_BYTES} characters"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{bad:?} is not allowed in a name: use letters, digits, -, _ and ."
        ));
    }
    if name.starts_with('.') {
        return Err("a name cannot start with a dot".into());
    }
    Ok(())
}

/// The clash policy's candidates, in order: `name`, then `stem.1.ext`, `stem.2.ext`, ….
pub fn candidate(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    let (stem, ext) = split_extension(name);
    format!("{stem}.{n}{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Id {
        Id::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn ids_are_strict() {
        let random = Id::random();
        assert_eq!(Id::parse(&random.to_string()), Some(random.clone()));
        assert_ne!(Id::random(), random);
        for bad in [
            "",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "../3456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdeg",
        ] {
            assert_eq!(Id::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_cut_name_does_not_end_in_a_space() {
        let id = Id::parse("0123456789abcdef0123456789abcdef").unwrap();
        let name = format!("{} b", "a".repeat(199));
        assert_eq!(safe_name(Some(name.as_bytes()), &id), "a".repeat(199));
    }

    #[test]
    fn safe_names() {
        let long = "a".repeat(300);
        let long_iso = format!("{}.iso", "b".repeat(300));
        let long_utf8 = format!("{}.iso", "é".repeat(150));
        let table: &[(&[u8], &str)] = &[
            (b"debian.iso", "debian.iso"),
            (b"../../etc/passwd", "passwd"),
            (b"a/b", "b"),
            (b"\0x", "x"),
            (b"..", "upload-0123456789abcdef0123456789abcdef"),
            (b".", "upload-0123456789abcdef0123456789abcdef"),
            (b".hidden", "hidden"),
            (b"...and dots", "and dots"),
            (b" . .x", "x"),
            (b". . .hidden.iso", "hidden.iso"),
            (b"", "upload-0123456789abcdef0123456789abcdef"),
            (b"   ", "upload-0123456789abcdef0123456789abcdef"),
            (b"dir/", "upload-0123456789abcdef0123456789abcdef"),
            (b"C:\\x\\y.iso", "y.iso"),
            (b"evil\r\nname\x1b[31m.txt", "evilname[31m.txt"),
            (b"tab\there\x7f", "tabhere"),
            (b"caf\xc3\xa9.txt", "café.txt"),
            (b"bad\xffutf8", "bad\u{fffd}utf8"),
            (long.as_bytes(), &long[..200]),
        ];
        for (input, want) in table {
            assert_eq!(
                safe_name(Some(input), &id()),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(
            safe_name(None, &id()),
            "upload-0123456789abcdef0123456789abcdef"
        );

        let cut = safe_name(Some(long_iso.as_bytes()), &id());
        assert_eq!(cut.len(), 200);
        assert!(cut.ends_with("b.iso"), "{cut}");

        let cut = safe_name(Some(long_utf8.as_bytes()), &id());
        assert!(cut.len() <= 200 && cut.ends_with("é.iso"), "{cut}");
    }

    /// Issue 11, item 4: names that look like another (bidi overrides, invisible characters,
    /// two spellings of one text) are reduced to what they show, in one spelling.
    #[test]
    fn names_cannot_be_spoofed_visually() {
        let fallback = "upload-0123456789abcdef0123456789abcdef";
        let table: &[(&str, &str)] = &[
            ("rtl\u{202e}TXT.exe", "rtlTXT.exe"),
            ("a\u{202a}b\u{202b}c\u{202c}d\u{202d}e", "abcde"),
            ("\u{2066}x\u{2067}y\u{2068}z\u{2069}.txt", "xyz.txt"),
            ("left\u{200e}right\u{200f}\u{61c}.pdf", "leftright.pdf"),
            (
                "zero\u{200b}width\u{200c}\u{200d}\u{2060}.iso",
                "zerowidth.iso",
            ),
            ("\u{feff}bom.txt", "bom.txt"),
            ("soft\u{ad}hyphen", "softhyphen"),
            ("cafe\u{301}.txt", "caf\u{e9}.txt"),
            ("caf\u{e9}.txt", "caf\u{e9}.txt"),
            ("\u{1100}\u{1161}.txt", "\u{ac00}.txt"),
            ("\u{3164}", fallback),
            ("\u{115f}\u{1160}\u{ffa0}", fallback),
            ("x\u{fffc}y", "xy"),
            ("tag\u{e0041}\u{e007f}s", "tags"),
            ("e\u{34f}\u{301}", "\u{e9}"),
            ("\u{200e}.hidden", "hidden"),
            ("\u{200b} \u{200b}", fallback),
            (
                "no\u{a0}break\u{3000}space\u{2003}.txt",
                "no break space .txt",
            ),
            ("line\u{2028}sep\u{2029}", "linesep"),
        ];
        for (input, want) in table {
            assert_eq!(
                safe_name(Some(input.as_bytes()), &id()),
                *want,
                "{:?}",
                input.escape_unicode().to_string()
            );
        }
    }

    proptest::proptest! {
        /// The spoofing properties on any text (fuzz/fuzz_targets/safe_name.rs checks them on
        /// any bytes): nothing invisible, one kind of space, NFC, and reduced to itself when
        /// reduced again.
        #[test]
        fn any_name_is_visible_and_normalised(text in proptest::prelude::any::<String>()) {
            let name = safe_name(Some(text.as_bytes()), &id());
            proptest::prop_assert!(!name.chars().any(is_invisible), "{:?}", name);
            proptest::prop_assert!(!name.chars().any(|c| c.is_whitespace() && c != ' '));
            proptest::prop_assert!(unicode_normalization::is_nfc(&name), "{:?}", name);
            proptest::prop_assert_eq!(safe_name(Some(name.as_bytes()), &id()), name);
        }
    }

    #[test]
    fn dir_names_are_strict() {
        for good in ["alice", "ci-runner_2", "team.ops", "A1", &"x".repeat(64)] {
            assert_eq!(check_dir_name(good), Ok(()), "{good:?}");
        }
        let long = "x".repeat(65);
        for bad in [
            "",
            ".",
            "..",
            ".partial",
            ".upload-index",
            "a/b",
            "a\\b",
            "a b",
            "é",
            "a\0",
            &long,
        ] {
            assert!(check_dir_name(bad).is_err(), "{bad:?}");
        }
    }

    /// The store's own directories in `DIR` (`.partial`, `.upload-index` with the indexes of
    /// published files) can never be a published name, nor a clash candidate of one.
    #[test]
    fn the_stores_own_directories_cannot_be_published_names() {
        for own in [
            ".partial",
            ".upload-index",
            "../.upload-index",
            "x/.upload-index",
        ] {
            let name = safe_name(Some(own.as_bytes()), &id());
            assert!(!name.starts_with('.'), "{own:?} became {name:?}");
            assert!(!candidate(&name, 3).starts_with('.'));
        }
    }

    #[test]
    fn clash_candidates_number_before_the_extension() {
        assert_eq!(candidate("x.iso", 0), "x.iso");
        assert_eq!(candidate("x.iso", 1), "x.1.iso");
        assert_eq!(candidate("x.iso", 12), "x.12.iso");
        assert_eq!(candidate("archive.tar.gz", 2), "archive.tar.2.gz");
        assert_eq!(candidate("README", 1), "README.1");
    }
}
