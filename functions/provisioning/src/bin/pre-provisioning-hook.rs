use lambda_runtime::{Error, LambdaEvent, service_fn};
use provisioning::hook::{DEFAULT_DEADLINE, Gate, HookConfig, handle, metrics_line};
use provisioning::registry::IotCertificates;
use shoal_aws::client::ClientFactory;
use shoal_aws::config::ProcessEnv;
use shoal_aws::device_table::DeviceTable;
use shoal_aws::manifest_table::ManifestTable;
use shoal_core::provisioning::{HookRequest, HookResponse};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shoal_aws::logging::init();
    let config = HookConfig::from_source(&ProcessEnv)?;
    let factory = ClientFactory::from_env().await;
    let manifest = ManifestTable::new(factory.dynamodb(), config.manifest_table.clone());
    let thing_type = std::env::var(shoal_aws::config::vars::DEVICE_THING_TYPE)
        .ok()
        .filter(|t| !t.is_empty());
    let certificates = IotCertificates::new(factory.iot()).with_thing_type(thing_type);
    let devices = DeviceTable::new(factory.dynamodb(), config.device_table.clone());
    let gate = Gate {
        manifest: &manifest,
        certificates: &certificates,
        devices: &devices,
        models: &config.template_models,
        claim_lease: config.claim_lease,
    };
    let gate = &gate;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<HookRequest>| async move {
            let response = handle(&event.payload, gate, DEFAULT_DEADLINE).await;
            println!("{}", metrics_line(&response, shoal_core::clock::now_ms()));
            Ok::<HookResponse, Error>(response)
        },
    ))
    .await
}
