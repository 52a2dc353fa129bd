//! Server-sent events with an event name on each (`event: NAME` +
//! `data: {json}`), as the Responses API and Anthropic's Messages API
//! stream them; no `[DONE]` sentinel. A protocol implements
//! `NamedEvents` over the request's steps; `drive` also serves the
//! non-streamed answer, so both come from one code path.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};
use serde_json::Value;

use super::error::ApiError;
use super::events::{Delta, Running, Step};
use super::wire_out::Usage;

/// One event: its name and JSON payload.
pub type Named = (&'static str, Value);

/// Turns a request's steps into named events.
pub trait NamedEvents: Send + 'static {
    /// Events before any engine output.
    fn start(&mut self) -> Vec<Named>;
    fn delta(&mut self, delta: Delta) -> Vec<Named>;
    /// The last events, once every token is in.
    fn finish(&mut self, usage: Usage) -> Vec<Named>;
    /// The events that end a failed request.
    fn error(&mut self, error: ApiError) -> Vec<Named>;
}

/// Runs the request to its end, discarding events: the non-streamed path.
/// Err when it failed.
pub async fn drive<F: NamedEvents>(mut running: Running, format: &mut F) -> Result<(), ApiError> {
    format.start();
    loop {
        match running.next_step().await {
            Some(Step::Delta(d)) => {
                format.delta(d);
            }
            Some(Step::Usage(u)) => {
                format.finish(u);
                return Ok(());
            }
            Some(Step::Error(e)) => return Err(e),
            None => return Err(ApiError::Internal("stream ended without usage".into())),
        }
    }
}

struct State<F> {
    running: Running,
    format: F,
    queue: std::collections::VecDeque<Named>,
    done: bool,
}

/// The streamed HTTP response: `start`'s events, then each step's.
pub fn named_sse_response<F: NamedEvents>(running: Running, mut format: F, keepalive: Duration) -> Response {
    let queue = format.start().into();
    let init = State { running, format, queue, done: false };
    let events = stream::unfold(init, |mut s| async move {
        loop {
            if let Some(e) = s.queue.pop_front() {
                return Some((e, s));
            }
            if s.done {
                return None;
            }
            let more = match s.running.next_step().await {
                Some(Step::Delta(d)) => s.format.delta(d),
                Some(Step::Usage(u)) => {
                    s.done = true;
                    s.format.finish(u)
                }
                Some(Step::Error(e)) => {
                    s.done = true;
                    s.format.error(e)
                }
                None => {
                    s.done = true;
                    Vec::new()
                }
            };
            s.queue.extend(more);
        }
    })
    .map(|(name, data)| Ok::<_, Infallible>(Event::default().event(name).data(data.to_string())));
    Sse::new(events).keep_alive(KeepAlive::new().interval(keepalive).text("keep-alive")).into_response()
}
