use super::*;

fn jobs() -> Vec<Job> {
    vec![
        Job {
            id: "ota-1".into(),
            document: r#"{"operation":"ota","version":"1.2.0"}"#.into(),
            created_at_s: 100,
        },
        Job {
            id: "reboot-2".into(),
            document: r#"{"operation":"reboot"}"#.into(),
            created_at_s: 200,
        },
    ]
}

/// Publishes `payload` on `$aws/things/d-1/jobs/<api>`: the answers, payloads as JSON.
fn ask(executions: &Executions, api: &str, payload: &str) -> Vec<(String, Value)> {
    let topic = format!("$aws/things/d-1/jobs/{api}");
    let topic = JobsTopic::parse(&topic).unwrap();
    serve(executions, &topic, payload.as_bytes(), &jobs(), 1_000)
        .into_iter()
        .map(|(t, p)| (t, serde_json::from_slice(&p).unwrap()))
        .collect()
}

#[test]
fn a_device_works_through_its_queue_as_the_jobs_api_documents() {
    let executions = Executions::default();
    let got = ask(&executions, "get", r#"{"clientToken":"t-1"}"#);
    assert_eq!(got.len(), 1, "{got:?}");
    let (topic, pending) = &got[0];
    assert_eq!(topic, "$aws/things/d-1/jobs/get/accepted");
    assert_eq!(pending["clientToken"], "t-1");
    assert_eq!(pending["inProgressJobs"], json!([]));
    assert_eq!(pending["queuedJobs"][0]["jobId"], "ota-1");
    assert_eq!(pending["queuedJobs"][1]["jobId"], "reboot-2");
    assert_eq!(pending["queuedJobs"][0]["versionNumber"], 1);

    let started = ask(
        &executions,
        "start-next",
        r#"{"statusDetails":{"step":"download"}}"#,
    );
    let (topic, answer) = &started[0];
    assert_eq!(topic, "$aws/things/d-1/jobs/start-next/accepted");
    let execution = &answer["execution"];
    assert_eq!(execution["jobId"], "ota-1");
    assert_eq!(execution["status"], "IN_PROGRESS");
    assert_eq!(execution["versionNumber"], 2);
    assert_eq!(execution["startedAt"], 1_000);
    assert_eq!(execution["statusDetails"], json!({"step": "download"}));
    assert_eq!(execution["jobDocument"]["version"], "1.2.0");
    assert_eq!(
        started[1].0, "$aws/things/d-1/jobs/notify",
        "the pending list changed"
    );
    assert_eq!(started[1].1["jobs"]["IN_PROGRESS"][0]["jobId"], "ota-1");
    assert_eq!(started[1].1["jobs"]["QUEUED"][0]["jobId"], "reboot-2");
    assert_eq!(
        started.len(),
        2,
        "the next execution is still ota-1: no notify-next"
    );

    let stale = ask(
        &executions,
        "ota-1/update",
        r#"{"status":"SUCCEEDED","expectedVersion":1}"#,
    );
    assert_eq!(stale[0].0, "$aws/things/d-1/jobs/ota-1/update/rejected");
    assert_eq!(stale[0].1["code"], "VersionMismatch");
    assert_eq!(stale[0].1["executionState"]["versionNumber"], 2);

    let done = ask(
        &executions,
        "ota-1/update",
        r#"{"status":"SUCCEEDED","expectedVersion":2,"includeJobExecutionState":true,"clientToken":"u-1"}"#,
    );
    assert_eq!(done[0].0, "$aws/things/d-1/jobs/ota-1/update/accepted");
    assert_eq!(done[0].1["executionState"]["status"], "SUCCEEDED");
    assert_eq!(done[0].1["executionState"]["versionNumber"], 3);
    assert_eq!(done[0].1["clientToken"], "u-1");
    assert_eq!(done[1].0, "$aws/things/d-1/jobs/notify");
    assert_eq!(done[2].0, "$aws/things/d-1/jobs/notify-next");
    assert_eq!(done[2].1["execution"]["jobId"], "reboot-2");
    assert_eq!(done[2].1["execution"]["status"], "QUEUED");

    let again = ask(&executions, "ota-1/update", r#"{"status":"FAILED"}"#);
    assert_eq!(
        again[0].1["code"], "InvalidStateTransition",
        "a terminal state stays"
    );
    let described = ask(&executions, "ota-1/get", r#"{"includeJobDocument":false}"#);
    assert_eq!(described[0].1["execution"]["status"], "SUCCEEDED");
    assert!(described[0].1["execution"].get("jobDocument").is_none());
    let next = ask(&executions, "$next/get", "{}");
    assert_eq!(next[0].1["execution"]["jobId"], "reboot-2");

    let unknown = ask(&executions, "nope/get", "{}");
    assert_eq!(unknown[0].0, "$aws/things/d-1/jobs/nope/get/rejected");
    assert_eq!(unknown[0].1["code"], "ResourceNotFound");
    let bad = ask(&executions, "reboot-2/update", r#"{"status":"QUEUED"}"#);
    assert_eq!(bad[0].1["code"], "InvalidRequest");
    let not_json = ask(&executions, "get", "not json");
    assert_eq!(not_json[0].1["code"], "InvalidJson");

    // The last one done: the queue is empty, start-next answers no execution.
    ask(&executions, "reboot-2/update", r#"{"status":"REJECTED"}"#);
    let empty = ask(&executions, "start-next", "{}");
    assert_eq!(empty[0].0, "$aws/things/d-1/jobs/start-next/accepted");
    assert!(empty[0].1.get("execution").is_none(), "{:?}", empty[0].1);
}

#[test]
fn answers_and_notifications_are_not_requests() {
    let executions = Executions::default();
    for api in [
        "get/accepted",
        "ota-1/update/rejected",
        "notify",
        "notify-next",
    ] {
        assert!(ask(&executions, api, "{}").is_empty(), "{api}");
    }
}

#[test]
fn a_job_created_again_with_the_same_id_starts_anew() {
    let executions = Executions::default();
    let topic = JobsTopic::parse("$aws/things/d-1/jobs/ota-1/update").unwrap();
    let done = serve(
        &executions,
        &topic,
        br#"{"status":"SUCCEEDED"}"#,
        &jobs(),
        1_000,
    );
    assert!(done[0].0.ends_with("/accepted"));
    let mut again = jobs();
    again[0].created_at_s = 5_000;
    let get = JobsTopic::parse("$aws/things/d-1/jobs/ota-1/get").unwrap();
    let described = serve(&executions, &get, b"{}", &again, 6_000);
    let document: Value = serde_json::from_slice(&described[0].1).unwrap();
    assert_eq!(document["execution"]["status"], "QUEUED");
    assert_eq!(document["execution"]["versionNumber"], 1);
}
