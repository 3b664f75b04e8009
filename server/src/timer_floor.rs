//! The timer floor: one timer always due within [`FLOOR`], so that arming a connection's
//! timers does not wake a sleeping worker thread.
//!
//! tokio's timer wheel remembers when the thread parked in the reactor must wake next.
//! A timer armed earlier than that (and with no timer at all, any timer is earlier)
//! makes the arming thread wake the parked one, through an `eventfd` write, only for it
//! to work out its new timeout and sleep again. Every connection arms a few timers (the
//! handshake deadline, the linger after close, the handler's end), each seconds long:
//! `perf` showed about two such wake-ups per connect + login + lookup, each a system
//! call on one core and a wake-up on the other. With a timer always due within
//! [`FLOOR`], those later deadlines never come first, and nobody is woken; the price
//! is one wake-up every [`FLOOR`] for the whole server.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// How often the floor's timer fires: shorter than any timer the server arms per
/// connection, long enough to cost nothing measurable.
pub(crate) const FLOOR: Duration = Duration::from_millis(250);

/// Keeps the floor until `stop` is cancelled.
pub(crate) async fn run(stop: CancellationToken) {
    let mut ticks = tokio::time::interval(FLOOR);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => break,
        }
    }
}
