//! The fleet simulator: many virtual devices in one process, each a real MQTT connection with
//! its own certificate, provisioned by claim and then run by the same [`Device`] as the agent —
//! with in-memory slots, synthetic readings and seeded faults ([`Faults`]), so a run is
//! reproducible from its seed.
//!
//! Every device event goes to a JSON-lines log (when given) and into [`FleetStatus`], which the
//! summary is made of; what the cloud stored is read from the cloud, never from these counters.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use shoal_firmware::buffer::Limits;
use shoal_wire::version::FirmwareVersion;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::device::{
    Board, Device, DeviceEvent, DeviceSpec, FaultPoint, PackedModel, Settings, now_ms,
};
use crate::download::Downloader;
use crate::link::Endpoint;
use crate::provision::{ClaimRequest, DeviceIdentity, KeyMode, ProvisionError, provision};
use crate::slots::AbSlots;

/// An image that fails its self-test on some hardware: `percent` of the devices of `hardware`
/// running `version` on trial fail.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfTestFailure {
    /// The image's version.
    pub version: FirmwareVersion,
    /// The hardware revision it fails on.
    pub hardware: String,
    /// The share of those devices that fail, %.
    pub percent: f64,
}

impl std::str::FromStr for SelfTestFailure {
    type Err = String;

    /// `VERSION@HARDWARE[:PERCENT]` (default 100).
    fn from_str(s: &str) -> Result<Self, String> {
        let (version, rest) = s
            .split_once('@')
            .ok_or_else(|| format!("{s:?} is not VERSION@HARDWARE[:PERCENT]"))?;
        let (hardware, percent) = rest.split_once(':').unwrap_or((rest, "100"));
        Ok(Self {
            version: version.parse().map_err(|e| format!("{version:?}: {e}"))?,
            hardware: hardware.to_owned(),
            percent: percent
                .parse()
                .ok()
                .filter(|p: &f64| (0.0..=100.0).contains(p))
                .ok_or_else(|| format!("{percent:?} is not a percentage (0 to 100)"))?,
        })
    }
}

/// Faults, each a percentage (0–100), drawn from each device's seeded generator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Chance per telemetry tick that the connection drops (reconnect with backoff).
    pub network_drop: f64,
    /// Chance that a telemetry batch is published twice.
    pub duplicate: f64,
    /// Share of devices whose clock is off by `clock_skew_ms`.
    pub clock_skew: f64,
    /// How far a skewed clock is off, ms (either way).
    pub clock_skew_ms: i64,
    /// Chance per downloaded chunk that it arrives corrupted.
    pub corrupt_download: f64,
    /// Chance per chunk written, and per trial boot, that power is lost.
    pub power_loss: f64,
    /// Chance that a device goes offline for a while when an OTA request arrives.
    pub offline_on_request: f64,
    /// Images that fail their self-test on some hardware.
    pub self_test_failures: Vec<SelfTestFailure>,
}

/// One virtual device as the factory built it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualDevice {
    /// Its serial.
    pub serial: String,
    /// Its hardware revision.
    pub hardware: String,
    /// Its device model (the manifest's `model`; empty when the manifest has none).
    pub model: String,
    /// Its factory secret, when its manifest row has one.
    pub factory_secret: Option<String>,
    /// Its clock's error, ms, when chosen for this device; `None`: drawn from
    /// [`Faults::clock_skew`].
    pub clock_skew_ms: Option<i64>,
}

/// Reads the devices of a factory manifest CSV (`serial`, `model`, and `hardware=` in
/// `attributes`).
///
/// # Errors
/// Not CSV, or no `serial` column.
pub fn manifest_devices(csv_text: &str) -> Result<Vec<VirtualDevice>, String> {
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    let serial = column("serial").ok_or("the manifest has no serial column")?;
    let attributes = column("attributes");
    let model = column("model");
    let mut devices = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| e.to_string())?;
        let hardware = attributes
            .and_then(|i| record.get(i))
            .and_then(|a| {
                a.split(';')
                    .find_map(|kv| kv.trim().strip_prefix("hardware="))
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let text = record.get(serial).unwrap_or_default().trim().to_owned();
        if text.is_empty() {
            let line = record.position().map_or(0, csv::Position::line);
            return Err(format!("line {line}: the serial is empty"));
        }
        devices.push(VirtualDevice {
            serial: text,
            hardware,
            model: model
                .and_then(|i| record.get(i))
                .unwrap_or_default()
                .trim()
                .to_owned(),
            factory_secret: None,
            clock_skew_ms: None,
        });
    }
    if devices.is_empty() {
        return Err("the manifest has no devices".into());
    }
    Ok(devices)
}

/// A simulation.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    /// The IoT endpoint.
    pub endpoint: Endpoint,
    /// The claim certificate and key (PEM).
    pub claim: (Vec<u8>, Vec<u8>),
    /// The provisioning template.
    pub template: String,
    /// The telemetry application.
    pub app: String,
    /// The devices.
    pub devices: Vec<VirtualDevice>,
    /// The version every device runs out of the factory.
    pub factory_version: FirmwareVersion,
    /// The fleet's signing public key (DER).
    pub fleet_key_der: Vec<u8>,
    /// The telemetry period until a shadow changes it.
    pub interval: Duration,
    /// The faults.
    pub faults: Faults,
    /// The seed of every random choice.
    pub seed: u64,
    /// Where device keys come from.
    pub key: KeyMode,
    /// How many devices provision at once.
    pub provisioning_concurrency: usize,
    /// How many times a refused device tries again (30 s apart, then 60 s, …, with jitter):
    /// the device cannot tell a refusal from a pre-provisioning hook that failed or was slow
    /// (AWS answers both with the same 403), so a real device tries again later too.
    pub provisioning_attempts: u32,
    /// Classic-shadow paths under the stack's `vclock` policy.
    pub vclock_paths: Vec<String>,
    /// Devices starting (provisioning or connecting) per second: a fleet powered on at once
    /// still comes up over time, and a broker slower than AWS (the local stack) is not handed
    /// every CONNECT at the same moment.
    pub start_rate: f64,
    /// Models whose devices send packed binary telemetry: model → the record's fields, as the
    /// cloud's `SHOAL_PACKED_SCHEMAS` lists them. Other models send JSON.
    pub packed: BTreeMap<String, Vec<String>>,
    /// Identities kept across runs (JSON lines, one [`DeviceIdentity`] each): a device found
    /// there connects at once; a newly provisioned one is appended.
    pub identities: Option<PathBuf>,
}

/// This process's CPU time so far (user + system), ms: `/proc/self/stat` fields 14 and 15, in
/// USER_HZ (100 per second on Linux); `None` where there is no such file.
pub fn cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10)
}

/// The identities of a file [`FleetPlan::identities`] names, by thing name (none when it does
/// not exist; unreadable lines are skipped).
pub fn read_identities(path: &Path) -> HashMap<String, DeviceIdentity> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<DeviceIdentity>(line).ok())
        .map(|identity| (identity.thing_name.clone(), identity))
        .collect()
}

/// What the fleet did so far, from its devices' events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetStatus {
    /// Devices provisioned.
    pub provisioned: usize,
    /// Devices refused (serial → reason).
    pub refused: BTreeMap<String, String>,
    /// Devices that could not provision for another reason (serial → reason).
    pub failed: BTreeMap<String, String>,
    /// Devices connected now.
    pub connected: usize,
    /// Connections made, and lost.
    pub connections: u64,
    /// Connections lost.
    pub disconnections: u64,
    /// Readings published (duplicates counted once; a batch sent again after a lost
    /// connection counts again).
    pub readings_published: u64,
    /// Readings whose publish was acknowledged (PUBACK): each reading once, however often it
    /// was sent. What the cloud must account for.
    pub readings_acknowledged: u64,
    /// At stop: readings published and not yet acknowledged (the cloud may or may not have them).
    pub readings_unacknowledged: u64,
    /// At stop: readings still in the devices' offline buffers, never acknowledged.
    pub readings_buffered: u64,
    /// Configuration changes applied.
    pub configured: u64,
    /// Reboots.
    pub reboots: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// OTA reports made, by `status` (a device reports several per update).
    pub ota: BTreeMap<String, u64>,
    /// What each device runs (thing → version).
    pub running: BTreeMap<String, String>,
    /// Devices per running version (counted from `running` when the status is read).
    pub versions: BTreeMap<String, usize>,
}

impl FleetStatus {
    fn record(&mut self, event: &DeviceEvent, online: &mut HashMap<String, bool>) {
        let text = |key: &str| {
            event
                .detail
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        match event.kind {
            "connected" => {
                self.connections += 1;
                self.set_online(online, &event.thing, true);
                if let Some(running) = text("running") {
                    self.running.insert(event.thing.clone(), running);
                }
            }
            "disconnected" => {
                self.disconnections += 1;
                self.set_online(online, &event.thing, false);
            }
            "published" => {
                self.readings_published += event.detail["readings"].as_u64().unwrap_or(0);
            }
            "acknowledged" => {
                self.readings_acknowledged += event.detail["readings"].as_u64().unwrap_or(0);
            }
            "stopped" => {
                self.readings_unacknowledged +=
                    event.detail["unacknowledged"].as_u64().unwrap_or(0);
                self.readings_buffered += event.detail["buffered"].as_u64().unwrap_or(0);
            }
            "configured" => self.configured += 1,
            "rebooted" => {
                self.reboots += 1;
                self.set_online(online, &event.thing, false);
                if let Some(running) = text("running") {
                    self.running.insert(event.thing.clone(), running);
                }
            }
            "fault" => {
                let fault = text("fault").unwrap_or_default();
                let cuts = !matches!(fault.as_str(), "corrupt_chunk" | "duplicate_publish");
                *self.faults.entry(fault).or_default() += 1;
                if cuts && self.set_online(online, &event.thing, false) {
                    self.disconnections += 1;
                }
            }
            "ota" => {
                *self
                    .ota
                    .entry(text("status").unwrap_or_default())
                    .or_default() += 1;
                if let Some(running) = text("running_version") {
                    self.running.insert(event.thing.clone(), running);
                }
            }
            _ => {}
        }
    }

    /// Marks `thing` online or not, keeping `connected` in step; whether it was online.
    fn set_online(&mut self, online: &mut HashMap<String, bool>, thing: &str, up: bool) -> bool {
        let was = online.insert(thing.to_owned(), up) == Some(true);
        match (was, up) {
            (false, true) => self.connected += 1,
            (true, false) => self.connected -= 1,
            _ => {}
        }
        was
    }
}

/// A virtual device's board: synthetic readings and seeded faults.
struct SimBoard {
    outage_until_ms: Arc<AtomicU64>,
    hardware: String,
    faults: Arc<Faults>,
    random: StdRng,
    phase: f64,
    skew_ms: i64,
    self_test_roll: f64,
}

impl Board for SimBoard {
    fn sample(&mut self, now_ms: u64) -> Vec<(String, f64)> {
        let t = now_ms as f64 / 1_000.0;
        let noise = |r: &mut StdRng| (r.random::<f64>() - 0.5) * 0.4;
        let mut temperature = 21.0
            + 3.0 * (t / 600.0 * std::f64::consts::TAU + self.phase).sin()
            + noise(&mut self.random);
        if self.random.random::<f64>() < 0.002 {
            temperature += 15.0; // an anomaly
        }
        let humidity = 45.0
            + 8.0 * (t / 900.0 * std::f64::consts::TAU + self.phase).cos()
            + noise(&mut self.random);
        vec![
            (
                "temperature".to_owned(),
                (temperature * 100.0).round() / 100.0,
            ),
            ("humidity".to_owned(), (humidity * 100.0).round() / 100.0),
        ]
    }

    async fn self_test(&mut self, version: &FirmwareVersion) -> Result<(), String> {
        let failing = self.faults.self_test_failures.iter().find(|f| {
            f.version == *version
                && f.hardware == self.hardware
                && self.self_test_roll * 100.0 < f.percent
        });
        match failing {
            Some(_) => Err(format!(
                "{version} does not start its sensor bus on hardware {}",
                self.hardware
            )),
            None => Ok(()),
        }
    }

    fn fault(&mut self, point: FaultPoint) -> bool {
        let percent = match point {
            FaultPoint::NetworkDrop => self.faults.network_drop,
            FaultPoint::DuplicatePublish => self.faults.duplicate,
            FaultPoint::CorruptChunk => self.faults.corrupt_download,
            FaultPoint::PowerLossDownloading | FaultPoint::PowerLossOnTrial => {
                self.faults.power_loss
            }
            FaultPoint::OfflineOnRequest => self.faults.offline_on_request,
        };
        percent > 0.0 && self.random.random::<f64>() * 100.0 < percent
    }

    fn clock_skew_ms(&self) -> i64 {
        self.skew_ms
    }

    fn outage_until_ms(&self) -> Option<u64> {
        match self.outage_until_ms.load(Ordering::Relaxed) {
            0 => None,
            until => Some(until),
        }
    }
}

/// A running simulation.
pub struct Fleet {
    stop: watch::Sender<bool>,
    outage_until_ms: Arc<AtomicU64>,
    tasks: JoinSet<()>,
    status: Arc<Mutex<FleetStatus>>,
    writer: tokio::task::JoinHandle<()>,
}

/// The log every event goes to (JSON lines), and the status they make.
async fn collect(
    mut events: mpsc::UnboundedReceiver<DeviceEvent>,
    status: Arc<Mutex<FleetStatus>>,
    mut log: Option<tokio::fs::File>,
) {
    let mut online = HashMap::new();
    while let Some(event) = events.recv().await {
        if let Ok(mut status) = status.lock() {
            status.record(&event, &mut online);
        }
        if let Some(file) = &mut log {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            if file.write_all(&line).await.is_err() {
                log = None;
            }
        }
    }
    if let Some(file) = &mut log {
        let _ = file.flush().await;
    }
}

impl Fleet {
    /// Starts every device of `plan` (provisioning first, `provisioning_concurrency` at once),
    /// logging events to `log` when given.
    ///
    /// # Errors
    /// The log cannot be created, or the download client cannot be made.
    pub async fn start(plan: FleetPlan, log: Option<&Path>) -> Result<Self, String> {
        let log = match log {
            Some(path) => Some(
                tokio::fs::File::create(path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            ),
            None => None,
        };
        let downloader = Downloader::new()?;
        let status = Arc::new(Mutex::new(FleetStatus::default()));
        let (events, received) = mpsc::unbounded_channel();
        let writer = tokio::spawn(collect(received, status.clone(), log));
        let (stop, stopped) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(plan.provisioning_concurrency.max(1)));
        let faults = Arc::new(plan.faults.clone());
        let outage_until_ms = Arc::new(AtomicU64::new(0));
        let known = Arc::new(
            plan.identities
                .as_deref()
                .map(read_identities)
                .unwrap_or_default(),
        );
        let kept = match &plan.identities {
            Some(path) => Some(Arc::new(Mutex::new(
                {
                    let mut options = std::fs::OpenOptions::new();
                    options.create(true).append(true);
                    #[cfg(unix)]
                    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                    options
                }
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?,
            ))),
            None => None,
        };
        let mut tasks = JoinSet::new();
        let mut seeds = StdRng::seed_from_u64(plan.seed);
        let started = tokio::time::Instant::now();
        for (index, device) in plan.devices.clone().into_iter().enumerate() {
            let seed: u64 = seeds.random();
            let start_at =
                started + Duration::from_secs_f64(index as f64 / plan.start_rate.max(0.001));
            let outage = outage_until_ms.clone();
            let (known, kept) = (known.clone(), kept.clone());
            let (plan, gate, faults, events, status, downloader, stopped) = (
                plan.clone(),
                gate.clone(),
                faults.clone(),
                events.clone(),
                status.clone(),
                downloader.clone(),
                stopped.clone(),
            );
            tasks.spawn(async move {
                let mut stopping = stopped.clone();
                tokio::select! {
                    () = tokio::time::sleep_until(start_at) => {}
                    _ = stopping.changed() => return,
                }
                let mut random = StdRng::seed_from_u64(seed);
                let request = ClaimRequest {
                    claim: plan.claim.clone(),
                    template: plan.template.clone(),
                    serial: device.serial.clone(),
                    factory_secret: device.factory_secret.clone(),
                    key: plan.key,
                    deadline: Duration::from_secs(300),
                };
                let known = known.get(&device.serial).cloned();
                let mut attempt = 0;
                let identity = loop {
                    if let Some(identity) = known.clone() {
                        break Ok(identity);
                    }
                    let outcome = {
                        let Ok(_permit) = gate.acquire().await else {
                            return;
                        };
                        provision(&plan.endpoint, &request, random.random()).await
                    };
                    attempt += 1;
                    let _ = events.send(DeviceEvent {
                        ts_ms: now_ms(),
                        thing: device.serial.clone(),
                        kind: if outcome.is_ok() {
                            "provisioned"
                        } else {
                            "provisioning_failed"
                        },
                        detail: serde_json::json!({
                            "attempt": attempt,
                            "error": outcome.as_ref().err().map(ToString::to_string),
                        }),
                    });
                    if let (Err(ProvisionError::Refused(why)), Ok(mut s)) =
                        (&outcome, status.lock())
                    {
                        s.refused.insert(device.serial.clone(), why.clone());
                    }
                    match outcome {
                        Err(ProvisionError::Refused(_)) if attempt < plan.provisioning_attempts => {
                            let pause =
                                30_000 * u64::from(attempt) + random.random_range(0..10_000);
                            let mut stopping = stopped.clone();
                            tokio::select! {
                                () = tokio::time::sleep(Duration::from_millis(pause)) => {}
                                _ = stopping.changed() => return,
                            }
                        }
                        Ok(identity) => {
                            if let Some(kept) = &kept {
                                let mut line = serde_json::to_string(&identity).unwrap_or_default();
                                line.push('\n');
                                if let Ok(mut file) = kept.lock() {
                                    use std::io::Write;
                                    let _ = file.write_all(line.as_bytes());
                                }
                            }
                            break Ok(identity);
                        }
                        other => break other,
                    }
                };
                let identity = match identity {
                    Ok(identity) => {
                        if let Ok(mut s) = status.lock() {
                            s.provisioned += 1;
                            s.refused.remove(&device.serial);
                        }
                        identity
                    }
                    // A refusal is in `refused` already, from its last attempt.
                    Err(ProvisionError::Refused(_)) => return,
                    Err(other) => {
                        if let Ok(mut s) = status.lock() {
                            s.failed.insert(device.serial.clone(), other.to_string());
                        }
                        return;
                    }
                };
                let skewed = random.random::<f64>() * 100.0 < faults.clock_skew;
                let board = SimBoard {
                    outage_until_ms: outage,
                    hardware: device.hardware.clone(),
                    faults: faults.clone(),
                    phase: random.random::<f64>() * std::f64::consts::TAU,
                    skew_ms: match (skewed, random.random::<bool>()) {
                        _ if device.clock_skew_ms.is_some() => {
                            device.clock_skew_ms.unwrap_or_default()
                        }
                        (true, true) => faults.clock_skew_ms,
                        (true, false) => -faults.clock_skew_ms,
                        (false, _) => 0,
                    },
                    self_test_roll: random.random(),
                    random: StdRng::seed_from_u64(random.random()),
                };
                let spec = DeviceSpec {
                    identity,
                    app: plan.app.clone(),
                    endpoint: plan.endpoint.clone(),
                    fleet_key_der: plan.fleet_key_der.clone(),
                    min_version: None,
                    interval: plan.interval,
                    buffer: Limits {
                        max_entries: 2_000,
                        max_bytes: 512 * 1024,
                        ttl_ms: Some(24 * 3_600_000),
                    },
                    vclock_paths: plan.vclock_paths.clone(),
                    packed: plan.packed.get(&device.model).map(|fields| PackedModel {
                        model: device.model.clone(),
                        fields: fields.clone(),
                    }),
                };
                let device = Device::new(
                    spec,
                    board,
                    AbSlots::in_memory(&plan.factory_version),
                    Settings::default(),
                    downloader,
                    events,
                    random.random(),
                );
                device.run(stopped).await;
            });
        }
        Ok(Self {
            stop,
            outage_until_ms,
            tasks,
            status,
            writer,
        })
    }

    /// Cuts every device's network for `duration` from now (a broker or uplink outage): each
    /// drops its connection at its next telemetry tick, buffers its readings, and reconnects
    /// after the outage with a jittered delay.
    pub fn outage(&self, duration: Duration) {
        let until =
            now_ms().saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        self.outage_until_ms.store(until, Ordering::Relaxed);
    }

    /// What the fleet did so far.
    pub fn status(&self) -> FleetStatus {
        let mut status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        status.versions = status.running.values().fold(BTreeMap::new(), |mut m, v| {
            *m.entry(v.clone()).or_default() += 1;
            m
        });
        status
    }

    /// Stops every device (clean disconnects) and returns the final status.
    pub async fn stop(mut self) -> FleetStatus {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        // Every sender is gone with the devices: the writer ends after the last event.
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.writer).await;
        self.status()
    }
}
