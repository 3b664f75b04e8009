//! The connection state machine over an in-memory stream (`Server::serve_stream`), the
//! same path the connection fuzz target drives: no TCP, no TLS, same handshake and
//! middle man.

mod common;

use bytes::BytesMut;
use futures_util::StreamExt;
use lib_chan_protocol::{etf, parse, FrameCodec, Term};
use lib_chan_server::{Config, Server, TlsSource};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::FramedRead;

#[tokio::test]
async fn the_seed_session_over_an_in_memory_stream() {
    let (_dir, certs) = common::make_certs();
    let mut config = Config::new(
        "127.0.0.1".parse().unwrap(),
        0,
        TlsSource::Files {
            cert: certs.cert.clone(),
            key: certs.key.clone(),
        },
    );
    config.services = common::services();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let server = Server::bind(config, &common::registry(tx)).await.unwrap();
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    let session = tokio::spawn(async move {
        server
            .serve_stream(server_side, "192.0.2.1:4000".parse().unwrap())
            .await
    });
    let codec = FrameCodec::new(1 << 20, 1 << 20);
    let mut reader = FramedRead::new(client, codec.clone());
    let send = |text: &str| {
        let mut buf = BytesMut::new();
        codec.encode_term(&parse(text).unwrap(), &mut buf).unwrap();
        buf
    };
    let frames = [
        send(r#"{start_service, nameServer, <<"ABXy45">>, ""}"#),
        send(r#"{send, {store, joe, "writing a book"}}"#),
        send("{call, 1, {lookup, joe}}"),
        send("{call, 2, {lookup, jim}}"),
        send("close"),
    ];
    for f in &frames {
        reader.get_mut().write_all(f).await.unwrap();
    }
    let mut replies = Vec::new();
    while let Some(Ok(frame)) = common::within("frame", reader.next()).await {
        replies.push(etf::decode(&frame).unwrap());
    }
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert_eq!(replies[0].as_tuple().unwrap()[0], Term::atom("ok"));
    assert_eq!(replies[1].to_string(), r#"{reply,1,{ok,"writing a book"}}"#);
    assert_eq!(replies[2].to_string(), "{reply,2,undefined}");
    assert_eq!(
        common::within("session", session).await.unwrap(),
        "client_closed"
    );
}
