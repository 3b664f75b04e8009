//! The door: the accept loop, what it checks before a connection gets a task, and where
//! that task runs.
//!
//! Each accepted socket is counted, held to `max_connections` and to the admission
//! rules (per-source limits, the budget of unauthenticated connections), set up
//! (TCP_NODELAY, keepalive) and given a task of its own, which the shutdown tracker
//! follows. A refusal here is logged and counted for the operator; the client sees its
//! connection closed, whatever the reason.
//!
//! The task is spawned where the loop runs: on a work-stealing runtime the accepting
//! worker starts the handshake itself, with no hand-over to another thread. (One
//! single-threaded runtime per core, each with its own accept loop, was measured
//! against it in bench/compare.sh's scenarios: within a few per cent either way.)

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::reload::Live;
use crate::server::connection;
use crate::stats::protocol_error;

/// The first wait after an accept error that is not about one connection (EMFILE and
/// the like); it doubles up to [`MAX_BACKOFF`] while the errors go on.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What the accept loop needs to let a connection in and follow it.
pub(crate) struct Door {
    pub(crate) live: Arc<Live>,
    /// One permit per open connection: `max_connections`.
    pub(crate) connections: Arc<Semaphore>,
    /// Cancelled at shutdown; each connection gets a child.
    pub(crate) token: CancellationToken,
    /// Follows every connection task, for the graceful shutdown.
    pub(crate) tracker: TaskTracker,
}

impl Door {
    /// Accepts on `listener` until `stop` resolves.
    pub(crate) async fn accept_until(&self, listener: TcpListener, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut backoff = FIRST_BACKOFF;
        loop {
            tokio::select! {
                () = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        backoff = FIRST_BACKOFF;
                        self.let_in(tcp, peer);
                    }
                    Err(e) if is_per_connection(&e) => {}
                    Err(e) => {
                        // EMFILE and the like: back off, never exit.
                        tracing::error!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    /// Admits one accepted connection, or refuses it, and starts its task here.
    fn let_in(&self, tcp: TcpStream, peer: SocketAddr) {
        // The current generation, read once for this connection.
        let state = self.live.load();
        state.stats.accepted();
        let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
            state.stats.count_close("refused_max_connections");
            protocol_error!(%peer, "connection limit reached; refusing");
            return;
        };
        let ticket = match state.admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                state.stats.count_close(refusal.code());
                protocol_error!(%peer, reason = refusal.code(), "refused at accept");
                return;
            }
        };
        configure_socket(&tcp, state.limits.tcp_keepalive);
        let token = self.token.child_token();
        self.tracker
            .spawn(connection(tcp, peer, state, token, permit, ticket));
    }
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}

/// Sets TCP_NODELAY (frames are whole messages: never wait to coalesce) and keepalive.
fn configure_socket(tcp: &TcpStream, keepalive: Option<Duration>) {
    let _ = tcp.set_nodelay(true);
    if let Some(idle) = keepalive {
        let ka = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka);
    }
}
