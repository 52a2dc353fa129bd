//! The inbox of an engine thread (the generation engine in core.rs, the
//! embedding engine in embed/): every queued message is taken at once, and
//! the thread blocks only when it has nothing else to do.

use crossbeam_channel::{Receiver, TryRecvError};

/// Hands every queued message to `handle`, first blocking for one when
/// `idle`. Returns false once `handle` returns false (shutdown) or every
/// sender is gone; true when the queue is empty and work remains.
pub(crate) fn drain<M>(rx: &Receiver<M>, idle: bool, mut handle: impl FnMut(M) -> bool) -> bool {
    if idle {
        let Ok(msg) = rx.recv() else { return false };
        if !handle(msg) {
            return false;
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
        drop(tx);
        assert!(!drain(&rx, true, |_| true), "no sender left");
    }
}
