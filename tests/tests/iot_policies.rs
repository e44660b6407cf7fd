//! The device and claim policies of infra/template.yaml, evaluated against allowed and denied
//! (action, resource) cases, another thing's topics included.

use serde_norway::Value;
use shoal_integration_tests::iot_policy::{Connection, allows, arn};
use shoal_integration_tests::repo_root;

fn policy(name: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join("infra/template.yaml")).unwrap();
    let template: Value = serde_norway::from_str(&text).unwrap();
    template["Resources"][name]["Properties"]["PolicyDocument"].clone()
}

const PARAMETERS: &[(&str, &str)] = &[("ProvisioningTemplateName", "shoal-fleet")];

fn check(document: &Value, connection: &Connection<'_>, cases: &[(&str, &str, &str, bool)]) {
    let mut wrong = Vec::new();
    for (action, kind, name, expected) in cases {
        let resource = arn(kind, name);
        let got = allows(document, PARAMETERS, connection, action, &resource).unwrap();
        if got != *expected {
            wrong.push(format!(
                "{action} {resource}: {} but expected {}",
                if got { "allowed" } else { "denied" },
                if *expected { "allowed" } else { "denied" }
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn a_device_reaches_only_its_own_topics() {
    let document = policy("DevicePolicy");
    let me = Connection {
        thing: "dev-1",
        attached: true,
    };
    check(
        &document,
        &me,
        &[
            ("iot:Connect", "client", "dev-1", true),
            ("iot:Connect", "client", "dev-2", false),
            ("iot:Publish", "topic", "dt/farm/dev-1/telemetry", true),
            (
                "iot:Publish",
                "topic",
                "dt/farm/dev-1/telemetry/th-v2",
                true,
            ),
            ("iot:Publish", "topic", "dt/farm/dev-2/telemetry", false),
            ("iot:Publish", "topic", "dt/farm/dev-10/telemetry", false),
            (
                "iot:Publish",
                "topic",
                "$aws/things/dev-1/shadow/update",
                true,
            ),
            (
                "iot:Publish",
                "topic",
                "$aws/things/dev-1/shadow/name/ota/update",
                true,
            ),
            (
                "iot:Publish",
                "topic",
                "$aws/things/dev-2/shadow/update",
                false,
            ),
            ("iot:Publish", "topic", "$aws/things/dev-1/jobs/get", true),
            ("iot:Publish", "topic", "cmd/farm/dev-1/reboot", false),
            (
                "iot:Publish",
                "topic",
                "$aws/provisioning-templates/shoal-fleet/provision/json",
                false,
            ),
            (
                "iot:Subscribe",
                "topicfilter",
                "cmd/farm/dev-1/reboot",
                true,
            ),
            (
                "iot:Subscribe",
                "topicfilter",
                "cmd/farm/dev-2/reboot",
                false,
            ),
            ("iot:Subscribe", "topicfilter", "#", false),
            (
                "iot:Subscribe",
                "topicfilter",
                "$aws/things/dev-1/shadow/update/delta",
                true,
            ),
            (
                "iot:Subscribe",
                "topicfilter",
                "$aws/things/dev-2/shadow/update/delta",
                false,
            ),
            (
                "iot:Subscribe",
                "topicfilter",
                "$aws/things/dev-1/jobs/notify-next",
                true,
            ),
            (
                "iot:Subscribe",
                "topicfilter",
                "dt/farm/dev-1/telemetry",
                false,
            ),
            ("iot:Receive", "topic", "cmd/farm/dev-1/reboot", true),
            ("iot:Receive", "topic", "cmd/farm/dev-2/reboot", false),
            (
                "iot:Receive",
                "topic",
                "$aws/things/dev-1/shadow/update/accepted",
                true,
            ),
            (
                "iot:Receive",
                "topic",
                "$aws/things/dev-2/shadow/update/accepted",
                false,
            ),
            ("iot:Receive", "topic", "dt/farm/dev-2/telemetry", false),
            // Multi-level matches: `*` would span levels, so a Deny refuses more than one level
            // between `dt/` or `cmd/` and the thing.
            (
                "iot:Publish",
                "topic",
                "dt/farm/dev-2/telemetry/dev-1/telemetry",
                false,
            ),
            // dev-1's own topic under an app named "dev-2" (quarantined as unknown_app).
            ("iot:Publish", "topic", "dt/dev-2/dev-1/telemetry", true),
            (
                "iot:Publish",
                "topic",
                "dt/greenhouse/dev-1/telemetry",
                true,
            ),
            // Another app is the device's own topic too; the router quarantines an app outside
            // TelemetryApps (`unknown_app`).
            ("iot:Publish", "topic", "dt/new-app/dev-1/telemetry", true),
            // A topic that smuggles an ARN's tail into a level reaches nobody else's.
            (
                "iot:Publish",
                "topic",
                "cmd/farm/dev-2/reboot:topic/dt/farm/dev-1/telemetry",
                false,
            ),
            (
                "iot:Publish",
                "topic",
                "dt/x:topic/dt/farm/dev-1/telemetry",
                false,
            ),
            (
                "iot:Publish",
                "topic",
                "dt/farm/dev-2/telemetry/dev-1/telemetry/x",
                false,
            ),
            ("iot:Subscribe", "topicfilter", "cmd/+/+/dev-1/#", false),
            // Its own commands under every app.
            ("iot:Subscribe", "topicfilter", "cmd/+/dev-1/#", true),
            ("iot:Subscribe", "topicfilter", "cmd/farm/dev-1/#", true),
            (
                "iot:Subscribe",
                "topicfilter",
                "cmd/farm/dev-2/dev-1/reboot",
                false,
            ),
            ("iot:Receive", "topic", "cmd/farm/dev-2/dev-1/x", false),
            ("iot:Receive", "topic", "cmd/new-app/dev-1/reboot", true),
            ("iot:Subscribe", "topicfilter", "cmd/farm/+/dev-1/#", false),
        ],
    );
    // A certificate not attached to the thing cannot connect as it.
    let unattached = Connection {
        thing: "dev-1",
        attached: false,
    };
    check(
        &document,
        &unattached,
        &[("iot:Connect", "client", "dev-1", false)],
    );
}

#[test]
fn a_claim_certificate_reaches_only_the_provisioning_topics() {
    let document = policy("ClaimPolicy");
    let claim = Connection {
        thing: "",
        attached: false,
    };
    check(
        &document,
        &claim,
        &[
            ("iot:Connect", "client", "claim.SN-0007.1", true),
            // Never a device's client id, whatever it looks like.
            ("iot:Connect", "client", "factory-claim-7", false),
            ("iot:Connect", "client", "dev-1", false),
            ("iot:Connect", "client", "SN-0007", false),
            ("iot:Connect", "client", "claim", false),
            ("iot:Connect", "client", "claimdev-1", false),
            (
                "iot:Publish",
                "topic",
                "$aws/certificates/create/json",
                true,
            ),
            (
                "iot:Publish",
                "topic",
                "$aws/certificates/create-from-csr/json",
                true,
            ),
            (
                "iot:Subscribe",
                "topicfilter",
                "$aws/certificates/create/json/accepted",
                true,
            ),
            (
                "iot:Receive",
                "topic",
                "$aws/certificates/create/json/rejected",
                true,
            ),
            (
                "iot:Publish",
                "topic",
                "$aws/provisioning-templates/shoal-fleet/provision/json",
                true,
            ),
            (
                "iot:Receive",
                "topic",
                "$aws/provisioning-templates/shoal-fleet/provision/json/accepted",
                true,
            ),
            (
                "iot:Publish",
                "topic",
                "$aws/provisioning-templates/other/provision/json",
                false,
            ),
            ("iot:Publish", "topic", "dt/farm/dev-1/telemetry", false),
            (
                "iot:Subscribe",
                "topicfilter",
                "$aws/things/dev-1/shadow/update/delta",
                false,
            ),
            ("iot:Receive", "topic", "cmd/farm/dev-1/reboot", false),
            ("iot:Subscribe", "topicfilter", "#", false),
        ],
    );
}
