//! One batch from `validating` to its final state. Every status change is
//! a compare-and-set on the stored status, so a cancel request racing with
//! the driver is never lost; every step can be redone after a crash:
//!
//! ```text
//! validating  -> in_progress (lines checked) | failed (errors with line numbers)
//! in_progress -> finalizing (every request answered) | expired (past expires_at)
//! cancelling  -> cancelled      finalizing -> completed
//! ```
//! Finalizing writes the output and error files in input order (requests
//! that never ran get an error line), then registers them and sets the
//! final status in one transaction.

use std::io::BufReader;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::input::{scan, InputError, LineRef};
use super::runner::{RunCtx, RunEnd, Stop};
use super::service::{BatchService, DataDir, Live};
use super::sink::{write_in_order, ResultSink};
use super::store::{FileRow, StoreError};
use super::wire::{result_file_id, BatchErrorItem, BatchErrors, BatchObject, BatchStatus, ResultLine};
use crate::api::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Shared(#[from] crate::pgstore::PgError),
    #[error("input file: {0}")]
    Input(#[from] InputError),
    #[error("blocking task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Most validation errors reported for one batch.
const MAX_ERRORS: usize = 100;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, DriveError> + Send + 'static) -> Result<T, DriveError> {
    tokio::task::spawn_blocking(f).await?
}

fn read_input(dir: &DataDir, file_id: &str) -> Result<Vec<LineRef>, InputError> {
    scan(BufReader::new(std::fs::File::open(dir.file(file_id))?))
}

/// Drives batch `id` until it is final, the server drains, or the engine
/// is unavailable (the supervisor retries later).
pub async fn drive(svc: &Arc<BatchService>, id: &str, live: &Arc<Live>) -> Result<(), DriveError> {
    loop {
        let Some(row) = svc.local_store().batch(id)? else { return Ok(()) };
        let b = row.object;
        match b.status {
            BatchStatus::Validating => validate(svc, b).await?,
            BatchStatus::InProgress if unix_now() >= b.expires_at.unwrap_or(u64::MAX) => {
                return finalize(svc, &row.owner, b, BatchStatus::Expired).await;
            }
            BatchStatus::InProgress => match run(svc, &b, live).await? {
                RunEnd::AllAnswered => {
                    let mut b = b;
                    b.status = BatchStatus::Finalizing;
                    b.finalizing_at = Some(unix_now());
                    svc.local_store().update_batch(&b, BatchStatus::InProgress)?;
                }
                // Cancelled: the store already says cancelling. Expired: the check above.
                RunEnd::Stopped(Stop::Cancelled | Stop::Expired) => {}
                RunEnd::Stopped(Stop::Draining) => return Ok(()),
                RunEnd::Unavailable(why) => {
                    tracing::warn!(batch = %id, reason = %why, "engine unavailable; the batch resumes later");
                    return Ok(());
                }
            },
            BatchStatus::Finalizing => return finalize(svc, &row.owner, b, BatchStatus::Completed).await,
            BatchStatus::Cancelling => return finalize(svc, &row.owner, b, BatchStatus::Cancelled).await,
            BatchStatus::Completed | BatchStatus::Failed | BatchStatus::Expired | BatchStatus::Cancelled => return Ok(()),
        }
    }
}

/// Checks the input file against the batch: readable, well formed, every
/// line for the batch's endpoint.
async fn validate(svc: &Arc<BatchService>, mut b: BatchObject) -> Result<(), DriveError> {
    let (dir, file_id) = (svc.dir.clone(), b.input_file_id.clone());
    let scanned = tokio::task::spawn_blocking(move || read_input(&dir, &file_id)).await?;
    judge(&mut b, scanned);
    svc.local_store().update_batch(&b, BatchStatus::Validating)?;
    Ok(())
}

/// Sets a validating batch's next state from its scanned input file:
/// `in_progress` with its total, or `failed` with the errors (line numbers
/// included). Returns the lines when it may run.
pub(crate) fn judge(b: &mut BatchObject, scanned: Result<Vec<LineRef>, InputError>) -> Option<Vec<LineRef>> {
    let item = |code: &str, message: String, param: Option<&str>, line: Option<u64>| BatchErrorItem {
        code: code.into(),
        message,
        param: param.map(String::from),
        line,
    };
    let (errors, lines) = match scanned {
        Ok(lines) => {
            let wrong = lines.iter().filter(|l| l.endpoint.as_str() != b.endpoint).take(MAX_ERRORS);
            let errors: Vec<BatchErrorItem> = wrong
                .map(|l| {
                    let msg = format!("line {}: url '{}' does not match the batch's endpoint '{}'", l.line, l.endpoint.as_str(), b.endpoint);
                    item("mismatched_endpoint", msg, Some("url"), Some(l.line))
                })
                .collect();
            (errors, lines)
        }
        Err(InputError::Line { line, reason }) => (vec![item("invalid_request", format!("line {line}: {reason}"), None, Some(line))], Vec::new()),
        Err(e) => (vec![item("invalid_file", e.to_string(), Some("input_file_id"), None)], Vec::new()),
    };
    let now = unix_now();
    if errors.is_empty() {
        b.status = BatchStatus::InProgress;
        b.in_progress_at = Some(now);
        b.request_counts.total = lines.len() as u64;
        Some(lines)
    } else {
        b.status = BatchStatus::Failed;
        b.failed_at = Some(now);
        b.errors = Some(BatchErrors { object: "list".into(), data: errors });
        None
    }
}

/// Runs the batch's unanswered requests.
async fn run(svc: &Arc<BatchService>, b: &BatchObject, live: &Arc<Live>) -> Result<RunEnd, DriveError> {
    let (dir, file_id, id) = (svc.dir.clone(), b.input_file_id.clone(), b.id.clone());
    let (lines, mut sink, input) = blocking(move || {
        let lines = read_input(&dir, &file_id)?;
        let sink = ResultSink::open(&dir.batch(&id))?;
        Ok((lines, sink, std::fs::File::open(dir.file(&file_id))?))
    })
    .await?;
    let expires_at = b.expires_at.unwrap_or(u64::MAX);
    let ctx = RunCtx {
        exec: svc.exec.clone(),
        input: Arc::new(input),
        lines: &lines,
        sink: &mut sink,
        slots: svc.slots.clone(),
        cap: svc.cap,
        stop: Box::new(|| {
            if live.cancel.load(Ordering::SeqCst) {
                Some(Stop::Cancelled)
            } else if svc.is_draining() {
                Some(Stop::Draining)
            } else if unix_now() >= expires_at {
                Some(Stop::Expired)
            } else {
                None
            }
        }),
        progress: Box::new(|c| *live.counts.lock().unwrap_or_else(|p| p.into_inner()) = Some(c)),
    };
    Ok(ctx.run().await?)
}

/// Why a request never ran, by the batch's final status.
pub(crate) fn not_run_reason(outcome: BatchStatus) -> (&'static str, &'static str) {
    match outcome {
        BatchStatus::Expired => ("batch_expired", "This request could not be executed before the completion window expired."),
        _ => ("batch_cancelled", "This request was not executed because the batch was cancelled."),
    }
}

/// Writes the final output and error files and sets the final status.
async fn finalize(svc: &Arc<BatchService>, owner: &str, b: BatchObject, outcome: BatchStatus) -> Result<(), DriveError> {
    let from = b.status;
    let (dir, owner) = (svc.dir.clone(), owner.to_string());
    let (b, files) = blocking(move || finalize_files(&dir, &owner, b, outcome)).await?;
    if b.status == BatchStatus::InProgress {
        tracing::error!(batch = %b.id, "finalizing found unanswered requests; running them again");
        svc.local_store().update_batch(&b, from)?;
        return Ok(());
    }
    if svc.local_store().finish_batch(&b, from, &files)? {
        let _ = std::fs::remove_dir_all(svc.dir.batch(&b.id));
        tracing::info!(batch = %b.id, status = b.status.as_str(), completed = b.request_counts.completed,
            failed = b.request_counts.failed, "batch finished");
    }
    Ok(())
}

/// The file work of `finalize` (blocking). Returns the batch as it must be
/// stored and the result files to register; a batch to complete whose
/// requests are not all answered comes back `in_progress`.
fn finalize_files(dir: &DataDir, owner: &str, mut b: BatchObject, outcome: BatchStatus) -> Result<(BatchObject, Vec<FileRow>), DriveError> {
    let lines = read_input(dir, &b.input_file_id)?;
    let mut sink = ResultSink::open(&dir.batch(&b.id))?;
    let unanswered: Vec<&LineRef> = lines.iter().filter(|l| !sink.is_done(&l.custom_id)).collect();
    if outcome == BatchStatus::Completed && !unanswered.is_empty() {
        b.status = BatchStatus::InProgress;
        return Ok((b, Vec::new()));
    }
    let (code, message) = not_run_reason(outcome);
    for l in unanswered {
        sink.append(&ResultLine::not_run(&l.custom_id, code, message))?;
    }
    sink.sync()?;
    let counts = sink.counts();
    let now = unix_now();
    let mut files = Vec::new();
    let mut register = |kind: &str, source: std::path::PathBuf| -> Result<String, DriveError> {
        let id = result_file_id(&b.id, kind);
        let (_, bytes) = write_in_order(&lines, &[source], &dir.file(&id))?;
        let filename = format!("{}_{kind}.jsonl", b.id);
        files.push(FileRow { id: id.clone(), owner: owner.to_string(), filename, purpose: "batch_output".into(), bytes, created_at: now });
        Ok(id)
    };
    b.output_file_id = if counts.completed > 0 { Some(register("output", sink.output_path())?) } else { None };
    b.error_file_id = if counts.failed + counts.not_run > 0 { Some(register("error", sink.errors_path())?) } else { None };
    b.request_counts.completed = counts.completed;
    b.request_counts.failed = counts.failed;
    b.status = outcome;
    match outcome {
        BatchStatus::Completed => b.completed_at = Some(now),
        BatchStatus::Expired => b.expired_at = Some(now),
        _ => b.cancelled_at = Some(now),
    }
    Ok((b, files))
}
