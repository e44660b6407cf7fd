use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use serde_json::Value;
use shadow_sync::documents::{SyncConfig, handle, metrics_line};
use shadow_sync::edges::Registry;
use shoal_aws::client::ClientFactory;
use shoal_aws::config::ProcessEnv;
use shoal_aws::device_table::DeviceTable;
use shoal_aws::lambda::diagnostic;
use shoal_aws::shadow_store::IotShadowStore;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shoal_aws::logging::init();
    let config = SyncConfig::from_source(&ProcessEnv)?;
    let factory = ClientFactory::from_env().await;
    let store = IotShadowStore::new(factory.iot_data());
    let registry = Registry(DeviceTable::new(
        factory.dynamodb(),
        config.device_table.clone(),
    ));
    let (config, store, registry) = (&config, &store, &registry);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let summary = handle(event.payload, config, store, registry)
            .await
            .map_err(|e| diagnostic(&e))?;
        tracing::info!(summary = %serde_json::to_string(&summary).unwrap_or_default(), "documents");
        println!("{}", metrics_line(&summary, shoal_core::clock::now_ms()));
        Ok::<_, Diagnostic>(summary)
    }))
    .await
}
