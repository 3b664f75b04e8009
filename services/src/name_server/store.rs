//! Where a name server keeps its names: the [`NameStore`] trait, the `store` key that
//! picks an implementation ([`StoreSpec`]), and the in-memory one ([`MemoryStore`]).
//!
//! Three implementations, one per `store` value:
//! - `memory` ([`MemoryStore`]): the book's `kvs`, a map behind a mutex; gone when the
//!   server stops;
//! - `file:PATH` ([`FileStore`](super::file_store::FileStore)): a redb file, durable
//!   before a store is answered, with group commit;
//! - `redis://HOST:PORT/DB` or `rediss://...`
//!   ([`RedisStore`](super::redis_store::RedisStore)): a name space several channel
//!   servers share, with changes fanned out over Redis pub/sub.
//!
//! # The ordering contract
//! Every method does its ordering work when it is *called*, synchronously, and returns a
//! `'static` future that only waits for the outcome. Operations called one after another
//! (by one connection's handler, say) take effect in that order even when the caller does
//! not wait between them, so a client may pipeline `{store, K, V}` and `{lookup, K}` and
//! the lookup sees the store. An operation also takes effect when its future is dropped
//! unpolled. This is what lets the handler keep many calls in flight (so that stores
//! from one connection share a commit) without reordering them.
//!
//! # Changes
//! Each store reports every change it makes to its [`Watchers`], with its revision, in the
//! order the changes took effect, so that a watcher's last `{changed, Key, Answer}` is the
//! key's state.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use lib_chan_protocol::Term;
use lib_chan_server::MiddleMan;

use super::revision::{rev_term, KeyState, Tombstones, Written};

/// The outcome of a store operation, to await (see the module docs for when the
/// operation takes effect).
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// A connection id ([`MiddleMan::connection_id`]): owner-bound names belong to one.
pub type Owner = u64;

/// A store operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot be reached or written: a disk error, Redis down, a timeout.
    #[error("name store unavailable: {0}")]
    Unavailable(String),
    /// A key or value the store cannot hold, e.g. a NaN float in a durable store.
    #[error("term cannot be stored: {0}")]
    BadTerm(String),
}

/// Where a name space lives: the service entry's `store` key, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// `memory` (also when `store` is absent): the book's kvs.
    Memory,
    /// `file:PATH`: a redb file (the config loader has made a relative PATH absolute).
    File(PathBuf),
    /// `redis://...` or `rediss://...`: the URL as written.
    Redis(String),
}

impl StoreSpec {
    /// Parses a `store` value; `None` is memory. Checks the syntax only: nothing is
    /// opened or connected, so config validation has no side effects.
    ///
    /// # Errors
    /// A message for the config error, naming the bad value.
    pub fn parse(store: Option<&str>) -> Result<StoreSpec, String> {
        let Some(text) = store else {
            return Ok(StoreSpec::Memory);
        };
        if text == "memory" {
            return Ok(StoreSpec::Memory);
        }
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                return Err("store \"file:\" needs a path, e.g. \"file:names.redb\"".into());
            }
            return Ok(StoreSpec::File(PathBuf::from(path)));
        }
        if text.starts_with("redis://") || text.starts_with("rediss://") {
            return match redis::Client::open(text) {
                Ok(_) => Ok(StoreSpec::Redis(text.to_owned())),
                Err(e) => Err(format!(
                    "store \"{}\" is not a usable Redis URL: {e}",
                    redact(text)
                )),
            };
        }
        Err(format!(
            "store \"{}\" is not supported; use \"memory\", \"file:PATH\" or \
             \"redis://HOST:PORT/DB\" (\"rediss://\" for TLS)",
            redact(text)
        ))
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Memory => f.write_str("memory"),
            StoreSpec::File(p) => write!(f, "file:{}", p.display()),
            StoreSpec::Redis(url) => f.write_str(&redact(url)),
        }
    }
}

/// A URL with any password replaced by `***`, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// Where a name space's names are kept. One value per `[[service]]` entry, shared by its
/// connections; see the module docs for the ordering contract every method keeps, and
/// [`revision`](super::revision) for the revisions every store keeps.
pub trait NameStore: Send + Sync + fmt::Debug + 'static {
    /// Stores `value` under `key`, replacing any value; `owner` binds the name to that
    /// connection (see [`NameStore::release`]); `if_revision` makes it conditional
    /// (PROTOCOL.md 7.1). Answered once the store is as durable as the backend makes it.
    fn store(
        &self,
        key: Term,
        value: Term,
        owner: Option<Owner>,
        if_revision: Option<u64>,
    ) -> StoreFuture<Written>;

    /// The value under `key`, seeing every operation called before this one.
    fn lookup(&self, key: Term) -> StoreFuture<Option<Term>>;

    /// `key`'s value and revisions, seeing every operation called before this one.
    fn get(&self, key: Term) -> StoreFuture<KeyState>;

    /// The value under `key` at once, for a store that holds its names in memory:
    /// `Some(answer)` is what [`lookup`](NameStore::lookup) would resolve to, with no
    /// future made or awaited. `None` (the default): ask [`lookup`](NameStore::lookup).
    fn lookup_now(&self, key: &Term) -> Option<Option<Term>> {
        let _ = key;
        None
    }

    /// Removes `key` (nothing to do when it is absent); `if_revision` as for a store.
    fn delete(&self, key: Term, if_revision: Option<u64>) -> StoreFuture<Written>;

    /// The name space's current revision.
    fn revision(&self) -> StoreFuture<u64>;

    /// Every key, sorted in Erlang term order.
    fn names(&self) -> StoreFuture<Vec<Term>>;

    /// `owner`'s connection closed: removes those of `keys` that are still bound to it
    /// (a key stored since by someone else stays).
    fn release(&self, owner: Owner, keys: Vec<Term>) -> StoreFuture<()>;

    /// Resolves once changes made by others (other channel servers) will reach the
    /// watchers, so that a `{watch, K}` answered `true` misses nothing after it.
    fn ready_to_watch(&self) -> StoreFuture<()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// A session started on this server (PROTOCOL.md 8). A store shared by several
    /// servers records it, so that another may adopt it. The default does nothing.
    fn session_started(&self, session: &SessionKey) {
        let _ = session;
    }

    /// Another server's session is resumed here: `true` when the store knows it for
    /// `session.owner` and it has not ended (from then on this server holds it). The
    /// default: no other server's sessions are known.
    fn adopt_session(&self, session: &SessionKey) -> StoreFuture<bool> {
        let _ = session;
        Box::pin(std::future::ready(Ok(false)))
    }

    /// The session ended on this server: its `#{owner => session}` names go (`keys`, and
    /// for a shared store every name recorded with it), each a change with a revision,
    /// unless another server holds the session now. The default releases `keys`.
    fn end_session(&self, session: &SessionKey, keys: Vec<Term>) -> StoreFuture<()> {
        if keys.is_empty() {
            return Box::pin(std::future::ready(Ok(())));
        }
        self.release(session.owner_key, keys)
    }
}

/// A session as the stores see it.
#[derive(Debug, Clone)]
pub struct SessionKey {
    /// The full id, in hex (what proves a resume elsewhere is of this session).
    pub id_hex: String,
    /// [`SessionId::owner_key`](lib_chan_server::SessionId::owner_key): what its names
    /// are bound to.
    pub owner_key: Owner,
    /// Who may resume it: `service_password` or `user:NAME`.
    pub owner: String,
}

impl SessionKey {
    /// The key of session `id`, belonging to `owner`.
    pub fn new(id: &lib_chan_server::SessionId, owner: &str) -> SessionKey {
        SessionKey {
            id_hex: id.as_bytes().iter().map(|b| format!("{b:02x}")).collect(),
            owner_key: id.owner_key(),
            owner: owner.to_owned(),
        }
    }
}

/// `{ok, V}` or `undefined`.
pub(crate) fn answer(value: Option<&Term>) -> Term {
    match value {
        Some(v) => Term::tuple([Term::atom("ok"), v.clone()]),
        None => Term::atom("undefined"),
    }
}

/// The value an answer (`{ok, V}` or `undefined`) carries; `Err` for anything else.
pub(crate) fn value_of(answer: &Term) -> Result<Option<Term>, ()> {
    match answer.as_tuple() {
        Some([ok, v]) if ok.is_atom("ok") => Ok(Some(v.clone())),
        _ if answer.is_atom("undefined") => Ok(None),
        _ => Err(()),
    }
}

/// `{changed, Key, Answer}`.
pub(crate) fn change(key: &Term, value: Option<&Term>) -> Term {
    Term::tuple([Term::atom("changed"), key.clone(), answer(value)])
}

/// How a connection asked to watch a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchForm {
    /// `{watch, K}` (version 1): pushes `{changed, K, Answer}`.
    Plain,
    /// `{watch, K, Since}` (version 2): pushes `{changed, K, Answer, ModRev}`.
    Revisions,
}

struct Watcher {
    middle_man: MiddleMan,
    form: WatchForm,
    /// The highest revision pushed to it: a change is never pushed twice, nor an older
    /// state after a newer one.
    last: u64,
}

impl Watcher {
    fn push(&mut self, key: &Term, value: Option<&Term>, mod_rev: u64) -> bool {
        if mod_rev <= self.last {
            return true;
        }
        self.last = mod_rev;
        let change = match self.form {
            WatchForm::Plain => change(key, value),
            WatchForm::Revisions => Term::tuple([
                Term::atom("changed"),
                key.clone(),
                answer(value),
                rev_term(mod_rev),
            ]),
        };
        self.middle_man.try_send_or_close(change)
    }
}

type WatchTable = HashMap<Term, HashMap<u64, Watcher>>;

/// The connections watching each key, local to this server process: stores report
/// changes here (with their revisions) and it pushes `{changed, ...}` to the watchers.
#[derive(Default)]
pub struct Watchers {
    by_key: Mutex<WatchTable>,
}

impl fmt::Debug for Watchers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watchers")
            .field("keys", &self.lock().len())
            .finish()
    }
}

impl Watchers {
    fn lock(&self) -> MutexGuard<'_, WatchTable> {
        // Every change under this lock is one map operation: a panic cannot leave it
        // half made, so the data is still consistent after one.
        self.by_key.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `mm`'s connection now watches `key`, in `form` (a second watch of the same key
    /// changes the form and keeps what was pushed).
    pub fn watch(&self, key: Term, mm: &MiddleMan, form: WatchForm) {
        self.lock()
            .entry(key)
            .or_default()
            .entry(mm.connection_id())
            .and_modify(|w| w.form = form)
            .or_insert(Watcher {
                middle_man: mm.clone(),
                form,
                last: 0,
            });
    }

    /// `connection` no longer watches `key`.
    pub fn unwatch(&self, key: &Term, connection: u64) {
        let mut by_key = self.lock();
        if let Some(w) = by_key.get_mut(key) {
            w.remove(&connection);
            if w.is_empty() {
                by_key.remove(key);
            }
        }
    }

    /// True when someone watches `key`.
    pub fn is_watched(&self, key: &Term) -> bool {
        self.lock().contains_key(key)
    }

    /// `key` changed to `value` (`None`: removed) at revision `mod_rev`: tells its
    /// watchers. The push never waits: a watcher too slow to take it is closed rather
    /// than let it grow memory. Callers report changes in the order they took effect.
    pub fn notify(&self, key: &Term, value: Option<&Term>, mod_rev: u64) {
        let mut by_key = self.lock();
        let Some(watchers) = by_key.get_mut(key) else {
            return;
        };
        watchers.retain(|_, w| w.push(key, value, mod_rev));
        if watchers.is_empty() {
            by_key.remove(key);
        }
    }

    /// Pushes `key`'s state at `mod_rev` to `connection` alone (a `{watch, K, Since}`
    /// catching up), unless it was pushed that revision or a later one already.
    pub fn offer(&self, key: &Term, connection: u64, value: Option<&Term>, mod_rev: u64) {
        let mut by_key = self.lock();
        let Some(watchers) = by_key.get_mut(key) else {
            return;
        };
        if let Some(w) = watchers.get_mut(&connection) {
            if !w.push(key, value, mod_rev) {
                watchers.remove(&connection);
            }
        }
        if watchers.is_empty() {
            by_key.remove(key);
        }
    }
}

struct Entry {
    value: Term,
    /// The connection whose close removes this entry, for owner-bound stores.
    owner: Option<Owner>,
    /// The revision of its last change.
    mod_rev: u64,
}

#[derive(Default)]
struct Names {
    entries: HashMap<Term, Entry>,
    revision: u64,
    tombstones: Tombstones,
}

impl Names {
    fn state(&self, key: &Term) -> KeyState {
        let (value, mod_rev) = match self.entries.get(key) {
            Some(e) => (Some(e.value.clone()), e.mod_rev),
            None => (None, self.tombstones.get(key).unwrap_or(0)),
        };
        KeyState {
            value,
            mod_rev,
            revision: self.revision,
            floor: self.tombstones.floor(),
        }
    }

    /// The state, if `if_revision` does not admit a change to `key`.
    fn conflict(&self, key: &Term, if_revision: Option<u64>) -> Option<KeyState> {
        let cond = if_revision?;
        let state = self.state(key);
        (!state.admits(cond)).then_some(state)
    }

    /// Removes `key` as a change (it is present): returns the revision of the removal.
    fn remove(&mut self, key: &Term) -> u64 {
        self.entries.remove(key);
        self.revision += 1;
        self.tombstones.insert(key.clone(), self.revision);
        self.revision
    }
}

/// `store = "memory"`: the book's kvs, a map behind a mutex. Every operation is done when
/// it is called; the futures are ready at once.
pub struct MemoryStore {
    names: Mutex<Names>,
    watchers: Arc<Watchers>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

fn ready<T: Send + 'static>(v: T) -> StoreFuture<T> {
    Box::pin(std::future::ready(Ok(v)))
}

impl MemoryStore {
    /// An empty store reporting its changes to `watchers`.
    pub fn new(watchers: Arc<Watchers>) -> MemoryStore {
        MemoryStore {
            names: Mutex::default(),
            watchers,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Names> {
        // One map operation per change: still consistent after a panic.
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl NameStore for MemoryStore {
    fn store(
        &self,
        key: Term,
        value: Term,
        owner: Option<Owner>,
        if_revision: Option<u64>,
    ) -> StoreFuture<Written> {
        let mut names = self.lock();
        if let Some(state) = names.conflict(&key, if_revision) {
            return ready(Written::Conflict(state));
        }
        names.revision += 1;
        let mod_rev = names.revision;
        if !names.tombstones.is_empty() {
            names.tombstones.remove(&key);
        }
        // Notified with the lock held, so watchers see changes in the order made.
        self.watchers.notify(&key, Some(&value), mod_rev);
        names.entries.insert(
            key,
            Entry {
                value,
                owner,
                mod_rev,
            },
        );
        ready(Written::Done)
    }

    fn lookup(&self, key: Term) -> StoreFuture<Option<Term>> {
        ready(self.lookup_now(&key).flatten())
    }

    fn lookup_now(&self, key: &Term) -> Option<Option<Term>> {
        Some(self.lock().entries.get(key).map(|e| e.value.clone()))
    }

    fn get(&self, key: Term) -> StoreFuture<KeyState> {
        ready(self.lock().state(&key))
    }

    fn delete(&self, key: Term, if_revision: Option<u64>) -> StoreFuture<Written> {
        let mut names = self.lock();
        if let Some(state) = names.conflict(&key, if_revision) {
            return ready(Written::Conflict(state));
        }
        if names.entries.contains_key(&key) {
            let rev = names.remove(&key);
            self.watchers.notify(&key, None, rev);
        }
        ready(Written::Done)
    }

    fn revision(&self) -> StoreFuture<u64> {
        ready(self.lock().revision)
    }

    fn names(&self) -> StoreFuture<Vec<Term>> {
        let mut keys: Vec<Term> = self.lock().entries.keys().cloned().collect();
        keys.sort();
        ready(keys)
    }

    fn release(&self, owner: Owner, keys: Vec<Term>) -> StoreFuture<()> {
        let mut names = self.lock();
        for key in keys {
            if names
                .entries
                .get(&key)
                .is_some_and(|e| e.owner == Some(owner))
            {
                let rev = names.remove(&key);
                self.watchers.notify(&key, None, rev);
            }
        }
        ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_values_parse_and_bad_ones_say_why() {
        assert_eq!(StoreSpec::parse(None), Ok(StoreSpec::Memory));
        assert_eq!(StoreSpec::parse(Some("memory")), Ok(StoreSpec::Memory));
        assert_eq!(
            StoreSpec::parse(Some("file:/var/lib/names.redb")),
            Ok(StoreSpec::File("/var/lib/names.redb".into()))
        );
        assert!(matches!(
            StoreSpec::parse(Some("redis://127.0.0.1:6379/2")),
            Ok(StoreSpec::Redis(_))
        ));
        assert!(matches!(
            StoreSpec::parse(Some("rediss://cache.example:6380/0")),
            Ok(StoreSpec::Redis(_))
        ));
        for bad in ["ftp://x", "file:", "Memory", "", "redis://host:notaport/0"] {
            let e = StoreSpec::parse(Some(bad)).unwrap_err();
            assert!(e.contains("store"), "{bad}: {e}");
        }
        let e = StoreSpec::parse(Some("ftp://x")).unwrap_err();
        assert!(e.contains("\"ftp://x\"") && e.contains("file:PATH"), "{e}");
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("redis://:hunter2@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(redact("rediss://app:hunter2@db/0"), "rediss://app:***@db/0");
        assert_eq!(redact("redis://db:6379/0"), "redis://db:6379/0");
        let spec = StoreSpec::Redis("redis://u:hunter2@db/1".into());
        assert!(!spec.to_string().contains("hunter2"));
        let e = StoreSpec::parse(Some("redis://u:hunter2@db:bad/1")).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
