//! The outbound queue of one connection: what its handler (and other connections'
//! handlers, pushing to it) hand the middle man to write, in order.
//!
//! A `VecDeque` behind a mutex with a [`Notify`], rather than a tokio mpsc channel:
//! tokio's channel allocates a 32-slot block and its padded state (about 2 KiB here) as
//! soon as it is made, and most connections sit idle; this queue allocates on its first
//! item. Many producers (any task holding the `MiddleMan`), one consumer (the middle
//! man). It never closes: the middle man holds a producer handle itself, and stops
//! reading the queue when the connection ends.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::handler::Outbound;

/// A queue of outbound items with their encoded sizes.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    items: Mutex<VecDeque<(Outbound, usize)>>,
    /// Woken once per push; a push made while nobody waits is remembered (a permit).
    pushed: Notify,
}

/// A queue that grew past this many items (a burst) gives its memory back once empty.
const KEEP_ITEMS: usize = 64;

impl OutQueue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<(Outbound, usize)>> {
        // Nothing panics while the lock is held, but a poisoned queue is still in order.
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `item` and wakes the middle man.
    pub(crate) fn push(&self, item: (Outbound, usize)) {
        self.lock().push_back(item);
        self.pushed.notify_one();
    }

    /// The first item, if any, without waiting.
    pub(crate) fn try_pop(&self) -> Option<(Outbound, usize)> {
        let mut items = self.lock();
        let first = items.pop_front();
        if items.is_empty() && items.capacity() > KEEP_ITEMS {
            *items = VecDeque::new();
        }
        first
    }

    /// A wake-up for the next push, for [`pop`](Self::pop). The middle man makes one
    /// and keeps it pinned across the passes of its loop: registering a new waiter on
    /// every pass would cost two locks each.
    pub(crate) fn pushed(&self) -> Notified<'_> {
        self.pushed.notified()
    }

    /// The first item, waiting on `pushed` (from [`pushed`](Self::pushed), renewed here
    /// each time it fires) for one. Cancel-safe: an item is taken only when it is
    /// returned, and the wake-up stays registered for the next call.
    pub(crate) async fn pop<'a>(
        &'a self,
        pushed: &mut Pin<&mut Notified<'a>>,
    ) -> (Outbound, usize) {
        loop {
            if let Some(item) = self.try_pop() {
                return item;
            }
            // A push between the look above and this wait left a permit: no wake-up lost.
            pushed.as_mut().await;
            pushed.set(self.pushed());
        }
    }

    /// True when nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lib_chan_protocol::Term;
    use std::sync::Arc;
    use std::time::Duration;

    fn reply(id: u64) -> (Outbound, usize) {
        (Outbound::Reply(id, Term::Int(id as i64)), 1)
    }

    fn id(item: (Outbound, usize)) -> u64 {
        match item.0 {
            Outbound::Reply(id, _) => id,
            _ => panic!("not a reply"),
        }
    }

    #[test]
    fn an_unused_queue_holds_no_memory_and_a_drained_burst_gives_it_back() {
        let q = OutQueue::default();
        assert_eq!(q.lock().capacity(), 0);
        for i in 0..1000 {
            q.push(reply(i));
        }
        assert!(q.lock().capacity() >= 1000);
        for i in 0..1000 {
            assert_eq!(q.try_pop().map(id), Some(i), "in order");
        }
        assert!(q.is_empty());
        assert_eq!(q.lock().capacity(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_producers_one_consumer_lose_nothing_and_keep_each_ones_order() {
        let q = Arc::new(OutQueue::default());
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let q = Arc::clone(&q);
                tokio::spawn(async move {
                    for i in 0..5_000 {
                        q.push(reply(p * 1_000_000 + i));
                        if i % 100 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        let mut last = [None::<u64>; 4];
        let pushed = q.pushed();
        tokio::pin!(pushed);
        for _ in 0..20_000 {
            let got = tokio::time::timeout(Duration::from_secs(10), q.pop(&mut pushed))
                .await
                .expect("every push is seen");
            let n = id(got);
            let p = (n / 1_000_000) as usize;
            assert!(last[p].is_none_or(|l| l < n), "producer {p} out of order");
            last[p] = Some(n);
        }
        for p in producers {
            p.await.unwrap();
        }
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_pop_is_woken_by_a_later_push_and_a_dropped_wait_takes_nothing() {
        let q = Arc::new(OutQueue::default());
        // A wait abandoned (as a select! does) leaves the next item in the queue.
        {
            let pushed = q.pushed();
            tokio::pin!(pushed);
            assert!(
                tokio::time::timeout(Duration::from_millis(20), q.pop(&mut pushed))
                    .await
                    .is_err()
            );
        }
        let waiter = tokio::spawn({
            let q = Arc::clone(&q);
            async move {
                let pushed = q.pushed();
                tokio::pin!(pushed);
                id(q.pop(&mut pushed).await)
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.push(reply(7));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .unwrap()
                .unwrap(),
            7
        );
    }
}
