use std::io;

use clap::{Parser, Subcommand};
use shoal_shared::aws::ClientFactory;
use shoal_shared::config::{BucketName, TimestreamName, TimestreamTarget, vars};
use shoal_shared::ids::ThingName;

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
    /// Create, if missing, the data resources infra/template.yaml creates on AWS (Timestream
    /// database and table, archive bucket) on the configured endpoint.
    InitLocal {
        #[arg(long, env = vars::TIMESTREAM_DATABASE, default_value = "shoal_local")]
        database: TimestreamName,
        #[arg(long, env = vars::TIMESTREAM_TABLE, default_value = "telemetry")]
        table: TimestreamName,
        #[arg(long, env = vars::ARCHIVE_BUCKET, default_value = "shoal-local-archive")]
        bucket: BucketName,
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
        Command::InitLocal {
            database,
            table,
            bucket,
        } => {
            let target = TimestreamTarget { database, table };
            shoal_cli::resources::init_local(&factory, &target, &bucket, &mut io::stdout()).await?;
        }
    }
    Ok(())
}
