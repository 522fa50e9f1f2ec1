//! `decode_header_text` (`Upload-Published-As`) and `parse_hex_sha256` (our client's `sha256`
//! metadata): never panic; `decode_header_text(encode_header_text(s)) == s`, the encoding is
//! printable ASCII only, and a parsed hex digest prints back (lowercase) to the trimmed input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upload::protocol::{decode_header_text, encode_header_text, parse_hex_sha256};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = decode_header_text(s);
    let encoded = encode_header_text(s);
    assert!(encoded.bytes().all(|b| (0x20..0x7f).contains(&b)), "{encoded:?}");
    assert_eq!(decode_header_text(&encoded), s, "{encoded:?}");
    if let Some(d) = parse_hex_sha256(s) {
        assert_eq!(hex::encode(d), s.trim().to_ascii_lowercase(), "{s:?}");
    }
});
