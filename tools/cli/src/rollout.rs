//! `shoal rollout start|status|pause|resume|rollback`: the operator's side of a rollout. The
//! advancer (functions/ota-scheduler) does the device work on its schedule; these commands
//! create the rollout and move it through the same revision-guarded, audited transitions.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde::Serialize;
use shoal_shared::device_table::DeviceTable;
use shoal_shared::firmware_table::FirmwareTable;
use shoal_shared::rollout::FirmwareVersion;
use shoal_shared::rollout::advance::{Population, RollbackCounts, plan_run};
use shoal_shared::rollout::image::{DeviceModel, HardwareRevision, find_image};
use shoal_shared::rollout::phases::{PhaseCounts, PlanSettings, RolloutPlan};
use shoal_shared::rollout::state::{Command, DeviceOutcome, Rollout, RolloutStatus, Transition};
use shoal_shared::rollout_table::RolloutTable;

pub struct StartRequest {
    pub id: Option<String>,
    pub model: DeviceModel,
    pub hardware: HardwareRevision,
    pub version: FirmwareVersion,
    /// The last good version; default: the greatest published version below `version`.
    pub rollback_to: Option<FirmwareVersion>,
    pub settings: PlanSettings,
    pub max_new_per_minute: u32,
}

/// Records a new active rollout at its first phase. Refused when the image is not published,
/// when the rollback version has no image, or while another rollout of the same model and
/// hardware is active or paused.
pub async fn start(
    rollouts: &RolloutTable,
    firmware: &FirmwareTable,
    request: StartRequest,
    now_ms: u64,
) -> anyhow::Result<Rollout> {
    let images = firmware.images(&request.model, &request.hardware).await?;
    // The versions as published (`1.10.0` names the image published as `1.10.0+build.42`: build
    // metadata is not precedence), so the rollout records what devices will report.
    let Some(version) = find_image(&images, &request.version).map(|i| i.version.clone()) else {
        bail!(
            "{} {} {} is not in the firmware registry: publish it first (shoal firmware publish)",
            request.model,
            request.hardware,
            request.version
        );
    };
    let rollback_version = match request.rollback_to {
        Some(v) => match find_image(&images, &v) {
            Some(image) if image.version < version => Some(image.version.clone()),
            _ => bail!("rollback version {v} must be a published image below {version}"),
        },
        None => images
            .iter()
            .map(|i| &i.version)
            .filter(|v| **v < version)
            .max()
            .cloned(),
    };
    for id in rollouts.ids().await? {
        let Some(other) = rollouts.get(&id).await? else {
            continue;
        };
        let live = matches!(other.status, RolloutStatus::Active | RolloutStatus::Paused);
        if live && other.model == request.model && other.hardware == request.hardware {
            bail!(
                "rollout {id} of {} {} is {:?}: complete or roll it back first",
                other.model,
                other.hardware,
                other.status
            );
        }
    }
    if request.max_new_per_minute == 0 {
        bail!("--max-new-per-minute must be at least 1");
    }
    let plan = RolloutPlan::new(&request.settings).map_err(anyhow::Error::msg)?;
    let id = request.id.unwrap_or_else(|| {
        format!(
            "{}-{}-{}-{}",
            request.model,
            request.hardware,
            version.to_string().replace('+', "_"),
            now_ms / 1000
        )
    });
    check_id(&id)?;
    let rollout = Rollout {
        id: id.clone(),
        model: request.model,
        hardware: request.hardware,
        version,
        rollback_version,
        plan,
        phase: 0,
        phase_started_ms: now_ms,
        status: RolloutStatus::Active,
        reason: None,
        revision: 1,
        max_new_per_minute: request.max_new_per_minute,
        created_ms: now_ms,
    };
    if !rollouts.create(&rollout).await? {
        bail!("a rollout named {id} exists already");
    }
    Ok(rollout)
}

/// A rollout id becomes an MQTT topic level (the pause alert's `<alerts>/ota/<id>`), where `+`
/// and `#` are wildcards and `/` a separator, and a DynamoDB key: letters, digits, `.`, `_` and
/// `-`, 1 to 128 of them.
///
/// # Errors
/// Names the id and what it may hold.
pub fn check_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || id.len() > 128 || !id.chars().all(shoal_shared::config::name_char) {
        bail!(
            "rollout id {id:?} must be 1 to 128 letters, digits, '.', '_' and '-' (it becomes an MQTT topic level)"
        );
    }
    Ok(())
}

/// Applies an operator command (pause, resume, rollback) over the rollout as read; if an
/// advancer moved it meanwhile, reads it again and retries once.
pub async fn operate(
    rollouts: &RolloutTable,
    id: &str,
    command: Command,
    actor: &str,
    now_ms: u64,
) -> anyhow::Result<(Rollout, Transition)> {
    for _ in 0..2 {
        let current = rollouts
            .get(id)
            .await?
            .with_context(|| format!("no rollout {id}"))?;
        let (next, transition) = current.apply(command.clone(), actor, now_ms)?;
        if rollouts.transition(&current, &next, &transition).await? {
            return Ok((next, transition));
        }
    }
    bail!("rollout {id} kept moving under this command; run it again")
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatusReport {
    pub rollout: Rollout,
    pub phase: String,
    pub percent: f64,
    pub counts: PhaseCounts,
    pub failure_rate: f64,
    /// The devices targeted during the current phase, which it is judged on.
    pub phase_counts: PhaseCounts,
    pub outcomes: BTreeMap<DeviceOutcome, u64>,
    pub rollback: RollbackCounts,
    pub population: Population,
    /// Devices the next advancer run would target (budget permitting).
    pub next_targets: usize,
    pub audit: Vec<Transition>,
}

/// The rollout with its counts, computed from the registry as the advancer computes them.
pub async fn status(
    rollouts: &RolloutTable,
    firmware: &FirmwareTable,
    devices: &DeviceTable,
    iot: &aws_sdk_iot::Client,
    id: &str,
    now_ms: u64,
) -> anyhow::Result<RolloutStatusReport> {
    let rollout = rollouts
        .get(id)
        .await?
        .with_context(|| format!("no rollout {id}"))?;
    let images = firmware.images(&rollout.model, &rollout.hardware).await?;
    let min_version = find_image(&images, &rollout.version).and_then(|i| i.min_version.clone());
    let records = rollouts.devices(id).await?;
    let things = shoal_shared::fleet::things_of(iot, &rollout.model, &rollout.hardware).await?;
    let fleet = devices.fleet(&things).await?;
    let plan = plan_run(&rollout, min_version.as_ref(), &fleet, &records, now_ms, 0);
    let phase = rollout.plan.phases.get(rollout.phase);
    Ok(RolloutStatusReport {
        phase: phase.map_or_else(String::new, |p| p.name.clone()),
        percent: phase.map_or(100.0, |p| p.percent),
        counts: plan.counts,
        failure_rate: plan.counts.failure_rate(),
        phase_counts: plan
            .by_phase
            .get(&rollout.phase)
            .copied()
            .unwrap_or_default(),
        outcomes: plan.outcomes,
        rollback: plan.rollback,
        population: plan.population,
        next_targets: plan.targets.len(),
        audit: rollouts.audit(id).await?,
        rollout,
    })
}

/// The report as an operator reads it.
pub fn render(report: &RolloutStatusReport) -> String {
    let r = &report.rollout;
    let mut out = format!(
        "rollout {} — {} {} → {} (rollback to {})\n\
         status {:?}{}\n\
         phase {} ({}% of eligible devices), max {} new devices/minute\n\
         targeted {} · succeeded {} · failed {} · rolled back {} · failure rate {:.1}%\n",
        r.id,
        r.model,
        r.hardware,
        r.version,
        r.rollback_version
            .as_ref()
            .map_or_else(|| "none".to_owned(), ToString::to_string),
        r.status,
        r.reason
            .as_ref()
            .map_or_else(String::new, |why| format!(": {why}")),
        report.phase,
        report.percent,
        r.max_new_per_minute,
        report.counts.targeted,
        report.counts.succeeded,
        report.counts.failed,
        report.counts.rolled_back,
        report.failure_rate * 100.0,
    );
    let p = &report.phase_counts;
    out.push_str(&format!(
        "this phase: targeted {} · succeeded {} · failed {} · rolled back {} · failure rate {:.1}%\n",
        p.targeted,
        p.succeeded,
        p.failed,
        p.rolled_back,
        p.failure_rate() * 100.0
    ));
    let outcomes: Vec<String> = report
        .outcomes
        .iter()
        .map(|(o, n)| format!("{o:?} {n}"))
        .collect();
    out.push_str(&format!("by status: {}\n", outcomes.join(" · ")));
    let p = &report.population;
    out.push_str(&format!(
        "fleet {} · eligible {} · offline, waiting {} · held by the herd budget {} · next run targets {}\n",
        p.fleet, p.eligible, p.offline_waiting, p.held_by_budget, report.next_targets
    ));
    if r.status == RolloutStatus::RolledBack {
        let b = &report.rollback;
        out.push_str(&format!(
            "rollback: restored {} · awaiting {} · cancelled before starting {}\n",
            b.restored, b.awaiting, b.cancelled
        ));
    }
    for t in &report.audit {
        out.push_str(&format!(
            "  #{} {} by {}: {:?} {:?}→{:?} phase {}→{}\n",
            t.revision,
            t.at_ms,
            t.actor,
            t.command,
            t.from_status,
            t.to_status,
            t.from_phase,
            t.to_phase
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_ids_are_one_mqtt_topic_level() {
        for good in ["th-v2-rev-b-1.10.0_build.42-1795600000", "phases", "a"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "th-v2-1.10.0+build.42",
            "a/b",
            "a#",
            "é",
            &"x".repeat(129),
        ] {
            let err = check_id(bad).unwrap_err().to_string();
            assert!(err.contains("MQTT topic level"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_rendered_status_shows_phase_counts_rate_reconciliation_and_audit() {
        let plan = RolloutPlan::new(&PlanSettings::default()).unwrap();
        let rollout = Rollout {
            id: "r-7".into(),
            model: "th-v2".parse().unwrap(),
            hardware: "rev-b".parse().unwrap(),
            version: "1.10.0".parse().unwrap(),
            rollback_version: Some("1.9.0".parse().unwrap()),
            plan,
            phase: 1,
            phase_started_ms: 0,
            status: RolloutStatus::RolledBack,
            reason: Some("boot loops".into()),
            revision: 4,
            max_new_per_minute: 100,
            created_ms: 0,
        };
        let (_, transition) = Rollout {
            status: RolloutStatus::Active,
            ..rollout.clone()
        }
        .apply(
            Command::Rollback {
                reason: "boot loops".into(),
            },
            "operator:ana",
            9,
        )
        .unwrap();
        let report = RolloutStatusReport {
            phase: "staged-1".into(),
            percent: 10.0,
            counts: PhaseCounts {
                targeted: 40,
                succeeded: 30,
                failed: 2,
                rolled_back: 3,
            },
            failure_rate: 5.0 / 35.0,
            phase_counts: PhaseCounts {
                targeted: 30,
                succeeded: 25,
                failed: 2,
                rolled_back: 3,
            },
            outcomes: BTreeMap::from([(DeviceOutcome::Pending, 5), (DeviceOutcome::Succeeded, 30)]),
            rollback: RollbackCounts {
                restored: 3,
                awaiting: 32,
                cancelled: 5,
            },
            population: Population::default(),
            next_targets: 0,
            audit: vec![transition],
            rollout,
        };
        let text = render(&report);
        for expected in [
            "rollout r-7 — th-v2 rev-b → 1.10.0 (rollback to 1.9.0)",
            "status RolledBack: boot loops",
            "phase staged-1 (10% of eligible devices)",
            "targeted 40 · succeeded 30 · failed 2 · rolled back 3 · failure rate 14.3%",
            "this phase: targeted 30 · succeeded 25 · failed 2 · rolled back 3 · failure rate 16.7%",
            "by status: Pending 5 · Succeeded 30",
            "rollback: restored 3 · awaiting 32 · cancelled before starting 5",
            "#5 9 by operator:ana",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
    }
}
