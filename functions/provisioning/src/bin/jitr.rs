use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use provisioning::jitr::{JitrConfig, RegistrationEvent, handle_registration, metrics_line};
use provisioning::registry::IotRegistry;
use shoal_aws::client::ClientFactory;
use shoal_aws::config::ProcessEnv;
use shoal_aws::device_table::DeviceTable;
use shoal_aws::lambda::diagnostic;
use shoal_aws::manifest_table::ManifestTable;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shoal_aws::logging::init();
    let config = JitrConfig::from_source(&ProcessEnv)?;
    let factory = ClientFactory::from_env().await;
    let manifest = ManifestTable::new(factory.dynamodb(), config.manifest_table.clone());
    let thing_type = std::env::var(shoal_aws::config::vars::DEVICE_THING_TYPE)
        .ok()
        .filter(|t| !t.is_empty());
    let registry = IotRegistry::new(&factory).with_thing_type(thing_type);
    let devices = DeviceTable::new(factory.dynamodb(), config.device_table.clone());
    let (config, manifest, registry, devices) = (&config, &manifest, &registry, &devices);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<RegistrationEvent>| async move {
            let outcome = handle_registration(&event.payload, registry, manifest, devices, config)
                .await
                .map_err(|e| diagnostic(&e))?;
            println!("{}", metrics_line(&outcome, shoal_core::clock::now_ms()));
            Ok::<_, Diagnostic>(format!("{outcome:?}"))
        },
    ))
    .await
}
