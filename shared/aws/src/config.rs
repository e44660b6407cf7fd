//! Configuration from environment variables, validated once at init.
//!
//! Every function reads its settings through [`required`] / [`optional`] with a typed value, so a
//! missing or malformed variable fails the cold start with an error that names it, instead of
//! failing the first request that happens to use it.

use shoal_wire::ids::NameError;
use shoal_wire::validated_string;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// The environment variables Shoal reads. Names live here, once, so README, the SAM template and
/// the code cannot drift apart silently.
pub mod vars {
    /// Timestream database that receives telemetry.
    pub const TIMESTREAM_DATABASE: &str = "SHOAL_TIMESTREAM_DATABASE";
    /// Timestream table that receives telemetry.
    pub const TIMESTREAM_TABLE: &str = "SHOAL_TIMESTREAM_TABLE";
    /// Memory-store retention of the telemetry table, in hours: older readings are refused
    /// before Timestream would refuse them.
    pub const TIMESTREAM_MEMORY_RETENTION_HOURS: &str = "SHOAL_TIMESTREAM_MEMORY_RETENTION_HOURS";
    /// Field lists of packed binary telemetry by device model: `model=field,field;model=field`.
    pub const PACKED_SCHEMAS: &str = "SHOAL_PACKED_SCHEMAS";
    /// Declared Timestream types of measures (`bigint=rssi;varchar=fw`); numbers are DOUBLE
    /// otherwise.
    pub const MEASURE_TYPES: &str = "SHOAL_MEASURE_TYPES";
    pub const TELEMETRY_APPS: &str = "SHOAL_TELEMETRY_APPS";
    /// How telemetry reaches the router: `direct`, `sqs` or `kinesis`.
    pub const TELEMETRY_DELIVERY: &str = "SHOAL_TELEMETRY_DELIVERY";
    /// `true` when the telemetry table takes magnetic-store writes (late data).
    pub const TIMESTREAM_MAGNETIC_WRITES: &str = "SHOAL_TIMESTREAM_MAGNETIC_WRITES";
    /// The telemetry table's magnetic-store retention in days (default 365).
    pub const TIMESTREAM_MAGNETIC_RETENTION_DAYS: &str = "SHOAL_TIMESTREAM_MAGNETIC_RETENTION_DAYS";
    /// S3 bucket holding the Parquet archive and the quarantine.
    pub const ARCHIVE_BUCKET: &str = "SHOAL_ARCHIVE_BUCKET";
    /// DynamoDB table of the factory manifest (keyed by serial).
    pub const MANIFEST_TABLE: &str = "SHOAL_MANIFEST_TABLE";
    /// DynamoDB table of the device registry (keyed by thing name).
    pub const DEVICE_TABLE: &str = "SHOAL_DEVICE_TABLE";
    /// Device models each provisioning template may provision: `template=model,model;…`.
    pub const TEMPLATE_MODELS: &str = "SHOAL_TEMPLATE_MODELS";
    pub const CLAIM_LEASE_S: &str = "SHOAL_CLAIM_LEASE_S";
    /// The IoT policy attached to every device certificate (JITR).
    pub const DEVICE_POLICY: &str = "SHOAL_DEVICE_POLICY";
    /// The thing type device things get (the hook and JITR): a thing without a type may have
    /// three attributes, with one fifty.
    pub const DEVICE_THING_TYPE: &str = "SHOAL_DEVICE_THING_TYPE";
    /// Initial shadow `desired` per device model, a JSON object: `{"th-v2": {...}}`.
    pub const MODEL_DEFAULTS: &str = "SHOAL_MODEL_DEFAULTS";
    /// KMS key (id, ARN or alias) that signs firmware digests.
    pub const FIRMWARE_SIGNING_KEY: &str = "SHOAL_FIRMWARE_SIGNING_KEY";
    /// DynamoDB firmware registry (keyed by model#hardware and version).
    pub const FIRMWARE_TABLE: &str = "SHOAL_FIRMWARE_TABLE";
    /// S3 bucket holding firmware images (private, encrypted).
    pub const FIRMWARE_BUCKET: &str = "SHOAL_FIRMWARE_BUCKET";
    /// Conflict policy per shadow attribute path: `*=lww;config=merge;schedule=vclock:max`.
    pub const SHADOW_POLICIES: &str = "SHOAL_SHADOW_POLICIES";
    /// Where devices report their firmware version in the shadow (dot path, default
    /// `firmware.version`).
    pub const REPORTED_FIRMWARE_PATH: &str = "SHOAL_REPORTED_FIRMWARE_PATH";
    /// Where devices report their configuration in the shadow (dot path, default `config`).
    pub const REPORTED_CONFIG_PATH: &str = "SHOAL_REPORTED_CONFIG_PATH";
    /// Seconds a device may stay offline before an alert is published (default 3600).
    pub const OFFLINE_THRESHOLD_S: &str = "SHOAL_OFFLINE_THRESHOLD_S";
    /// MQTT topic prefix of alerts (default `shoal/alerts`): `<prefix>/offline/<thing>`.
    pub const ALERTS_TOPIC: &str = "SHOAL_ALERTS_TOPIC";
    /// DynamoDB table of rollouts: state, audit log, per-device requests.
    pub const ROLLOUT_TABLE: &str = "SHOAL_ROLLOUT_TABLE";
    /// Lifetime of a firmware download URL, in seconds (default and maximum 3600).
    pub const URL_TTL_S: &str = "SHOAL_URL_TTL_S";
    /// A URL expiring within this many seconds is replaced (default 600).
    pub const URL_REFRESH_MARGIN_S: &str = "SHOAL_URL_REFRESH_MARGIN_S";
    /// Set (non-empty): rollouts are also delivered as AWS IoT jobs, and this is the role IoT
    /// Jobs assumes to presign the image URL.
    pub const OTA_JOBS_ROLE_ARN: &str = "SHOAL_OTA_JOBS_ROLE_ARN";
}

/// A configuration problem, always naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("environment variable {name} is not set")]
    Missing { name: String },
    #[error("environment variable {name}={value:?} is malformed: {reason}")]
    Malformed {
        name: String,
        value: String,
        reason: String,
    },
}

/// Where variables come from: the process environment in production, a map in tests.
pub trait Source {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Source for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Source for BTreeMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| (*v).to_owned())
    }
}

/// Reads `name` and parses it. An empty value counts as missing: CloudFormation renders an unset
/// parameter as `""`, and that must not pass for a table name.
///
/// # Errors
/// [`ConfigError::Malformed`] when `name` is set but does not parse as `T`; unset or empty is
/// `Ok(None)`, not an error.
pub fn optional<T>(source: &impl Source, name: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match source.var(name) {
        None => Ok(None),
        Some(value) if value.trim().is_empty() => Ok(None),
        Some(value) => value
            .parse()
            .map(Some)
            .map_err(|e: T::Err| ConfigError::Malformed {
                name: name.to_owned(),
                value,
                reason: e.to_string(),
            }),
    }
}

/// Reads `name`, which must be set, and parses it.
///
/// # Errors
/// [`ConfigError::Missing`] when `name` is unset or empty; [`ConfigError::Malformed`] when it
/// does not parse as `T`.
pub fn required<T>(source: &impl Source, name: &str) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    optional(source, name)?.ok_or_else(|| ConfigError::Missing {
        name: name.to_owned(),
    })
}

/// The Timestream table that telemetry lands in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestreamTarget {
    pub database: TimestreamName,
    pub table: TimestreamName,
}

impl TimestreamTarget {
    /// Reads the telemetry database ([`vars::TIMESTREAM_DATABASE`]) and table
    /// ([`vars::TIMESTREAM_TABLE`]) from `source`.
    ///
    /// # Errors
    /// [`ConfigError`] naming whichever of the two is missing or not a valid Timestream name.
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            database: required(source, vars::TIMESTREAM_DATABASE)?,
            table: required(source, vars::TIMESTREAM_TABLE)?,
        })
    }
}

validated_string!(
    /// A DynamoDB table name: 3–255 characters of `[a-zA-Z0-9_.-]`.
    TableName,
    NameError,
    |value| check_table_name(value).map_err(NameError::of("DynamoDB table name"))
);
validated_string!(
    /// A Timestream database or table name: 3–256 characters of `[a-zA-Z0-9_.-]`.
    TimestreamName,
    NameError,
    |value| check_timestream_name(value).map_err(NameError::of("Timestream name"))
);
validated_string!(
    /// An S3 bucket name under the general-purpose bucket rules.
    BucketName,
    NameError,
    |value| check_bucket_name(value).map_err(NameError::of("S3 bucket name"))
);
validated_string!(
    /// A KMS key reference: key id, multi-Region key id, key ARN, alias name or alias ARN.
    KmsKeyRef,
    NameError,
    |value| check_kms_key_ref(value).map_err(NameError::of("KMS key reference"))
);

fn check_len(value: &str, min: usize, max: usize) -> Result<(), String> {
    let len = value.chars().count();
    if (min..=max).contains(&len) {
        Ok(())
    } else {
        Err(format!(
            "is {len} characters long; it must be {min} to {max}"
        ))
    }
}

fn check_chars(value: &str, allowed: impl Fn(char) -> bool, what: &str) -> Result<(), String> {
    match value.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(format!("contains {c:?}; only {what} are allowed")),
        None => Ok(()),
    }
}

fn check_table_name(value: &str) -> Result<(), String> {
    check_len(value, 3, 255)?;
    check_chars(
        value,
        shoal_wire::ids::name_char,
        "letters, digits, '_', '.' and '-'",
    )
}

fn check_timestream_name(value: &str) -> Result<(), String> {
    check_len(value, 3, 256)?;
    check_chars(
        value,
        shoal_wire::ids::name_char,
        "letters, digits, '_', '.' and '-'",
    )
}

fn check_bucket_name(value: &str) -> Result<(), String> {
    check_len(value, 3, 63)?;
    check_chars(
        value,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'),
        "lowercase letters, digits, '.' and '-'",
    )?;
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(value.chars().next()) || !edge_ok(value.chars().last()) {
        return Err("must begin and end with a letter or digit".into());
    }
    if value.contains("..") {
        return Err("must not contain two adjacent periods".into());
    }
    if value.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("must not be formatted as an IP address".into());
    }
    for prefix in ["xn--", "sthree-", "amzn-s3-demo-"] {
        if value.starts_with(prefix) {
            return Err(format!(
                "must not start with the reserved prefix {prefix:?}"
            ));
        }
    }
    for suffix in ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"] {
        if value.ends_with(suffix) {
            return Err(format!("must not end with the reserved suffix {suffix:?}"));
        }
    }
    Ok(())
}

fn is_key_id(value: &str) -> bool {
    let hex_groups: Vec<&str> = value.split('-').collect();
    let uuid = hex_groups.len() == 5
        && hex_groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    let multi_region = value
        .strip_prefix("mrk-")
        .is_some_and(|h| h.len() == 32 && h.chars().all(|c| c.is_ascii_hexdigit()));
    uuid || multi_region
}

fn check_alias_name(alias: &str) -> Result<(), String> {
    let name = alias
        .strip_prefix("alias/")
        .ok_or("an alias must start with \"alias/\"")?;
    if name.is_empty() || name.starts_with("aws/") {
        return Err("alias name is empty or in the reserved \"alias/aws/\" namespace".into());
    }
    check_len(alias, 7, 256)?;
    check_chars(
        name,
        |c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-'),
        "letters, digits, '/', '_' and '-' in an alias",
    )
}

fn check_kms_key_ref(value: &str) -> Result<(), String> {
    if is_key_id(value) {
        return Ok(());
    }
    if value.starts_with("alias/") {
        return check_alias_name(value);
    }
    // arn:<partition>:kms:<region>:<account>:key/<id> or :alias/<name>
    let parts: Vec<&str> = value.splitn(6, ':').collect();
    if let ["arn", _partition, "kms", region, account, resource] = parts.as_slice() {
        if region.is_empty() || account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit())
        {
            return Err("KMS ARN needs a region and a 12-digit account id".into());
        }
        if let Some(id) = resource.strip_prefix("key/") {
            return if is_key_id(id) {
                Ok(())
            } else {
                Err(format!("{id:?} is not a KMS key id"))
            };
        }
        return check_alias_name(resource);
    }
    Err("expected a key id, a key ARN, an alias name (alias/...) or an alias ARN".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(pairs: &[(&'static str, &'static str)]) -> BTreeMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn missing_variable_is_named() {
        let err = required::<TableName>(&source(&[]), vars::DEVICE_TABLE).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable SHOAL_DEVICE_TABLE is not set"
        );
    }

    #[test]
    fn empty_variable_counts_as_missing() {
        let src = source(&[(vars::DEVICE_TABLE, "  ")]);
        assert!(matches!(
            required::<TableName>(&src, vars::DEVICE_TABLE),
            Err(ConfigError::Missing { .. })
        ));
        assert_eq!(optional::<TableName>(&src, vars::DEVICE_TABLE), Ok(None));
    }

    #[test]
    fn malformed_variable_is_named_with_value_and_reason() {
        let src = source(&[(vars::ARCHIVE_BUCKET, "My_Bucket")]);
        let err = required::<BucketName>(&src, vars::ARCHIVE_BUCKET).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable SHOAL_ARCHIVE_BUCKET=\"My_Bucket\" is malformed: contains 'M'; \
             only lowercase letters, digits, '.' and '-' are allowed"
        );
    }

    #[test]
    fn timestream_target_reads_both_names() {
        let src = source(&[
            (vars::TIMESTREAM_DATABASE, "shoal_dev"),
            (vars::TIMESTREAM_TABLE, "telemetry"),
        ]);
        let target = TimestreamTarget::from_source(&src).unwrap();
        assert_eq!(target.database.as_str(), "shoal_dev");
        assert_eq!(target.table.as_str(), "telemetry");

        let only_db = source(&[(vars::TIMESTREAM_DATABASE, "shoal_dev")]);
        assert_eq!(
            TimestreamTarget::from_source(&only_db),
            Err(ConfigError::Missing {
                name: vars::TIMESTREAM_TABLE.into()
            })
        );
    }

    #[test]
    fn table_name_edges() {
        assert!("abc".parse::<TableName>().is_ok());
        assert!("ab".parse::<TableName>().is_err());
        assert!("a".repeat(255).parse::<TableName>().is_ok());
        assert!("a".repeat(256).parse::<TableName>().is_err());
        assert!("shoal-dev.devices_v2".parse::<TableName>().is_ok());
        assert!("shoal dev".parse::<TableName>().is_err());
    }

    #[test]
    fn timestream_name_edges() {
        assert!("a".repeat(256).parse::<TimestreamName>().is_ok());
        assert!("a".repeat(257).parse::<TimestreamName>().is_err());
        assert!("db".parse::<TimestreamName>().is_err());
    }

    #[test]
    fn bucket_name_rules() {
        for ok in [
            "abc",
            "shoal-archive-123456789012",
            "a.b-c",
            &"a".repeat(63),
        ] {
            assert!(ok.parse::<BucketName>().is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "-abc",
            "abc-",
            "a..b",
            "192.168.1.1",
            "xn--abc",
            "abc-s3alias",
            "Abc",
            "a_b",
        ] {
            assert!(bad.parse::<BucketName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn kms_key_references() {
        for ok in [
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            "alias/shoal-firmware",
            "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws-cn:kms:cn-north-1:111122223333:alias/shoal-firmware",
        ] {
            assert!(ok.parse::<KmsKeyRef>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1234abcd",
            "alias/",
            "alias/aws/s3",
            "alias/has space",
            "arn:aws:kms:eu-west-1:1111:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:eu-west-1:111122223333:key/nope",
            "arn:aws:s3:::bucket",
        ] {
            assert!(bad.parse::<KmsKeyRef>().is_err(), "{bad}");
        }
    }
}
