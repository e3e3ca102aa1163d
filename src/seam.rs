//! The neutral seams between layers: types that a lower module implements and a higher one
//! consumes, kept here so neither has to import the other (see the layering in `lib.rs`).
//! This module imports nothing from the crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

/// A boxed future, for async methods of object-safe traits (`Commander`, `Battery`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that contributes to `/metrics` and `/healthz` (dispatch, devices, clock).
pub trait StatusSource: Send + Sync {
    fn render_metrics(&self, out: &mut String);
    /// Reasons the gateway is not healthy; empty when healthy.
    fn health_problems(&self) -> Vec<String>;
}

/// The status sources of a running gateway, gathered as one: the daemon registers each part
/// as it starts it; the server's `/metrics` and `/healthz` read them all.
#[derive(Default)]
pub(crate) struct StatusBoard {
    sources: RwLock<Vec<Arc<dyn StatusSource>>>,
}

impl StatusBoard {
    pub(crate) fn add(&self, source: Arc<dyn StatusSource>) {
        self.sources.write().expect("sources lock").push(source);
    }

    fn all(&self) -> Vec<Arc<dyn StatusSource>> {
        self.sources.read().expect("sources lock").clone()
    }
}

impl StatusSource for StatusBoard {
    fn render_metrics(&self, out: &mut String) {
        for s in self.all() {
            s.render_metrics(out);
        }
    }

    fn health_problems(&self) -> Vec<String> {
        self.all()
            .iter()
            .flat_map(|s| s.health_problems())
            .collect()
    }
}

/// "The stored timeslots changed; plan again": bumped after every commit that created or
/// changed a timeslot (webhook, MQTT uplink, polling backstop) and by admin commands that
/// change what is planned (override, clear, reload). Dispatch waits on it.
#[derive(Clone)]
pub(crate) struct ChangeSignal {
    tx: tokio::sync::watch::Sender<u64>,
}

impl Default for ChangeSignal {
    fn default() -> Self {
        ChangeSignal {
            tx: tokio::sync::watch::channel(0).0,
        }
    }
}

impl ChangeSignal {
    /// Something changed: wake every subscriber.
    pub(crate) fn bump(&self) {
        self.tx.send_modify(|n| *n += 1);
    }

    /// A receiver that sees each later bump (coalesced: several bumps, one wake-up).
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static str);

    impl StatusSource for Fixed {
        fn render_metrics(&self, out: &mut String) {
            out.push_str(self.0);
        }
        fn health_problems(&self) -> Vec<String> {
            vec![self.0.to_string()]
        }
    }

    #[test]
    fn board_renders_every_source_in_order() {
        let board = StatusBoard::default();
        board.add(Arc::new(Fixed("a")));
        board.add(Arc::new(Fixed("b")));
        let mut out = String::new();
        board.render_metrics(&mut out);
        assert_eq!(out, "ab");
        assert_eq!(board.health_problems(), ["a", "b"]);
    }

    #[tokio::test]
    async fn bump_wakes_a_subscriber() {
        let signal = ChangeSignal::default();
        let mut rx = signal.subscribe();
        signal.clone().bump();
        tokio::time::timeout(std::time::Duration::from_secs(1), rx.changed())
            .await
            .expect("woken")
            .expect("sender alive");
    }
}
