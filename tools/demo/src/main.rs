//! `shoal-demo`: runs the demo scenario against the local stack and writes the report
//! (`make demo` starts the stack and runs this).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use shoal_demo::scenario::{DemoPlan, run};
use shoal_demo::stack::Stack;

/// Run a simulated fleet through the local stack and report what the stores hold.
#[derive(Parser)]
#[command(name = "shoal-demo", version, about)]
struct Args {
    /// Manifest devices to simulate (at least 24: every model and revision needs 2 devices in
    /// each rollout phase).
    #[arg(long, env = "DEMO_DEVICES", default_value_t = 200, value_parser = clap::value_parser!(u32).range(24..=5_000))]
    devices: u32,
    /// Where the report, the event log and the `config set` report go.
    #[arg(long, default_value = "target/demo")]
    out_dir: PathBuf,
    /// Seed of the simulator's random choices.
    #[arg(long, default_value_t = 16)]
    seed: u64,
    /// Telemetry period of every device, seconds (the configuration later changes one
    /// building's); default 10, or devices / 20 for larger fleets (the local stack takes about 20
    /// messages a second).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600))]
    interval_s: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stack = Arc::new(Stack::from_env().await?);
    let mut plan = DemoPlan::new(args.devices as usize, args.out_dir.clone());
    plan.seed = args.seed;
    if let Some(interval_s) = args.interval_s {
        plan.interval = Duration::from_secs(interval_s);
    }
    let outcome = run(stack.clone(), &plan).await?;
    println!("reading the run back from the stores…");
    let summary = shoal_demo::stores::summarise(&stack, &outcome).await?;
    print!("{}", shoal_demo::report::summary_text(&outcome, &summary));
    let (html, png) = shoal_demo::report::write(&args.out_dir, &outcome, &summary)?;
    if let Some(cpu) = outcome.simulator_cpu_ms {
        println!(
            "simulated work: {:.1} s of CPU for {} devices over {:.0} s",
            cpu as f64 / 1000.0,
            plan.devices,
            (outcome.ended_ms - outcome.started_ms) as f64 / 1000.0
        );
    }
    println!("report: {}\nfigure: {}", html.display(), png.display());
    if !summary.balanced() {
        anyhow::bail!("the telemetry does not balance: see the summary");
    }
    Ok(())
}
