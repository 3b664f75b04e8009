//! `mod_counter`: a counter per connection, the smallest service with state.
//!
//! Shows, from docs/writing-a-service.md: a handler from scratch, state that belongs to
//! one connection (a local variable of the handler), requests turned into a Rust enum
//! in one place, calls answered with a reply or an error, sends, and closing the
//! channel from the server side.
//!
//! | request      | reply (as a call)                       |
//! |--------------|-----------------------------------------|
//! | `incr`       | the new count                           |
//! | `{add, N}`   | the new count; `{error, Ref, overflow}` |
//! | `get`        | the count                               |
//! | `stop`       | the count, then the channel is closed   |
//!
//! As sends, `incr` and `{add, N}` count without answering; anything else is ignored.
//!
//! Run: `cargo run -p lib_chan_examples --bin counter`.
//! Test: `cargo test -p lib_chan_examples --bin counter`.

use std::error::Error;
use std::sync::Arc;

use lib_chan_client::CloseReason;
use lib_chan_examples::DemoServer;
use lib_chan_protocol::{term, Term};
use lib_chan_server::{Event, HandlerFuture, Registry, Service, Session};

/// One counter request: the wire's terms become this enum here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Incr,
    Add(i64),
    Get,
    Stop,
}

impl Request {
    /// `None` for anything the counter does not understand.
    fn from_term(t: &Term) -> Option<Request> {
        match t.as_atom() {
            Some("incr") => return Some(Request::Incr),
            Some("get") => return Some(Request::Get),
            Some("stop") => return Some(Request::Stop),
            _ => {}
        }
        match t.as_tuple()? {
            [tag, n] if tag.is_atom("add") => Some(Request::Add(n.as_int()?)),
            _ => None,
        }
    }
}

/// The service: it holds nothing, since every connection counts for itself.
struct Counter;

impl Service for Counter {
    fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
        Box::pin(async move {
            // State of this connection alone: a local of its handler.
            let mut count: i64 = 0;
            while let Some(event) = session.next_event().await {
                match event {
                    Event::Call(call) => {
                        let Some(request) = Request::from_term(call.request()) else {
                            // `{error, Ref, {bad_request, X}}`.
                            call.bad_request();
                            continue;
                        };
                        match apply(&mut count, request) {
                            Ok(n) => call.reply(Term::Int(n)),
                            Err(reason) => call.fail(Term::atom(reason)),
                        }
                        if request == Request::Stop {
                            // The reply is already queued, so it goes out first; then
                            // `close`. The handler is told Event::Closed next.
                            session.middle_man().close();
                        }
                    }
                    Event::Send(x) => match Request::from_term(&x) {
                        Some(r @ (Request::Incr | Request::Add(_))) => {
                            let _ = apply(&mut count, r);
                        }
                        _ => tracing::info!(request = %x, "counter ignored a send"),
                    },
                    Event::Closed => break,
                }
            }
        })
    }
}

/// Carries out one request on `count`; the error is the reason atom.
fn apply(count: &mut i64, request: Request) -> Result<i64, &'static str> {
    match request {
        Request::Incr => *count = count.checked_add(1).ok_or("overflow")?,
        Request::Add(n) => *count = count.checked_add(n).ok_or("overflow")?,
        Request::Get | Request::Stop => {}
    }
    Ok(*count)
}

/// The registry `lib_chan.conf` names handlers from: `handler = "mod_counter"`.
fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register("mod_counter", |_config| {
        Ok(Arc::new(Counter) as Arc<dyn Service>)
    });
    registry
}

/// A session with two clients; panics if the service misbehaves.
async fn demo() -> Result<(), Box<dyn Error>> {
    let server = DemoServer::start(&registry(), &[("counter", "mod_counter")]).await?;
    let a = server.connect("counter").await?;
    let b = server.connect("counter").await?;

    assert_eq!(a.rpc(term!(incr)).await?, Term::Int(1));
    assert_eq!(a.rpc(term!({add, 41})).await?, Term::Int(42));
    // b has a counter of its own.
    assert_eq!(b.rpc(term!(get)).await?, Term::Int(0));
    b.cast(term!(incr)).await?;
    assert_eq!(b.rpc(term!(get)).await?, Term::Int(1));

    // Errors come back as `{error, Ref, Reason}`, and the connection goes on.
    let overflow = a.rpc(Term::tuple([term!(add), Term::Int(i64::MAX)])).await;
    assert!(matches!(overflow, Err(lib_chan_client::Error::Remote(r)) if r == term!(overflow)));
    let unknown = a.rpc(term!({mul, 2})).await;
    assert!(
        matches!(unknown, Err(lib_chan_client::Error::Remote(r)) if r == term!({bad_request, {mul, 2}}))
    );
    assert_eq!(a.rpc(term!(get)).await?, Term::Int(42));

    // `stop` answers, then the server closes the channel.
    assert_eq!(a.rpc(term!(stop)).await?, Term::Int(42));
    assert_eq!(a.closed().await, CloseReason::ClosedByServer);
    assert_eq!(b.rpc(term!(get)).await?, Term::Int(1));
    println!("counter: the demo session ran as expected");
    b.close().await;
    server.stop().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    demo().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lib_chan_protocol::parse;

    #[tokio::test]
    async fn the_demo_session_runs() {
        tokio::time::timeout(std::time::Duration::from_secs(30), demo())
            .await
            .expect("the demo finishes in time")
            .expect("the demo succeeds");
    }

    #[test]
    fn requests_become_the_enum_or_nothing() {
        let p = |s: &str| Request::from_term(&parse(s).unwrap());
        assert_eq!(p("incr"), Some(Request::Incr));
        assert_eq!(p("{add, -3}"), Some(Request::Add(-3)));
        assert_eq!(p("{add, 1.5}"), None);
        assert_eq!(p("{add}"), None);
        assert_eq!(p("\"incr\""), None);
    }
}
