//! The calls and pings waiting for an answer: a map from `Ref` to the caller's oneshot.
//!
//! A caller registers its `Ref` *before* its frame is queued, so the answer can never
//! arrive before the entry exists (tarpc's `in_flight_requests.rs` does the same). The
//! dispatch task completes entries as `{reply, ..}`, `{error, Ref, ..}` and `{pong, ..}`
//! frames arrive. A caller that gives up (timeout, or its future dropped) removes its
//! entry through an [`Armed`] guard, so a late answer finds nothing and is dropped.
//! When the connection ends, [`InFlight::close`] fails every entry at once and refuses
//! new ones, under the same lock, so no caller can slip in and wait forever.
//!
//! The map sits behind a `std::sync::Mutex`, not a tokio one: it is held for a hash map
//! operation only, never across an `.await` (mini-redis `db.rs` makes the same choice).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

use lib_chan_protocol::message::Ref;
use lib_chan_protocol::Term;
use tokio::sync::oneshot;

use crate::error::{CloseReason, Error};

/// What a waiting caller receives: the reply term (`Term::nil()` for a pong), or why not.
pub(crate) type Outcome = Result<Term, Error>;

/// Which question an entry is waiting on, so that a `{pong, Ref}` cannot answer a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `{call, Ref, X}`, answered by `{reply, Ref, Y}` or `{error, Ref, Reason}`.
    Call,
    /// `{ping, Ref}`, answered by `{pong, Ref}`.
    Ping,
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    waiter: Waiter,
}

/// Who waits for an entry's answer.
#[derive(Debug)]
enum Waiter {
    /// One call or ping, on its own oneshot.
    One(oneshot::Sender<Outcome>),
    /// The `index`th call of an `rpc_many` batch.
    Batch { batch: Arc<Batch>, index: usize },
}

impl Waiter {
    /// Hands over the answer; `false` when nobody takes it any more.
    fn deliver(self, outcome: Outcome) -> bool {
        match self {
            Waiter::One(tx) => tx.send(outcome).is_ok(),
            Waiter::Batch { batch, index } => {
                batch.fill(index, outcome);
                true
            }
        }
    }
}

/// The answers of one `rpc_many` batch, gathered in one place: one allocation and one
/// wake-up for the batch (when its last answer comes), not a oneshot and a possible
/// wake-up per call.
#[derive(Debug)]
pub(crate) struct Batch {
    state: Mutex<BatchState>,
}

#[derive(Debug)]
struct BatchState {
    outcomes: Vec<Option<Outcome>>,
    /// Answers still to come.
    missing: usize,
    /// The batch's caller, waiting in [`Batch::complete`].
    waker: Option<Waker>,
}

impl Batch {
    /// A batch of `calls` calls, none answered.
    pub(crate) fn new(calls: usize) -> Arc<Batch> {
        Arc::new(Batch {
            state: Mutex::new(BatchState {
                outcomes: (0..calls).map(|_| None).collect(),
                missing: calls,
                waker: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fill(&self, index: usize, outcome: Outcome) {
        let waker = {
            let mut state = self.lock();
            match state.outcomes.get_mut(index) {
                Some(slot @ None) => {
                    *slot = Some(outcome);
                    state.missing -= 1;
                }
                _ => return,
            }
            if state.missing > 0 {
                return;
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Resolves once every call of the batch has its answer.
    pub(crate) async fn complete(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            if state.missing == 0 {
                return Poll::Ready(());
            }
            match &state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await;
    }

    /// The answers so far, in the order of the batch (`None`: not answered).
    pub(crate) fn take(&self) -> Vec<Option<Outcome>> {
        std::mem::take(&mut self.lock().outcomes)
    }
}

/// Hashes a `Ref` with one multiplication (Fibonacci hashing). Refs are this client's
/// own counter, not chosen by the server (whose answers only look entries up), so the
/// map needs no defence against chosen keys, and SipHash's cost per call is saved. The
/// multiplication spreads consecutive Refs over the high bits hashbrown's control bytes
/// read.
#[derive(Debug, Default, Clone, Copy)]
struct RefHasher(u64);

impl Hasher for RefHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for a `Ref`; anything else still hashes correctly.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<Ref, Entry, BuildHasherDefault<RefHasher>>,
    /// Set once by [`InFlight::close`]; from then on nothing can be registered.
    closed: Option<CloseReason>,
}

/// The outstanding calls and pings of one connection, shared by the [`Channel`]
/// handles and the dispatch task.
///
/// [`Channel`]: crate::Channel
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    state: Mutex<State>,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held, but a poisoned map is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `id`, returning the receiver its answer will arrive on, or the close
    /// reason when the connection has already ended.
    pub(crate) fn register(
        &self,
        id: Ref,
        kind: Kind,
    ) -> Result<oneshot::Receiver<Outcome>, CloseReason> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(reason.clone());
        }
        let waiter = Waiter::One(tx);
        state.pending.insert(id, Entry { kind, waiter });
        Ok(rx)
    }

    /// Registers the calls `ids` as the batch `batch` (the `i`th id answers into its
    /// `i`th slot), under one lock; or nothing, and the close reason, when the
    /// connection has already ended.
    pub(crate) fn register_batch(
        &self,
        ids: &[Ref],
        batch: &Arc<Batch>,
    ) -> Result<(), CloseReason> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(reason.clone());
        }
        for (index, &id) in ids.iter().enumerate() {
            let batch = Arc::clone(batch);
            let waiter = Waiter::Batch { batch, index };
            state.pending.insert(
                id,
                Entry {
                    kind: Kind::Call,
                    waiter,
                },
            );
        }
        Ok(())
    }

    /// Delivers the answer to `id`. Returns `false` when no caller waits for it (it timed
    /// out or gave up, or the server sent a `Ref` we never used): the answer is dropped.
    pub(crate) fn complete(&self, id: Ref, kind: Kind, outcome: Outcome) -> bool {
        let entry = {
            let mut state = self.lock();
            match state.pending.get(&id) {
                Some(e) if e.kind == kind => state.pending.remove(&id),
                _ => None,
            }
        };
        match entry {
            // The receiver may be gone if the caller is being dropped right now.
            Some(e) => e.waiter.deliver(outcome),
            None => false,
        }
    }

    /// Forgets `id` (its caller timed out or was dropped); a later answer is dropped.
    pub(crate) fn cancel(&self, id: Ref) {
        self.lock().pending.remove(&id);
    }

    /// [`cancel`](Self::cancel) for several, under one lock.
    pub(crate) fn cancel_all(&self, ids: &[Ref]) {
        let mut state = self.lock();
        for id in ids {
            state.pending.remove(id);
        }
    }

    /// Ends the map: every waiting caller gets `Error::Closed(reason)` now, and later
    /// registrations fail with `reason`. Only the first call has an effect.
    pub(crate) fn close(&self, reason: CloseReason) {
        let drained: Vec<Entry> = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(reason.clone());
            state.pending.drain().map(|(_, e)| e).collect()
        };
        // Sent outside the lock: waking callers must not contend with it.
        for e in drained {
            e.waiter.deliver(Err(Error::Closed(reason.clone())));
        }
    }

    /// How many calls and pings are waiting.
    pub(crate) fn len(&self) -> usize {
        self.lock().pending.len()
    }
}

/// Removes its entry from the map when dropped, unless [`Armed::disarm`]ed: the caller
/// timed out, or its future was dropped before the answer came.
#[derive(Debug)]
pub(crate) struct Armed<'a> {
    in_flight: &'a InFlight,
    id: Ref,
    armed: bool,
}

impl<'a> Armed<'a> {
    /// A guard for `id`, which must already be registered.
    pub(crate) fn new(in_flight: &'a InFlight, id: Ref) -> Armed<'a> {
        Armed {
            in_flight,
            id,
            armed: true,
        }
    }

    /// The answer arrived: the dispatch task already removed the entry.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.in_flight.cancel(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_refs_spread_over_the_whole_hash() {
        use std::collections::HashSet;
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<RefHasher>::default();
        let hashes: Vec<u64> = (1..=10_000u64).map(|r| build.hash_one(r)).collect();
        assert_eq!(hashes.iter().collect::<HashSet<_>>().len(), hashes.len());
        // hashbrown picks a group with the low bits and filters with the top 7.
        let top: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(top.len(), 128, "top bits barely vary");
        let low: HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        assert!(low.len() > 900, "only {} of 1024 buckets used", low.len());
    }

    #[test]
    fn answers_go_to_their_own_caller() {
        let m = InFlight::default();
        let mut a = m.register(1, Kind::Call).unwrap();
        let mut b = m.register(2, Kind::Call).unwrap();
        assert!(m.complete(2, Kind::Call, Ok(Term::atom("b"))));
        assert!(m.complete(1, Kind::Call, Ok(Term::atom("a"))));
        assert_eq!(a.try_recv().unwrap().unwrap(), Term::atom("a"));
        assert_eq!(b.try_recv().unwrap().unwrap(), Term::atom("b"));
        assert_eq!(m.len(), 0);
        // A second answer to the same ref finds nothing.
        assert!(!m.complete(1, Kind::Call, Ok(Term::nil())));
    }

    #[test]
    fn a_pong_does_not_answer_a_call() {
        let m = InFlight::default();
        let _rx = m.register(5, Kind::Call).unwrap();
        assert!(!m.complete(5, Kind::Ping, Ok(Term::nil())));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_dropped_guard_removes_the_entry_and_a_disarmed_one_does_not() {
        let m = InFlight::default();
        let _rx = m.register(1, Kind::Call).unwrap();
        drop(Armed::new(&m, 1));
        assert_eq!(m.len(), 0);
        assert!(!m.complete(1, Kind::Call, Ok(Term::nil())));
        let _rx = m.register(2, Kind::Call).unwrap();
        Armed::new(&m, 2).disarm();
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_batch_gathers_its_answers_in_order_and_close_fails_the_rest() {
        let m = InFlight::default();
        let batch = Batch::new(3);
        m.register_batch(&[10, 11, 12], &batch).unwrap();
        assert_eq!(m.len(), 3);
        assert!(m.complete(12, Kind::Call, Ok(Term::atom("c"))));
        assert!(m.complete(10, Kind::Call, Ok(Term::atom("a"))));
        // A pong cannot answer a batch's call either.
        assert!(!m.complete(11, Kind::Ping, Ok(Term::nil())));
        let waiting = futures_util::FutureExt::now_or_never(batch.complete());
        assert!(waiting.is_none(), "complete with one answer missing");
        m.close(CloseReason::ClosedByServer);
        assert!(futures_util::FutureExt::now_or_never(batch.complete()).is_some());
        let outcomes = batch.take();
        assert_eq!(
            outcomes[0].as_ref().unwrap().as_ref().unwrap(),
            &Term::atom("a")
        );
        assert!(matches!(
            outcomes[1],
            Some(Err(Error::Closed(CloseReason::ClosedByServer)))
        ));
        assert_eq!(
            outcomes[2].as_ref().unwrap().as_ref().unwrap(),
            &Term::atom("c")
        );
        let late = Batch::new(1);
        assert_eq!(
            m.register_batch(&[13], &late).unwrap_err(),
            CloseReason::ClosedByServer
        );
    }

    #[test]
    fn cancelled_batch_entries_are_gone() {
        let m = InFlight::default();
        let batch = Batch::new(2);
        m.register_batch(&[1, 2], &batch).unwrap();
        m.cancel_all(&[1, 2]);
        assert_eq!(m.len(), 0);
        assert!(!m.complete(1, Kind::Call, Ok(Term::nil())));
        assert!(batch.take().iter().all(Option::is_none));
    }

    #[test]
    fn close_fails_everyone_and_refuses_newcomers() {
        let m = InFlight::default();
        let mut a = m.register(1, Kind::Call).unwrap();
        let mut p = m.register(2, Kind::Ping).unwrap();
        m.close(CloseReason::ClosedByServer);
        for rx in [&mut a, &mut p] {
            match rx.try_recv().unwrap() {
                Err(Error::Closed(CloseReason::ClosedByServer)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            m.register(3, Kind::Call).unwrap_err(),
            CloseReason::ClosedByServer
        );
        // The first reason sticks.
        m.close(CloseReason::ClosedByClient);
        assert_eq!(
            m.register(4, Kind::Call).unwrap_err(),
            CloseReason::ClosedByServer
        );
    }
}
