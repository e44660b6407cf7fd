//! CPU per shadow-documents message, I/O excluded: parse the rule's event, plan (delta, clears,
//! policy decisions), pick the registry facts, build and limit-check the update.
//! `make bench-shadow` (BENCHMARKS.md); target ≤ 1 ms per message.

use std::hint::black_box;
use std::time::Instant;

use serde_json::{Value, json};
use shadow_sync::documents::{DocumentsEvent, SyncConfig};
use shoal_aws::config::vars;
use shoal_core::shadow::check_update;
use shoal_core::shadow::sync::{plan, reported_facts};

/// A realistic, large-ish shadow: 40 leaves over 3 levels, half converged, some conflicting,
/// every policy in play, ~3 KB of state.
fn sample() -> Value {
    let mut desired = serde_json::Map::new();
    let mut reported = serde_json::Map::new();
    let mut meta_d = serde_json::Map::new();
    let mut meta_r = serde_json::Map::new();
    for group in ["config", "schedule", "limits", "net"] {
        let (mut d, mut r, mut md, mut mr) = (
            serde_json::Map::new(),
            serde_json::Map::new(),
            serde_json::Map::new(),
            serde_json::Map::new(),
        );
        for i in 0..10 {
            let key = format!("setting_{i}");
            d.insert(key.clone(), json!(i * 10));
            r.insert(
                key.clone(),
                json!(if i % 2 == 0 { i * 10 } else { i * 10 + 1 }),
            );
            md.insert(key.clone(), json!({"timestamp": 1_700_000_000 + i}));
            mr.insert(key, json!({"timestamp": 1_700_000_005}));
        }
        desired.insert(group.into(), Value::Object(d));
        reported.insert(group.into(), Value::Object(r));
        meta_d.insert(group.into(), Value::Object(md));
        meta_r.insert(group.into(), Value::Object(mr));
    }
    reported.insert("firmware".into(), json!({"version": "1.4.2"}));
    let current = json!({"state": {"desired": desired, "reported": reported},
                         "metadata": {"desired": meta_d, "reported": meta_r}, "version": 42});
    let mut previous = current.clone();
    previous["state"]["reported"]["config"]["setting_1"] = json!(0);
    previous["state"]["reported"]["schedule"]["setting_3"] = json!(0);
    json!({"topic": "$aws/things/d-1/shadow/update/documents", "previous": previous,
           "current": current, "timestamp": 1_700_000_005})
}

fn main() {
    let config = SyncConfig::from_source(&std::collections::BTreeMap::from([(
        vars::SHADOW_POLICIES,
        "*=lww;config=merge;schedule=vclock:max",
    )]))
    .unwrap();
    let text = sample().to_string();
    let once = || {
        let event: DocumentsEvent = serde_json::from_str(black_box(&text)).unwrap();
        let previous = event.previous.as_ref();
        let current = &event.current;
        let p = plan(previous, current, &config.policies);
        let facts = reported_facts(
            previous,
            current,
            &config.firmware_path,
            &config.config_path,
        );
        let update = p.update(current.version).unwrap();
        check_update(&current.state, &update).unwrap();
        black_box((p, facts, update));
    };
    let parse_only = || {
        let event: DocumentsEvent = serde_json::from_str(black_box(&text)).unwrap();
        black_box(event);
    };
    let median_us = |f: &dyn Fn()| {
        for _ in 0..1_000 {
            f();
        }
        let (rounds, per_round) = (15, 2_000);
        let mut times: Vec<f64> = (0..rounds)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..per_round {
                    f();
                }
                start.elapsed().as_secs_f64() * 1e6 / f64::from(per_round)
            })
            .collect();
        times.sort_by(f64::total_cmp);
        (times[rounds / 2], times[0], times[rounds - 1])
    };
    let (median, min, max) = median_us(&once);
    let (parse, _, _) = median_us(&parse_only);
    println!(
        "shadow-documents CPU per message ({} bytes of event): median {median:.1} µs (min {min:.1}, max {max:.1}; \
         15 rounds of 2,000), of which JSON parse {parse:.1} µs",
        text.len()
    );
}
