//! `safe_name`: whatever bytes a client sends as its `filename` metadata, the published name is a
//! plain base name: non-empty, no `/` or `\`, no NUL or other control character, never `.` or
//! `..`, never starting with `.`, at most 200 bytes; nothing in it that shows nothing or
//! reorders what is shown (bidi controls, zero-width and other format characters), white space
//! only as plain spaces, in Unicode NFC, and reduced to itself when reduced again. Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unicode_normalization::is_nfc;

use upload::server::{Id, is_invisible, safe_name};

/// The bidi controls and zero-width characters of issue 11 (item 4), listed here rather than
/// taken from the code under test.
const SPOOFERS: &[char] = &[
    '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
    '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{200B}', '\u{200C}',
    '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{3164}', '\u{115F}', '\u{1160}', '\u{FFFC}',
];

fuzz_target!(|data: &[u8]| {
    let id = Id::parse("0123456789abcdef0123456789abcdef").unwrap();
    let name = safe_name(Some(data), &id);
    let shown = String::from_utf8_lossy(data);
    assert!(!name.is_empty(), "{shown:?}");
    assert!(name.len() <= 200, "{shown:?} -> {} bytes", name.len());
    assert!(name != "." && name != "..", "{shown:?} -> {name:?}");
    assert!(!name.starts_with('.'), "{shown:?} -> {name:?}");
    assert!(!name.contains(['/', '\\', '\0']), "{shown:?} -> {name:?}");
    assert!(!name.chars().any(char::is_control), "{shown:?} -> {name:?}");
    assert_eq!(name.trim(), name, "{shown:?} -> {name:?}");
    assert!(!name.contains(SPOOFERS), "{shown:?} -> {name:?}");
    assert!(!name.chars().any(is_invisible), "{shown:?} -> {name:?}");
    assert!(
        !name.chars().any(|c| c.is_whitespace() && c != ' '),
        "{shown:?} -> {name:?}"
    );
    assert!(is_nfc(&name), "{shown:?} -> {name:?}");
    assert_eq!(safe_name(Some(name.as_bytes()), &id), name, "{shown:?}");
});
