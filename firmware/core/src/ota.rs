//! Over-the-air updates as a device runs them (A/B slots), driven by the `ota` shadow's request
//! (or an IoT Jobs document carrying the same fields):
//!
//! 1. **downloading** — the image is written to the inactive slot in chunks; a download cut by
//!    a reconnect or a power loss resumes where the slot's write stopped (same image digest).
//! 2. **verifying** — size, SHA-256 (read back from the slot) and the ECDSA P-256 signature over
//!    the digest with the fleet's public key, **before** anything is marked bootable; a version
//!    below the device's floor (`min_version`, anti-rollback) is refused first.
//! 3. **applying** — the slot is marked for one trial boot and the device reboots.
//! 4. On the trial boot the device runs its self-test: passed → the slot is committed and
//!    **success** is reported with the new `running_version` (never before the commit); failed →
//!    the device reboots and the bootloader falls back to the old slot, which reports **failed**
//!    with the reason and the old `running_version`. A trial boot that never confirms (a crash
//!    loop, a power loss) falls back the same way: the bootloader boots a trial slot once.
//!
//! Slots, the bootloader and storage are the board's ([`Slots`]); the state machine here holds
//! nothing that must survive a reboot — after one, the shadow's request comes again and the slots
//! say where the device was.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use base64::Engine;
use shoal_wire::image::{hex, verify_signature};
use shoal_wire::ota::{OtaDesired, OtaReport, OtaStatus};
use shoal_wire::version::FirmwareVersion;

/// How the device came up, as its bootloader says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// From the committed slot, nothing pending.
    Committed,
    /// From a slot on trial (once): it must pass its self-test and be committed.
    Trial(FirmwareVersion),
    /// Back on the committed slot after the trial of `version` did not confirm; the board keeps
    /// saying so (across reboots) until another image is staged, so a failed image is not tried
    /// again while the request stands.
    FellBack {
        /// The version whose trial failed.
        version: FirmwareVersion,
        /// Why, as the board knows it (self-test failed, no confirmation after a trial boot).
        reason: String,
    },
}

/// The board's A/B slots and bootloader (embassy-boot, ESP-IDF's OTA partitions, a file-backed
/// one for the agent and tests).
pub trait Slots {
    /// The version the committed slot runs.
    fn running(&self) -> FirmwareVersion;
    /// How the device came up this time.
    fn boot(&self) -> Boot;
    /// The image being written to the inactive slot: its SHA-256 (hex) and the bytes written.
    fn staged(&self) -> Option<(String, u64)>;
    /// Starts writing the image of digest `sha256` to the inactive slot (erasing it).
    ///
    /// # Errors
    /// The slot could not be erased.
    fn stage(&mut self, sha256: &str) -> Result<(), String>;
    /// Writes `bytes` at `offset` of the staged image.
    ///
    /// # Errors
    /// The write failed.
    fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<(), String>;
    /// The SHA-256 of the staged image's first `len` bytes, read back from the slot.
    ///
    /// # Errors
    /// The read failed.
    fn digest(&self, len: u64) -> Result<[u8; 32], String>;
    /// Marks the staged image, `version`, to be booted once on trial.
    ///
    /// # Errors
    /// The mark could not be written.
    fn mark_trial(&mut self, version: &FirmwareVersion) -> Result<(), String>;
    /// Commits the slot on trial (it runs now): it becomes the one booted.
    ///
    /// # Errors
    /// The commit could not be written.
    fn commit(&mut self) -> Result<(), String>;
    /// Refuses the slot on trial for `reason` (its self-test failed): the next boot falls back,
    /// and [`Boot::FellBack`] carries the reason.
    ///
    /// # Errors
    /// The refusal could not be written (the fallback still happens: the trial is not committed).
    fn reject(&mut self, reason: &str) -> Result<(), String>;
}

/// What the device does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Report this on the `ota` shadow (`reported`).
    Report(OtaReport),
    /// Fetch `url` from byte `offset` (an HTTP Range request) and hand the bytes to
    /// [`Ota::chunk`].
    Download {
        /// The presigned URL.
        url: String,
        /// Where to resume.
        offset: u64,
    },
    /// Run the self-test and hand the result to [`Ota::self_test`].
    SelfTest,
    /// Reboot (into the trial slot, or back to the committed one).
    Reboot,
}

/// The OTA state machine.
#[derive(Debug, Clone)]
pub struct Ota {
    fleet_key_der: Vec<u8>,
    min_version: Option<FirmwareVersion>,
    request: Option<OtaDesired>,
}

impl Ota {
    /// The device's OTA with the fleet's signing public key (DER SubjectPublicKeyInfo) and its
    /// anti-rollback floor.
    pub fn new(fleet_key_der: Vec<u8>, min_version: Option<FirmwareVersion>) -> Self {
        Self {
            fleet_key_der,
            min_version,
            request: None,
        }
    }

    fn report(
        status: OtaStatus,
        target: Option<&FirmwareVersion>,
        running: &FirmwareVersion,
        reason: Option<String>,
    ) -> Step {
        Step::Report(OtaReport {
            status,
            target_version: target.map(ToString::to_string),
            running_version: Some(running.to_string()),
            reason,
        })
    }

    fn failed(&mut self, slots: &impl Slots, reason: String) -> Vec<Step> {
        let target = self.request.take().map(|r| r.version);
        Vec::from([Self::report(
            OtaStatus::Failed,
            target.as_ref(),
            &slots.running(),
            Some(reason),
        )])
    }

    /// After a boot: a trial boot runs its self-test; a fallback reports the failure with the
    /// version that runs.
    pub fn booted(&mut self, slots: &mut impl Slots) -> Vec<Step> {
        match slots.boot() {
            Boot::Committed => Vec::new(),
            Boot::Trial(_) => Vec::from([Step::SelfTest]),
            Boot::FellBack { version, reason } => Vec::from([Self::report(
                OtaStatus::Failed,
                Some(&version),
                &slots.running(),
                Some(reason),
            )]),
        }
    }

    /// The `ota` shadow's request (its `desired` state; `None` when withdrawn).
    pub fn request(&mut self, desired: Option<OtaDesired>, slots: &mut impl Slots) -> Vec<Step> {
        let Some(desired) = desired else {
            self.request = None;
            return Vec::new();
        };
        if let Some(current) = &mut self.request
            && current.rollout == desired.rollout
            && current.version == desired.version
            && current.sha256 == desired.sha256
        {
            // The same request again (a resync, a duplicate, a refreshed URL): keep going where
            // the device is, with the newest URL.
            current.url = desired.url;
            current.url_expires_ms = desired.url_expires_ms;
            return Vec::new();
        }
        let running = slots.running();
        if matches!(slots.boot(), Boot::Trial(ref v) if *v == desired.version) {
            // On trial with this very image: the self-test ([`Ota::booted`]'s) decides.
            self.request = Some(desired);
            return Vec::new();
        }
        if desired.version == running {
            self.request = None;
            return Vec::from([Self::report(
                OtaStatus::Success,
                Some(&desired.version),
                &running,
                None,
            )]);
        }
        if let Boot::FellBack { version, reason } = slots.boot()
            && version == desired.version
        {
            // This image already failed its trial here: not again (the report says why).
            self.request = Some(desired);
            return self.failed(slots, reason);
        }
        self.request = Some(desired.clone());
        if let Some(floor) = &self.min_version
            && desired.version < *floor
        {
            return self.failed(
                slots,
                format!(
                    "anti-rollback: {} is below this device's minimum version {floor}",
                    desired.version
                ),
            );
        }
        let offset = match slots.staged() {
            Some((sha256, written)) if sha256 == desired.sha256 && written <= desired.size => {
                written
            }
            _ => {
                if let Err(why) = slots.stage(&desired.sha256) {
                    return self
                        .failed(slots, format!("the inactive slot cannot be erased: {why}"));
                }
                0
            }
        };
        let mut steps = Vec::from([Self::report(
            OtaStatus::Downloading,
            Some(&desired.version),
            &running,
            None,
        )]);
        if offset == desired.size {
            steps.extend(self.verify_and_apply(slots));
        } else {
            steps.push(Step::Download {
                url: desired.url,
                offset,
            });
        }
        steps
    }

    /// Gives up the request in hand for `reason` (the download keeps failing): reported
    /// `failed`; the same request coming again (a `get` after a reconnect or a new URL) starts
    /// over.
    pub fn abandon(&mut self, slots: &impl Slots, reason: String) -> Vec<Step> {
        if self.request.is_none() {
            return Vec::new();
        }
        self.failed(slots, reason)
    }

    /// The download to resume for the request in hand (after a failed fetch, or with a
    /// refreshed URL): from the bytes the slot holds. `None` when no download is under way.
    pub fn resume(&self, slots: &impl Slots) -> Option<Step> {
        let request = self.request.as_ref()?;
        let (sha256, written) = slots.staged()?;
        (sha256 == request.sha256 && written < request.size).then(|| Step::Download {
            url: request.url.clone(),
            offset: written,
        })
    }

    /// Bytes of the download at `offset`: written to the slot; the image verified and applied
    /// once complete.
    pub fn chunk(&mut self, offset: u64, bytes: &[u8], slots: &mut impl Slots) -> Vec<Step> {
        let Some(request) = &self.request else {
            return Vec::new();
        };
        let written = slots.staged().map_or(0, |(_, w)| w);
        if offset != written {
            // Not where the slot stands (a stale chunk): resume from the slot.
            return Vec::from([Step::Download {
                url: request.url.clone(),
                offset: written,
            }]);
        }
        let room = request.size.saturating_sub(written);
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > room {
            let size = request.size;
            return self.failed(
                slots,
                format!("the download is larger than the {size} bytes announced"),
            );
        }
        if let Err(why) = slots.write(offset, bytes) {
            return self.failed(slots, format!("the inactive slot cannot be written: {why}"));
        }
        let written = written + u64::try_from(bytes.len()).unwrap_or(0);
        if written < request.size {
            return Vec::new();
        }
        self.verify_and_apply(slots)
    }

    fn verify_and_apply(&mut self, slots: &mut impl Slots) -> Vec<Step> {
        let Some(request) = self.request.clone() else {
            return Vec::new();
        };
        let running = slots.running();
        let mut steps = Vec::from([Self::report(
            OtaStatus::Verifying,
            Some(&request.version),
            &running,
            None,
        )]);
        let checked = (|| {
            let digest = slots
                .digest(request.size)
                .map_err(|why| format!("the inactive slot cannot be read: {why}"))?;
            if hex(&digest) != request.sha256.to_ascii_lowercase() {
                return Err(format!(
                    "sha256 mismatch: the image is {}, the request says {}",
                    hex(&digest),
                    request.sha256
                ));
            }
            let signature = base64::engine::general_purpose::STANDARD
                .decode(request.signature.as_bytes())
                .map_err(|e| format!("the signature is not base64: {e}"))?;
            verify_signature(&self.fleet_key_der, &digest, &signature)
                .map_err(|e| format!("signature refused: {e}"))
        })();
        if let Err(reason) = checked {
            // Never marked bootable; the next request stages again from scratch.
            let _ = slots.stage("");
            steps.extend(self.failed(slots, reason));
            return steps;
        }
        if let Err(why) = slots.mark_trial(&request.version) {
            steps.extend(self.failed(slots, format!("the trial boot cannot be set: {why}")));
            return steps;
        }
        steps.push(Self::report(
            OtaStatus::Applying,
            Some(&request.version),
            &running,
            None,
        ));
        steps.push(Step::Reboot);
        steps
    }

    /// The self-test's result on a trial boot: passed → committed and success reported (only
    /// now); failed → a reboot, the bootloader falls back and [`Ota::booted`] reports it.
    pub fn self_test(&mut self, passed: Result<(), String>, slots: &mut impl Slots) -> Vec<Step> {
        let Boot::Trial(version) = slots.boot() else {
            return Vec::new();
        };
        match passed {
            Ok(()) => match slots.commit() {
                Ok(()) => {
                    self.request = None;
                    Vec::from([Self::report(
                        OtaStatus::Success,
                        Some(&version),
                        &slots.running(),
                        None,
                    )])
                }
                Err(_) => Vec::from([Step::Reboot]),
            },
            Err(why) => {
                let _ = slots.reject(&format!("self-test failed: {why}"));
                Vec::from([Step::Reboot])
            }
        }
    }
}

/// The IoT Jobs channel's document (`"operation": "shoal-ota"`, the same fields as the `ota`
/// shadow's request; its URL presigned by IoT Jobs when the device fetched the execution) as the
/// request [`Ota::request`] takes: one OTA flow for both channels.
///
/// # Errors
/// Another operation, or a document without the request's fields.
pub fn request_from_job(document: &serde_json::Value) -> Result<OtaDesired, String> {
    if document
        .get("operation")
        .and_then(serde_json::Value::as_str)
        != Some("shoal-ota")
    {
        return Err("not a shoal-ota job document".to_string());
    }
    let mut fields = document.clone();
    if let Some(map) = fields.as_object_mut() {
        map.remove("operation");
        // IoT Jobs presigns the URL for each fetch of the execution: it is good now.
        map.entry("url_expires_ms")
            .or_insert_with(|| serde_json::Value::from(u64::MAX));
    }
    serde_json::from_value(fields)
        .map_err(|e| format!("the job document is not an OTA request: {e}"))
}

/// An OTA report as a job execution's update (`$aws/things/<thing>/jobs/<jobId>/update`):
/// `(status, statusDetails)` — downloading, verifying and applying are `IN_PROGRESS` with the
/// step in `statusDetails`, success `SUCCEEDED`, failed `FAILED` with the reason.
pub fn job_update(
    report: &OtaReport,
) -> (&'static str, serde_json::Map<String, serde_json::Value>) {
    let mut details = serde_json::Map::new();
    let status = match report.status {
        OtaStatus::Downloading | OtaStatus::Verifying | OtaStatus::Applying => {
            let step = serde_json::to_value(report.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            details.insert("step".into(), step.into());
            "IN_PROGRESS"
        }
        OtaStatus::Success => "SUCCEEDED",
        OtaStatus::Failed => "FAILED",
    };
    if let Some(reason) = &report.reason {
        details.insert("reason".into(), reason.clone().into());
    }
    if let Some(running) = &report.running_version {
        details.insert("running_version".into(), running.clone().into());
    }
    (status, details)
}

mod shadow;
pub use shadow::{OtaNews, OtaShadow};

#[cfg(test)]
mod tests;
