//! `[schedule]`: housekeeping jobs (the Leap poll, retention pruning, the integrity check)
//! on cron expressions, run by tokio-cron-scheduler. Housekeeping only: that scheduler polls
//! every 500 ms and was measured to fire up to ~1 s early, so timeslot boundaries stay on
//! the dispatch loop's own timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

pub(crate) type Task = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Start a scheduler running each `(key, cron expression, task)`; the expressions were
/// validated by `config check`, so a failure here names the key and stops the start.
pub(crate) async fn start(jobs: Vec<(&'static str, String, Task)>) -> Result<JobScheduler, String> {
    let sched = JobScheduler::new()
        .await
        .map_err(|e| format!("cannot start the housekeeping scheduler: {e}"))?;
    for (key, expr, task) in jobs {
        let job = Job::new_async(expr.as_str(), move |_id, _lock| {
            let task = task.clone();
            Box::pin(async move {
                tracing::debug!(job = key, "scheduled job fired");
                task().await;
            })
        })
        .map_err(|e: JobSchedulerError| format!("schedule.{key} = \"{expr}\": {e}"))?;
        sched
            .add(job)
            .await
            .map_err(|e| format!("schedule.{key}: {e}"))?;
    }
    sched
        .start()
        .await
        .map_err(|e| format!("cannot start the housekeeping scheduler: {e}"))?;
    Ok(sched)
}
