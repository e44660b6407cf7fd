//! The `ota` named shadow's documents: the request a rollout writes to `desired`
//! ([`OtaDesired`]) and the status a device reports in `reported` ([`OtaReport`]).
//!
//! `desired`: `rollout` (the rollout's id), `version`, `url` (an HTTPS GET, valid until
//! `url_expires_ms`, epoch ms; rewritten before it expires), `sha256` (lower-case hex of the
//! image), `signature` (base64 of the DER ECDSA P-256 signature over the SHA-256, see
//! [`crate::image`]) and `size` (bytes). A withdrawn request sets every field to null.
//!
//! `reported`: `status` (downloading, verifying, applying, success, failed), `version` (the
//! image being installed), `running_version` (what actually runs: a device that fell back by
//! itself reports the old one here) and `reason` (required with `failed`).

use alloc::string::{String, ToString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::version::FirmwareVersion;

/// The named shadow that carries OTA requests (`desired`) and reports (`reported`).
pub const OTA_SHADOW: &str = "ota";

/// A rollout's request, the `ota` shadow's `desired` state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtaDesired {
    /// The rollout's id.
    pub rollout: String,
    /// The version to install.
    pub version: FirmwareVersion,
    /// Where to download the image (HTTPS GET).
    pub url: String,
    /// Epoch milliseconds after which `url` no longer works.
    pub url_expires_ms: u64,
    /// Lower-case hex SHA-256 of the image.
    pub sha256: String,
    /// Base64 DER ECDSA P-256 signature over the SHA-256 (see [`crate::image`]).
    pub signature: String,
    /// The image's size in bytes.
    pub size: u64,
}

impl OtaDesired {
    /// The `desired` fields a request sets (a withdrawal sets each to null).
    pub const FIELDS: [&'static str; 7] = [
        "rollout",
        "version",
        "url",
        "url_expires_ms",
        "sha256",
        "signature",
        "size",
    ];

    /// Whether the URL must be rewritten now: it expires within `margin_ms`.
    #[must_use]
    pub fn needs_new_url(&self, now_ms: u64, margin_ms: u64) -> bool {
        self.url_expires_ms <= now_ms.saturating_add(margin_ms)
    }
}

/// Where a device is with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtaStatus {
    /// Fetching the image.
    Downloading,
    /// Checking size, digest and signature.
    Verifying,
    /// Writing the inactive slot and trial-booting it.
    Applying,
    /// The new image runs and is committed.
    Success,
    /// The request failed; `reason` says why.
    Failed,
}

/// A device's report, the `ota` shadow's `reported` state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtaReport {
    /// Where the device is.
    pub status: OtaStatus,
    /// `version`: the version being installed.
    #[serde(default, rename = "version", skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// What actually runs (a device that fell back by itself reports the old version here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_version: Option<String>,
    /// Why the request failed (required with `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why a device's reported `ota` state is not an [`OtaReport`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtaReportError {
    /// Not the shape of a report (a missing or mistyped field, an unknown `status`); serde's
    /// message.
    #[error("the ota shadow's reported state is not an OTA report: {0}")]
    Shape(String),
    /// `status: failed` without a non-empty `reason`.
    #[error("an OTA report with status failed must say why (reason)")]
    FailedWithoutReason,
}

impl OtaReport {
    /// Reads a device's `reported` state of the `ota` shadow.
    ///
    /// # Errors
    /// [`OtaReportError::Shape`] when `reported` is not the shape above (or names an unknown
    /// `status`); [`OtaReportError::FailedWithoutReason`] for `failed` without a `reason`.
    pub fn from_reported(reported: &Value) -> Result<Self, OtaReportError> {
        let report: OtaReport =
            OtaReport::deserialize(reported).map_err(|e| OtaReportError::Shape(e.to_string()))?;
        if report.status == OtaStatus::Failed && report.reason.as_deref().is_none_or(str::is_empty)
        {
            return Err(OtaReportError::FailedWithoutReason);
        }
        Ok(report)
    }
}
