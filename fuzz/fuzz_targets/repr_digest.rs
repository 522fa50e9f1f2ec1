//! `Repr-Digest` (RFC 9530): `parse_repr_digest` never panics on any text, and
//! `format_repr_digest` of any 32 bytes parses back to those bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upload::protocol::{format_repr_digest, parse_repr_digest};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(d) = parse_repr_digest(s) {
            assert_eq!(parse_repr_digest(&format_repr_digest(&d)), Ok(d), "{s:?}");
        }
    }
    if let Ok(d) = <[u8; 32]>::try_from(data.get(..32).unwrap_or_default()) {
        let header = format_repr_digest(&d);
        assert_eq!(parse_repr_digest(&header), Ok(d), "{header:?}");
        // Other members around it do not hide it.
        let dict = format!("md5=:AAAA:, {header}, sha-512=:x:");
        assert_eq!(parse_repr_digest(&dict), Ok(d), "{dict:?}");
    }
});
