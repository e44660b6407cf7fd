//! One device at run time: `shoal-firmware`'s state machines over a [`Link`], written once for
//! the Linux agent and every virtual device of the simulator.
//!
//! A boot connects as the thing (client id = thing name), subscribes to its classic shadow and
//! its `ota` shadow (8 filters, one SUBSCRIBE), then on every (re)connection: `get` of both
//! shadows (a full resync), the running firmware reported in the classic shadow
//! (`firmware.version`, what the rollout advancer reads), and the offline buffer flushed. A
//! desired configuration change is applied through [`Settings`] and what runs reported; an OTA
//! request goes through [`Ota`] (download → verify → trial boot → self-test → commit or fall
//! back); readings are sampled on a timer into the [`OfflineBuffer`] and published from it in
//! order (QoS 1, a batch removed only once every PUBACK came back; re-sent after a cut).
//!
//! [`Board`] is what differs between a gateway and a simulated device: its readings, its
//! self-test, and (simulator only) the faults it injects.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Map, Value, json};
use shoal_firmware::buffer::{Entry, Limits, OfflineBuffer};
use shoal_firmware::ota::{Boot, Ota, OtaNews, OtaShadow, Slots, Step};
use shoal_firmware::shadow::{Apply, Event as ShadowEvent, Publish, ShadowSync};
use shoal_wire::ota::{OtaReport, OtaStatus};
use shoal_wire::telemetry::{Measure, Message, Reading};
use shoal_wire::topics::{ShadowOperation, ShadowTopic, TelemetryTopic};
use shoal_wire::version::FirmwareVersion;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::download::{Chunk, Downloader};
use crate::link::{Endpoint, Link, LinkEvent};
use crate::provision::DeviceIdentity;
use crate::slots::AbSlots;

/// The most readings one telemetry message carries when the buffer is flushed.
pub const BATCH_READINGS: usize = 50;

/// Downloads of one request that may fail (1 s, 2 s, 4 s … apart) before it is reported
/// `failed`; the request stands, and the next `get` (a reconnect, a refreshed URL) tries again.
pub const MAX_DOWNLOAD_ATTEMPTS: u32 = 6;

/// Where a fault may strike (the simulator's [`Board::fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Every telemetry tick: the network drops now (the link is cut, reconnect with backoff).
    NetworkDrop,
    /// A telemetry batch is published twice.
    DuplicatePublish,
    /// A downloaded chunk arrives corrupted.
    CorruptChunk,
    /// Power is lost while the image is written (after a chunk).
    PowerLossDownloading,
    /// Power is lost during the trial boot, before the self-test.
    PowerLossOnTrial,
    /// The device goes offline for a while when an OTA request arrives.
    OfflineOnRequest,
}

/// What differs between a gateway and a simulated device.
pub trait Board: Send + 'static {
    /// Readings at `now_ms` (ms since the Unix epoch): measure name → value.
    fn sample(&mut self, now_ms: u64) -> Vec<(String, f64)>;
    /// The self-test of `version` on its trial boot (connected to the cloud already: that
    /// part passed). `Err` says why it failed.
    fn self_test(
        &mut self,
        version: &FirmwareVersion,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Whether a fault strikes at `point` (never, on a real board).
    fn fault(&mut self, _point: FaultPoint) -> bool {
        false
    }
    /// How far this device's clock is off, ms (a skewed clock stamps readings wrongly).
    fn clock_skew_ms(&self) -> i64 {
        0
    }
    /// Called when the device's configuration changed (the agent persists it).
    fn configured(&mut self, _settings: &Map<String, Value>) {}
    /// Until when the network is down for this device (a fleet-wide outage the simulator
    /// injects), ms since the Unix epoch; `None` when it is up.
    fn outage_until_ms(&self) -> Option<u64> {
        None
    }
}

/// A device's configuration, changed through its classic shadow's desired state: `interval_s`
/// (the telemetry period, clamped to 1–3,600 s) and any other key (kept as asked); `firmware`
/// is read-only (the device reports it).
#[derive(Debug, Clone, Default)]
pub struct Settings(pub Map<String, Value>);

impl Apply for Settings {
    fn apply(&mut self, key: &str, desired: &Value) -> Result<Value, String> {
        let running = match key {
            "firmware" => return Err("firmware is reported by the device, not configured".into()),
            "interval_s" => {
                let seconds = desired
                    .as_f64()
                    .filter(|s| s.is_finite())
                    .ok_or("interval_s must be a number of seconds")?;
                json!(seconds.clamp(1.0, 3_600.0).round() as u64)
            }
            _ => match (self.0.get(key), desired) {
                // A delta carries only the leaves that changed: merge them into what runs
                // (null deletes a leaf), as the shadow merges a reported update.
                (Some(Value::Object(now)), Value::Object(_)) => {
                    let mut merged = Value::Object(now.clone());
                    merge(&mut merged, desired);
                    merged
                }
                _ => desired.clone(),
            },
        };
        self.0.insert(key.to_owned(), running.clone());
        Ok(running)
    }

    fn running(&self) -> Map<String, Value> {
        self.0.clone()
    }
}

/// Merges `patch` into `target` the way a shadow update does: objects key by key, `null`
/// deletes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

impl Settings {
    /// The telemetry period.
    pub fn interval(&self, default: Duration) -> Duration {
        self.0
            .get("interval_s")
            .and_then(Value::as_u64)
            .map_or(default, Duration::from_secs)
    }
}

/// What a device tells the world (JSON lines of the simulator, log lines of the agent).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceEvent {
    /// When, ms since the Unix epoch.
    pub ts_ms: u64,
    /// The device.
    pub thing: String,
    /// What happened: `connected`, `disconnected`, `configured`, `ota`, `published`,
    /// `buffer_dropped`, `rebooted`, `fault`.
    pub kind: &'static str,
    /// The details.
    pub detail: Value,
}

/// A device's settings at run time.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// Its identity (thing name, certificate, key).
    pub identity: DeviceIdentity,
    /// The telemetry application (`dt/<app>/…`).
    pub app: String,
    /// Where to connect.
    pub endpoint: Endpoint,
    /// The fleet's firmware signing public key (DER SubjectPublicKeyInfo).
    pub fleet_key_der: Vec<u8>,
    /// The anti-rollback floor.
    pub min_version: Option<FirmwareVersion>,
    /// The telemetry period until the shadow says otherwise.
    pub interval: Duration,
    /// The offline buffer's bounds.
    pub buffer: Limits,
    /// Classic-shadow paths under the stack's `vclock` policy (their reports carry clocks).
    pub vclock_paths: Vec<String>,
    /// Send readings as packed binary records instead of JSON; `None`: JSON.
    pub packed: Option<PackedModel>,
}

/// A device model's packed binary telemetry (`shoal_wire::packed`): readings go to
/// `dt/<app>/<thing>/telemetry/<model>` as records of `fields`, in this order — the cloud's
/// `SHOAL_PACKED_SCHEMAS` entry `model=field,field` must list the same fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedModel {
    /// The device model, the topic's fifth level.
    pub model: String,
    /// The record's fields, in order; a field the board does not sample is sent as NaN.
    pub fields: Vec<String>,
}

/// The connection is gone (cut, dropped or refused): not ready, and the batch awaiting PUBACKs
/// goes back to the buffer to be sent again.
fn lost(ready: &mut bool, in_flight: &mut usize, buffer: &mut OfflineBuffer) {
    *ready = false;
    *in_flight = 0;
    buffer.nack();
}

/// Why a boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Reboot,
    Stop,
}

/// A device: its spec, board, slots, configuration and buffer (what survives a reboot).
pub struct Device<B: Board> {
    spec: DeviceSpec,
    board: B,
    slots: AbSlots,
    settings: Settings,
    buffer: OfflineBuffer,
    downloader: Downloader,
    events: mpsc::UnboundedSender<DeviceEvent>,
    seed: u64,
    random: StdRng,
    boots: u64,
}

/// Now, ms since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The classic shadow's report of what runs.
fn firmware_report(thing: &str, running: &FirmwareVersion) -> Publish {
    let topic = ShadowTopic {
        thing,
        name: None,
        operation: ShadowOperation::Update,
        response: None,
    };
    Publish {
        topic: topic.to_string(),
        payload: json!({"state": {"reported": {"firmware": {"version": running.to_string()}}}})
            .to_string()
            .into_bytes(),
    }
}

/// The payload of a telemetry message carrying `entries` (each one reading's JSON object):
/// the reading itself, or `{"readings": [...]}`.
fn batch_payload(entries: &[Entry]) -> Vec<u8> {
    if let [one] = entries {
        return one.payload.clone();
    }
    let mut out = b"{\"readings\":[".to_vec();
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&entry.payload);
    }
    out.extend_from_slice(b"]}");
    out
}

impl<B: Board> Device<B> {
    /// A device; `settings` is its configuration as last persisted.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spec: DeviceSpec,
        board: B,
        slots: AbSlots,
        settings: Settings,
        downloader: Downloader,
        events: mpsc::UnboundedSender<DeviceEvent>,
        seed: u64,
    ) -> Self {
        let buffer = OfflineBuffer::new(spec.buffer);
        Self {
            spec,
            board,
            slots,
            settings,
            buffer,
            downloader,
            events,
            seed,
            random: StdRng::seed_from_u64(seed),
            boots: 0,
        }
    }

    fn thing(&self) -> &str {
        &self.spec.identity.thing_name
    }

    fn emit(&self, kind: &'static str, detail: Value) {
        let _ = self.events.send(DeviceEvent {
            ts_ms: now_ms(),
            thing: self.thing().to_owned(),
            kind,
            detail,
        });
    }

    /// The version the committed slot runs.
    pub fn running(&self) -> FirmwareVersion {
        self.slots.running()
    }

    /// Runs boot after boot until `stop` turns true (then disconnects cleanly).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Self {
        loop {
            if *stop.borrow() {
                return self;
            }
            match self.boot(&mut stop).await {
                End::Stop => return self,
                End::Reboot => {
                    self.slots.reboot();
                    self.boots += 1;
                    self.emit(
                        "rebooted",
                        json!({"running": self.slots.running().to_string(),
                               "boot": format!("{:?}", self.slots.boot())}),
                    );
                }
            }
        }
    }

    /// `dt/<app>/<thing>/telemetry`, the JSON topic readings go to.
    fn telemetry_topic(&self) -> TelemetryTopic<'_> {
        TelemetryTopic {
            app: &self.spec.app,
            thing: &self.spec.identity.thing_name,
            model: self.spec.packed.as_ref().map(|p| p.model.as_str()),
        }
    }

    fn reading(&mut self) -> Option<Entry> {
        let taken = now_ms();
        let stamped = taken.saturating_add_signed(self.board.clock_skew_ms());
        let sampled = self.board.sample(taken);
        if sampled.is_empty() {
            return None;
        }
        if let Some(packed) = &self.spec.packed {
            #[allow(clippy::cast_possible_truncation)] // f32 is the packed format's precision
            let values: Vec<f32> = packed
                .fields
                .iter()
                .map(|field| {
                    sampled
                        .iter()
                        .find(|(name, _)| name == field)
                        .map_or(f32::NAN, |(_, value)| *value as f32)
                })
                .collect();
            let mut payload = Vec::new();
            shoal_wire::packed::encode_record(stamped, &values, &mut payload);
            return Some(Entry {
                taken_ms: taken,
                payload,
            });
        }
        let measures: Vec<(String, Measure)> = sampled
            .into_iter()
            .map(|(name, value)| (name, Measure::Number(value)))
            .collect();
        let message = Message::Reading(Reading {
            ts: Some(stamped),
            measures,
        });
        match message.to_json(&self.telemetry_topic()) {
            Ok(json) => Some(Entry {
                taken_ms: taken,
                payload: json.into_bytes(),
            }),
            Err(e) => {
                self.emit("invalid_reading", json!({"error": e.to_string()}));
                None
            }
        }
    }

    /// Publishes the next batch of the buffer; the number of PUBACKs to wait for.
    async fn flush(&mut self, link: &Link) -> usize {
        let batch = self.buffer.batch(BATCH_READINGS, now_ms());
        if batch.is_empty() {
            return 0;
        }
        let topic = self.telemetry_topic().to_string();
        let payload = if self.spec.packed.is_some() {
            // Packed records go back to back (`shoal_wire::packed`).
            batch
                .iter()
                .flat_map(|e| e.payload.iter().copied())
                .collect()
        } else {
            batch_payload(&batch)
        };
        let mut sent = 0;
        let copies = if self.board.fault(FaultPoint::DuplicatePublish) {
            self.emit("fault", json!({"fault": "duplicate_publish"}));
            2
        } else {
            1
        };
        for _ in 0..copies {
            if link.publish(&topic, payload.clone(), true).await.is_ok() {
                sent += 1;
            }
        }
        if sent == 0 {
            self.buffer.nack();
            return 0;
        }
        self.emit(
            "published",
            json!({"readings": batch.len(), "copies": copies}),
        );
        sent
    }

    async fn report_ota(&mut self, link: &Link, ota_shadow: &mut OtaShadow, report: &OtaReport) {
        let publish = ota_shadow.report(report);
        let _ = link.publish(&publish.topic, publish.payload, false).await;
        if matches!(report.status, OtaStatus::Success | OtaStatus::Failed) {
            let running = firmware_report(self.thing(), &self.slots.running());
            let _ = link.publish(&running.topic, running.payload, false).await;
        }
    }

    #[allow(clippy::too_many_lines)]
    async fn boot(&mut self, stop: &mut watch::Receiver<bool>) -> End {
        let thing = self.thing().to_owned();
        let mut ota = Ota::new(
            self.spec.fleet_key_der.clone(),
            self.spec.min_version.clone(),
        );
        let mut pending: VecDeque<Step> = ota.booted(&mut self.slots).into();
        let mut shadow =
            ShadowSync::new(&thing, None).with_vclock_paths(self.spec.vclock_paths.clone());
        let mut ota_shadow = OtaShadow::new(&thing);
        let mut filters = shadow.subscriptions();
        filters.extend(ota_shadow.subscriptions());
        let identity = self.spec.identity.clone();
        let endpoint = self.spec.endpoint.clone();
        let connect = |seed: u64| {
            Link::connect(
                &endpoint,
                &identity.thing_name,
                identity.certificate_pem.as_bytes(),
                identity.private_key_pem.as_bytes(),
                seed,
            )
        };
        let mut link = connect(self.seed ^ self.boots);
        let mut ready = false;
        let mut self_test_due = false;
        let mut waiting_reports: Vec<OtaReport> = Vec::new();
        let mut in_flight = 0usize;
        // Each download gets its own channels, their senders held by its task alone: what an
        // aborted download still sends (chunks, its end) goes to channels nobody reads, never into
        // the next download's. Closed until the first download.
        let mut chunks = mpsc::channel::<Chunk>(1).1;
        let mut downloads = mpsc::channel::<Result<u64, String>>(1).1;
        let mut download: Option<tokio::task::JoinHandle<()>> = None;
        let mut retry_download: Option<Instant> = None;
        let mut download_failures = 0u32;
        let mut offline_until: Option<Instant> = None;
        let mut interval = self.settings.interval(self.spec.interval);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = || Instant::now() + Duration::from_secs(86_400);
        let mut finished: Option<Result<u64, String>> = None;
        loop {
            // The download task sends its chunks, then its end: the end is acted on once every
            // chunk before it has been written (both channels hold them in order).
            if chunks.is_empty()
                && let Some(result) = finished.take()
            {
                download = None;
                // The server ended: the image is whole (the chunks moved the OTA on), or
                // the download must go on from where the slot stands.
                let short = match (result, ota.resume(&self.slots)) {
                    (Err(why), _) => Some(why),
                    (Ok(_), Some(Step::Download { offset, .. })) => {
                        Some(format!("the download ended at byte {offset} of the image"))
                    }
                    (Ok(_), _) => None,
                };
                match short {
                    None => download_failures = 0,
                    Some(why) if download_failures + 1 >= MAX_DOWNLOAD_ATTEMPTS => {
                        download_failures = 0;
                        self.emit("download_failed", json!({"reason": why, "final": true}));
                        pending.extend(ota.abandon(
                            &self.slots,
                            format!("download failed {MAX_DOWNLOAD_ATTEMPTS} times: {why}"),
                        ));
                    }
                    Some(why) => {
                        download_failures += 1;
                        self.emit(
                            "download_failed",
                            json!({"reason": why,
                            "attempt": download_failures}),
                        );
                        let delay = 1_000u64 << download_failures.min(6);
                        retry_download = Some(Instant::now() + Duration::from_millis(delay));
                    }
                }
            }
            while let Some(step) = pending.pop_front() {
                match step {
                    Step::Report(report) => {
                        self.emit("ota", serde_json::to_value(&report).unwrap_or_default());
                        if ready {
                            self.report_ota(&link, &mut ota_shadow, &report).await;
                        } else {
                            waiting_reports.push(report);
                        }
                    }
                    Step::Download { url, offset } => {
                        if let Some(task) = download.take() {
                            task.abort();
                        }
                        finished = None;
                        let (chunk_sender, done_sender);
                        (chunk_sender, chunks) = mpsc::channel::<Chunk>(4);
                        (done_sender, downloads) = mpsc::channel::<Result<u64, String>>(1);
                        let (downloader, chunks, done) =
                            (self.downloader.clone(), chunk_sender, done_sender);
                        download = Some(tokio::spawn(async move {
                            let result = downloader.fetch(&url, offset, &chunks).await;
                            let _ = done.send(result).await;
                        }));
                    }
                    Step::SelfTest => {
                        if ready {
                            if self.board.fault(FaultPoint::PowerLossOnTrial) {
                                self.emit("fault", json!({"fault": "power_loss_on_trial"}));
                                link.abort();
                                return End::Reboot;
                            }
                            let Boot::Trial(version) = self.slots.boot() else {
                                continue;
                            };
                            let result = self.board.self_test(&version).await;
                            self.emit(
                                "self_test",
                                json!({"version": version.to_string(),
                                       "passed": result.is_ok(),
                                       "reason": result.as_ref().err()}),
                            );
                            pending.extend(ota.self_test(result, &mut self.slots));
                        } else {
                            self_test_due = true;
                        }
                    }
                    Step::Reboot => {
                        if let Some(task) = download.take() {
                            task.abort();
                        }
                        link.disconnect().await;
                        return End::Reboot;
                    }
                }
            }
            let retry_at = retry_download.unwrap_or_else(far);
            let back_at = offline_until.unwrap_or_else(far);
            tokio::select! {
                _ = stop.changed() => {
                    if let Some(task) = download.take() {
                        task.abort();
                    }
                    link.disconnect().await;
                    // Readings published but not acknowledged may or may not have arrived.
                    let unacknowledged = if in_flight > 0 { self.buffer.in_flight() } else { 0 };
                    self.emit(
                        "stopped",
                        json!({"unacknowledged": unacknowledged,
                               "buffered": self.buffer.len() - unacknowledged}),
                    );
                    return End::Stop;
                }
                () = tokio::time::sleep_until(back_at) => {
                    offline_until = None;
                    self.boots += 1;
                    link = connect(self.seed ^ self.boots.rotate_left(17));
                }
                event = link.next(), if offline_until.is_none() => match event {
                    Some(LinkEvent::Connected) => {
                        let _ = link.subscribe(&filters).await;
                    }
                    Some(LinkEvent::Subscribed(granted)) => {
                        ready = true;
                        self.emit("connected", json!({"subscribed": granted,
                            "running": self.slots.running().to_string()}));
                        for publish in [
                            shadow.connected(),
                            ota_shadow.get(),
                            firmware_report(&thing, &self.slots.running()),
                        ] {
                            let _ = link.publish(&publish.topic, publish.payload, false).await;
                        }
                        for report in std::mem::take(&mut waiting_reports) {
                            self.report_ota(&link, &mut ota_shadow, &report).await;
                        }
                        if std::mem::take(&mut self_test_due) {
                            pending.push_back(Step::SelfTest);
                        }
                        if in_flight == 0 {
                            in_flight = self.flush(&link).await;
                        }
                    }
                    Some(LinkEvent::Message { topic, payload }) => {
                        if topic.contains("/shadow/name/") {
                            match ota_shadow.handle(&topic, &payload) {
                                OtaNews::Request(request) => {
                                    if request.is_some()
                                        && self.board.fault(FaultPoint::OfflineOnRequest)
                                    {
                                        self.emit("fault", json!({"fault": "offline_on_request"}));
                                        link.abort_in_place();
                                        lost(&mut ready, &mut in_flight, &mut self.buffer);
                                        offline_until =
                                            Some(Instant::now() + Duration::from_secs(20));
                                        continue;
                                    }
                                    pending.extend(ota.request(request, &mut self.slots));
                                }
                                OtaNews::Unreadable(reason) => {
                                    pending.push_back(Step::Report(OtaReport {
                                        status: OtaStatus::Failed,
                                        target_version: None,
                                        running_version: Some(self.slots.running().to_string()),
                                        reason: Some(reason),
                                    }));
                                }
                                OtaNews::Publish(publish) => {
                                    let _ = link.publish(&publish.topic, publish.payload, false).await;
                                }
                                OtaNews::Ignored => {}
                            }
                        } else {
                            let (event, out) = shadow.handle(&topic, &payload, &mut self.settings);
                            for publish in out {
                                let _ = link.publish(&publish.topic, publish.payload, false).await;
                            }
                            if let ShadowEvent::Applied { applied, refused } = event
                                && (!applied.is_empty() || !refused.is_empty())
                            {
                                self.board.configured(&self.settings.0);
                                self.emit("configured", json!({
                                    "applied": applied.iter().map(|(k, v)| (k.clone(), v.clone()))
                                        .collect::<Map<String, Value>>(),
                                    "refused": refused.iter().map(|(k, v)| (k.clone(), json!(v)))
                                        .collect::<Map<String, Value>>(),
                                }));
                                let now = self.settings.interval(self.spec.interval);
                                if now != interval {
                                    interval = now;
                                    tick = tokio::time::interval(interval);
                                    tick.set_missed_tick_behavior(
                                        tokio::time::MissedTickBehavior::Delay,
                                    );
                                }
                            }
                        }
                    }
                    Some(LinkEvent::PubAck) => {
                        if in_flight > 0 {
                            in_flight -= 1;
                            if in_flight == 0 {
                                let delivered = self.buffer.ack();
                                self.emit("acknowledged", json!({"readings": delivered}));
                                in_flight = self.flush(&link).await;
                            }
                        }
                    }
                    Some(LinkEvent::Disconnected(why)) => {
                        if ready {
                            self.emit("disconnected", json!({"reason": why}));
                        } else {
                            self.emit("connect_failed", json!({"reason": why}));
                        }
                        lost(&mut ready, &mut in_flight, &mut self.buffer);
                    }
                    None => {
                        // The polling task ended (the link was cut on purpose): reconnect after
                        // a jittered pause, as after any outage.
                        let delay = self.spec.endpoint.backoff.delay_ms(1, self.random.random());
                        offline_until = Some(Instant::now() + Duration::from_millis(delay));
                    }
                },
                Some((offset, mut bytes)) = chunks.recv() => {
                    if self.board.fault(FaultPoint::CorruptChunk) && !bytes.is_empty() {
                        let mut copy = bytes.to_vec();
                        copy[0] ^= 0x5a;
                        bytes = copy.into();
                        self.emit("fault", json!({"fault": "corrupt_chunk", "offset": offset}));
                    }
                    pending.extend(ota.chunk(offset, &bytes, &mut self.slots));
                    if self.board.fault(FaultPoint::PowerLossDownloading) {
                        self.emit("fault", json!({"fault": "power_loss_downloading"}));
                        if let Some(task) = download.take() {
                            task.abort();
                        }
                        link.abort_in_place();
                        return End::Reboot;
                    }
                }
                Some(result) = downloads.recv() => {
                    finished = Some(result);
                }
                () = tokio::time::sleep_until(retry_at) => {
                    retry_download = None;
                    pending.extend(ota.resume(&self.slots));
                }
                _ = tick.tick() => {
                    if let Some(entry) = self.reading() {
                        self.buffer.push(entry);
                    }
                    if let Some(until) = self.board.outage_until_ms()
                        && until > now_ms()
                        && offline_until.is_none()
                    {
                        // The network is gone: cut, keep sampling into the buffer, and come back
                        // after the outage with a jittered delay (no reconnect storm).
                        self.emit("fault", json!({"fault": "outage", "until_ms": until}));
                        lost(&mut ready, &mut in_flight, &mut self.buffer);
                        link.abort_in_place();
                        let jitter = self.spec.endpoint.backoff.delay_ms(3, self.random.random());
                        offline_until = Some(
                            Instant::now()
                                + Duration::from_millis(until - now_ms() + jitter),
                        );
                        continue;
                    }
                    if ready && self.board.fault(FaultPoint::NetworkDrop) {
                        self.emit("fault", json!({"fault": "network_drop"}));
                        lost(&mut ready, &mut in_flight, &mut self.buffer);
                        link.abort_in_place();
                        continue;
                    }
                    if ready && in_flight == 0 {
                        in_flight = self.flush(&link).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_of_nested_leaves_merges_into_what_runs() {
        let mut settings = Settings::default();
        settings
            .apply("led", &json!({"color": "red", "brightness": 50}))
            .unwrap();
        // A delta carries only the changed leaf; null deletes one.
        let running = settings.apply("led", &json!({"brightness": 80})).unwrap();
        assert_eq!(running, json!({"color": "red", "brightness": 80}));
        let running = settings.apply("led", &json!({"color": null})).unwrap();
        assert_eq!(running, json!({"brightness": 80}));
        assert_eq!(settings.apply("interval_s", &json!(0)).unwrap(), json!(1));
        assert!(settings.apply("interval_s", &json!("abc")).is_err());
        assert!(
            settings
                .apply("firmware", &json!({"version": "9"}))
                .is_err()
        );
    }
}
