//! Builders of the domain's records for tests and benches, so that every crate's tests start from
//! the same valid values and change only what a test is about (`..test_util::rollout("r-1")`).
//!
//! Behind the `test-util` feature: a crate enables it in its `[dev-dependencies]` only, so no
//! production build carries it.

use crate::provisioning::{DeviceStatus, HookRequest, ManifestEntry, SERIAL_PARAMETER, Serial};
use crate::rollout::image::FirmwareImage;
use crate::rollout::phases::{PlanSettings, RolloutPlan};
use crate::rollout::state::{Rollout, RolloutId, RolloutStatus};

/// The model every builder uses.
pub const MODEL: &str = "th-v2";
/// The hardware revision every builder uses.
pub const HARDWARE: &str = "rev-b";

/// An active rollout `id` of `th-v2` `rev-b` to 1.10.0 (rollback to 1.9.0), in its first phase of
/// the default plan, at revision 1, 100 new devices a minute, created at 0 ms.
///
/// # Panics
/// Never: every value is a valid constant.
pub fn rollout(id: &str) -> Rollout {
    Rollout {
        id: RolloutId::parse(id).expect("a valid rollout id"),
        model: MODEL.parse().expect("a valid model"),
        hardware: HARDWARE.parse().expect("a valid hardware revision"),
        version: "1.10.0".parse().expect("a valid version"),
        rollback_version: Some("1.9.0".parse().expect("a valid version")),
        plan: RolloutPlan::new(&PlanSettings::default()).expect("the default plan is valid"),
        phase: 0,
        phase_started_ms: 0,
        status: RolloutStatus::Active,
        reason: None,
        revision: 1,
        max_new_per_minute: 100,
        created_ms: 0,
    }
}

/// A published `th-v2` `rev-b` image of `version`: 512 KiB, a digest and signature of the right
/// lengths (not of real bytes), stored at `firmware/th-v2/rev-b/<version>/x.bin`, signed with
/// `alias/k`, no minimum version.
///
/// # Panics
/// When `version` is not a semantic version.
pub fn firmware_image(version: &str) -> FirmwareImage {
    FirmwareImage {
        model: MODEL.parse().expect("a valid model"),
        hardware: HARDWARE.parse().expect("a valid hardware revision"),
        version: version.parse().expect("a semantic version"),
        min_version: None,
        size: 524_288,
        sha256: "ab".repeat(32),
        signature: "M".repeat(96),
        s3_key: format!("firmware/{MODEL}/{HARDWARE}/{version}/x.bin"),
        signing_key: "alias/k".into(),
        created_at_ms: 0,
        downgrade_reason: None,
    }
}

/// A manifest row for `serial` (`th-v2`, batch `b1`) with `status` and, once provisioned, its
/// `certificate_id`; no thing name, group, attributes or proof; created and updated at 0 ms.
///
/// # Panics
/// When `serial` is not a serial.
pub fn manifest_entry(
    serial: &str,
    status: DeviceStatus,
    certificate_id: Option<&str>,
) -> ManifestEntry {
    ManifestEntry {
        serial: Serial::parse(serial).expect("a valid serial"),
        model: MODEL.into(),
        batch: "b1".into(),
        status,
        certificate_id: certificate_id.map(str::to_owned),
        thing_name: None,
        thing_group: None,
        attributes: Default::default(),
        proof: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

/// The pre-provisioning hook's request for `serial` (no `SerialNumber` parameter when `None`) and
/// the new certificate `certificate_id`, from template `shoal-fleet` and the claim certificate
/// `claim`, as AWS IoT sends it (no certificate PEM).
pub fn hook_request(serial: Option<&str>, certificate_id: &str) -> HookRequest {
    HookRequest {
        claim_certificate_id: "claim".into(),
        certificate_id: certificate_id.into(),
        certificate_pem: String::new(),
        template_arn: "arn:aws:iot:us-east-1:123456789012:provisioningtemplate/shoal-fleet".into(),
        client_id: "client-1".into(),
        parameters: serial
            .map(|s| [(SERIAL_PARAMETER.to_owned(), s.to_owned())].into())
            .unwrap_or_default(),
    }
}
