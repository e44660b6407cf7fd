//! `shoal rollout start|status|pause|resume|rollback`: the operator's side of a rollout. The
//! advancer (functions/ota-scheduler) does the device work on its schedule; these commands
//! create the rollout and move it through the same revision-guarded, audited transitions.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::firmware::ImageArgs;
use crate::group_config::IotFleet;
use shoal_aws::client::{ClientFactory, EdgeError};
use shoal_aws::config::{TableName, vars};
use shoal_aws::device_table::DeviceTable;
use shoal_aws::firmware_table::FirmwareTable;
use shoal_aws::rollout_table::RolloutTable;
use shoal_core::rollout::FirmwareVersion;
use shoal_core::rollout::advance::{Population, RollbackCounts, plan_run};
use shoal_core::rollout::image::{DeviceModel, HardwareRevision, find_image};
use shoal_core::rollout::phases::{PhaseCounts, PlanSettings, RolloutPlan};
use shoal_core::rollout::state::{
    Command as Operation, DeviceOutcome, Rollout, RolloutId, RolloutStatus, Transition,
};

/// The things a rollout of a model and hardware revision is about (the registry's `model` and
/// `hardware` attributes): what `shoal rollout status` counts the population from.
pub trait ModelFleet: Sync {
    /// The names of every thing of `model` on `hardware`.
    fn things_of(
        &self,
        model: &DeviceModel,
        hardware: &HardwareRevision,
    ) -> impl Future<Output = Result<Vec<String>, EdgeError>> + Send;
}

impl ModelFleet for IotFleet {
    async fn things_of(
        &self,
        model: &DeviceModel,
        hardware: &HardwareRevision,
    ) -> Result<Vec<String>, EdgeError> {
        shoal_aws::fleet::things_of(&self.0, model, hardware).await
    }
}

/// `shoal rollout start`'s settings, as an operator gives them (percentages, seconds).
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The published image to roll out.
    #[command(flatten)]
    pub image: ImageArgs,
    /// Last good version devices go back to on rollback (default: the greatest published
    /// version below --version).
    #[arg(long)]
    pub rollback_to: Option<FirmwareVersion>,
    /// Rollout id (default: <model>-<hardware>-<version>-<unix seconds>).
    #[arg(long)]
    pub id: Option<String>,
    /// Share of the eligible devices in the canary, in percent.
    #[arg(long, default_value_t = 1.0)]
    pub canary_percent: f64,
    /// Staged percentages, increasing: 10,50.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    pub staged: Vec<f64>,
    /// Soak time of each phase, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub soak_s: u64,
    /// Failed + rolled back over reported, in percent, above which the canary pauses.
    #[arg(long, default_value_t = 5.0)]
    pub canary_max_failure_percent: f64,
    /// The same for the staged and general phases.
    #[arg(long, default_value_t = 2.0)]
    pub staged_max_failure_percent: f64,
    /// Reports needed before a phase can pass.
    #[arg(long, default_value_t = 10)]
    pub min_reports: u64,
    /// Thundering-herd guard: devices newly targeted per minute, at most.
    #[arg(long, default_value_t = 100)]
    pub max_new_per_minute: u32,
    #[arg(long, env = vars::ROLLOUT_TABLE)]
    pub table: TableName,
    #[arg(long, env = vars::FIRMWARE_TABLE)]
    pub firmware_table: TableName,
}

impl StartArgs {
    /// The plan settings in the domain's units: seconds → milliseconds, percentages of failures
    /// → rates in [0, 1] (the phases' shares stay percentages, as `PlanSettings` takes them).
    #[must_use]
    pub fn settings(&self) -> PlanSettings {
        PlanSettings {
            canary_percent: self.canary_percent,
            staged_percents: self.staged.clone(),
            soak_ms: self.soak_s.saturating_mul(1000),
            canary_max_failure_rate: self.canary_max_failure_percent / 100.0,
            staged_max_failure_rate: self.staged_max_failure_percent / 100.0,
            min_reports: self.min_reports,
        }
    }
}

/// `shoal rollout …`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start rolling a published image out: canary first, then each staged percentage, then
    /// everyone, each phase soaking and judged by its failure rate before the next.
    Start(StartArgs),
    /// Phase, counts per status, failure rate, population and audit log of a rollout.
    Status {
        id: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, env = vars::ROLLOUT_TABLE)]
        table: TableName,
        #[arg(long, env = vars::FIRMWARE_TABLE)]
        firmware_table: TableName,
        #[arg(long, env = vars::DEVICE_TABLE)]
        device_table: TableName,
    },
    /// Stop targeting new devices (in-flight ones finish).
    Pause {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long, env = vars::ROLLOUT_TABLE)]
        table: TableName,
    },
    /// Continue a paused rollout; the current phase's soak starts again.
    Resume {
        id: String,
        #[arg(long, env = vars::ROLLOUT_TABLE)]
        table: TableName,
    },
    /// Send every device that took the image back to the last good version, and withdraw the
    /// request from the ones that did not start.
    Rollback {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long, env = vars::ROLLOUT_TABLE)]
        table: TableName,
    },
}

fn now() -> u64 {
    u64::try_from(shoal_core::clock::now_ms()).unwrap_or_default()
}

/// Who the audit log names for an operator command: `operator:$USER`.
fn actor() -> String {
    format!(
        "operator:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// Runs a `shoal rollout` command, printing the rollout or its status.
///
/// # Errors
/// What [`start`], [`status`] or [`operate`] refuse, or the failing AWS call.
pub async fn run(factory: &ClientFactory, command: Command) -> anyhow::Result<()> {
    let operate_on = async |table: TableName, id: String, op: Operation| -> anyhow::Result<()> {
        let table = RolloutTable::new(factory.dynamodb(), table);
        let (next, _) = operate(&table, &id, op, &actor(), now()).await?;
        println!(
            "rollout {id} is {:?} (revision {})",
            next.status, next.revision
        );
        Ok(())
    };
    match command {
        Command::Start(args) => {
            let settings = args.settings();
            let StartArgs {
                image:
                    ImageArgs {
                        model,
                        hardware,
                        version,
                    },
                rollback_to,
                id,
                max_new_per_minute,
                table,
                firmware_table,
                ..
            } = args;
            let request = StartRequest {
                id,
                model,
                hardware,
                version,
                rollback_to,
                settings,
                max_new_per_minute,
            };
            let rollouts = RolloutTable::new(factory.dynamodb(), table);
            let firmware = FirmwareTable::new(factory.dynamodb(), firmware_table);
            let started = start(&rollouts, &firmware, request, now()).await?;
            println!("{}", serde_json::to_string_pretty(&started)?);
        }
        Command::Status {
            id,
            json,
            table,
            firmware_table,
            device_table,
        } => {
            let report = status(
                &RolloutTable::new(factory.dynamodb(), table),
                &FirmwareTable::new(factory.dynamodb(), firmware_table),
                &DeviceTable::new(factory.dynamodb(), device_table),
                &IotFleet(factory.iot()),
                &id,
                now(),
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", render(&report));
            }
        }
        Command::Pause { id, reason, table } => {
            operate_on(table, id, Operation::Pause { reason }).await?;
        }
        Command::Resume { id, table } => operate_on(table, id, Operation::Resume).await?,
        Command::Rollback { id, reason, table } => {
            operate_on(table, id, Operation::Rollback { reason }).await?;
        }
    }
    Ok(())
}

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
    // A version whose rollout on this model and hardware was rolled back is known bad: never
    // the default to go back to.
    let mut known_bad = Vec::new();
    for id in rollouts.ids().await? {
        let Some(other) = rollouts.get(&id).await? else {
            continue;
        };
        if other.model != request.model || other.hardware != request.hardware {
            continue;
        }
        match other.status {
            RolloutStatus::Active | RolloutStatus::Paused => bail!(
                "rollout {id} of {} {} is {:?}: complete or roll it back first",
                other.model,
                other.hardware,
                other.status
            ),
            RolloutStatus::RolledBack => known_bad.push(other.version),
            _ => {}
        }
    }
    let rollback_version = match request.rollback_to {
        Some(v) => match find_image(&images, &v) {
            Some(image) if image.version < version => Some(image.version.clone()),
            _ => bail!("rollback version {v} must be a published image below {version}"),
        },
        None => images
            .iter()
            .map(|i| &i.version)
            .filter(|v| **v < version && !known_bad.contains(v))
            .max()
            .cloned(),
    };
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
    let id = check_id(&id)?;
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
pub fn check_id(id: &str) -> anyhow::Result<RolloutId> {
    RolloutId::parse(id).map_err(|e| {
        anyhow::anyhow!(
            "rollout id {id:?} {e}: it must be 1 to 128 letters, digits, '.', '_' and '-' (it becomes an MQTT topic level)"
        )
    })
}

/// Applies an operator command (pause, resume, rollback) over the rollout as read; if an
/// advancer moved it meanwhile, reads it again and retries once.
pub async fn operate(
    rollouts: &RolloutTable,
    id: &str,
    command: Operation,
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
    /// The targeted devices' outcomes by the phase they were targeted in (index into the plan).
    pub by_phase: BTreeMap<usize, PhaseCounts>,
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
    fleet: &impl ModelFleet,
    id: &str,
    now_ms: u64,
) -> anyhow::Result<RolloutStatusReport> {
    let rollout = rollouts
        .get(id)
        .await?
        .with_context(|| format!("no rollout {id}"))?;
    // Independent reads, side by side.
    let (images, records, fleet) = futures::try_join!(
        firmware.images(&rollout.model, &rollout.hardware),
        rollouts.devices(id),
        async {
            let things = fleet.things_of(&rollout.model, &rollout.hardware).await?;
            devices.fleet(&things).await
        },
    )?;
    let min_version = find_image(&images, &rollout.version).and_then(|i| i.min_version.clone());
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
        by_phase: plan.by_phase.clone(),
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
    fn start_settings_convert_the_operators_units() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            start: StartArgs,
        }
        let cli = Cli::try_parse_from([
            "shoal",
            "--model",
            "th-v2",
            "--hardware",
            "rev-b",
            "--version",
            "1.10.0",
            "--soak-s",
            "90",
            "--staged",
            "5,25,60",
            "--canary-max-failure-percent",
            "12.5",
            "--table",
            "rollouts",
            "--firmware-table",
            "firmware",
        ])
        .unwrap();
        let settings = cli.start.settings();
        assert_eq!(settings.soak_ms, 90_000);
        assert_eq!(settings.staged_percents, vec![5.0, 25.0, 60.0]);
        assert_eq!(settings.canary_percent, 1.0);
        assert!((settings.canary_max_failure_rate - 0.125).abs() < 1e-12);
        assert!((settings.staged_max_failure_rate - 0.02).abs() < 1e-12);
        assert_eq!(settings.min_reports, 10);
        assert!(RolloutPlan::new(&settings).is_ok());
    }

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
            id: "r-7".parse().unwrap(),
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
            Operation::Rollback {
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
            by_phase: BTreeMap::new(),
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
