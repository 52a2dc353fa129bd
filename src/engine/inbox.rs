//! The inbox of an engine thread (the generation engine in core.rs, the
//! embedding engine in embed/): every queued message is taken at once, and
//! the thread blocks only when it has nothing else to do, and then for at
//! most `IDLE_WAKE` (so that it can publish its heartbeat).

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::stats::IDLE_WAKE;

/// Hands every queued message to `handle`, first waiting up to `IDLE_WAKE`
/// for one when `idle`. Returns false once `handle` returns false
/// (shutdown) or every sender is gone; true when the queue is empty.
pub(crate) fn drain<M>(rx: &Receiver<M>, idle: bool, mut handle: impl FnMut(M) -> bool) -> bool {
    if idle {
        match rx.recv_timeout(IDLE_WAKE) {
            Ok(msg) => {
                if !handle(msg) {
                    return false;
                }
            }
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
    loop {
        match rx.try_recv() {
            Ok(msg) => {
                if !handle(msg) {
                    return false;
                }
            }
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_everything_queued_and_stops_when_told() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        let mut seen = Vec::new();
        assert!(drain(&rx, true, |m| {
            seen.push(m);
            true
        }));
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        tx.send(7).unwrap();
        assert!(!drain(&rx, false, |m| m != 7), "a handler's false is a shutdown");
        assert!(drain(&rx, true, |_| true), "an idle wait ends after IDLE_WAKE");
        drop(tx);
        assert!(!drain(&rx, true, |_| true), "no sender left");
    }
}
