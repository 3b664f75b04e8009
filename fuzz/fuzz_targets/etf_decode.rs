//! The ETF decoder, on arbitrary payloads (a frame's bytes as a peer sends them).
//!
//! Properties: `decode` never panics; whatever decodes encodes, the encoding decodes to
//! an equal term, is canonical (encoding that again gives the same bytes) and is as long
//! as `encoded_len` says; and the term prints in Erlang syntax that parses back to it
//! (the client prints what the server sends). Bounded allocation is tested elsewhere
//! (protocol/tests, the hostile-client suite).
#![no_main]

use lib_chan_protocol::{etf, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(term) = etf::decode(data) else {
        return;
    };
    let bytes = etf::encode(&term).expect("a decoded term encodes");
    assert_eq!(
        etf::encoded_len(&term),
        bytes.len(),
        "encoded_len of {term}"
    );
    let again = etf::decode(&bytes).expect("an encoded term decodes");
    assert_eq!(again, term);
    assert_eq!(
        etf::encode(&again).expect("encodes"),
        bytes,
        "encoding is canonical"
    );
    let text = term.to_string();
    match parse(&text) {
        Ok(parsed) => assert_eq!(parsed, term, "printed as {text}"),
        Err(e) => panic!("{text:?} does not parse back: {e}"),
    }
});
