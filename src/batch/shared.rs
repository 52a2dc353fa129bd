//! One batch driven by several replicas over the shared store (`pg.rs`).
//! Every replica's supervisor runs this for every active batch:
//!
//! ```text
//! validating  -> in_progress: the first replica there records the lines
//! in_progress: claim free lines (as many as this replica has room for),
//!              run them, store each answer with the claim check; repeat
//!              until no line is left to do, then the one that finds none
//!              left assembles the result files -> completed
//! cancelling / past expires_at: whoever sees it first ends the batch,
//!              unanswered lines listed as never run
//! ```
//! Claims are renewed by the service while this replica lives; a replica
//! killed mid-batch stops renewing, and its lines go to the others once
//! their lease runs out. Cancellation from any replica is seen here within
//! a second (the stored status is polled).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::driver::{judge, not_run_reason, DriveError};
use super::exec::LineOutcome;
use super::input::scan;
use super::pg::{request_of, ClaimedLine, PgBatchStore};
use super::runner::{RunEnd, Stop};
use super::service::{BatchService, Live};
use super::wire::{BatchObject, BatchStatus, ResultLine};
use crate::api::unix_now;

/// How often a running batch's stored status is read (cross-replica cancel).
const STATUS_POLL: Duration = Duration::from_secs(1);
/// How often to look for free lines when none were free.
const CLAIM_POLL: Duration = Duration::from_millis(500);

/// Drives batch `id` with the other replicas until it is final, this
/// server drains, or the engine is unavailable (the supervisor retries).
pub async fn drive(svc: &Arc<BatchService>, pg: &PgBatchStore, id: &str, live: &Arc<Live>) -> Result<(), DriveError> {
    let mut content: Option<Arc<Vec<u8>>> = None;
    loop {
        if svc.is_draining() {
            return Ok(());
        }
        let Some(row) = pg.batch(id).await? else { return Ok(()) };
        let (owner, b) = (row.owner, row.object);
        match b.status {
            BatchStatus::Validating => validate(pg, b).await?,
            BatchStatus::InProgress if unix_now() >= b.expires_at.unwrap_or(u64::MAX) => {
                finish(pg, &owner, b, BatchStatus::Expired).await?;
            }
            BatchStatus::InProgress => {
                let bytes = match &content {
                    Some(c) => c.clone(),
                    None => {
                        let Some(c) = pg.file_content(&b.input_file_id).await? else {
                            tracing::error!(batch = %id, file = %b.input_file_id, "the input file of a running batch is gone");
                            return finish(pg, &owner, b, BatchStatus::Cancelled).await;
                        };
                        content.insert(Arc::new(c)).clone()
                    }
                };
                match run(svc, pg, &b, bytes, live).await? {
                    RunEnd::AllAnswered => {
                        if pg.todo(id).await? == 0 {
                            finish(pg, &owner, b, BatchStatus::Completed).await?;
                        } else {
                            // Other replicas hold the rest: wait for them
                            // (or for their leases to run out).
                            tokio::time::sleep(CLAIM_POLL).await;
                        }
                    }
                    RunEnd::Stopped(Stop::Cancelled | Stop::Expired) => {}
                    RunEnd::Stopped(Stop::Draining) => return Ok(()),
                    RunEnd::Unavailable(why) => {
                        tracing::warn!(batch = %id, reason = %why, "engine unavailable; the batch resumes later");
                        return Ok(());
                    }
                }
            }
            BatchStatus::Finalizing => finish(pg, &owner, b, BatchStatus::Completed).await?,
            BatchStatus::Cancelling => finish(pg, &owner, b, BatchStatus::Cancelled).await?,
            BatchStatus::Completed | BatchStatus::Failed | BatchStatus::Expired | BatchStatus::Cancelled => return Ok(()),
        }
    }
}

/// Checks the input file; the first replica to get there records the lines.
async fn validate(pg: &PgBatchStore, mut b: BatchObject) -> Result<(), DriveError> {
    let content = pg.file_content(&b.input_file_id).await?;
    let scanned = match content {
        Some(bytes) => tokio::task::spawn_blocking(move || scan(std::io::BufReader::new(&bytes[..]))).await?,
        None => Err(super::input::InputError::Io(std::io::Error::new(std::io::ErrorKind::NotFound, "the input file was deleted"))),
    };
    match judge(&mut b, scanned) {
        Some(lines) => {
            if pg.start_batch(&b, &lines).await? {
                tracing::info!(batch = %b.id, lines = lines.len(), "batch validated; its lines are open to every replica");
            }
        }
        None => {
            pg.update_batch(&b, BatchStatus::Validating).await?;
        }
    }
    Ok(())
}

/// Ends the batch as `outcome` if no replica did yet.
async fn finish(pg: &PgBatchStore, owner: &str, b: BatchObject, outcome: BatchStatus) -> Result<(), DriveError> {
    let from = b.status;
    if let Some(done) = pg.finish(owner, b, from, outcome, not_run_reason(outcome), unix_now()).await? {
        let o = done.object;
        tracing::info!(batch = %o.id, status = o.status.as_str(), completed = o.request_counts.completed,
            failed = o.request_counts.failed, "batch finished");
    }
    Ok(())
}

type Task = (ClaimedLine, LineOutcome);

/// Runs one claimed line under this server's batch places.
async fn run_one(svc: Arc<BatchService>, content: Arc<Vec<u8>>, line: ClaimedLine) -> Task {
    let places = line.weight.clamp(1, svc.cap.max(1)) as u32;
    let permit = svc.slots.clone().acquire_many_owned(places).await.expect("the batch semaphore is never closed");
    let outcome = match request_of(&content, &line) {
        Ok(request) => svc.exec.run(request).await,
        Err(e) => LineOutcome::Unavailable(format!("reading the input file: {e}")),
    };
    drop(permit);
    (line, outcome)
}

/// Claims and runs lines until none is free and none is running here, or
/// a stop. Whatever stops it gives this replica's claims back.
async fn run(svc: &Arc<BatchService>, pg: &PgBatchStore, b: &BatchObject, content: Arc<Vec<u8>>, live: &Arc<Live>) -> Result<RunEnd, DriveError> {
    let me = svc.replica.as_str();
    // Claims an earlier driver of this process left behind are free again.
    pg.release(&b.id, me).await?;
    let expires_at = b.expires_at.unwrap_or(u64::MAX);
    let mut tasks: JoinSet<Task> = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_at = Instant::now();
    let mut claimed_total = 0usize;
    let end = loop {
        let stop = if live.cancel.load(Ordering::SeqCst) {
            Some(Stop::Cancelled)
        } else if svc.is_draining() {
            Some(Stop::Draining)
        } else if unix_now() >= expires_at {
            Some(Stop::Expired)
        } else if status_at.elapsed() >= STATUS_POLL {
            status_at = Instant::now();
            match pg.batch(&b.id).await?.map(|r| r.object.status) {
                Some(BatchStatus::InProgress) => None,
                _ => Some(Stop::Cancelled),
            }
        } else {
            None
        };
        if let Some(stop) = stop {
            break RunEnd::Stopped(stop);
        }
        let room = svc.cap.saturating_sub(tasks.len()).min(svc.slots.available_permits());
        let mut none_free = false;
        if room > 0 {
            let claimed = pg.claim(&b.id, me, room).await?;
            none_free = claimed.is_empty();
            claimed_total += claimed.len();
            for line in claimed {
                tasks.spawn(run_one(svc.clone(), content.clone(), line));
            }
        }
        if tasks.is_empty() && none_free {
            break RunEnd::AllAnswered;
        }
        tokio::select! {
            biased;
            Some(joined) = tasks.join_next() => match joined {
                Ok((line, LineOutcome::Answered { status, request_id, body })) => {
                    let result = ResultLine::answered(&line.custom_id, status, request_id, body);
                    if !pg.complete(&b.id, line.idx, me, &result).await? {
                        tracing::warn!(batch = %b.id, custom_id = %line.custom_id, "lost the claim on a line; its answer is dropped");
                    }
                }
                Ok((_, LineOutcome::Unavailable(why))) => break RunEnd::Unavailable(why),
                Err(e) => break RunEnd::Unavailable(format!("a batch task failed: {e}")),
            },
            _ = tick.tick() => {}
        }
    };
    tasks.abort_all();
    pg.release(&b.id, me).await?;
    if claimed_total > 0 {
        tracing::debug!(batch = %b.id, replica = me, claimed = claimed_total, "batch run ended");
    }
    Ok(end)
}
