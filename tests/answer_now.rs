//! Calls answered inside the middle man's task (`Service::answer_now`): taken only while
//! the handler is idle, so an answer never overtakes what the connection sent before it,
//! and a slow handler still stalls neither its socket nor other connections.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lib_chan_protocol::{term, Term};
use lib_chan_server::{
    Config, Event, HandlerFuture, Identity, Server, ServerHandle, Service, ServiceConfig, Session,
    TlsSource,
};

/// `{sleep, Ms}` sends make the handler sleep, then count one; a `peek` call is answered
/// `{now, Count}` at once when asked in the middle man, `{handler, Count}` by the handler.
struct Quick {
    processed: AtomicU64,
}

impl Service for Quick {
    fn answer_now(&self, request: &Term, _identity: &Identity) -> Option<Term> {
        request.is_atom("peek").then(|| {
            Term::tuple([
                Term::atom("now"),
                Term::from(self.processed.load(Ordering::SeqCst) as i64),
            ])
        })
    }

    fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
        Box::pin(async move {
            while let Some(event) = session.next_event().await {
                match event {
                    Event::Send(x) => {
                        let ms = x.as_tuple().and_then(|t| t.get(1)?.as_int()).unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
                        self.processed.fetch_add(1, Ordering::SeqCst);
                    }
                    Event::Call(call) => {
                        let n = self.processed.load(Ordering::SeqCst) as i64;
                        call.reply(Term::tuple([Term::atom("handler"), Term::from(n)]));
                    }
                    Event::Closed => break,
                }
            }
        })
    }
}

struct Running {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    port: u16,
    _handle: ServerHandle,
}

async fn start() -> Running {
    let (dir, certs) = common::make_certs();
    let mut config = Config::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        0,
        TlsSource::Files {
            cert: certs.cert.clone(),
            key: certs.key.clone(),
        },
    );
    config.services = common::services();
    config.services.push(ServiceConfig::new(
        "quick",
        &common::password_hash(),
        "mod_quick",
        Term::atom("notUsed"),
    ));
    let (seen, _) = tokio::sync::mpsc::unbounded_channel();
    let mut registry = common::registry(seen);
    let quick = Arc::new(Quick {
        processed: AtomicU64::new(0),
    });
    registry.register("mod_quick", move |_| {
        Ok(Arc::clone(&quick) as Arc<dyn Service>)
    });
    let server = Server::bind(config, &registry)
        .await
        .expect("server starts");
    Running {
        port: server.local_addr().port(),
        _dir: dir,
        ca: certs.ca.clone(),
        _handle: server.spawn(),
    }
}

async fn connect(r: &Running, service: &str) -> lib_chan_client::Channel {
    let options = lib_chan_client::ConnectOptions::new().ca_file(&r.ca);
    let connecting = options.connect("127.0.0.1", r.port, service, common::PASSWORD, Term::nil());
    common::within("connect", connecting)
        .await
        .expect("connects")
}

#[tokio::test]
async fn an_idle_handler_lets_the_middle_man_answer_and_a_busy_one_answers_itself() {
    let r = start().await;
    let ch = connect(&r, "quick").await;
    // Idle: answered at once, in the middle man.
    assert_eq!(
        common::within("peek", ch.rpc(term!(peek))).await.unwrap(),
        term!({now, 0})
    );
    // The handler is sleeping on a send: the call behind it must wait for it, and then
    // sees its effect.
    ch.cast(term!({sleep, 300})).await.unwrap();
    let asked = Instant::now();
    assert_eq!(
        common::within("peek", ch.rpc(term!(peek))).await.unwrap(),
        term!({handler, 1})
    );
    assert!(asked.elapsed() >= Duration::from_millis(250));
    // Idle again: the middle man answers once more, with the count the handler left.
    assert_eq!(
        common::within("peek", ch.rpc(term!(peek))).await.unwrap(),
        term!({now, 1})
    );
}

#[tokio::test]
async fn a_busy_handler_stalls_neither_other_connections_nor_its_own_pings() {
    let r = start().await;
    let busy = connect(&r, "quick").await;
    let other = connect(&r, "quick").await;
    busy.cast(term!({sleep, 2000})).await.unwrap();
    let started = Instant::now();
    // The socket is still read: a ping on the busy connection is answered by its middle
    // man, and another connection's calls are answered at once.
    common::within("ping", busy.ping()).await.unwrap();
    assert!(matches!(
        common::within("peek", other.rpc(term!(peek))).await.unwrap(),
        t if t.as_tuple().is_some_and(|t| t[0] == Term::atom("now"))
    ));
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn pipelined_stores_and_lookups_on_one_channel_keep_their_order() {
    let r = start().await;
    let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, r.port));
    let mut peer = common::RawPeer::connect(addr, &r.ca).await;
    peer.send(
        &lib_chan_protocol::parse(r#"{start_service, nameServer, <<"ABXy45">>, ""}"#).unwrap(),
    )
    .await;
    assert_eq!(peer.recv().await.unwrap().as_tuple().unwrap()[0], term!(ok));
    // Casts and calls interleaved in bursts written at once: each lookup must see the
    // store cast just before it, whether the handler or the middle man answers it.
    let mut burst = bytes::BytesMut::new();
    let codec = lib_chan_protocol::FrameCodec::new(1 << 20, 1 << 20);
    let mut expected = Vec::new();
    let mut id = 0i64;
    for i in 0..3000i64 {
        let stores = 1 + i % 3;
        for s in 0..stores {
            let store = term!({send, {store, {k, (i)}, (i * 10 + s)}});
            codec.encode_term(&store, &mut burst).unwrap();
        }
        id += 1;
        codec
            .encode_term(&term!({call, (id), {lookup, {k, (i)}}}), &mut burst)
            .unwrap();
        expected.push(term!({reply, (id), {ok, (i * 10 + stores - 1)}}));
        if burst.len() > 16 * 1024 {
            peer.send_raw(&burst).await;
            burst.clear();
        }
    }
    peer.send_raw(&burst).await;
    let mut answers = Vec::new();
    while answers.len() < expected.len() {
        answers.push(peer.recv().await.expect("an answer"));
    }
    assert_eq!(answers, expected);
}
