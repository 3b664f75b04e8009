//! Test harness: a real server on 127.0.0.1 with real TLS, a raw TLS peer for byte-level
//! tests, and a test service whose behaviour the tests steer.
//!
//! Every server binds port 0 and gets a fresh development CA in a temporary directory;
//! nothing is shared between tests and nothing sleeps to wait for readiness.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use lib_chan_protocol::{etf, FrameCodec, Term, DEFAULT_MAX_FRAME};
use lib_chan_server::devcert::{DevCertPaths, DevCerts};
use lib_chan_server::{
    auth, Config, Event, HandlerFuture, Registry, Server, ServerHandle, Service, ServiceConfig,
    Session, TlsSource,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::FramedRead;

/// The book's password.
pub const PASSWORD: &str = "ABXy45";

/// Bounds every wait in a test: a bug fails the test instead of hanging it.
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The argon2 hash of [`PASSWORD`], computed once per test binary.
pub fn password_hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| auth::hash_password(PASSWORD.as_bytes()))
        .clone()
}

/// What the test service saw, for assertions.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// A handler started with these ArgsC.
    Started(Term),
    /// A send arrived.
    Send(Term),
    /// The channel-closed event arrived.
    Closed,
}

/// `mod_test`: a handler the tests steer with their requests.
///
/// Calls: `{echo, X}` replies X; `crash` panics; `{sleep, Ms, X}` replies X after Ms
/// from another task; `hold` never answers (the Call is kept); `drop` drops the call
/// unanswered; `close` closes the channel; `{push, X}` pushes X then replies ok.
#[derive(Debug)]
pub struct TestService {
    pub seen: mpsc::UnboundedSender<Seen>,
}

impl Service for TestService {
    fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
        Box::pin(async move {
            let _ = self.seen.send(Seen::Started(session.args_c().clone()));
            let mut held = Vec::new();
            while let Some(event) = session.next_event().await {
                match event {
                    Event::Send(x) => {
                        let _ = self.seen.send(Seen::Send(x));
                    }
                    Event::Closed => {
                        let _ = self.seen.send(Seen::Closed);
                    }
                    Event::Call(call) => {
                        let req = call.request().clone();
                        let items = req.as_tuple().unwrap_or(&[]).to_vec();
                        match (req.as_atom(), items.as_slice()) {
                            (Some("crash"), _) => panic!("mod_test asked to crash"),
                            (Some("hold"), _) => held.push(call),
                            (Some("drop"), _) => drop(call),
                            (Some("close"), _) => session.middle_man().close(),
                            (_, [tag, x]) if tag.is_atom("echo") => call.reply(x.clone()),
                            (_, [tag, x]) if tag.is_atom("push") => {
                                let _ = session.middle_man().send(x.clone()).await;
                                call.reply(Term::atom("ok"));
                            }
                            (_, [tag, ms, x]) if tag.is_atom("sleep") => {
                                let ms = ms.as_int().unwrap_or(0) as u64;
                                let x = x.clone();
                                tokio::spawn(async move {
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                    call.reply(x);
                                });
                            }
                            _ => call.bad_request(),
                        }
                    }
                }
            }
        })
    }
}

/// A running server and what a client needs to reach it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub certs: DevCertPaths,
    pub handle: Option<ServerHandle>,
    /// What `mod_test` handlers saw, across all their connections.
    pub seen: Arc<Mutex<mpsc::UnboundedReceiver<Seen>>>,
}

/// Development certificates for localhost in a fresh temporary directory.
pub fn make_certs() -> (tempfile::TempDir, DevCertPaths) {
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts = ["localhost", "127.0.0.1"].map(String::from);
    let paths = DevCerts::generate(&hosts)
        .expect("certificates")
        .write(dir.path())
        .expect("write certificates");
    (dir, paths)
}

/// A registry with the built-in services plus `mod_test`, whose sightings go to `tx`.
pub fn registry(tx: mpsc::UnboundedSender<Seen>) -> Registry {
    let mut r = lib_chan_services::registry();
    r.register("mod_test", move |_| {
        Ok(Arc::new(TestService { seen: tx.clone() }) as Arc<dyn Service>)
    });
    r
}

/// Services: nameServer (mod_name_server), echo (mod_echo), test (mod_test), all with
/// the book's password.
pub fn services() -> Vec<ServiceConfig> {
    [
        ("nameServer", "mod_name_server"),
        ("echo", "mod_echo"),
        ("test", "mod_test"),
    ]
    .into_iter()
    .map(|(name, handler)| {
        ServiceConfig::new(name, &password_hash(), handler, Term::atom("notUsed"))
    })
    .collect()
}

impl TestServer {
    /// A server with the default limits.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A server whose config `adjust` may change first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let (dir, certs) = make_certs();
        let mut config = Config::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            0,
            TlsSource::Files {
                cert: certs.cert.clone(),
                key: certs.key.clone(),
            },
        );
        config.services = services();
        // The legitimate client (127.0.0.1) is exempt from penalties, so that tests may
        // fail to authenticate on purpose; attackers come from other 127.x addresses.
        config.limits.admission.penalties.exempt = vec![(IpAddr::V4(Ipv4Addr::LOCALHOST), 32)];
        adjust(&mut config);
        let (tx, rx) = mpsc::unbounded_channel();
        let server = Server::bind(config, &registry(tx))
            .await
            .expect("server starts");
        let addr = server.local_addr();
        TestServer {
            addr,
            dir,
            certs,
            handle: Some(server.spawn()),
            seen: Arc::new(Mutex::new(rx)),
        }
    }

    /// Connect options trusting this server's CA.
    pub fn options(&self) -> lib_chan_client::ConnectOptions {
        lib_chan_client::ConnectOptions::new().ca_file(&self.certs.ca)
    }

    /// A channel to `service` with the book's password.
    pub async fn connect(&self, service: &str) -> lib_chan_client::Channel {
        within(
            "connect",
            self.options().connect(
                "127.0.0.1",
                self.addr.port(),
                service,
                PASSWORD,
                Term::nil(),
            ),
        )
        .await
        .expect("connects")
    }

    /// The next thing `mod_test` saw.
    pub async fn next_seen(&self) -> Seen {
        let seen = Arc::clone(&self.seen);
        within("mod_test event", async move {
            loop {
                if let Ok(s) = seen.lock().unwrap().try_recv() {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    pub fn ca_path(&self) -> PathBuf {
        self.certs.ca.clone()
    }
}

/// The book's seed session on a name server channel: `cast` the store, then `rpc` the
/// two lookups, asserting their answers; and, in the book's own style, a cast lookup
/// answered with a push.
pub async fn seed_session(ch: &lib_chan_client::Channel) {
    use lib_chan_protocol::term;
    within("cast", ch.cast(term!({store, joe, "writing a book"})))
        .await
        .unwrap();
    assert_eq!(
        within("rpc", ch.rpc(term!({lookup, joe}))).await.unwrap(),
        term!({ok, "writing a book"})
    );
    assert_eq!(
        within("rpc", ch.rpc(term!({lookup, jim}))).await.unwrap(),
        term!(undefined)
    );
    within("cast", ch.cast(term!({lookup, joe}))).await.unwrap();
    assert_eq!(
        within("push", ch.recv()).await,
        Some(term!({ok, "writing a book"}))
    );
}

/// The body of `GET /metrics` from a metrics endpoint, over plain TCP (bounded).
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::AsyncReadExt;
    within("metrics scrape", async {
        let mut s = TcpStream::connect(addr).await.expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8(out).expect("UTF-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        body.to_owned()
    })
    .await
}

/// The value of the sample `series` (name and labels exactly as rendered, e.g.
/// `lib_chan_calls_total{service="echo"}`) in a scrape, if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A TCP connection to `addr` from the local address `source` (any 127.x.y.z works on
/// Linux loopback without configuration).
pub async fn tcp_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// A raw TLS connection speaking frames, for tests that pin bytes on the wire.
pub struct RawPeer {
    pub reader: FramedRead<TlsStream<TcpStream>, FrameCodec>,
}

impl RawPeer {
    /// TLS to `addr`, trusting the CA at `ca`; no handshake frame sent yet.
    pub async fn connect(addr: SocketAddr, ca: &std::path::Path) -> RawPeer {
        RawPeer::connect_from(addr, ca, IpAddr::V4(Ipv4Addr::LOCALHOST))
            .await
            .expect("TLS connection")
    }

    /// TLS to `addr` from the local address `source` (e.g. 127.0.0.2, to be seen as
    /// another host by per-source limits); errors are returned, for attack tests.
    pub async fn connect_from(
        addr: SocketAddr,
        ca: &std::path::Path,
        source: IpAddr,
    ) -> std::io::Result<RawPeer> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = within("tcp connect", tcp_from(source, addr)).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = within("tls", connector.connect(name, tcp)).await?;
        Ok(RawPeer {
            reader: FramedRead::new(tls, FrameCodec::new(DEFAULT_MAX_FRAME * 2, usize::MAX)),
        })
    }

    /// Sends one frame holding `payload` exactly.
    pub async fn send_payload(&mut self, payload: &[u8]) {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(payload);
        self.send_raw(&buf).await;
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let s = self.reader.get_mut();
        s.write_all(bytes).await.unwrap();
        s.flush().await.unwrap();
    }

    /// Sends one term.
    pub async fn send(&mut self, t: &Term) {
        self.send_payload(&etf::encode(t).unwrap()).await;
    }

    /// The next frame's raw payload, or None at the end of the stream.
    pub async fn recv_payload(&mut self) -> Option<Vec<u8>> {
        match within("frame", self.reader.next()).await {
            Some(Ok(b)) => Some(b.to_vec()),
            _ => None,
        }
    }

    /// The next frame's term.
    pub async fn recv(&mut self) -> Option<Term> {
        self.recv_payload()
            .await
            .map(|p| etf::decode(&p).expect("server sends valid terms"))
    }

    /// True when the server closes the connection (after any frames it still sends).
    pub async fn closed(&mut self) -> bool {
        within("close", async {
            loop {
                match self.reader.next().await {
                    None | Some(Err(_)) => return true,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await
    }
}
