//! The host with a real function process (examples/lambda-fixture.rs) under its Runtime API and
//! behind its Invoke API: no AWS endpoint needed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use shoal_lambda_host::functions::{AsyncConfig, FunctionSpec};
use shoal_lambda_host::host::{Destinations, Host, Settings};
use shoal_lambda_host::runtime::{Environment, Outcome};

/// Keeps what would be sent to a destination queue.
#[derive(Default)]
struct Kept(Mutex<Vec<(String, Value)>>);

impl Destinations for Kept {
    async fn send(&self, queue_arn: &str, record: String) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .push((queue_arn.to_owned(), serde_json::from_str(&record).unwrap()));
        Ok(())
    }
}

fn fixture() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let binary = dir.join("examples").join("lambda-fixture");
    assert!(
        binary.is_file(),
        "{} (built by cargo test)",
        binary.display()
    );
    binary
}

fn spec(name: &str, timeout_ms: u64, reserved: Option<u32>) -> FunctionSpec {
    FunctionSpec {
        name: name.into(),
        arn: shoal_template::arn("AWS::Lambda::Function", name),
        binary: fixture(),
        environment: BTreeMap::from([("SHOAL_GREETING".into(), "hello".into())]),
        timeout: Duration::from_millis(timeout_ms),
        memory_mb: 128,
        reserved_concurrency: reserved,
        log_level: None,
        log_format: None,
        async_config: AsyncConfig {
            max_retries: 2,
            max_event_age: Duration::from_secs(60),
            on_failure: Some("arn:aws:sqs:us-east-1:123456789012:failures".into()),
        },
    }
}

fn host(specs: Vec<FunctionSpec>) -> (Arc<Host<Kept>>, Arc<Kept>) {
    let kept = Arc::new(Kept::default());
    let settings = Settings {
        concurrency: 2,
        async_retry_delay: Duration::from_millis(50),
        environment: Environment {
            passed: BTreeMap::from([("PATH".into(), std::env::var("PATH").unwrap_or_default())]),
            log_dir: std::env::temp_dir()
                .join(format!("shoal-lambda-host-test-{}", std::process::id())),
        },
    };
    (Host::start(specs, &settings, kept.clone()), kept)
}

fn json_of(outcome: &Outcome) -> Value {
    serde_json::from_slice(outcome.payload()).unwrap()
}

async fn invoke(host: &Host<Kept>, function: &str, event: Value) -> Outcome {
    host.function(function)
        .expect("the function")
        .invoke("req-1", Bytes::from(event.to_string()), false)
        .await
        .expect("not throttled")
}

#[tokio::test]
async fn environments_are_reused_and_replaced_after_a_timeout_or_a_crash() {
    let (host, _) = host(vec![spec("Echo", 1_000, None)]);
    let first = json_of(&invoke(&host, "Echo", json!({"env": "SHOAL_GREETING"})).await);
    assert_eq!(first["env"], "hello", "the template's environment");
    assert_eq!(first["served"], 1);
    assert_eq!(first["request_id"], "req-1");
    assert_eq!(
        first["function_arn"],
        "arn:aws:lambda:us-east-1:123456789012:function:Echo"
    );
    let lambda_name =
        json_of(&invoke(&host, "Echo", json!({"env": "AWS_LAMBDA_FUNCTION_NAME"})).await);
    assert_eq!(lambda_name["env"], "Echo");
    assert_eq!(
        lambda_name["pid"], first["pid"],
        "a warm environment is reused"
    );
    assert_eq!(lambda_name["served"], 2);
    assert_eq!(
        json_of(&invoke(&host, "Echo", json!({"env": "HOME"})).await)["env"],
        Value::Null,
        "only what the host passes: no other variable of the host's"
    );

    let failed = invoke(&host, "Echo", json!({"fail": "no such device"})).await;
    assert!(failed.is_error());
    assert_eq!(json_of(&failed)["errorMessage"], "no such device");
    let after_error = json_of(&invoke(&host, "Echo", json!({})).await);
    assert_eq!(
        after_error["pid"], first["pid"],
        "a function error keeps the environment"
    );

    let timed_out = invoke(&host, "Echo", json!({"sleep_ms": 3_000})).await;
    assert!(timed_out.is_error());
    assert_eq!(json_of(&timed_out)["errorType"], "Sandbox.Timedout");
    assert!(
        json_of(&timed_out)["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Task timed out after 1.00 seconds")
    );
    let after_timeout = json_of(&invoke(&host, "Echo", json!({})).await);
    assert_ne!(
        after_timeout["pid"], first["pid"],
        "a timed-out environment is replaced"
    );
    assert_eq!(after_timeout["served"], 1);

    let crashed = invoke(&host, "Echo", json!({"exit": 3})).await;
    assert_eq!(json_of(&crashed)["errorType"], "Runtime.ExitError");
    assert!(
        json_of(&crashed)["errorMessage"]
            .as_str()
            .unwrap()
            .contains("exit status: 3"),
        "{}",
        json_of(&crashed)
    );
    let after_crash = json_of(&invoke(&host, "Echo", json!({})).await);
    assert_ne!(after_crash["pid"], after_timeout["pid"]);
}

#[tokio::test]
async fn asynchronous_events_are_retried_twice_then_recorded_with_their_payload() {
    let (host, kept) = host(vec![spec("Flaky", 2_000, None)]);
    let function = host
        .function("arn:aws:lambda:us-east-1:123456789012:function:Flaky:$LATEST")
        .unwrap()
        .clone();
    host.invoke_async(
        &function,
        Bytes::from(r#"{"fail":"store down","reading":7}"#),
    )
    .unwrap();
    host.invoke_async(&function, Bytes::from(r#"{"reading":8}"#))
        .unwrap();
    for _ in 0..200 {
        if !kept.0.lock().unwrap().is_empty() && function.invocations() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        function.invocations(),
        4,
        "1 success + 3 attempts of the failing event"
    );
    let records = kept.0.lock().unwrap().clone();
    assert_eq!(records.len(), 1, "{records:?}");
    let (queue, record) = &records[0];
    assert_eq!(queue, "arn:aws:sqs:us-east-1:123456789012:failures");
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(
        record["requestContext"]["functionArn"],
        "arn:aws:lambda:us-east-1:123456789012:function:Flaky:$LATEST"
    );
    assert_eq!(
        record["requestPayload"],
        json!({"fail": "store down", "reading": 7})
    );
    assert_eq!(record["responseContext"]["functionError"], "Unhandled");
    assert_eq!(record["responsePayload"]["errorMessage"], "store down");

    let too_large = Bytes::from(format!(r#"{{"pad":"{}"}}"#, "x".repeat(1024 * 1024)));
    assert!(
        host.invoke_async(&function, too_large).is_err(),
        "1 MB is the asynchronous limit"
    );
}

async fn post(
    address: std::net::SocketAddr,
    path: &str,
    kind: Option<&str>,
    body: &str,
) -> (u16, BTreeMap<String, String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let kind = kind
        .map(|k| format!("X-Amz-Invocation-Type: {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: local\r\n{kind}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

#[tokio::test]
async fn the_invoke_api_answers_as_lambda_does() {
    let (host, _) = host(vec![
        spec("Echo", 2_000, None),
        spec("Hook", 2_000, Some(1)),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(shoal_lambda_host::api::serve(listener, host.clone()));
    let path = |name: &str| format!("/2015-03-31/functions/{name}/invocations");

    let (status, headers, body) = post(
        address,
        &path("Echo"),
        None,
        r#"{"respond":{"allowProvisioning":true}}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-amz-executed-version"], "$LATEST");
    assert!(!headers.contains_key("x-amz-function-error"));
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"allowProvisioning": true})
    );

    let (status, headers, body) = post(
        address,
        &path("arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3AEcho"),
        None,
        r#"{"fail":"bad"}"#,
    )
    .await;
    assert_eq!(status, 200, "a function error is a 200");
    assert_eq!(headers["x-amz-function-error"], "Unhandled");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["errorMessage"],
        "bad"
    );

    let (status, headers, _) = post(address, &path("Nope"), None, "{}").await;
    assert_eq!(status, 404);
    assert_eq!(headers["x-amzn-errortype"], "ResourceNotFoundException");
    assert!(
        headers.contains_key("x-amzn-requestid"),
        "every answer has a request id"
    );
    for elsewhere in [
        "arn:aws:lambda:eu-west-9:999999999999:function:Echo",
        "999999999999:function:Echo",
        "arn:aws:s3:us-east-1:123456789012:function:Echo",
    ] {
        let (status, _, _) = post(address, &path(elsewhere), Some("DryRun"), "{}").await;
        assert_eq!(status, 404, "{elsewhere} is not this account's function");
    }
    let (status, _, _) = post(
        address,
        &path("123456789012:function:Echo:$LATEST"),
        Some("DryRun"),
        "{}",
    )
    .await;
    assert_eq!(status, 204, "a partial ARN with $LATEST");
    let (status, headers, _) = post(
        address,
        &(path("Echo:$LATEST") + "?Qualifier=1"),
        None,
        "{}",
    )
    .await;
    assert_eq!(
        (status, headers["x-amzn-errortype"].as_str()),
        (400, "InvalidParameterValueException")
    );
    let (status, _, body) = post(address, &path("Echo"), None, "").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["input"],
        json!({}),
        "no payload is {{}}"
    );
    let (status, _, _) = post(address, &(path("Echo") + "?Qualifier=7"), None, "{}").await;
    assert_eq!(status, 404, "no published versions locally");
    let (status, headers, _) = post(address, &path("Echo"), None, "{not json").await;
    assert_eq!(
        (status, headers["x-amzn-errortype"].as_str()),
        (400, "InvalidRequestContentException")
    );
    let (status, _, _) = post(address, &path("Echo"), Some("Event"), "{}").await;
    assert_eq!(status, 202);
    let (status, _, _) = post(address, &path("Echo"), Some("DryRun"), "{}").await;
    assert_eq!(status, 204);
    let (status, headers, _) = post(address, &path("Echo"), Some("Sometimes"), "{}").await;
    assert_eq!(
        (status, headers["x-amzn-errortype"].as_str()),
        (400, "InvalidParameterValueException")
    );
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1024 * 1024));
    let (status, headers, _) = post(address, &path("Echo"), Some("Event"), &big).await;
    assert_eq!(
        (status, headers["x-amzn-errortype"].as_str()),
        (413, "RequestEntityTooLargeException")
    );

    // Reserved concurrency 1: a second invocation while the first runs is throttled.
    let slow = tokio::spawn(async move {
        post(
            address,
            "/2015-03-31/functions/Hook/invocations",
            None,
            r#"{"sleep_ms":1500}"#,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, headers, body) = post(address, &path("Hook"), None, "{}").await;
    let throttled: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(throttled["message"], "Rate Exceeded.");
    assert_eq!(
        throttled["Reason"],
        "ReservedFunctionConcurrentInvocationLimitExceeded"
    );
    assert_eq!(
        (status, headers["x-amzn-errortype"].as_str()),
        (429, "TooManyRequestsException")
    );
    assert_eq!(slow.await.unwrap().0, 200);
}
