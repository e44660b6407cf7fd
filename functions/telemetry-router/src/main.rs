use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use serde_json::Value;
use shoal_shared::aws::ClientFactory;
use shoal_shared::config::ProcessEnv;
use telemetry_router::edges::{S3Quarantine, TimestreamSink};
use telemetry_router::handler::{RouterConfig, handle};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shoal_shared::logging::init();
    let config = RouterConfig::from_source(&ProcessEnv)?;
    let factory = ClientFactory::from_env().await;
    let sink = TimestreamSink::new(factory.timestream_write().await?, config.timestream.clone());
    let quarantine = S3Quarantine::new(factory.s3(), config.archive_bucket.clone());
    let (config, sink, quarantine) = (&config, &sink, &quarantine);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let (_counts, answer) = handle(event.payload, config, sink, quarantine).await;
        answer.map_err(|retry| Diagnostic {
            error_type: "ReturnedForRetry".into(),
            error_message: retry.to_string(),
        })
    }))
    .await
}
