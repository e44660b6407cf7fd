use std::io;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shoal_cli::decommission::ThingFate;
use shoal_cli::firmware::{PublishRequest, Publisher};
use shoal_cli::group_config::{GroupRequest, IotFleet, Options, Status, Target, set_desired};
use shoal_cli::manifest::ImportError;
use shoal_shared::aws::ClientFactory;
use shoal_shared::config::{
    BucketName, KmsKeyRef, TableName, TimestreamName, TimestreamTarget, vars,
};
use shoal_shared::device_table::DeviceTable;
use shoal_shared::firmware_table::FirmwareTable;
use shoal_shared::ids::ShadowName;
use shoal_shared::ids::ThingName;
use shoal_shared::manifest_table::ManifestTable;
use shoal_shared::provisioning::Serial;
use shoal_shared::rollout::FirmwareVersion;
use shoal_shared::rollout::image::{DeviceModel, HardwareRevision};
use shoal_shared::rollout_table::RolloutTable;
use shoal_shared::shadow::{PolicyTable, ShadowUpdate, check_update};
use shoal_shared::shadow_store::IotShadowStore;

/// Operate a Shoal fleet backend.
#[derive(Parser)]
#[command(name = "shoal", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a thing, update its shadow and write a Timestream record against the configured
    /// endpoint (AWS_ENDPOINT_URL), printing each step.
    Smoke {
        /// Thing to create or reuse.
        #[arg(long, default_value = "shoal-smoke-1")]
        thing: ThingName,
        /// Timestream database (created if missing).
        #[arg(long, env = vars::TIMESTREAM_DATABASE, default_value = "shoal_local")]
        database: TimestreamName,
        /// Timestream table (created if missing).
        #[arg(long, env = vars::TIMESTREAM_TABLE, default_value = "telemetry")]
        table: TimestreamName,
    },
    /// Device lifecycle operations.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// The firmware registry.
    Firmware {
        #[command(subcommand)]
        command: FirmwareCommand,
    },
    /// Firmware rollouts: canary → staged → general, pause, resume, roll back.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Fleet configuration through device shadows.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Factory manifest operations.
    Manifest {
        #[command(subcommand)]
        command: ManifestCommand,
    },
    /// Create, if missing, the data resources infra/template.yaml creates on AWS (Timestream
    /// database and table, archive and firmware buckets, manifest, device, firmware and rollout
    /// tables, the firmware signing key) on the configured endpoint.
    InitLocal {
        #[arg(long, env = vars::TIMESTREAM_DATABASE, default_value = "shoal_local")]
        database: TimestreamName,
        #[arg(long, env = vars::TIMESTREAM_TABLE, default_value = "telemetry")]
        table: TimestreamName,
        #[arg(long, env = vars::ARCHIVE_BUCKET, default_value = "shoal-local-archive")]
        bucket: BucketName,
        #[arg(long, env = vars::MANIFEST_TABLE, default_value = "shoal-local-manifest")]
        manifest_table: TableName,
        #[arg(long, env = vars::DEVICE_TABLE, default_value = "shoal-local-devices")]
        device_table: TableName,
        #[arg(long, env = vars::FIRMWARE_TABLE, default_value = "shoal-local-firmware")]
        firmware_table: TableName,
        #[arg(long, env = vars::FIRMWARE_BUCKET, default_value = "shoal-local-firmware")]
        firmware_bucket: BucketName,
        #[arg(long, env = vars::ROLLOUT_TABLE, default_value = "shoal-local-rollouts")]
        rollout_table: TableName,
        /// Alias of the firmware signing key (created with the key when missing).
        #[arg(long, default_value = "alias/shoal-local-firmware-signing")]
        signing_key_alias: String,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Revoke the device's certificate, detach its policies and thing, retire (or delete) the
    /// thing and record it in the manifest.
    Decommission {
        serial: Serial,
        /// Why (kept in the manifest's audit record).
        #[arg(long)]
        reason: String,
        /// Delete the thing instead of marking it retired.
        #[arg(long)]
        delete_thing: bool,
        #[arg(long, env = vars::MANIFEST_TABLE)]
        table: TableName,
        /// The device table (the device leaves presence: no offline alert).
        #[arg(long, env = vars::DEVICE_TABLE)]
        device_table: TableName,
    },
}

/// The image a command is about.
#[derive(clap::Args)]
struct ImageArgs {
    /// Device model (as in the manifest and the things' `model` attribute: th-v2).
    #[arg(long)]
    model: DeviceModel,
    /// Hardware revision (the things' `hardware` attribute: rev-b).
    #[arg(long)]
    hardware: HardwareRevision,
    /// Semantic version (1.10.0 > 1.9.0).
    #[arg(long)]
    version: FirmwareVersion,
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Start rolling a published image out: canary first, then each staged percentage, then
    /// everyone, each phase soaking and judged by its failure rate before the next.
    Start {
        /// The published image to roll out.
        #[command(flatten)]
        image: ImageArgs,
        /// Last good version devices go back to on rollback (default: the greatest published
        /// version below --version).
        #[arg(long)]
        rollback_to: Option<FirmwareVersion>,
        /// Rollout id (default: <model>-<hardware>-<version>-<unix seconds>).
        #[arg(long)]
        id: Option<String>,
        /// Share of the eligible devices in the canary, in percent.
        #[arg(long, default_value_t = 1.0)]
        canary_percent: f64,
        /// Staged percentages, increasing: 10,50.
        #[arg(long, value_delimiter = ',', default_value = "10,50")]
        staged: Vec<f64>,
        /// Soak time of each phase, in seconds.
        #[arg(long, default_value_t = 3600)]
        soak_s: u64,
        /// Failed + rolled back over reported, in percent, above which the canary pauses.
        #[arg(long, default_value_t = 5.0)]
        canary_max_failure_percent: f64,
        /// The same for the staged and general phases.
        #[arg(long, default_value_t = 2.0)]
        staged_max_failure_percent: f64,
        /// Reports needed before a phase can pass.
        #[arg(long, default_value_t = 10)]
        min_reports: u64,
        /// Thundering-herd guard: devices newly targeted per minute, at most.
        #[arg(long, default_value_t = 100)]
        max_new_per_minute: u32,
        #[arg(long, env = vars::ROLLOUT_TABLE)]
        table: TableName,
        #[arg(long, env = vars::FIRMWARE_TABLE)]
        firmware_table: TableName,
    },
    /// Phase, counts per status, failure rate, population and audit log of a rollout.
    Status {
        id: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, env = vars::ROLLOUT_TABLE)]
        table: TableName,
        #[arg(long, env = vars::FIRMWARE_TABLE)]
        firmware_table: TableName,
        #[arg(long, env = vars::DEVICE_TABLE)]
        device_table: TableName,
    },
    /// Stop targeting new devices (in-flight ones finish).
    Pause {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long, env = vars::ROLLOUT_TABLE)]
        table: TableName,
    },
    /// Continue a paused rollout; the current phase's soak starts again.
    Resume {
        id: String,
        #[arg(long, env = vars::ROLLOUT_TABLE)]
        table: TableName,
    },
    /// Send every device that took the image back to the last good version, and withdraw the
    /// request from the ones that did not start.
    Rollback {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long, env = vars::ROLLOUT_TABLE)]
        table: TableName,
    },
}

#[derive(Subcommand)]
enum FirmwareCommand {
    /// Sign an image's SHA-256 with the KMS key, verify the signature with the key's public key,
    /// upload it and record it. Refuses a version below the model's current one unless
    /// --allow-downgrade --reason is given, and a version already published (another build of
    /// it included) whatever the flags.
    Publish {
        /// The image file.
        file: std::path::PathBuf,
        #[command(flatten)]
        image: ImageArgs,
        /// Devices below this version must take an intermediate image first.
        #[arg(long)]
        min_version: Option<FirmwareVersion>,
        /// Publish a version below the current one (never one already published, nor another
        /// build of it).
        #[arg(long, requires = "reason")]
        allow_downgrade: bool,
        /// Why the downgrade (recorded with the image).
        #[arg(long, requires = "allow_downgrade")]
        reason: Option<String>,
        #[arg(long, env = vars::FIRMWARE_TABLE)]
        table: TableName,
        #[arg(long, env = vars::FIRMWARE_BUCKET)]
        bucket: BucketName,
        #[arg(long, env = vars::FIRMWARE_SIGNING_KEY)]
        key: KmsKeyRef,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Set desired state on every thing of a thing group (or with an attribute value), with
    /// bounded concurrency, a progress bar and a per-device JSON-lines report; failures are
    /// reported and skipped, and `--resume` continues an interrupted run from its report.
    Set {
        /// Thing group (child groups included).
        #[arg(long, required_unless_present = "where_", conflicts_with = "where_")]
        group: Option<String>,
        /// Registry attribute filter, ATTR=VALUE.
        #[arg(long = "where", value_name = "ATTR=VALUE")]
        where_: Option<String>,
        /// Named shadow (default: the classic shadow).
        #[arg(long)]
        shadow: Option<ShadowName>,
        /// Conflict policies per attribute path, as the shadow-sync function reads them.
        #[arg(long, env = vars::SHADOW_POLICIES, default_value = "*=lww")]
        policies: PolicyTable,
        /// Things updated at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// UpdateThingShadow attempts per thing (each 409 re-reads and re-applies the policy).
        #[arg(long, default_value_t = 5)]
        max_attempts: u32,
        /// The per-device report (JSON lines; default config-set-<time>.jsonl).
        #[arg(long)]
        report: Option<std::path::PathBuf>,
        /// Continue the run recorded in --report: things already done are skipped.
        #[arg(long, requires = "report")]
        resume: bool,
        /// The desired state, a JSON object: '{"sample_interval_s": 30}'.
        desired: String,
    },
}

#[derive(Subcommand)]
enum ManifestCommand {
    /// Import new devices from a CSV (serial,model,batch,thing_group,attributes[,proof]): every
    /// row is checked first and nothing is written if any row is bad. `proof` is
    /// key-sha256:<hex> or secret-sha256:<hex> (README: Proof of possession).
    Import {
        /// The CSV file.
        file: std::path::PathBuf,
        #[arg(long, env = vars::MANIFEST_TABLE)]
        table: TableName,
    },
    /// Give a provisioned serial back to pending when its certificate never became active.
    Reset {
        serial: Serial,
        /// Why (kept in the manifest's audit record).
        #[arg(long)]
        reason: String,
        #[arg(long, env = vars::MANIFEST_TABLE)]
        table: TableName,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let factory = ClientFactory::from_env().await;
    match cli.command {
        Command::Smoke {
            thing,
            database,
            table,
        } => {
            let target = TimestreamTarget { database, table };
            shoal_cli::smoke::run(&factory, &thing, &target, &mut io::stdout()).await?;
        }
        Command::Device {
            command:
                DeviceCommand::Decommission {
                    serial,
                    reason,
                    delete_thing,
                    table,
                    device_table,
                },
        } => {
            let manifest = ManifestTable::new(factory.dynamodb(), table);
            let devices = DeviceTable::new(factory.dynamodb(), device_table);
            let fate = if delete_thing {
                ThingFate::Delete
            } else {
                ThingFate::Retire
            };
            shoal_cli::decommission::decommission(
                &factory,
                &manifest,
                &devices,
                &serial,
                fate,
                &reason,
                &mut io::stdout(),
            )
            .await?;
        }
        Command::Manifest {
            command: ManifestCommand::Import { file, table },
        } => {
            let csv = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let table = ManifestTable::new(factory.dynamodb(), table);
            let bar = ProgressBar::new(csv.lines().count().saturating_sub(1) as u64).with_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} devices written")
                    .expect("a valid template"),
            );
            match shoal_cli::manifest::import(&table, &csv, |n| bar.inc(n as u64)).await {
                Ok(n) => {
                    bar.finish_and_clear();
                    println!("imported {n} devices into {}", table.name());
                }
                Err(ImportError::Rows(errors)) => {
                    bar.abandon();
                    for e in &errors {
                        eprintln!("{}: {e}", file.display());
                    }
                    anyhow::bail!("{} bad row(s); nothing was written", errors.len());
                }
                Err(e) => {
                    bar.abandon();
                    return Err(e.into());
                }
            }
        }
        Command::Manifest {
            command:
                ManifestCommand::Reset {
                    serial,
                    reason,
                    table,
                },
        } => {
            let table = ManifestTable::new(factory.dynamodb(), table);
            println!(
                "{}",
                shoal_cli::manifest::reset(&factory, &table, &serial, &reason).await?
            );
        }
        Command::Firmware {
            command:
                FirmwareCommand::Publish {
                    file,
                    image:
                        ImageArgs {
                            model,
                            hardware,
                            version,
                        },
                    min_version,
                    allow_downgrade: _,
                    reason,
                    table,
                    bucket,
                    key,
                },
        } => {
            let image =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let table = FirmwareTable::new(factory.dynamodb(), table);
            let publisher = Publisher {
                factory: &factory,
                table: &table,
                bucket: &bucket,
                key: &key,
            };
            let request = PublishRequest {
                model,
                hardware,
                version,
                min_version,
                downgrade_reason: reason,
            };
            let record = publisher.publish(&image, &request).await?;
            println!("{}", serde_json::to_string_pretty(&record)?);
        }
        Command::Rollout { command } => rollout(&factory, command).await?,
        Command::Config {
            command:
                ConfigCommand::Set {
                    group,
                    where_,
                    shadow,
                    policies,
                    concurrency,
                    max_attempts,
                    report,
                    resume,
                    desired,
                },
        } => {
            let target = match (group, where_) {
                (Some(group), _) => Target::Group(group),
                (None, Some(filter)) => {
                    let (attribute, value) =
                        filter.split_once('=').context("--where takes ATTR=VALUE")?;
                    Target::Where {
                        attribute: attribute.to_owned(),
                        value: value.to_owned(),
                    }
                }
                (None, None) => anyhow::bail!("give --group or --where"),
            };
            let desired: serde_json::Value =
                serde_json::from_str(&desired).context("the desired state is not JSON")?;
            let serde_json::Value::Object(desired) = desired else {
                anyhow::bail!("the desired state must be a JSON object");
            };
            // A state no shadow could take fails here, before any call.
            check_update(
                &Default::default(),
                &ShadowUpdate::desired(desired.clone(), None),
            )?;
            let now_s = u64::try_from(shoal_shared::clock::now_ms() / 1000).unwrap_or_default();
            let report = report.unwrap_or_else(|| format!("config-set-{now_s}.jsonl").into());
            let request = GroupRequest {
                target,
                shadow,
                desired,
            };
            let bar = ProgressBar::no_length().with_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} things {msg}")
                    .expect("a valid template"),
            );
            let fleet = IotFleet(factory.iot());
            let store = std::sync::Arc::new(IotShadowStore::new(factory.iot_data()));
            let options = Options {
                policies: &policies,
                concurrency,
                max_attempts,
                resume,
                decided_at_s: now_s,
            };
            let mut failed = 0;
            let summary = set_desired(
                &fleet,
                store,
                &request,
                &report,
                options,
                |n, total, result| {
                    bar.set_length(total as u64);
                    bar.set_position(n as u64);
                    if result.status == Status::Failed {
                        failed += 1;
                        bar.set_message(format!("{failed} failed"));
                    }
                },
            )
            .await?;
            bar.finish_and_clear();
            println!(
                "{} things for {}: {} written, {} unchanged, {} failed, {} done earlier; report {}",
                summary.targeted,
                request.target,
                summary.written,
                summary.unchanged,
                summary.failed,
                summary.already_done,
                report.display()
            );
            if summary.failed > 0 {
                anyhow::bail!(
                    "{} things failed (see the report); run again with --resume --report {}",
                    summary.failed,
                    report.display()
                );
            }
        }
        Command::InitLocal {
            database,
            table,
            bucket,
            manifest_table,
            device_table,
            firmware_table,
            firmware_bucket,
            rollout_table,
            signing_key_alias,
        } => {
            let target = TimestreamTarget { database, table };
            shoal_cli::resources::init_local(&factory, &target, &bucket, &mut io::stdout()).await?;
            ManifestTable::new(factory.dynamodb(), manifest_table.clone())
                .ensure_exists()
                .await?;
            println!("dynamodb    {manifest_table} ready");
            DeviceTable::new(factory.dynamodb(), device_table.clone())
                .ensure_exists()
                .await?;
            println!("dynamodb    {device_table} ready");
            FirmwareTable::new(factory.dynamodb(), firmware_table.clone())
                .ensure_exists()
                .await?;
            println!("dynamodb    {firmware_table} ready");
            RolloutTable::new(factory.dynamodb(), rollout_table.clone())
                .ensure_exists()
                .await?;
            println!("dynamodb    {rollout_table} ready");
            shoal_cli::resources::ensure_bucket(&factory.s3(), &firmware_bucket).await?;
            println!("s3          {firmware_bucket} ready");
            let alias =
                shoal_cli::resources::ensure_signing_key(&factory.kms(), &signing_key_alias)
                    .await?;
            println!("kms         {alias} ready (SHOAL_FIRMWARE_SIGNING_KEY)");
        }
    }
    Ok(())
}

fn now() -> u64 {
    u64::try_from(shoal_shared::clock::now_ms()).unwrap_or_default()
}

async fn rollout(factory: &ClientFactory, command: RolloutCommand) -> anyhow::Result<()> {
    use shoal_cli::rollout as r;
    use shoal_shared::rollout::phases::PlanSettings;
    use shoal_shared::rollout::state::Command as Op;
    let actor = format!(
        "operator:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let operate = async |table: TableName, id: String, op: Op| -> anyhow::Result<()> {
        let table = RolloutTable::new(factory.dynamodb(), table);
        let (next, _) = r::operate(&table, &id, op, &actor, now()).await?;
        println!(
            "rollout {id} is {:?} (revision {})",
            next.status, next.revision
        );
        Ok(())
    };
    match command {
        RolloutCommand::Start {
            image:
                ImageArgs {
                    model,
                    hardware,
                    version,
                },
            rollback_to,
            id,
            canary_percent,
            staged,
            soak_s,
            canary_max_failure_percent,
            staged_max_failure_percent,
            min_reports,
            max_new_per_minute,
            table,
            firmware_table,
        } => {
            let request = r::StartRequest {
                id,
                model,
                hardware,
                version,
                rollback_to,
                settings: PlanSettings {
                    canary_percent,
                    staged_percents: staged,
                    soak_ms: soak_s * 1000,
                    canary_max_failure_rate: canary_max_failure_percent / 100.0,
                    staged_max_failure_rate: staged_max_failure_percent / 100.0,
                    min_reports,
                },
                max_new_per_minute,
            };
            let rollouts = RolloutTable::new(factory.dynamodb(), table);
            let firmware = FirmwareTable::new(factory.dynamodb(), firmware_table);
            let started = r::start(&rollouts, &firmware, request, now()).await?;
            println!("{}", serde_json::to_string_pretty(&started)?);
        }
        RolloutCommand::Status {
            id,
            json,
            table,
            firmware_table,
            device_table,
        } => {
            let report = r::status(
                &RolloutTable::new(factory.dynamodb(), table),
                &FirmwareTable::new(factory.dynamodb(), firmware_table),
                &DeviceTable::new(factory.dynamodb(), device_table),
                &factory.iot(),
                &id,
                now(),
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", r::render(&report));
            }
        }
        RolloutCommand::Pause { id, reason, table } => {
            operate(table, id, Op::Pause { reason }).await?
        }
        RolloutCommand::Resume { id, table } => operate(table, id, Op::Resume).await?,
        RolloutCommand::Rollback { id, reason, table } => {
            operate(table, id, Op::Rollback { reason }).await?
        }
    }
    Ok(())
}
