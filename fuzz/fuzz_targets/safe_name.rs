//! `safe_name`: whatever bytes a client sends as its `filename` metadata, the published name is a
//! plain base name: non-empty, no `/` or `\`, no NUL or other control character, never `.` or
//! `..`, never starting with `.`, at most 200 bytes. Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

use upload::server::{Id, safe_name};

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
});
