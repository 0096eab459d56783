//! How long the reverse worker sleeps when the stream runs dry inside a big transaction.
//!
//! The walsender sends and flushes each change on its own, so a worker that keeps up wakes (epoll,
//! then a read) for every row or two, and each of its sends wakes the worker. Sleeping a moment
//! instead lets the socket fill, and the next read takes dozens of rows at once. Too long a nap is
//! worse than none, though: once the socket's window is full the walsender stops and waits, and the
//! stream falls off a cliff. On the bench machine (loopback) a fixed 2 ms nap cut throughput to a
//! third, and so did naps that let up to 32 KiB arrive between them, where 8 or 16 KiB did no harm. So
//! the nap adapts: it halves while more than 8 KiB arrives between two naps, and grows back towards
//! its ceiling while less than 2 KiB does. Most of the gain is had by then: dozens of rows per wake-up
//! instead of one or two.

use std::time::Duration;

/// The longest nap, and the shortest one it shrinks to.
pub const CEILING: Duration = Duration::from_micros(500);
pub const FLOOR: Duration = Duration::from_micros(50);
/// More than this many bytes between two naps: the next one is halved.
pub const SHRINK_ABOVE: usize = 8 * 1024;
/// Fewer than this many bytes between two naps: the next one is doubled (up to the ceiling).
pub const GROW_BELOW: usize = 2 * 1024;

/// The nap's current length and what arrived since the last one.
#[derive(Debug, Clone)]
pub struct Nap {
    length: Duration,
    bytes: usize,
    /// Whether a nap happened in this transaction: only then do the bytes since it say how long it
    /// was.
    napped: bool,
}

impl Default for Nap {
    fn default() -> Self {
        Nap {
            length: CEILING,
            bytes: 0,
            napped: false,
        }
    }
}

impl Nap {
    /// The nap's length as learned so far.
    pub fn length(&self) -> Duration {
        self.length
    }

    /// A transaction begins: what arrived before says nothing about a nap.
    pub fn begin(&mut self) {
        self.bytes = 0;
        self.napped = false;
    }

    /// `n` bytes of the stream arrived.
    pub fn received(&mut self, n: usize) {
        self.bytes += n;
    }

    /// The stream ran dry: how long to sleep now, adjusted by what arrived since the last nap.
    pub fn next(&mut self) -> Duration {
        if self.napped {
            if self.bytes > SHRINK_ABOVE {
                self.length = (self.length / 2).max(FLOOR);
            } else if self.bytes < GROW_BELOW {
                self.length = (self.length * 2).min(CEILING);
            }
        }
        self.napped = true;
        self.bytes = 0;
        self.length
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_nap_of_a_transaction_is_the_learned_length_whatever_arrived_before() {
        let mut nap = Nap::default();
        nap.begin();
        nap.received(10 * SHRINK_ABOVE);
        assert_eq!(nap.next(), CEILING);
    }

    #[test]
    fn a_nap_halves_while_too_much_arrives_and_stops_at_the_floor() {
        let mut nap = Nap::default();
        nap.begin();
        assert_eq!(nap.next(), CEILING);
        let mut lengths = Vec::new();
        for _ in 0..6 {
            nap.received(SHRINK_ABOVE + 1);
            lengths.push(nap.next());
        }
        assert_eq!(
            lengths,
            [
                Duration::from_micros(250),
                Duration::from_micros(125),
                Duration::from_nanos(62_500),
                FLOOR,
                FLOOR,
                FLOOR
            ]
        );
    }

    #[test]
    fn a_nap_grows_back_to_the_ceiling_while_little_arrives_and_holds_in_between() {
        let mut nap = Nap::default();
        nap.begin();
        nap.next();
        for _ in 0..4 {
            nap.received(SHRINK_ABOVE * 2);
            nap.next();
        }
        assert_eq!(nap.length, FLOOR);
        // Between the two thresholds, the length holds.
        nap.received(GROW_BELOW + 1);
        assert_eq!(nap.next(), FLOOR);
        let mut lengths = Vec::new();
        for _ in 0..5 {
            nap.received(GROW_BELOW - 1);
            lengths.push(nap.next());
        }
        assert_eq!(
            lengths,
            [100, 200, 400, 500, 500].map(Duration::from_micros)
        );
    }

    #[test]
    fn the_learned_length_carries_over_to_the_next_transaction() {
        let mut nap = Nap::default();
        nap.begin();
        nap.next();
        nap.received(SHRINK_ABOVE + 1);
        assert_eq!(nap.next(), CEILING / 2);
        nap.begin();
        nap.received(SHRINK_ABOVE + 1);
        assert_eq!(nap.next(), CEILING / 2);
    }
}
