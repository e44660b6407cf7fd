//! The agent on a Linux gateway: its configuration file (TOML), its state directory and its
//! board (readings of the gateway itself; the self-test a command of the operator's).
//!
//! ```toml
//! endpoint = "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com:8883"  # or …:443 (ALPN)
//! ca_file = "/etc/shoal/AmazonRootCA1.pem"
//! mqtt = "5"                         # or "3.1.1"
//! state_dir = "/var/lib/shoal-agent" # identity.json, config.json, slots/
//! app = "greenhouse"              # one of the stack's TelemetryApps
//!
//! [claim]
//! certificate_file = "/etc/shoal/claim.pem.crt"
//! private_key_file = "/etc/shoal/claim.pem.key"
//! template = "shoal-fleet"
//! serial = "SN-000123"
//! factory_secret_file = "/etc/shoal/factory-secret"  # when the manifest row has one
//! key = "device"                     # or "aws"
//!
//! [firmware]
//! factory_version = "1.0.0"
//! fleet_public_key_file = "/etc/shoal/fleet-signing.pem"  # PEM or DER (KMS GetPublicKey)
//! min_version = "1.0.0"
//! self_test_command = "/usr/lib/shoal/self-test"  # exit 0 = passed; SHOAL_TRIAL_VERSION set
//!
//! [telemetry]
//! interval_s = 60
//! buffer_max_entries = 10000
//! buffer_max_bytes = 4194304
//! buffer_ttl_s = 86400
//!
//! [shadow]
//! vclock_paths = ["schedule.start"]   # paths under the stack's vclock policy
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use shoal_firmware::buffer::Limits;
use shoal_firmware::sampling::Backoff;
use shoal_wire::version::FirmwareVersion;

use tokio::sync::{mpsc, watch};

use crate::device::{Board, Device, DeviceEvent, DeviceSpec, Settings};
use crate::download::Downloader;
use crate::link::{Endpoint, MqttVersion};
use crate::provision::{ClaimRequest, DeviceIdentity, KeyMode, provision};
use crate::slots::AbSlots;

/// The agent's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `host:port` of the AWS IoT Core data endpoint (`aws iot describe-endpoint
    /// --endpoint-type iot:Data-ATS`), port 8883 or 443.
    pub endpoint: String,
    /// Offer ALPN `x-amzn-mqtt-ca` (default: when the port is 443).
    #[serde(default)]
    pub alpn: Option<bool>,
    /// The CA certificates (PEM) of the endpoint (Amazon Root CA 1 on AWS).
    pub ca_file: PathBuf,
    /// `"5"` (default) or `"3.1.1"`.
    #[serde(default = "default_mqtt")]
    pub mqtt: MqttVersion,
    /// Where the identity, configuration and slots are kept.
    pub state_dir: PathBuf,
    /// The telemetry application (`dt/<app>/…`; one of the stack's `TelemetryApps`).
    pub app: String,
    /// Provisioning by claim.
    pub claim: ClaimConfig,
    /// Firmware and OTA.
    pub firmware: FirmwareConfig,
    /// Telemetry.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Shadow sync.
    #[serde(default)]
    pub shadow: ShadowConfig,
}

/// `[shadow]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// The classic shadow's dot paths under the stack's `vclock` policy (`ShadowPolicies`):
    /// their reports carry vector clocks.
    #[serde(default)]
    pub vclock_paths: Vec<String>,
}

/// `[claim]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimConfig {
    /// The claim certificate (PEM).
    pub certificate_file: PathBuf,
    /// Its private key (PEM).
    pub private_key_file: PathBuf,
    /// The provisioning template.
    pub template: String,
    /// This device's serial.
    pub serial: String,
    /// A file holding the factory secret, when the manifest row has one.
    #[serde(default)]
    pub factory_secret_file: Option<PathBuf>,
    /// `device` (default: a CSR, the key never leaves) or `aws`.
    #[serde(default)]
    pub key: KeyMode,
}

/// `[firmware]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareConfig {
    /// The version the device runs before any update.
    pub factory_version: FirmwareVersion,
    /// The fleet's firmware signing public key: PEM (`PUBLIC KEY`) or DER SubjectPublicKeyInfo.
    pub fleet_public_key_file: PathBuf,
    /// The anti-rollback floor.
    #[serde(default)]
    pub min_version: Option<FirmwareVersion>,
    /// The self-test run on a trial boot (exit status 0 = passed; `SHOAL_TRIAL_VERSION` set).
    /// Without one, connecting to the cloud on the new version is the self-test.
    #[serde(default)]
    pub self_test_command: Option<PathBuf>,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Seconds between readings (the shadow's `interval_s` overrides it).
    pub interval_s: u64,
    /// The offline buffer's bound in readings.
    pub buffer_max_entries: usize,
    /// Its bound in bytes.
    pub buffer_max_bytes: usize,
    /// How long a buffered reading stays worth sending, seconds (0: forever).
    pub buffer_ttl_s: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            interval_s: 60,
            buffer_max_entries: 10_000,
            buffer_max_bytes: 4 * 1024 * 1024,
            buffer_ttl_s: 86_400,
        }
    }
}

fn default_mqtt() -> MqttVersion {
    MqttVersion::V5
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file cannot be read.
    #[error("{0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The TOML is not a configuration.
    #[error("{0}: {1}")]
    Toml(PathBuf, toml::de::Error),
    /// A value is wrong.
    #[error("{0}")]
    Invalid(String),
}

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))
}

/// A fleet public key file (PEM or DER) as DER SubjectPublicKeyInfo of a P-256 key.
///
/// # Errors
/// Not a P-256 public key in either form.
pub fn fleet_key_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let key = match std::str::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN") => {
            p256::PublicKey::from_public_key_pem(text.trim())
                .map_err(|e| format!("not a P-256 public key (PEM): {e}"))?
        }
        _ => p256::PublicKey::from_public_key_der(bytes)
            .map_err(|e| format!("not a P-256 public key (DER): {e}"))?,
    };
    key.to_public_key_der()
        .map(|der| der.as_bytes().to_vec())
        .map_err(|e| e.to_string())
}

/// `host:port` split.
///
/// # Errors
/// No port, or not a number.
pub fn host_port(endpoint: &str) -> Result<(String, u16), String> {
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| format!("{endpoint:?} is not host:port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{endpoint:?}: the port is not a number"))?;
    Ok((host.to_owned(), port))
}

impl AgentConfig {
    /// Reads the configuration file.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = String::from_utf8(read(path)?)
            .map_err(|_| ConfigError::Invalid(format!("{} is not UTF-8", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError::Toml(path.to_path_buf(), e))
    }

    /// The MQTT endpoint.
    ///
    /// # Errors
    /// The endpoint or the CA file is wrong.
    pub fn endpoint(&self) -> Result<Endpoint, ConfigError> {
        let (host, port) = host_port(&self.endpoint).map_err(ConfigError::Invalid)?;
        Ok(Endpoint {
            host,
            port,
            alpn: self.alpn.unwrap_or(port == 443),
            ca_pem: read(&self.ca_file)?,
            version: self.mqtt,
            keep_alive: Duration::from_secs(60),
            backoff: Backoff {
                base_ms: 1_000,
                cap_ms: 120_000,
            },
        })
    }

    /// What provisioning asks for.
    ///
    /// # Errors
    /// A claim file cannot be read.
    pub fn claim_request(&self) -> Result<ClaimRequest, ConfigError> {
        let secret = match &self.claim.factory_secret_file {
            Some(path) => Some(String::from_utf8_lossy(&read(path)?).trim().to_owned()),
            None => None,
        };
        Ok(ClaimRequest {
            claim: (
                read(&self.claim.certificate_file)?,
                read(&self.claim.private_key_file)?,
            ),
            template: self.claim.template.clone(),
            serial: self.claim.serial.clone(),
            factory_secret: secret,
            key: self.claim.key,
            deadline: Duration::from_secs(600),
        })
    }

    fn identity_path(&self) -> PathBuf {
        self.state_dir.join("identity.json")
    }

    /// The identity provisioning left, if any.
    ///
    /// # Errors
    /// The file exists but cannot be read as an identity.
    pub fn identity(&self) -> Result<Option<DeviceIdentity>, ConfigError> {
        let path = self.identity_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ConfigError::Read(path, e)),
        }
    }

    /// Keeps `identity` (mode 0600, written whole then renamed).
    ///
    /// # Errors
    /// The state directory cannot be written.
    pub fn keep_identity(&self, identity: &DeviceIdentity) -> Result<(), ConfigError> {
        write_private(
            &self.identity_path(),
            &serde_json::to_vec_pretty(identity).unwrap_or_default(),
        )
    }

    /// The device's run-time settings.
    ///
    /// # Errors
    /// The fleet key or the endpoint is wrong.
    pub fn device_spec(&self, identity: DeviceIdentity) -> Result<DeviceSpec, ConfigError> {
        let key = fleet_key_der(&read(&self.firmware.fleet_public_key_file)?).map_err(|e| {
            ConfigError::Invalid(format!(
                "{}: {e}",
                self.firmware.fleet_public_key_file.display()
            ))
        })?;
        Ok(DeviceSpec {
            identity,
            app: self.app.clone(),
            endpoint: self.endpoint()?,
            fleet_key_der: key,
            min_version: self.firmware.min_version.clone(),
            interval: Duration::from_secs(self.telemetry.interval_s.max(1)),
            buffer: Limits {
                max_entries: self.telemetry.buffer_max_entries,
                max_bytes: self.telemetry.buffer_max_bytes,
                ttl_ms: (self.telemetry.buffer_ttl_s > 0)
                    .then(|| self.telemetry.buffer_ttl_s * 1_000),
            },
            vclock_paths: self.shadow.vclock_paths.clone(),
            packed: None,
        })
    }

    /// The configuration the shadow last set (`config.json`).
    pub fn settings(&self) -> Map<String, Value> {
        std::fs::read(self.state_dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

/// Writes `bytes` to `path` readable by the owner only, replacing it atomically.
///
/// # Errors
/// The directory cannot be written.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |e| ConfigError::Read(tmp.clone(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))
}

/// A Linux gateway as a device: its readings are its own health (load average, available
/// memory, uptime from `/proc`), its self-test the configured command.
pub struct Gateway {
    /// The self-test command.
    pub self_test_command: Option<PathBuf>,
    /// Where `config.json` is kept.
    pub state_dir: PathBuf,
}

fn proc_number(path: &str, pick: impl Fn(&str) -> Option<&str>) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    pick(&text)?.trim().parse().ok()
}

impl Board for Gateway {
    fn sample(&mut self, _now_ms: u64) -> Vec<(String, f64)> {
        let mut readings = Vec::new();
        if let Some(load) = proc_number("/proc/loadavg", |t| t.split_whitespace().next()) {
            readings.push(("load_1m".to_owned(), load));
        }
        if let Some(kb) = proc_number("/proc/meminfo", |t| {
            t.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
        }) {
            readings.push(("mem_available_mb".to_owned(), (kb / 1024.0).round()));
        }
        if let Some(up) = proc_number("/proc/uptime", |t| t.split_whitespace().next()) {
            readings.push(("uptime_s".to_owned(), up.round()));
        }
        readings
    }

    async fn self_test(&mut self, version: &FirmwareVersion) -> Result<(), String> {
        let Some(command) = &self.self_test_command else {
            return Ok(());
        };
        let status = tokio::process::Command::new(command)
            .env("SHOAL_TRIAL_VERSION", version.to_string())
            .status()
            .await
            .map_err(|e| format!("{}: {e}", command.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{} exited with {status}", command.display()))
        }
    }

    fn configured(&mut self, settings: &Map<String, Value>) {
        let body = serde_json::to_vec_pretty(settings).unwrap_or_default();
        if let Err(e) = write_private(&self.state_dir.join("config.json"), &body) {
            tracing::warn!(error = %e, "the configuration could not be kept");
        }
    }
}

/// Why the gateway has no identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The configuration or the state directory is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Provisioning failed or was refused.
    #[error(transparent)]
    Provision(#[from] crate::provision::ProvisionError),
}

/// The identity in the state directory, or a new one provisioned by claim (then kept).
///
/// # Errors
/// [`IdentityError`]: the configuration is wrong, provisioning failed or was refused, or the
/// identity cannot be kept.
pub async fn identity_or_provision(config: &AgentConfig) -> Result<DeviceIdentity, IdentityError> {
    if let Some(identity) = config.identity()? {
        if identity.thing_name != config.claim.serial {
            return Err(ConfigError::Invalid(format!(
                "{} holds the identity of {}, but the configuration's serial is {}: use another \
                 state_dir for another device",
                config.state_dir.display(),
                identity.thing_name,
                config.claim.serial
            ))
            .into());
        }
        return Ok(identity);
    }
    let endpoint = config.endpoint()?;
    let request = config.claim_request()?;
    // The identity must be kept once the cloud made it: a serial claimed by a certificate whose
    // key is lost is refused from then on (README: provisioning). Check before asking.
    write_private(&config.state_dir.join("probe"), b"")?;
    let _ = std::fs::remove_file(config.state_dir.join("probe"));
    tracing::info!(serial = %request.serial, "provisioning by claim");
    let identity = provision(&endpoint, &request, rand::random()).await?;
    config.keep_identity(&identity)?;
    tracing::info!(thing = %identity.thing_name, certificate = %identity.certificate_id, "provisioned");
    Ok(identity)
}

/// Runs the gateway until `stop` turns true: provisions first when it has no identity, then
/// shadow sync, OTA (slots in `<state_dir>/slots`) and telemetry; device events are logged.
///
/// # Errors
/// The configuration is wrong or provisioning failed.
pub async fn run(config: AgentConfig, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    // A refusal is tried again, later and later (1 min doubling to 1 h, jittered): the gateway
    // cannot tell a serial the manifest lacks from a pre-provisioning hook that was slow or
    // failed — AWS answers both with the same 403.
    let mut refusals = 0;
    let identity = loop {
        let attempt = tokio::select! {
            attempt = identity_or_provision(&config) => attempt,
            _ = stop.changed() => return Ok(()),
        };
        match attempt {
            Ok(identity) => break identity,
            Err(IdentityError::Provision(crate::provision::ProvisionError::Refused(why))) => {
                refusals += 1;
                let pause = Backoff {
                    base_ms: 60_000,
                    cap_ms: 3_600_000,
                }
                .delay_ms(refusals, rand::random())
                .max(30_000);
                tracing::warn!(reason = %why, retry_in_s = pause / 1_000, "provisioning refused");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(pause)) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
            Err(other) => return Err(other.to_string()),
        }
    };
    let spec = config.device_spec(identity).map_err(|e| e.to_string())?;
    let slots = AbSlots::open(
        &config.state_dir.join("slots"),
        &config.firmware.factory_version,
    )
    .map_err(|e| e.to_string())?;
    let settings = Settings(config.settings());
    let (events, mut logged) = mpsc::unbounded_channel::<DeviceEvent>();
    tokio::spawn(async move {
        while let Some(event) = logged.recv().await {
            tracing::info!(kind = event.kind, detail = %event.detail, "device");
        }
    });
    let board = Gateway {
        self_test_command: config.firmware.self_test_command.clone(),
        state_dir: config.state_dir.clone(),
    };
    let device = Device::new(
        spec,
        board,
        slots,
        settings,
        Downloader::new()?,
        events,
        rand::random(),
    );
    device.run(stop).await;
    Ok(())
}
