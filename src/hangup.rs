//! SIGHUP for `lib_chan serve`: re-read the config file and swap it in while serving
//! (`systemctl reload lib_chan`, or `kill -HUP PID`).
//!
//! The file is loaded and checked whole (`Config::load` with the registry, then
//! `Reloader::reload`, which loads the TLS pair and makes the new services); a bad file
//! is refused with one error line naming the file, line and key, and the running config
//! stays in force. `--port` applies to the reloaded config as it did at start. The work
//! runs on a blocking thread, as making a service may open a file or reach a Redis.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lib_chan_server::{Config, Registry, ReloadSummary, Reloader, StartError};
use tokio::signal::unix::{signal, SignalKind};

/// Listens for SIGHUP from now on (so call it before announcing the server: SIGHUP's
/// default action would end the process) and reloads `path` on each one; with no
/// `path` (the built-in default is served) each SIGHUP just logs that.
///
/// # Errors
/// SIGHUP cannot be listened for.
pub(crate) fn listen(
    reloader: Reloader,
    registry: Registry,
    path: Option<PathBuf>,
    port: Option<u16>,
) -> anyhow::Result<()> {
    let mut hangups = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let Some(path) = path.clone() else {
                tracing::info!(
                    "SIGHUP: serving the built-in default, there is no config file to reload"
                );
                continue;
            };
            tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
            let (reloader, registry) = (reloader.clone(), registry.clone());
            let shown = path.display().to_string();
            let outcome =
                tokio::task::spawn_blocking(move || reload(&path, port, &registry, &reloader))
                    .await;
            match outcome {
                // The server logged what changed.
                Ok(Ok(_summary)) => {}
                Ok(Err(e)) => tracing::error!(
                    config = %shown,
                    "config reload refused, the running config stays in force: {e}"
                ),
                Err(e) => tracing::error!(
                    config = %shown,
                    "config reload failed, the running config stays in force: {e}"
                ),
            }
        }
    });
    Ok(())
}

/// Loads `path` and swaps it in.
fn reload(
    path: &Path,
    port: Option<u16>,
    registry: &Registry,
    reloader: &Reloader,
) -> Result<ReloadSummary, StartError> {
    let mut config = Config::load(path, registry)?;
    if let Some(port) = port {
        config.port = port;
    }
    reloader.reload(config, registry)
}
