//! `core::duration`: arbitrary text never panics, and whatever parses
//! formats back to a string that parses to the same duration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m2m_operator::core::duration::{format_duration, parse_duration};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(text) {
        let formatted = format_duration(d);
        assert_eq!(
            parse_duration(&formatted),
            Ok(d),
            "{text:?} formatted as {formatted:?}"
        );
    }
});
