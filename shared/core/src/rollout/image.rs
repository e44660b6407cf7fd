//! The firmware registry's view of images: the contract's digest and signature checks
//! ([`shoal_wire::image`], re-exported here) and what the registry records per image.

pub use shoal_wire::image::*;

use serde::{Deserialize, Serialize};

use super::version::FirmwareVersion;

/// A published image, as the firmware registry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareImage {
    /// The device model the image is built for.
    pub model: DeviceModel,
    /// The hardware revision of that model the image is built for.
    pub hardware: HardwareRevision,
    /// The image's firmware version, as published (SemVer, build metadata kept).
    pub version: FirmwareVersion,
    /// Devices below this version cannot take this image directly.
    pub min_version: Option<FirmwareVersion>,
    /// Size of the image (bytes).
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
    /// Base64 of the DER signature.
    pub signature: String,
    /// Key of the image's S3 object in the firmware bucket (see [`object_key`]).
    pub s3_key: String,
    /// The KMS key that signed the image, as configured (key id, key ARN or alias).
    pub signing_key: String,
    /// When the image was published (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Set when the version was published below the current one.
    pub downgrade_reason: Option<String>,
}

/// The image of `version` among `images`: the one published under exactly that text (build
/// metadata included), else the one of the same SemVer precedence. A registry only holds one
/// image per precedence since publishing refuses another build; one written before that may hold
/// several, and then the build named is the one meant.
pub fn find_image<'a>(
    images: &'a [FirmwareImage],
    version: &FirmwareVersion,
) -> Option<&'a FirmwareImage> {
    images
        .iter()
        .find(|i| i.version.semver() == version.semver())
        .or_else(|| images.iter().find(|i| i.version == *version))
}

/// `firmware/<model>/<hardware>/<version>/<sha256>.bin`: one immutable object per image.
pub fn object_key(
    model: &DeviceModel,
    hardware: &HardwareRevision,
    version: &FirmwareVersion,
    sha256_hex: &str,
) -> String {
    format!("firmware/{model}/{hardware}/{version}/{sha256_hex}.bin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_hex() {
        let key = object_key(
            &"th-v2".parse().unwrap(),
            &"rev-b".parse().unwrap(),
            &"1.10.0".parse().unwrap(),
            &hex(&sha256(b"x")),
        );
        assert_eq!(
            key,
            "firmware/th-v2/rev-b/1.10.0/2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881.bin"
        );
        assert!("bad model".parse::<DeviceModel>().is_err());
    }
}
