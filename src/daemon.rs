//! `leap-edge run`: wire the stages together, serve until SIGTERM/SIGINT, then shut down in
//! order — stop accepting, finish in-flight requests, release the batteries, close the
//! database.

use crate::config::Config;
use crate::server::{self, App};
use crate::store::Store;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

pub async fn run(config: Config) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    let (store, store_thread) = Store::open(&config.storage.path)?;
    tracing::info!(path = %config.storage.path.display(), "database open (WAL, synchronous=FULL)");
    let tls = match &config.server.tls {
        Some(t) => Some(server::tls::acceptor(&t.cert, &t.key)?),
        None => None,
    };
    let listener = server::bind(config.server.listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| server::ServerError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let app = Arc::new(App::new(config.clone(), store.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let http = tokio::spawn(server::serve(
        listener,
        tls.clone(),
        app.clone(),
        stopped(stop_rx.clone()),
    ));
    tracing::info!(
        addr = %addr, path = %config.server.path, tls = tls.is_some(),
        "listening for Leap notifications"
    );
    wait_for_signal().await?;
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    let _ = stop_tx.send(true);
    let _ = http.await;
    drop(app);
    drop(store);
    store_thread.join();
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
    }
    Ok(())
}
