//! What a rollout writes to a device's `ota` named shadow (`desired`, the contract's
//! [`OtaDesired`]): the image to install and where to fetch it. The URL is an S3 presigned GET
//! valid at most an hour; the advancer rewrites it before it expires for devices that have not
//! finished.

pub use shoal_wire::ota::OtaDesired;

use super::image::FirmwareImage;
use super::version::FirmwareVersion;
use crate::shadow::document::{ShadowUpdate, StateMap};

/// AWS caps presigned URLs Shoal hands to devices at one hour (issue 7; IoT Jobs' placeholders
/// allow 60–3600 s).
pub const MAX_URL_TTL_S: u64 = 3600;

/// The request for `image` that `rollout` writes: what the device downloads from `url` (valid
/// until `url_expires_ms`, epoch ms) and checks before installing.
pub fn request(
    rollout: &str,
    image: &FirmwareImage,
    url: String,
    url_expires_ms: u64,
) -> OtaDesired {
    OtaDesired {
        rollout: rollout.to_owned(),
        version: image.version.clone(),
        url,
        url_expires_ms,
        sha256: image.sha256.clone(),
        signature: image.signature.clone(),
        size: image.size,
    }
}

/// The `ota` shadow update that asks the device for `desired`.
pub fn update(desired: &OtaDesired) -> ShadowUpdate {
    let desired: StateMap = match serde_json::to_value(desired) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => unreachable!("OtaDesired serialises to an object"),
    };
    ShadowUpdate::desired(desired, None)
}

/// The `ota` shadow update that withdraws a request the device never started (every desired
/// field set to null, which deletes it).
pub fn cancel() -> ShadowUpdate {
    let desired: StateMap = OtaDesired::FIELDS
        .into_iter()
        .map(|f| (f.to_owned(), serde_json::Value::Null))
        .collect();
    ShadowUpdate::desired(desired, None)
}

/// Whether a request of `rollout` for `version` (`None`: its withdrawal) may replace what the
/// `ota` shadow's desired state asks now. Another rollout's request is replaced only by a newer
/// version, and never withdrawn: an older rollout still reaching stragglers, or a rollback,
/// never undoes a newer rollout on the same device.
pub fn may_replace(
    current: Option<&StateMap>,
    rollout: &str,
    version: Option<&FirmwareVersion>,
) -> bool {
    let Some(current) = current else {
        return true;
    };
    match current.get("rollout").and_then(serde_json::Value::as_str) {
        None => true,
        Some(theirs) if theirs == rollout => true,
        Some(_) => {
            let their_version = current
                .get("version")
                .and_then(serde_json::Value::as_str)
                .and_then(|v| v.parse::<FirmwareVersion>().ok());
            match (version, their_version) {
                (Some(ours), Some(theirs)) => *ours > theirs,
                (Some(_), None) => true,
                (None, _) => false,
            }
        }
    }
}

/// The AWS IoT Jobs name of a rollout, used for its job and its static thing group: `ota-` and
/// the id's allowed characters (at most 40), then a hash of the whole id, so that two ids that
/// differ only in cut or replaced characters never share a job (job ids: `[a-zA-Z0-9_-]{1,64}`).
pub fn job_name(rollout: &str) -> String {
    let kept: String = rollout
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let mut h: u32 = 0x811c_9dc5;
    for b in rollout.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("ota-{kept}-{h:08x}")
}

/// The job document of the optional AWS IoT Jobs channel: the same request as the `ota`
/// shadow's, the URL as AWS's presigned-URL placeholder, which IoT Jobs replaces with an S3
/// presigned GET (lifetime from the job's `presignedUrlConfig`) each time a device fetches it.
pub fn job_document(rollout: &str, image: &FirmwareImage, bucket: &str, region: &str) -> String {
    serde_json::json!({
        "operation": "shoal-ota",
        "rollout": rollout,
        "version": image.version,
        "url": format!(
            "${{aws:iot:s3-presigned-url:https://s3.{region}.amazonaws.com/{bucket}/{}}}",
            image.s3_key
        ),
        "sha256": image.sha256,
        "signature": image.signature,
        "size": image.size,
    })
    .to_string()
}

/// A presigned URL's lifetime: the requested one, never more than [`MAX_URL_TTL_S`] nor less
/// than a minute.
pub fn url_ttl_s(requested_s: u64) -> u64 {
    requested_s.clamp(60, MAX_URL_TTL_S)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::check_update;
    use crate::shadow::document::ShadowState;

    fn image() -> FirmwareImage {
        crate::test_util::firmware_image("1.10.0")
    }

    #[test]
    fn the_desired_document_fits_a_shadow_with_a_long_presigned_url() {
        // Presigned URLs with a session token run to ~1.5 KB.
        let url = format!(
            "https://bucket.s3.amazonaws.com/firmware/x.bin?{}",
            "q".repeat(1500)
        );
        let desired = request("r-1", &image(), url, 3_600_000);
        let update = update(&desired);
        assert!(check_update(&ShadowState::default(), &update).is_ok());
        let state = update.state.desired.unwrap();
        assert_eq!(state["version"], "1.10.0");
        assert_eq!(state["rollout"], "r-1");
        assert_eq!(state["size"], 524_288);
    }

    #[test]
    fn urls_are_refreshed_before_they_expire_and_live_at_most_an_hour() {
        let desired = request("r-1", &image(), "u".into(), 3_600_000);
        assert!(!desired.needs_new_url(0, 600_000));
        assert!(desired.needs_new_url(3_000_000, 600_000));
        assert!(desired.needs_new_url(3_600_000, 0));
        assert_eq!(url_ttl_s(7200), 3600);
        assert_eq!(url_ttl_s(10), 60);
        assert_eq!(url_ttl_s(900), 900);
    }

    #[test]
    fn a_request_never_replaces_a_newer_rollouts() {
        let v = |t: &str| t.parse::<FirmwareVersion>().unwrap();
        let asked = |rollout: &str, version: &str| {
            let mut image = image();
            image.version = v(version);
            update(&request(rollout, &image, "u".into(), 1))
                .state
                .desired
                .unwrap()
        };
        let newer = asked("r-2", "1.11.0");
        assert!(may_replace(None, "r-1", Some(&v("1.10.0"))));
        assert!(may_replace(Some(&StateMap::new()), "r-1", None));
        assert!(!may_replace(Some(&newer), "r-1", Some(&v("1.10.0"))));
        assert!(
            !may_replace(Some(&newer), "r-1", None),
            "no withdrawing another's"
        );
        assert!(
            may_replace(Some(&newer), "r-2", Some(&v("1.9.0"))),
            "its own rollback"
        );
        assert!(may_replace(Some(&newer), "r-2", None));
        assert!(may_replace(
            Some(&asked("r-1", "1.10.0")),
            "r-2",
            Some(&v("1.11.0"))
        ));
    }

    #[test]
    fn job_names_are_valid_and_distinct_and_documents_carry_the_placeholder() {
        let valid = |n: &str| {
            n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        let long = "th-v2-rev-b-1.10.0-1795600000".repeat(4);
        for id in ["r-1", "th-v2-rev-b-1.10.0-1795600000", long.as_str(), "a.b"] {
            assert!(valid(&job_name(id)), "{}", job_name(id));
        }
        assert_ne!(job_name("a.b"), job_name("a_b"));
        assert_ne!(job_name(&long), job_name(&format!("{long}x")));
        let doc: serde_json::Value =
            serde_json::from_str(&job_document("r-1", &image(), "fw", "eu-west-1")).unwrap();
        assert_eq!(
            doc["url"],
            "${aws:iot:s3-presigned-url:https://s3.eu-west-1.amazonaws.com/fw/firmware/th-v2/rev-b/1.10.0/x.bin}"
        );
        assert_eq!(
            (doc["version"].as_str(), doc["size"].as_u64()),
            (Some("1.10.0"), Some(524_288))
        );
    }

    #[test]
    fn a_cancel_deletes_every_field_the_request_set() {
        let desired = request("r-1", &image(), "u".into(), 1);
        let asked = update(&desired).state.desired.unwrap();
        let cancelled = cancel().state.desired.unwrap();
        assert_eq!(
            asked.keys().collect::<Vec<_>>(),
            cancelled.keys().collect::<Vec<_>>()
        );
        assert!(cancelled.values().all(serde_json::Value::is_null));
    }
}
