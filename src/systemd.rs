//! systemd's service notifications (`Type=notify`, sd_notify(3)) for `lib_chan serve`:
//! `READY=1` once the server listens, `STOPPING=1` when it begins to shut down, and
//! `WATCHDOG=1` at half the
//! unit's `WatchdogSec` from a task on the server's runtime, so that a server whose
//! runtime stalls is restarted by systemd. Without `$NOTIFY_SOCKET` (not under systemd)
//! each is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// The server listens: systemd may start what depends on it.
pub(crate) fn ready() {
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd the server is ready");
    }
}

/// Shutdown has begun.
pub(crate) fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// When the unit has `WatchdogSec`, pings systemd at half that interval from a task of
/// the current runtime, for as long as the runtime runs.
pub(crate) fn spawn_watchdog() {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tracing::info!(every = ?every, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = sd_notify::notify(false, &[NotifyState::Watchdog]) {
                tracing::warn!(error = %e, "cannot ping the systemd watchdog");
            }
        }
    });
}
