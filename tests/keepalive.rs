//! Liveness like Erlang's `monitor_node`, against a real `lib_chan serve` process: a
//! client with [`ConnectOptions::keepalive`] reports a server frozen with SIGSTOP within
//! about two intervals, and its pings keep a healthy idle connection open past the
//! server's `idle_timeout`.
//!
//! [`ConnectOptions::keepalive`]: lib_chan_client::ConnectOptions::keepalive

mod common;
mod serve_process;

use std::time::{Duration, Instant};

use common::{within, PASSWORD};
use lib_chan_client::{term, Channel, CloseReason, ConnectOptions, Error, ErrorReason, Term};
use serve_process::{write_config, ServeProcess};

const INTERVAL: Duration = Duration::from_millis(200);

/// A `lib_chan serve` on 127.0.0.1 with `limits`, and its temporary directory.
fn serve(limits: &str) -> (ServeProcess, tempfile::TempDir, ConnectOptions) {
    let (dir, certs) = common::make_certs();
    let conf = write_config(
        dir.path(),
        "127.0.0.1",
        &certs.cert,
        &certs.key,
        &common::password_hash(),
        limits,
    );
    let server = ServeProcess::start(&conf);
    let options = ConnectOptions::new().ca_file(&certs.ca);
    (server, dir, options)
}

async fn connect(options: ConnectOptions, port: u16) -> Channel {
    within(
        "connect",
        options.connect("localhost", port, "nameServer", PASSWORD, Term::nil()),
    )
    .await
    .expect("connects")
}

#[tokio::test]
async fn keepalive_reports_a_server_frozen_with_sigstop_within_two_intervals() {
    let (server, _dir, options) = serve("");
    let options_again = options.clone();
    let chan = connect(options.keepalive(INTERVAL), server.port).await;
    chan.cast(term!({store, joe, "writing a book"}))
        .await
        .unwrap();
    assert_eq!(
        within("rpc", chan.rpc(term!({lookup, joe}))).await.unwrap(),
        term!({ok, "writing a book"})
    );
    // Healthy for a few intervals first: the pings are being answered.
    tokio::time::sleep(3 * INTERVAL).await;
    assert!(!chan.is_closed(), "closed while the server was running");

    server.freeze();
    let frozen_at = Instant::now();
    let pending = {
        let chan = chan.clone();
        tokio::spawn(async move {
            chan.rpc_timeout(term!({lookup, joe}), Duration::from_secs(30))
                .await
        })
    };
    let reason = within("closed() after SIGSTOP", chan.closed()).await;
    let after = frozen_at.elapsed();
    assert_eq!(reason, CloseReason::KeepaliveTimeout { interval: INTERVAL });
    println!("frozen server reported after {after:?} (interval {INTERVAL:?}): {reason}");
    assert!(
        after <= 3 * INTERVAL,
        "a frozen server was reported after {after:?}, over about two intervals of {INTERVAL:?}"
    );
    assert!(
        after >= INTERVAL / 2,
        "reported after {after:?}: too soon to have waited for a pong"
    );
    match within("the call pending at the freeze", pending)
        .await
        .unwrap()
    {
        Err(Error::Closed(CloseReason::KeepaliveTimeout { .. })) => {}
        other => panic!("the call pending at the freeze ended with {other:?}"),
    }
    assert!(matches!(
        chan.rpc(term!({lookup, joe})).await,
        Err(Error::Closed(CloseReason::KeepaliveTimeout { .. }))
    ));
    // Resumed, the server serves new connections again: it was frozen, not gone.
    server.signal("CONT");
    let again = connect(options_again, server.port).await;
    assert_eq!(
        within("rpc after SIGCONT", again.rpc(term!({lookup, joe})))
            .await
            .unwrap(),
        term!({ok, "writing a book"})
    );
    within("close", again.close()).await;
    drop(server);
}

#[tokio::test]
async fn keepalive_pings_keep_a_healthy_idle_connection_open() {
    // The server closes connections silent for 3 intervals; pings are not silence.
    let idle = 3 * INTERVAL;
    let (server, _dir, options) = serve(&format!("idle_timeout = {}", idle.as_secs_f64()));
    let kept = connect(options.clone().keepalive(INTERVAL), server.port).await;
    let control = connect(options, server.port).await;
    let start = Instant::now();

    // The control channel, with no keepalive, is closed by the server's idle timeout...
    let reason = within("control channel idle timeout", control.closed()).await;
    assert_eq!(reason, CloseReason::ServerError(ErrorReason::IdleTimeout));
    // ... while the keepalive channel, just as idle, stays open well past it.
    while start.elapsed() < 2 * idle {
        tokio::time::sleep(INTERVAL / 2).await;
        assert!(
            !kept.is_closed(),
            "the keepalive channel closed after {:?}: {}",
            start.elapsed(),
            within("closed", kept.closed()).await
        );
    }
    assert_eq!(
        within("rpc", kept.rpc(term!({lookup, jim}))).await.unwrap(),
        term!(undefined)
    );
    within("close", kept.close()).await;
    assert_eq!(kept.closed().await, CloseReason::ClosedByClient);
    drop(server);
}
