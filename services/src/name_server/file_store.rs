//! `store = "file:PATH"`: the name space in a redb file, durable before a store is
//! answered, with group commit.
//!
//! # Layout
//! Keys are canonical ETF bytes (`lib_chan_protocol::encode`), so two keys are the same
//! key exactly when they are the same term. A name's value is stored as one byte 1, the
//! revision of its last change (8 bytes, big-endian), then the value's ETF bytes (a file
//! written before revisions holds bare ETF values, which begin with 131: opening it numbers
//! its names once, in key order).
//! - `names`: the names stored plainly;
//! - `owned`: the owner-bound names. Which connection owns each lives only in memory:
//!   connections do not outlive the process, so when the store opens, `owned` is emptied
//!   (its owners all closed when the previous process ended, however it ended), each
//!   removal a change with its revision;
//! - `meta`: `revision` (the name space's) and `floor` (the highest forgotten deletion);
//! - `tombstones` (key to deletion revision) and `tombstone_revs` (the same, by revision,
//!   to forget the oldest first), at most [`MAX_TOMBSTONES`].
//!
//! A key is in at most one of `names` and `owned`. Keeping owner-bound names in the file
//! too matters: an owner-bound store over a plain name must durably remove the plain one.
//! Revisions are committed with the changes they number, so they survive a restart.
//!
//! # Durability and group commit
//! One writer thread owns every write. Callers send it operations over a channel; it
//! takes the first, drains whatever else is waiting (up to [`MAX_BATCH`]), applies them
//! all in one write transaction, commits it with `Durability::Immediate` (redb writes and
//! fsyncs before `commit` returns), and only then tells the watchers and answers every
//! caller. While it is committing, new operations queue up and become the next batch, so
//! concurrent writers share one fsync and the number of commits adapts to the load.
//!
//! Reads run on tokio's blocking pool, in their own read transactions. Each read first
//! waits until every write called before it has been committed (or failed), which keeps
//! the ordering contract of [`NameStore`] (a pipelined `{lookup, K}` sees the `{store,
//! K, V}` before it) at no cost when no write is pending.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use futures_util::FutureExt;
use lib_chan_protocol::Term;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tokio::sync::{oneshot, watch};

use super::revision::{KeyState, Written, MAX_TOMBSTONES};
use super::store::{NameStore, Owner, StoreError, StoreFuture, Watchers};

/// Plain names: ETF key to stored value ([`stored`]).
const NAMES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("names");
/// Owner-bound names: ETF key to stored value; emptied when the store opens.
const OWNED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("owned");
/// `revision` and `floor`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Dated deletions: ETF key to revision.
const TOMBS: TableDefinition<&[u8], u64> = TableDefinition::new("tombstones");
/// The same, by revision.
const TOMB_REVS: TableDefinition<u64, &[u8]> = TableDefinition::new("tombstone_revs");

/// A value as stored: byte 1, the revision (big-endian), the ETF bytes.
fn stored(mod_rev: u64, etf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + etf.len());
    out.push(1);
    out.extend_from_slice(&mod_rev.to_be_bytes());
    out.extend_from_slice(etf);
    out
}

/// The revision and ETF bytes of a stored value (revision 0 for a bare ETF value).
fn unstored(bytes: &[u8]) -> (u64, &[u8]) {
    match bytes {
        [1, rest @ ..] if rest.len() >= 8 => {
            let (rev, etf) = rest.split_at(8);
            (u64::from_be_bytes(rev.try_into().unwrap_or_default()), etf)
        }
        _ => (0, bytes),
    }
}

/// The most operations one commit carries: bounds a transaction's size and the delay
/// of the first caller in a long burst.
pub const MAX_BATCH: usize = 1024;

/// A term and its canonical ETF bytes.
#[derive(Clone)]
struct Encoded {
    term: Term,
    bytes: Vec<u8>,
}

fn encode(term: Term) -> Result<Encoded, StoreError> {
    let bytes = lib_chan_protocol::encode(&term).map_err(|e| StoreError::BadTerm(e.to_string()))?;
    Ok(Encoded { term, bytes })
}

enum Write {
    Store {
        key: Encoded,
        value: Encoded,
        owner: Option<Owner>,
        if_revision: Option<u64>,
    },
    Delete {
        key: Encoded,
        if_revision: Option<u64>,
    },
    Release {
        owner: Owner,
        keys: Vec<Encoded>,
    },
}

struct WriteOp {
    seq: u64,
    write: Write,
    answer: oneshot::Sender<Result<Written, StoreError>>,
}

/// The sending half of the writer's queue, with the last sequence number handed out:
/// one lock makes "number the operation" and "queue it" a single step, so the queue's
/// order is the numbers' order.
struct Queue {
    last_seq: u64,
    /// Taken when the store is dropped, which ends the writer thread.
    tx: Option<mpsc::Sender<WriteOp>>,
}

/// The redb-backed name store.
pub struct FileStore {
    path: PathBuf,
    db: Arc<Database>,
    queue: Mutex<Queue>,
    /// The sequence number up to which every write is finished (committed or failed).
    done: watch::Receiver<u64>,
    commits: Arc<AtomicU64>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FileStore {
    /// Stops the writer thread after the writes already queued, and waits for it, so
    /// the file is closed (and can be opened again) once the store is gone.
    fn drop(&mut self) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tx
            .take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// Opens (creating it if missing) the store file at `path` and starts its writer
    /// thread; owner-bound names left by a previous process are removed.
    ///
    /// # Errors
    /// A message naming the file: it cannot be created or opened, is not a redb file or
    /// is corrupt, is open in another process, or cannot be written.
    pub fn open(path: &Path, watchers: Arc<Watchers>) -> Result<FileStore, String> {
        // Absolute, so that messages name the file wherever the server was started.
        let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let named = |what: &str, e: &dyn fmt::Display| {
            format!("store file {}: {what}: {e}", path.display())
        };
        let db = Database::create(path).map_err(|e| named("cannot open", &e))?;
        // One committed transaction now proves the file writable, drops the previous
        // run's owner-bound names before anyone can read them, and numbers a file
        // written before revisions.
        let startup = || -> Result<u64, redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?;
            let revision = {
                let mut meta = txn.open_table(META)?;
                let mut names = txn.open_table(NAMES)?;
                let mut owned = txn.open_table(OWNED)?;
                let mut tombs = Tombs::open(&txn)?;
                let mut revision = meta.get("revision")?.map_or(0, |v| v.value());
                let bare: Vec<(Vec<u8>, Vec<u8>)> = names
                    .iter()?
                    .filter_map(|e| e.ok())
                    .filter(|(_, v)| v.value().first() != Some(&1))
                    .map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                    .collect();
                for (k, v) in bare {
                    revision += 1;
                    names.insert(k.as_slice(), stored(revision, &v).as_slice())?;
                }
                let left: Vec<Vec<u8>> = owned
                    .iter()?
                    .filter_map(|e| e.ok())
                    .map(|(k, _)| k.value().to_vec())
                    .collect();
                for k in left {
                    owned.remove(k.as_slice())?;
                    revision += 1;
                    tombs.insert(&mut meta, &k, revision)?;
                }
                meta.insert("revision", revision)?;
                revision
            };
            txn.commit()?;
            Ok(revision)
        };
        let revision = startup().map_err(|e| named("cannot write", &e))?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = watch::channel(0);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            db: Arc::clone(&db),
            path: path.to_owned(),
            rx,
            done: done_tx,
            watchers,
            owners: HashMap::new(),
            revision,
            commits: Arc::clone(&commits),
        };
        let writer = std::thread::Builder::new()
            .name("lib_chan-redb-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| named("cannot start its writer thread", &e))?;
        Ok(FileStore {
            path: path.to_owned(),
            db,
            queue: Mutex::new(Queue {
                last_seq: 0,
                tx: Some(tx),
            }),
            done,
            commits,
            writer: Some(writer),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many write transactions have been committed since opening: with group
    /// commit, fewer than the stores answered.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Queues a write; the future resolves once it is committed.
    fn write(&self, write: Write) -> StoreFuture<Written> {
        let (answer, rx) = oneshot::channel();
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.last_seq += 1;
            let op = WriteOp {
                seq: q.last_seq,
                write,
                answer,
            };
            if q.tx.as_ref().is_none_or(|tx| tx.send(op).is_err()) {
                return failed(StoreError::Unavailable(format!(
                    "store file {}: the writer thread has stopped",
                    self.path.display()
                )));
            }
        }
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "the store's writer thread has stopped".into(),
                ))
            })
        })
    }

    /// Runs `read` on the blocking pool once every write called before now is finished.
    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<T> {
        let target = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_seq;
        let mut done = self.done.clone();
        let db = Arc::clone(&self.db);
        let path = self.path.clone();
        Box::pin(async move {
            if *done.borrow() < target && done.wait_for(|d| *d >= target).await.is_err() {
                return Err(StoreError::Unavailable(
                    "the store's writer thread has stopped".into(),
                ));
            }
            tokio::task::spawn_blocking(move || {
                let txn = db.begin_read().map_err(|e| unavailable(&path, &e))?;
                read(&txn)
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("store read failed: {e}")))?
        })
    }
}

fn failed<T: Send + 'static>(e: StoreError) -> StoreFuture<T> {
    Box::pin(std::future::ready(Err(e)))
}

fn unavailable(path: &Path, e: &dyn fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("store file {}: {e}", path.display()))
}

/// Decodes a stored term; the file holds only what `encode` wrote, so a failure means
/// the file was damaged behind redb's back.
fn decode(path: &Path, bytes: &[u8]) -> Result<Term, StoreError> {
    lib_chan_protocol::decode(bytes)
        .map_err(|e| unavailable(path, &format!("bad stored term: {e}")))
}

/// The tombstone tables of one transaction.
struct Tombs<'t> {
    by_key: redb::Table<'t, &'static [u8], u64>,
    by_rev: redb::Table<'t, u64, &'static [u8]>,
}

impl<'t> Tombs<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Tombs<'t>, redb::Error> {
        Ok(Tombs {
            by_key: txn.open_table(TOMBS)?,
            by_rev: txn.open_table(TOMB_REVS)?,
        })
    }

    /// `key` deleted at `rev`; the oldest forgotten past [`MAX_TOMBSTONES`], raising the
    /// floor in `meta`.
    fn insert(
        &mut self,
        meta: &mut redb::Table<'_, &'static str, u64>,
        key: &[u8],
        rev: u64,
    ) -> Result<(), redb::Error> {
        if let Some(old) = self.by_key.insert(key, rev)?.map(|g| g.value()) {
            self.by_rev.remove(old)?;
        }
        self.by_rev.insert(rev, key)?;
        while self.by_rev.len()? > MAX_TOMBSTONES as u64 {
            let Some((rev, key)) = self
                .by_rev
                .pop_first()?
                .map(|(r, k)| (r.value(), k.value().to_vec()))
            else {
                break;
            };
            self.by_key.remove(key.as_slice())?;
            let floor = meta.get("floor")?.map_or(0, |v| v.value());
            meta.insert("floor", floor.max(rev))?;
        }
        Ok(())
    }

    /// `key` is present again.
    fn remove(&mut self, key: &[u8]) -> Result<(), redb::Error> {
        if let Some(old) = self.by_key.remove(key)?.map(|g| g.value()) {
            self.by_rev.remove(old)?;
        }
        Ok(())
    }
}

/// `key`'s state as the tables in `open` show it (a read or a write transaction).
fn key_state<T: ReadableTable<&'static [u8], &'static [u8]>>(
    path: &Path,
    tables: [&T; 2],
    tombs: &impl ReadableTable<&'static [u8], u64>,
    meta: &impl ReadableTable<&'static str, u64>,
    key: &[u8],
) -> Result<KeyState, StoreError> {
    let e = |x: redb::StorageError| unavailable(path, &x);
    let mut found = None;
    for table in tables {
        if let Some(v) = table.get(key).map_err(e)? {
            let (rev, etf) = unstored(v.value());
            found = Some((decode(path, etf)?, rev));
            break;
        }
    }
    let (value, mod_rev) = match found {
        Some((v, rev)) => (Some(v), rev),
        None => (None, tombs.get(key).map_err(e)?.map_or(0, |g| g.value())),
    };
    Ok(KeyState {
        value,
        mod_rev,
        revision: meta.get("revision").map_err(e)?.map_or(0, |g| g.value()),
        floor: meta.get("floor").map_err(e)?.map_or(0, |g| g.value()),
    })
}

/// The key's state when `#{if_revision => cond}` does not admit a change to it, inside a
/// write transaction.
fn refused<T: ReadableTable<&'static [u8], &'static [u8]>>(
    path: &Path,
    tables: [&T; 2],
    tombs: &Tombs<'_>,
    meta: &impl ReadableTable<&'static str, u64>,
    key: &[u8],
    cond: u64,
) -> Result<Option<KeyState>, redb::Error> {
    let state = key_state(path, tables, &tombs.by_key, meta, key)
        .map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?;
    Ok((!state.admits(cond)).then_some(state))
}

impl NameStore for FileStore {
    fn store(
        &self,
        key: Term,
        value: Term,
        owner: Option<Owner>,
        if_revision: Option<u64>,
    ) -> StoreFuture<Written> {
        match (encode(key), encode(value)) {
            (Ok(key), Ok(value)) => self.write(Write::Store {
                key,
                value,
                owner,
                if_revision,
            }),
            (Err(e), _) | (_, Err(e)) => failed(e),
        }
    }

    fn lookup(&self, key: Term) -> StoreFuture<Option<Term>> {
        let key = match encode(key) {
            Ok(k) => k.bytes,
            Err(e) => return failed(e),
        };
        let path = self.path.clone();
        self.read(move |txn| {
            let e = |e: &dyn fmt::Display| unavailable(&path, e);
            for table in [OWNED, NAMES] {
                let table = txn.open_table(table).map_err(|x| e(&x))?;
                if let Some(v) = table.get(key.as_slice()).map_err(|x| e(&x))? {
                    return decode(&path, unstored(v.value()).1).map(Some);
                }
            }
            Ok(None)
        })
    }

    fn get(&self, key: Term) -> StoreFuture<KeyState> {
        let key = match encode(key) {
            Ok(k) => k.bytes,
            Err(e) => return failed(e),
        };
        let path = self.path.clone();
        self.read(move |txn| {
            let e = |e: &dyn fmt::Display| unavailable(&path, e);
            let owned = txn.open_table(OWNED).map_err(|x| e(&x))?;
            let names = txn.open_table(NAMES).map_err(|x| e(&x))?;
            let tombs = txn.open_table(TOMBS).map_err(|x| e(&x))?;
            let meta = txn.open_table(META).map_err(|x| e(&x))?;
            key_state(&path, [&owned, &names], &tombs, &meta, &key)
        })
    }

    fn delete(&self, key: Term, if_revision: Option<u64>) -> StoreFuture<Written> {
        match encode(key) {
            Ok(key) => self.write(Write::Delete { key, if_revision }),
            Err(e) => failed(e),
        }
    }

    fn revision(&self) -> StoreFuture<u64> {
        let path = self.path.clone();
        self.read(move |txn| {
            let e = |e: &dyn fmt::Display| unavailable(&path, e);
            let meta = txn.open_table(META).map_err(|x| e(&x))?;
            Ok(meta
                .get("revision")
                .map_err(|x| e(&x))?
                .map_or(0, |g| g.value()))
        })
    }

    fn names(&self) -> StoreFuture<Vec<Term>> {
        let path = self.path.clone();
        self.read(move |txn| {
            let e = |e: &dyn fmt::Display| unavailable(&path, e);
            let mut keys = Vec::new();
            for table in [NAMES, OWNED] {
                let table = txn.open_table(table).map_err(|x| e(&x))?;
                for entry in table.iter().map_err(|x| e(&x))? {
                    let (k, _) = entry.map_err(|x| e(&x))?;
                    keys.push(decode(&path, k.value())?);
                }
            }
            keys.sort();
            Ok(keys)
        })
    }

    fn release(&self, owner: Owner, keys: Vec<Term>) -> StoreFuture<()> {
        // Keys here were stored, hence encodable; one that is not was never owned.
        let keys = keys.into_iter().filter_map(|k| encode(k).ok()).collect();
        Box::pin(
            self.write(Write::Release { owner, keys })
                .map(|r| r.map(drop)),
        )
    }
}

/// The writer thread's state.
struct Writer {
    db: Arc<Database>,
    path: PathBuf,
    rx: mpsc::Receiver<WriteOp>,
    done: watch::Sender<u64>,
    watchers: Arc<Watchers>,
    /// For each owner-bound key (ETF bytes), the connection it belongs to.
    owners: HashMap<Vec<u8>, Owner>,
    /// The name space's revision, as last committed.
    revision: u64,
    commits: Arc<AtomicU64>,
}

/// What one batch changed, reported once it is committed.
#[derive(Default)]
struct Applied {
    /// Owner changes to make to [`Writer::owners`] (`None`: no longer owner-bound), in
    /// order; applied only if the commit succeeds.
    owners: Vec<(Vec<u8>, Option<Owner>)>,
    /// Changes to tell the watchers, in the order made, with their revisions.
    changes: Vec<(Term, Option<Term>, u64)>,
    /// Each operation's outcome, in the batch's order.
    results: Vec<Written>,
    /// The revision after the batch.
    revision: u64,
}

impl Writer {
    /// Commits batches until every [`FileStore`] handle is gone.
    fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let last = batch.last().map_or(0, |op| op.seq);
            let result = self.commit(&batch);
            let outcomes: Vec<Result<Written, StoreError>> = match result {
                Ok(applied) => {
                    for (key, owner) in applied.owners {
                        match owner {
                            Some(o) => self.owners.insert(key, o),
                            None => self.owners.remove(&key),
                        };
                    }
                    self.revision = applied.revision;
                    for (key, value, rev) in &applied.changes {
                        self.watchers.notify(key, value.as_ref(), *rev);
                    }
                    applied.results.into_iter().map(Ok).collect()
                }
                Err(e) => {
                    tracing::error!(file = %self.path.display(), error = %e, ops = batch.len(), "name store commit failed");
                    let e = unavailable(&self.path, &e);
                    vec![Err(e); batch.len()]
                }
            };
            // Reads waiting for these writes may go; then the callers get their answers.
            self.done.send_replace(last);
            for (op, outcome) in batch.into_iter().zip(outcomes) {
                let _ = op.answer.send(outcome);
            }
        }
    }

    /// Applies `batch` in one write transaction and commits it durably.
    fn commit(&self, batch: &[WriteOp]) -> Result<Applied, redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?;
        let mut applied = Applied {
            revision: self.revision,
            ..Applied::default()
        };
        {
            let mut names = txn.open_table(NAMES)?;
            let mut owned = txn.open_table(OWNED)?;
            let mut meta = txn.open_table(META)?;
            let mut tombs = Tombs::open(&txn)?;
            // Owners as this batch leaves them so far: later operations in the batch see
            // the earlier ones.
            let mut staged: HashMap<Vec<u8>, Option<Owner>> = HashMap::new();
            for op in batch {
                let mut result = Written::Done;
                // A conditional store or delete that its condition refuses changes nothing.
                if let Write::Store {
                    key,
                    if_revision: Some(cond),
                    ..
                }
                | Write::Delete {
                    key,
                    if_revision: Some(cond),
                } = &op.write
                {
                    let k = key.bytes.as_slice();
                    if let Some(state) =
                        refused(&self.path, [&owned, &names], &tombs, &meta, k, *cond)?
                    {
                        applied.results.push(Written::Conflict(state));
                        continue;
                    }
                }
                match &op.write {
                    Write::Store {
                        key, value, owner, ..
                    } => {
                        let k = key.bytes.as_slice();
                        applied.revision += 1;
                        let v = stored(applied.revision, &value.bytes);
                        match owner {
                            Some(_) => {
                                names.remove(k)?;
                                owned.insert(k, v.as_slice())?;
                            }
                            None => {
                                owned.remove(k)?;
                                names.insert(k, v.as_slice())?;
                            }
                        }
                        tombs.remove(k)?;
                        meta.insert("revision", applied.revision)?;
                        staged.insert(key.bytes.clone(), *owner);
                        applied.owners.push((key.bytes.clone(), *owner));
                        applied.changes.push((
                            key.term.clone(),
                            Some(value.term.clone()),
                            applied.revision,
                        ));
                    }
                    Write::Delete { key, .. } => {
                        let k = key.bytes.as_slice();
                        let was_plain = names.remove(k)?.is_some();
                        let was_owned = owned.remove(k)?.is_some();
                        staged.insert(key.bytes.clone(), None);
                        applied.owners.push((key.bytes.clone(), None));
                        if was_plain || was_owned {
                            applied.revision += 1;
                            tombs.insert(&mut meta, k, applied.revision)?;
                            meta.insert("revision", applied.revision)?;
                            applied
                                .changes
                                .push((key.term.clone(), None, applied.revision));
                        }
                    }
                    Write::Release { owner, keys } => {
                        for key in keys {
                            let current = match staged.get(&key.bytes) {
                                Some(o) => *o,
                                None => self.owners.get(&key.bytes).copied(),
                            };
                            if current == Some(*owner)
                                && owned.remove(key.bytes.as_slice())?.is_some()
                            {
                                applied.revision += 1;
                                tombs.insert(&mut meta, &key.bytes, applied.revision)?;
                                meta.insert("revision", applied.revision)?;
                                staged.insert(key.bytes.clone(), None);
                                applied.owners.push((key.bytes.clone(), None));
                                applied
                                    .changes
                                    .push((key.term.clone(), None, applied.revision));
                            }
                        }
                        result = Written::Done;
                    }
                }
                applied.results.push(result);
            }
        }
        txn.commit()?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lib_chan_protocol::term;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn names_survive_reopening_and_owner_bound_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("names.redb");
        rt().block_on(async {
            let store = FileStore::open(&path, Arc::default()).unwrap();
            store
                .store(term!(joe), term!("writing a book"), None, None)
                .await
                .unwrap();
            store
                .store(Term::Int(1), term!(int), None, None)
                .await
                .unwrap();
            store
                .store(Term::Float(1.0), term!(float), None, None)
                .await
                .unwrap();
            store
                .store(term!(session), term!(alive), Some(7), None)
                .await
                .unwrap();
            // An owner-bound store over a plain name replaces it, durably.
            store
                .store(term!(joe), term!(mine), Some(7), None)
                .await
                .unwrap();
            assert_eq!(store.lookup(term!(joe)).await.unwrap(), Some(term!(mine)));
            assert_eq!(
                Term::list(store.names().await.unwrap()).to_string(),
                "[1,1.0,joe,session]"
            );
        });
        rt().block_on(async {
            let store = FileStore::open(&path, Arc::default()).unwrap();
            assert_eq!(store.lookup(Term::Int(1)).await.unwrap(), Some(term!(int)));
            assert_eq!(
                store.lookup(Term::Float(1.0)).await.unwrap(),
                Some(term!(float))
            );
            assert_eq!(store.lookup(term!(session)).await.unwrap(), None);
            assert_eq!(store.lookup(term!(joe)).await.unwrap(), None);
            assert_eq!(
                Term::list(store.names().await.unwrap()).to_string(),
                "[1,1.0]"
            );
        });
    }

    #[test]
    fn owner_bound_names_dropped_at_open_are_dated_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("names.redb");
        rt().block_on(async {
            let store = FileStore::open(&path, Arc::default()).unwrap();
            store.store(term!(a), term!(1), None, None).await.unwrap();
            store
                .store(term!(o), term!(2), Some(7), None)
                .await
                .unwrap();
            assert_eq!(store.revision().await.unwrap(), 2);
        });
        rt().block_on(async {
            let store = FileStore::open(&path, Arc::default()).unwrap();
            assert_eq!(store.revision().await.unwrap(), 3);
            let o = store.get(term!(o)).await.unwrap();
            assert_eq!((o.value, o.mod_rev, o.revision), (None, 3, 3));
            assert_eq!(o.floor, 0);
            let a = store.get(term!(a)).await.unwrap();
            assert_eq!((a.value, a.mod_rev), (Some(term!(1)), 1));
        });
    }

    #[test]
    fn a_file_from_before_revisions_is_numbered_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        {
            // The layout of the previous version: bare ETF values, no meta table.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut names = txn.open_table(NAMES).unwrap();
                for (k, v) in [(term!(x), term!(1)), (term!(y), term!(2))] {
                    let (k, v) = (
                        lib_chan_protocol::encode(&k).unwrap(),
                        lib_chan_protocol::encode(&v).unwrap(),
                    );
                    names.insert(k.as_slice(), v.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        for _ in 0..2 {
            rt().block_on(async {
                let store = FileStore::open(&path, Arc::default()).unwrap();
                assert_eq!(store.revision().await.unwrap(), 2);
                assert_eq!(store.lookup(term!(y)).await.unwrap(), Some(term!(2)));
                let x = store.get(term!(x)).await.unwrap();
                assert_eq!((x.value, x.mod_rev), (Some(term!(1)), 1));
            });
        }
    }

    #[test]
    fn release_removes_only_what_the_owner_still_owns() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let store = FileStore::open(&dir.path().join("n.redb"), Arc::default()).unwrap();
            store
                .store(term!(a), term!(1), Some(1), None)
                .await
                .unwrap();
            store
                .store(term!(b), term!(1), Some(1), None)
                .await
                .unwrap();
            // b is taken over by connection 2, plainly.
            store.store(term!(b), term!(2), None, None).await.unwrap();
            // Not awaited: the release still comes after the stores, and the lookups
            // after it see its effect.
            drop(store.release(1, vec![term!(a), term!(b)]));
            assert_eq!(store.lookup(term!(a)).await.unwrap(), None);
            assert_eq!(store.lookup(term!(b)).await.unwrap(), Some(term!(2)));
        });
    }

    #[test]
    fn concurrent_stores_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let store =
                Arc::new(FileStore::open(&dir.path().join("n.redb"), Arc::default()).unwrap());
            let before = store.commits();
            let pending: Vec<_> = (0..500)
                .map(|i| store.store(Term::Int(i), Term::Int(i * 2), None, None))
                .collect();
            for p in pending {
                p.await.unwrap();
            }
            let commits = store.commits() - before;
            assert!(
                commits < 100,
                "500 concurrent stores took {commits} commits"
            );
            assert_eq!(
                store.lookup(Term::Int(499)).await.unwrap(),
                Some(Term::Int(998))
            );
            assert_eq!(store.names().await.unwrap().len(), 500);
        });
    }

    #[test]
    fn a_nan_is_refused_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let store = FileStore::open(&dir.path().join("n.redb"), Arc::default()).unwrap();
            let e = store
                .store(term!(k), Term::Float(f64::NAN), None, None)
                .await;
            assert!(matches!(e, Err(StoreError::BadTerm(_))), "{e:?}");
            assert_eq!(store.lookup(term!(k)).await.unwrap(), None);
        });
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.redb");
        std::fs::write(&garbage, vec![0x5a; 64 * 1024]).unwrap();
        let e = FileStore::open(&garbage, Arc::default()).unwrap_err();
        assert!(e.contains(&garbage.display().to_string()), "{e}");
        let not_a_dir = dir.path().join("plain");
        std::fs::write(&not_a_dir, b"x").unwrap();
        let under_a_file = not_a_dir.join("names.redb");
        let e = FileStore::open(&under_a_file, Arc::default()).unwrap_err();
        assert!(e.contains(&under_a_file.display().to_string()), "{e}");
        // A second opener in the same process is refused while the first holds it.
        let path = dir.path().join("held.redb");
        let _first = FileStore::open(&path, Arc::default()).unwrap();
        let e = FileStore::open(&path, Arc::default()).unwrap_err();
        assert!(e.contains("held.redb"), "{e}");
    }
}
