//! The template deployed a second time beside the stack's, with other parameters: a local IoT
//! Core and a local Lambda host of its own on free ports, against the stack's moto and with the
//! stack's resources (the `--resource` list the stack wrote to `.local/template-resources`), so
//! that what the stack does not run — the `kinesis` and `direct` telemetry deliveries — is tested
//! as deployed. Both processes (and the function processes the host starts) stop when it drops.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::v5::MqttOptions;
use rumqttc::{TlsConfiguration, Transport};

use crate::local;

/// A second deployment; stopped on drop.
pub struct Deployment {
    /// Its MQTT over TLS port (the stack's CA signs its server certificate).
    pub mqtt_port: u16,
    core: Child,
    host: Child,
    /// Its logs: `iot-core.log`, `lambda-host.log`, `lambda/<Function>.log`.
    pub dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

impl Deployment {
    /// Starts the Lambda host, then the IoT Core, with `parameters` and the stack's resources
    /// (`resources` replace some of them), and waits until both listen (30 s at most).
    ///
    /// # Panics
    /// When the stack has not written its resources, a binary is missing, or a process exits or
    /// does not listen in time (its log is in the message).
    pub fn start(parameters: &[(&str, &str)], resources: &[(&str, &str)]) -> Self {
        let root = crate::repo_root();
        let listed = std::fs::read_to_string(root.join(".local/template-resources")).expect(
            ".local/template-resources (written by tools/localstack/stack start): start the stack",
        );
        let mut args: Vec<String> = vec![
            "--template".into(),
            root.join("infra/template.yaml").display().to_string(),
        ];
        for pair in listed.split_whitespace().filter(|w| *w != "--resource") {
            let id = pair.split('=').next().unwrap_or_default();
            if resources.iter().all(|(r, _)| *r != id) {
                args.extend(["--resource".to_owned(), pair.to_owned()]);
            }
        }
        for (id, name) in resources {
            args.extend(["--resource".to_owned(), format!("{id}={name}")]);
        }
        for (name, value) in parameters {
            args.extend(["--parameter".to_owned(), format!("{name}={value}")]);
        }
        let dir = std::env::temp_dir().join(format!(
            "shoal-deployment-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (mqtt_port, http_port, lambda_port) = (free_port(), free_port(), free_port());
        let binary = |name: &str| {
            let path = root.join("target/debug").join(name);
            assert!(path.is_file(), "{} (cargo build -p {name})", path.display());
            path
        };
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let endpoint = local::endpoint();
        let host = {
            use std::os::unix::process::CommandExt;
            Command::new(binary("shoal-lambda-host"))
                .args(&args)
                .args([
                    "--bin-dir",
                    &root.join("target/debug").display().to_string(),
                ])
                .args(["--listen", &format!("127.0.0.1:{lambda_port}")])
                .args(["--log-dir", &dir.join("lambda").display().to_string()])
                .arg("--no-schedules")
                .env("AWS_ENDPOINT_URL", &endpoint)
                .env(
                    "AWS_ENDPOINT_URL_IOT_DATA_PLANE",
                    format!("http://127.0.0.1:{http_port}"),
                )
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(log("lambda-host.log"))
                .stderr(log("lambda-host.log"))
                .spawn()
                .expect("shoal-lambda-host")
        };
        let ca_file = std::env::var("SHOAL_IOT_CA_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join(".local/iot-core/ca.pem"));
        let core = Command::new(binary("shoal-iot-core"))
            .args(&args)
            .args([
                "--state-dir",
                &ca_file.parent().unwrap().display().to_string(),
            ])
            .args(["--listen", &format!("127.0.0.1:{mqtt_port}")])
            .args(["--listen-http", &format!("127.0.0.1:{http_port}")])
            .args([
                "--lambda-endpoint",
                &format!("http://127.0.0.1:{lambda_port}"),
            ])
            .args(["--certificate-recheck-s", "5"])
            .env("AWS_ENDPOINT_URL", &endpoint)
            .stdin(Stdio::null())
            .stdout(log("iot-core.log"))
            .stderr(log("iot-core.log"))
            .spawn()
            .expect("shoal-iot-core");
        let mut deployment = Self {
            mqtt_port,
            core,
            host,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for (port, name) in [(lambda_port, "lambda-host"), (mqtt_port, "iot-core")] {
            while !listening(port) {
                let exited = match name {
                    "lambda-host" => deployment.host.try_wait(),
                    _ => deployment.core.try_wait(),
                };
                let log = || {
                    std::fs::read_to_string(deployment.dir.join(format!("{name}.log")))
                        .unwrap_or_default()
                };
                assert!(matches!(exited, Ok(None)), "{name} exited: {}", log());
                assert!(
                    Instant::now() < deadline,
                    "{name} did not listen within 30 s: {}",
                    log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        deployment
    }

    /// MQTT options for `client_id` with `device`'s certificate (PEM, key PEM) on this
    /// deployment's core.
    pub fn options(&self, client_id: &str, (cert, key): &(Vec<u8>, Vec<u8>)) -> MqttOptions {
        let (_, _, ca) = local::iot_core();
        let mut options = MqttOptions::new(client_id, "localhost", self.mqtt_port);
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: Some((cert.clone(), key.clone())),
        }));
        options.set_keep_alive(Duration::from_secs(30));
        options
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = self.core.kill();
        // The host and its function processes are one process group.
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{}", self.host.id())])
            .status();
        let _ = self.core.wait();
        let _ = self.host.wait();
    }
}
