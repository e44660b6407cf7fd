//! One advancer run over one rollout, as pure logic: the outcome of every targeted device, the
//! devices to target next (eligible, online, inside the phase's cohort, within the herd budget),
//! the presigned URLs to refresh, and — for a rolled-back rollout — the devices to send back to
//! the last good version (or whose request to cancel) and how far that reconciliation got.
//!
//! The edges (fleet snapshot, per-device rollout records, shadow writes) live elsewhere; this
//! module sees plain values so that it is unit-tested here and benchmarked over 100,000 devices.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::cohort::{
    Candidate, Device, Ineligible, Target, cohort_point, eligibility, next_targets,
};
use super::phases::{Decision, PhaseCounts, breach, decide};
use super::state::{DeviceOutcome, Rollout, RolloutStatus, classify, count};
use super::version::FirmwareVersion;
use crate::shadow::ota::OtaReport;

/// A device of the rollout's model and hardware revision, as the registry knows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetDevice {
    /// The AWS IoT thing name.
    pub thing: String,
    /// `None`: no lifecycle event seen yet (treated as reachable).
    pub online: Option<bool>,
    /// The version the device last said it runs.
    pub running: Option<FirmwareVersion>,
    /// Its last OTA report.
    pub report: Option<OtaReport>,
}

/// What the rollout asked of one device (rollout table, `device#<thing>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The AWS IoT thing name.
    pub thing: String,
    /// Its cohort point for the rollout, in [0, 1) (see [`cohort_point`]).
    pub point: f64,
    /// The version it ran when targeted; `None`: not known.
    pub from_version: Option<FirmwareVersion>,
    /// When it was targeted (ms since the Unix epoch); counts against the herd budget for a
    /// minute.
    pub targeted_at_ms: u64,
    /// The version the `ota` shadow's desired state asks for; `None` once the request was
    /// cancelled by a rollback before the device started.
    pub desired_version: Option<FirmwareVersion>,
    /// When the presigned URL written to its `ota` shadow expires (ms since the Unix epoch).
    pub url_expires_ms: u64,
    /// The phase during which it was targeted.
    #[serde(default)]
    pub phase: usize,
}

/// A device to target in this run.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTarget {
    /// The AWS IoT thing name.
    pub thing: String,
    /// Its cohort point for the rollout, in [0, 1) (see [`cohort_point`]).
    pub point: f64,
    /// The version it runs now, to record as [`DeviceRecord::from_version`]; `None`: not known.
    pub from_version: Option<FirmwareVersion>,
}

/// What a rollback does to a device that the rollout targeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackStep {
    /// It took the bad image (or tried to): desired goes back to the last good version.
    Restore,
    /// It never started: the request is withdrawn.
    Cancel,
}

/// How a rolled-back rollout's devices stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackCounts {
    /// Running the last good version again (whether sent back or fallen back by themselves).
    pub restored: u64,
    /// Asked to go back, not there yet.
    pub awaiting: u64,
    /// Never started; request withdrawn.
    pub cancelled: u64,
}

/// The devices of the fleet that are not part of the rollout, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Population {
    /// Devices of the rollout's model and hardware revision in the fleet.
    pub fleet: u64,
    /// Devices the image is for: the targeted ones plus the untargeted ones that pass
    /// [`eligibility`] (counted only for active and completed rollouts).
    pub eligible: u64,
    /// Devices the rollout has targeted (one per [`DeviceRecord`]).
    pub targeted: u64,
    /// Eligible and inside the current phase's cohort but offline: targeted when they return.
    pub offline_waiting: u64,
    /// Eligible and inside the cohort, left for later runs by the herd budget.
    pub held_by_budget: u64,
    /// Untargeted devices the image is not for, per reason (active and completed rollouts only).
    pub ineligible: BTreeMap<Ineligible, u64>,
}

/// Everything one run decided for one rollout, before any write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunPlan {
    /// Every device the rollout targeted (what `shoal rollout status` shows).
    pub counts: PhaseCounts,
    /// Per phase, the devices targeted during it: what each phase is judged on.
    pub by_phase: BTreeMap<usize, PhaseCounts>,
    /// Every targeted device, counted per outcome.
    pub outcomes: BTreeMap<DeviceOutcome, u64>,
    /// How the devices of a rolled-back rollout stand; all zero for any other status.
    pub rollback: RollbackCounts,
    /// The fleet around the rollout: eligible, targeted, waiting and ineligible devices.
    pub population: Population,
    /// Devices to target in this run, lowest cohort point first.
    pub targets: Vec<NewTarget>,
    /// Targeted devices whose URL expires within the margin (thing, version asked for).
    pub refresh: Vec<(String, FirmwareVersion)>,
    /// For a rolled-back rollout, each device still asked for the rolled-back version and what
    /// to do about it (thing name, step).
    pub rollback_steps: Vec<(String, RollbackStep)>,
}

/// The phase decision for an active rollout: [`decide`] on the devices targeted during the
/// current phase, except that a phase does not pass while devices of its cohort that are online
/// and eligible are still to be targeted (the herd budget spreads them over several runs), and
/// that late failures among an earlier phase's devices pause the rollout too, by that phase's
/// threshold. Pausing never waits.
pub fn judge(rollout: &Rollout, plan: &RunPlan, now_ms: u64) -> Decision {
    for (phase, counts) in plan.by_phase.range(..rollout.phase) {
        if let Some(reason) = rollout
            .plan
            .phases
            .get(*phase)
            .and_then(|p| breach(p, counts))
        {
            return Decision::Pause { reason };
        }
    }
    let current = plan
        .by_phase
        .get(&rollout.phase)
        .copied()
        .unwrap_or_default();
    let decision = decide(
        &rollout.plan,
        rollout.phase,
        rollout.phase_started_ms,
        &current,
        now_ms,
    );
    let untargeted = plan.targets.len() as u64 + plan.population.held_by_budget;
    match decision {
        Decision::Advance { .. } | Decision::Complete if untargeted > 0 => Decision::Wait {
            reason: format!("{untargeted} devices of this phase are still to be targeted"),
        },
        other => other,
    }
}

/// Devices newly targeted per minute, as a sliding window over the records: the budget left
/// for this minute.
pub fn window_budget(max_per_minute: u32, records: &[DeviceRecord], now_ms: u64) -> usize {
    let window_start = now_ms.saturating_sub(60_000);
    let recent = records
        .iter()
        .filter(|r| r.targeted_at_ms > window_start)
        .count();
    usize::try_from(max_per_minute)
        .unwrap_or(usize::MAX)
        .saturating_sub(recent)
}

/// The outcome of each record's device against the rollout's version.
pub fn outcomes<'a>(
    rollout: &Rollout,
    fleet: &HashMap<&str, &'a FleetDevice>,
    records: &'a [DeviceRecord],
) -> Vec<(&'a DeviceRecord, DeviceOutcome)> {
    records
        .iter()
        .map(|record| {
            let report = fleet
                .get(record.thing.as_str())
                .and_then(|d| d.report.as_ref());
            (record, classify(&rollout.version, report))
        })
        .collect()
}

/// Whether the record asks for `version` with a URL about to expire, of a device that is not
/// known to be offline: a device that is away gets its fresh URL within a run of coming back,
/// and a dead one costs no writes.
fn needs_url(
    record: &DeviceRecord,
    version: &FirmwareVersion,
    fleet: &HashMap<&str, &FleetDevice>,
    now_ms: u64,
    margin_ms: u64,
) -> bool {
    let reachable = fleet
        .get(record.thing.as_str())
        .is_some_and(|d| d.online != Some(false));
    reachable
        && record.desired_version.as_ref() == Some(version)
        && record.url_expires_ms <= now_ms.saturating_add(margin_ms)
}

fn running_of(device: Option<&FleetDevice>) -> Option<&FirmwareVersion> {
    device.and_then(|d| d.running.as_ref())
}

/// Plans one run. `percent` targeting applies to active and completed rollouts (a completed
/// rollout still reaches devices that come back online); a paused one only counts; a
/// rolled-back one sends its devices back.
pub fn plan_run(
    rollout: &Rollout,
    min_version: Option<&FirmwareVersion>,
    fleet: &[FleetDevice],
    records: &[DeviceRecord],
    now_ms: u64,
    url_margin_ms: u64,
) -> RunPlan {
    let by_thing: HashMap<&str, &FleetDevice> =
        fleet.iter().map(|d| (d.thing.as_str(), d)).collect();
    let recorded: HashMap<&str, &DeviceRecord> =
        records.iter().map(|r| (r.thing.as_str(), r)).collect();
    let outcomes = outcomes(rollout, &by_thing, records);
    let mut plan = RunPlan {
        counts: count(outcomes.iter().map(|(_, o)| o)),
        ..RunPlan::default()
    };
    for (record, outcome) in &outcomes {
        let counts = plan.by_phase.entry(record.phase).or_default();
        *counts = counts.plus(*outcome);
    }
    for (_, outcome) in &outcomes {
        *plan.outcomes.entry(*outcome).or_default() += 1;
    }
    plan.population.fleet = fleet.len() as u64;
    plan.population.targeted = records.len() as u64;

    match rollout.status {
        RolloutStatus::Active | RolloutStatus::Completed => {
            plan_targeting(
                &mut plan,
                rollout,
                min_version,
                fleet,
                (&by_thing, &recorded),
                records,
                now_ms,
            );
            for (record, outcome) in &outcomes {
                let unfinished =
                    matches!(outcome, DeviceOutcome::Pending | DeviceOutcome::InProgress);
                if unfinished
                    && needs_url(record, &rollout.version, &by_thing, now_ms, url_margin_ms)
                {
                    plan.refresh
                        .push((record.thing.clone(), rollout.version.clone()));
                }
            }
        }
        // Paused: no new targets and no fresh URLs for a suspect image; in-flight downloads
        // finish while their URL lives.
        RolloutStatus::Paused => {}
        RolloutStatus::RolledBack => {
            plan_rollback(
                &mut plan,
                rollout,
                &by_thing,
                &outcomes,
                now_ms,
                url_margin_ms,
            );
        }
    }
    plan
}

fn plan_targeting(
    plan: &mut RunPlan,
    rollout: &Rollout,
    min_version: Option<&FirmwareVersion>,
    fleet: &[FleetDevice],
    (by_thing, recorded): (&HashMap<&str, &FleetDevice>, &HashMap<&str, &DeviceRecord>),
    records: &[DeviceRecord],
    now_ms: u64,
) {
    let percent = rollout
        .plan
        .phases
        .get(rollout.phase)
        .map_or(100.0, |p| p.percent);
    let target = Target {
        model: rollout.model.as_str(),
        hardware: rollout.hardware.as_str(),
        version: &rollout.version,
        min_version,
    };
    let mut candidates = Vec::new();
    let mut offline_in_cohort = 0;
    for device in fleet {
        if recorded.contains_key(device.thing.as_str()) {
            continue;
        }
        let facts = Device {
            model: target.model,
            hardware: target.hardware,
            running: device.running.as_ref(),
        };
        if let Err(why) = eligibility(&target, &facts) {
            *plan.population.ineligible.entry(why).or_default() += 1;
            continue;
        }
        plan.population.eligible += 1;
        let point = cohort_point(rollout.id.as_str(), &device.thing);
        if device.online == Some(false) {
            offline_in_cohort += u64::from(super::cohort::in_cohort(point, percent));
            continue;
        }
        candidates.push(Candidate {
            thing: &device.thing,
            point,
            targeted: false,
        });
    }
    plan.population.eligible += plan.population.targeted;
    plan.population.offline_waiting = offline_in_cohort;
    let budget = window_budget(rollout.max_new_per_minute, records, now_ms);
    let in_cohort = candidates
        .iter()
        .filter(|c| super::cohort::in_cohort(c.point, percent))
        .count();
    let chosen = next_targets(&candidates, percent, budget);
    plan.population.held_by_budget = (in_cohort - chosen.len()) as u64;
    plan.targets = chosen
        .into_iter()
        .map(|thing| NewTarget {
            thing: thing.to_owned(),
            point: cohort_point(rollout.id.as_str(), thing),
            from_version: running_of(by_thing.get(thing).copied()).cloned(),
        })
        .collect();
}

fn plan_rollback(
    plan: &mut RunPlan,
    rollout: &Rollout,
    by_thing: &HashMap<&str, &FleetDevice>,
    outcomes: &[(&DeviceRecord, DeviceOutcome)],
    now_ms: u64,
    url_margin_ms: u64,
) {
    let Some(good) = rollout.rollback_version.as_ref() else {
        return;
    };
    for (record, outcome) in outcomes {
        let running = running_of(by_thing.get(record.thing.as_str()).copied());
        let asks_for_bad = record.desired_version.as_ref() == Some(&rollout.version);
        if asks_for_bad {
            let step = if *outcome == DeviceOutcome::Pending && running != Some(&rollout.version) {
                RollbackStep::Cancel
            } else {
                RollbackStep::Restore
            };
            plan.rollback_steps.push((record.thing.clone(), step));
        }
        let cancelled = record.desired_version.is_none()
            || plan.rollback_steps.last() == Some(&(record.thing.clone(), RollbackStep::Cancel));
        let restored = running == Some(good)
            || (*outcome == DeviceOutcome::RolledBack
                && running.is_none_or(|r| r < &rollout.version));
        if cancelled {
            plan.rollback.cancelled += 1;
        } else if restored {
            plan.rollback.restored += 1;
        } else {
            plan.rollback.awaiting += 1;
            if needs_url(record, good, by_thing, now_ms, url_margin_ms) {
                plan.refresh.push((record.thing.clone(), good.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::ota::OtaStatus;

    fn v(text: &str) -> FirmwareVersion {
        text.parse().unwrap()
    }

    fn rollout(status: RolloutStatus, phase: usize, max_new_per_minute: u32) -> Rollout {
        Rollout {
            phase,
            status,
            max_new_per_minute,
            ..crate::test_util::rollout("r-1")
        }
    }

    fn fleet(n: usize) -> Vec<FleetDevice> {
        (0..n)
            .map(|i| FleetDevice {
                thing: format!("d-{i:05}"),
                online: Some(i % 10 != 0),
                running: Some(v(if i % 7 == 0 { "1.10.0" } else { "1.9.0" })),
                report: None,
            })
            .collect()
    }

    fn record(thing: &str, at: u64, desired: Option<&str>, expires: u64) -> DeviceRecord {
        DeviceRecord {
            thing: thing.into(),
            point: cohort_point("r-1", thing),
            from_version: Some(v("1.9.0")),
            targeted_at_ms: at,
            desired_version: desired.map(v),
            url_expires_ms: expires,
            phase: 1,
        }
    }

    #[test]
    fn targets_are_eligible_online_inside_the_phase_and_within_the_budget() {
        let devices = fleet(5_000);
        let staged = rollout(RolloutStatus::Active, 1, 10_000);
        let plan = plan_run(&staged, None, &devices, &[], 0, 0);
        assert!(!plan.targets.is_empty());
        for t in &plan.targets {
            let d = devices.iter().find(|d| d.thing == t.thing).unwrap();
            assert_eq!(d.online, Some(true));
            assert_eq!(d.running, Some(v("1.9.0")));
            assert!(t.point * 100.0 < 10.0);
            assert_eq!(t.from_version, Some(v("1.9.0")));
        }
        let p = &plan.population;
        assert_eq!(p.ineligible[&Ineligible::AlreadyCurrent], 715);
        assert_eq!(p.eligible, 5_000 - 715);
        let expected = devices
            .iter()
            .filter(|d| d.online == Some(true) && d.running == Some(v("1.9.0")))
            .filter(|d| cohort_point("r-1", &d.thing) * 100.0 < 10.0)
            .count();
        assert_eq!(plan.targets.len(), expected);
        assert!(p.offline_waiting > 0);

        let throttled = rollout(RolloutStatus::Active, 1, 25);
        let recent: Vec<DeviceRecord> = (0..10)
            .map(|i| record(&format!("x-{i}"), 100_000 - 1_000, Some("1.10.0"), u64::MAX))
            .collect();
        let plan = plan_run(&throttled, None, &devices, &recent, 100_000, 0);
        assert_eq!(
            plan.targets.len(),
            15,
            "25 per minute, 10 already this minute"
        );
        assert_eq!(plan.population.held_by_budget, expected as u64 - 15);
        let later = plan_run(&throttled, None, &devices, &recent, 200_000, 0);
        assert_eq!(later.targets.len(), 25, "the window moved on");

        let paused = rollout(RolloutStatus::Paused, 1, 10_000);
        assert!(
            plan_run(&paused, None, &devices, &[], 0, 0)
                .targets
                .is_empty()
        );
    }

    #[test]
    fn a_phase_passes_only_once_its_cohort_is_targeted() {
        let devices = fleet(2_000);
        let mut r = rollout(RolloutStatus::Active, 1, 10);
        r.phase_started_ms = 0;
        let plan = plan_run(&r, None, &devices, &[], 10 * 3_600_000, 0);
        assert_eq!(plan.targets.len(), 10);
        let waiting = judge(&r, &plan, 10 * 3_600_000);
        assert!(matches!(waiting, Decision::Wait { .. }), "{waiting:?}");
        let done = RunPlan {
            by_phase: BTreeMap::from([(
                1,
                PhaseCounts {
                    targeted: 10,
                    succeeded: 10,
                    ..PhaseCounts::default()
                },
            )]),
            ..RunPlan::default()
        };
        assert_eq!(
            judge(&r, &done, 10 * 3_600_000),
            Decision::Advance { to: 2 }
        );
        let failing = RunPlan {
            by_phase: BTreeMap::from([(
                1,
                PhaseCounts {
                    targeted: 20,
                    failed: 10,
                    succeeded: 10,
                    ..PhaseCounts::default()
                },
            )]),
            ..plan
        };
        assert!(matches!(judge(&r, &failing, 0), Decision::Pause { .. }));
        // Each phase by its own devices and threshold: the canary's 4% failures pass its 5%
        // and do not count against staged's 2%; late canary failures past 5% still pause.
        let phases = |canary_failed| RunPlan {
            by_phase: BTreeMap::from([
                (
                    0,
                    PhaseCounts {
                        targeted: 100,
                        succeeded: 100 - canary_failed,
                        failed: canary_failed,
                        rolled_back: 0,
                    },
                ),
                (
                    1,
                    PhaseCounts {
                        targeted: 100,
                        succeeded: 100,
                        ..PhaseCounts::default()
                    },
                ),
            ]),
            ..RunPlan::default()
        };
        assert_eq!(
            judge(&r, &phases(4), 10 * 3_600_000),
            Decision::Advance { to: 2 }
        );
        let late = judge(&r, &phases(6), 10 * 3_600_000);
        assert!(
            matches!(&late, Decision::Pause { reason } if reason.starts_with("canary")),
            "{late:?}"
        );
    }

    #[test]
    fn recorded_devices_are_counted_not_retargeted_and_their_urls_refreshed() {
        let mut devices = fleet(3);
        devices[1].report = Some(OtaReport {
            status: OtaStatus::Success,
            target_version: Some("1.10.0".into()),
            running_version: Some("1.10.0".into()),
            reason: None,
        });
        let r = rollout(RolloutStatus::Active, 3, 100);
        let records = vec![
            record("d-00001", 0, Some("1.10.0"), 1_000),
            record("d-00002", 0, Some("1.10.0"), 1_000),
        ];
        let plan = plan_run(&r, None, &devices, &records, 900, 200);
        assert_eq!(plan.counts.targeted, 2);
        assert_eq!(plan.counts.succeeded, 1);
        assert!(
            plan.targets
                .iter()
                .all(|t| t.thing != "d-00001" && t.thing != "d-00002")
        );
        assert_eq!(plan.refresh, vec![("d-00002".to_owned(), v("1.10.0"))]);
        devices[2].online = Some(false);
        let away = plan_run(&r, None, &devices, &records, 900, 200);
        assert!(away.refresh.is_empty(), "no URL for a device that is away");
        let gone = plan_run(&r, None, &devices[..2], &records, 900, 200);
        assert!(gone.refresh.is_empty(), "nor for one no longer registered");
    }

    #[test]
    fn a_rollback_restores_who_took_the_image_cancels_who_did_not_and_reconciles() {
        let report = |status, target: &str, running: &str| {
            Some(OtaReport {
                status,
                target_version: Some(target.into()),
                running_version: Some(running.into()),
                reason: (status == OtaStatus::Failed).then(|| "boot loop".into()),
            })
        };
        let device = |thing: &str, running: &str, report| FleetDevice {
            thing: thing.into(),
            online: Some(true),
            running: Some(v(running)),
            report,
        };
        let devices = vec![
            device(
                "took-it",
                "1.10.0",
                report(OtaStatus::Success, "1.10.0", "1.10.0"),
            ),
            device(
                "fell-back",
                "1.9.0",
                report(OtaStatus::Failed, "1.10.0", "1.9.0"),
            ),
            device("never-started", "1.9.0", None),
            device(
                "sent-back",
                "1.9.0",
                report(OtaStatus::Success, "1.9.0", "1.9.0"),
            ),
            device(
                "on-its-way-back",
                "1.10.0",
                report(OtaStatus::Success, "1.10.0", "1.10.0"),
            ),
            device("cancelled", "1.9.0", None),
        ];
        let records = vec![
            record("took-it", 0, Some("1.10.0"), 10),
            record("fell-back", 0, Some("1.10.0"), 10),
            record("never-started", 0, Some("1.10.0"), 10),
            record("sent-back", 0, Some("1.9.0"), 10),
            record("on-its-way-back", 0, Some("1.9.0"), 10),
            record("cancelled", 0, None, 0),
        ];
        let r = rollout(RolloutStatus::RolledBack, 1, 100);
        let plan = plan_run(&r, None, &devices, &records, 0, 60);
        assert_eq!(
            plan.rollback_steps,
            vec![
                ("took-it".to_owned(), RollbackStep::Restore),
                ("fell-back".to_owned(), RollbackStep::Restore),
                ("never-started".to_owned(), RollbackStep::Cancel),
            ]
        );
        // fell-back is restored (by itself) and counted rolled back — never a success.
        assert_eq!(
            plan.rollback,
            RollbackCounts {
                restored: 2,
                awaiting: 2,
                cancelled: 2
            }
        );
        assert_eq!(plan.outcomes[&DeviceOutcome::RolledBack], 1);
        assert_eq!(plan.counts.succeeded, 2);
        assert!(plan.targets.is_empty());
        assert_eq!(
            plan.refresh,
            vec![("on-its-way-back".to_owned(), v("1.9.0"))]
        );
    }
}
