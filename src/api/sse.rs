//! Server-sent events: `data: {json}\n\n` per chunk, keep-alive comments
//! while idle, `data: {"error": ...}` if the request fails after the
//! headers went out, and always `data: [DONE]` last.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};

use super::events::{Delta, Running, Step};
use super::wire_out::Usage;

/// Turns steps into JSON payloads for one endpoint's chunk type.
pub trait ChunkFormat: Send + 'static {
    /// Payloads sent before any engine event (e.g. chat's role deltas).
    fn prelude(&mut self) -> Vec<String>;
    fn delta(&mut self, delta: Delta) -> Vec<String>;
    /// The final usage chunk, when the client asked for one.
    fn usage(&mut self, usage: Usage) -> Option<String>;
}

enum Phase {
    Prelude(std::vec::IntoIter<String>),
    Steps,
    Done,
    End,
}

struct SseState<F> {
    running: Running,
    format: F,
    queue: std::collections::VecDeque<String>,
    phase: Phase,
}

/// The payload sequence of a streamed response (without SSE framing).
pub fn payloads<F: ChunkFormat>(running: Running, mut format: F) -> impl Stream<Item = String> + Send {
    let prelude = format.prelude().into_iter();
    let init = SseState { running, format, queue: Default::default(), phase: Phase::Prelude(prelude) };
    stream::unfold(init, |mut s| async move {
        loop {
            if let Some(p) = s.queue.pop_front() {
                return Some((p, s));
            }
            match &mut s.phase {
                Phase::Prelude(it) => match it.next() {
                    Some(p) => return Some((p, s)),
                    None => s.phase = Phase::Steps,
                },
                Phase::Steps => match s.running.next_step().await {
                    Some(Step::Delta(d)) => s.queue.extend(s.format.delta(d)),
                    Some(Step::Usage(u)) => {
                        s.queue.extend(s.format.usage(u));
                        s.phase = Phase::Done;
                    }
                    Some(Step::Error(e)) => {
                        let body = serde_json::to_string(&e.body()).unwrap_or_default();
                        s.queue.push_back(body);
                        s.phase = Phase::Done;
                    }
                    None => s.phase = Phase::Done,
                },
                Phase::Done => {
                    s.phase = Phase::End;
                    return Some(("[DONE]".to_string(), s));
                }
                Phase::End => return None,
            }
        }
    })
}

/// The streamed HTTP response.
pub fn sse_response<F: ChunkFormat>(running: Running, format: F, keepalive: Duration) -> Response {
    let events = payloads(running, format).map(|p| Ok::<_, Infallible>(Event::default().data(p)));
    Sse::new(events).keep_alive(KeepAlive::new().interval(keepalive).text("keep-alive")).into_response()
}
