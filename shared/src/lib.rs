//! Shoal's domain library.
//!
//! Pure domain logic lives here without AWS SDK types in its signatures; the one exception is
//! [`aws`], the client factory and the error type that the edges (functions, tools) use.

/// A `String` newtype that can only hold a value `$check` accepts: `parse`, `FromStr`, serde
/// (validated on the way in), `Display`, `AsRef<str>`. `$check: fn(&str) -> Result<(), $err>`.
macro_rules! validated_string {
    ($(#[$doc:meta])* $name:ident, $err:ty, $check:expr) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, $err> {
                let check: fn(&str) -> Result<(), $err> = $check;
                check(value).map(|()| Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

        impl std::str::FromStr for $name {
            type Err = $err;
            fn from_str(value: &str) -> Result<Self, $err> {
                Self::parse(value)
            }
        }
    };
}

#[cfg(feature = "aws")]
pub mod alerts;
#[cfg(feature = "aws")]
pub mod aws;
pub mod clock;
pub mod config;
#[cfg(feature = "aws")]
pub mod device_table;
#[cfg(feature = "aws")]
pub mod dynamo;
#[cfg(feature = "aws")]
pub mod firmware_table;
#[cfg(feature = "aws")]
pub mod fleet;
pub mod ids;
pub mod logging;
#[cfg(feature = "aws")]
pub mod manifest_table;
pub mod metrics;
pub mod presence;
pub mod provisioning;
pub mod rollout;
#[cfg(feature = "aws")]
pub mod rollout_table;
pub mod shadow;
#[cfg(feature = "aws")]
pub mod shadow_store;
pub mod telemetry;
