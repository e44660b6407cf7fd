use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use serde_json::Value;
use shadow_sync::edges::{IotAlerts, PresenceRegistry};
use shadow_sync::presence::{PresenceConfig, handle, metrics_line};
use shoal_aws::client::ClientFactory;
use shoal_aws::config::ProcessEnv;
use shoal_aws::device_table::DeviceTable;
use shoal_aws::lambda::diagnostic;
use shoal_aws::manifest_table::ManifestTable;
use shoal_core::clock::now_ms;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shoal_aws::logging::init();
    let config = PresenceConfig::from_source(&ProcessEnv)?;
    let factory = ClientFactory::from_env().await;
    let registry = PresenceRegistry {
        devices: DeviceTable::new(factory.dynamodb(), config.device_table.clone()),
        manifest: ManifestTable::new(factory.dynamodb(), config.manifest_table.clone()),
    };
    let alerts = IotAlerts(factory.iot_data());
    let (config, registry, alerts) = (&config, &registry, &alerts);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let now = u64::try_from(now_ms()).unwrap_or_default();
        let answer = handle(event.payload, config, registry, alerts, now)
            .await
            .map_err(|e| diagnostic(&e))?;
        tracing::info!(answer = %serde_json::to_string(&answer).unwrap_or_default(), "presence");
        println!("{}", metrics_line(&answer, now_ms()));
        Ok::<_, Diagnostic>(answer)
    }))
    .await
}
