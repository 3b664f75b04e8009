//! `mod_pubsub`: publish and subscribe, with state shared by every connection.
//!
//! Shows, from docs/writing-a-service.md: state that belongs to the service entry (a
//! field of the service value, behind a mutex), pushing to other connections without
//! ever waiting on them, closing a subscriber that cannot keep up, and cleaning up
//! after a connection however it ends (a `Drop` guard).
//!
//! | request                 | reply (as a call)                      |
//! |-------------------------|----------------------------------------|
//! | `{subscribe, Topic}`    | `true`                                 |
//! | `{unsubscribe, Topic}`  | `true`                                 |
//! | `{publish, Topic, Msg}` | how many subscribers it was pushed to  |
//!
//! Each subscriber of `Topic` receives `{event, Topic, Msg}` as a push. Topics and
//! messages are any terms.
//!
//! Run: `cargo run -p lib_chan_examples --bin pubsub`.
//! Test: `cargo test -p lib_chan_examples --bin pubsub`.

use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lib_chan_examples::DemoServer;
use lib_chan_protocol::{term, Term};
use lib_chan_server::{Event, HandlerFuture, MiddleMan, Registry, Service, Session};

/// One pub/sub request.
#[derive(Debug, Clone, PartialEq)]
enum Request {
    Subscribe(Term),
    Unsubscribe(Term),
    Publish(Term, Term),
}

impl Request {
    fn from_term(t: &Term) -> Option<Request> {
        let (tag, rest) = t.as_tuple()?.split_first()?;
        Some(match (tag.as_atom()?, rest) {
            ("subscribe", [topic]) => Request::Subscribe(topic.clone()),
            ("unsubscribe", [topic]) => Request::Unsubscribe(topic.clone()),
            ("publish", [topic, msg]) => Request::Publish(topic.clone(), msg.clone()),
            _ => return None,
        })
    }
}

/// The service: one per `[[service]]` entry, so its topics are shared by all the
/// connections to that entry.
#[derive(Default)]
struct PubSub {
    /// Topic to subscribers, by connection id. A std mutex: it is never held across
    /// an `.await` (the workspace's clippy lints check), and pushes do not wait.
    topics: Mutex<HashMap<Term, HashMap<u64, MiddleMan>>>,
}

impl PubSub {
    /// The topics, locked. A handler that panicked while holding the lock poisons it;
    /// every change here is one map operation, so the data is still whole and the
    /// poison is ignored (unwrapping it in a `Drop` that runs while the handler
    /// unwinds would abort the whole server).
    fn topics(&self) -> MutexGuard<'_, HashMap<Term, HashMap<u64, MiddleMan>>> {
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pushes `{event, Topic, Msg}` to every subscriber; returns how many got it.
    fn publish(&self, topic: &Term, msg: &Term) -> usize {
        let event = Term::tuple([term!(event), topic.clone(), msg.clone()]);
        let mut topics = self.topics();
        let Some(subscribers) = topics.get_mut(topic) else {
            return 0;
        };
        // `try_send` never waits: one subscriber that stopped reading must not stall
        // the publisher, nor everyone else. Close it instead of queueing without end.
        subscribers.retain(|_, mm| mm.try_send_or_close(event.clone()));
        subscribers.len()
    }

    fn subscribe(&self, topic: Term, mm: &MiddleMan) {
        let mut topics = self.topics();
        let subscribers = topics.entry(topic).or_default();
        subscribers.insert(mm.connection_id(), mm.clone());
    }

    fn unsubscribe(&self, topic: &Term, connection: u64) {
        let mut topics = self.topics();
        if let Some(subscribers) = topics.get_mut(topic) {
            subscribers.remove(&connection);
            if subscribers.is_empty() {
                topics.remove(topic);
            }
        }
    }
}

/// One connection's subscriptions, dropped from the shared state when the handler
/// ends, whether the client closed, went away, or the handler panicked.
struct Subscriptions {
    service: Arc<PubSub>,
    middle_man: MiddleMan,
    topics: HashSet<Term>,
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for topic in &self.topics {
            self.service
                .unsubscribe(topic, self.middle_man.connection_id());
        }
    }
}

impl Service for PubSub {
    fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
        Box::pin(async move {
            let mut mine = Subscriptions {
                service: Arc::clone(&self),
                middle_man: session.middle_man().clone(),
                topics: HashSet::new(),
            };
            while let Some(event) = session.next_event().await {
                let Event::Call(call) = event else {
                    // Sends are not part of this service; Closed ends the loop.
                    if matches!(event, Event::Closed) {
                        break;
                    }
                    continue;
                };
                match Request::from_term(call.request()) {
                    Some(Request::Subscribe(topic)) => {
                        self.subscribe(topic.clone(), &mine.middle_man);
                        mine.topics.insert(topic);
                        call.reply(term!(true));
                    }
                    Some(Request::Unsubscribe(topic)) => {
                        self.unsubscribe(&topic, mine.middle_man.connection_id());
                        mine.topics.remove(&topic);
                        call.reply(term!(true));
                    }
                    Some(Request::Publish(topic, msg)) => {
                        let n = self.publish(&topic, &msg);
                        call.reply(Term::Int(n as i64));
                    }
                    None => call.bad_request(),
                }
            }
        })
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    // The factory runs once per `[[service]]` entry: two entries, two sets of topics.
    registry.register("mod_pubsub", |_config| {
        Ok(Arc::new(PubSub::default()) as Arc<dyn Service>)
    });
    registry
}

/// Three clients; panics if the service misbehaves.
async fn demo() -> Result<(), Box<dyn Error>> {
    let server = DemoServer::start(&registry(), &[("pubsub", "mod_pubsub")]).await?;
    let alice = server.connect("pubsub").await?;
    let bob = server.connect("pubsub").await?;
    let carol = server.connect("pubsub").await?;
    assert_eq!(alice.rpc(term!({subscribe, news})).await?, term!(true));
    assert_eq!(bob.rpc(term!({subscribe, news})).await?, term!(true));
    assert_eq!(bob.rpc(term!({subscribe, sport})).await?, term!(true));

    let published = carol
        .rpc(term!({publish, news, "lib_chan in Rust"}))
        .await?;
    assert_eq!(published, Term::Int(2));
    for ch in [&alice, &bob] {
        let push = ch.recv().await.ok_or("a push")?;
        assert_eq!(push, term!({event, news, "lib_chan in Rust"}));
    }
    assert_eq!(carol.rpc(term!({publish, sport, 1})).await?, Term::Int(1));
    assert_eq!(bob.recv().await, Some(term!({event, sport, 1})));

    // Bob goes away: his subscriptions go with him.
    bob.close().await;
    assert_eq!(carol.rpc(term!({publish, news, 2})).await?, Term::Int(1));
    assert_eq!(carol.rpc(term!({publish, sport, 2})).await?, Term::Int(0));
    assert_eq!(alice.recv().await, Some(term!({event, news, 2})));
    assert_eq!(alice.rpc(term!({unsubscribe, news})).await?, term!(true));
    assert_eq!(carol.rpc(term!({publish, news, 3})).await?, Term::Int(0));
    println!("pubsub: the demo session ran as expected");
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
        assert_eq!(
            p("{subscribe, news}"),
            Some(Request::Subscribe(term!(news)))
        );
        assert_eq!(
            p("{publish, news, {a, 1}}"),
            Some(Request::Publish(term!(news), term!({a, 1})))
        );
        assert_eq!(p("{publish, news}"), None);
        assert_eq!(p("subscribe"), None);
    }
}
