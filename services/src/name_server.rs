//! `mod_name_server`: the book's name server over lib_chan (PROTOCOL.md section 7).
//!
//! One [`NameSpace`] per `[[service]]` entry, shared by all its connections. Keys and
//! values are any terms; two keys are the same key when they are the same term (`=:=`).
//! Beyond the book: `delete`, `names`, owner-bound stores (removed when the storing
//! connection closes), and `watch`/`unwatch`, which push `{changed, Key, Answer}`.
//!
//! | request                    | as a call, the reply        | as a send                |
//! |----------------------------|-----------------------------|--------------------------|
//! | `{store, K, V}`            | `true`                      | nothing                  |
//! | `{store, K, V, #{owner => channel}}` | `true`            | nothing                  |
//! | `{lookup, K}`              | `{ok, V}` or `undefined`    | `{send, Answer}`         |
//! | `{delete, K}`              | `true`                      | nothing                  |
//! | `names`                    | the keys in term order      | `{send, Keys}`           |
//! | `{watch, K}`/`{unwatch, K}`| `true`                      | nothing                  |

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use lib_chan_protocol::Term;
use lib_chan_server::handler::TrySendError;
use lib_chan_server::{Event, HandlerFuture, MiddleMan, Service, Session};

/// One name server request, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `{store, K, V}`, or owner-bound with `#{owner => channel}`.
    Store {
        /// The key.
        key: Term,
        /// The value.
        value: Term,
        /// Removed when the storing connection closes.
        owner_bound: bool,
    },
    /// `{lookup, K}`.
    Lookup(Term),
    /// `{delete, K}`.
    Delete(Term),
    /// `names`.
    Names,
    /// `{watch, K}`.
    Watch(Term),
    /// `{unwatch, K}`.
    Unwatch(Term),
}

impl Request {
    /// Parses a request; `None` for anything the name server does not understand.
    pub fn from_term(t: &Term) -> Option<Request> {
        if t.is_atom("names") {
            return Some(Request::Names);
        }
        let items = t.as_tuple()?;
        let (tag, rest) = items.split_first()?;
        Some(match (tag.as_atom()?, rest) {
            ("store", [k, v]) => Request::Store {
                key: k.clone(),
                value: v.clone(),
                owner_bound: false,
            },
            ("store", [k, v, opts]) if is_owner_channel(opts) => Request::Store {
                key: k.clone(),
                value: v.clone(),
                owner_bound: true,
            },
            ("lookup", [k]) => Request::Lookup(k.clone()),
            ("delete", [k]) => Request::Delete(k.clone()),
            ("watch", [k]) => Request::Watch(k.clone()),
            ("unwatch", [k]) => Request::Unwatch(k.clone()),
            _ => return None,
        })
    }
}

/// `#{owner => channel}`, exactly.
fn is_owner_channel(opts: &Term) -> bool {
    opts.as_map()
        .is_some_and(|m| m.len() == 1 && m[0].0.is_atom("owner") && m[0].1.is_atom("channel"))
}

/// `{ok, V}` or `undefined`.
fn answer(value: Option<&Term>) -> Term {
    match value {
        Some(v) => Term::tuple([Term::atom("ok"), v.clone()]),
        None => Term::atom("undefined"),
    }
}

struct Entry {
    value: Term,
    /// The connection whose close removes this entry, for owner-bound stores.
    owner: Option<u64>,
}

#[derive(Default)]
struct Names {
    entries: HashMap<Term, Entry>,
    /// For each watched key, the connections watching it.
    watchers: HashMap<Term, HashMap<u64, MiddleMan>>,
}

/// The names of one `[[service]]` entry, shared by its connections.
#[derive(Default)]
pub struct NameSpace {
    names: Mutex<Names>,
}

impl std::fmt::Debug for NameSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameSpace").finish_non_exhaustive()
    }
}

impl NameSpace {
    fn lock(&self) -> MutexGuard<'_, Names> {
        // A handler that panicked while holding the lock cannot leave a half-made change
        // (every change is one map operation), so the data is still consistent.
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `value` under `key`; `owner` binds it to a connection.
    pub fn store(&self, key: Term, value: Term, owner: Option<u64>) {
        let mut names = self.lock();
        names.notify(&key, Some(&value));
        names.entries.insert(key, Entry { value, owner });
    }

    /// The value under `key`.
    pub fn lookup(&self, key: &Term) -> Option<Term> {
        self.lock().entries.get(key).map(|e| e.value.clone())
    }

    /// Removes `key`; true whether or not it was there.
    pub fn delete(&self, key: &Term) {
        let mut names = self.lock();
        if names.entries.remove(key).is_some() {
            names.notify(key, None);
        }
    }

    /// Every key, in Erlang term order.
    pub fn names(&self) -> Vec<Term> {
        let mut keys: Vec<Term> = self.lock().entries.keys().cloned().collect();
        keys.sort();
        keys
    }

    fn watch(&self, key: Term, mm: &MiddleMan) {
        self.lock()
            .watchers
            .entry(key)
            .or_default()
            .insert(mm.connection_id(), mm.clone());
    }

    fn unwatch(&self, key: &Term, connection: u64) {
        let mut names = self.lock();
        if let Some(w) = names.watchers.get_mut(key) {
            w.remove(&connection);
            if w.is_empty() {
                names.watchers.remove(key);
            }
        }
    }

    /// Forgets a closed connection: its owner-bound names and its watches.
    fn disconnect(&self, connection: u64, owned: &HashSet<Term>, watched: &HashSet<Term>) {
        let mut names = self.lock();
        for key in owned {
            if names
                .entries
                .get(key)
                .is_some_and(|e| e.owner == Some(connection))
            {
                names.entries.remove(key);
                names.notify(key, None);
            }
        }
        for key in watched {
            if let Some(w) = names.watchers.get_mut(key) {
                w.remove(&connection);
                if w.is_empty() {
                    names.watchers.remove(key);
                }
            }
        }
    }
}

impl Names {
    /// Pushes `{changed, Key, Answer}` to every watcher of `key`. Called with the lock
    /// held, so every watcher sees changes in the order they were made; the push never
    /// waits, and a watcher too slow to take it is closed rather than let it grow memory.
    fn notify(&mut self, key: &Term, value: Option<&Term>) {
        let Some(watchers) = self.watchers.get_mut(key) else {
            return;
        };
        let change = Term::tuple([Term::atom("changed"), key.clone(), answer(value)]);
        watchers.retain(|_, mm| match mm.try_send(change.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full) => {
                tracing::warn!(peer = %mm.peer(), "watcher not reading its pushes; closing it");
                mm.close();
                false
            }
            Err(TrySendError::Closed) => false,
        });
    }
}

/// The name server service.
#[derive(Debug, Default)]
pub struct NameServer {
    space: Arc<NameSpace>,
}

impl NameServer {
    /// A name server with an empty name space.
    pub fn new() -> NameServer {
        NameServer::default()
    }

    /// The name space, e.g. for other services that share it.
    pub fn space(&self) -> &Arc<NameSpace> {
        &self.space
    }
}

/// One connection's footprint in the name space, removed when the handler ends,
/// however it ends (a panic included).
struct ConnectionState {
    space: Arc<NameSpace>,
    middle_man: MiddleMan,
    owned: HashSet<Term>,
    watched: HashSet<Term>,
}

impl ConnectionState {
    /// Carries out `request` and returns its answer.
    fn apply(&mut self, request: Request) -> Term {
        match request {
            Request::Store {
                key,
                value,
                owner_bound,
            } => {
                let owner = owner_bound.then(|| self.middle_man.connection_id());
                if owner_bound {
                    self.owned.insert(key.clone());
                }
                self.space.store(key, value, owner);
                Term::atom("true")
            }
            Request::Lookup(key) => answer(self.space.lookup(&key).as_ref()),
            Request::Delete(key) => {
                self.space.delete(&key);
                Term::atom("true")
            }
            Request::Names => Term::list(self.space.names()),
            Request::Watch(key) => {
                self.space.watch(key.clone(), &self.middle_man);
                self.watched.insert(key);
                Term::atom("true")
            }
            Request::Unwatch(key) => {
                self.space.unwatch(&key, self.middle_man.connection_id());
                self.watched.remove(&key);
                Term::atom("true")
            }
        }
    }
}

impl Drop for ConnectionState {
    fn drop(&mut self) {
        self.space
            .disconnect(self.middle_man.connection_id(), &self.owned, &self.watched);
    }
}

impl Service for NameServer {
    fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
        Box::pin(async move {
            let mut state = ConnectionState {
                space: Arc::clone(&self.space),
                middle_man: session.middle_man().clone(),
                owned: HashSet::new(),
                watched: HashSet::new(),
            };
            while let Some(event) = session.next_event().await {
                match event {
                    Event::Call(call) => match Request::from_term(call.request()) {
                        Some(request) => {
                            let reply = state.apply(request);
                            call.reply(reply);
                        }
                        None => call.bad_request(),
                    },
                    Event::Send(x) => match Request::from_term(&x) {
                        Some(request) => {
                            let answers = matches!(request, Request::Lookup(_) | Request::Names);
                            let reply = state.apply(request);
                            if answers && session.middle_man().send(reply).await.is_err() {
                                break;
                            }
                        }
                        None => {
                            let shown = lib_chan_protocol::message::snippet(&x, 80);
                            tracing::info!(peer = %session.middle_man().peer(), request = %shown, "name server ignored an unknown send");
                        }
                    },
                    Event::Closed => break,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lib_chan_protocol::{parse, term};

    #[test]
    fn requests_parse_per_protocol_section_7() {
        let p = |s: &str| Request::from_term(&parse(s).unwrap());
        assert_eq!(
            p(r#"{store, joe, "writing a book"}"#),
            Some(Request::Store {
                key: term!(joe),
                value: term!("writing a book"),
                owner_bound: false
            })
        );
        assert!(matches!(
            p("{store, k, v, #{owner => channel}}"),
            Some(Request::Store {
                owner_bound: true,
                ..
            })
        ));
        assert_eq!(p("{store, k, v, #{owner => me}}"), None);
        assert_eq!(p("{lookup, jim}"), Some(Request::Lookup(term!(jim))));
        assert_eq!(p("names"), Some(Request::Names));
        assert_eq!(p("{lookup, a, b}"), None);
        assert_eq!(p("lookup"), None);
        assert_eq!(p("{}"), None);
    }

    #[test]
    fn keys_are_exact_terms_and_names_are_sorted() {
        let space = NameSpace::default();
        space.store(Term::Int(1), term!(int), None);
        space.store(Term::Float(1.0), term!(float), None);
        space.store(term!(b), term!(x), None);
        space.store(term!("a"), term!(y), None);
        space.store(term!({ a }), term!(z), None);
        assert_eq!(space.lookup(&Term::Int(1)), Some(term!(int)));
        assert_eq!(space.lookup(&Term::Float(1.0)), Some(term!(float)));
        assert_eq!(
            Term::list(space.names()).to_string(),
            r#"[1,1.0,b,{a},"a"]"#
        );
        space.delete(&term!(b));
        space.delete(&term!(never_there));
        assert_eq!(space.lookup(&term!(b)), None);
    }
}
