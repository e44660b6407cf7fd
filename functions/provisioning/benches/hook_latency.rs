//! Pre-provisioning hook decision latency against the local stack: 1,000 calls (900 manifest
//! serials, each read, claimed and its certificate recorded; 100 unknown serials), one at a
//! time, p50/p99/max.
//!
//! Needs the local stack: `make stack-up`, then `make bench-hook` (release build). Prints the
//! numbers for BENCHMARKS.md; asserts nothing about time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use provisioning::hook::{DEFAULT_CLAIM_LEASE, DEFAULT_DEADLINE, Gate, handle};
use provisioning::registry::IotCertificates;
use shoal_aws::client::ClientFactory;
use shoal_aws::device_table::DeviceTable;
use shoal_aws::manifest_table::ManifestTable;
use shoal_core::provisioning::{DeviceStatus, HookRequest, ManifestEntry, Serial, TemplateModels};

const CALLS: usize = 1000;
const KNOWN: usize = 900;

fn request(serial: &str, cert: &str) -> HookRequest {
    shoal_core::test_util::hook_request(Some(serial), cert)
}

#[tokio::main]
async fn main() {
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        panic!("set AWS_ENDPOINT_URL to the local stack (make bench-hook does)");
    }
    let factory = ClientFactory::from_env().await;
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let table = ManifestTable::new(
        factory.dynamodb(),
        format!("bench-manifest-{run}").parse().unwrap(),
    );
    table.ensure_exists().await.unwrap();
    let entries: Vec<ManifestEntry> = (0..KNOWN)
        .map(|i| ManifestEntry {
            serial: Serial::parse(&format!("SN-B{i:05}")).unwrap(),
            model: "th-v2".into(),
            batch: "bench".into(),
            status: DeviceStatus::Pending,
            certificate_id: None,
            thing_name: None,
            thing_group: None,
            attributes: BTreeMap::new(),
            proof: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        })
        .collect();
    table.write_all(&entries, |_| {}).await.unwrap();
    let models: TemplateModels = "shoal-fleet=th-v2".parse().unwrap();
    let certificates = IotCertificates::new(factory.iot());
    let devices = DeviceTable::new(
        factory.dynamodb(),
        format!("bench-devices-{run}").parse().unwrap(),
    );
    devices.ensure_exists().await.unwrap();
    let gate = Gate {
        manifest: &table,
        certificates: &certificates,
        devices: &devices,
        models: &models,
        claim_lease: DEFAULT_CLAIM_LEASE,
    };

    let mut times = Vec::with_capacity(CALLS);
    let mut allowed = 0;
    for i in 0..CALLS {
        let serial = if i < KNOWN {
            format!("SN-B{i:05}")
        } else {
            format!("SN-UNKNOWN{i}")
        };
        let req = request(&serial, &format!("cert-{i}"));
        let start = Instant::now();
        let answer = handle(&req, &gate, DEFAULT_DEADLINE).await;
        times.push(start.elapsed());
        allowed += usize::from(answer.allow_provisioning);
    }
    assert_eq!(allowed, KNOWN, "every manifest serial is allowed, no other");
    times.sort();
    let at = |q: f64| times[((CALLS as f64 * q) as usize).min(CALLS - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "hook_latency: {CALLS} calls ({KNOWN} allowed + claimed, {} denied): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        CALLS - KNOWN,
        ms(at(0.50)),
        ms(at(0.99)),
        ms(times[CALLS - 1])
    );
}
