//! The ETF decoder, on arbitrary payloads (a frame's bytes as a peer sends them).
//!
//! Properties: `decode` never panics; whatever decodes encodes, the encoding decodes to
//! an equal term, is canonical (encoding that again gives the same bytes) and is as long
//! as `encoded_len` says; and the term prints in Erlang syntax that parses back to it
//! (the client prints what the server sends); the message readers
//! (`ClientMessage::decode`, `ServerMessage::decode`) give exactly what `decode` then
//! `from_term` give, errors included. Bounded allocation is tested elsewhere
//! (protocol/tests, the hostile-client suite).
#![no_main]

use lib_chan_protocol::message::{ClientMessage, ServerMessage};
use lib_chan_protocol::{etf, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = etf::decode(data);
    let slow_client = decoded
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|t| ClientMessage::from_term(t).map_err(|e| e.to_string()));
    let fast_client = ClientMessage::decode(data).map_err(|e| e.to_string());
    assert_eq!(fast_client, slow_client, "client message reader");
    let slow_server = decoded
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|t| ServerMessage::from_term(t).map_err(|e| e.to_string()));
    let fast_server = ServerMessage::decode(data).map_err(|e| e.to_string());
    assert_eq!(fast_server, slow_server, "server message reader");
    let Ok(term) = decoded else {
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
