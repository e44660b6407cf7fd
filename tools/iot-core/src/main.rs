//! `shoal-iot-core`: the local AWS IoT Core. Started by `tools/localstack/stack` beside moto.
//!
//! It creates (once) a local CA in `--state-dir` (`ca.pem`: give it to clients as their CA file),
//! signs a server certificate for `localhost` and `127.0.0.1`, and serves MQTT over TLS with
//! client certificates on `--listen` (AWS's port 8883) and, with `--listen-alpn`, on a second
//! address that takes ALPN `x-amzn-mqtt-ca` (AWS's port 443). Certificates are checked against
//! the IoT registry at `AWS_ENDPOINT_URL` (moto's, locally). With `--listen-http` it also serves
//! AWS IoT's data plane over HTTP (shadows and Publish) on the same broker and shadows.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use shoal_aws::client::ClientFactory;
use shoal_iot_core::broker::Broker;
use shoal_iot_core::connection::{self, Settings};
use shoal_iot_core::dataplane::serve_http;
use shoal_iot_core::fleet;
use shoal_iot_core::identity::IotRegistry;
use shoal_iot_core::provisioning::{self, Fleet, ProvisioningService, RegistryAuthority, Tokens};
use shoal_iot_core::reserved::ShadowService;
use shoal_iot_core::rules::engine::{self, AwsSinks, RulesService};
use shoal_iot_core::rules::template;
use shoal_iot_core::server::{MAX_CONNECTIONS, accept_loop};
use shoal_iot_core::shadow::Shadows;
use shoal_iot_core::tls::{ALPN_MQTT_443, LocalCa, server_config};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Parser)]
#[command(about = "A local AWS IoT Core: MQTT over TLS with client certificates")]
struct Args {
    /// Where the local CA (`ca.pem`, `ca.key`) lives; created when missing.
    #[arg(long, default_value = ".local/iot-core")]
    state_dir: PathBuf,
    /// MQTT over TLS (AWS IoT Core's port 8883).
    #[arg(long, default_value = "127.0.0.1:8883")]
    listen: SocketAddr,
    /// MQTT over TLS with ALPN `x-amzn-mqtt-ca` (AWS IoT Core's port 443); off when absent.
    #[arg(long)]
    listen_alpn: Option<SocketAddr>,
    /// AWS IoT's data plane over HTTP (shadows and Publish): point
    /// `AWS_ENDPOINT_URL_IOT_DATA_PLANE` at `http://<this address>`; off when absent.
    #[arg(long)]
    listen_http: Option<SocketAddr>,
    /// The SAM template whose IoT rules (`AWS::IoT::TopicRule`) the core runs; none when absent.
    #[arg(long)]
    template: Option<PathBuf>,
    /// A template parameter's value, `Name=value` (repeatable); the template's defaults otherwise.
    #[arg(long = "parameter", value_parser = pair)]
    parameters: Vec<(String, String)>,
    /// What a `!Ref` or `!GetAtt` of a logical id means locally, `LogicalId=name-or-URL`
    /// (repeatable), e.g. `TelemetryQueue=http://127.0.0.1:4566/000000000000/shoal-local-telemetry`.
    #[arg(long = "resource", value_parser = pair)]
    resources: Vec<(String, String)>,
    /// Lambda's Invoke API (the local Lambda host, `http://127.0.0.1:9001`): the rules' Lambda
    /// actions invoke the template's functions there; without it those rules are not run.
    #[arg(long)]
    lambda_endpoint: Option<String>,
    /// Seconds a persistent session is kept after its client left (AWS's default: 1 hour).
    #[arg(long, default_value_t = 3600)]
    session_expiry_s: u64,
    /// Seconds between checks of a connected client's certificate: one made inactive or revoked
    /// ends its connections within this time.
    #[arg(long, default_value_t = 60)]
    certificate_recheck_s: u64,
    /// The most certificate rechecks of all connections together per second (each reads the
    /// registry 4–5 times); past it a connection's recheck waits for its next interval.
    #[arg(long, default_value_t = connection::DEFAULT_RECHECKS_PER_S)]
    certificate_rechecks_per_s: u32,
}

fn pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not Name=value"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_aws::logging::init();
    let args = Args::parse();
    let ca = LocalCa::load_or_create(&args.state_dir)?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let (certificate, key) = ca.server_certificate(&names)?;
    let ca_file = ca.ca_file.clone();
    let plain = TlsAcceptor::from(server_config(certificate.clone(), key.clone_key(), &[])?);
    let alpn = TlsAcceptor::from(server_config(certificate, key, &[ALPN_MQTT_443])?);

    let factory = ClientFactory::from_env().await;
    let registry = Arc::new(IotRegistry(factory.iot()));
    let shadows = Arc::new(Shadows::default());
    let mut broker = Broker::new(Duration::from_secs(args.session_expiry_s))
        .with_service(Arc::new(ShadowService(shadows.clone())));
    let (provisioning, provisioning_queue) = ProvisioningService::new();
    broker = broker.with_service(Arc::new(provisioning));
    let (jobs_service, jobs_queue) = shoal_iot_core::jobs::JobsService::new();
    broker = broker.with_service(Arc::new(jobs_service));
    let mut jobs = None;
    let lambda = args
        .lambda_endpoint
        .as_deref()
        .map(shoal_iot_core::lambda::LambdaClient::new);
    let mut fleet = Fleet {
        templates: Vec::new(),
        lambda: lambda.clone(),
    };
    if let Some(path) = &args.template {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let parsed = shoal_template::Template::parse(
            &text,
            &args.parameters.iter().cloned().collect(),
            &args.resources.iter().cloned().collect(),
        )?;
        let (templates, skipped) = fleet::load(&parsed);
        for template in &templates {
            tracing::info!(
                template = template.name,
                hook = template.hook,
                "provisioning template loaded"
            );
        }
        for (id, why) in skipped {
            tracing::warn!(id, why, "provisioning template not served");
        }
        fleet.templates = templates;
        let (policies, skipped) = fleet::policies(&parsed);
        for (id, why) in skipped {
            tracing::warn!(id, why, "policy not created");
        }
        for (name, document) in policies {
            deploy_policy(&factory.iot(), &name, &document).await;
        }
        let (thing_types, skipped) = fleet::thing_types(&parsed);
        for (id, why) in skipped {
            tracing::warn!(id, why, "thing type not created");
        }
        for (name, searchable) in thing_types {
            let created = factory
                .iot()
                .create_thing_type()
                .thing_type_name(&name)
                .thing_type_properties(
                    aws_sdk_iot::types::ThingTypeProperties::builder()
                        .set_searchable_attributes(Some(searchable))
                        .build(),
                )
                .send()
                .await;
            match created {
                Ok(_) => tracing::info!(thing_type = name, "thing type created"),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_resource_already_exists_exception()) => {}
                Err(e) => {
                    tracing::error!(thing_type = name, error = %aws_sdk_iot::error::DisplayErrorContext(e), "CreateThingType failed")
                }
            }
        }
        let loaded = template::load(
            &text,
            &args.parameters.iter().cloned().collect(),
            &args.resources.iter().cloned().collect(),
            args.lambda_endpoint.is_some(),
        )?;
        for rule in &loaded.rules {
            tracing::info!(rule = rule.name, from = rule.statement.from, "rule loaded");
        }
        for (id, why) in &loaded.skipped {
            tracing::warn!(rule = id, why, "rule not run");
        }
        let (service, queue) = RulesService::new(loaded.rules);
        broker = broker.with_service(Arc::new(service));
        jobs = Some(queue);
    }
    let broker = Arc::new(broker);
    let authority = RegistryAuthority {
        iot: factory.iot(),
        ca,
    };
    tokio::spawn(provisioning::run(
        provisioning_queue,
        Arc::new(authority),
        Arc::new(Tokens::default()),
        Arc::new(fleet),
        broker.clone(),
    ));
    shoal_iot_core::jobs::spawn(
        jobs_queue,
        Arc::new(shoal_iot_core::jobs::RegistryJobs::new(factory.iot())),
        Arc::new(shoal_iot_core::jobs::Executions::default()),
        broker.clone(),
    );
    if let Some(queue) = jobs {
        let sdk = factory.sdk_config();
        let sinks = AwsSinks {
            sqs: aws_sdk_sqs::Client::new(sdk),
            kinesis: aws_sdk_kinesis::Client::new(sdk),
            s3: factory.s3(),
            lambda,
        };
        tokio::spawn(engine::run(queue, Arc::new(sinks), broker.clone()));
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let settings = Settings {
        certificate_recheck: Duration::from_secs(args.certificate_recheck_s.max(1)),
        rechecks_per_s: args.certificate_rechecks_per_s.max(1),
    };

    let listener = TcpListener::bind(args.listen).await?;
    let mut tasks = vec![tokio::spawn(accept_loop(
        listener,
        plain,
        None,
        broker.clone(),
        registry.clone(),
        slots.clone(),
        settings,
    ))];
    if let Some(addr) = args.listen_alpn {
        let listener = TcpListener::bind(addr).await?;
        tasks.push(tokio::spawn(accept_loop(
            listener,
            alpn,
            Some(ALPN_MQTT_443),
            broker.clone(),
            registry,
            slots,
            settings,
        )));
    }
    if let Some(addr) = args.listen_http {
        let listener = TcpListener::bind(addr).await?;
        tasks.push(tokio::spawn(serve_http(listener, shadows, broker.clone())));
    }
    let sweeper = broker.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            sweeper.expire_sessions();
        }
    });
    // The stack script waits for this line.
    println!(
        "shoal-iot-core: MQTT on {} (CA {})",
        args.listen,
        ca_file.display()
    );
    for task in tasks {
        task.await?;
    }
    Ok(())
}

/// Creates IoT policy `name` with `document` as CloudFormation would deploy it; when it exists,
/// its document becomes the default version (the oldest non-default version is deleted when
/// AWS's five versions are reached).
async fn deploy_policy(iot: &aws_sdk_iot::Client, name: &str, document: &str) {
    let created = iot
        .create_policy()
        .policy_name(name)
        .policy_document(document)
        .send()
        .await;
    let exists = match created {
        Ok(_) => {
            tracing::info!(policy = name, "policy created");
            return;
        }
        Err(e) => e
            .as_service_error()
            .is_some_and(|e| e.is_resource_already_exists_exception()),
    };
    if !exists {
        tracing::error!(policy = name, "CreatePolicy failed");
        return;
    }
    if let Ok(versions) = iot.list_policy_versions().policy_name(name).send().await {
        let versions = versions.policy_versions.unwrap_or_default();
        if versions.len() >= 5
            && let Some(oldest) = versions
                .iter()
                .filter(|v| !v.is_default_version)
                .filter_map(|v| v.version_id.clone())
                .min_by_key(|id| id.parse::<u64>().unwrap_or(0))
        {
            let _ = iot
                .delete_policy_version()
                .policy_name(name)
                .policy_version_id(oldest)
                .send()
                .await;
        }
    }
    match iot
        .create_policy_version()
        .policy_name(name)
        .policy_document(document)
        .set_as_default(true)
        .send()
        .await
    {
        Ok(_) => tracing::info!(policy = name, "policy updated"),
        Err(e) => {
            tracing::error!(policy = name, error = %aws_sdk_iot::error::DisplayErrorContext(e), "CreatePolicyVersion failed")
        }
    }
}
