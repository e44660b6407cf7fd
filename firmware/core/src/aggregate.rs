//! Edge aggregation: a measure sampled often (every second) sent once per window as its count,
//! mean, min, max and standard deviation — shoal-wire's [`Aggregate`], which the router stores
//! as `<name>_count`, `<name>_mean`, …. Welford's online update: one pass, constant memory, no
//! catastrophic cancellation for large values with a small spread.

use shoal_wire::telemetry::Aggregate;

/// One measure's window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    count: u64,
    mean: f64,
    /// The sum of squared differences from the mean (Welford's M2).
    m2: f64,
    min: f64,
    max: f64,
}

impl Window {
    /// Adds a sample; a value that is not finite is not a sample (the caller reports it as a
    /// reading of its own if it wants the cloud to see it).
    pub fn add(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        if self.count == 0 {
            self.min = value;
            self.max = value;
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        self.count += 1;
        #[allow(clippy::cast_precision_loss)] // counts stay far below 2^53
        let n = self.count as f64;
        let delta = value - self.mean;
        self.mean += delta / n;
        self.m2 += delta * (value - self.mean);
    }

    /// Samples in the window.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The window's aggregate (population standard deviation), and the window emptied for the
    /// next; `None` when no sample came.
    pub fn take(&mut self) -> Option<Aggregate> {
        if self.count == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let n = self.count as f64;
        let aggregate = Aggregate {
            count: self.count,
            // Rounding can put the running mean a hair outside [min, max]: it never is.
            mean: Some(self.mean.clamp(self.min, self.max)),
            min: Some(self.min),
            max: Some(self.max),
            std: Some(libm::sqrt((self.m2 / n).max(0.0))),
        };
        *self = Self::default();
        Some(aggregate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;
    use proptest::prelude::*;
    use shoal_wire::telemetry::{Measure, Message, Reading};
    use shoal_wire::topics::TelemetryTopic;

    #[test]
    fn a_window_summarises_its_samples_and_starts_over() {
        let mut window = Window::default();
        assert_eq!(window.take(), None);
        for v in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0, f64::NAN] {
            window.add(v);
        }
        let aggregate = window.take().unwrap();
        assert_eq!(aggregate.count, 8, "NaN is not a sample");
        assert_eq!(aggregate.mean, Some(5.0));
        assert_eq!((aggregate.min, aggregate.max), (Some(2.0), Some(9.0)));
        assert_eq!(aggregate.std, Some(2.0));
        assert_eq!(window.count(), 0);
    }

    proptest! {
        /// Any samples: the statistics match a two-pass computation, and the cloud's contract
        /// (shoal-wire's telemetry message) takes the aggregate.
        #[test]
        fn the_aggregate_is_right_and_the_cloud_takes_it(
            samples in prop::collection::vec(-1.0e9f64..1.0e9, 1..200),
        ) {
            let mut window = Window::default();
            for v in &samples {
                window.add(*v);
            }
            let aggregate = window.take().unwrap();
            #[allow(clippy::cast_precision_loss)]
            let n = samples.len() as f64;
            let mean = samples.iter().sum::<f64>() / n;
            let variance = samples.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let scale = samples.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            prop_assert!((aggregate.mean.unwrap() - mean).abs() <= scale * 1e-9);
            prop_assert!((aggregate.std.unwrap() - libm::sqrt(variance)).abs() <= scale * 1e-6);
            let topic = TelemetryTopic::parse("dt/farm/d-1/telemetry").unwrap();
            let message = Message::Reading(Reading {
                ts: Some(1_796_000_000_000),
                measures: vec![(String::from("temp"), Measure::Aggregate(aggregate))],
            });
            let json = message.to_json(&topic);
            prop_assert!(json.is_ok(), "{:?}", json);
        }
    }
}
