//! `Upload-Checksum`: `Checksum::parse` never panics; what it accepts has the algorithm's
//! digest length, and its Display parses back to an equal `Checksum`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upload::protocol::{Algorithm, Checksum};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Checksum::parse(s) {
        assert_eq!(c.digest.len(), c.algorithm.digest_len(), "{s:?}");
        let printed = c.to_string();
        let back = Checksum::parse(&printed)
            .unwrap_or_else(|e| panic!("{s:?} parsed, but its Display {printed:?} does not: {e}"));
        assert_eq!(back, c, "{s:?} -> {printed:?}");
    }
    // The client's pick from a server's `Tus-Checksum-Algorithm` list.
    let _ = Algorithm::choose(s);
});
