//! `make demo`'s scenario end to end with 50 devices and compressed time, every assertion read
//! from the stores: the registry (things, attributes, groups, certificates, policies),
//! Timestream, the quarantine, the archive, the shadows and the device and rollout tables.

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_core::rollout::state::{Command, RolloutStatus};
use shoal_demo::layout::{BAD_VERSION, FACTORY_VERSION, GOOD_VERSION, PACKED_MODEL};
use shoal_demo::scenario::{DemoPlan, ids_of, run};
use shoal_demo::stack::Stack;
use shoal_demo::stores::summarise;

const DEVICES: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_fleet_provisions_syncs_rolls_back_and_recovers() {
    let stack = Arc::new(
        Stack::from_env()
            .await
            .expect("the local stack (make stack-up)"),
    );
    let out = std::env::temp_dir().join(shoal_integration_tests::local::unique_name("demo"));
    let mut plan = DemoPlan::new(DEVICES, out.clone());
    plan.verbose = std::env::var_os("SHOAL_DEMO_VERBOSE").is_some();
    let outcome = run(stack.clone(), &plan).await.expect("the scenario");
    let summary = summarise(&stack, &outcome).await.expect("the read-back");
    let layout = &outcome.layout;

    // Provisioning: every manifest device has its thing, with its manifest attributes, in its
    // building, with one ACTIVE certificate carrying the device policy; the rogue serials have
    // nothing.
    assert_eq!(summary.registry.things.len(), DEVICES);
    assert_eq!(summary.attributes_match, DEVICES, "manifest attributes");
    assert_eq!(summary.active, DEVICES, "ACTIVE certificates");
    assert_eq!(
        summary.registry.policies,
        BTreeMap::from([("shoal-local-device".to_owned(), DEVICES)])
    );
    for device in &layout.devices {
        assert!(
            summary.registry.groups[&device.group].contains(&device.serial),
            "{} in {}",
            device.serial,
            device.group
        );
    }
    assert!(summary.registry.rogue_things.is_empty());
    assert_eq!(outcome.fleet.refused.len(), layout.rogue.len());
    for reason in outcome.fleet.refused.values() {
        assert!(reason.contains("did not allow provisioning"), "{reason}");
    }

    // Telemetry: what devices had acknowledged is in Timestream or the quarantine (the clock
    // an hour ahead), nothing lost and nothing counted twice; both models, JSON and packed.
    assert!(summary.balanced(), "{summary:?}");
    assert!(
        summary.acknowledged > DEVICES as u64 * 3,
        "{}",
        summary.acknowledged
    );
    assert!(summary.quarantine.readings > 0, "the skewed clocks");
    assert!(
        summary
            .quarantine
            .reasons
            .keys()
            .all(|code| code == "timestamp_in_future"),
        "{:?}",
        summary.quarantine.reasons
    );
    assert!(summary.per_minute.contains_key(PACKED_MODEL));
    assert!(
        summary.archived >= summary.timestream * 9 / 10,
        "archive {} vs Timestream {}",
        summary.archived,
        summary.timestream
    );

    // Configuration: every device of the building reports the desired state.
    assert_eq!(summary.converged.len(), summary.building_members);
    assert!(summary.building_members >= DEVICES / 5);

    // The bad image: paused at the canary by the advancer, rolled back by the operator, and every
    // device it reached back on the factory version.
    let bad = ids_of(&outcome, "bad");
    assert_eq!(bad.len(), 3);
    let bad_hw = layout.hardware("b");
    for (report, running) in &outcome.after_rollback {
        assert_eq!(report.rollout.hardware.to_string(), bad_hw);
        assert_eq!(report.rollout.version.to_string(), BAD_VERSION);
        assert_eq!(report.rollout.status, RolloutStatus::RolledBack);
        assert_eq!(report.counts.succeeded, 0);
        assert!(report.counts.targeted >= 2, "{:?}", report.counts);
        let audit: Vec<_> = report
            .audit
            .iter()
            .map(|t| (t.actor.as_str(), t.to_status))
            .collect();
        assert!(
            audit.contains(&("advancer", RolloutStatus::Paused)),
            "{audit:?}"
        );
        assert!(
            report.audit.iter().any(
                |t| t.actor == "operator:demo" && matches!(t.command, Command::Rollback { .. })
            ),
            "{audit:?}"
        );
        assert_eq!(running.len() as u64, report.counts.targeted);
        for (thing, version) in running {
            assert_eq!(version.as_deref(), Some(FACTORY_VERSION), "{thing}");
        }
    }
    assert_eq!(outcome.after_rollback.len(), 1);
    assert!(
        outcome
            .alerts
            .iter()
            .any(|(topic, _)| topic.contains(&bad_hw)),
        "the pause alert reached the alerts topic: {:?}",
        outcome.alerts
    );

    // The fixed image: every rollout complete, every device on it, none left behind.
    for run in outcome.rollouts.iter().filter(|r| r.image == "good") {
        assert_eq!(
            run.report.rollout.status,
            RolloutStatus::Completed,
            "{}",
            run.id
        );
        assert_eq!(run.report.counts.succeeded, run.report.population.eligible);
        assert_eq!(run.report.counts.failed, 0);
        if run.report.rollout.hardware.to_string() == bad_hw {
            assert_eq!(
                run.report
                    .rollout
                    .rollback_version
                    .as_ref()
                    .map(ToString::to_string)
                    .as_deref(),
                Some(FACTORY_VERSION),
                "a rolled-back version is never the default to go back to"
            );
        }
    }
    assert_eq!(
        summary.running,
        BTreeMap::from([(GOOD_VERSION.to_owned(), DEVICES)])
    );
    // No download fault is injected: every image arrived whole the first time (a device once
    // judged its download short while the last chunks still waited in its queue).
    let events = std::fs::read_to_string(&outcome.events_log).unwrap();
    let short: Vec<&str> = events
        .lines()
        .filter(|line| line.contains(r#""kind":"download_failed""#))
        .collect();
    assert!(
        short.is_empty(),
        "{} downloads failed: {:?}",
        short.len(),
        short.first()
    );

    // The report.
    let (html, png) = shoal_demo::report::write(&out, &outcome, &summary).unwrap();
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.contains("<svg") && !page.contains("<script"));
    assert!(page.contains(&bad_hw));
    assert_eq!(&std::fs::read(png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
}
