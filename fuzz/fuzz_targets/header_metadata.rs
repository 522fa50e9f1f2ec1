//! `Upload-Metadata`: `Metadata::parse` never panics, and what it accepts prints (Display)
//! to a value that parses back to an equal `Metadata`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upload::protocol::Metadata;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Metadata::parse(s) {
        let printed = m.to_string();
        let back = Metadata::parse(&printed)
            .unwrap_or_else(|e| panic!("{s:?} parsed, but its Display {printed:?} does not: {e}"));
        assert_eq!(back, m, "{s:?} -> {printed:?}");
        for key in m.0.keys() {
            let _ = m.get_str(key);
        }
    }
});
