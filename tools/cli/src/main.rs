use std::io;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shoal_cli::decommission::ThingFate;
use shoal_cli::manifest::ImportError;
use shoal_shared::aws::ClientFactory;
use shoal_shared::config::{BucketName, TableName, TimestreamName, TimestreamTarget, vars};
use shoal_shared::ids::ThingName;
use shoal_shared::manifest_table::ManifestTable;
use shoal_shared::provisioning::Serial;

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
    /// Factory manifest operations.
    Manifest {
        #[command(subcommand)]
        command: ManifestCommand,
    },
    /// Create, if missing, the data resources infra/template.yaml creates on AWS (Timestream
    /// database and table, archive bucket) on the configured endpoint.
    InitLocal {
        #[arg(long, env = vars::TIMESTREAM_DATABASE, default_value = "shoal_local")]
        database: TimestreamName,
        #[arg(long, env = vars::TIMESTREAM_TABLE, default_value = "telemetry")]
        table: TimestreamName,
        #[arg(long, env = vars::ARCHIVE_BUCKET, default_value = "shoal-local-archive")]
        bucket: BucketName,
        #[arg(long, env = vars::MANIFEST_TABLE, default_value = "shoal-local-manifest")]
        manifest_table: TableName,
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
    },
}

#[derive(Subcommand)]
enum ManifestCommand {
    /// Import new devices from a CSV (serial,model,batch,thing_group,attributes): every row is
    /// checked first and nothing is written if any row is bad.
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
                },
        } => {
            let manifest = ManifestTable::new(factory.dynamodb(), table);
            let fate = if delete_thing {
                ThingFate::Delete
            } else {
                ThingFate::Retire
            };
            shoal_cli::decommission::decommission(
                &factory,
                &manifest,
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
        Command::InitLocal {
            database,
            table,
            bucket,
            manifest_table,
        } => {
            let target = TimestreamTarget { database, table };
            shoal_cli::resources::init_local(&factory, &target, &bucket, &mut io::stdout()).await?;
            ManifestTable::new(factory.dynamodb(), manifest_table.clone())
                .ensure_exists()
                .await?;
            println!("dynamodb    {manifest_table} ready");
        }
    }
    Ok(())
}
