//! `[schedule]`: housekeeping jobs (the Leap poll, retention pruning, the integrity check,
//! the upload) on cron expressions. Each job is one task of the daemon's background stage,
//! so shutdown stops and awaits it (issue 16.5; tokio-cron-scheduler, used before, leaves
//! its own tasks running after its shutdown). The fire times are the ones `status` shows
//! (`leap::next_fire`, UTC). Housekeeping only: timeslot boundaries stay on the dispatch
//! loop's own timer.

use crate::stage::Stage;
use chrono::Utc;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) type Task = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A wall-clock step (NTP, SPEC §2.11) is noticed within this: the wait is re-measured.
const RECHECK: Duration = Duration::from_secs(30);

/// Run each `(key, cron expression, task)` on its expression until `stage` stops. The
/// expressions were validated by `config check`; one that does not parse names its key.
pub(crate) fn start(jobs: Vec<(&'static str, String, Task)>, stage: &Stage) -> Result<(), String> {
    for (key, expr, task) in jobs {
        if crate::leap::next_fire(&expr, Utc::now()).is_none() {
            return Err(format!(
                "schedule.{key} = \"{expr}\": not a cron expression that fires (see `leap-edge config check`)"
            ));
        }
        stage.spawn(run_job(key, expr, task, stage.token()));
    }
    Ok(())
}

async fn run_job(key: &'static str, expr: String, task: Task, stop: CancellationToken) {
    loop {
        let Some(next) = crate::leap::next_fire(&expr, Utc::now()) else {
            return;
        };
        loop {
            let left = (next - Utc::now()).to_std().unwrap_or_default();
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(left.min(RECHECK)) => {}
                _ = stop.cancelled() => return,
            }
        }
        tracing::debug!(job = key, "scheduled job fired");
        // Shutdown does not wait for a job's network retries (an upload): the database
        // closes after this stage.
        tokio::select! {
            _ = task() => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_job_fires_on_its_expression_and_ends_with_its_stage() {
        let stage = Stage::new("test");
        let fired = Arc::new(AtomicUsize::new(0));
        let f = fired.clone();
        let task: Task = Arc::new(move || {
            f.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {})
        });
        start(vec![("every-second", "* * * * * *".into(), task)], &stage).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while fired.load(Ordering::SeqCst) < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(fired.load(Ordering::SeqCst) >= 2);
        stage.stop(Duration::from_secs(1)).await;
        assert_eq!(stage.running(), 0);
    }

    #[test]
    fn an_expression_that_does_not_parse_names_its_key() {
        let stage = Stage::new("test");
        let task: Task = Arc::new(|| Box::pin(async {}));
        let e = start(vec![("prune", "not cron".into(), task)], &stage).unwrap_err();
        assert!(e.contains("schedule.prune"), "{e}");
    }
}
