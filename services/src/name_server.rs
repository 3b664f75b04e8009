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
//! | `revision`                 | the current revision        | nothing                  |
//! | `{get, K}`                 | `{ok, V, ModRev}` or `{undefined, Rev}` | nothing      |
//! | `{store, K, V, #{if_revision => R}}` (also with `owner`) | `true` or `{conflict, Answer, ModRev}` | nothing |
//! | `{delete, K, #{if_revision => R}}` | `true` or `{conflict, Answer, ModRev}` | nothing |
//! | `{watch, K, Since}`        | `true`, then at once `{changed, K, Answer, ModRev}` if K changed after `Since` | the push only |
//!
//! Revisions (PROTOCOL.md 7.1) are kept by every store; [`revision`] has the rules. A
//! `{watch, K, Since}` pushes `{changed, K, Answer, ModRev}`, a `{watch, K}` the version 1
//! `{changed, K, Answer}`; no watcher is pushed the same revision twice or an older one
//! after a newer.
//!
//! A call the store cannot carry out (disk error, Redis down) gets
//! `{error, Ref, store_unavailable}`.
//!
//! A named user whose `[[user]]` entry lists this service in `read_only` may look up,
//! list and watch, but its stores and deletes are answered `{error, Ref, forbidden}` (as
//! sends, they are dropped with a log line).
//!
//! # Storage
//! The entry's `store` key picks where the names live ([`StoreSpec`]): `memory` (the
//! default), `file:PATH` (redb, durable before `true`) or `redis://HOST:PORT/DB` (shared
//! by several channel servers). Each is a [`NameStore`]; see [`store`] for the contract
//! they keep, and [`file_store`] and [`redis_store`] for their designs.
//!
//! # Concurrency
//! The handler never waits for a store while reading its connection's requests: it hands
//! each request to the store (which fixes its order), and answers it from a task of its
//! own when the store is done. So one connection may have many stores in flight, and
//! they share commits, while a pipelined `{lookup, K}` still sees the `{store, K, V}`
//! sent before it. A `{lookup, K}` or `names` sent as a *send* is awaited in turn, so
//! its `{send, Answer}` keeps its place among the handler's pushes.

pub mod file_store;
pub mod redis_sessions;
pub mod redis_store;
pub mod revision;
pub mod store;

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::FutureExt;
use lib_chan_protocol::Term;
use lib_chan_server::{
    Call, Event, HandlerFuture, Identity, MiddleMan, Service, ServiceConfig, Session, SessionId,
};

pub use revision::{KeyState, Written};
pub use store::{NameStore, Owner, StoreError, StoreFuture, StoreSpec, WatchForm, Watchers};

/// One name server request, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `{store, K, V}`, or with options `#{owner => channel, if_revision => R}` (either).
    Store {
        /// The key.
        key: Term,
        /// The value.
        value: Term,
        /// `owner => channel` (removed when the storing connection closes) or `owner =>
        /// session` (removed when its session ends).
        owner: Option<OwnedBy>,
        /// Stored only if the key's last change was at this revision (0: absent).
        if_revision: Option<u64>,
    },
    /// `{lookup, K}`.
    Lookup(Term),
    /// `{get, K}`: the value with its revision.
    Get(Term),
    /// `{delete, K}`, or `{delete, K, #{if_revision => R}}`.
    Delete {
        /// The key.
        key: Term,
        /// Deleted only if the key's last change was at this revision.
        if_revision: Option<u64>,
    },
    /// `names`.
    Names,
    /// `revision`: the name space's current revision.
    Revision,
    /// `{watch, K}`, or `{watch, K, Since}` (pushes with revisions, catching up from
    /// `Since`).
    Watch {
        /// The key.
        key: Term,
        /// The revision the watcher has seen up to, for the version 2 form.
        since: Option<u64>,
    },
    /// `{unwatch, K}`.
    Unwatch(Term),
}

impl Request {
    /// True for the requests that change the name space (refused to a read-only user).
    pub fn writes(&self) -> bool {
        matches!(self, Request::Store { .. } | Request::Delete { .. })
    }

    /// True for the requests whose answer a *send* gets back as `{send, Answer}`.
    fn answers_sends(&self) -> bool {
        matches!(self, Request::Lookup(_) | Request::Names)
    }

    /// Parses a request; `None` for anything the name server does not understand.
    pub fn from_term(t: &Term) -> Option<Request> {
        if t.is_atom("names") {
            return Some(Request::Names);
        }
        if t.is_atom("revision") {
            return Some(Request::Revision);
        }
        let items = t.as_tuple()?;
        let (tag, rest) = items.split_first()?;
        Some(match (tag.as_atom()?, rest) {
            ("store", [k, v]) => Request::Store {
                key: k.clone(),
                value: v.clone(),
                owner: None,
                if_revision: None,
            },
            ("store", [k, v, opts]) => {
                let opts = Options::parse(opts, true)?;
                Request::Store {
                    key: k.clone(),
                    value: v.clone(),
                    owner: opts.owner,
                    if_revision: opts.if_revision,
                }
            }
            ("lookup", [k]) => Request::Lookup(k.clone()),
            ("get", [k]) => Request::Get(k.clone()),
            ("delete", [k]) => Request::Delete {
                key: k.clone(),
                if_revision: None,
            },
            ("delete", [k, opts]) => Request::Delete {
                key: k.clone(),
                if_revision: Options::parse(opts, false)?.if_revision,
            },
            ("watch", [k]) => Request::Watch {
                key: k.clone(),
                since: None,
            },
            ("watch", [k, since]) => Request::Watch {
                key: k.clone(),
                since: Some(revision::rev_of(since)?),
            },
            ("unwatch", [k]) => Request::Unwatch(k.clone()),
            _ => return None,
        })
    }
}

/// What an owner-bound name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnedBy {
    /// `owner => channel`: the connection that stored it.
    Channel,
    /// `owner => session`: the session of the connection that stored it (PROTOCOL.md 8).
    Session,
}

/// The options map of a store or delete.
#[derive(Default)]
struct Options {
    owner: Option<OwnedBy>,
    if_revision: Option<u64>,
}

impl Options {
    /// `#{owner => channel | session, if_revision => R}`, each key optional (`owner` only where
    /// `owner` is allowed); `None` for any other key or value, so that a misspelt
    /// condition is refused rather than ignored.
    fn parse(opts: &Term, owner: bool) -> Option<Options> {
        let mut out = Options::default();
        for (k, v) in opts.as_map()? {
            match k.as_atom()? {
                "owner" if owner && v.is_atom("channel") => out.owner = Some(OwnedBy::Channel),
                "owner" if owner && v.is_atom("session") => out.owner = Some(OwnedBy::Session),
                "if_revision" => out.if_revision = Some(revision::rev_of(v)?),
                _ => return None,
            }
        }
        Some(out)
    }
}

/// The names of one `[[service]]` entry, shared by its connections (and by other
/// services, such as `mod_rpc`, that act on it): a [`NameStore`] and this server's
/// watchers.
///
/// Every method keeps the store's ordering contract: the operation is placed when the
/// method is called, and the returned future only waits for its outcome (it takes
/// effect even if the future is dropped). From async code:
///
/// ```no_run
/// # async fn example(space: &lib_chan_services::name_server::NameSpace) -> Result<(), lib_chan_services::name_server::StoreError> {
/// use lib_chan_protocol::term;
/// space.store(term!(joe), term!("writing a book"), None).await?;
/// assert_eq!(space.lookup(&term!(joe)).await?, Some(term!("writing a book")));
/// # Ok(()) }
/// ```
pub struct NameSpace {
    store: Box<dyn NameStore>,
    watchers: Arc<Watchers>,
    spec: StoreSpec,
}

impl std::fmt::Debug for NameSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameSpace")
            .field("store", &self.spec.to_string())
            .finish_non_exhaustive()
    }
}

impl Default for NameSpace {
    /// An empty name space in memory.
    fn default() -> NameSpace {
        let watchers = Arc::new(Watchers::default());
        NameSpace {
            store: Box::new(store::MemoryStore::new(Arc::clone(&watchers))),
            watchers,
            spec: StoreSpec::Memory,
        }
    }
}

impl NameSpace {
    /// Opens the name space `spec` describes for the service named `service` (Redis keys
    /// and channels include it). A file store is opened or created and its writer thread
    /// started; a Redis store is checked to answer, and its tasks are spawned on the
    /// current tokio runtime (so call this from inside one for Redis).
    ///
    /// # Errors
    /// A message naming the file or URL and what is wrong with it.
    pub fn open(spec: &StoreSpec, service: &str) -> Result<NameSpace, String> {
        let watchers = Arc::new(Watchers::default());
        let w = Arc::clone(&watchers);
        let store: Box<dyn NameStore> = match spec {
            StoreSpec::Memory => Box::new(store::MemoryStore::new(w)),
            StoreSpec::File(path) => Box::new(file_store::FileStore::open(path, w)?),
            StoreSpec::Redis(url) => Box::new(redis_store::RedisStore::open(url, service, w)?),
        };
        Ok(NameSpace {
            store,
            watchers,
            spec: spec.clone(),
        })
    }

    /// Where the names live.
    pub fn spec(&self) -> &StoreSpec {
        &self.spec
    }

    /// Stores `value` under `key`; `owner` (a [`MiddleMan::connection_id`]) binds it to
    /// that connection, and then whoever made the owner-bound store must also
    /// [`release`](NameSpace::release) it when the connection closes. Resolves once the
    /// store is as durable as the backend makes it.
    pub fn store(&self, key: Term, value: Term, owner: Option<Owner>) -> StoreFuture<()> {
        Box::pin(
            self.store
                .store(key, value, owner, None)
                .map(|r| r.map(drop)),
        )
    }

    /// Stores `value` under `key` only if the key's last change was at revision
    /// `if_revision` (0: the key is absent); otherwise [`Written::Conflict`] with its state.
    pub fn store_if(
        &self,
        key: Term,
        value: Term,
        owner: Option<Owner>,
        if_revision: u64,
    ) -> StoreFuture<Written> {
        self.store.store(key, value, owner, Some(if_revision))
    }

    /// The value under `key`.
    pub fn lookup(&self, key: &Term) -> StoreFuture<Option<Term>> {
        self.store.lookup(key.clone())
    }

    /// The value under `key` with its revisions.
    pub fn get(&self, key: &Term) -> StoreFuture<KeyState> {
        self.store.get(key.clone())
    }

    /// Removes `key` (also fine when it is absent).
    pub fn delete(&self, key: &Term) -> StoreFuture<()> {
        Box::pin(self.store.delete(key.clone(), None).map(|r| r.map(drop)))
    }

    /// Removes `key` only if its last change was at revision `if_revision`.
    pub fn delete_if(&self, key: &Term, if_revision: u64) -> StoreFuture<Written> {
        self.store.delete(key.clone(), Some(if_revision))
    }

    /// The name space's current revision.
    pub fn revision(&self) -> StoreFuture<u64> {
        self.store.revision()
    }

    /// Every key, in Erlang term order.
    pub fn names(&self) -> StoreFuture<Vec<Term>> {
        self.store.names()
    }

    /// `owner`'s connection closed: removes those of `keys` it still owns.
    pub fn release(&self, owner: Owner, keys: Vec<Term>) -> StoreFuture<()> {
        self.store.release(owner, keys)
    }

    /// `mm`'s connection watches `key` from now on, with pushes `{changed, K, Answer}`;
    /// resolves once changes by anyone (other servers included) will reach it.
    pub fn watch(&self, key: Term, mm: &MiddleMan) -> StoreFuture<()> {
        self.watchers.watch(key, mm, WatchForm::Plain);
        self.store.ready_to_watch()
    }

    /// `mm`'s connection watches `key` from now on, with pushes `{changed, K, Answer,
    /// ModRev}`, having seen its changes up to revision `since`. Resolves, once changes by
    /// anyone will reach it, to the catch-up: the key's state, to push at once if it
    /// changed after `since` (call [`CatchUp::deliver`] after answering the watch).
    pub fn watch_since(&self, key: Term, mm: &MiddleMan, since: u64) -> StoreFuture<CatchUp> {
        // Registered first: a change after this is pushed, one before it is in the state
        // read below, and the watcher's own record of what it was pushed drops doubles.
        self.watchers.watch(key.clone(), mm, WatchForm::Revisions);
        let ready = self.store.ready_to_watch();
        let store_get = self.store.get(key.clone());
        let watchers = Arc::clone(&self.watchers);
        let connection = mm.connection_id();
        Box::pin(async move {
            ready.await?;
            let state = store_get.await?;
            Ok(CatchUp {
                push: state.changed_since(since).map(|rev| (state.value, rev)),
                watchers,
                key,
                connection,
            })
        })
    }

    /// `connection` no longer watches `key`.
    pub fn unwatch(&self, key: &Term, connection: u64) {
        self.watchers.unwatch(key, connection);
    }
}

/// What a `{watch, K, Since}` pushes at once: the key's state if it changed after `Since`.
#[derive(Debug)]
pub struct CatchUp {
    watchers: Arc<Watchers>,
    key: Term,
    connection: u64,
    push: Option<(Option<Term>, u64)>,
}

impl CatchUp {
    /// Pushes the state (if there is one to push, and the watcher was not pushed it or a
    /// later one already).
    pub fn deliver(self) {
        if let Some((value, rev)) = &self.push {
            self.watchers
                .offer(&self.key, self.connection, value.as_ref(), *rev);
        }
    }
}

/// The name server service.
#[derive(Debug, Default)]
pub struct NameServer {
    space: Arc<NameSpace>,
    session_names: Arc<SessionNames>,
}

/// The `#{owner => session}` names of each live session, to release when it ends.
#[derive(Debug, Default)]
struct SessionNames(std::sync::Mutex<std::collections::HashMap<SessionId, HashSet<Term>>>);

impl SessionNames {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<SessionId, HashSet<Term>>> {
        // One map operation per change: consistent after a panic.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, session: SessionId, key: Term) {
        self.lock().entry(session).or_default().insert(key);
    }

    fn take(&self, session: &SessionId) -> Vec<Term> {
        self.lock()
            .remove(session)
            .map(|keys| keys.into_iter().collect())
            .unwrap_or_default()
    }
}

impl NameServer {
    /// A name server with an empty name space in memory.
    pub fn new() -> NameServer {
        NameServer::default()
    }

    /// The name server for a `[[service]]` entry: its `store` key picks the name space.
    ///
    /// # Errors
    /// The `store` value is bad, or the store cannot be opened (the message names the
    /// file or URL).
    pub fn open(config: &ServiceConfig) -> Result<NameServer, String> {
        let spec = StoreSpec::parse(config.options.store.as_deref())?;
        Ok(NameServer::with_space(Arc::new(NameSpace::open(
            &spec,
            &config.name,
        )?)))
    }

    /// A name server on `space`.
    pub fn with_space(space: Arc<NameSpace>) -> NameServer {
        NameServer {
            space,
            session_names: Arc::default(),
        }
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
    /// The connection's session, for `#{owner => session}` names.
    session: Option<SessionId>,
    session_names: Arc<SessionNames>,
}

/// A request's answer: the reply, and for a `{watch, K, Since}` the state to push after it.
struct Answer {
    reply: Term,
    catch_up: Option<CatchUp>,
}

impl From<Term> for Answer {
    fn from(reply: Term) -> Answer {
        Answer {
            reply,
            catch_up: None,
        }
    }
}

fn answer_with<T: 'static>(
    pending: StoreFuture<T>,
    reply: impl FnOnce(T) -> Term + Send + 'static,
) -> StoreFuture<Answer> {
    Box::pin(pending.map(|r| r.map(|v| Answer::from(reply(v)))))
}

impl ConnectionState {
    /// Hands `request` to the store and returns its answer, to await. The request's
    /// place among this connection's others is fixed by this call.
    fn submit(&mut self, request: Request) -> StoreFuture<Answer> {
        let space = &self.space;
        match request {
            Request::Store {
                key,
                value,
                owner,
                if_revision,
            } => {
                // Recorded even if a condition fails: releasing a key the owner does not
                // own removes nothing.
                let owner = match owner {
                    None => None,
                    Some(OwnedBy::Channel) => {
                        self.owned.insert(key.clone());
                        Some(self.middle_man.connection_id())
                    }
                    Some(OwnedBy::Session) => {
                        let Some(session) = self.session else {
                            return Box::pin(std::future::ready(Err(StoreError::BadTerm(
                                "owner => session on a connection without a session".into(),
                            ))));
                        };
                        self.session_names.add(session, key.clone());
                        Some(session.owner_key())
                    }
                };
                answer_with(space.store.store(key, value, owner, if_revision), |w| {
                    w.reply()
                })
            }
            Request::Lookup(key) => answer_with(space.lookup(&key), |v| store::answer(v.as_ref())),
            Request::Get(key) => answer_with(space.get(&key), |s| s.get_reply()),
            Request::Delete { key, if_revision } => {
                answer_with(space.store.delete(key, if_revision), |w| w.reply())
            }
            Request::Names => answer_with(space.names(), Term::list),
            Request::Revision => answer_with(space.revision(), revision::rev_term),
            Request::Watch { key, since: None } => {
                self.watched.insert(key.clone());
                answer_with(space.watch(key, &self.middle_man), |()| Term::atom("true"))
            }
            Request::Watch {
                key,
                since: Some(since),
            } => {
                self.watched.insert(key.clone());
                Box::pin(space.watch_since(key, &self.middle_man, since).map(|r| {
                    r.map(|c| Answer {
                        reply: Term::atom("true"),
                        catch_up: Some(c),
                    })
                }))
            }
            Request::Unwatch(key) => {
                space.unwatch(&key, self.middle_man.connection_id());
                self.watched.remove(&key);
                Box::pin(std::future::ready(Ok(Answer::from(Term::atom("true")))))
            }
        }
    }
}

impl Drop for ConnectionState {
    fn drop(&mut self) {
        let connection = self.middle_man.connection_id();
        for key in &self.watched {
            self.space.unwatch(key, connection);
        }
        if !self.owned.is_empty() {
            // Placed now, after everything this connection did; it takes effect without
            // being awaited, and each store logs its own failures.
            let owned = std::mem::take(&mut self.owned).into_iter().collect();
            drop(self.space.release(connection, owned));
        }
    }
}

/// Answers `call` with the outcome of its request (then pushes a watch's catch-up).
fn answer_call(call: Call, outcome: Result<Answer, StoreError>, mm: &MiddleMan) {
    match outcome {
        Ok(answer) => {
            call.reply(answer.reply);
            if let Some(c) = answer.catch_up {
                c.deliver();
            }
        }
        Err(StoreError::BadTerm(e)) => {
            tracing::info!(peer = %mm.peer(), error = %e, "name server refused a term");
            call.bad_request();
        }
        Err(e) => {
            tracing::warn!(peer = %mm.peer(), error = %e, "name server call failed");
            call.fail(Term::atom("store_unavailable"));
        }
    }
}

impl Service for NameServer {
    /// `#{store => <<"file:...">>, healthy => true | false}`: the store answers a lookup
    /// (of a key no client can mean) or not.
    fn status(&self) -> Option<lib_chan_server::StatusFuture> {
        let space = Arc::clone(&self.space);
        Some(Box::pin(async move {
            let healthy = space
                .lookup(&Term::tuple([Term::atom("$lib_chan_health")]))
                .await
                .is_ok();
            Term::map([
                (
                    Term::atom("store"),
                    Term::binary(space.spec().to_string().as_bytes()),
                ),
                (
                    Term::atom("healthy"),
                    Term::atom(if healthy { "true" } else { "false" }),
                ),
            ])
        }))
    }

    /// A session ended: its `#{owner => session}` names go (each a change its watchers
    /// hear of), placed now and taking effect without being awaited. On a store shared
    /// with other servers, not if one of them holds the session now.
    fn session_ended(&self, id: &SessionId) {
        let keys = self.session_names.take(id);
        let key = store::SessionKey::new(id, "");
        drop(self.space.store.end_session(&key, keys));
    }

    fn session_started(&self, id: &SessionId, owner: &str) {
        self.space
            .store
            .session_started(&store::SessionKey::new(id, owner));
    }

    fn adopt_session(&self, id: &SessionId, owner: &str) -> Option<lib_chan_server::ReadyFuture> {
        let adopting = self
            .space
            .store
            .adopt_session(&store::SessionKey::new(id, owner));
        Some(Box::pin(adopting.map(|r| r.unwrap_or(false))))
    }

    /// `{lookup, K}` on a store that keeps its names in memory, answered in the middle
    /// man's task (the handler would do the same, later and on another task). Every
    /// other request, and lookups on the file and Redis stores, go to the handler.
    fn answer_now(&self, request: &Term, _identity: &Identity) -> Option<Term> {
        // `{lookup, K}` as `Request::from_term` reads it, matched here directly: a full
        // parse would be done again by the handler for every call that is not a lookup.
        let [tag, key] = request.as_tuple()? else {
            return None;
        };
        if !tag.is_atom("lookup") {
            return None;
        }
        let value = self.space.store.lookup_now(key)?;
        Some(store::answer(value.as_ref()))
    }

    fn start(self: Arc<Self>, mut session: Session) -> HandlerFuture {
        Box::pin(async move {
            let mm = session.middle_man().clone();
            // A user given `read_only` for this service: stores and deletes are refused.
            let read_only = session.identity().is_read_only();
            let mut state = ConnectionState {
                space: Arc::clone(&self.space),
                middle_man: mm.clone(),
                owned: HashSet::new(),
                watched: HashSet::new(),
                session: session.session_id(),
                session_names: Arc::clone(&self.session_names),
            };
            while let Some(event) = session.next_event().await {
                match event {
                    Event::Call(call) => match Request::from_term(call.request()) {
                        Some(request) if read_only && request.writes() => {
                            call.fail(Term::atom("forbidden"));
                        }
                        Some(request) => {
                            let mut pending = state.submit(request);
                            // The memory store is done already: answer without a task.
                            match (&mut pending).now_or_never() {
                                Some(outcome) => answer_call(call, outcome, &mm),
                                None => {
                                    let mm = mm.clone();
                                    tokio::spawn(async move {
                                        answer_call(call, pending.await, &mm);
                                    });
                                }
                            }
                        }
                        None => call.bad_request(),
                    },
                    Event::Send(x) => match Request::from_term(&x) {
                        Some(request) if read_only && request.writes() => {
                            tracing::info!(peer = %mm.peer(), user = session.identity().user().unwrap_or("-"), "name server refused a read-only user's change");
                        }
                        Some(request) => {
                            let answers = request.answers_sends();
                            let mut pending = state.submit(request);
                            if answers {
                                match pending.await {
                                    Ok(answer) => {
                                        if mm.send(answer.reply).await.is_err() {
                                            break;
                                        }
                                    }
                                    Err(e) => {
                                        tracing::warn!(peer = %mm.peer(), error = %e, "name server send failed")
                                    }
                                }
                            } else {
                                let finish =
                                    |outcome: Result<Answer, StoreError>, mm: &MiddleMan| {
                                        match outcome {
                                            Ok(answer) => {
                                                if let Some(c) = answer.catch_up {
                                                    c.deliver();
                                                }
                                            }
                                            Err(e) => {
                                                tracing::warn!(peer = %mm.peer(), error = %e, "name server send failed");
                                            }
                                        }
                                    };
                                match (&mut pending).now_or_never() {
                                    Some(outcome) => finish(outcome, &mm),
                                    None => {
                                        let mm = mm.clone();
                                        tokio::spawn(async move { finish(pending.await, &mm) });
                                    }
                                }
                            }
                        }
                        None => {
                            let shown = lib_chan_protocol::message::snippet(&x, 80);
                            tracing::info!(peer = %mm.peer(), request = %shown, "name server ignored an unknown send");
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
                owner: None,
                if_revision: None,
            })
        );
        assert!(matches!(
            p("{store, k, v, #{owner => channel}}"),
            Some(Request::Store {
                owner: Some(OwnedBy::Channel),
                ..
            })
        ));
        assert_eq!(p("{store, k, v, #{owner => me}}"), None);
        assert!(matches!(
            p("{store, k, v, #{owner => channel, if_revision => 0}}"),
            Some(Request::Store {
                owner: Some(OwnedBy::Channel),
                if_revision: Some(0),
                ..
            })
        ));
        // A misspelt or bad condition is refused, never taken as unconditional.
        assert_eq!(
            p("{store, k, v, #{owner => session}}"),
            Some(Request::Store {
                key: term!(k),
                value: term!(v),
                owner: Some(OwnedBy::Session),
                if_revision: None,
            })
        );
        assert_eq!(p("{store, k, v, #{if_rev => 3}}"), None);
        assert_eq!(p("{store, k, v, #{if_revision => -1}}"), None);
        assert_eq!(p("{delete, k, #{owner => channel}}"), None);
        assert_eq!(
            p("{delete, k, #{if_revision => 4}}"),
            Some(Request::Delete {
                key: term!(k),
                if_revision: Some(4)
            })
        );
        assert_eq!(
            p("{watch, k, 7}"),
            Some(Request::Watch {
                key: term!(k),
                since: Some(7)
            })
        );
        assert_eq!(p("{watch, k, seven}"), None);
        assert_eq!(p("revision"), Some(Request::Revision));
        assert_eq!(p("{get, k}"), Some(Request::Get(term!(k))));
        assert_eq!(p("{lookup, jim}"), Some(Request::Lookup(term!(jim))));
        assert_eq!(p("names"), Some(Request::Names));
        assert_eq!(p("{lookup, a, b}"), None);
        assert_eq!(p("lookup"), None);
        assert_eq!(p("{}"), None);
    }

    /// The memory store answers at once: its futures are ready when returned.
    fn now<T>(f: StoreFuture<T>) -> T {
        f.now_or_never().expect("ready").expect("ok")
    }

    #[test]
    fn keys_are_exact_terms_and_names_are_sorted() {
        let space = NameSpace::default();
        now(space.store(Term::Int(1), term!(int), None));
        now(space.store(Term::Float(1.0), term!(float), None));
        now(space.store(term!(b), term!(x), None));
        now(space.store(term!("a"), term!(y), None));
        now(space.store(term!({ a }), term!(z), None));
        assert_eq!(now(space.lookup(&Term::Int(1))), Some(term!(int)));
        assert_eq!(now(space.lookup(&Term::Float(1.0))), Some(term!(float)));
        assert_eq!(
            Term::list(now(space.names())).to_string(),
            r#"[1,1.0,b,{a},"a"]"#
        );
        now(space.delete(&term!(b)));
        now(space.delete(&term!(never_there)));
        assert_eq!(now(space.lookup(&term!(b))), None);
    }

    #[test]
    fn a_file_name_space_keeps_its_names_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let spec = StoreSpec::File(dir.path().join("names.redb"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let space = NameSpace::open(&spec, "nameServer").unwrap();
            space.store(term!(joe), term!(1), None).await.unwrap();
        });
        rt.block_on(async {
            let space = NameSpace::open(&spec, "nameServer").unwrap();
            assert_eq!(space.lookup(&term!(joe)).await.unwrap(), Some(term!(1)));
            assert_eq!(space.spec(), &spec);
        });
    }
}
