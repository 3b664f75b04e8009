//! Erlang term syntax (`lib_chan_protocol::parse`), as typed at `lib_chan rpc` or the
//! shell, or written as `args` in a config, on arbitrary UTF-8 text.
//!
//! Properties: `parse` never panics (errors are positions and messages); a term that
//! parses prints as Erlang syntax that parses back to the same term and prints the same
//! again (printing is canonical); and it encodes as ETF and decodes back unchanged.
#![no_main]

use lib_chan_protocol::{etf, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let term = match parse(text) {
        Ok(term) => term,
        Err(e) => {
            // Errors point inside the input.
            assert!(e.offset() <= text.len() && e.line() >= 1 && e.column() >= 1);
            let _ = e.to_string();
            return;
        }
    };
    let printed = term.to_string();
    let again = match parse(&printed) {
        Ok(t) => t,
        Err(e) => panic!("{text:?} parsed, but its printed form {printed:?} does not: {e}"),
    };
    assert_eq!(again, term, "{text:?} printed as {printed:?}");
    assert_eq!(again.to_string(), printed, "printing is canonical");
    let bytes = etf::encode(&term).expect("a parsed term encodes");
    assert_eq!(etf::decode(&bytes).expect("decodes"), term);
});
