//! The advancer's run time over 100,000 registered devices, I/O replaced by in-memory edges that
//! count their calls: a rollout in its staged-50% phase with 40,000 devices already targeted
//! (most reported), 1,000 new targets allowed this minute. `make bench-advancer` (BENCHMARKS.md).
//! The AWS calls such a run makes are counted and listed beside the time: on AWS their latency,
//! not this CPU time, dominates.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use ota_scheduler::memory::Memory;
use ota_scheduler::{AdvancerConfig, Edges, advance};
use shoal_core::rollout::advance::{DeviceRecord, FleetDevice};
use shoal_core::rollout::cohort::cohort_point;
use shoal_core::rollout::image::FirmwareImage;
use shoal_core::rollout::state::Rollout;
use shoal_core::shadow::ota::{OtaReport, OtaStatus};

const FLEET: usize = 100_000;
const TARGETED: usize = 40_000;
const NOW: u64 = 10 * 3_600_000;

fn image(version: &str) -> FirmwareImage {
    FirmwareImage {
        min_version: Some("1.0.0".parse().unwrap()),
        size: 1 << 20,
        ..shoal_core::test_util::firmware_image(version)
    }
}

fn memory() -> Memory {
    let rollout = Rollout {
        phase: 2,
        revision: 4,
        max_new_per_minute: 1_000,
        ..shoal_core::test_util::rollout("bench")
    };
    let fleet: Vec<FleetDevice> = (0..FLEET)
        .map(|i| {
            let thing = format!("th-v2-{i:07}");
            FleetDevice {
                online: Some(i % 20 != 0),
                running: Some("1.9.0".parse().unwrap()),
                report: None,
                thing,
            }
        })
        .collect();
    // The devices already targeted are the lowest cohort points, as the advancer picks them.
    let mut by_point: Vec<(f64, usize)> = fleet
        .iter()
        .enumerate()
        .map(|(i, d)| (cohort_point("bench", &d.thing), i))
        .collect();
    by_point.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut fleet = fleet;
    let mut records = Vec::with_capacity(TARGETED);
    for (n, (point, i)) in by_point.into_iter().take(TARGETED).enumerate() {
        let device = &mut fleet[i];
        device.report = Some(OtaReport {
            status: if n % 10 == 0 {
                OtaStatus::Downloading
            } else {
                OtaStatus::Success
            },
            target_version: Some("1.10.0".into()),
            running_version: Some(if n % 10 == 0 { "1.9.0" } else { "1.10.0" }.into()),
            reason: None,
        });
        records.push(DeviceRecord {
            thing: device.thing.clone(),
            point,
            from_version: Some("1.9.0".parse().unwrap()),
            targeted_at_ms: 0,
            phase: if n < 1_000 {
                0
            } else if n < 10_000 {
                1
            } else {
                2
            },
            desired_version: Some("1.10.0".parse().unwrap()),
            // The ones still downloading hold URLs that expire within the refresh margin.
            url_expires_ms: if n % 10 == 0 {
                NOW + 300_000
            } else {
                NOW + 3_000_000
            },
        });
    }
    let records: BTreeMap<String, DeviceRecord> =
        records.into_iter().map(|r| (r.thing.clone(), r)).collect();
    Memory {
        rollouts: Mutex::new(BTreeMap::from([(rollout.id.to_string(), rollout)])),
        records: Mutex::new(HashMap::from([("bench".to_owned(), records)])),
        fleet,
        images: vec![image("1.9.0"), image("1.10.0")],
        ..Memory::default()
    }
}

fn main() {
    let config = AdvancerConfig {
        rollout_table: "rollouts".parse().unwrap(),
        device_table: "devices".parse().unwrap(),
        firmware_table: "firmware".parse().unwrap(),
        firmware_bucket: "firmware-images".parse().unwrap(),
        url_ttl_s: 3600,
        url_refresh_margin_s: 600,
        alerts_topic: "shoal/alerts".into(),
        jobs_role_arn: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..15 {
        // A fresh state per run: a run records its targets and refreshed URLs.
        let state = memory();
        let edges = Edges {
            rollouts: &state,
            fleet: &state,
            delivery: &state,
            alerts: &state,
        };
        let start = Instant::now();
        let run = runtime
            .block_on(advance("bench", &edges, &config, NOW))
            .unwrap();
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        let writes = *state.writes.lock().unwrap();
        last = Some((run, writes));
    }
    times.sort_by(f64::total_cmp);
    let (run, writes) = last.unwrap();
    println!(
        "advancer run over {FLEET} registered devices ({TARGETED} already targeted): median {:.1} ms \
         (min {:.1}, max {:.1}); per run: {} newly targeted, {} URLs refreshed, {writes} shadow writes; \
         decision {:?}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        run.targeted,
        run.refreshed,
        run.decision,
    );
}
