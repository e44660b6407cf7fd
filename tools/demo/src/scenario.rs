//! The scenario: the whole system run on one machine, step by step, each step done the way an
//! operator or a device does it (the CLI's library functions, devices over MQTT, the deployed
//! functions under the local Lambda host), with a short live progress.
//!
//! 1. The stack's data resources (`shoal init-local`), the factory manifest, three images per
//!    model and hardware revision (factory, bad, fixed), the claim certificate.
//! 2. The fleet simulator: every manifest device provisions by claim; rogue serials are refused.
//! 3. Telemetry (JSON and packed binary), a fleet-wide outage (devices buffer, then catch up).
//! 4. `shoal config set --group <building>`, then until every device of it reports the change.
//! 5. The bad image rolls out to every model and revision; on revision B its canary fails the
//!    self-test, the advancer pauses it (alert), the operator rolls it back.
//! 6. The fixed image rolls out everywhere to 100%.
//! 7. The fleet stops; the stores settle.
//!
//! Time is compressed: telemetry every few seconds, rollout soaks of seconds, and the advancer —
//! on AWS an EventBridge schedule (`OtaAdvanceRate`, `rate(1 minute)`) — invoked every
//! [`DemoPlan::advance_every`] through the local Lambda host's Invoke API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use shoal_agent::link::{Link, LinkEvent};
use shoal_agent::provision::KeyMode;
use shoal_agent::simulate::{
    Faults, Fleet, FleetPlan, FleetStatus, SelfTestFailure, VirtualDevice, manifest_devices,
};
use shoal_aws::client::AwsResultExt;
use shoal_aws::device_table::DeviceTable;
use shoal_aws::firmware_table::FirmwareTable;
use shoal_aws::manifest_table::ManifestTable;
use shoal_aws::rollout_table::RolloutTable;
use shoal_cli::firmware::{PublishRequest, Publisher};
use shoal_cli::group_config::{
    GroupRequest, IotFleet, Options, Target, convergence, parse_desired, set_desired,
};
use shoal_cli::rollout::{RolloutStatusReport, StartRequest, operate, start, status};
use shoal_core::rollout::cohort::{cohort_point, in_cohort};
use shoal_core::rollout::phases::PlanSettings;
use shoal_core::rollout::state::{Command, RolloutStatus};
use shoal_core::shadow::PolicyTable;
use shoal_iot_core::lambda::{InvocationType, LambdaClient};

use crate::layout::{
    BAD_VERSION, DemoDevice, FACTORY_VERSION, GOOD_VERSION, JSON_MODEL, Layout, PACKED_FIELDS,
    PACKED_MODEL, image,
};
use crate::stack::Stack;

/// The local stack's resource names (`shoal init-local`'s defaults, the template's local names).
pub mod names {
    pub const MANIFEST_TABLE: &str = "shoal-local-manifest";
    pub const DEVICE_TABLE: &str = "shoal-local-devices";
    pub const FIRMWARE_TABLE: &str = "shoal-local-firmware";
    pub const ROLLOUT_TABLE: &str = "shoal-local-rollouts";
    pub const FIRMWARE_BUCKET: &str = "shoal-local-firmware";
    pub const ARCHIVE_BUCKET: &str = "shoal-local-archive";
    pub const SIGNING_KEY: &str = "alias/shoal-local-firmware-signing";
    pub const TIMESTREAM_DATABASE: &str = "shoal_local";
    pub const TIMESTREAM_TABLE: &str = "telemetry";
    /// The template's claim policy, as the local IoT Core names it.
    pub const CLAIM_POLICY: &str = "shoal-local-claim";
    /// The template's fleet-provisioning template.
    pub const PROVISIONING_TEMPLATE: &str = "shoal-fleet";
    /// The advancer, by its logical id in the template.
    pub const ADVANCER: &str = "OtaAdvancerFunction";
    /// The template's `SHOAL_ALERTS_TOPIC`.
    pub const ALERTS_TOPIC: &str = "shoal/alerts";
}

/// How the run goes: sizes and (compressed) times.
#[derive(Debug, Clone)]
pub struct DemoPlan {
    /// Manifest devices.
    pub devices: usize,
    /// Serials outside the manifest.
    pub rogue: usize,
    /// The run's tag (in every name it creates).
    pub tag: String,
    /// Seed of the simulator's random choices.
    pub seed: u64,
    /// Telemetry period until the configuration changes it.
    pub interval: Duration,
    /// Telemetry flows this long before the outage.
    pub warm_up: Duration,
    /// The fleet-wide network outage.
    pub outage: Duration,
    /// Soak time of each rollout phase.
    pub soak: Duration,
    /// The pause between one advancer run's end and the next run (its schedule, compressed).
    pub advance_every: Duration,
    /// How often the demo reads each rollout's whole status (its fleet included) when the
    /// rollout's record has not moved.
    pub status_every: Duration,
    /// Size of each firmware image, bytes.
    pub image_bytes: usize,
    /// Where the event log, the `config set` report and the report go.
    pub out_dir: PathBuf,
    /// Print the live progress (the test runs quiet).
    pub verbose: bool,
}

impl DemoPlan {
    /// The demo's defaults for `devices` devices, writing to `out_dir`.
    pub fn new(devices: usize, out_dir: PathBuf) -> Self {
        let now_s = shoal_core::clock::now_ms() / 1000;
        // Each advancer run and each status read reads the rollouts' fleets from the device
        // table (moto's BatchGetItem: ~0.1 s of its time per 100 devices), so both come less
        // often as the fleet grows: 200 devices every second, 1,000 every 5 s.
        let fleet_scale = (devices as u32).div_ceil(200).max(1);
        Self {
            devices,
            rogue: 3,
            tag: format!("d{:x}", now_s % 0x100_0000),
            seed: 16,
            // The local stack takes about 20 telemetry messages a second (moto serves ~60 calls a
            // second for everything): larger fleets report less often.
            interval: Duration::from_secs((devices as u64 / 20).max(10)),
            warm_up: Duration::from_secs(5),
            outage: Duration::from_secs(10),
            soak: Duration::from_secs(3),
            advance_every: Duration::from_secs(1) * fleet_scale,
            status_every: Duration::from_secs(4) * fleet_scale,
            image_bytes: 48 * 1024,
            out_dir,
            verbose: true,
        }
    }
}

/// The configuration `config set` sends to one building: half the telemetry rate of
/// `interval`, and display settings.
pub fn building_config(interval: Duration) -> serde_json::Value {
    serde_json::json!({
        "interval_s": interval.as_secs() * 2,
        "display": {"units": "metric", "brightness": 70}
    })
}

/// A moment of the run worth marking on the report's timelines.
#[derive(Debug, Clone, Serialize)]
pub struct Mark {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// What happened.
    pub what: String,
}

/// A rollout the scenario ran.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutRun {
    /// Its id.
    pub id: String,
    /// `bad` or `good`.
    pub image: &'static str,
    /// The status as read from the stores when the scenario was done with it (completed, or
    /// rolled back and restored): later rollouts change what its devices run, not its history.
    pub report: RolloutStatusReport,
    /// The status when the advancer paused it, if it did.
    pub at_pause: Option<RolloutStatusReport>,
}

/// What the run did, for the summary, the report and the test.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The run's names.
    #[serde(skip)]
    pub layout: Layout,
    /// When the run started and ended (ms since the Unix epoch).
    pub started_ms: u64,
    pub ended_ms: u64,
    /// The building `config set` targeted, the desired state it wrote and its report file.
    pub configured_group: String,
    pub desired: serde_json::Value,
    pub config_report: PathBuf,
    /// The rollouts, in the order they started.
    pub rollouts: Vec<RolloutRun>,
    /// The rolled-back rollouts as the stores showed them once the rollback was done, with what
    /// each device it had targeted was running then (device table).
    pub after_rollback: Vec<(RolloutStatusReport, BTreeMap<String, Option<String>>)>,
    /// Alerts received on the alerts topic (topic, payload).
    pub alerts: Vec<(String, serde_json::Value)>,
    /// The simulator's own counters at the end (what devices did; the stores say what arrived).
    pub fleet: FleetStatus,
    /// Marks for the timelines.
    pub marks: Vec<Mark>,
    /// The simulator's event log.
    pub events_log: PathBuf,
    /// The simulator's CPU time over the run (user + system, ms), when the platform tells.
    pub simulator_cpu_ms: Option<u64>,
}

/// Live progress: one line per step, and a status line every few seconds while devices run.
#[derive(Clone)]
pub struct Progress {
    started: Instant,
    verbose: bool,
    phase: Arc<Mutex<String>>,
}

impl Progress {
    fn new(verbose: bool) -> Self {
        Self {
            started: Instant::now(),
            verbose,
            phase: Arc::new(Mutex::new("starting".into())),
        }
    }

    /// Prints `line` with the time since the start.
    pub fn say(&self, line: &str) {
        if self.verbose {
            println!("[{:>6.1}s] {line}", self.started.elapsed().as_secs_f64());
        }
    }

    fn phase(&self, phase: &str) {
        if let Ok(mut p) = self.phase.lock() {
            phase.clone_into(&mut p);
        }
    }
}

fn now_ms() -> u64 {
    u64::try_from(shoal_core::clock::now_ms()).unwrap_or_default()
}

/// Polls `check` every `every` until it returns `Ok`, or fails with `what` and its last answer
/// after `limit`.
async fn until<T, F, Fut>(what: &str, limit: Duration, every: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => {
                bail!("{what}: not within {} s ({last})", limit.as_secs())
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// The clients and tables the steps share.
struct Ctx<'a> {
    stack: &'a Stack,
    plan: &'a DemoPlan,
    layout: Layout,
    progress: Progress,
    rollouts: RolloutTable,
    firmware: FirmwareTable,
    devices: DeviceTable,
    marks: Vec<Mark>,
}

impl Ctx<'_> {
    fn mark(&mut self, what: &str) {
        self.marks.push(Mark {
            at_ms: now_ms(),
            what: what.to_owned(),
        });
    }

    async fn status(&self, id: &str) -> Result<RolloutStatusReport> {
        status(
            &self.rollouts,
            &self.firmware,
            &self.devices,
            &IotFleet(self.stack.factory.iot()),
            id,
            now_ms(),
        )
        .await
    }
}

/// Step 1: resources, manifest, images, claim certificate, the fleet's signing key.
async fn prepare(ctx: &mut Ctx<'_>) -> Result<((Vec<u8>, Vec<u8>), Vec<u8>)> {
    let factory = &ctx.stack.factory;
    let mut lines = Vec::new();
    shoal_cli::resources::init_all(
        factory,
        shoal_cli::resources::InitLocalArgs {
            database: names::TIMESTREAM_DATABASE.parse()?,
            table: names::TIMESTREAM_TABLE.parse()?,
            bucket: names::ARCHIVE_BUCKET.parse()?,
            manifest_table: names::MANIFEST_TABLE.parse()?,
            device_table: names::DEVICE_TABLE.parse()?,
            firmware_table: names::FIRMWARE_TABLE.parse()?,
            firmware_bucket: names::FIRMWARE_BUCKET.parse()?,
            rollout_table: names::ROLLOUT_TABLE.parse()?,
            signing_key_alias: names::SIGNING_KEY.into(),
        },
        &mut lines,
    )
    .await
    .context("shoal init-local")?;
    ctx.progress.say(&format!(
        "init-local: {} resources ready (Timestream, S3, DynamoDB, KMS)",
        String::from_utf8_lossy(&lines).lines().count()
    ));
    let manifest = ManifestTable::new(factory.dynamodb(), names::MANIFEST_TABLE.parse()?);
    let imported = shoal_cli::manifest::import(&manifest, &ctx.layout.manifest_csv(), |_| {})
        .await
        .context("shoal manifest import")?;
    ctx.progress.say(&format!(
        "manifest: {imported} devices imported ({} th-v2 on two hardware revisions, {} th-mini \
         sending packed binary), {} buildings; {} rogue serials are not in it",
        ctx.layout
            .devices
            .iter()
            .filter(|d| d.model == JSON_MODEL)
            .count(),
        ctx.layout
            .devices
            .iter()
            .filter(|d| d.model == PACKED_MODEL)
            .count(),
        crate::layout::BUILDINGS,
        ctx.layout.rogue.len()
    ));
    let bucket = names::FIRMWARE_BUCKET.parse()?;
    let key = names::SIGNING_KEY.parse()?;
    let publisher = Publisher {
        factory,
        table: &ctx.firmware,
        bucket: &bucket,
        key: &key,
    };
    let combos = ctx.layout.combos();
    for (model, hardware) in combos.keys() {
        for version in [FACTORY_VERSION, BAD_VERSION, GOOD_VERSION] {
            let request = PublishRequest {
                model: model.parse()?,
                hardware: hardware.parse()?,
                version: version.parse()?,
                min_version: None,
                downgrade_reason: None,
            };
            publisher
                .publish(
                    &image(model, hardware, version, ctx.plan.image_bytes),
                    &request,
                )
                .await
                .with_context(|| format!("shoal firmware publish {model} {hardware} {version}"))?;
        }
    }
    ctx.progress.say(&format!(
        "firmware: {FACTORY_VERSION}, {BAD_VERSION} and {GOOD_VERSION} published for {} model/revision pairs, signed with the local KMS key",
        combos.len()
    ));
    let (_, certificate, key) = shoal_cli::claim::claim_certificate(factory, names::CLAIM_POLICY)
        .await
        .context("shoal provisioning claim-certificate")?;
    let public_key = factory
        .kms()
        .get_public_key()
        .key_id(names::SIGNING_KEY)
        .send()
        .await
        .aws("kms", "GetPublicKey")?
        .public_key
        .context("GetPublicKey answered without a key")?
        .into_inner();
    Ok(((certificate.into_bytes(), key.into_bytes()), public_key))
}

/// An operator console on the alerts topic: an MQTT client with a certificate and policy of its
/// own, collecting what arrives.
async fn alert_listener(
    stack: &Stack,
    tag: &str,
) -> Result<(Link, Arc<Mutex<Vec<(String, serde_json::Value)>>>)> {
    let iot = stack.factory.iot();
    let client_id = format!("{tag}-operator");
    let policy = format!("{tag}-operator-alerts");
    let document = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect",
             "Resource": format!("arn:aws:iot:*:*:client/{client_id}")},
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": format!("arn:aws:iot:*:*:topicfilter/{}/*", names::ALERTS_TOPIC)},
            {"Effect": "Allow", "Action": "iot:Receive",
             "Resource": format!("arn:aws:iot:*:*:topic/{}/*", names::ALERTS_TOPIC)}
        ]
    });
    iot.create_policy()
        .policy_name(&policy)
        .policy_document(document.to_string())
        .send()
        .await
        .aws("iot", "CreatePolicy")?;
    let (_, certificate, key) = shoal_cli::claim::claim_certificate(&stack.factory, &policy)
        .await
        .context("the operator console's certificate")?;
    let mut link = Link::connect(
        &stack.mqtt,
        &client_id,
        certificate.as_bytes(),
        key.as_bytes(),
        7,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline.into(), link.next())
            .await
            .context("the operator console did not connect within 20 s")?;
        match event {
            Some(LinkEvent::Connected) => break,
            Some(LinkEvent::Disconnected(why)) => bail!("the operator console: {why}"),
            Some(_) => {}
            None => bail!("the operator console's connection ended"),
        }
    }
    link.subscribe(&[format!("{}/#", names::ALERTS_TOPIC)])
        .await
        .map_err(anyhow::Error::msg)?;
    Ok((link, Arc::new(Mutex::new(Vec::new()))))
}

/// Keeps `link` read, storing alerts in `into`.
fn collect_alerts(
    mut link: Link,
    into: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
) -> tokio::task::JoinHandle<Link> {
    tokio::spawn(async move {
        while let Some(event) = link.next().await {
            if let LinkEvent::Message { topic, payload } = event {
                let body = serde_json::from_slice(&payload).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&payload).into_owned())
                });
                if let Ok(mut alerts) = into.lock() {
                    alerts.push((topic, body));
                }
            }
        }
        link
    })
}

/// The simulator's plan for the run's devices (and the rogue ones).
fn fleet_plan(
    ctx: &Ctx<'_>,
    claim: (Vec<u8>, Vec<u8>),
    fleet_key_der: Vec<u8>,
) -> Result<FleetPlan> {
    let mut devices: Vec<VirtualDevice> =
        manifest_devices(&ctx.layout.manifest_csv()).map_err(anyhow::Error::msg)?;
    // One device in 25 has a clock an hour ahead: its readings are quarantined (Timestream takes
    // at most 15 minutes in the future).
    for (i, device) in devices.iter_mut().enumerate() {
        device.clock_skew_ms = Some(if i % 25 == 7 { 3_600_000 } else { 0 });
    }
    devices.extend(ctx.layout.rogue.iter().map(|serial| VirtualDevice {
        serial: serial.clone(),
        hardware: ctx.layout.hardware("a"),
        model: JSON_MODEL.into(),
        factory_secret: None,
        clock_skew_ms: None,
    }));
    Ok(FleetPlan {
        endpoint: ctx.stack.mqtt.clone(),
        claim,
        template: names::PROVISIONING_TEMPLATE.into(),
        app: "greenhouse".into(),
        devices,
        factory_version: FACTORY_VERSION.parse()?,
        fleet_key_der,
        interval: ctx.plan.interval,
        faults: Faults {
            duplicate: 1.0,
            self_test_failures: vec![SelfTestFailure {
                version: BAD_VERSION.parse()?,
                hardware: ctx.layout.hardware("b"),
                percent: 100.0,
            }],
            ..Faults::default()
        },
        seed: ctx.plan.seed,
        key: KeyMode::Device,
        // The hook's reserved concurrency is 5 (the template's).
        provisioning_concurrency: 5,
        provisioning_attempts: 4,
        identities: None,
        vclock_paths: Vec::new(),
        start_rate: 40.0,
        packed: BTreeMap::from([(
            PACKED_MODEL.to_owned(),
            PACKED_FIELDS.iter().map(|f| (*f).to_owned()).collect(),
        )]),
    })
}

/// Readings Timestream holds for the run's things (distinct thing and time), from moto's state.
async fn stored_readings(stack: &Stack, layout: &Layout) -> Result<usize> {
    let state = stack.timestream_state().await?;
    Ok(crate::stores::timestream_readings(&state, layout).len())
}

/// Prints a status line every few seconds until dropped.
fn ticker(
    stack: Arc<Stack>,
    layout: Layout,
    status: impl Fn() -> FleetStatus + Send + 'static,
    progress: Progress,
) -> tokio::task::JoinHandle<()> {
    let total = layout.devices.len();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        every.tick().await;
        let mut stored = None;
        let mut last_read = Instant::now() - Duration::from_secs(60);
        let mut read_every = Duration::from_secs(10);
        loop {
            every.tick().await;
            // moto serialises its whole state to answer: read it less often when that is slow.
            if last_read.elapsed() >= read_every {
                let began = Instant::now();
                if let Ok(n) = stored_readings(&stack, &layout).await {
                    stored = Some(n);
                }
                last_read = Instant::now();
                read_every =
                    (began.elapsed() * 20).clamp(Duration::from_secs(10), Duration::from_secs(30));
            }
            let s = status();
            let phase = progress.phase.lock().map(|p| p.clone()).unwrap_or_default();
            let versions: Vec<String> =
                s.versions.iter().map(|(v, n)| format!("{v}×{n}")).collect();
            progress.say(&format!(
                "  provisioned {}/{total} · online {} · readings sent {} · stored {} · firmware {} · {phase}",
                s.provisioned,
                s.connected,
                s.readings_acknowledged,
                stored.map_or_else(|| "…".to_owned(), |n| n.to_string()),
                versions.join(" ")
            ));
        }
    })
}

/// A rollout id whose canary (10% cohort) holds between 2 and a fifth of `things` (2 at least),
/// so the canary has the reports it is judged on and is still a canary.
///
/// Each later phase is judged on the devices it adds (10–50%, 50–100%), so each of those gets
/// at least 2 as well; with fewer than 6 devices no id can, and the first is taken.
pub fn rollout_id(prefix: &str, things: &[String]) -> String {
    let most = (things.len() / 5).max(2);
    (0..10_000)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| {
            let (mut canary, mut staged, mut general) = (0, 0, 0);
            for t in things {
                let point = cohort_point(id, t);
                if in_cohort(point, 10.0) {
                    canary += 1;
                } else if in_cohort(point, 50.0) {
                    staged += 1;
                } else {
                    general += 1;
                }
            }
            (2..=most).contains(&canary) && staged >= 2 && general >= 2
        })
        .unwrap_or_else(|| format!("{prefix}-0"))
}

fn settings(plan: &DemoPlan) -> PlanSettings {
    PlanSettings {
        canary_percent: 10.0,
        staged_percents: vec![50.0],
        soak_ms: u64::try_from(plan.soak.as_millis()).unwrap_or(u64::MAX),
        canary_max_failure_rate: 0.05,
        staged_max_failure_rate: 0.02,
        min_reports: 2,
    }
}

/// Starts a rollout of `version` on `model` and `hardware` (devices `things`); its id.
async fn start_rollout(
    ctx: &mut Ctx<'_>,
    model: &str,
    hardware: &str,
    things: &[String],
    version: &str,
) -> Result<String> {
    let id = rollout_id(
        &format!("{hardware}-{model}-{}", version.replace('.', "_")),
        things,
    );
    let rollout = start(
        &ctx.rollouts,
        &ctx.firmware,
        StartRequest {
            id: Some(id.clone()),
            model: model.parse()?,
            hardware: hardware.parse()?,
            version: version.parse()?,
            rollback_to: None,
            settings: settings(ctx.plan),
            max_new_per_minute: 10_000,
        },
        now_ms(),
    )
    .await
    .with_context(|| format!("shoal rollout start {model} {hardware} {version}"))?;
    ctx.progress.say(&format!(
        "rollout {} started: {model} {hardware} -> {version} (rollback to {}), canary 10%, 50%, 100%, soak {} s",
        rollout.id,
        rollout
            .rollback_version
            .as_ref()
            .map_or_else(|| "none".to_owned(), ToString::to_string),
        ctx.plan.soak.as_secs()
    ));
    Ok(id)
}

/// Where one model and hardware revision is in the rollout story.
enum Stage {
    /// The bad image rolling out.
    Bad(String),
    /// Rolled back after its pause: waiting for every device to be restored.
    Restoring(String, Box<RolloutStatusReport>),
    /// The fixed image rolling out.
    Good(String),
    Done,
}

/// Every device the rollout is for reported success on its version.
fn complete(r: &RolloutStatusReport) -> bool {
    r.rollout.status == RolloutStatus::Completed && r.counts.succeeded == r.population.eligible
}

/// The rollouts: the bad image to every model and revision; where the advancer pauses it the
/// operator rolls back, and once its devices are restored the fixed image follows; where it
/// completes, the fixed image follows at once. The advancer runs on its compressed schedule
/// until the fixed image is complete everywhere.
async fn rollouts(
    ctx: &mut Ctx<'_>,
) -> Result<(
    Vec<RolloutRun>,
    Vec<(RolloutStatusReport, BTreeMap<String, Option<String>>)>,
)> {
    let combos = ctx.layout.combos();
    let mut stages = BTreeMap::new();
    for ((model, hardware), things) in &combos {
        let id = start_rollout(ctx, model, hardware, things, BAD_VERSION).await?;
        stages.insert((model.clone(), hardware.clone()), Stage::Bad(id));
    }
    ctx.mark(&format!("{BAD_VERSION} rollouts start"));
    let soak_s = ctx.plan.soak.as_secs();
    // Both rounds; on the local stack a device's OTA report reaches the device table in about
    // 0.4 s per device of the fleet (1,000 devices: ~7 minutes a round; BENCHMARKS.md).
    let limit = Duration::from_secs(180 + 20 * soak_s + ctx.plan.devices as u64 * 4 / 5);
    let deadline = Instant::now() + limit;
    // The advancer runs on its own schedule, as EventBridge runs it, whatever the operator's
    // reads below are doing.
    let mut advancer = tokio::spawn(advancer_schedule(
        ctx.stack.lambda_endpoint.clone(),
        ctx.plan.advance_every,
        ctx.progress.clone(),
    ));
    let outcome = watch_rollouts(ctx, &combos, &mut stages, &mut advancer, deadline, limit).await;
    advancer.abort();
    outcome
}

/// The deployed advancer, invoked through the local Lambda host `every` after its last run ended,
/// as its schedule (compressed) invokes it; a failed run is tried again on the next tick, as the schedule would, and three in
/// a row end the schedule (and the demo) with the last error.
async fn advancer_schedule(endpoint: String, every: Duration, progress: Progress) -> Result<()> {
    let schedule = include_bytes!("../../../events/ota-advancer-schedule.json").to_vec();
    let client = LambdaClient::new(&endpoint);
    let mut failures = 0;
    loop {
        let run = async {
            let invoked = client
                .invoke(
                    names::ADVANCER,
                    InvocationType::RequestResponse,
                    schedule.clone(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("invoking {}: {e}", names::ADVANCER))?;
            if let Some(error) = invoked.function_error {
                bail!(
                    "the advancer failed ({error}): {}",
                    String::from_utf8_lossy(&invoked.payload)
                );
            }
            Ok(())
        };
        match run.await {
            Ok(()) => failures = 0,
            Err(e) if failures < 2 => {
                failures += 1;
                progress.say(&format!("warning: {e:#}; trying again"));
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(every).await;
    }
}

/// Reads the rollouts as an operator does (`shoal rollout status`) and acts on what it sees,
/// until the fixed image is complete everywhere. Each tick reads each rollout's record (one
/// GetItem); the full status (the fleet's records, the population) is read when the record
/// moved, and every few seconds while waiting on the devices.
#[allow(clippy::too_many_lines)]
async fn watch_rollouts(
    ctx: &mut Ctx<'_>,
    combos: &BTreeMap<(String, String), Vec<String>>,
    stages: &mut BTreeMap<(String, String), Stage>,
    advancer: &mut tokio::task::JoinHandle<Result<()>>,
    deadline: Instant,
    limit: Duration,
) -> Result<(
    Vec<RolloutRun>,
    Vec<(RolloutStatusReport, BTreeMap<String, Option<String>>)>,
)> {
    const TICK: Duration = Duration::from_secs(1);
    let refresh = ctx.plan.status_every;
    let mut runs = Vec::new();
    let mut after_rollback = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    // Per rollout: the record's revision at the last full read, when, and what it read.
    let mut read: BTreeMap<String, (u64, Instant, RolloutStatusReport)> = BTreeMap::new();
    loop {
        if advancer.is_finished() {
            return match advancer.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => bail!("the advancer's schedule ended"),
                Err(e) => bail!("the advancer's schedule failed: {e}"),
            };
        }
        let ids: Vec<String> = stages
            .values()
            .filter_map(|stage| match stage {
                Stage::Bad(id) | Stage::Restoring(id, _) | Stage::Good(id) => Some(id.clone()),
                Stage::Done => None,
            })
            .collect();
        let records =
            futures::future::try_join_all(ids.iter().map(|id| ctx.rollouts.get(id))).await?;
        let stale: Vec<&String> = ids
            .iter()
            .zip(&records)
            .filter(|(id, record)| {
                read.get(*id).is_none_or(|(revision, at, _)| {
                    record.as_ref().map(|r| r.revision) != Some(*revision)
                        || at.elapsed() >= refresh
                })
            })
            .map(|(id, _)| id)
            .collect();
        let fresh = futures::future::try_join_all(stale.iter().map(|id| ctx.status(id))).await?;
        for (id, r) in stale.into_iter().zip(fresh) {
            read.insert(id.clone(), (r.rollout.revision, Instant::now(), r));
        }
        let mut phases = Vec::new();
        for ((model, hardware), stage) in stages.iter_mut() {
            let id = match stage {
                Stage::Bad(id) | Stage::Restoring(id, _) | Stage::Good(id) => id.clone(),
                Stage::Done => continue,
            };
            let Some((_, _, r)) = read.get(&id) else {
                continue;
            };
            let r = r.clone();
            let line = format!(
                "{:?} {} ({}%): targeted {} · succeeded {} · failed {} · rolled back {}",
                r.rollout.status,
                r.phase,
                r.percent,
                r.counts.targeted,
                r.counts.succeeded,
                r.counts.failed,
                r.counts.rolled_back
            );
            let moved = seen
                .get(&id)
                .is_none_or(|old| !old.starts_with(&format!("{:?} {}", r.rollout.status, r.phase)));
            if moved {
                ctx.progress.say(&format!("rollout {id}: {line}"));
            }
            seen.insert(id.clone(), line);
            phases.push(format!("{} {:?}", r.rollout.version, r.rollout.status));
            let things = &combos[&(model.clone(), hardware.clone())];
            match stage {
                Stage::Bad(_) if r.rollout.status == RolloutStatus::Paused => {
                    ctx.mark(&format!("{id} paused"));
                    ctx.progress.say(&format!(
                        "  paused by the advancer: {}",
                        r.rollout.reason.clone().unwrap_or_default()
                    ));
                    operate(
                        &ctx.rollouts,
                        &id,
                        Command::Rollback {
                            reason: format!("{BAD_VERSION} fails its self-test on {hardware}"),
                        },
                        "operator:demo",
                        now_ms(),
                    )
                    .await
                    .with_context(|| format!("shoal rollout rollback {id}"))?;
                    ctx.mark(&format!("{id} rolled back"));
                    ctx.progress.say(&format!(
                        "shoal rollout rollback {id}: devices that took {BAD_VERSION} go back"
                    ));
                    *stage = Stage::Restoring(id, Box::new(r));
                }
                Stage::Bad(_) if complete(&r) => {
                    runs.push(RolloutRun {
                        id,
                        image: "bad",
                        report: r,
                        at_pause: None,
                    });
                    let next = start_rollout(ctx, model, hardware, things, GOOD_VERSION).await?;
                    *stage = Stage::Good(next);
                }
                Stage::Restoring(..)
                    if r.rollback.awaiting == 0
                        && r.rollback.restored + r.rollback.cancelled == r.counts.targeted =>
                {
                    let targeted: Vec<String> = ctx
                        .rollouts
                        .devices(&id)
                        .await?
                        .into_iter()
                        .map(|d| d.thing)
                        .collect();
                    let running = ctx
                        .devices
                        .fleet(&targeted)
                        .await?
                        .into_iter()
                        .map(|d| (d.thing, d.running.map(|v| v.to_string())))
                        .collect();
                    ctx.progress.say(&format!(
                        "rollback of {id} done: the {} devices that took {BAD_VERSION} run their old version again",
                        targeted.len()
                    ));
                    after_rollback.push((r.clone(), running));
                    let Stage::Restoring(_, paused) = std::mem::replace(stage, Stage::Done) else {
                        unreachable!("matched above")
                    };
                    runs.push(RolloutRun {
                        id,
                        image: "bad",
                        report: r,
                        at_pause: Some(*paused),
                    });
                    let next = start_rollout(ctx, model, hardware, things, GOOD_VERSION).await?;
                    *stage = Stage::Good(next);
                }
                Stage::Good(_) if complete(&r) => {
                    runs.push(RolloutRun {
                        id,
                        image: "good",
                        report: r,
                        at_pause: None,
                    });
                    *stage = Stage::Done;
                }
                _ => {}
            }
        }
        ctx.progress
            .phase(&format!("rollouts: {}", phases.join(", ")));
        if stages.values().all(|s| matches!(s, Stage::Done)) {
            return Ok((runs, after_rollback));
        }
        if Instant::now() >= deadline {
            bail!(
                "the rollouts did not finish within {} s: {}",
                limit.as_secs(),
                seen.iter()
                    .map(|(id, line)| format!("{id}: {line}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Runs the scenario against `stack`.
///
/// # Errors
/// The first step that fails, named, with what it saw (the stack is down, a device that never
/// provisioned, a rollout that did not move…).
#[allow(clippy::too_many_lines)]
pub async fn run(stack: Arc<Stack>, plan: &DemoPlan) -> Result<Outcome> {
    std::fs::create_dir_all(&plan.out_dir)
        .with_context(|| format!("creating {}", plan.out_dir.display()))?;
    let started_ms = now_ms();
    let cpu_before = shoal_agent::simulate::cpu_ms();
    let progress = Progress::new(plan.verbose);
    let dynamodb = stack.factory.dynamodb();
    let mut ctx = Ctx {
        stack: &stack,
        plan,
        layout: Layout::new(&plan.tag, plan.devices, plan.rogue),
        progress: progress.clone(),
        rollouts: RolloutTable::new(dynamodb.clone(), names::ROLLOUT_TABLE.parse()?),
        firmware: FirmwareTable::new(dynamodb.clone(), names::FIRMWARE_TABLE.parse()?),
        devices: DeviceTable::new(dynamodb, names::DEVICE_TABLE.parse()?),
        marks: Vec::new(),
    };
    progress.say(&format!(
        "run {}: {} devices, {} rogue serials, against {}",
        plan.tag, plan.devices, plan.rogue, stack.aws_endpoint
    ));
    let (claim, fleet_key) = prepare(&mut ctx).await?;
    let (console, alerts) = alert_listener(&stack, &plan.tag).await?;
    let console = collect_alerts(console, alerts.clone());

    // 2. Provisioning by claim.
    let events_log = plan.out_dir.join(format!("{}-events.jsonl", plan.tag));
    let fleet = Arc::new(
        Fleet::start(fleet_plan(&ctx, claim, fleet_key)?, Some(&events_log))
            .await
            .map_err(anyhow::Error::msg)?,
    );
    ctx.mark("fleet powered on");
    progress.phase("provisioning");
    let ticking = {
        let fleet = fleet.clone();
        ticker(
            stack.clone(),
            ctx.layout.clone(),
            move || fleet.status(),
            progress.clone(),
        )
    };
    let n = plan.devices;
    let rogue = plan.rogue;
    let provision_limit = Duration::from_secs(60 + n as u64 / 2);
    until(
        "every manifest device provisioned and online, every rogue one refused",
        provision_limit,
        Duration::from_millis(500),
        || {
            let s = fleet.status();
            async move {
                if !s.failed.is_empty() {
                    return Err(format!("failed: {:?}", s.failed));
                }
                (s.provisioned == n && s.connected == n && s.refused.len() == rogue)
                    .then_some(())
                    .ok_or_else(|| {
                        let refused_manifest: Vec<String> = s
                            .refused
                            .iter()
                            .filter(|(serial, _)| !serial.contains("-ROGUE-"))
                            .take(3)
                            .map(|(serial, why)| format!("{serial}: {why}"))
                            .collect();
                        format!(
                            "provisioned {} · online {} · refused {}{}",
                            s.provisioned,
                            s.connected,
                            s.refused.len(),
                            if refused_manifest.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    "; manifest devices refused ({}): see .local/lambda/PreProvisioningHookFunction.log; \
                                     a stack started by an older checkout lacks this demo's models: \
                                     make stack-down && make demo",
                                    refused_manifest.join("; ")
                                )
                            }
                        )
                    })
            }
        },
    )
    .await?;
    ctx.mark("fleet provisioned");
    let s = fleet.status();
    progress.say(&format!(
        "provisioning: {n}/{n} devices provisioned by claim and online; {} rogue refused ({})",
        s.refused.len(),
        s.refused.values().next().cloned().unwrap_or_default()
    ));

    // 3. Telemetry, then an outage.
    progress.phase("telemetry");
    tokio::time::sleep(plan.warm_up).await;
    // A device notices the outage at its next telemetry tick: the outage outlasts one period,
    // so that every device goes through it.
    let outage = plan.outage.max(plan.interval + Duration::from_secs(5));
    fleet.outage(outage);
    ctx.mark("network outage");
    progress.say(&format!(
        "outage: every device loses its network for {} s and buffers its readings",
        outage.as_secs()
    ));
    progress.phase("outage");
    tokio::time::sleep(outage).await;
    ctx.mark("network back");
    until(
        "every device back online after the outage",
        Duration::from_secs(60 + n as u64 / 4),
        Duration::from_millis(500),
        || {
            let s = fleet.status();
            async move {
                (s.connected == n)
                    .then_some(())
                    .ok_or_else(|| format!("online {}", s.connected))
            }
        },
    )
    .await?;
    progress.say("outage over: every device reconnected and is sending its backlog");

    // 4. Configuration for one building.
    progress.phase("config set");
    let group = ctx.layout.building(2);
    let desired = building_config(plan.interval);
    let config_report = plan.out_dir.join(format!("{}-config-set.jsonl", plan.tag));
    let request = GroupRequest {
        target: Target::Group(group.clone()),
        shadow: None,
        desired: parse_desired(&desired.to_string())?,
    };
    let iot_fleet = IotFleet(stack.factory.iot());
    let store = Arc::new(shoal_aws::shadow_store::IotShadowStore::new(
        stack.data_plane.clone(),
    ));
    ctx.mark("config set");
    let written_at_s = now_ms() / 1000;
    let written = set_desired(
        &iot_fleet,
        store.clone(),
        &request,
        &config_report,
        Options {
            policies: &"*=lww".parse::<PolicyTable>().map_err(anyhow::Error::msg)?,
            concurrency: 16,
            max_attempts: 5,
            resume: false,
            decided_at_s: written_at_s,
        },
        |_, _, _| {},
    )
    .await
    .context("shoal config set")?;
    progress.say(&format!(
        "config set --group {group} '{desired}': {} things, {} written, {} failed",
        written.targeted, written.written, written.failed
    ));
    let members: Vec<_> = ctx
        .layout
        .devices
        .iter()
        .filter(|d| d.group == group)
        .map(|d| d.serial.parse())
        .collect::<Result<_, _>>()?;
    let converged = until(
        "every device of the building reporting the new configuration",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || async {
            let state = convergence(&*store, &members, None, &request.desired, written_at_s).await;
            state
                .complete()
                .then_some(state.converged.len())
                .ok_or_else(|| format!("{}/{} converged", state.converged.len(), members.len()))
        },
    )
    .await?;
    progress.say(&format!(
        "converged: {converged}/{} devices of {group} report the desired configuration",
        members.len()
    ));

    // 5 and 6. The bad image, the rollback where it fails, the fixed image everywhere.
    let (rollouts, after_rollback) = rollouts(&mut ctx).await?;
    let all: Vec<String> = ctx
        .layout
        .devices
        .iter()
        .map(|d| d.serial.clone())
        .collect();
    let everyone = until(
        "every device reporting the fixed image",
        Duration::from_secs(30),
        Duration::from_secs(1),
        || async {
            let fleet = ctx.devices.fleet(&all).await.map_err(|e| e.to_string())?;
            let on_good = fleet
                .iter()
                .filter(|d| {
                    d.running.as_ref().map(ToString::to_string).as_deref() == Some(GOOD_VERSION)
                })
                .count();
            (on_good == all.len())
                .then_some(on_good)
                .ok_or_else(|| format!("{on_good}/{} run {GOOD_VERSION}", all.len()))
        },
    )
    .await?;
    ctx.mark(&format!("{GOOD_VERSION} everywhere"));
    progress.say(&format!(
        "{GOOD_VERSION} at 100%: {everyone}/{n} devices report running it"
    ));

    // 7. Stop, let the stores settle.
    progress.phase("stopping");
    tokio::time::sleep(Duration::from_secs(2)).await;
    ticking.abort();
    let _ = ticking.await;
    let fleet = Arc::try_unwrap(fleet)
        .map_err(|_| anyhow::anyhow!("the fleet is still shared"))?
        .stop()
        .await;
    let simulator_cpu_ms = shoal_agent::simulate::cpu_ms()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    ctx.mark("fleet stopped");
    progress.say(&format!(
        "fleet stopped: {} readings acknowledged by IoT Core ({} unacknowledged at stop, {} never sent)",
        fleet.readings_acknowledged, fleet.readings_unacknowledged, fleet.readings_buffered
    ));
    let sent = fleet.readings_acknowledged;
    let layout = ctx.layout.clone();
    let stack_ref = &*stack;
    let settled = until(
        "the telemetry pipeline draining (stored + quarantined = acknowledged)",
        Duration::from_secs(90),
        Duration::from_secs(3),
        || async {
            let state = stack_ref
                .timestream_state()
                .await
                .map_err(|e| e.to_string())?;
            let stored = crate::stores::timestream_readings(&state, &layout).len() as u64;
            let quarantined = crate::stores::quarantined(stack_ref, &layout, started_ms)
                .await
                .map_err(|e| e.to_string())?
                .readings;
            (stored + quarantined >= sent)
                .then_some(stored + quarantined)
                .ok_or_else(|| format!("stored {stored} + quarantined {quarantined} < {sent}"))
        },
    )
    .await;
    if let Err(e) = settled {
        progress.say(&format!("warning: {e:#}"));
    }
    console.abort();
    // Only this run's alerts (another run's devices on the same stack raise their own).
    let alerts: Vec<_> = alerts
        .lock()
        .map(|a| a.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(topic, body)| topic.contains(&plan.tag) || body.to_string().contains(&plan.tag))
        .collect();
    Ok(Outcome {
        layout: ctx.layout,
        started_ms,
        ended_ms: now_ms(),
        configured_group: group,
        desired,
        config_report,
        rollouts,
        after_rollback,
        alerts,
        fleet,
        marks: ctx.marks,
        events_log,
        simulator_cpu_ms,
    })
}

/// The devices of the run that are in `group`.
pub fn members<'a>(layout: &'a Layout, group: &str) -> Vec<&'a DemoDevice> {
    layout.devices.iter().filter(|d| d.group == group).collect()
}

/// Rollout ids of the outcome by image (`bad`, `good`).
pub fn ids_of(outcome: &Outcome, image: &str) -> BTreeSet<String> {
    outcome
        .rollouts
        .iter()
        .filter(|r| r.image == image)
        .map(|r| r.id.clone())
        .collect()
}
