//! Execution environments: one process of a function's built binary each, behind its own
//! Lambda Runtime API on 127.0.0.1 (`AWS_LAMBDA_RUNTIME_API`), given one invocation at a time.
//! An environment is reused while it stays healthy; one that times out, crashes or reports an
//! init error is killed and replaced on the next invocation, as Lambda does.
//!
//! <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>,
//! <https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime>

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use crate::functions::FunctionSpec;

/// The largest response a function may return (synchronous invocations: 6 MB).
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;
/// How long a new environment may take to ask for its first invocation (Lambda's init limit).
pub const INIT_LIMIT: Duration = Duration::from_secs(10);

/// How one invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The function's response.
    Response(Bytes),
    /// The function failed: Lambda's error document (`errorType`, `errorMessage`), and whether
    /// the environment survived it.
    Error(Bytes),
}

impl Outcome {
    /// An error document of `error_type` with `message`, as Lambda writes its own.
    pub fn error(error_type: &str, message: &str) -> Self {
        Self::Error(Bytes::from(
            serde_json::json!({"errorType": error_type, "errorMessage": message}).to_string(),
        ))
    }

    /// Whether the function failed.
    pub fn is_error(&self) -> bool {
        matches!(self, Self::Error(_))
    }

    /// The response or error document.
    pub fn payload(&self) -> &Bytes {
        match self {
            Self::Response(b) | Self::Error(b) => b,
        }
    }
}

struct Invocation {
    request_id: String,
    payload: Bytes,
    timeout: Duration,
    started: oneshot::Sender<()>,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Current {
    request_id: String,
    reply: Option<oneshot::Sender<Outcome>>,
}

struct Api {
    function_arn: String,
    next: tokio::sync::Mutex<mpsc::Receiver<Invocation>>,
    current: Mutex<Current>,
    init_error: Mutex<Option<Bytes>>,
}

/// Where an environment's process writes its logs, and what else it is given.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Variables passed through from the host (`AWS_ENDPOINT_URL`, credentials, region…).
    pub passed: BTreeMap<String, String>,
    /// The directory of the function logs (`<function>.log`, appended): the local CloudWatch
    /// log group.
    pub log_dir: PathBuf,
}

/// One execution environment.
pub struct Instance {
    child: Child,
    invocations: mpsc::Sender<Invocation>,
    api: Arc<Api>,
    server: tokio::task::JoinHandle<()>,
    /// Whether it has served an invocation (not a cold start any more).
    pub warm: bool,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.server.abort();
        let _ = self.child.start_kill();
    }
}

impl Instance {
    /// Starts `spec`'s binary behind a new Runtime API.
    ///
    /// # Errors
    /// The listener could not bind or the binary could not start.
    pub async fn start(spec: &FunctionSpec, env: &Environment) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (invocations, next) = mpsc::channel(1);
        let api = Arc::new(Api {
            function_arn: spec.arn.clone(),
            next: tokio::sync::Mutex::new(next),
            current: Mutex::new(Current::default()),
            init_error: Mutex::new(None),
        });
        let server = tokio::spawn(serve(listener, api.clone()));
        std::fs::create_dir_all(&env.log_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.log_dir.join(format!("{}.log", spec.name)))?;
        let stream = format!(
            "{}/[$LATEST]{}",
            time::OffsetDateTime::now_utc().date(),
            uuid::Uuid::new_v4().simple()
        );
        let mut command = Command::new(&spec.binary);
        command
            .env_clear()
            .envs(&env.passed)
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", &spec.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                spec.memory_mb.to_string(),
            )
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", spec.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", stream)
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
            .env("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023")
            .env("_HANDLER", "bootstrap")
            .env("TZ", ":UTC")
            .envs(spec.log_format.iter().map(|f| ("AWS_LAMBDA_LOG_FORMAT", f)))
            .envs(spec.log_level.iter().map(|l| ("AWS_LAMBDA_LOG_LEVEL", l)))
            .envs(&spec.environment)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(dir) = spec.binary.parent() {
            command.env("LAMBDA_TASK_ROOT", dir).current_dir(dir);
        }
        let child = command.spawn()?;
        Ok(Self {
            child,
            invocations,
            api,
            server,
            warm: false,
        })
    }

    /// Runs one invocation: `Ok` with its outcome while the environment stays usable, `Err` with
    /// the outcome when the environment must be thrown away (timed out, crashed, failed to
    /// initialise).
    pub async fn invoke(
        &mut self,
        request_id: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Outcome, Outcome> {
        let (started, was_started) = oneshot::channel();
        let (reply, replied) = oneshot::channel();
        let sent = self.invocations.try_send(Invocation {
            request_id: request_id.to_owned(),
            payload,
            timeout,
            started,
            reply,
        });
        if sent.is_err() {
            return Err(Outcome::error(
                "Runtime.Unavailable",
                "the environment is busy",
            ));
        }
        let cold = !self.warm;
        self.warm = true;
        // Phase 1: the runtime asks for the invocation (a new process initialises first).
        let limit = if cold {
            INIT_LIMIT
        } else {
            Duration::from_secs(1) + timeout
        };
        tokio::select! {
            got = was_started => {
                if got.is_err() {
                    return Err(self.died(request_id).await);
                }
            }
            status = self.child.wait() => {
                let _ = status;
                return Err(self.died(request_id).await);
            }
            () = tokio::time::sleep(limit) => {
                let _ = self.child.start_kill();
                return Err(Outcome::error(
                    "Runtime.InitTimeout",
                    &format!("RequestId: {request_id} Error: the runtime did not ask for an invocation within {} s", limit.as_secs()),
                ));
            }
        }
        // Phase 2: the function runs until it answers, crashes or times out.
        tokio::select! {
            outcome = replied => match outcome {
                Ok(outcome) => Ok(outcome),
                Err(_) => Err(self.died(request_id).await),
            },
            _ = self.child.wait() => Err(self.died(request_id).await),
            () = tokio::time::sleep(timeout) => {
                let _ = self.child.start_kill();
                Err(Outcome::error(
                    "Sandbox.Timedout",
                    &format!(
                        "{} {request_id} Task timed out after {:.2} seconds",
                        time::OffsetDateTime::now_utc()
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default(),
                        timeout.as_secs_f64()
                    ),
                ))
            }
        }
    }

    /// The outcome of an environment whose process ended (or will not answer).
    async fn died(&mut self, request_id: &str) -> Outcome {
        if let Some(init) = self.api.init_error.lock().expect("init error").take() {
            return Outcome::Error(init);
        }
        let _ = self.child.start_kill();
        let status = tokio::time::timeout(Duration::from_secs(2), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
            .map_or_else(|| "killed".to_owned(), |s| s.to_string());
        Outcome::error(
            "Runtime.ExitError",
            &format!("RequestId: {request_id} Error: Runtime exited with error: {status}"),
        )
    }
}

async fn serve(listener: TcpListener, api: Arc<Api>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let api = api.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(route(&api, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

fn accepted() -> Response<Full<Bytes>> {
    answer(StatusCode::ACCEPTED, serde_json::json!({"status": "OK"}))
}

async fn route(api: &Api, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let rest = path.strip_prefix("/2018-06-01/runtime/").unwrap_or("");
    if method == Method::GET && rest == "invocation/next" {
        return next(api).await;
    }
    if method != Method::POST {
        return answer(
            StatusCode::NOT_FOUND,
            serde_json::json!({"errorType": "NotFound"}),
        );
    }
    let error_type = request
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match Limited::new(request.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
    {
        Ok(body) => Some(body.to_bytes()),
        Err(_) => None,
    };
    if rest == "init/error" {
        let document = body.map_or_else(
            || Outcome::error("Runtime.InitError", "init error too large"),
            |b| Outcome::Error(with_type(b, error_type.as_deref(), "Runtime.InitError")),
        );
        *api.init_error.lock().expect("init error") = Some(document.payload().clone());
        return accepted();
    }
    let Some((request_id, kind)) = rest
        .strip_prefix("invocation/")
        .and_then(|r| r.rsplit_once('/'))
    else {
        return answer(
            StatusCode::NOT_FOUND,
            serde_json::json!({"errorType": "NotFound"}),
        );
    };
    let reply = {
        let mut current = api.current.lock().expect("current");
        if current.request_id != request_id {
            None
        } else {
            current.reply.take()
        }
    };
    let Some(reply) = reply else {
        return answer(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"errorType": "InvalidRequestID", "errorMessage": "Invalid request ID"}),
        );
    };
    let (outcome, response) = match (kind, body) {
        ("response", Some(body)) => (Outcome::Response(body), accepted()),
        ("response", None) => (
            Outcome::error(
                "Function.ResponseSizeTooLarge",
                &format!(
                    "Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes)."
                ),
            ),
            answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"errorType": "RequestEntityTooLarge"}),
            ),
        ),
        ("error", body) => (
            Outcome::Error(with_type(
                body.unwrap_or_default(),
                error_type.as_deref(),
                "Unhandled",
            )),
            accepted(),
        ),
        _ => {
            return answer(
                StatusCode::NOT_FOUND,
                serde_json::json!({"errorType": "NotFound"}),
            );
        }
    };
    let _ = reply.send(outcome);
    response
}

/// The error document a runtime posted, with `errorType` filled from its header (or
/// `fallback`) when the body has none; a body that is not JSON becomes the message.
fn with_type(body: Bytes, header: Option<&str>, fallback: &str) -> Bytes {
    let mut document = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => {
            let mut map = serde_json::Map::new();
            map.insert(
                "errorMessage".into(),
                String::from_utf8_lossy(&body).into_owned().into(),
            );
            map
        }
    };
    if !document
        .get("errorType")
        .is_some_and(serde_json::Value::is_string)
    {
        document.insert("errorType".into(), header.unwrap_or(fallback).into());
    }
    Bytes::from(serde_json::Value::Object(document).to_string())
}

async fn next(api: &Api) -> Response<Full<Bytes>> {
    let invocation = {
        let mut next = api.next.lock().await;
        next.recv().await
    };
    let Some(invocation) = invocation else {
        return answer(
            StatusCode::GONE,
            serde_json::json!({"errorType": "Shutdown"}),
        );
    };
    let deadline_ms = SystemTime::now()
        .checked_add(invocation.timeout)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis());
    {
        let mut current = api.current.lock().expect("current");
        current.request_id = invocation.request_id.clone();
        current.reply = Some(invocation.reply);
    }
    let _ = invocation.started.send(());
    let mut response = Response::new(Full::new(invocation.payload));
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set(
        "lambda-runtime-aws-request-id",
        invocation.request_id.clone(),
    );
    set("lambda-runtime-deadline-ms", deadline_ms.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        api.function_arn.clone(),
    );
    set(
        "lambda-runtime-trace-id",
        format!(
            "Root=1-{:08x}-{};Parent={};Sampled=0",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            &uuid::Uuid::new_v4().simple().to_string()[..24],
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        ),
    );
    set("content-type", "application/json".to_owned());
    response
}
