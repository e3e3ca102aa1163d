//! Ordered shutdown (issue 16.5): the daemon's tasks are spawned into stages, each a
//! `TaskTracker` with its own `CancellationToken`. Shutdown cancels and awaits one stage
//! after another, so nothing the next stage depends on (dispatch, the database) goes away
//! while a task of an earlier one still runs, and no task is left behind detached.

use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One group of tasks stopped together.
pub(crate) struct Stage {
    name: &'static str,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// The same signal for the parts that take a `watch` receiver (server, dispatch, …).
    stop: watch::Sender<bool>,
}

impl Stage {
    pub(crate) fn new(name: &'static str) -> Stage {
        Stage {
            name,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            stop: watch::channel(false).0,
        }
    }

    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    pub(crate) fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub(crate) fn stop_rx(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Completes when the stage is told to stop (for APIs that take a shutdown future).
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        self.cancel.clone().cancelled_owned()
    }

    /// Tasks not yet ended.
    pub(crate) fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Tell every task of the stage to stop and wait for them, at most `bound`: a task that
    /// outlives it is named in the log, and shutdown goes on (systemd's stop timeout is
    /// longer than every bound together).
    pub(crate) async fn stop(&self, bound: Duration) {
        self.cancel.cancel();
        let _ = self.stop.send(true);
        self.tracker.close();
        if tokio::time::timeout(bound, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                stage = self.name,
                left = self.tracker.len(),
                "tasks still running after the shutdown bound; going on"
            );
        } else {
            tracing::debug!(stage = self.name, "stage stopped");
        }
    }
}

/// A stage dropped without [`Stage::stop`] (a start that failed half-way) still tells its
/// tasks to stop, so none is left running detached.
impl Drop for Stage {
    fn drop(&mut self) {
        self.cancel.cancel();
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn stop_cancels_and_awaits_every_task() {
        let stage = Stage::new("test");
        let ended = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let (token, ended) = (stage.token(), ended.clone());
            stage.spawn(async move {
                token.cancelled().await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
        let mut rx = stage.stop_rx();
        let e = ended.clone();
        stage.spawn(async move {
            let _ = rx.wait_for(|s| *s).await;
            e.fetch_add(1, Ordering::SeqCst);
        });
        stage.stop(Duration::from_secs(5)).await;
        assert_eq!(ended.load(Ordering::SeqCst), 4);
        assert_eq!(stage.running(), 0);
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_signal_is_waited_for_only_up_to_the_bound() {
        let stage = Stage::new("test");
        stage.spawn(std::future::pending());
        let started = tokio::time::Instant::now();
        stage.stop(Duration::from_millis(100)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(stage.running(), 1);
    }

    #[tokio::test]
    async fn a_dropped_stage_tells_its_tasks_to_stop() {
        let stage = Stage::new("test");
        let token = stage.token();
        drop(stage);
        assert!(token.is_cancelled());
    }
}
