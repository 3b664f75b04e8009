//! [`shutdown_signal`]: the future to hand [`Server::run`](crate::Server::run) in a
//! program that stops on SIGINT (Ctrl-C) or SIGTERM, as `lib_chan serve` does.

/// Resolves on the first SIGINT or SIGTERM. A signal that cannot be listened for is
/// left out (logged), so this never resolves on an error of its own.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("signal received: shutting down");
}
