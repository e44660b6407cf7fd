//! The OTA advancer, run by an EventBridge schedule (every minute): for each rollout, read its
//! state, its device requests and the fleet; let the phase rules decide (advance, complete,
//! pause with an alert, or wait); then target the next devices through the `ota` named shadow,
//! refresh URLs about to expire, and — once rolled back — send devices back to the last good
//! version. Two runs racing move a rollout once (revision-guarded transitions); a device request
//! is idempotent (same rollout, same image).
//!
//! The AWS calls sit behind the small traits below; `edges` implements them.

pub mod edges;
/// In-memory edges with failures to inject, for unit tests and the `advancer` bench (feature
/// `test-util`); never in the Lambda.
#[cfg(any(test, feature = "test-util"))]
pub mod memory;

use std::future::Future;

use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use shoal_aws::config::{self, BucketName, ConfigError, Source, TableName, vars};
use shoal_core::alerts::Alerts;
use shoal_core::edge::{EdgeError, Retryable};
use shoal_core::ids::{IdError, ThingName};
use shoal_core::rollout::FirmwareVersion;
use shoal_core::rollout::advance::{
    DeviceRecord, FleetDevice, NewTarget, RollbackCounts, RollbackStep, RunPlan, judge, plan_run,
};
pub use shoal_core::rollout::delivery::may_replace;
use shoal_core::rollout::delivery::{self, cancel, url_ttl_s};
use shoal_core::rollout::image::{DeviceModel, FirmwareImage, HardwareRevision};
use shoal_core::rollout::phases::{Decision, PhaseCounts};
use shoal_core::rollout::state::{Command, Rollout, RolloutStatus, Transition, TransitionError};
use shoal_core::shadow::ShadowUpdate;
use shoal_core::shadow::store::WriteError;

/// The rollout table.
pub trait Rollouts: Sync {
    fn ids(&self) -> impl Future<Output = Result<Vec<String>, EdgeError>> + Send;
    fn get(&self, id: &str) -> impl Future<Output = Result<Option<Rollout>, EdgeError>> + Send;
    /// `Ok(false)`: the rollout moved since `previous` was read.
    fn transition(
        &self,
        previous: &Rollout,
        next: &Rollout,
        transition: &Transition,
    ) -> impl Future<Output = Result<bool, EdgeError>> + Send;
    fn devices(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Vec<DeviceRecord>, EdgeError>> + Send;
    fn put_device(
        &self,
        id: &str,
        record: &DeviceRecord,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send;
}

/// The registry: the fleet of a model and hardware revision, and its firmware images.
pub trait Fleet: Sync {
    fn devices(
        &self,
        model: &DeviceModel,
        hardware: &HardwareRevision,
    ) -> impl Future<Output = Result<Vec<FleetDevice>, EdgeError>> + Send;
    fn images(
        &self,
        model: &DeviceModel,
        hardware: &HardwareRevision,
    ) -> impl Future<Output = Result<Vec<FirmwareImage>, EdgeError>> + Send;
}

/// The way to a device: download URLs and its `ota` shadow.
pub trait Delivery: Sync {
    fn presign(
        &self,
        s3_key: &str,
        ttl_s: u64,
    ) -> impl Future<Output = Result<String, EdgeError>> + Send;
    /// `Ok(false)`: the shadow holds a newer rollout's request ([`may_replace`]); nothing was
    /// written.
    ///
    /// # Errors
    /// [`WriteError`]: the update breaks a shadow limit, loses every version race, or a shadow
    /// call fails.
    fn write(
        &self,
        request: &OtaRequest<'_>,
    ) -> impl Future<Output = Result<bool, WriteError>> + Send;

    // The optional AWS IoT Jobs channel (none by default): one continuous job per rollout over
    // a static thing group that targeted devices join.

    /// Makes sure the rollout's job (and its thing group) exists.
    fn open_job(
        &self,
        _rollout: &Rollout,
        _image: &FirmwareImage,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send {
        async { Ok(()) }
    }
    /// Adds a targeted device to the rollout's job.
    fn join_job(
        &self,
        _rollout: &str,
        _thing: &str,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send {
        async { Ok(()) }
    }
    /// Cancels the rollout's job (rollback): devices that have not started it never will.
    fn cancel_job(
        &self,
        _rollout: &str,
        _reason: &str,
    ) -> impl Future<Output = Result<(), EdgeError>> + Send {
        async { Ok(()) }
    }
}

/// What the advancer asks of one device's `ota` shadow.
#[derive(Debug, Clone)]
pub struct OtaRequest<'a> {
    pub thing: &'a ThingName,
    pub rollout: &'a str,
    /// `None`: the request is withdrawn.
    pub version: Option<&'a FirmwareVersion>,
    pub update: ShadowUpdate,
}

/// Why the advancer could not run a rollout (or list them).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdvanceError {
    /// A table, registry, object store or Jobs call failed.
    #[error(transparent)]
    Edge(#[from] EdgeError),
    /// A device's `ota` shadow could not be written.
    #[error(transparent)]
    Shadow(#[from] WriteError),
    /// The rollout the event names is not in the rollout table.
    #[error("rollout {id} does not exist")]
    NoRollout { id: String },
    /// The firmware registry has no image of a version the rollout needs.
    #[error("rollout {rollout}: no {model} {hardware} image {version} in the firmware registry")]
    NoImage {
        rollout: String,
        model: DeviceModel,
        hardware: HardwareRevision,
        version: FirmwareVersion,
    },
    /// A rolled-back rollout restores devices but recorded no version to restore.
    #[error("rollout {rollout}: rolled back without a rollback version")]
    NoRollbackVersion { rollout: String },
    /// The phase decision's command was refused by the rollout's state machine.
    #[error("rollout {rollout}: {source}")]
    Transition {
        rollout: String,
        source: TransitionError,
    },
    /// A device record names something that is not a thing name.
    #[error("device record {thing:?}: {source}")]
    InvalidThing { thing: String, source: IdError },
}

impl Retryable for AdvanceError {
    /// Whether the next run may succeed where this one failed: a store that was throttled or
    /// unreachable, or a shadow write that lost every race. A missing rollout or image, a refused
    /// transition or a service's refusal stays until someone acts.
    fn is_retryable(&self) -> bool {
        match self {
            Self::Edge(e) => e.is_retryable(),
            Self::Shadow(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Everything the advancer reads from its environment, read once at init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvancerConfig {
    /// `SHOAL_ROLLOUT_TABLE`: rollout state, audit log and per-device requests.
    pub rollout_table: TableName,
    /// `SHOAL_DEVICE_TABLE`: the device registry (reported versions, OTA reports).
    pub device_table: TableName,
    /// `SHOAL_FIRMWARE_TABLE`: the firmware registry.
    pub firmware_table: TableName,
    /// `SHOAL_FIRMWARE_BUCKET`: where images are presigned from.
    pub firmware_bucket: BucketName,
    pub url_ttl_s: u64,
    pub url_refresh_margin_s: u64,
    pub alerts_topic: String,
    /// The IoT Jobs channel's presigning role; `None`: shadow delivery only.
    pub jobs_role_arn: Option<String>,
}

impl AdvancerConfig {
    /// Reads the advancer's settings from `source`: the tables `SHOAL_ROLLOUT_TABLE`,
    /// `SHOAL_DEVICE_TABLE` and `SHOAL_FIRMWARE_TABLE` and the bucket `SHOAL_FIRMWARE_BUCKET`
    /// (all required); `SHOAL_URL_TTL_S` (default 3600, kept within 60..=3600),
    /// `SHOAL_URL_REFRESH_MARGIN_S` (default 600), `SHOAL_ALERTS_TOPIC` (default `shoal/alerts`)
    /// and `SHOAL_OTA_JOBS_ROLE_ARN` (unset or empty: shadow delivery only).
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable: missing (one of the three tables or the bucket), or
    /// malformed (a table or bucket name that is not valid, a TTL or margin that is not a
    /// whole number of seconds).
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            rollout_table: config::required(source, vars::ROLLOUT_TABLE)?,
            device_table: config::required(source, vars::DEVICE_TABLE)?,
            firmware_table: config::required(source, vars::FIRMWARE_TABLE)?,
            firmware_bucket: config::required(source, vars::FIRMWARE_BUCKET)?,
            url_ttl_s: url_ttl_s(config::optional(source, vars::URL_TTL_S)?.unwrap_or(3600)),
            url_refresh_margin_s: config::optional(source, vars::URL_REFRESH_MARGIN_S)?
                .unwrap_or(600),
            alerts_topic: config::optional(source, vars::ALERTS_TOPIC)?
                .unwrap_or_else(|| "shoal/alerts".to_owned()),
            jobs_role_arn: config::optional::<String>(source, vars::OTA_JOBS_ROLE_ARN)?
                .filter(|arn| !arn.is_empty()),
        })
    }
}

/// The run's CloudWatch EMF lines, one per rollout (dimensions `Function`, `Rollout`), stamped
/// `timestamp_ms`: devices targeted, URLs refreshed, requests restored, cancelled and superseded,
/// targets deferred by the herd budget, delivery failures and whether the rollout's run failed.
pub fn metrics_lines(summary: &RunSummary, timestamp_ms: i64) -> Vec<String> {
    summary
        .rollouts
        .iter()
        .map(|run| {
            let counts = [
                ("Targeted", run.targeted),
                ("Refreshed", run.refreshed),
                ("Restored", run.restored),
                ("Cancelled", run.cancelled),
                ("Superseded", run.superseded),
                ("Deferred", run.deferred),
                ("DeliveryFailures", run.delivery_failures),
                ("Errors", u64::from(run.error.is_some())),
            ];
            shoal_aws::metrics::emf_counts(
                timestamp_ms,
                &[
                    ("Function", "ota-advancer"),
                    ("Rollout", run.rollout.as_str()),
                ],
                &counts,
            )
        })
        .collect()
}

/// What one run did to one rollout.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RolloutRun {
    pub rollout: String,
    pub status: Option<RolloutStatus>,
    pub phase: Option<String>,
    /// The phase decision, for an active rollout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// Another run moved the rollout first; this one stopped.
    pub raced: bool,
    /// Every device the rollout targeted.
    pub counts: PhaseCounts,
    pub failure_rate: f64,
    /// The devices targeted during the current phase (what it is judged on).
    pub phase_counts: PhaseCounts,
    pub rollback: RollbackCounts,
    pub targeted: u64,
    pub refreshed: u64,
    pub restored: u64,
    pub cancelled: u64,
    /// Device writes left for the next run ([`MAX_DEVICE_WRITES_PER_RUN`]).
    pub deferred: u64,
    /// Devices a newer rollout's request holds: left to it.
    pub superseded: u64,
    /// Device writes that failed: retried by the next run.
    pub delivery_failures: u64,
    pub alert_failed: bool,
    /// Why the run failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the next run may get past that failure by itself ([`AdvanceError`]'s
    /// [`Retryable`]); `None` when the run did not fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunSummary {
    pub rollouts: Vec<RolloutRun>,
}

impl RunSummary {
    pub fn errors(&self) -> usize {
        self.rollouts.iter().filter(|r| r.error.is_some()).count()
    }

    /// The run's failure, when a rollout's run failed: what the invocation answers with, after
    /// the other rollouts ran.
    pub fn failure(&self) -> Option<RunFailed> {
        let failed: Vec<&RolloutRun> = self.rollouts.iter().filter(|r| r.error.is_some()).collect();
        (!failed.is_empty()).then(|| RunFailed {
            failed: failed.len(),
            of: self.rollouts.len(),
            retryable: failed.iter().all(|r| r.retryable == Some(true)),
            summary: serde_json::to_string(self).unwrap_or_default(),
        })
    }
}

/// Rollouts whose run failed, with the run's summary (JSON) for the log. Retryable when every
/// failure is: one that needs an operator (a missing image, a refused transition) makes the run's
/// error non-retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{failed} of {of} rollout runs failed: {summary}")]
pub struct RunFailed {
    pub failed: usize,
    pub of: usize,
    pub retryable: bool,
    pub summary: String,
}

impl Retryable for RunFailed {
    fn is_retryable(&self) -> bool {
        self.retryable
    }
}

pub struct Edges<'a, R, F, D, A> {
    pub rollouts: &'a R,
    pub fleet: &'a F,
    pub delivery: &'a D,
    pub alerts: &'a A,
}

/// The scheduled run: `{"rollout": "<id>"}` in the event advances that one rollout, anything
/// else (the EventBridge scheduled event) every rollout. One rollout's failure is reported and
/// does not stop the others.
pub async fn handle<R: Rollouts, F: Fleet, D: Delivery, A: Alerts>(
    event: &Value,
    edges: &Edges<'_, R, F, D, A>,
    config: &AdvancerConfig,
    now_ms: u64,
) -> Result<RunSummary, AdvanceError> {
    let ids = match event.get("rollout").and_then(Value::as_str) {
        Some(id) => vec![id.to_owned()],
        None => current_rollouts(edges.rollouts).await?,
    };
    // The current rollouts target disjoint fleets (one per model and hardware revision), so they
    // advance side by side: a run lasts about as long as its slowest rollout, not their sum.
    let rollouts: Vec<RolloutRun> = futures::stream::iter(ids)
        .map(|id| async move {
            match advance(&id, edges, config, now_ms).await {
                Ok(run) => run,
                Err(e) => RolloutRun {
                    rollout: id.clone(),
                    error: Some(e.to_string()),
                    retryable: Some(e.is_retryable()),
                    ..RolloutRun::default()
                },
            }
        })
        .buffered(ROLLOUTS_IN_FLIGHT)
        .collect()
        .await;
    Ok(RunSummary { rollouts })
}

/// Rollouts advanced at once by one run; each has at most [`DEVICE_WRITES_IN_FLIGHT`] device
/// writes in flight.
const ROLLOUTS_IN_FLIGHT: usize = 4;

/// Rollout records read at once while finding the current rollouts.
const READS_IN_FLIGHT: usize = 16;

/// The rollouts worth a run: per model and hardware revision, the newest one only. An older one
/// is finished (`start` refuses a rollout while another is active or paused) and the newer one
/// now reaches its stragglers, so the table's history costs one read each, not a fleet scan.
async fn current_rollouts(rollouts: &impl Rollouts) -> Result<Vec<String>, EdgeError> {
    let mut newest: std::collections::BTreeMap<(String, String), (u64, String)> =
        std::collections::BTreeMap::new();
    let read: Vec<Result<Option<Rollout>, EdgeError>> =
        futures::stream::iter(rollouts.ids().await?)
            .map(|id| async move { rollouts.get(&id).await })
            .buffered(READS_IN_FLIGHT)
            .collect()
            .await;
    for r in read {
        let Some(r) = r? else {
            continue;
        };
        let id = r.id.to_string();
        let key = (r.model.as_str().to_owned(), r.hardware.as_str().to_owned());
        let candidate = (r.created_ms, id);
        let slot = newest.entry(key).or_insert_with(|| candidate.clone());
        if candidate > *slot {
            *slot = candidate;
        }
    }
    Ok(newest.into_values().map(|(_, id)| id).collect())
}

fn image_of<'a>(
    images: &'a [FirmwareImage],
    rollout: &Rollout,
    version: &FirmwareVersion,
) -> Result<&'a FirmwareImage, AdvanceError> {
    shoal_core::rollout::image::find_image(images, version).ok_or_else(|| AdvanceError::NoImage {
        rollout: rollout.id.to_string(),
        model: rollout.model.clone(),
        hardware: rollout.hardware.clone(),
        version: version.clone(),
    })
}

fn command_for(decision: &Decision) -> Option<Command> {
    match decision {
        Decision::Wait { .. } => None,
        Decision::Advance { to } => Some(Command::Advance { to: *to }),
        Decision::Complete => Some(Command::Complete),
        Decision::Pause { reason } => Some(Command::Pause {
            reason: reason.clone(),
        }),
    }
}

/// One rollout's run.
pub async fn advance<R: Rollouts, F: Fleet, D: Delivery, A: Alerts>(
    id: &str,
    edges: &Edges<'_, R, F, D, A>,
    config: &AdvancerConfig,
    now_ms: u64,
) -> Result<RolloutRun, AdvanceError> {
    let mut rollout = edges
        .rollouts
        .get(id)
        .await?
        .ok_or_else(|| AdvanceError::NoRollout { id: id.to_owned() })?;
    // Three independent reads, side by side.
    let (images, records, fleet) = futures::try_join!(
        edges.fleet.images(&rollout.model, &rollout.hardware),
        edges.rollouts.devices(id),
        edges.fleet.devices(&rollout.model, &rollout.hardware),
    )?;
    let image = image_of(&images, &rollout, &rollout.version)?;
    let margin_ms = config.url_refresh_margin_s * 1000;
    let plan_for = |r: &Rollout| {
        plan_run(
            r,
            image.min_version.as_ref(),
            &fleet,
            &records,
            now_ms,
            margin_ms,
        )
    };
    let mut plan = plan_for(&rollout);
    let mut run = RolloutRun {
        rollout: id.to_owned(),
        ..RolloutRun::default()
    };

    if rollout.status == RolloutStatus::Active {
        let decision = judge(&rollout, &plan, now_ms);
        if let Some(command) = command_for(&decision) {
            let (next, transition) =
                rollout
                    .apply(command, "advancer", now_ms)
                    .map_err(|source| AdvanceError::Transition {
                        rollout: id.to_owned(),
                        source,
                    })?;
            if !edges
                .rollouts
                .transition(&rollout, &next, &transition)
                .await?
            {
                run.raced = true;
                run.decision = Some(decision);
                return Ok(finish(run, &rollout, &plan));
            }
            rollout = next;
            if let Decision::Pause { reason } = &decision {
                run.alert_failed = alert(edges.alerts, config, &rollout, &plan, reason)
                    .await
                    .is_err();
            }
            plan = plan_for(&rollout);
        }
        run.decision = Some(decision);
    }

    let by_thing: std::collections::HashMap<&str, &DeviceRecord> =
        records.iter().map(|r| (r.thing.as_str(), r)).collect();
    let ttl_s = config.url_ttl_s;
    // The device request (`image`, or its withdrawal), then what this rollout now asks of the
    // device, recorded. `Ok(false)`: a newer rollout holds the device; the record says this one
    // asks nothing (a new target is not recorded at all).
    let request = async |record: DeviceRecord,
                         image: Option<&FirmwareImage>,
                         new_target: bool|
           -> Result<bool, AdvanceError> {
        let (update, expires) = match image {
            Some(image) => {
                let url = edges.delivery.presign(&image.s3_key, ttl_s).await?;
                let expires = now_ms + ttl_s * 1000;
                let desired = delivery::request(rollout.id.as_str(), image, url, expires);
                (delivery::update(&desired), expires)
            }
            None => (cancel(), 0),
        };
        let version = image.map(|i| &i.version);
        let thing =
            ThingName::parse(&record.thing).map_err(|source| AdvanceError::InvalidThing {
                thing: record.thing.clone(),
                source,
            })?;
        let written = edges
            .delivery
            .write(&OtaRequest {
                thing: &thing,
                rollout: rollout.id.as_str(),
                version,
                update,
            })
            .await?;
        if !written && new_target {
            return Ok(false);
        }
        if written && new_target {
            edges
                .delivery
                .join_job(rollout.id.as_str(), &record.thing)
                .await?;
        }
        let record = DeviceRecord {
            desired_version: version.filter(|_| written).cloned(),
            url_expires_ms: if written { expires } else { 0 },
            ..record
        };
        edges.rollouts.put_device(id, &record).await?;
        Ok(written)
    };
    let (request, by_thing, images, rollout) = (&request, &by_thing, &images, &rollout);
    if !plan.targets.is_empty() {
        edges.delivery.open_job(rollout, image).await?;
    }
    if !plan.rollback_steps.is_empty() {
        let reason = rollout.reason.as_deref().unwrap_or("rolled back");
        edges
            .delivery
            .cancel_job(rollout.id.as_str(), reason)
            .await?;
    }
    // Most urgent first: devices leaving a bad image, then devices mid-download, then new ones.
    let jobs = plan
        .rollback_steps
        .iter()
        .map(|(t, s)| Job::Rollback(t, *s))
        .chain(plan.refresh.iter().map(|(t, v)| Job::Refresh(t, v)))
        .chain(plan.targets.iter().map(Job::Target));
    let planned = plan.rollback_steps.len() + plan.refresh.len() + plan.targets.len();
    run.deferred = planned.saturating_sub(MAX_DEVICE_WRITES_PER_RUN) as u64;
    let jobs = jobs.take(MAX_DEVICE_WRITES_PER_RUN);
    let mut done = futures::stream::iter(jobs)
        .map(|job| async move {
            let result = match &job {
                Job::Target(target) => {
                    let record = DeviceRecord {
                        thing: target.thing.clone(),
                        point: target.point,
                        from_version: target.from_version.clone(),
                        targeted_at_ms: now_ms,
                        desired_version: None,
                        url_expires_ms: 0,
                        phase: rollout.phase,
                    };
                    request(record, Some(image), true).await
                }
                Job::Refresh(thing, version) => match image_of(images, rollout, version) {
                    Ok(image) => request(by_thing[thing].clone(), Some(image), false).await,
                    Err(e) => Err(e),
                },
                Job::Rollback(thing, step) => {
                    let good = match step {
                        RollbackStep::Restore => rollout
                            .rollback_version
                            .as_ref()
                            .map(|good| image_of(images, rollout, good).map(Some)),
                        RollbackStep::Cancel => Some(Ok(None)),
                    };
                    match good {
                        Some(Ok(image)) => request(by_thing[thing].clone(), image, false).await,
                        Some(Err(e)) => Err(e),
                        None => Err(AdvanceError::NoRollbackVersion {
                            rollout: rollout.id.to_string(),
                        }),
                    }
                }
            };
            (job, result)
        })
        .buffer_unordered(DEVICE_WRITES_IN_FLIGHT);
    while let Some((job, result)) = done.next().await {
        let (counter, thing) = match job {
            Job::Target(t) => (&mut run.targeted, t.thing.as_str()),
            Job::Refresh(thing, _) => (&mut run.refreshed, thing),
            Job::Rollback(thing, RollbackStep::Restore) => (&mut run.restored, thing),
            Job::Rollback(thing, RollbackStep::Cancel) => (&mut run.cancelled, thing),
        };
        match result {
            Ok(true) => *counter += 1,
            Ok(false) => run.superseded += 1,
            Err(e) => {
                run.delivery_failures += 1;
                let retryable = e.is_retryable();
                tracing::warn!(%thing, error = %e, retryable, "device write failed");
                // The next run retries every device write; one that cannot succeed until someone
                // acts (no image to restore, a bad thing name, a shadow limit) fails the run, so
                // the invocation says so instead of counting it quietly every minute.
                if !retryable && run.error.is_none() {
                    run.error = Some(format!("device {thing}: {e}"));
                    run.retryable = Some(false);
                }
            }
        }
    }
    Ok(finish(run, rollout, &plan))
}

/// Device requests written at once: each is a few calls (presign, shadow get + update, record);
/// well inside IoT's per-account shadow rate, and it keeps 1,000 targets a minute far inside the
/// Lambda timeout.
const DEVICE_WRITES_IN_FLIGHT: usize = 16;

/// Device writes of one run at most (≈ 15,000 calls, well inside the timeout); the rest wait for
/// the next run, most urgent first.
pub const MAX_DEVICE_WRITES_PER_RUN: usize = 5_000;

/// One device write of a run.
enum Job<'p> {
    Target(&'p NewTarget),
    Refresh(&'p str, &'p FirmwareVersion),
    Rollback(&'p str, RollbackStep),
}

fn finish(mut run: RolloutRun, rollout: &Rollout, plan: &RunPlan) -> RolloutRun {
    run.status = Some(rollout.status);
    run.phase = rollout
        .plan
        .phases
        .get(rollout.phase)
        .map(|p| p.name.clone());
    run.counts = plan.counts;
    run.failure_rate = plan.counts.failure_rate();
    run.phase_counts = plan
        .by_phase
        .get(&rollout.phase)
        .copied()
        .unwrap_or_default();
    run.rollback = plan.rollback;
    run
}

/// The auto-pause alert, on `<alerts topic>/ota/<rollout>`.
async fn alert(
    alerts: &impl Alerts,
    config: &AdvancerConfig,
    rollout: &Rollout,
    plan: &RunPlan,
    reason: &str,
) -> Result<(), EdgeError> {
    let payload = serde_json::json!({
        "alert": "ota_rollout_paused",
        "rollout": rollout.id,
        "model": rollout.model,
        "hardware": rollout.hardware,
        "version": rollout.version,
        "phase": rollout.plan.phases.get(rollout.phase).map(|p| &p.name),
        "reason": reason,
        "counts": plan.counts,
        "phase_counts": plan.by_phase.get(&rollout.phase),
        "failure_rate": plan.counts.failure_rate(),
        "next": "shoal rollout resume|rollback",
    });
    let topic = format!("{}/ota/{}", config.alerts_topic, rollout.id);
    let published = alerts
        .publish(&topic, payload.to_string().into_bytes())
        .await;
    if let Err(e) = &published {
        tracing::error!(rollout = %rollout.id, error = %e, "pause alert not published");
    }
    published
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use shoal_core::rollout::phases::{PlanSettings, RolloutPlan};
    use shoal_core::shadow::ota::{OtaReport, OtaStatus};

    use super::*;
    use crate::memory::Memory;

    fn rollout(id: &str, version: &str) -> Rollout {
        let settings = PlanSettings {
            canary_percent: 50.0,
            staged_percents: vec![],
            soak_ms: 0,
            min_reports: 2,
            ..PlanSettings::default()
        };
        Rollout {
            version: version.parse().unwrap(),
            plan: RolloutPlan::new(&settings).unwrap(),
            max_new_per_minute: 1_000,
            ..shoal_core::test_util::rollout(id)
        }
    }

    fn image(version: &str) -> FirmwareImage {
        shoal_core::test_util::firmware_image(version)
    }

    fn memory(rollouts: &[Rollout], devices: usize) -> Memory {
        Memory {
            rollouts: Mutex::new(
                rollouts
                    .iter()
                    .map(|r| (r.id.to_string(), r.clone()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            fleet: (0..devices)
                .map(|i| FleetDevice {
                    thing: format!("d-{i:03}"),
                    online: Some(true),
                    running: Some("1.9.0".parse().unwrap()),
                    report: None,
                })
                .collect(),
            images: vec![image("1.9.0"), image("1.10.0")],
            ..Memory::default()
        }
    }

    fn config() -> AdvancerConfig {
        AdvancerConfig::from_source(&BTreeMap::from([
            (vars::ROLLOUT_TABLE, "rollouts"),
            (vars::DEVICE_TABLE, "devices"),
            (vars::FIRMWARE_TABLE, "firmware"),
            (vars::FIRMWARE_BUCKET, "firmware-images"),
        ]))
        .unwrap()
    }

    #[test]
    fn the_config_names_each_missing_table() {
        let err = AdvancerConfig::from_source(&BTreeMap::<&str, &str>::new()).unwrap_err();
        assert!(err.to_string().contains(vars::ROLLOUT_TABLE), "{err}");
    }

    #[test]
    fn metrics_lines_count_each_rollouts_run() {
        let summary = RunSummary {
            rollouts: vec![RolloutRun {
                rollout: "r-1".into(),
                targeted: 7,
                deferred: 3,
                error: Some("boom".into()),
                ..RolloutRun::default()
            }],
        };
        let lines = metrics_lines(&summary, 1_000);
        assert_eq!(lines.len(), 1);
        let line: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(line["Rollout"], "r-1");
        assert_eq!(line["Function"], "ota-advancer");
        assert_eq!(line["Targeted"], 7);
        assert_eq!(line["Deferred"], 3);
        assert_eq!(line["Errors"], 1);
        assert_eq!(line["_aws"]["Timestamp"], 1_000);
    }

    fn edges(m: &Memory) -> Edges<'_, Memory, Memory, Memory, Memory> {
        Edges {
            rollouts: m,
            fleet: m,
            delivery: m,
            alerts: m,
        }
    }

    #[tokio::test]
    async fn one_failing_rollout_is_reported_and_the_others_still_run() {
        // "broken" (another hardware revision) asks for an image the registry does not have.
        let broken = Rollout {
            hardware: "rev-c".parse().unwrap(),
            ..rollout("broken", "3.0.0")
        };
        let m = memory(&[broken, rollout("good", "1.10.0")], 40);
        let summary = handle(&Value::Null, &edges(&m), &config(), 1)
            .await
            .unwrap();
        assert_eq!(summary.errors(), 1);
        let run = |id: &str| summary.rollouts.iter().find(|r| r.rollout == id).unwrap();
        let error = run("broken").error.as_deref().unwrap();
        assert!(error.contains("no th-v2 rev-c image 3.0.0"), "{error}");
        assert_eq!(run("broken").retryable, Some(false));
        assert!(run("good").targeted > 0);
        assert_eq!(run("good").retryable, None);
        assert!(m.records_of("broken").is_empty());
        // An image nobody published stays missing: the invocation's error says a retry won't help.
        let failed = summary.failure().unwrap();
        assert_eq!((failed.failed, failed.of, failed.retryable), (1, 2, false));
        let diagnostic = shoal_aws::lambda::diagnostic(&failed);
        assert_eq!(diagnostic.error_type, shoal_aws::lambda::NON_RETRYABLE);
        assert!(
            diagnostic
                .error_message
                .starts_with("1 of 2 rollout runs failed: {")
        );

        let one = serde_json::json!({"rollout": "good"});
        let summary = handle(&one, &edges(&m), &config(), 2).await.unwrap();
        assert_eq!(summary.rollouts.len(), 1);
        assert!(summary.failure().is_none());
    }

    #[tokio::test]
    async fn failures_say_whether_the_next_run_can_get_past_them() {
        let m = memory(&[rollout("r", "1.10.0")], 4);
        let missing = serde_json::json!({"rollout": "nope"});
        let summary = handle(&missing, &edges(&m), &config(), 1).await.unwrap();
        assert_eq!(
            summary.rollouts[0].error.as_deref(),
            Some("rollout nope does not exist")
        );
        assert!(!summary.failure().unwrap().is_retryable());

        let down = AdvanceError::Edge(crate::memory::down("dynamodb", "GetItem"));
        assert!(down.is_retryable());
        let contended = AdvanceError::Shadow(WriteError::Contended {
            shadow: "d-1/ota".into(),
            attempts: 3,
        });
        assert!(contended.is_retryable());
        let refused = AdvanceError::Edge(EdgeError::service(
            "dynamodb",
            "GetItem",
            "AccessDeniedException",
            "denied",
        ));
        assert!(!refused.is_retryable());
        let no_image = AdvanceError::NoRollbackVersion {
            rollout: "r".into(),
        };
        assert!(!no_image.is_retryable());
        // Every failed rollout retryable: the run's error is too.
        let summary = RunSummary {
            rollouts: vec![RolloutRun {
                rollout: "r".into(),
                error: Some(down.to_string()),
                retryable: Some(true),
                ..RolloutRun::default()
            }],
        };
        assert!(summary.failure().unwrap().is_retryable());
    }

    #[tokio::test]
    async fn a_failed_device_write_is_counted_unrecorded_and_retried() {
        let mut m = memory(&[rollout("r", "1.10.0")], 40);
        m.unreachable = m.fleet.iter().map(|d| d.thing.clone()).take(40).collect();
        let first = advance("r", &edges(&m), &config(), 1).await.unwrap();
        assert!(first.delivery_failures > 0);
        assert_eq!(first.targeted, 0);
        assert!(
            m.records_of("r").is_empty(),
            "nothing recorded for a failed write"
        );
        m.unreachable.clear();
        let second = advance("r", &edges(&m), &config(), 120_000).await.unwrap();
        assert_eq!(second.targeted, first.delivery_failures);
        assert_eq!(m.records_of("r").len() as u64, second.targeted);
        let desired = m.shadows.lock().unwrap()[&m.records_of("r")[0].thing].clone();
        assert_eq!(desired["version"], "1.10.0");
    }

    #[tokio::test]
    async fn a_device_write_that_cannot_succeed_fails_the_run() {
        let mut m = memory(&[rollout("r", "1.10.0")], 40);
        let first = advance("r", &edges(&m), &config(), 1).await.unwrap();
        assert!(first.targeted > 0);
        let targeted: Vec<String> = m.records_of("r").into_iter().map(|r| r.thing).collect();
        for device in m.fleet.iter_mut().filter(|d| targeted.contains(&d.thing)) {
            device.running = Some("1.10.0".parse().unwrap());
            device.report = Some(OtaReport {
                status: OtaStatus::Success,
                target_version: Some("1.10.0".into()),
                running_version: Some("1.10.0".into()),
                reason: None,
            });
        }
        // Rolled back to a version whose image nobody published: every restore fails, and no
        // later run can do better until an operator acts.
        {
            let mut rollouts = m.rollouts.lock().unwrap();
            let r = rollouts.get_mut("r").unwrap();
            r.status = RolloutStatus::RolledBack;
            r.rollback_version = Some("0.9.0".parse().unwrap());
        }
        let run = advance("r", &edges(&m), &config(), 2).await.unwrap();
        assert_eq!(run.delivery_failures, first.targeted);
        assert_eq!(run.restored, 0);
        assert_eq!(run.retryable, Some(false));
        let error = run.error.as_deref().unwrap();
        assert!(error.contains("no th-v2 rev-b image 0.9.0"), "{error}");
        let summary = RunSummary {
            rollouts: vec![run],
        };
        assert!(!summary.failure().unwrap().is_retryable());
    }

    #[tokio::test]
    async fn a_pause_is_alerted_and_an_unpublished_alert_is_flagged() {
        let mut m = memory(&[rollout("r", "1.10.0")], 40);
        advance("r", &edges(&m), &config(), 1).await.unwrap();
        let targeted: Vec<String> = m.records_of("r").into_iter().map(|r| r.thing).collect();
        for device in m.fleet.iter_mut().filter(|d| targeted.contains(&d.thing)) {
            device.report = Some(OtaReport {
                status: OtaStatus::Failed,
                target_version: Some("1.10.0".into()),
                running_version: Some("1.10.0".into()),
                reason: Some("crc".into()),
            });
        }
        m.alerts_down = true;
        let paused = advance("r", &edges(&m), &config(), 2).await.unwrap();
        assert_eq!(paused.status, Some(RolloutStatus::Paused));
        assert!(
            paused.alert_failed,
            "the pause stands; the failed alert is visible"
        );
        assert_eq!(m.audit.lock().unwrap().len(), 1);

        m.alerts_down = false;
        m.rollouts.lock().unwrap().get_mut("r").unwrap().status = RolloutStatus::Active;
        let again = advance("r", &edges(&m), &config(), 3).await.unwrap();
        assert!(!again.alert_failed);
        let alerts = m.alerts.lock().unwrap();
        assert_eq!(alerts[0].0, "shoal/alerts/ota/r");
        let alert: Value = serde_json::from_slice(&alerts[0].1).unwrap();
        assert_eq!(alert["counts"]["failed"], targeted.len());
    }

    #[tokio::test]
    async fn an_advancer_that_loses_the_race_stops_without_writing() {
        let mut m = memory(&[rollout("r", "1.10.0")], 40);
        advance("r", &edges(&m), &config(), 1).await.unwrap();
        let targeted = m.records_of("r").len();
        for device in m.fleet.iter_mut() {
            device.report = Some(OtaReport {
                status: OtaStatus::Success,
                target_version: Some("1.10.0".into()),
                running_version: Some("1.10.0".into()),
                reason: None,
            });
        }
        m.always_raced = true;
        let run = advance("r", &edges(&m), &config(), 2).await.unwrap();
        assert!(run.raced);
        assert_eq!(run.decision, Some(Decision::Advance { to: 1 }));
        assert_eq!((run.targeted, m.records_of("r").len()), (0, targeted));
        assert!(m.audit.lock().unwrap().is_empty());
        m.always_raced = false;
        let run = advance("r", &edges(&m), &config(), 3).await.unwrap();
        assert_eq!(run.phase.as_deref(), Some("general"));
        assert!(run.targeted > 0);
    }

    #[tokio::test]
    async fn a_run_writes_at_most_its_cap_and_the_next_run_goes_on() {
        let mut general = rollout("r", "1.10.0");
        general.phase = 1;
        general.max_new_per_minute = 100_000;
        let n = MAX_DEVICE_WRITES_PER_RUN + 700;
        let m = memory(&[general], n);
        let first = advance("r", &edges(&m), &config(), 1).await.unwrap();
        assert_eq!(
            (first.targeted, first.deferred),
            (MAX_DEVICE_WRITES_PER_RUN as u64, 700)
        );
        let second = advance("r", &edges(&m), &config(), 61_000).await.unwrap();
        assert_eq!((second.targeted, second.deferred), (700, 0));
        assert_eq!(m.records_of("r").len(), n);
    }

    #[tokio::test]
    async fn only_the_newest_rollout_of_a_model_and_hardware_is_run() {
        let old = Rollout {
            status: RolloutStatus::Completed,
            ..rollout("old", "1.9.0")
        };
        let new = Rollout {
            created_ms: 10,
            ..rollout("new", "1.10.0")
        };
        let other = Rollout {
            hardware: "rev-c".parse().unwrap(),
            status: RolloutStatus::Completed,
            ..rollout("other", "1.10.0")
        };
        let m = memory(&[old, new, other], 10);
        let summary = handle(&Value::Null, &edges(&m), &config(), 1)
            .await
            .unwrap();
        let ran: Vec<&str> = summary
            .rollouts
            .iter()
            .map(|r| r.rollout.as_str())
            .collect();
        assert_eq!(ran, ["new", "other"]);
        // Asked for by name, an old rollout still runs (the operator's call).
        let one = serde_json::json!({"rollout": "old"});
        let summary = handle(&one, &edges(&m), &config(), 2).await.unwrap();
        assert_eq!(summary.rollouts[0].rollout, "old");
    }
}
