//! Cohort evaluation throughput: for each thing, its cohort point for a rollout and whether it is
//! inside the current percentage. `make bench-rollout`; target ≥ 10 M things/s on one core.

use std::hint::black_box;
use std::time::Instant;

use shoal_core::rollout::cohort::{cohort_point, in_cohort};

fn main() {
    let things: Vec<String> = (0..1_000_000).map(|i| format!("th-v2-SN{i:010}")).collect();
    let rollout = "rollout-2026-11-25-th-v2-1.10.0";
    let run = || {
        let mut inside = 0u64;
        for thing in &things {
            inside += u64::from(in_cohort(
                cohort_point(black_box(rollout), thing),
                black_box(10.0),
            ));
        }
        inside
    };
    black_box(run());
    let mut rates: Vec<f64> = (0..15)
        .map(|_| {
            let start = Instant::now();
            black_box(run());
            things.len() as f64 / start.elapsed().as_secs_f64() / 1e6
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    println!(
        "cohort evaluation over {} things (names of {} bytes): median {:.1} M things/s (min {:.1}, max {:.1}; 15 runs); {} inside 10%",
        things.len(),
        things[0].len(),
        rates[7],
        rates[0],
        rates[14],
        run()
    );
}
