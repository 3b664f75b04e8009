//! A blocking client for programs without an async runtime.
//!
//! [`connect`] starts a small tokio runtime of its own (one worker thread, which runs the
//! dispatch task in the background) and returns a [`Channel`] whose methods block the
//! calling thread. Do not call them from inside an async runtime: use the async
//! [`crate::Channel`] there (tokio panics when a runtime blocks inside another).
//!
//! ```no_run
//! use lib_chan_client::{blocking, term, Term};
//!
//! # fn main() -> Result<(), lib_chan_client::Error> {
//! let chan = blocking::connect("localhost", 1234, "nameServer", "ABXy45", Term::nil())?;
//! chan.cast(term!({store, joe, "writing a book"}))?;
//! assert_eq!(chan.rpc(term!({lookup, joe}))?, term!({ok, "writing a book"}));
//! chan.close();
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lib_chan_protocol::message::Welcome;
use lib_chan_protocol::Term;
use tokio::runtime::Runtime;

use crate::error::{CloseReason, Error};
use crate::options::ConnectOptions;

/// A blocking handle to a channel: [`crate::Channel`] plus the runtime that drives it.
///
/// Clones share the connection and the runtime. Call [`close`](Self::close) for an
/// orderly close; when the last clone is dropped without it, the runtime stops and the
/// connection is cut.
#[derive(Clone)]
pub struct Channel {
    inner: crate::Channel,
    runtime: Arc<Runtime>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::Channel")
            .field(&self.inner)
            .finish()
    }
}

/// Connects with the default [`ConnectOptions`], as [`crate::connect`] does, blocking.
///
/// # Errors
/// As [`ConnectOptions::connect`], plus [`Error::Io`] when the runtime cannot start.
pub fn connect(
    host: &str,
    port: u16,
    service: &str,
    password: impl AsRef<[u8]>,
    args: Term,
) -> Result<Channel, Error> {
    connect_with_options(
        ConnectOptions::default(),
        host,
        port,
        service,
        password,
        args,
    )
}

/// Connects with `options`, blocking.
///
/// # Errors
/// As [`ConnectOptions::connect`], plus [`Error::Io`] when the runtime cannot start.
pub fn connect_with_options(
    options: ConnectOptions,
    host: &str,
    port: u16,
    service: &str,
    password: impl AsRef<[u8]>,
    args: Term,
) -> Result<Channel, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lib_chan-client")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the client runtime", e))?;
    let inner = runtime.block_on(options.connect(host, port, service, password, args))?;
    Ok(Channel {
        inner,
        runtime: Arc::new(runtime),
    })
}

impl Channel {
    /// The async channel underneath.
    pub fn as_async(&self) -> &crate::Channel {
        &self.inner
    }

    /// What the server announced in its welcome.
    pub fn welcome(&self) -> &Welcome {
        self.inner.welcome()
    }

    /// [`crate::Channel::cast`], blocking until the frame is queued.
    ///
    /// # Errors
    /// As [`crate::Channel::cast`].
    pub fn cast(&self, msg: Term) -> Result<(), Error> {
        self.runtime.block_on(self.inner.cast(msg))
    }

    /// [`crate::Channel::rpc`], blocking until the reply or the default rpc timeout.
    ///
    /// # Errors
    /// As [`crate::Channel::rpc`].
    pub fn rpc(&self, req: Term) -> Result<Term, Error> {
        self.runtime.block_on(self.inner.rpc(req))
    }

    /// [`crate::Channel::rpc_timeout`], blocking.
    ///
    /// # Errors
    /// As [`crate::Channel::rpc`].
    pub fn rpc_timeout(&self, req: Term, timeout: Duration) -> Result<Term, Error> {
        self.runtime.block_on(self.inner.rpc_timeout(req, timeout))
    }

    /// [`crate::Channel::rpc_many`], blocking until every reply or the default rpc
    /// timeout: a batch of calls in one write, answers in request order.
    ///
    /// # Errors
    /// Per request, as [`crate::Channel::rpc_many`].
    pub fn rpc_many(&self, reqs: impl IntoIterator<Item = Term>) -> Vec<Result<Term, Error>> {
        self.runtime.block_on(self.inner.rpc_many(reqs))
    }

    /// [`crate::Channel::ping`], blocking.
    ///
    /// # Errors
    /// As [`crate::Channel::ping`].
    pub fn ping(&self) -> Result<Duration, Error> {
        self.runtime.block_on(self.inner.ping())
    }

    /// The next push (`{send, Y}` from the service), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`]`("recv")` when nothing came in time; [`Error::Closed`] once the
    /// channel is closed and every push has been received.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Term, Error> {
        self.runtime.block_on(async {
            match tokio::time::timeout(timeout, self.inner.recv()).await {
                Ok(Some(term)) => Ok(term),
                Ok(None) => Err(Error::Closed(self.inner.closed().await)),
                Err(_) => Err(Error::Timeout("recv")),
            }
        })
    }

    /// The next push; `None` once the channel is closed and every push was received.
    pub fn recv(&self) -> Option<Term> {
        self.runtime.block_on(self.inner.recv())
    }

    /// `true` once the connection has ended or [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Blocks until the connection has ended; returns why.
    pub fn closed(&self) -> CloseReason {
        self.runtime.block_on(self.inner.closed())
    }

    /// [`crate::Channel::close`], blocking (about 2 s at most).
    pub fn close(&self) {
        self.runtime.block_on(self.inner.close())
    }
}
