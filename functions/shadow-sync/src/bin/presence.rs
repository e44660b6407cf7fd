use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use serde_json::Value;
use shadow_sync::edges::{IotAlerts, PresenceRegistry};
use shadow_sync::presence::{FOREIGN_PRINCIPAL, PresenceAnswer, PresenceConfig, handle};
use shoal_aws::client::ClientFactory;
use shoal_aws::config::{self, ProcessEnv, TableName, vars};
use shoal_aws::device_table::DeviceTable;
use shoal_aws::manifest_table::ManifestTable;
use shoal_core::clock::now_ms;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shoal_aws::logging::init();
    let config = PresenceConfig::from_source(&ProcessEnv)?;
    let table: TableName = config::required(&ProcessEnv, vars::DEVICE_TABLE)?;
    let factory = ClientFactory::from_env().await;
    let manifest: TableName = config::required(&ProcessEnv, vars::MANIFEST_TABLE)?;
    let registry = PresenceRegistry {
        devices: DeviceTable::new(factory.dynamodb(), table),
        manifest: ManifestTable::new(factory.dynamodb(), manifest),
    };
    let alerts = IotAlerts(factory.iot_data());
    let (config, registry, alerts) = (&config, &registry, &alerts);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let now = u64::try_from(now_ms()).unwrap_or_default();
        let answer = handle(event.payload, config, registry, alerts, now)
            .await
            .map_err(|e| Diagnostic {
                error_type: "RetryLater".into(),
                error_message: e.to_string(),
            })?;
        tracing::info!(answer = %serde_json::to_string(&answer).unwrap_or_default(), "presence");
        let counts = match &answer {
            PresenceAnswer::Event(e) => vec![
                ("Applied", u64::from(e.outcome == "applied")),
                ("Stale", u64::from(e.outcome == "stale")),
                ("Rejected", u64::from(e.outcome == "rejected")),
                ("Ignored", u64::from(e.outcome == "ignored")),
                (
                    "ForeignPrincipal",
                    u64::from(e.ignored_because == Some(FOREIGN_PRINCIPAL)),
                ),
            ],
            PresenceAnswer::Sweep(s) => vec![
                ("OfflinePastThreshold", s.offline_past_threshold as u64),
                ("Alerted", s.alerted as u64),
                ("ReturnedMeanwhile", s.returned_meanwhile as u64),
                ("AlertsFailed", s.failed as u64),
            ],
        };
        println!(
            "{}",
            shoal_aws::metrics::emf_counts(now_ms(), &[("Function", "presence")], &counts)
        );
        Ok::<_, Diagnostic>(answer)
    }))
    .await
}
