//! The offline buffer: telemetry a device could not send yet, kept in order and flushed in order
//! when the connection returns. Bounded by count and bytes: when full, the oldest entries go first
//! and are counted, as are those older than the operator's TTL — nothing is dropped silently, and
//! nothing is reordered. A flush takes a batch and removes it only once it was delivered
//! (`ack`): a connection lost mid-flush sends the batch again (at least once; the cloud's writes
//! are idempotent).

use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// One buffered message: when it was taken (epoch ms) and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Epoch milliseconds when the device took it.
    pub taken_ms: u64,
    /// What to publish (the telemetry payload).
    pub payload: Vec<u8>,
}

/// What the buffer dropped, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Evicted (oldest first) to make room.
    pub evicted: u64,
    /// Older than the TTL when flushed.
    pub expired: u64,
    /// Larger than the whole buffer on its own.
    pub oversized: u64,
}

/// The buffer's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries at most.
    pub max_entries: usize,
    /// Payload bytes at most.
    pub max_bytes: usize,
    /// An entry older than this (ms) when it would be sent is dropped (`None`: kept).
    pub ttl_ms: Option<u64>,
}

/// The offline buffer.
#[derive(Debug, Clone)]
pub struct OfflineBuffer {
    entries: VecDeque<Entry>,
    bytes: usize,
    limits: Limits,
    dropped: Dropped,
    /// Entries handed out by [`OfflineBuffer::batch`] and not acknowledged yet.
    in_flight: usize,
}

impl OfflineBuffer {
    /// An empty buffer with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            limits,
            dropped: Dropped::default(),
            in_flight: 0,
        }
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What was dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Keeps `entry` (the newest), evicting the oldest entries not in flight while it does not
    /// fit. An entry larger than the whole buffer is dropped (counted as oversized).
    pub fn push(&mut self, entry: Entry) {
        let size = entry.payload.len();
        if size > self.limits.max_bytes || self.limits.max_entries == 0 {
            self.dropped.oversized += 1;
            return;
        }
        while self.entries.len() >= self.limits.max_entries
            || self.bytes + size > self.limits.max_bytes
        {
            // The oldest entry that is not being sent right now goes.
            let Some(evicted) = self.entries.remove(self.in_flight) else {
                // Everything waiting is in flight: the new entry cannot be kept.
                self.dropped.evicted += 1;
                return;
            };
            self.bytes -= evicted.payload.len();
            self.dropped.evicted += 1;
        }
        self.bytes += size;
        self.entries.push_back(entry);
    }

    /// The next `max` entries to send, oldest first, at `now_ms` (entries past the TTL are
    /// dropped first, counted). They stay in the buffer until [`OfflineBuffer::ack`]; asking
    /// again before that hands out the same ones.
    pub fn batch(&mut self, max: usize, now_ms: u64) -> Vec<Entry> {
        if let Some(ttl) = self.limits.ttl_ms {
            // Only entries not in flight expire (those in flight may be delivered already).
            while let Some(front) = self.entries.get(self.in_flight) {
                if now_ms.saturating_sub(front.taken_ms) <= ttl {
                    break;
                }
                let expired = self.entries.remove(self.in_flight).expect("checked above");
                self.bytes -= expired.payload.len();
                self.dropped.expired += 1;
            }
        }
        self.in_flight = max.min(self.entries.len());
        self.entries.iter().take(self.in_flight).cloned().collect()
    }

    /// The batch handed out was delivered: it leaves the buffer. Returns how many entries left.
    pub fn ack(&mut self) -> usize {
        let mut delivered = 0;
        for _ in 0..self.in_flight {
            if let Some(sent) = self.entries.pop_front() {
                self.bytes -= sent.payload.len();
                delivered += 1;
            }
        }
        self.in_flight = 0;
        delivered
    }

    /// Entries handed out by [`OfflineBuffer::batch`] and not yet acknowledged.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The batch handed out was not delivered (the connection dropped): it is sent again next.
    pub fn nack(&mut self) {
        self.in_flight = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    fn entry(n: u64) -> Entry {
        Entry {
            taken_ms: n,
            payload: vec![0; usize::try_from(n % 7 + 1).unwrap()],
        }
    }

    #[test]
    fn full_evicts_the_oldest_and_counts_it() {
        let mut buffer = OfflineBuffer::new(Limits {
            max_entries: 3,
            max_bytes: 1_000,
            ttl_ms: None,
        });
        for n in 1..=5 {
            buffer.push(entry(n));
        }
        assert_eq!(buffer.dropped().evicted, 2);
        let batch = buffer.batch(10, 5);
        assert_eq!(
            batch.iter().map(|e| e.taken_ms).collect::<Vec<_>>(),
            [3, 4, 5]
        );
    }

    #[test]
    fn a_batch_stays_until_acknowledged_and_expired_entries_are_counted() {
        let mut buffer = OfflineBuffer::new(Limits {
            max_entries: 10,
            max_bytes: 1_000,
            ttl_ms: Some(100),
        });
        for n in [10, 20, 300, 310] {
            buffer.push(entry(n));
        }
        let first = buffer.batch(1, 320);
        assert_eq!(first[0].taken_ms, 300, "10 and 20 expired");
        assert_eq!(buffer.dropped().expired, 2);
        buffer.nack();
        assert_eq!(buffer.batch(1, 320), first, "not delivered: the same again");
        buffer.ack();
        assert_eq!(buffer.batch(5, 320)[0].taken_ms, 310);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u8),
        Flush(u8, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..40).prop_map(Op::Push),
            (1u8..5, any::<bool>()).prop_map(|(n, ok)| Op::Flush(n, ok)),
        ]
    }

    proptest! {
        /// Whatever is pushed and flushed: delivered entries come out in push order, once each,
        /// and every pushed entry is delivered, dropped (counted) or still waiting.
        #[test]
        fn never_reorders_and_never_drops_silently(
            ops in prop::collection::vec(op(), 0..200),
            max_entries in 1usize..8,
            max_bytes in 1usize..64,
            ttl in prop::option::of(0u64..50),
        ) {
            let mut buffer = OfflineBuffer::new(Limits { max_entries, max_bytes, ttl_ms: ttl });
            let mut pushed = 0u64;
            let mut delivered: Vec<u64> = Vec::new();
            let mut now = 0u64;
            for op in ops {
                now += 3;
                match op {
                    Op::Push(size) => {
                        pushed += 1;
                        buffer.push(Entry { taken_ms: now, payload: vec![0; usize::from(size)] });
                    }
                    Op::Flush(n, ok) => {
                        let batch = buffer.batch(usize::from(n), now);
                        if ok {
                            delivered.extend(batch.iter().map(|e| e.taken_ms));
                            buffer.ack();
                        } else {
                            buffer.nack();
                        }
                    }
                }
            }
            prop_assert!(delivered.windows(2).all(|w| w[0] < w[1]), "in order, once: {:?}", delivered);
            let dropped = buffer.dropped();
            let accounted = delivered.len() as u64
                + dropped.evicted
                + dropped.expired
                + dropped.oversized
                + buffer.len() as u64;
            prop_assert_eq!(accounted, pushed);
        }
    }
}
