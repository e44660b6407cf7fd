//! `shoal`: parses the command line and hands each command to its module (`shoal_cli::<module>::run`).

use clap::{Parser, Subcommand};
use shoal_aws::client::ClientFactory;
use shoal_cli::{claim, decommission, firmware, group_config, manifest, resources, rollout, smoke};

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
    Smoke(smoke::Args),
    /// Device lifecycle operations.
    Device {
        #[command(subcommand)]
        command: decommission::Command,
    },
    /// The firmware registry.
    Firmware {
        #[command(subcommand)]
        command: firmware::Command,
    },
    /// Firmware rollouts: canary → staged → general, pause, resume, roll back.
    Rollout {
        #[command(subcommand)]
        command: rollout::Command,
    },
    /// Fleet configuration through device shadows.
    Config {
        #[command(subcommand)]
        command: group_config::Command,
    },
    /// Fleet provisioning by claim: the claim certificate and the fleet's firmware key that go
    /// into every factory image.
    Provisioning {
        #[command(subcommand)]
        command: claim::Command,
    },
    /// Factory manifest operations.
    Manifest {
        #[command(subcommand)]
        command: manifest::Command,
    },
    /// Create, if missing, the data resources infra/template.yaml creates on AWS (Timestream
    /// database and table, archive and firmware buckets, manifest, device, firmware and rollout
    /// tables, the firmware signing key) on the configured endpoint.
    InitLocal(resources::InitLocalArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let factory = ClientFactory::from_env().await;
    match cli.command {
        Command::Smoke(args) => smoke::run(&factory, args).await,
        Command::Device { command } => decommission::run(&factory, command).await,
        Command::Firmware { command } => firmware::run(&factory, command).await,
        Command::Rollout { command } => rollout::run(&factory, command).await,
        Command::Config { command } => group_config::run(&factory, command).await,
        Command::Manifest { command } => manifest::run(&factory, command).await,
        Command::Provisioning { command } => claim::run(&factory, command).await,
        Command::InitLocal(args) => resources::run(&factory, args).await,
    }
}
