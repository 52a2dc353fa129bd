//! Drives the unanswered requests of one batch (server) or one input file
//! (`kiln batch`): at most `cap` sequences in flight, a request asking for
//! `n` completions taking `n` places; every answer is appended to the sink
//! and fsynced as it arrives. Shared places (`slots`) let several batches
//! share one cap fairly (tokio's semaphore serves waiters in order).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::exec::{LineExecutor, LineOutcome};
use super::input::{read_line, LineRef};
use super::sink::{ResultSink, SinkCounts};
use super::wire::ResultLine;

/// Why a run stopped before every request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Cancelled,
    Expired,
    /// The server is shutting down: the rest runs after the restart.
    Draining,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    AllAnswered,
    Stopped(Stop),
    /// The engine refused work (e.g. it shut down); try again later.
    Unavailable(String),
}

pub struct RunCtx<'a> {
    pub exec: Arc<LineExecutor>,
    /// The input file the `lines` point into.
    pub input: Arc<std::fs::File>,
    pub lines: &'a [LineRef],
    pub sink: &'a mut ResultSink,
    pub slots: Arc<Semaphore>,
    /// Places one request may take at most (the semaphore's size).
    pub cap: usize,
    /// Polled often; Some stops the run (in-flight requests are dropped,
    /// which aborts their sequences).
    pub stop: Box<dyn FnMut() -> Option<Stop> + Send + 'a>,
    /// Called with the counts after each durable append.
    pub progress: Box<dyn FnMut(SinkCounts) + Send + 'a>,
}

type Acquire = Pin<Box<dyn Future<Output = (LineRef, OwnedSemaphorePermit)> + Send>>;

fn acquire(slots: Arc<Semaphore>, line: LineRef, cap: usize) -> Acquire {
    let places = line.weight.clamp(1, cap.max(1)) as u32;
    Box::pin(async move {
        let permit = slots.acquire_many_owned(places).await.expect("the batch semaphore is never closed");
        (line, permit)
    })
}

/// Reads the request back from the input file and runs it.
async fn run_one(exec: Arc<LineExecutor>, input: Arc<std::fs::File>, line: LineRef, permit: OwnedSemaphorePermit) -> (LineRef, LineOutcome) {
    let parsed = read_line(&input, &line);
    let outcome = match parsed {
        Ok(request) => exec.run(request).await,
        Err(e) => LineOutcome::Unavailable(format!("reading the input file: {e}")),
    };
    drop(permit);
    (line, outcome)
}

type Joined = Result<(LineRef, LineOutcome), tokio::task::JoinError>;

impl RunCtx<'_> {
    /// Appends an answer; an unavailable engine ends the run.
    fn record(&mut self, line: &LineRef, outcome: LineOutcome) -> std::io::Result<Option<RunEnd>> {
        match outcome {
            LineOutcome::Answered { status, request_id, body } => {
                self.sink.append(&ResultLine::answered(&line.custom_id, status, request_id, body))?;
                Ok(None)
            }
            LineOutcome::Unavailable(why) => Ok(Some(RunEnd::Unavailable(why))),
        }
    }

    /// Records every finished task, then makes the appends durable. A task
    /// that failed (a panic outside the handlers, which catch their own)
    /// leaves its request unanswered and ends the run.
    fn collect(&mut self, tasks: &mut JoinSet<(LineRef, LineOutcome)>, first: Option<Joined>) -> std::io::Result<Option<RunEnd>> {
        let mut end = None;
        let finished: Vec<Joined> = first.into_iter().chain(std::iter::from_fn(|| tasks.try_join_next())).collect();
        for joined in finished {
            let outcome = match joined {
                Ok((line, outcome)) => self.record(&line, outcome)?,
                Err(e) => Some(RunEnd::Unavailable(format!("a batch task failed: {e}"))),
            };
            end = end.or(outcome);
        }
        self.sink.sync()?;
        (self.progress)(self.sink.counts());
        Ok(end)
    }

    /// Runs every request the sink has not answered yet.
    pub async fn run(mut self) -> std::io::Result<RunEnd> {
        let todo: Vec<LineRef> = self.lines.iter().filter(|l| !self.sink.is_done(&l.custom_id)).cloned().collect();
        let mut todo = todo.into_iter();
        let mut tasks: JoinSet<(LineRef, LineOutcome)> = JoinSet::new();
        let mut acquiring: Option<Acquire> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        (self.progress)(self.sink.counts());
        loop {
            if acquiring.is_none() {
                acquiring = todo.next().map(|l| acquire(self.slots.clone(), l, self.cap));
            }
            if acquiring.is_none() && tasks.is_empty() {
                self.sink.sync()?;
                return Ok(RunEnd::AllAnswered);
            }
            tokio::select! {
                biased;
                Some(joined) = tasks.join_next() => {
                    if let Some(end) = self.collect(&mut tasks, Some(joined))? {
                        return Ok(end);
                    }
                }
                (line, permit) = async { match acquiring.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                    acquiring = None;
                    tasks.spawn(run_one(self.exec.clone(), self.input.clone(), line, permit));
                }
                _ = tick.tick() => {
                    if let Some(stop) = (self.stop)() {
                        let end = self.collect(&mut tasks, None)?;
                        tasks.abort_all();
                        return Ok(end.unwrap_or(RunEnd::Stopped(stop)));
                    }
                }
            }
        }
    }
}
