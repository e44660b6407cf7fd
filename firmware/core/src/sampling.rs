//! Adaptive sampling: a measure is sent when it moved beyond its deadband since the value last
//! sent, and at least every `max_interval_ms` (a heartbeat that tells a quiet sensor from a dead
//! one). Between those the device keeps quiet and saves airtime and cloud writes.

/// One measure's sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deadband {
    /// The change (absolute) that is worth sending.
    pub deadband: f64,
    /// The longest silence, ms.
    pub max_interval_ms: u64,
    last: Option<(f64, u64)>,
}

impl Deadband {
    /// A sampler sending changes beyond `deadband` and at least every `max_interval_ms`.
    pub fn new(deadband: f64, max_interval_ms: u64) -> Self {
        Self {
            deadband: deadband.abs(),
            max_interval_ms,
            last: None,
        }
    }

    /// Whether `value` read at `now_ms` is sent; a sent value becomes the reference. The first
    /// value, and a value that is not a number (NaN), are always sent: the cloud decides what
    /// to do with a bad reading, the device does not hide it.
    pub fn offer(&mut self, value: f64, now_ms: u64) -> bool {
        let send = match self.last {
            None => true,
            Some((sent, at)) => {
                value.is_nan()
                    || sent.is_nan()
                    || (value - sent).abs() > self.deadband
                    || now_ms.saturating_sub(at) >= self.max_interval_ms
            }
        };
        if send {
            self.last = Some((value, now_ms));
        }
        send
    }
}

/// Reconnection delays with exponential backoff and full jitter: after an outage a whole fleet
/// must not come back in the same second (a thundering herd on the broker and the functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first ceiling, ms.
    pub base_ms: u64,
    /// The largest ceiling, ms.
    pub cap_ms: u64,
}

impl Backoff {
    /// The delay before attempt `attempt` (0 = the first retry): uniform in
    /// `[0, min(cap, base·2^attempt)]`, drawn from `random` (any `u32` the device's RNG gives).
    pub fn delay_ms(&self, attempt: u32, random: u32) -> u64 {
        let ceiling = self
            .base_ms
            .saturating_mul(1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX))
            .min(self.cap_ms);
        // `random / 2^32` of the way up to the ceiling, both ends included.
        u64::try_from(((u128::from(ceiling) + 1) * u128::from(random)) >> 32).unwrap_or(ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn changes_beyond_the_deadband_and_heartbeats_are_sent() {
        let mut temp = Deadband::new(0.5, 60_000);
        assert!(temp.offer(21.0, 0), "the first value");
        assert!(!temp.offer(21.4, 1_000));
        assert!(
            !temp.offer(20.6, 2_000),
            "within 0.5 of the value sent, not of the last read"
        );
        assert!(temp.offer(21.6, 3_000));
        assert!(!temp.offer(21.6, 62_000));
        assert!(temp.offer(21.6, 63_000), "60 s of silence: a heartbeat");
        assert!(temp.offer(f64::NAN, 64_000), "a bad reading is not hidden");
    }

    proptest! {
        #[test]
        fn delays_stay_under_the_ceiling(attempt in 0u32..100, random: u32, base in 1u64..10_000, cap in 1u64..600_000) {
            let backoff = Backoff { base_ms: base, cap_ms: cap };
            let delay = backoff.delay_ms(attempt, random);
            let ceiling = base.saturating_mul(1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX)).min(cap);
            prop_assert!(delay <= ceiling);
            prop_assert_eq!(backoff.delay_ms(attempt, u32::MAX), ceiling, "the top of the range is reached");
            prop_assert_eq!(backoff.delay_ms(attempt, 0), 0);
        }
    }
}
