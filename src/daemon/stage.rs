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
