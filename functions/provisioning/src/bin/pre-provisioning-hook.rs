use lambda_runtime::{Error, LambdaEvent, service_fn};
use provisioning::hook::{DEFAULT_DEADLINE, HookConfig, handle};
use shoal_shared::aws::ClientFactory;
use shoal_shared::config::ProcessEnv;
use shoal_shared::manifest_table::ManifestTable;
use shoal_shared::provisioning::{HookRequest, HookResponse};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shoal_shared::logging::init();
    let config = HookConfig::from_source(&ProcessEnv)?;
    let factory = ClientFactory::from_env().await;
    let manifest = ManifestTable::new(factory.dynamodb(), config.manifest_table.clone());
    let (config, manifest) = (&config, &manifest);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<HookRequest>| async move {
            Ok::<HookResponse, Error>(
                handle(
                    &event.payload,
                    manifest,
                    &config.template_models,
                    DEFAULT_DEADLINE,
                )
                .await,
            )
        },
    ))
    .await
}
