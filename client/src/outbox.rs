//! The outbox: encoded frames on their way from a channel's handles to its dispatch task.
//!
//! One byte buffer behind a `std::sync::Mutex`, as the server's outbound queue does it,
//! instead of a channel of one allocation per frame. A caller encodes its frame straight
//! into the buffer under the lock (a few hundred nanoseconds for a call), and wakes the
//! writer only when the buffer was empty: the writer takes everything queued at once by
//! swapping buffers, so a burst of calls from many tasks costs one wake-up, one TLS
//! record and one write, and no copy. Two buffers go back and forth between the handles
//! and the writer, so a steady stream of calls allocates nothing.
//!
//! It is bounded as the channel it replaced was: at most [`OUTGOING_QUEUE`] frames wait;
//! past that, senders wait for the writer to take them. A frame alone is always
//! accepted, whatever its size (the frame limit is checked when it is encoded).
//!
//! [`OUTGOING_QUEUE`]: crate::OUTGOING_QUEUE

use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::BytesMut;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// What [`Outbox::take`] moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    /// Frames moved.
    pub(crate) frames: usize,
    /// The outbox is closed: nothing more will come.
    pub(crate) closed: bool,
}

/// The outbox was closed: the connection is ending and takes no new frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

#[derive(Debug, Default)]
struct State {
    /// Whole frames, in the order they were pushed.
    bytes: BytesMut,
    /// How many frames `bytes` holds.
    frames: usize,
    /// Set once; from then on pushes fail.
    closed: bool,
    /// A sender is waiting for room.
    sender_waiting: bool,
}

/// The queue of encoded frames of one channel; see the module documentation.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// At most this many frames wait before senders wait too.
    max_frames: usize,
    /// Wakes the writer: the buffer went from empty to not, or the outbox closed.
    ready: Notify,
    /// Wakes the senders waiting for room.
    room: Notify,
}

impl Outbox {
    /// An empty outbox taking up to `max_frames` frames (at least one).
    pub(crate) fn new(max_frames: usize) -> Outbox {
        Outbox {
            state: Mutex::default(),
            max_frames: max_frames.max(1),
            ready: Notify::new(),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held, but a poisoned buffer is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `frames` frames written by `encode`, waiting while the outbox is full.
    /// `encode` runs under the lock and must leave the buffer as it found it when it
    /// fails; its error is returned as `Ok(Err(e))`, and nothing is queued.
    ///
    /// Cancel-safe: a future dropped while waiting for room has queued nothing.
    pub(crate) async fn push<E>(
        &self,
        frames: usize,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<Result<(), E>, Closed> {
        let mut encode = Some(encode);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a writer taking frames after it cannot be
            // missed.
            room.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(Closed);
                }
                if state.frames == 0 || state.frames + frames <= self.max_frames {
                    let was_empty = state.bytes.is_empty();
                    let encode = encode.take().expect("encode runs once");
                    if let Err(e) = encode(&mut state.bytes) {
                        return Ok(Err(e));
                    }
                    state.frames += frames;
                    drop(state);
                    if was_empty {
                        self.ready.notify_one();
                    }
                    return Ok(Ok(()));
                }
                state.sender_waiting = true;
            }
            room.await;
        }
    }

    /// Resolves at the next wake-up for the writer: frames pushed into an empty outbox,
    /// or the outbox closed. The writer keeps one pinned across its loop (registering a
    /// new waiter each pass costs a lock), makes a new one each time it fires, and calls
    /// [`take`](Self::take) before waiting: a push into a buffer that was not empty wakes
    /// nobody. A wake-up may find nothing left to take.
    pub(crate) fn woken(&self) -> Notified<'_> {
        self.ready.notified()
    }

    /// Moves every queued frame to the end of `out`; returns how many, and whether the
    /// outbox is closed. Senders waiting for room are woken.
    pub(crate) fn take(&self, out: &mut BytesMut) -> Taken {
        let (taken, wake) = {
            let mut state = self.lock();
            if out.is_empty() {
                std::mem::swap(out, &mut state.bytes);
            } else {
                out.extend_from_slice(&state.bytes);
                state.bytes.clear();
            }
            let taken = Taken {
                frames: std::mem::take(&mut state.frames),
                closed: state.closed,
            };
            (taken, std::mem::take(&mut state.sender_waiting))
        };
        if wake {
            self.room.notify_waiters();
        }
        taken
    }

    /// Refuses every later push, wakes the writer and every waiting sender. Frames
    /// already queued can still be taken.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
        self.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn push_now(outbox: &Outbox, bytes: &[u8]) -> Result<(), Closed> {
        let push = outbox.push(1, |buf| {
            buf.extend_from_slice(bytes);
            Ok::<(), ()>(())
        });
        futures_util::FutureExt::now_or_never(push)
            .expect("room in the outbox")
            .map(|r| r.unwrap())
    }

    #[tokio::test]
    async fn frames_come_out_in_order_in_one_take_and_buffers_are_reused() {
        let outbox = Outbox::new(8);
        push_now(&outbox, b"a").unwrap();
        push_now(&outbox, b"bc").unwrap();
        outbox.woken().await;
        let mut out = BytesMut::with_capacity(64);
        assert_eq!(outbox.take(&mut out).frames, 2);
        assert_eq!(&out[..], b"abc");
        // The writer's old buffer (capacity 64) is now the one senders fill.
        push_now(&outbox, b"d").unwrap();
        assert!(outbox.lock().bytes.capacity() >= 64);
        // Taking into a buffer that already holds frames appends.
        assert_eq!(outbox.take(&mut out).frames, 1);
        assert_eq!(&out[..], b"abcd");
        let none = outbox.take(&mut out);
        assert_eq!((none.frames, none.closed), (0, false));
    }

    #[tokio::test]
    async fn a_failed_encoding_queues_nothing_and_wakes_nobody() {
        let outbox = Outbox::new(8);
        let failed = outbox.push(1, |_buf| Err("too large")).await;
        assert_eq!(failed, Ok(Err("too large")));
        let mut out = BytesMut::new();
        assert_eq!(outbox.take(&mut out).frames, 0);
        assert!(out.is_empty());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), outbox.woken())
                .await
                .is_err(),
            "the writer was woken for nothing"
        );
    }

    #[tokio::test]
    async fn a_full_outbox_makes_senders_wait_until_the_writer_takes() {
        let outbox = Arc::new(Outbox::new(2));
        push_now(&outbox, b"1").unwrap();
        push_now(&outbox, b"2").unwrap();
        let waiting = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                outbox
                    .push(1, |buf| {
                        buf.extend_from_slice(b"3");
                        Ok::<(), ()>(())
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a third frame went past the bound");
        let mut out = BytesMut::new();
        assert_eq!(outbox.take(&mut out).frames, 2);
        assert_eq!(waiting.await.unwrap(), Ok(Ok(())));
        out.clear();
        assert_eq!(outbox.take(&mut out).frames, 1);
        assert_eq!(&out[..], b"3");
    }

    #[tokio::test]
    async fn a_lone_frame_goes_in_whatever_the_bound() {
        let outbox = Outbox::new(1);
        let push = outbox.push(5, |buf| {
            buf.extend_from_slice(b"12345");
            Ok::<(), ()>(())
        });
        assert_eq!(push.await, Ok(Ok(())));
        let mut out = BytesMut::new();
        assert_eq!(outbox.take(&mut out).frames, 5);
    }

    #[tokio::test]
    async fn close_refuses_new_frames_keeps_queued_ones_and_frees_waiting_senders() {
        let outbox = Arc::new(Outbox::new(1));
        push_now(&outbox, b"kept").unwrap();
        let waiting = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.push(1, |_| Ok::<(), ()>(())).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.close();
        assert_eq!(waiting.await.unwrap(), Err(Closed));
        assert_eq!(push_now(&outbox, b"late"), Err(Closed));
        outbox.woken().await;
        let mut out = BytesMut::new();
        let taken = outbox.take(&mut out);
        assert_eq!((taken.frames, taken.closed), (1, true));
        assert_eq!(&out[..], b"kept");
    }
}
