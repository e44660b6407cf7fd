//! `shoal-agent`: `provision` and `run` a Linux gateway from its configuration file, or
//! `simulate` a fleet against an IoT endpoint (README: Devices).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shoal_agent::gateway::{self, AgentConfig, fleet_key_der, host_port};
use shoal_agent::link::{Endpoint, MqttVersion};
use shoal_agent::provision::KeyMode;
use shoal_agent::simulate::{
    Faults, Fleet, FleetPlan, SelfTestFailure, VirtualDevice, manifest_devices,
};
use shoal_firmware::sampling::Backoff;
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "shoal-agent",
    version,
    about = "Shoal's device agent and fleet simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Provisions this gateway by claim (once: an existing identity is kept).
    Provision {
        /// The configuration file (TOML).
        #[arg(long, default_value = "/etc/shoal-agent.toml")]
        config: PathBuf,
    },
    /// Runs the gateway: provisions first when it has no identity, then shadow sync, OTA and
    /// telemetry until SIGINT/SIGTERM.
    Run {
        /// The configuration file (TOML).
        #[arg(long, default_value = "/etc/shoal-agent.toml")]
        config: PathBuf,
    },
    /// Simulates a fleet: every device provisions by claim, then runs with its own connection.
    Simulate(Box<SimulateArgs>),
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// `host:port` of the IoT endpoint (the local stack's `stack env` prints it).
    #[arg(long, env = "SHOAL_IOT_ENDPOINT")]
    endpoint: String,
    /// The endpoint's CA certificates (PEM).
    #[arg(long, env = "SHOAL_IOT_CA_FILE")]
    ca_file: PathBuf,
    /// Offer ALPN `x-amzn-mqtt-ca` (for port 443 endpoints).
    #[arg(long)]
    alpn: bool,
    /// MQTT version: 5 or 3.1.1.
    #[arg(long, default_value = "5", value_parser = ["5", "3.1.1"])]
    mqtt: String,
    /// The claim certificate (PEM).
    #[arg(long)]
    claim_certificate: PathBuf,
    /// The claim certificate's key (PEM).
    #[arg(long)]
    claim_key: PathBuf,
    /// The provisioning template.
    #[arg(long, default_value = "shoal-fleet")]
    template: String,
    /// The factory manifest (CSV: serial, …, attributes with `hardware=`); every row is a device.
    #[arg(long)]
    manifest: PathBuf,
    /// More serials, not in the manifest (rogue devices: provisioning must refuse them).
    #[arg(long = "rogue")]
    rogue: Vec<String>,
    /// The fleet's firmware signing public key (PEM or DER).
    #[arg(long)]
    fleet_key: PathBuf,
    /// The version every device runs out of the factory.
    #[arg(long, default_value = "1.0.0")]
    factory_version: String,
    /// The telemetry application (`dt/<app>/…`; one of the stack's `TelemetryApps`).
    #[arg(long)]
    app: String,
    /// Seconds between readings.
    #[arg(long, default_value_t = 10)]
    interval_s: u64,
    /// How long to run after starting, seconds.
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    /// Device keys: `device` (CSR) or `aws`.
    #[arg(long, default_value = "device", value_parser = ["device", "aws"])]
    key: String,
    /// Devices provisioning at once.
    #[arg(long, default_value_t = 16)]
    provisioning_concurrency: usize,
    /// Attempts of a refused device (30 s, 60 s, … apart): a slow or failed pre-provisioning
    /// hook is refused like a serial that is not in the manifest.
    #[arg(long, default_value_t = 3)]
    provisioning_attempts: u32,
    /// Devices starting (provisioning or connecting) per second.
    #[arg(long, default_value_t = 20.0)]
    start_rate: f64,
    /// A classic-shadow path under the stack's `vclock` policy (repeatable).
    #[arg(long = "vclock-path")]
    vclock_paths: Vec<String>,
    /// Keep identities across runs (JSON lines; private keys inside: keep it private): devices
    /// found there skip provisioning, new ones are appended.
    #[arg(long)]
    identities: Option<PathBuf>,
    /// The seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The JSON-lines event log.
    #[arg(long)]
    events: Option<PathBuf>,
    /// % chance per telemetry tick that a device's connection drops.
    #[arg(long, default_value_t = 0.0, value_parser = percent)]
    network_drop_percent: f64,
    /// % chance that a telemetry batch is published twice.
    #[arg(long, default_value_t = 0.0, value_parser = percent)]
    duplicate_percent: f64,
    /// % of devices whose clock is skewed by --clock-skew-ms.
    #[arg(long, default_value_t = 0.0, value_parser = percent)]
    clock_skew_percent: f64,
    /// How far a skewed clock is off, ms.
    #[arg(long, default_value_t = 120_000)]
    clock_skew_ms: i64,
    /// % chance per downloaded chunk that it is corrupted.
    #[arg(long, default_value_t = 0.0, value_parser = percent)]
    corrupt_download_percent: f64,
    /// % chance per written chunk and per trial boot that power is lost.
    #[arg(long, default_value_t = 0.0, value_parser = percent)]
    power_loss_percent: f64,
    /// % chance that a device goes offline for a while when an OTA request arrives.
    #[arg(long, default_value_t = 0.0, value_parser = percent)]
    offline_on_request_percent: f64,
    /// Devices of MODEL send packed binary records of these fields, in this order:
    /// MODEL=FIELD,FIELD (repeatable; the cloud's SHOAL_PACKED_SCHEMAS must say the same).
    #[arg(long = "packed", value_parser = packed_schema)]
    packed: Vec<(String, Vec<String>)>,
    /// An image failing its self-test: VERSION@HARDWARE[:PERCENT] (repeatable).
    #[arg(long = "self-test-fail")]
    self_test_fail: Vec<SelfTestFailure>,
    /// A fleet-wide network outage this many seconds after every device is connected…
    #[arg(long, requires = "outage_s")]
    outage_at_s: Option<u64>,
    /// …lasting this long (devices buffer their readings, then reconnect with jitter).
    #[arg(long, requires = "outage_at_s")]
    outage_s: Option<u64>,
}

/// This process's peak resident memory, kB (`VmHWM` of `/proc/self/status`).
fn peak_rss_kb() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A percentage, 0 to 100.
fn percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not a percentage (0 to 100)"))
    }
}

/// `MODEL=FIELD,FIELD`.
fn packed_schema(text: &str) -> Result<(String, Vec<String>), String> {
    let (model, fields) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not MODEL=FIELD,FIELD"))?;
    let fields: Vec<String> = fields.split(',').map(|f| f.trim().to_owned()).collect();
    if model.trim().is_empty() || fields.iter().any(String::is_empty) {
        return Err(format!("{text:?} is not MODEL=FIELD,FIELD"));
    }
    Ok((model.trim().to_owned(), fields))
}

fn read(path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

async fn simulate(args: SimulateArgs) -> Result<(), String> {
    let (host, port) = host_port(&args.endpoint)?;
    let endpoint = Endpoint {
        host,
        port,
        alpn: args.alpn,
        ca_pem: read(&args.ca_file)?,
        version: if args.mqtt == "3.1.1" {
            MqttVersion::V311
        } else {
            MqttVersion::V5
        },
        keep_alive: Duration::from_secs(60),
        backoff: Backoff {
            base_ms: 1_000,
            cap_ms: 30_000,
        },
    };
    let manifest = String::from_utf8(read(&args.manifest)?)
        .map_err(|_| format!("{} is not UTF-8", args.manifest.display()))?;
    let mut devices = manifest_devices(&manifest)?;
    devices.extend(args.rogue.iter().map(|serial| VirtualDevice {
        serial: serial.clone(),
        hardware: String::new(),
        model: String::new(),
        factory_secret: None,
        clock_skew_ms: None,
    }));
    let plan = FleetPlan {
        endpoint,
        claim: (read(&args.claim_certificate)?, read(&args.claim_key)?),
        template: args.template,
        app: args.app,
        devices,
        factory_version: args
            .factory_version
            .parse()
            .map_err(|e| format!("--factory-version: {e}"))?,
        fleet_key_der: fleet_key_der(&read(&args.fleet_key)?)?,
        interval: Duration::from_secs(args.interval_s.max(1)),
        faults: Faults {
            network_drop: args.network_drop_percent,
            duplicate: args.duplicate_percent,
            clock_skew: args.clock_skew_percent,
            clock_skew_ms: args.clock_skew_ms,
            corrupt_download: args.corrupt_download_percent,
            power_loss: args.power_loss_percent,
            offline_on_request: args.offline_on_request_percent,
            self_test_failures: args.self_test_fail,
        },
        seed: args.seed,
        key: if args.key == "aws" {
            KeyMode::Aws
        } else {
            KeyMode::Device
        },
        provisioning_concurrency: args.provisioning_concurrency,
        provisioning_attempts: args.provisioning_attempts.max(1),
        identities: args.identities,
        vclock_paths: args.vclock_paths,
        start_rate: args.start_rate,
        packed: args.packed.into_iter().collect(),
    };
    let total = plan.devices.len();
    let fleet = Fleet::start(plan, args.events.as_deref()).await?;
    let end = tokio::time::Instant::now() + Duration::from_secs(args.duration_s);
    let mut every = tokio::time::interval(Duration::from_secs(5));
    // The steady phase starts once every manifest device is connected: its CPU time per
    // second of wall time is what BENCHMARKS.md records.
    let mut steady: Option<(tokio::time::Instant, u64)> = None;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM: {e}"))?;
    let mut outage_at = None;
    loop {
        tokio::select! {
            _ = every.tick() => {
                let s = fleet.status();
                // Settled: every device connected, or refused (and retrying), or failed.
                if steady.is_none()
                    && s.connected + s.refused.len() + s.failed.len() >= total
                    && s.provisioned + s.refused.len() + s.failed.len() >= total
                {
                    let now = tokio::time::Instant::now();
                    steady = Some((now, shoal_agent::simulate::cpu_ms().unwrap_or(0)));
                    outage_at = args.outage_at_s.map(|at| now + Duration::from_secs(at));
                    eprintln!("every device connected or refused: the steady phase starts");
                }
                if let (Some(at), Some(length)) = (outage_at, args.outage_s)
                    && tokio::time::Instant::now() >= at
                {
                    eprintln!("injecting a fleet-wide outage of {length} s");
                    fleet.outage(Duration::from_secs(length));
                    outage_at = None;
                }
                eprintln!(
                    "provisioned {}/{total} (refused {}, failed {}), connected {}, readings {}, ota {:?}, versions {:?}",
                    s.provisioned, s.refused.len(), s.failed.len(), s.connected,
                    s.readings_published, s.ota, s.versions
                );
            }
            () = tokio::time::sleep_until(end) => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    let usage = steady.map(|(since, cpu_before)| {
        let wall_ms = since.elapsed().as_millis() as f64;
        let cpu = shoal_agent::simulate::cpu_ms().unwrap_or(0).saturating_sub(cpu_before) as f64;
        serde_json::json!({
            "steady_s": (wall_ms / 1_000.0).round(),
            "cpu_percent_of_one_core": (cpu / wall_ms * 1_000.0).round() / 10.0,
            "cpu_percent_of_machine": (cpu / wall_ms * 1_000.0
                / std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)).round() / 10.0,
        })
    });
    let peak = peak_rss_kb();
    let summary = fleet.stop().await;
    let mut out = serde_json::to_value(&summary).unwrap_or_default();
    out["usage"] = serde_json::json!({"steady": usage, "peak_rss_kb": peak});
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(())
}

async fn run(config: AgentConfig) -> Result<(), String> {
    let (stop, stopped) = watch::channel(false);
    let mut running = tokio::spawn(gateway::run(config, stopped));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("SIGTERM: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        ended = &mut running => return ended.map_err(|e| e.to_string()).and_then(|r| r),
    }
    let _ = stop.send(true);
    running.await.map_err(|e| e.to_string()).and_then(|r| r)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Provision { config } => match AgentConfig::load(&config) {
            Ok(config) => gateway::identity_or_provision(&config)
                .await
                .map(|identity| println!("{}", identity.thing_name))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        Command::Run { config } => match AgentConfig::load(&config) {
            Ok(config) => run(config).await,
            Err(e) => Err(e.to_string()),
        },
        Command::Simulate(args) => simulate(*args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
