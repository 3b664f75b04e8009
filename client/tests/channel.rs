//! The open channel: pipelined calls, pushes, timeouts, and every way it can end.

mod common;

use std::time::{Duration, Instant};

use common::{echo, echo_peer, frame, peer, welcome, within, Certs};
use futures_util::future::join_all;
use lib_chan_client::{term, Channel, CloseReason, Error, ErrorReason, Term};

async fn open(certs: &Certs, addr: std::net::SocketAddr) -> Channel {
    within(
        certs
            .options()
            .connect("127.0.0.1", addr.port(), "svc", "pw", Term::nil()),
    )
    .await
    .unwrap()
}

/// The ref of a `{call, Ref, X}`.
fn call_ref(t: &Term) -> (Term, Term) {
    match t.as_tuple() {
        Some([tag, r, x]) if tag.is_atom("call") => (r.clone(), x.clone()),
        _ => panic!("not a call: {t}"),
    }
}

#[tokio::test]
async fn replies_out_of_order_reach_their_own_callers() {
    let certs = Certs::localhost();
    let (addr, peer) = peer(&certs, |mut c| async move {
        c.accept(1 << 20).await;
        let mut calls = Vec::new();
        while calls.len() < 100 {
            calls.push(call_ref(&c.recv().await.unwrap()));
        }
        for (r, x) in calls.into_iter().rev() {
            c.send(Term::tuple([
                Term::atom("reply"),
                r,
                Term::tuple([Term::atom("echo"), x]),
            ]))
            .await;
        }
        c.drain().await
    })
    .await;
    let chan = open(&certs, addr).await;
    let calls = (0..100).map(|i| chan.rpc(Term::Int(i)));
    let replies = within(join_all(calls)).await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.unwrap(), term!({echo, (i as i64)}));
    }
    within(chan.close()).await;
    within(peer).await.unwrap().unwrap();
}

#[tokio::test]
async fn pushes_arrive_in_order_then_none_after_close() {
    let certs = Certs::localhost();
    let (addr, _peer) = peer(&certs, |mut c| async move {
        c.expect_start_service().await;
        // The welcome and the first pushes in one write: the client must keep the bytes
        // it read past the welcome.
        let mut raw = frame(&welcome(1 << 20));
        for i in 0..3 {
            raw.extend(frame(&term!({send, {n, (i as i64)}})));
        }
        c.send_raw(&raw).await;
        for i in 3..50 {
            c.send(term!({send, {n, (i as i64)}})).await;
        }
        c.send(term!(close)).await;
        c.shutdown().await;
        c.drain().await
    })
    .await;
    let chan = open(&certs, addr).await;
    for i in 0..50 {
        assert_eq!(within(chan.recv()).await, Some(term!({n, (i as i64)})));
    }
    assert_eq!(within(chan.recv()).await, None);
    assert_eq!(within(chan.closed()).await, CloseReason::ClosedByServer);
    assert!(chan.is_closed());
    let e = within(chan.cast(term!(hi))).await.unwrap_err();
    assert!(
        matches!(e, Error::Closed(CloseReason::ClosedByServer)),
        "{e:?}"
    );
}

#[tokio::test]
async fn the_server_vanishing_mid_call_fails_every_pending_call_at_once() {
    let certs = Certs::localhost();
    let (addr, _peer) = peer(&certs, |mut c| async move {
        c.accept(1 << 20).await;
        for _ in 0..5 {
            c.recv().await.unwrap();
        }
        // Gone, without close_notify.
        drop(c);
    })
    .await;
    let chan = open(&certs, addr).await;
    let start = Instant::now();
    let calls = (0..5).map(|i| chan.rpc_timeout(Term::Int(i), Duration::from_secs(9)));
    for r in within(join_all(calls)).await {
        match r {
            Err(Error::Closed(CloseReason::ConnectionLost(_))) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(
        within(chan.closed()).await,
        CloseReason::ConnectionLost(_)
    ));
    let e = within(chan.rpc(term!(again))).await.unwrap_err();
    assert!(
        matches!(e, Error::Closed(CloseReason::ConnectionLost(_))),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_server_error_closes_with_that_reason() {
    let certs = Certs::localhost();
    let (addr, peer) = peer(&certs, |mut c| async move {
        c.accept(1 << 20).await;
        c.recv().await.unwrap();
        c.send(term!({error, shutdown})).await;
        c.shutdown().await;
        c.drain().await
    })
    .await;
    let chan = open(&certs, addr).await;
    let e = within(chan.rpc(term!(work))).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Closed(CloseReason::ServerError(ErrorReason::Shutdown))
        ),
        "{e:?}"
    );
    assert_eq!(
        within(chan.closed()).await,
        CloseReason::ServerError(ErrorReason::Shutdown)
    );
    // The client said goodbye too, so the peer's read ended.
    let rest = within(peer).await.unwrap().unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn a_timed_out_call_is_forgotten_and_its_late_reply_dropped() {
    let certs = Certs::localhost();
    let (addr, _peer) = peer(&certs, |mut c| async move {
        c.accept(1 << 20).await;
        let (r1, _) = call_ref(&c.recv().await.unwrap());
        let (r2, _) = call_ref(&c.recv().await.unwrap());
        // The late reply to the first call, then the answer to the second.
        c.send(Term::tuple([Term::atom("reply"), r1, term!(late)]))
            .await;
        c.send(Term::tuple([Term::atom("reply"), r2, term!(second)]))
            .await;
        c.drain().await
    })
    .await;
    let chan = open(&certs, addr).await;
    let e = within(chan.rpc_timeout(term!(first), Duration::from_millis(100)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout("rpc")), "{e:?}");
    assert!(format!("{chan:?}").contains("in_flight: 0"), "{chan:?}");
    assert_eq!(within(chan.rpc(term!(again))).await.unwrap(), term!(second));
    assert!(!chan.is_closed());
    within(chan.close()).await;
}

#[tokio::test]
async fn a_thousand_concurrent_calls_from_fifty_tasks_get_their_own_replies() {
    let certs = Certs::localhost();
    let (addr, peer) = echo_peer(&certs, echo).await;
    let chan = open(&certs, addr).await;
    let tasks: Vec<_> = (0..50)
        .map(|t| {
            let chan = chan.clone();
            tokio::spawn(async move {
                let calls = (0..20).map(|i| {
                    let chan = chan.clone();
                    async move {
                        let req = term!({(t as i64), (i as i64)});
                        let reply = chan.rpc(req.clone()).await.unwrap();
                        assert_eq!(reply, req);
                    }
                });
                join_all(calls).await;
            })
        })
        .collect();
    for t in within(join_all(tasks)).await {
        t.unwrap();
    }
    within(chan.close()).await;
    assert_eq!(within(peer).await.unwrap().unwrap(), vec![term!(close)]);
}

#[tokio::test]
async fn casts_from_one_task_arrive_in_order_before_close() {
    let certs = Certs::localhost();
    let (addr, peer) = echo_peer(&certs, echo).await;
    let chan = open(&certs, addr).await;
    for i in 0..2000 {
        within(chan.cast(Term::Int(i))).await.unwrap();
    }
    within(chan.close()).await;
    let seen = within(peer).await.unwrap().unwrap();
    let mut expected: Vec<Term> = (0..2000).map(|i| term!({send, (i as i64)})).collect();
    expected.push(term!(close));
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_call_error_is_a_remote_error_and_the_channel_stays_open() {
    let certs = Certs::localhost();
    let (addr, _peer) = echo_peer(&certs, |r, x| {
        if x.is_atom("nonsense") {
            Term::tuple([
                Term::atom("error"),
                Term::Int(r),
                Term::tuple([Term::atom("bad_request"), x.clone()]),
            ])
        } else {
            echo(r, x)
        }
    })
    .await;
    let chan = open(&certs, addr).await;
    let e = within(chan.rpc(term!(nonsense))).await.unwrap_err();
    match &e {
        Error::Remote(reason) => assert_eq!(reason, &term!({bad_request, nonsense})),
        other => panic!("{other:?}"),
    }
    assert_eq!(within(chan.rpc(term!(fine))).await.unwrap(), term!(fine));
    within(chan.close()).await;
}

#[tokio::test]
async fn ping_on_an_open_channel() {
    let certs = Certs::localhost();
    let (addr, _peer) = echo_peer(&certs, echo).await;
    let chan = open(&certs, addr).await;
    let rtt = within(chan.ping()).await.unwrap();
    assert!(rtt < Duration::from_secs(5));
    within(chan.close()).await;
}

#[tokio::test]
async fn close_sends_close_then_close_notify_and_refuses_further_use() {
    let certs = Certs::localhost();
    let (addr, peer) = echo_peer(&certs, echo).await;
    let chan = open(&certs, addr).await;
    within(chan.cast(term!(bye))).await.unwrap();
    let start = Instant::now();
    within(chan.close()).await;
    // The peer closes at once, so there is no waiting out the 2 s.
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert!(chan.is_closed());
    assert_eq!(within(chan.closed()).await, CloseReason::ClosedByClient);
    let e = within(chan.cast(term!(more))).await.unwrap_err();
    assert!(
        matches!(e, Error::Closed(CloseReason::ClosedByClient)),
        "{e:?}"
    );
    let e = within(chan.rpc(term!(more))).await.unwrap_err();
    assert!(
        matches!(e, Error::Closed(CloseReason::ClosedByClient)),
        "{e:?}"
    );
    assert_eq!(within(chan.recv()).await, None);
    // Closing twice is harmless.
    within(chan.close()).await;
    assert_eq!(
        within(peer).await.unwrap().unwrap(),
        vec![term!({send, bye}), term!(close)]
    );
}

#[tokio::test]
async fn dropping_the_last_handle_closes_in_order() {
    let certs = Certs::localhost();
    let (addr, peer) = echo_peer(&certs, echo).await;
    let chan = open(&certs, addr).await;
    within(chan.cast(term!(last))).await.unwrap();
    let clone = chan.clone();
    drop(chan);
    drop(clone);
    assert_eq!(
        within(peer).await.unwrap().unwrap(),
        vec![term!({send, last}), term!(close)]
    );
}

#[tokio::test]
async fn a_close_waits_at_most_about_two_seconds_for_a_silent_server() {
    let certs = Certs::localhost();
    let (addr, _peer) = peer(&certs, |mut c| async move {
        c.accept(1 << 20).await;
        // Never reads again, never closes.
        tokio::time::sleep(Duration::from_secs(8)).await;
        drop(c);
    })
    .await;
    let chan = open(&certs, addr).await;
    let start = Instant::now();
    within(chan.close()).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(within(chan.closed()).await, CloseReason::ClosedByClient);
}

#[tokio::test]
async fn a_request_over_max_frame_is_refused_and_the_channel_stays_usable() {
    let certs = Certs::localhost();
    let (addr, _peer) = peer(&certs, |mut c| async move {
        c.accept(200).await;
        while let Some(t) = c.recv().await {
            if let Some([tag, r, x]) = t.as_tuple() {
                if tag.is_atom("call") {
                    c.send(echo(r.as_int().unwrap(), x)).await;
                }
            }
        }
    })
    .await;
    let chan = open(&certs, addr).await;
    assert_eq!(chan.max_frame(), 200);
    let e = within(chan.rpc(Term::binary(vec![1u8; 300])))
        .await
        .unwrap_err();
    match &e {
        Error::Encode(m) => assert!(m.contains("max_frame of 200"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(within(chan.rpc(term!(small))).await.unwrap(), term!(small));
    within(chan.close()).await;
}

#[tokio::test]
async fn a_malformed_server_frame_is_a_protocol_close() {
    let certs = Certs::localhost();
    let (addr, _peer) = peer(&certs, |mut c| async move {
        c.accept(1 << 20).await;
        c.recv().await.unwrap();
        c.send(term!({surprise, 1, 2, 3})).await;
        c.drain().await
    })
    .await;
    let chan = open(&certs, addr).await;
    let e = within(chan.rpc(term!(x))).await.unwrap_err();
    assert!(
        matches!(e, Error::Closed(CloseReason::Protocol(_))),
        "{e:?}"
    );
    match within(chan.closed()).await {
        CloseReason::Protocol(m) => assert!(m.contains("surprise"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn rpc_many_sends_one_batch_and_gives_each_answer_in_request_order() {
    let certs = Certs::localhost();
    // The peer reads the whole batch before answering, then answers it backwards, with
    // an error for `nonsense`: the answers must still come back in request order.
    let (addr, peer) = peer(&certs, |mut c| async move {
        c.accept(1 << 20).await;
        let mut calls = Vec::new();
        while calls.len() < 5 {
            calls.push(call_ref(&c.recv().await.unwrap()));
        }
        for (r, x) in calls.into_iter().rev() {
            let answer = if x.is_atom("nonsense") {
                Term::tuple([Term::atom("error"), r, term!(bad_request)])
            } else {
                Term::tuple([Term::atom("reply"), r, Term::tuple([Term::atom("echo"), x])])
            };
            c.send(answer).await;
        }
        c.drain().await
    })
    .await;
    let chan = open(&certs, addr).await;
    let answers =
        within(chan.rpc_many([term!(a), term!(b), term!(nonsense), term!(d), term!(e)])).await;
    assert_eq!(answers.len(), 5);
    for (i, name) in ["a", "b", "nonsense", "d", "e"].into_iter().enumerate() {
        match (&answers[i], name) {
            (Err(Error::Remote(reason)), "nonsense") => assert_eq!(reason, &term!(bad_request)),
            (Ok(reply), _) => {
                assert_eq!(reply, &Term::tuple([Term::atom("echo"), Term::atom(name)]))
            }
            (other, _) => panic!("answer {i}: {other:?}"),
        }
    }
    assert!(format!("{chan:?}").contains("in_flight: 0"), "{chan:?}");
    within(chan.close()).await;
    assert_eq!(within(peer).await.unwrap().unwrap(), vec![term!(close)]);
}

#[tokio::test]
async fn rpc_many_fails_an_oversized_request_alone() {
    let certs = Certs::localhost();
    let (addr, peer) = echo_peer(&certs, echo).await;
    let chan = within(
        certs
            .options()
            .connect("127.0.0.1", addr.port(), "svc", "pw", Term::nil()),
    )
    .await
    .unwrap();
    let big = Term::binary(vec![7u8; 2 << 20]);
    let answers = within(chan.rpc_many([term!(one), big, term!(three)])).await;
    assert_eq!(answers[0].as_ref().unwrap(), &term!(one));
    match &answers[1] {
        Err(Error::Encode(m)) => assert!(m.contains("max_frame"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(answers[2].as_ref().unwrap(), &term!(three));
    within(chan.close()).await;
    assert_eq!(within(peer).await.unwrap().unwrap(), vec![term!(close)]);
}

#[tokio::test]
async fn rpc_many_times_out_what_is_unanswered_and_keeps_what_came() {
    let certs = Certs::localhost();
    let (addr, _peer) = peer(&certs, |mut c| async move {
        c.accept(1 << 20).await;
        let (r1, x1) = call_ref(&c.recv().await.unwrap());
        let (r2, _) = call_ref(&c.recv().await.unwrap());
        // Only the first is answered in time; the second's reply comes after the
        // timeout, then the answer to a later call.
        c.send(Term::tuple([Term::atom("reply"), r1, x1])).await;
        let (r3, x3) = call_ref(&c.recv().await.unwrap());
        c.send(Term::tuple([Term::atom("reply"), r2, term!(late)]))
            .await;
        c.send(Term::tuple([Term::atom("reply"), r3, x3])).await;
        c.drain().await
    })
    .await;
    let chan = open(&certs, addr).await;
    let answers =
        within(chan.rpc_many_timeout([term!(first), term!(second)], Duration::from_millis(200)))
            .await;
    assert_eq!(answers[0].as_ref().unwrap(), &term!(first));
    assert!(
        matches!(answers[1], Err(Error::Timeout("rpc"))),
        "{:?}",
        answers[1]
    );
    // The timed-out call was forgotten: its late reply is dropped, not misdelivered.
    assert!(format!("{chan:?}").contains("in_flight: 0"), "{chan:?}");
    assert_eq!(within(chan.rpc(term!(third))).await.unwrap(), term!(third));
    within(chan.close()).await;
}

#[tokio::test]
async fn rpc_many_on_a_closed_channel_fails_every_request() {
    let certs = Certs::localhost();
    let (addr, _peer) = echo_peer(&certs, echo).await;
    let chan = open(&certs, addr).await;
    within(chan.close()).await;
    let answers = within(chan.rpc_many([term!(a), term!(b)])).await;
    assert_eq!(answers.len(), 2);
    for a in answers {
        assert!(
            matches!(a, Err(Error::Closed(CloseReason::ClosedByClient))),
            "{a:?}"
        );
    }
    assert!(within(chan.rpc_many(Vec::new())).await.is_empty());
}
