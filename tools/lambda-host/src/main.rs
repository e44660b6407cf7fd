//! `shoal-lambda-host`: the local Lambda host. Started by `tools/localstack/stack` beside moto
//! and the local IoT Core; serves Lambda's Invoke API on `--listen` and runs the template's
//! event source mappings and schedules against `AWS_ENDPOINT_URL`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use shoal_aws::client::ClientFactory;
use shoal_lambda_host::host::{Host, Settings};
use shoal_lambda_host::runtime::Environment;
use shoal_lambda_host::{SqsDestinations, api, functions, sources};
use shoal_template::Template;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(about = "A local Lambda host: the SAM template's functions behind Lambda's Invoke API")]
struct Args {
    /// The SAM template whose functions run here.
    #[arg(long, default_value = "infra/template.yaml")]
    template: PathBuf,
    /// A template parameter's value, `Name=value` (repeatable); the template's defaults otherwise.
    #[arg(long = "parameter", value_parser = pair)]
    parameters: Vec<(String, String)>,
    /// What a `!Ref` or `!GetAtt` of a logical id means locally, `LogicalId=name-or-URL`
    /// (repeatable).
    #[arg(long = "resource", value_parser = pair)]
    resources: Vec<(String, String)>,
    /// Where the functions' binaries are (`cargo build` puts them in target/debug).
    #[arg(long, default_value = "target/debug")]
    bin_dir: PathBuf,
    /// Lambda's Invoke API: point `AWS_ENDPOINT_URL_LAMBDA` at `http://<this address>`.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// The functions' logs, `<function>.log` each.
    #[arg(long, default_value = ".local/lambda")]
    log_dir: PathBuf,
    /// Execution environments per function without reserved concurrency.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// Milliseconds before the first retry of a failed asynchronous invocation, doubled for the
    /// second (AWS waits about a minute, then two).
    #[arg(long, default_value_t = 1000)]
    async_retry_delay_ms: u64,
    /// Run no schedules (the template's `Schedule` events).
    #[arg(long)]
    no_schedules: bool,
}

fn pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not Name=value"))
}

/// The host's variables every function gets: the endpoints and credentials of the local stack
/// (AWS_*), and what a process needs to run (PATH, HOME, RUST_LOG).
fn passed_environment() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            (k.starts_with("AWS_") && !k.starts_with("AWS_LAMBDA_"))
                || matches!(k.as_str(), "PATH" | "HOME" | "RUST_LOG" | "RUST_BACKTRACE")
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_aws::logging::init();
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.template)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.template.display()))?;
    let template = Template::parse(
        &text,
        &args.parameters.iter().cloned().collect(),
        &args.resources.iter().cloned().collect(),
    )?;
    let loaded = functions::load(&template, &args.template, &args.bin_dir);
    for function in &loaded.functions {
        tracing::info!(function = function.name, binary = %function.binary.display(), "function loaded");
    }
    for (id, why) in &loaded.skipped {
        tracing::warn!(id, why, "not run");
    }
    let factory = ClientFactory::from_env().await;
    let sdk = factory.sdk_config();
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let kinesis = aws_sdk_kinesis::Client::new(sdk);
    let settings = Settings {
        concurrency: args.concurrency.max(1),
        async_retry_delay: Duration::from_millis(args.async_retry_delay_ms),
        environment: Environment {
            passed: passed_environment(),
            log_dir: args.log_dir.clone(),
        },
    };
    let host = Host::start(
        loaded.functions,
        &settings,
        Arc::new(SqsDestinations(sqs.clone())),
    );
    sources::start(&host, loaded.mappings, sqs, kinesis).await;
    // Bound only now: the stack waits for the port, and by then every mapping polls.
    let listener = TcpListener::bind(args.listen).await?;
    if !args.no_schedules {
        sources::schedule(&host, loaded.schedules);
    }
    // The stack script waits for this line: the mappings poll from here on.
    println!(
        "shoal-lambda-host: Invoke API on http://{} ({} functions)",
        args.listen,
        host.functions().count()
    );
    api::serve(listener, host).await;
    Ok(())
}
