//! [`Names`]: a typed client of the name server (PROTOCOL.md sections 7 and 7.1) over a
//! [`Channel`] or a [`ReconnectingChannel`].
//!
//! Every request has a method; answers come back as Rust values. [`Names::watch`] gives a
//! [`Watch`] of [`Change`]s with their revisions. `Names` takes the channel's pushes for
//! itself: one task reads them and routes each `{changed, K, Answer, ModRev}` to the watch
//! of `K`, dropping any revision not above the last one delivered, so that a watch never
//! sees a revision twice or going backwards. On a reconnecting channel, after each
//! reconnection it watches every key again from the last revision it delivered: the
//! server then pushes the key's current state if it changed meanwhile, so a watch never
//! misses the latest value (it may miss values superseded while it was away).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lib_chan_protocol::Term;
use tokio::sync::Notify;

use crate::channel::Channel;
use crate::error::Error;
use crate::reconnect::{ChannelEvent, ReconnectingChannel};

/// What a [`Names`] talks through.
#[derive(Debug, Clone)]
pub enum Link {
    /// One connection.
    Plain(Channel),
    /// A channel that reconnects.
    Reconnecting(ReconnectingChannel),
}

impl From<Channel> for Link {
    fn from(c: Channel) -> Link {
        Link::Plain(c)
    }
}

impl From<ReconnectingChannel> for Link {
    fn from(c: ReconnectingChannel) -> Link {
        Link::Reconnecting(c)
    }
}

/// Either kind of channel, for code that serves both (the typed client, `lib_chan shell`).
impl Link {
    /// [`Channel::rpc`] or [`ReconnectingChannel::rpc`].
    ///
    /// # Errors
    /// As theirs.
    pub async fn rpc(&self, req: Term) -> Result<Term, Error> {
        match self {
            Link::Plain(c) => c.rpc(req).await,
            Link::Reconnecting(c) => c.rpc(req).await,
        }
    }

    /// For requests safe to repeat: sent again after a reconnection.
    ///
    /// # Errors
    /// As [`rpc`](Self::rpc).
    pub async fn rpc_idempotent(&self, req: Term) -> Result<Term, Error> {
        match self {
            Link::Plain(c) => c.rpc(req).await,
            Link::Reconnecting(c) => c.rpc_idempotent(req).await,
        }
    }

    /// [`Channel::cast`] or [`ReconnectingChannel::cast`].
    ///
    /// # Errors
    /// As theirs.
    pub async fn cast(&self, msg: Term) -> Result<(), Error> {
        match self {
            Link::Plain(c) => c.cast(msg).await,
            Link::Reconnecting(c) => c.cast(msg).await,
        }
    }

    /// The next push.
    pub async fn recv(&self) -> Option<Term> {
        match self {
            Link::Plain(c) => c.recv().await,
            Link::Reconnecting(c) => c.recv().await,
        }
    }

    /// Resolves when it has ended for good.
    pub async fn closed(&self) -> crate::CloseReason {
        match self {
            Link::Plain(c) => c.closed().await,
            Link::Reconnecting(c) => c.closed().await,
        }
    }

    /// True once it has ended for good (or is closing).
    pub fn is_closed(&self) -> bool {
        match self {
            Link::Plain(c) => c.is_closed(),
            Link::Reconnecting(c) => matches!(c.state(), crate::ChannelState::Closed(_)),
        }
    }

    /// Closes it in order.
    pub async fn close(&self) {
        match self {
            Link::Plain(c) => c.close().await,
            Link::Reconnecting(c) => c.close().await,
        }
    }
}

/// Who an owner-bound name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The connection that stores it (`#{owner => channel}`).
    Channel,
    /// Its session (`#{owner => session}`, PROTOCOL.md 8).
    Session,
}

/// The outcome of a conditional store or delete.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// Done.
    Done,
    /// The key's last change was not at the revision given; nothing changed.
    Conflict {
        /// The key's current value.
        value: Option<Term>,
        /// The revision of its last change (0 if none is known).
        mod_rev: u64,
    },
}

/// A key's value with revisions, from [`Names::get`].
#[derive(Debug, Clone, PartialEq)]
pub enum Versioned {
    /// Present, last changed at `mod_rev`.
    Present {
        /// The value.
        value: Term,
        /// The revision of its last change.
        mod_rev: u64,
    },
    /// Absent; the name space is at `revision`.
    Absent {
        /// The current revision.
        revision: u64,
    },
}

/// One change of a watched key.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The key.
    pub key: Term,
    /// Its value after the change (`None`: deleted).
    pub value: Option<Term>,
    /// The revision of the change.
    pub mod_rev: u64,
}

/// The changes of one key, from [`Names::watch`].
#[derive(Debug)]
pub struct Watch {
    queue: Arc<WatchQueue>,
}

impl Watch {
    /// The next change; `None` once the [`Names`] (or its channel) is gone.
    pub async fn next(&mut self) -> Option<Change> {
        loop {
            if let Some(change) = self.queue.pop() {
                return Some(change);
            }
            if self.queue.ended.load(Ordering::Acquire) {
                return None;
            }
            // notify_one leaves a permit when nobody waits: a push between the check
            // above and this wait is not missed.
            self.queue.ready.notified().await;
        }
    }
}

/// How many changes of one key may wait for [`Watch::next`]; past it the oldest waiting
/// are dropped, never the latest (the latest is what a watcher needs).
const WATCH_QUEUE: usize = 256;

/// The changes waiting for one [`Watch`], bounded, oldest dropped first.
#[derive(Debug, Default)]
struct WatchQueue {
    changes: Mutex<VecDeque<Change>>,
    ready: Notify,
    ended: AtomicBool,
}

impl WatchQueue {
    fn changes(&self) -> MutexGuard<'_, VecDeque<Change>> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, change: Change) {
        {
            let mut q = self.changes();
            if q.len() >= WATCH_QUEUE {
                q.pop_front();
            }
            q.push_back(change);
        }
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Change> {
        self.changes().pop_front()
    }

    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

#[derive(Debug)]
struct Watched {
    queue: Arc<WatchQueue>,
    /// The highest revision delivered.
    last: u64,
}

/// The watched keys of one [`Names`]; when it goes, every [`Watch`] ends.
#[derive(Debug, Default)]
struct Table(Mutex<HashMap<Term, Watched>>);

impl Table {
    fn end_all(&self) {
        for w in lock(self).values() {
            w.queue.end();
        }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        self.end_all();
    }
}

fn lock(t: &Table) -> MutexGuard<'_, HashMap<Term, Watched>> {
    t.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// The typed name server client: see the module docs.
#[derive(Debug, Clone)]
pub struct Names {
    link: Link,
    watched: Arc<Table>,
}

fn int(t: &Term) -> Result<u64, Error> {
    t.as_int()
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| Error::Protocol(format!("expected a revision, got {t}")))
}

fn value_of(answer: &Term) -> Result<Option<Term>, Error> {
    match answer.as_tuple() {
        Some([ok, v]) if ok.is_atom("ok") => Ok(Some(v.clone())),
        _ if answer.is_atom("undefined") => Ok(None),
        _ => Err(Error::Protocol(format!(
            "expected {{ok, V}} or undefined, got {answer}"
        ))),
    }
}

fn written(reply: Term) -> Result<Written, Error> {
    if reply.is_atom("true") {
        return Ok(Written::Done);
    }
    match reply.as_tuple() {
        Some([tag, answer, rev]) if tag.is_atom("conflict") => Ok(Written::Conflict {
            value: value_of(answer)?,
            mod_rev: int(rev)?,
        }),
        _ => Err(Error::Protocol(format!("unexpected answer {reply}"))),
    }
}

fn expect_true(reply: Term) -> Result<(), Error> {
    if reply.is_atom("true") {
        Ok(())
    } else {
        Err(Error::Protocol(format!("expected true, got {reply}")))
    }
}

impl Names {
    /// A name server client on `link`; it takes the link's pushes from now on.
    pub fn new(link: impl Into<Link>) -> Names {
        let link = link.into();
        let watched: Arc<Table> = Arc::default();
        tokio::spawn(route_pushes(link.clone(), Arc::downgrade(&watched)));
        if let Link::Reconnecting(rc) = &link {
            tokio::spawn(rewatch(rc.clone(), link.clone(), Arc::downgrade(&watched)));
        }
        Names { link, watched }
    }

    /// `{store, K, V}`.
    ///
    /// # Errors
    /// The channel's, or [`Error::Remote`] from the server.
    pub async fn store(&self, key: Term, value: Term) -> Result<(), Error> {
        expect_true(
            self.link
                .rpc_idempotent(Term::tuple([Term::atom("store"), key, value]))
                .await?,
        )
    }

    /// `{store, K, V, #{owner => channel | session}}`.
    ///
    /// # Errors
    /// As [`store`](Self::store).
    pub async fn store_owned(&self, key: Term, value: Term, owner: Owner) -> Result<(), Error> {
        let o = match owner {
            Owner::Channel => "channel",
            Owner::Session => "session",
        };
        let opts = Term::map([(Term::atom("owner"), Term::atom(o))]);
        expect_true(
            self.link
                .rpc(Term::tuple([Term::atom("store"), key, value, opts]))
                .await?,
        )
    }

    /// `{store, K, V, #{if_revision => R}}` (with `owner` when given): stored only if
    /// the key's last change was at `if_revision` (0: the key is absent).
    ///
    /// # Errors
    /// As [`store`](Self::store).
    pub async fn store_if(
        &self,
        key: Term,
        value: Term,
        if_revision: u64,
        owner: Option<Owner>,
    ) -> Result<Written, Error> {
        let mut opts = vec![(
            Term::atom("if_revision"),
            Term::Int(i64::try_from(if_revision).unwrap_or(i64::MAX)),
        )];
        if let Some(owner) = owner {
            let o = if owner == Owner::Channel {
                "channel"
            } else {
                "session"
            };
            opts.push((Term::atom("owner"), Term::atom(o)));
        }
        written(
            self.link
                .rpc(Term::tuple([
                    Term::atom("store"),
                    key,
                    value,
                    Term::map(opts),
                ]))
                .await?,
        )
    }

    /// `{lookup, K}`.
    ///
    /// # Errors
    /// As [`store`](Self::store).
    pub async fn lookup(&self, key: Term) -> Result<Option<Term>, Error> {
        value_of(
            &self
                .link
                .rpc_idempotent(Term::tuple([Term::atom("lookup"), key]))
                .await?,
        )
    }

    /// `{get, K}`.
    ///
    /// # Errors
    /// As [`store`](Self::store).
    pub async fn get(&self, key: Term) -> Result<Versioned, Error> {
        let reply = self
            .link
            .rpc_idempotent(Term::tuple([Term::atom("get"), key]))
            .await?;
        match reply.as_tuple() {
            Some([ok, v, rev]) if ok.is_atom("ok") => Ok(Versioned::Present {
                value: v.clone(),
                mod_rev: int(rev)?,
            }),
            Some([undefined, rev]) if undefined.is_atom("undefined") => Ok(Versioned::Absent {
                revision: int(rev)?,
            }),
            _ => Err(Error::Protocol(format!("unexpected answer {reply}"))),
        }
    }

    /// `{delete, K}`.
    ///
    /// # Errors
    /// As [`store`](Self::store).
    pub async fn delete(&self, key: Term) -> Result<(), Error> {
        expect_true(
            self.link
                .rpc_idempotent(Term::tuple([Term::atom("delete"), key]))
                .await?,
        )
    }

    /// `{delete, K, #{if_revision => R}}`.
    ///
    /// # Errors
    /// As [`store`](Self::store).
    pub async fn delete_if(&self, key: Term, if_revision: u64) -> Result<Written, Error> {
        let opts = Term::map([(
            Term::atom("if_revision"),
            Term::Int(i64::try_from(if_revision).unwrap_or(i64::MAX)),
        )]);
        written(
            self.link
                .rpc(Term::tuple([Term::atom("delete"), key, opts]))
                .await?,
        )
    }

    /// `names`: every key, in Erlang term order.
    ///
    /// # Errors
    /// As [`store`](Self::store).
    pub async fn names(&self) -> Result<Vec<Term>, Error> {
        let reply = self.link.rpc_idempotent(Term::atom("names")).await?;
        reply
            .as_list()
            .map(<[Term]>::to_vec)
            .ok_or_else(|| Error::Protocol(format!("expected a list, got {reply}")))
    }

    /// `revision`: the name space's current revision.
    ///
    /// # Errors
    /// As [`store`](Self::store).
    pub async fn revision(&self) -> Result<u64, Error> {
        int(&self.link.rpc_idempotent(Term::atom("revision")).await?)
    }

    /// Watches `key` from now on: its changes after the name space's current revision.
    ///
    /// # Errors
    /// As [`store`](Self::store).
    pub async fn watch(&self, key: Term) -> Result<Watch, Error> {
        let since = self.revision().await?;
        self.watch_from(key, since).await
    }

    /// Watches `key`, having seen its changes up to revision `since`: if it changed
    /// after, its current state comes first.
    ///
    /// # Errors
    /// As [`store`](Self::store).
    pub async fn watch_from(&self, key: Term, since: u64) -> Result<Watch, Error> {
        let queue = Arc::new(WatchQueue::default());
        let watched = Watched {
            queue: Arc::clone(&queue),
            last: since,
        };
        lock(&self.watched).insert(key.clone(), watched);
        let request = Term::tuple([
            Term::atom("watch"),
            key.clone(),
            Term::Int(i64::try_from(since).unwrap_or(i64::MAX)),
        ]);
        match self.link.rpc_idempotent(request).await {
            Ok(reply) => {
                expect_true(reply)?;
                Ok(Watch { queue })
            }
            Err(e) => {
                lock(&self.watched).remove(&key);
                Err(e)
            }
        }
    }
}

/// Routes `{changed, K, Answer, ModRev}` pushes to the watches, newer revisions only.
async fn route_pushes(link: Link, watched: std::sync::Weak<Table>) {
    while let Some(push) = link.recv().await {
        let Some(table) = watched.upgrade() else {
            return;
        };
        let Some([tag, key, answer, rev]) = push.as_tuple() else {
            continue;
        };
        if !tag.is_atom("changed") {
            continue;
        }
        let (Ok(value), Ok(mod_rev)) = (value_of(answer), int(rev)) else {
            continue;
        };
        let mut t = lock(&table);
        if let Some(w) = t.get_mut(key) {
            if Arc::strong_count(&w.queue) == 1 {
                // Its Watch was dropped.
                t.remove(key);
            } else if mod_rev > w.last {
                w.last = mod_rev;
                w.queue.push(Change {
                    key: key.clone(),
                    value,
                    mod_rev,
                });
            }
        }
    }
    // The channel ended for good: so does every watch.
    if let Some(table) = watched.upgrade() {
        table.end_all();
    }
}

/// After each reconnection, watches every key again from the last revision delivered.
async fn rewatch(rc: ReconnectingChannel, link: Link, watched: std::sync::Weak<Table>) {
    let mut events = rc.events();
    loop {
        match events.recv().await {
            Ok(ChannelEvent::Connected(_)) => {}
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
        let Some(table) = watched.upgrade() else {
            return;
        };
        let keys: Vec<(Term, u64)> = lock(&table)
            .iter()
            .map(|(k, w)| (k.clone(), w.last))
            .collect();
        drop(table);
        for (key, last) in keys {
            let request = Term::tuple([
                Term::atom("watch"),
                key,
                Term::Int(i64::try_from(last).unwrap_or(i64::MAX)),
            ]);
            if let Err(e) = link.rpc_idempotent(request).await {
                tracing::warn!(error = %e, "could not watch a key again after reconnecting");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_watch_drops_the_oldest_never_the_latest() {
        let queue = Arc::new(WatchQueue::default());
        let mut watch = Watch {
            queue: Arc::clone(&queue),
        };
        let pushed = WATCH_QUEUE as u64 + 10;
        for rev in 1..=pushed {
            queue.push(Change {
                key: Term::atom("k"),
                value: Some(Term::Int(rev as i64)),
                mod_rev: rev,
            });
        }
        assert_eq!(
            watch.next().await.unwrap().mod_rev,
            11,
            "the 10 oldest went"
        );
        let mut last = 0;
        while let Some(c) = queue.pop() {
            last = c.mod_rev;
        }
        assert_eq!(last, pushed, "the latest is kept");
        queue.end();
        assert!(watch.next().await.is_none());
    }
}
