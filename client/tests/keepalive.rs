//! Keepalive against a scripted server: pings go out at the interval, a silent server is
//! reported dead within about two intervals, and a channel the program does not read is
//! not taken for a dead server.
//!
//! The same against a real `lib_chan serve` frozen with SIGSTOP is in the root package's
//! `tests/keepalive.rs`.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{peer, within, Certs};
use lib_chan_client::channel::PUSH_QUEUE;
use lib_chan_client::{term, Channel, CloseReason, Error, Term};

const INTERVAL: Duration = Duration::from_millis(100);

async fn open(certs: &Certs, addr: std::net::SocketAddr) -> Channel {
    within(certs.options().keepalive(INTERVAL).connect(
        "127.0.0.1",
        addr.port(),
        "svc",
        "pw",
        Term::nil(),
    ))
    .await
    .unwrap()
}

/// `(tag, Ref)` of a `{ping, Ref}` or `{call, Ref, _}`.
fn tag_and_ref(t: &Term) -> (String, i64) {
    let items = t.as_tuple().unwrap_or(&[]);
    match items {
        [tag, r, ..] => (
            tag.as_atom().unwrap_or("?").to_owned(),
            r.as_int().unwrap_or(-1),
        ),
        _ => (format!("{t}"), -1),
    }
}

#[tokio::test]
async fn a_server_that_stops_answering_is_reported_within_two_intervals() {
    let certs = Certs::localhost();
    let (answering_tx, answering_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, peer) = peer(&certs, |mut c| async move {
        c.accept(1 << 20).await;
        // Answer the first ping, then go silent (but keep the connection open and keep
        // reading, as a frozen process's kernel would keep accepting bytes).
        let mut pings = 0;
        let mut answering_tx = Some(answering_tx);
        while let Some(t) = c.recv().await {
            let (tag, r) = tag_and_ref(&t);
            if tag == "ping" {
                pings += 1;
                if let Some(tx) = answering_tx.take() {
                    c.send(term!({pong, (r)})).await;
                    let _ = tx.send(());
                }
            }
        }
        pings
    })
    .await;
    let chan = open(&certs, addr).await;
    within(answering_rx).await.unwrap();
    let silent_from = Instant::now();
    // A call made now waits in vain; keepalive must end it too.
    let pending = {
        let chan = chan.clone();
        tokio::spawn(async move {
            chan.rpc_timeout(term!(hello), Duration::from_secs(30))
                .await
        })
    };
    let reason = within(chan.closed()).await;
    let after = silent_from.elapsed();
    assert_eq!(reason, CloseReason::KeepaliveTimeout { interval: INTERVAL });
    assert!(
        after <= 2 * INTERVAL + Duration::from_millis(150),
        "dead server reported after {after:?}, more than about two intervals of {INTERVAL:?}"
    );
    assert!(
        after >= INTERVAL / 2,
        "reported after {after:?}: too soon to have waited for an answer"
    );
    match within(pending).await.unwrap() {
        Err(Error::Closed(CloseReason::KeepaliveTimeout { .. })) => {}
        other => panic!("the waiting call ended with {other:?}"),
    }
    let pings = within(peer).await.unwrap().unwrap();
    assert!(pings >= 2, "only {pings} ping(s) reached the server");
}

#[tokio::test]
async fn answered_pings_keep_the_channel_open_and_never_reuse_a_call_ref() {
    let certs = Certs::localhost();
    let (addr, peer) = peer(&certs, |mut c| async move {
        c.accept(1 << 20).await;
        let mut seen = Vec::new();
        while let Some(t) = c.recv().await {
            let (tag, r) = tag_and_ref(&t);
            match tag.as_str() {
                "ping" => c.send(term!({pong, (r)})).await,
                "call" => c.send(term!({reply, (r), ok})).await,
                _ => continue,
            }
            seen.push((tag, r));
        }
        seen
    })
    .await;
    let chan = open(&certs, addr).await;
    let start = Instant::now();
    // Idle for six intervals, with a call now and then.
    while start.elapsed() < 6 * INTERVAL {
        assert_eq!(within(chan.rpc(term!(hi))).await.unwrap(), term!(ok));
        tokio::time::sleep(INTERVAL / 2).await;
        assert!(!chan.is_closed(), "closed after {:?}", start.elapsed());
    }
    assert_eq!(within(chan.rpc(term!(hi))).await.unwrap(), term!(ok));
    within(chan.close()).await;
    assert_eq!(within(chan.closed()).await, CloseReason::ClosedByClient);

    let seen = within(peer).await.unwrap().unwrap();
    let pings = seen.iter().filter(|(t, _)| t == "ping").count();
    assert!(
        pings >= 4,
        "{pings} pings in six intervals of {INTERVAL:?}: {seen:?}"
    );
    let refs: HashSet<i64> = seen.iter().map(|(_, r)| *r).collect();
    assert_eq!(refs.len(), seen.len(), "a Ref was used twice: {seen:?}");
}

#[tokio::test]
async fn unread_pushes_are_not_held_against_the_server() {
    let certs = Certs::localhost();
    let total = PUSH_QUEUE + 50;
    let (addr, peer) = peer(&certs, move |mut c| async move {
        c.accept(1 << 20).await;
        // More pushes than the client's queue holds: its reader stalls until the program
        // reads, and the pongs below wait behind them.
        for i in 0..total {
            c.send(term!({send, {n, (i as i64)}})).await;
        }
        let mut pings = 0;
        while let Some(t) = c.recv().await {
            let (tag, r) = tag_and_ref(&t);
            if tag == "ping" {
                pings += 1;
                c.send(term!({pong, (r)})).await;
            }
        }
        pings
    })
    .await;
    let chan = open(&certs, addr).await;
    // The program reads nothing for five intervals.
    tokio::time::sleep(5 * INTERVAL).await;
    assert!(
        !chan.is_closed(),
        "closed while the program was not reading: {}",
        within(chan.closed()).await
    );
    for i in 0..total {
        assert_eq!(
            within(chan.recv()).await,
            Some(term!({n, (i as i64)})),
            "push {i}"
        );
    }
    // Reading again, the pongs come through and the channel stays healthy.
    tokio::time::sleep(3 * INTERVAL).await;
    assert!(!chan.is_closed());
    within(chan.close()).await;
    assert_eq!(within(chan.closed()).await, CloseReason::ClosedByClient);
    let pings = within(peer).await.unwrap().unwrap();
    assert!(pings >= 3, "{pings} pings");
}
