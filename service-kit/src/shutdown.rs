//! A graceful stop: on SIGTERM or SIGINT the server stops accepting and
//! lets the requests it is serving finish.

use actix_web::dev::ServerHandle;
use tokio::signal::unix::{SignalKind, signal};

/// Stops `server` gracefully on the first SIGTERM or SIGINT. Call from
/// inside the runtime that serves it.
pub fn on_signal(server: ServerHandle) -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
            _ = interrupt.recv() => tracing::info!("SIGINT: finishing in-flight requests"),
        }
        server.stop(true).await;
    });
    Ok(())
}
