use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use ota_scheduler::edges::{Devices, JobsChannel, Registry};
use ota_scheduler::{AdvancerConfig, Edges, handle, metrics_lines};
use serde_json::Value;
use shoal_aws::alerts::IotAlerts;
use shoal_aws::client::ClientFactory;
use shoal_aws::config::ProcessEnv;
use shoal_aws::device_table::DeviceTable;
use shoal_aws::firmware_table::FirmwareTable;
use shoal_aws::lambda::diagnostic;
use shoal_aws::rollout_table::RolloutTable;
use shoal_aws::shadow_store::IotShadowStore;
use shoal_core::clock::now_ms;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shoal_aws::logging::init();
    let config = AdvancerConfig::from_source(&ProcessEnv)?;
    let factory = ClientFactory::from_env().await;
    let rollouts = RolloutTable::new(factory.dynamodb(), config.rollout_table.clone());
    let registry = Registry {
        iot: factory.iot(),
        devices: DeviceTable::new(factory.dynamodb(), config.device_table.clone()),
        firmware: FirmwareTable::new(factory.dynamodb(), config.firmware_table.clone()),
    };
    let delivery = Devices {
        s3: factory.s3(),
        bucket: config.firmware_bucket.to_string(),
        shadows: IotShadowStore::new(factory.iot_data()),
        jobs: config.jobs_role_arn.clone().map(|role| JobsChannel {
            iot: factory.iot(),
            presign_role_arn: role,
            region: factory.region_or_default(),
            url_ttl_s: config.url_ttl_s,
        }),
    };
    let alerts = IotAlerts(factory.iot_data());
    let edges = Edges {
        rollouts: &rollouts,
        fleet: &registry,
        delivery: &delivery,
        alerts: &alerts,
    };
    let (config, edges) = (&config, &edges);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let now = u64::try_from(now_ms()).unwrap_or_default();
        let summary = handle(&event.payload, edges, config, now)
            .await
            .map_err(|e| diagnostic(&e))?;
        for run in &summary.rollouts {
            tracing::info!(run = %serde_json::to_string(run).unwrap_or_default(), "rollout");
        }
        for line in metrics_lines(&summary, now_ms()) {
            println!("{line}");
        }
        if let Some(failed) = summary.failure() {
            // The schedule runs again in a minute; the error makes the failure visible.
            return Err(diagnostic(&failed));
        }
        Ok::<_, Diagnostic>(summary)
    }))
    .await
}
