//! The blocking wrapper, from a thread with no runtime of its own.

mod common;

use std::time::Duration;

use common::{echo, echo_peer, Certs};
use lib_chan_client::{blocking, term, CloseReason, Error};

#[test]
fn a_blocking_client_does_a_call_and_closes() {
    let certs = Certs::localhost();
    // The peer runs on a runtime of its own threads.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, peer) = rt.block_on(echo_peer(&certs, echo));

    let chan = blocking::connect_with_options(
        certs.options(),
        "127.0.0.1",
        addr.port(),
        "svc",
        "pw",
        lib_chan_client::Term::nil(),
    )
    .unwrap();
    assert_eq!(chan.welcome().max_frame, 1 << 20);
    chan.cast(term!(hello)).unwrap();
    assert_eq!(
        chan.rpc(term!({lookup, joe})).unwrap(),
        term!({lookup, joe})
    );
    assert_eq!(
        chan.rpc_timeout(term!(two), Duration::from_secs(5))
            .unwrap(),
        term!(two)
    );
    let answers: Vec<_> = chan
        .rpc_many([term!(a), term!({b, 2}), term!("c")])
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(answers, vec![term!(a), term!({b, 2}), term!("c")]);
    match chan.recv_timeout(Duration::from_millis(50)) {
        Err(Error::Timeout("recv")) => {}
        other => panic!("{other:?}"),
    }
    chan.close();
    assert_eq!(chan.closed(), CloseReason::ClosedByClient);
    assert!(chan.is_closed());

    let seen = rt
        .block_on(async { tokio::time::timeout(common::LIMIT, peer).await })
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen, vec![term!({send, hello}), term!(close)]);
}
