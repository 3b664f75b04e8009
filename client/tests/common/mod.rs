//! Test support: certificates made on the fly, and a scripted TLS peer.
//!
//! The real server is another crate; these tests pin the client against the wire
//! protocol instead, with a peer whose every frame the test writes by hand. The
//! certificates follow the server's `devcert.rs`: a CA plus a leaf signed by it.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lib_chan_client::rustls::pki_types::pem::PemObject;
use lib_chan_client::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use lib_chan_client::rustls::{self, ServerConfig};
use lib_chan_client::{ConnectOptions, Term};
use lib_chan_protocol::message::{HandshakeReply, Hello, Welcome};
use lib_chan_protocol::{etf, FrameCodec};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;

/// The bound on every wait in the tests: a bug fails a test instead of hanging it.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test after [`LIMIT`].
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

/// A CA and a server certificate signed by it, in PEM.
#[derive(Clone)]
pub struct Certs {
    /// The CA certificate.
    pub ca_pem: String,
    /// The leaf certificate alone.
    pub leaf_pem: String,
    /// Leaf then CA, as the server presents it.
    pub chain_pem: String,
    /// The leaf's private key.
    pub key_pem: String,
}

impl Certs {
    /// A new CA and a leaf for `hosts` (DNS names or IP addresses). Every CA gets its
    /// own name.
    pub fn new(hosts: &[&str]) -> Certs {
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        Certs::with_ca_name(&format!("lib_chan test CA {n}"), hosts)
    }

    /// A new CA called `ca_name` and a leaf for `hosts`.
    pub fn with_ca_name(ca_name: &str, hosts: &[&str]) -> Certs {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ca_name);
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, &ca_key);

        let key = KeyPair::generate().unwrap();
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(hosts.clone()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, hosts[0].as_str());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params.signed_by(&key, &issuer).unwrap();
        Certs {
            ca_pem: ca_cert.pem(),
            leaf_pem: leaf.pem(),
            chain_pem: format!("{}{}", leaf.pem(), ca_cert.pem()),
            key_pem: key.serialize_pem(),
        }
    }

    /// The usual test certificates: for `localhost` and `127.0.0.1`.
    pub fn localhost() -> Certs {
        Certs::new(&["localhost", "127.0.0.1"])
    }

    /// Client options trusting this CA, with short timeouts.
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions::new()
            .ca_pem(&self.ca_pem)
            .connect_timeout(Duration::from_secs(5))
            .handshake_timeout(Duration::from_secs(5))
            .rpc_timeout(Duration::from_secs(5))
    }

    /// A rustls server configuration presenting the chain.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        Arc::new(config)
    }
}

/// One server-side TLS connection, framed like a lib_chan server.
pub struct Conn {
    pub framed: Framed<TlsStream<TcpStream>, FrameCodec>,
}

impl Conn {
    /// The next frame's term; `None` at end of stream or on any error.
    pub async fn recv(&mut self) -> Option<Term> {
        match self.framed.next().await {
            Some(Ok(payload)) => Some(etf::decode(&payload).expect("client sent a bad term")),
            _ => None,
        }
    }

    /// Sends one term as one frame.
    pub async fn send(&mut self, t: Term) {
        self.framed.send(t).await.expect("peer send failed");
    }

    /// Writes raw bytes on the TLS stream.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let s = self.framed.get_mut();
        s.write_all(bytes).await.unwrap();
        s.flush().await.unwrap();
    }

    /// Reads the first frame, which must be a `start_service`.
    pub async fn expect_start_service(&mut self) -> Hello {
        let t = self.recv().await.expect("no first frame");
        let hello = Hello::from_term(&t).expect("first frame is not a hello");
        assert!(matches!(hello, Hello::StartService { .. }), "{hello:?}");
        hello
    }

    /// Reads `start_service` and answers with a welcome announcing `max_frame`.
    pub async fn accept(&mut self, max_frame: usize) -> Hello {
        let hello = self.expect_start_service().await;
        self.send(welcome(max_frame)).await;
        hello
    }

    /// Sends close_notify and shuts the stream down.
    pub async fn shutdown(&mut self) {
        let _ = self.framed.get_mut().shutdown().await;
    }

    /// Reads until end of stream; returns what came.
    pub async fn drain(&mut self) -> Vec<Term> {
        let mut all = Vec::new();
        while let Some(t) = self.recv().await {
            all.push(t);
        }
        all
    }
}

/// The welcome term for `max_frame`, with an extra key clients must ignore.
pub fn welcome(max_frame: usize) -> Term {
    let t = HandshakeReply::Welcome(Welcome {
        protocol: 1,
        max_frame,
        server: "scripted-peer/1".into(),
        user: None,
        session: None,
        grace_ms: None,
    })
    .to_term();
    // Add a key the client does not know.
    let map = t.as_tuple().unwrap()[1].as_map().unwrap().to_vec();
    let mut entries = map;
    entries.push((Term::atom("extra"), Term::Int(42)));
    Term::tuple([Term::atom("ok"), Term::map(entries)])
}

/// Encodes `t` as a frame, for raw writes.
pub fn frame(t: &Term) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    FrameCodec::new(1 << 20, 1 << 20)
        .encode_term(t, &mut b)
        .unwrap();
    b.to_vec()
}

/// A listener on 127.0.0.1:0.
pub async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// Starts a TLS peer that accepts one connection and runs `script` on it. The handle
/// yields `None` when the TLS handshake failed (the client refused the certificate).
pub async fn peer<F, Fut, T>(certs: &Certs, script: F) -> (SocketAddr, JoinHandle<Option<T>>)
where
    F: FnOnce(Conn) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let (l, addr) = listener().await;
    let acceptor = TlsAcceptor::from(certs.server_config());
    let task = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = acceptor.accept(tcp).await.ok()?;
        let conn = Conn {
            framed: Framed::new(tls, FrameCodec::new(1 << 20, 1 << 20)),
        };
        Some(script(conn).await)
    });
    (addr, task)
}

/// A peer that welcomes the client and answers each call with `answer(Ref, X)` at once,
/// until the client closes; yields the casts and other frames it saw.
pub async fn echo_peer<A>(certs: &Certs, answer: A) -> (SocketAddr, JoinHandle<Option<Vec<Term>>>)
where
    A: Fn(i64, &Term) -> Term + Send + 'static,
{
    peer(certs, move |mut c| async move {
        c.accept(1 << 20).await;
        let mut other = Vec::new();
        while let Some(t) = c.recv().await {
            match t.as_tuple() {
                Some([tag, r, x]) if tag.is_atom("call") => {
                    let reply = answer(r.as_int().unwrap(), x);
                    c.send(reply).await;
                }
                Some([tag, r]) if tag.is_atom("ping") => {
                    c.send(Term::tuple([Term::atom("pong"), r.clone()])).await;
                }
                _ => other.push(t),
            }
        }
        c.shutdown().await;
        other
    })
    .await
}

/// `{reply, Ref, X}`: the echo answer.
pub fn echo(r: i64, x: &Term) -> Term {
    Term::tuple([Term::atom("reply"), Term::Int(r), x.clone()])
}
