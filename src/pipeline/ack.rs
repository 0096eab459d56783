//! Which position the reverse worker may tell the slot is flushed: a pure function of what it holds.
//!
//! Telling the slot a position lets the cloud recycle the WAL before it, so it must never be past what
//! the desktop has durably applied. Two events allow it: a group committed on the desktop (its last
//! commit's end), and a keepalive while the worker holds nothing received and unapplied (the end of the
//! WAL the server has sent: everything before it was applied or is not ours, and a quiet publication
//! must not pin the cloud's WAL).

use crate::change::{EndLsn, Lsn, WalEnd};

/// What the worker holds when an event arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Held {
    /// A transaction has begun and not committed yet.
    pub in_transaction: bool,
    /// Transactions have committed in the stream and wait, staged, for the desktop's commit.
    pub pending: bool,
    /// The last position told to the slot.
    pub acknowledged: Option<Lsn>,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The desktop committed a group whose last transaction ended here.
    Applied(EndLsn),
    /// The server's keepalive.
    KeepAlive(WalEnd),
}

/// The position to tell the slot, if any: never one the desktop may not have, never backwards.
pub fn acknowledgeable(held: Held, event: Event) -> Option<Lsn> {
    let position = match event {
        Event::Applied(end) => end.0,
        Event::KeepAlive(_) if held.in_transaction || held.pending => return None,
        Event::KeepAlive(wal_end) => wal_end.0,
    };
    let forward = held.acknowledged.is_none_or(|a| position > a);
    (position != Lsn(0) && forward).then_some(position)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Held = Held {
        in_transaction: false,
        pending: false,
        acknowledged: None,
    };

    #[test]
    fn an_applied_group_is_acknowledged() {
        let end = EndLsn(Lsn(0x20));
        assert_eq!(acknowledgeable(IDLE, Event::Applied(end)), Some(Lsn(0x20)));
        // Even while the next transaction streams: the group is on the desktop.
        let streaming = Held {
            in_transaction: true,
            ..IDLE
        };
        assert_eq!(
            acknowledgeable(streaming, Event::Applied(end)),
            Some(Lsn(0x20))
        );
    }

    #[test]
    fn a_keepalive_is_acknowledged_only_when_nothing_received_is_unapplied() {
        let keepalive = Event::KeepAlive(WalEnd(Lsn(0x90)));
        assert_eq!(acknowledgeable(IDLE, keepalive), Some(Lsn(0x90)));
        let in_transaction = Held {
            in_transaction: true,
            ..IDLE
        };
        assert_eq!(acknowledgeable(in_transaction, keepalive), None);
        let pending = Held {
            pending: true,
            ..IDLE
        };
        assert_eq!(acknowledgeable(pending, keepalive), None);
    }

    #[test]
    fn positions_never_go_back_and_zero_is_never_told() {
        let told = Held {
            acknowledged: Some(Lsn(0x90)),
            ..IDLE
        };
        assert_eq!(
            acknowledgeable(told, Event::KeepAlive(WalEnd(Lsn(0x80)))),
            None
        );
        assert_eq!(
            acknowledgeable(told, Event::Applied(EndLsn(Lsn(0x90)))),
            None
        );
        assert_eq!(
            acknowledgeable(told, Event::Applied(EndLsn(Lsn(0x91)))),
            Some(Lsn(0x91))
        );
        assert_eq!(
            acknowledgeable(IDLE, Event::KeepAlive(WalEnd(Lsn(0)))),
            None
        );
    }

    #[test]
    fn a_transaction_is_skipped_only_when_it_committed_before_the_stored_end() {
        use crate::change::CommitLsn;
        let stored = Some(EndLsn(Lsn(0x100)));
        assert!(CommitLsn(Lsn(0xF8)).applied_by(stored));
        assert!(!CommitLsn(Lsn(0x100)).applied_by(stored));
        assert!(!CommitLsn(Lsn(0x108)).applied_by(stored));
        assert!(!CommitLsn(Lsn(0x10)).applied_by(None));
    }
}
