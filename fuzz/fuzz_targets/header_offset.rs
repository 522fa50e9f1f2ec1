//! `Upload-Offset`, `Upload-Length`, `Upload-Defer-Length`: never panic; an accepted integer is
//! nothing but ASCII digits, means what it says, and prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upload::protocol::{parse_defer_length, parse_length, parse_offset};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let offset = parse_offset(s);
    let length = parse_length(s);
    assert_eq!(offset.is_ok(), length.is_ok(), "{s:?}");
    if let Ok(n) = offset {
        assert_eq!(length, Ok(n));
        assert!(!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()), "{s:?}");
        // Leading zeros are allowed; the value is the decimal one.
        let digits = s.trim_start_matches('0');
        let digits = if digits.is_empty() { "0" } else { digits };
        assert_eq!(n.to_string(), digits, "{s:?}");
        assert_eq!(parse_offset(&n.to_string()), Ok(n));
    }
    if parse_defer_length(s).is_ok() {
        assert_eq!(s, "1");
    }
});
