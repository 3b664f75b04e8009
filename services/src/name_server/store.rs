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
//! Each store reports every change it makes to its [`Watchers`], in the order the changes
//! took effect, so that a watcher's last `{changed, Key, Answer}` is the key's state.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use lib_chan_protocol::Term;
use lib_chan_server::MiddleMan;

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
/// connections; see the module docs for the ordering contract every method keeps.
pub trait NameStore: Send + Sync + fmt::Debug + 'static {
    /// Stores `value` under `key`, replacing any value; `owner` binds the name to that
    /// connection (see [`NameStore::release`]). Answered once the store is as durable as
    /// the backend makes it.
    fn store(&self, key: Term, value: Term, owner: Option<Owner>) -> StoreFuture<()>;

    /// The value under `key`, seeing every operation called before this one.
    fn lookup(&self, key: Term) -> StoreFuture<Option<Term>>;

    /// Removes `key`; succeeds also when it was absent.
    fn delete(&self, key: Term) -> StoreFuture<()>;

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
}

/// `{ok, V}` or `undefined`.
pub(crate) fn answer(value: Option<&Term>) -> Term {
    match value {
        Some(v) => Term::tuple([Term::atom("ok"), v.clone()]),
        None => Term::atom("undefined"),
    }
}

/// `{changed, Key, Answer}`.
pub(crate) fn change(key: &Term, value: Option<&Term>) -> Term {
    Term::tuple([Term::atom("changed"), key.clone(), answer(value)])
}

/// The connections watching each key, local to this server process: stores report
/// changes here and it pushes `{changed, Key, Answer}` to the watchers.
#[derive(Default)]
pub struct Watchers {
    by_key: Mutex<HashMap<Term, HashMap<u64, MiddleMan>>>,
}

impl fmt::Debug for Watchers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watchers")
            .field("keys", &self.lock().len())
            .finish()
    }
}

impl Watchers {
    fn lock(&self) -> MutexGuard<'_, HashMap<Term, HashMap<u64, MiddleMan>>> {
        // Every change under this lock is one map operation: a panic cannot leave it
        // half made, so the data is still consistent after one.
        self.by_key.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `mm`'s connection now watches `key`.
    pub fn watch(&self, key: Term, mm: &MiddleMan) {
        self.lock()
            .entry(key)
            .or_default()
            .insert(mm.connection_id(), mm.clone());
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

    /// `key` changed to `value` (`None`: removed): tells its watchers.
    pub fn notify(&self, key: &Term, value: Option<&Term>) {
        if self.is_watched(key) {
            self.push(key, change(key, value));
        }
    }

    /// Pushes `change` (a `{changed, Key, Answer}` term) to the watchers of `key`. The
    /// push never waits: a watcher too slow to take it is closed rather than let it grow
    /// memory. Callers report changes in the order they took effect and this keeps it.
    pub fn push(&self, key: &Term, change: Term) {
        let mut by_key = self.lock();
        let Some(watchers) = by_key.get_mut(key) else {
            return;
        };
        watchers.retain(|_, mm| mm.try_send_or_close(change.clone()));
        if watchers.is_empty() {
            by_key.remove(key);
        }
    }
}

struct Entry {
    value: Term,
    /// The connection whose close removes this entry, for owner-bound stores.
    owner: Option<Owner>,
}

/// `store = "memory"`: the book's kvs, a map behind a mutex. Every operation is done when
/// it is called; the futures are ready at once.
pub struct MemoryStore {
    entries: Mutex<HashMap<Term, Entry>>,
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
            entries: Mutex::default(),
            watchers,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Term, Entry>> {
        // One map operation per change: still consistent after a panic.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl NameStore for MemoryStore {
    fn store(&self, key: Term, value: Term, owner: Option<Owner>) -> StoreFuture<()> {
        let mut entries = self.lock();
        // Notified with the lock held, so watchers see changes in the order made.
        self.watchers.notify(&key, Some(&value));
        entries.insert(key, Entry { value, owner });
        ready(())
    }

    fn lookup(&self, key: Term) -> StoreFuture<Option<Term>> {
        ready(self.lock().get(&key).map(|e| e.value.clone()))
    }

    fn delete(&self, key: Term) -> StoreFuture<()> {
        let mut entries = self.lock();
        if entries.remove(&key).is_some() {
            self.watchers.notify(&key, None);
        }
        ready(())
    }

    fn names(&self) -> StoreFuture<Vec<Term>> {
        let mut keys: Vec<Term> = self.lock().keys().cloned().collect();
        keys.sort();
        ready(keys)
    }

    fn release(&self, owner: Owner, keys: Vec<Term>) -> StoreFuture<()> {
        let mut entries = self.lock();
        for key in keys {
            if entries.get(&key).is_some_and(|e| e.owner == Some(owner)) {
                entries.remove(&key);
                self.watchers.notify(&key, None);
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
