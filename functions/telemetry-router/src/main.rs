// The router's future nests deeply (handler → route → settle → write_checked → the SDK call);
// its layout needs more than the default query depth.
#![recursion_limit = "256"]

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::value::RawValue;
use shoal_aws::client::ClientFactory;
use shoal_aws::config::ProcessEnv;
use shoal_aws::lambda::diagnostic;
use telemetry_router::batch::Trigger;
use telemetry_router::edges::{S3Archive, S3Quarantine, TimestreamSink};
use telemetry_router::handler::{RouterConfig, handle};
use telemetry_router::router::{Edges, LambdaDeadline};

/// Time kept back from the invocation's deadline for the store call in flight and the answer (at
/// most a quarter of the invocation's time: `LambdaDeadline::starting_now`).
const DEADLINE_RESERVE_MS: i64 = 3_000;
/// The longest one store call (with its retries) may take: inside the reserve.
const OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(2_500);

#[tokio::main]
async fn main() -> Result<(), Error> {
    shoal_aws::logging::init();
    let config = RouterConfig::from_source(&ProcessEnv)?;
    let factory = ClientFactory::from_env()
        .await
        .with_operation_timeout(OPERATION_TIMEOUT);
    let sink = TimestreamSink::new(factory.timestream_write().await?, config.timestream.clone());
    let s3 = factory.s3();
    let quarantine = S3Quarantine::new(s3.clone(), config.archive_bucket.clone());
    let archive = S3Archive::new(s3, config.archive_bucket.clone());
    let edges = Edges {
        sink: &sink,
        quarantine: &quarantine,
        archive: &archive,
    };
    let (config, edges) = (&config, &edges);
    // The event arrives as bytes: a batch is read straight into its SQS or Kinesis type, a direct
    // event with its duplicate keys noticed (CheckedJson), so the router can refuse a reading
    // whose device sent a key twice instead of keeping one value silently.
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<Box<RawValue>>| async move {
            let trigger = Trigger::from_slice(event.payload.get().as_bytes(), config.delivery)
                .map_err(|invalid| diagnostic(&invalid))?;
            let deadline = LambdaDeadline::starting_now(
                i64::try_from(event.context.deadline).unwrap_or(i64::MAX),
                DEADLINE_RESERVE_MS,
            );
            let (_counts, answer) =
                handle(trigger, config, edges, &event.context.request_id, &deadline).await;
            answer.map_err(|retry| diagnostic(&retry))
        },
    ))
    .await
}
