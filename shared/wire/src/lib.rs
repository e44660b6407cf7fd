//! The contract a device and the cloud share, `no_std` + `alloc` so that firmware builds on it:
//! AWS IoT identifiers ([`ids`]), MQTT topics — Shoal's telemetry topic and AWS IoT's reserved
//! ones ([`topics`]) — the `ota` shadow's request and report documents ([`ota`]), firmware version precedence
//! ([`version`]), image digests and signatures ([`image`]), the JSON telemetry shapes, measure
//! names and limits ([`telemetry`]) and the packed binary telemetry record ([`packed`]).
//!
//! Nothing here does I/O or knows the AWS SDK; the cloud's domain (`shoal-core`) and the device
//! side both build on these definitions, so the two cannot drift.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

/// Declares a `String` newtype that can only hold a value `$check` accepts: `parse`, `FromStr`,
/// serde (validated on the way in), `Display`, `AsRef<str>`. `$check: fn(&str) -> Result<(), $err>`.
///
/// The invoking crate needs `serde` as a dependency and `String` in scope (`alloc::string::String`
/// in a `no_std` crate).
#[macro_export]
macro_rules! validated_string {
    ($(#[$doc:meta])* $name:ident, $err:ty, $check:expr) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// # Errors
            /// What the check refused in `value`.
            pub fn parse(value: &str) -> Result<Self, $err> {
                let check: fn(&str) -> Result<(), $err> = $check;
                check(value).map(|()| Self(String::from(value)))
            }

            /// Checks `value` as [`Self::parse`] does, without keeping it.
            ///
            /// # Errors
            /// What the check refused in `value`.
            pub fn check(value: &str) -> Result<(), $err> {
                let check: fn(&str) -> Result<(), $err> = $check;
                check(value)
            }

            /// The value as it was given.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $err;
            fn try_from(value: String) -> Result<Self, $err> {
                Self::parse(&value)
            }
        }

        impl ::core::str::FromStr for $name {
            type Err = $err;
            fn from_str(value: &str) -> Result<Self, $err> {
                Self::parse(value)
            }
        }
    };
}

pub mod ids;
pub mod image;
pub mod ota;
pub mod packed;
pub mod telemetry;
pub mod topics;
pub mod version;
