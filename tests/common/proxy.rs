//! A TCP proxy on 127.0.0.1 for tests of lost connections: it forwards to a target that
//! can be changed, cuts every connection on demand, freezes the open ones (they stay open
//! and carry nothing: a half-open connection, as after a lost route), and can refuse new
//! ones for a while (accepting and closing them at once, as a server that is down behind
//! a load balancer looks), counting the attempts.
//!
//! Include it with `#[path = "common/proxy.rs"] mod proxy;`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// A running proxy; it stops when dropped.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    refusing: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    cut: broadcast::Sender<()>,
    freeze: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let refusing = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicUsize::new(0));
        let (cut, _) = broadcast::channel(4);
        let (freeze, _) = broadcast::channel(4);
        let task = {
            let (target, refusing, attempts, cut, freeze) = (
                target.clone(),
                refusing.clone(),
                attempts.clone(),
                cut.clone(),
                freeze.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    attempts.fetch_add(1, Ordering::SeqCst);
                    if refusing.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let to = *target.lock().unwrap();
                    let mut cut = cut.subscribe();
                    let mut freeze = freeze.subscribe();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(to).await else {
                            return;
                        };
                        let (mut client, mut server) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.recv() => {}
                            _ = freeze.recv() => {
                                // Open, silent, until cut.
                                let _ = cut.recv().await;
                            }
                        }
                    });
                }
            })
        };
        Proxy {
            addr,
            target,
            refusing,
            attempts,
            cut,
            freeze,
            task,
        }
    }

    /// Cuts every connection now (both sockets closed, no goodbye).
    pub fn cut(&self) {
        let _ = self.cut.send(());
    }

    /// The open connections stop carrying anything, in both directions, and stay open
    /// (until [`cut`](Self::cut)); new ones are forwarded as before.
    pub fn freeze(&self) {
        let _ = self.freeze.send(());
    }

    /// While `on`, new connections are accepted and closed at once.
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    /// New connections go to `target` from now on.
    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    /// Connections accepted so far (refused ones included).
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
