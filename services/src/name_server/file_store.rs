//! `store = "file:PATH"`: the name space in a redb file, durable before a store is
//! answered, with group commit.
//!
//! # Layout
//! Two tables, keys and values both canonical ETF bytes (`lib_chan_protocol::encode`),
//! so two keys are the same key exactly when they are the same term:
//! - `names`: the names stored plainly;
//! - `owned`: the owner-bound names. Which connection owns each lives only in memory:
//!   connections do not outlive the process, so when the store opens, `owned` is emptied
//!   (its owners all closed when the previous process ended, however it ended).
//!
//! A key is in at most one of the two tables. Keeping owner-bound names in the file too
//! matters: an owner-bound store over a plain name must durably remove the plain one.
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

use lib_chan_protocol::Term;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{oneshot, watch};

use super::store::{NameStore, Owner, StoreError, StoreFuture, Watchers};

/// Plain names: ETF key to ETF value.
const NAMES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("names");
/// Owner-bound names: ETF key to ETF value; emptied when the store opens.
const OWNED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("owned");

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
    },
    Delete {
        key: Encoded,
    },
    Release {
        owner: Owner,
        keys: Vec<Encoded>,
    },
}

struct WriteOp {
    seq: u64,
    write: Write,
    answer: oneshot::Sender<Result<(), StoreError>>,
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
        // One committed transaction now proves the file writable and drops the previous
        // run's owner-bound names before anyone can read them.
        let startup = || -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?;
            txn.delete_table(OWNED)?;
            txn.open_table(NAMES)?;
            txn.open_table(OWNED)?;
            txn.commit()?;
            Ok(())
        };
        startup().map_err(|e| named("cannot write", &e))?;
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
    fn write(&self, write: Write) -> StoreFuture<()> {
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

impl NameStore for FileStore {
    fn store(&self, key: Term, value: Term, owner: Option<Owner>) -> StoreFuture<()> {
        match (encode(key), encode(value)) {
            (Ok(key), Ok(value)) => self.write(Write::Store { key, value, owner }),
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
                    return decode(&path, v.value()).map(Some);
                }
            }
            Ok(None)
        })
    }

    fn delete(&self, key: Term) -> StoreFuture<()> {
        match encode(key) {
            Ok(key) => self.write(Write::Delete { key }),
            Err(e) => failed(e),
        }
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
        self.write(Write::Release { owner, keys })
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
    commits: Arc<AtomicU64>,
}

/// What one batch changed, reported once it is committed.
#[derive(Default)]
struct Applied {
    /// Owner changes to make to [`Writer::owners`] (`None`: no longer owner-bound), in
    /// order; applied only if the commit succeeds.
    owners: Vec<(Vec<u8>, Option<Owner>)>,
    /// Changes to tell the watchers, in the order made.
    changes: Vec<(Term, Option<Term>)>,
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
            let outcome = match result {
                Ok(applied) => {
                    for (key, owner) in applied.owners {
                        match owner {
                            Some(o) => self.owners.insert(key, o),
                            None => self.owners.remove(&key),
                        };
                    }
                    for (key, value) in &applied.changes {
                        self.watchers.notify(key, value.as_ref());
                    }
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(file = %self.path.display(), error = %e, ops = batch.len(), "name store commit failed");
                    Err(unavailable(&self.path, &e))
                }
            };
            // Reads waiting for these writes may go; then the callers get their answers.
            self.done.send_replace(last);
            for op in batch {
                let _ = op.answer.send(outcome.clone());
            }
        }
    }

    /// Applies `batch` in one write transaction and commits it durably.
    fn commit(&self, batch: &[WriteOp]) -> Result<Applied, redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| redb::Error::Io(std::io::Error::other(e.to_string())))?;
        let mut applied = Applied::default();
        {
            let mut names = txn.open_table(NAMES)?;
            let mut owned = txn.open_table(OWNED)?;
            // Owners as this batch leaves them so far: later operations in the batch see
            // the earlier ones.
            let mut staged: HashMap<Vec<u8>, Option<Owner>> = HashMap::new();
            for op in batch {
                match &op.write {
                    Write::Store { key, value, owner } => {
                        let k = key.bytes.as_slice();
                        match owner {
                            Some(_) => {
                                names.remove(k)?;
                                owned.insert(k, value.bytes.as_slice())?;
                            }
                            None => {
                                owned.remove(k)?;
                                names.insert(k, value.bytes.as_slice())?;
                            }
                        }
                        staged.insert(key.bytes.clone(), *owner);
                        applied.owners.push((key.bytes.clone(), *owner));
                        applied
                            .changes
                            .push((key.term.clone(), Some(value.term.clone())));
                    }
                    Write::Delete { key } => {
                        let k = key.bytes.as_slice();
                        let was_plain = names.remove(k)?.is_some();
                        let was_owned = owned.remove(k)?.is_some();
                        staged.insert(key.bytes.clone(), None);
                        applied.owners.push((key.bytes.clone(), None));
                        if was_plain || was_owned {
                            applied.changes.push((key.term.clone(), None));
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
                                staged.insert(key.bytes.clone(), None);
                                applied.owners.push((key.bytes.clone(), None));
                                applied.changes.push((key.term.clone(), None));
                            }
                        }
                    }
                }
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
                .store(term!(joe), term!("writing a book"), None)
                .await
                .unwrap();
            store.store(Term::Int(1), term!(int), None).await.unwrap();
            store
                .store(Term::Float(1.0), term!(float), None)
                .await
                .unwrap();
            store
                .store(term!(session), term!(alive), Some(7))
                .await
                .unwrap();
            // An owner-bound store over a plain name replaces it, durably.
            store.store(term!(joe), term!(mine), Some(7)).await.unwrap();
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
    fn release_removes_only_what_the_owner_still_owns() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let store = FileStore::open(&dir.path().join("n.redb"), Arc::default()).unwrap();
            store.store(term!(a), term!(1), Some(1)).await.unwrap();
            store.store(term!(b), term!(1), Some(1)).await.unwrap();
            // b is taken over by connection 2, plainly.
            store.store(term!(b), term!(2), None).await.unwrap();
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
                .map(|i| store.store(Term::Int(i), Term::Int(i * 2), None))
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
            let e = store.store(term!(k), Term::Float(f64::NAN), None).await;
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
