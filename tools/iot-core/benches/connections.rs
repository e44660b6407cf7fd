//! The local IoT Core under load, on loopback: `CLIENTS` MQTT 3.1.1 clients connect over TLS with
//! client certificates (policies compiled per connection), stay idle, then each publishes
//! `PER_CLIENT` QoS 1 telemetry messages that the template's telemetry rule selects (IoT SQL
//! applied, one job queued per message for a counting sink).
//!
//! Two processes so that memory is the core's alone: this one runs the core (TLS listener,
//! broker, shadow and rules services, a registry in memory that holds every certificate ACTIVE
//! with an allow-all policy — the registry's own latency is moto's, not the core's) and measures
//! its resident memory; a child process (this binary with `--clients`) runs the clients.
//!
//! Prints: connections established and the time they took; resident memory per idle
//! connection; QoS 1 publishes acknowledged per second and the rule jobs that ran.
//! `cargo bench -p shoal-iot-core --bench connections` (`make bench-iot-core`); `CLIENTS` and
//! `PER_CLIENT` environment variables override 1,000 and 20.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use shoal_core::edge::EdgeError;
use shoal_iot_core::broker::Broker;
use shoal_iot_core::connection::Settings;
use shoal_iot_core::identity::{ACTIVE, Certificate, Registry};
use shoal_iot_core::policy::Thing;
use shoal_iot_core::reserved::ShadowService;
use shoal_iot_core::rules::engine::{self, RulesService, Sinks};
use shoal_iot_core::rules::template;
use shoal_iot_core::server::accept_loop;
use shoal_iot_core::shadow::Shadows;
use shoal_iot_core::tls::{LocalCa, server_config};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

const ALLOW_ALL: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every certificate is registered, ACTIVE, with an allow-all policy; no thing is attached.
#[derive(Debug)]
struct InMemoryRegistry;

impl Registry for InMemoryRegistry {
    async fn certificate(&self, certificate_id: &str) -> Result<Option<Certificate>, EdgeError> {
        Ok(Some(Certificate {
            arn: format!("arn:aws:iot:us-east-1:123456789012:cert/{certificate_id}"),
            status: ACTIVE.to_owned(),
        }))
    }

    async fn policies(&self, _: &str) -> Result<Vec<(String, String)>, EdgeError> {
        Ok(vec![("allow-all".into(), ALLOW_ALL.into())])
    }

    async fn attached_thing(&self, _: &str, _: &str) -> Result<Option<Thing>, EdgeError> {
        Ok(None)
    }
}

impl shoal_iot_core::jitr::CaRegistry for InMemoryRegistry {
    async fn ca_certificate(&self, _: &str) -> Result<Option<(String, String)>, EdgeError> {
        Ok(None)
    }

    async fn register(&self, _: &str, _: &str) -> Result<(), EdgeError> {
        Ok(())
    }
}

/// Counts what the rule's actions would send.
#[derive(Debug, Default)]
struct Counted(AtomicU64);

impl Sinks for Counted {
    async fn sqs(&self, _: &str, _: String) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn kinesis(&self, _: &str, _: &str, _: Vec<u8>) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn s3(&self, _: &str, _: &str, _: Vec<u8>) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn lambda(&self, _: &str, _: Vec<u8>) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The process's resident memory, bytes (`VmRSS`).
fn resident() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--clients") {
        let (port, ca) = (args[at + 1].parse().expect("port"), args[at + 2].clone());
        return clients(port, &ca);
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    core();
}

fn core() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let state = std::env::temp_dir().join(format!("shoal-bench-{}", std::process::id()));
        let ca = LocalCa::load_or_create(&state).expect("a local CA");
        let (certificate, key) = ca
            .server_certificate(&["localhost".to_owned()])
            .expect("a server certificate");
        let acceptor = TlsAcceptor::from(server_config(certificate, key, &[]).expect("TLS"));
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/template.yaml"))
            .expect("infra/template.yaml");
        let resources = BTreeMap::from([
            ("TelemetryQueue".to_owned(), "bench-queue".to_owned()),
            ("ArchiveBucket".to_owned(), "bench-bucket".to_owned()),
        ]);
        let loaded = template::load(&text, &BTreeMap::new(), &resources, false).expect("the template");
        let (rules, jobs) = RulesService::new(loaded.rules);
        let rules = Arc::new(rules);
        let broker = Arc::new(
            Broker::new(Duration::from_secs(60))
                .with_service(Arc::new(ShadowService(Arc::new(Shadows::default()))))
                .with_service(rules.clone()),
        );
        let counted = Arc::new(Counted::default());
        tokio::spawn(engine::run(jobs, counted.clone(), broker.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("an address").port();
        tokio::spawn(accept_loop(
            listener,
            acceptor,
            None,
            broker,
            Arc::new(InMemoryRegistry),
            Arc::new(Semaphore::new(20_000)),
            Settings {
                certificate_recheck: Duration::from_secs(3600),
                ..Settings::default()
            },
        ));

        let before = resident();
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .args(["--clients", &port.to_string(), &ca.ca_file.display().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the client process");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut stdin = child.stdin.take().expect("stdin");
        let connected = tokio::task::spawn_blocking(move || {
            let line = lines.next().and_then(Result::ok).unwrap_or_default();
            (line, lines)
        })
        .await
        .expect("the client process's report");
        let (report, mut lines) = connected;
        // Let the connections settle (lifecycle events, session state) before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = resident();
        let fields: Vec<&str> = report.split_whitespace().collect();
        let (clients, connect_s): (u64, f64) = (
            fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
            fields.get(2).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
        );
        println!("connections: {clients} established in {connect_s:.2} s ({:.0}/s)", clients as f64 / connect_s);
        println!(
            "memory: {:.1} MiB before, {:.1} MiB with them idle: {:.1} KiB per idle connection",
            before as f64 / 1_048_576.0,
            idle as f64 / 1_048_576.0,
            idle.saturating_sub(before) as f64 / 1024.0 / clients.max(1) as f64
        );
        writeln!(stdin, "go").expect("go");
        let published = tokio::task::spawn_blocking(move || lines.next().and_then(Result::ok).unwrap_or_default())
            .await
            .expect("the publish report");
        let fields: Vec<&str> = published.split_whitespace().collect();
        let (messages, publish_s): (u64, f64) = (
            fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
            fields.get(2).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
        );
        // The rule's jobs run behind the acknowledgements: wait for them (bounded).
        let waited = Instant::now();
        let settled = || counted.0.load(Ordering::Relaxed) + rules.dropped();
        while settled() < messages && waited.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let done_s = publish_s + waited.elapsed().as_secs_f64();
        let done = counted.0.load(Ordering::Relaxed);
        println!(
            "publishes: {messages} QoS 1 acknowledged in {publish_s:.2} s ({:.0}/s); {done} rule actions done in {done_s:.2} s ({:.0}/s), {} dropped",
            messages as f64 / publish_s,
            done as f64 / done_s,
            rules.dropped()
        );
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&state);
    });
}

/// The client process: connects, reports, waits for "go", publishes, reports.
fn clients(port: u16, ca_file: &str) {
    let count = setting("CLIENTS", 1000);
    let per_client = setting("PER_CLIENT", 20);
    let ca = std::fs::read(ca_file).expect("the CA file");
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec!["bench-device".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("a certificate");
    let auth = (cert.pem().into_bytes(), key.serialize_pem().into_bytes());
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async move {
        let started = Instant::now();
        let (acks_sender, mut acks) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (connected_sender, mut connected) = tokio::sync::mpsc::unbounded_channel::<()>();
        // A bounded number of handshakes at once, as a real fleet's reconnect storm is paced.
        let handshakes = Arc::new(Semaphore::new(64));
        let mut handles = Vec::with_capacity(count);
        for n in 0..count {
            let mut options = MqttOptions::new(format!("bench-{n}"), "localhost", port);
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca: ca.clone(),
                alpn: None,
                client_auth: Some(auth.clone()),
            }));
            options.set_keep_alive(Duration::from_secs(300));
            options.set_inflight(100);
            let (client, mut events) = AsyncClient::new(options, 128);
            let (acks_sender, connected_sender) = (acks_sender.clone(), connected_sender.clone());
            let permit = handshakes.clone().acquire_owned().await.expect("a permit");
            tokio::spawn(async move {
                let mut permit = Some(permit);
                while let Ok(event) = events.poll().await {
                    match event {
                        Event::Incoming(Packet::ConnAck(_)) => {
                            permit.take();
                            let _ = connected_sender.send(());
                        }
                        Event::Incoming(Packet::PubAck(_)) => {
                            let _ = acks_sender.send(());
                        }
                        _ => {}
                    }
                }
            });
            handles.push(client);
        }
        // Bounded: a client that cannot connect is reported, not waited for.
        let mut established = 0;
        while established < count {
            match tokio::time::timeout(Duration::from_secs(60), connected.recv()).await {
                Ok(Some(())) => established += 1,
                _ => break,
            }
        }
        println!(
            "connected {established} {:.3}",
            started.elapsed().as_secs_f64()
        );
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).expect("go");
        let started = Instant::now();
        let payload = br#"{"temp": 21.5, "hum": 40.25, "battery": 3.71}"#;
        let mut sends = Vec::with_capacity(count);
        for (n, client) in handles.iter().enumerate() {
            let client = client.clone();
            sends.push(tokio::spawn(async move {
                let topic = format!("dt/bench/bench-{n}/telemetry");
                for _ in 0..per_client {
                    client
                        .publish(&topic, QoS::AtLeastOnce, false, &payload[..])
                        .await
                        .expect("PUBLISH queued");
                }
            }));
        }
        for send in sends {
            send.await.expect("publishes queued");
        }
        let mut acknowledged = 0;
        while acknowledged < established * per_client {
            match tokio::time::timeout(Duration::from_secs(60), acks.recv()).await {
                Ok(Some(())) => acknowledged += 1,
                _ => break,
            }
        }
        println!(
            "published {acknowledged} {:.3}",
            started.elapsed().as_secs_f64()
        );
        for client in handles {
            let _ = client.try_disconnect();
        }
    });
}
