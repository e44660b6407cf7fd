//! infra/template.yaml against the workspace: every function resource builds a crate that exists.

use std::collections::HashMap;

use shoal_integration_tests::{repo_root, template};

#[test]
fn every_function_in_the_template_is_a_workspace_crate() {
    let root = repo_root();
    let path = root.join("infra/template.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed: serde_norway::Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    assert_eq!(
        parsed["Transform"].as_str(),
        Some("AWS::Serverless-2016-10-31"),
        "the template is a SAM template"
    );
    let packages = template::workspace_packages(&root).unwrap();
    assert!(
        ["shoal-wire", "shoal-core", "shoal-aws"]
            .iter()
            .all(|name| packages.iter().any(|p| p.name == *name)),
        "cargo metadata lists the workspace: {packages:?}"
    );
    if let Err(problems) = template::check(&parsed, &root.join("infra"), &packages) {
        panic!("infra/template.yaml:\n  {}", problems.join("\n  "));
    }
}

#[test]
fn functions_default_to_arm64_and_the_custom_runtime() {
    let text = std::fs::read_to_string(repo_root().join("infra/template.yaml")).unwrap();
    let parsed: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(parsed["Parameters"]["Architecture"]["Default"], "arm64");
    let globals = &parsed["Globals"]["Function"];
    assert_eq!(globals["Runtime"], "provided.al2023");
    assert_eq!(globals["Handler"], "bootstrap");
}

#[test]
fn the_glue_table_matches_the_parquet_archive_schema() {
    use parquet::basic::{LogicalType, Type as Physical};
    let text = std::fs::read_to_string(repo_root().join("infra/template.yaml")).unwrap();
    let parsed: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let columns = parsed["Resources"]["ArchiveTable"]["Properties"]["TableInput"]
        ["StorageDescriptor"]["Columns"]
        .as_sequence()
        .expect("ArchiveTable columns");
    let glue: Vec<(String, String)> = columns
        .iter()
        .map(|c| {
            (
                c["Name"].as_str().unwrap().to_owned(),
                c["Type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();

    let schema =
        parquet::schema::parser::parse_message_type(shoal_core::telemetry::archive::SCHEMA)
            .unwrap();
    let parquet: Vec<(String, String)> = schema
        .get_fields()
        .iter()
        .map(|f| {
            let info = f.get_basic_info();
            let hive = match (f.get_physical_type(), info.logical_type_ref()) {
                (Physical::BYTE_ARRAY, Some(LogicalType::String)) => "string",
                (Physical::INT64, Some(LogicalType::Timestamp { .. })) => "timestamp",
                (Physical::INT64, None) => "bigint",
                (Physical::DOUBLE, None) => "double",
                (Physical::BOOLEAN, None) => "boolean",
                other => panic!("no Glue type for {other:?}"),
            };
            (info.name().to_owned(), hive.to_owned())
        })
        .collect();
    assert_eq!(glue, parquet);
}

#[test]
fn the_provisioning_template_body_declares_every_hook_override() {
    use shoal_core::provisioning::{
        BATCH_PARAMETER, FACTORY_SECRET_PARAMETER, MODEL_PARAMETER, SERIAL_PARAMETER,
        THING_GROUP_PARAMETER, THING_NAME_PARAMETER,
    };
    let text = std::fs::read_to_string(repo_root().join("infra/template.yaml")).unwrap();
    let parsed: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let properties = &parsed["Resources"]["FleetProvisioningTemplate"]["Properties"];
    assert_eq!(
        properties["PreProvisioningHook"]["PayloadVersion"].as_str(),
        Some("2020-04-01")
    );
    // TemplateBody is `!Sub [body, {DevicePolicyName: …}]`: the body is JSON once that name is in.
    let serde_norway::Value::Tagged(sub) = &properties["TemplateBody"] else {
        panic!("TemplateBody is a !Sub");
    };
    let body_text = sub.value[0]
        .as_str()
        .unwrap()
        .replace("${DevicePolicyName}", "shoal-device-policy");
    assert!(
        body_text.len() <= 10 * 1024,
        "AWS limits a template body to 10 KiB"
    );
    let body: serde_json::Value = serde_json::from_str(&body_text).expect("the body is JSON");
    for parameter in [
        SERIAL_PARAMETER,
        THING_NAME_PARAMETER,
        THING_GROUP_PARAMETER,
        MODEL_PARAMETER,
        BATCH_PARAMETER,
        "AWS::IoT::Certificate::Id",
    ] {
        assert!(
            body["Parameters"].get(parameter).is_some(),
            "template body does not declare {parameter}"
        );
    }
    // The proof-of-possession parameter: declared with a default (devices without a secret omit
    // it), and never stored anywhere a reader of the registry could see it.
    assert_eq!(
        body["Parameters"][FACTORY_SECRET_PARAMETER]["Default"], "",
        "{FACTORY_SECRET_PARAMETER} must be optional"
    );
    assert!(
        !body["Resources"]
            .to_string()
            .contains(FACTORY_SECRET_PARAMETER),
        "no resource may reference {FACTORY_SECRET_PARAMETER}"
    );
    let resources = &body["Resources"];
    assert_eq!(resources["thing"]["Type"], "AWS::IoT::Thing");
    assert_eq!(
        resources["thing"]["Properties"]["ThingName"]["Ref"], THING_NAME_PARAMETER,
        "the thing is named by the hook's override, never by the device"
    );
    assert_eq!(resources["certificate"]["Properties"]["Status"], "ACTIVE");
    assert_eq!(
        resources["policy"]["Properties"]["PolicyName"],
        "shoal-device-policy"
    );
}

fn template() -> serde_norway::Value {
    let text = std::fs::read_to_string(repo_root().join("infra/template.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

fn strings(value: &serde_norway::Value) -> Vec<String> {
    match value {
        serde_norway::Value::Sequence(items) => items.iter().flat_map(strings).collect(),
        serde_norway::Value::String(s) => vec![s.clone()],
        other => vec![format!("{other:?}")],
    }
}

#[test]
fn the_provisioning_role_is_scoped_to_what_the_template_needs() {
    let role = &template()["Resources"]["ProvisioningRole"]["Properties"];
    assert!(
        role.get("ManagedPolicyArns").is_none(),
        "no managed policy (AWSIoTThingsRegistration grants 30 actions on *)"
    );
    let policies = role["Policies"].as_sequence().unwrap();
    for policy in policies {
        for statement in policy["PolicyDocument"]["Statement"].as_sequence().unwrap() {
            for action in strings(&statement["Action"]) {
                assert!(!action.contains('*'), "no action wildcard: {action}");
                assert!(
                    ![
                        "iot:CreatePolicy",
                        "iot:DeletePolicy",
                        "iot:RegisterCertificate"
                    ]
                    .contains(&action.as_str()),
                    "{action} is not the template's"
                );
            }
            let resource = format!("{:?}", statement["Resource"]);
            assert!(
                resource.contains(":thing/")
                    || resource.contains(":thinggroup/")
                    || resource.contains(":cert/")
                    || resource.contains(":policy/${DevicePolicy}"),
                "resource scoped to a type: {resource}"
            );
        }
    }
}

#[test]
fn only_the_publisher_role_can_sign_firmware() {
    use shoal_integration_tests::iot_policy::matches;
    let resources = &template()["Resources"];
    let key_policy = &resources["FirmwareSigningKey"]["Properties"]["KeyPolicy"];
    let mut signers = Vec::new();
    for statement in key_policy["Statement"].as_sequence().unwrap() {
        assert_eq!(statement["Effect"], "Allow");
        if strings(&statement["Action"])
            .iter()
            .any(|a| matches(a, "kms:Sign"))
        {
            signers.push(format!("{:?}", statement["Principal"]["AWS"]));
        }
    }
    assert_eq!(signers.len(), 1, "one signer: {signers:?}");
    // Nobody may create grants (a grant could hand out kms:Sign).
    for statement in key_policy["Statement"].as_sequence().unwrap() {
        assert!(
            !strings(&statement["Action"])
                .iter()
                .any(|a| matches(a, "kms:CreateGrant")),
            "{statement:?}"
        );
    }
    assert!(
        signers[0].contains("FirmwarePublisherRole"),
        "the signer is the publisher role: {signers:?}"
    );
    // The account still administers the key (through IAM), without signing.
    let admin = &key_policy["Statement"][0];
    assert!(format!("{:?}", admin["Principal"]["AWS"]).contains(":root"));
    assert!(
        strings(&admin["Action"])
            .iter()
            .any(|a| matches(a, "kms:ScheduleKeyDeletion"))
    );
}

#[test]
fn asynchronously_invoked_functions_keep_their_failed_events_and_the_hook_its_concurrency() {
    let resources = &template()["Resources"];
    for function in [
        "TelemetryRouterFunction",
        "JitrFunction",
        "ShadowDocumentsFunction",
        "PresenceFunction",
    ] {
        let config = &resources[function]["Properties"]["EventInvokeConfig"];
        let on_failure = &config["DestinationConfig"]["OnFailure"];
        assert_eq!(
            on_failure["Type"], "SQS",
            "{function} has an on-failure queue"
        );
        let queue = format!("{:?}", on_failure["Destination"]);
        let queue = if queue.contains("AsyncFailuresQueue") {
            "AsyncFailuresQueue"
        } else {
            "TelemetryDeadLetterQueue"
        };
        assert!(
            format!("{:?}", resources[function]["Properties"]["Policies"])
                .contains(&format!("{queue}.Arn")),
            "{function} may send to {queue}"
        );
    }
    let hook = &resources["PreProvisioningHookFunction"]["Properties"];
    assert!(
        format!("{:?}", hook["ReservedConcurrentExecutions"]).contains("HookReservedConcurrency"),
        "the hook has reserved concurrency"
    );
    // The advancer's schedule is its retry: a failed run is not run twice more on top of it.
    let advancer = &resources["OtaAdvancerFunction"]["Properties"]["EventInvokeConfig"];
    assert_eq!(advancer["MaximumRetryAttempts"].as_u64(), Some(0));
}

/// The template's value of an environment variable as CloudFormation would resolve it with the
/// parameters' defaults: `!Ref` (parameter default; a resource's name), `!GetAtt` (a name or an
/// ARN), `!Sub`, `!Join`, `!If` (its true branch: the more demanding one). `None`: unresolvable.
fn resolve(template: &serde_norway::Value, value: &serde_norway::Value) -> Option<Vec<String>> {
    use serde_norway::Value as Y;
    let parameters = &template["Parameters"];
    let reference = |name: &str| -> Option<Vec<String>> {
        if let Some(parameter) = parameters.get(name) {
            let default = match parameter.get("Default")? {
                Y::String(s) => s.clone(),
                Y::Number(n) => n.to_string(),
                Y::Bool(b) => b.to_string(),
                _ => return None,
            };
            return Some(
                if parameter["Type"].as_str() == Some("CommaDelimitedList") {
                    default.split(',').map(|s| s.trim().to_owned()).collect()
                } else {
                    vec![default]
                },
            );
        }
        template["Resources"]
            .get(name)
            .map(|_| vec![format!("shoal-{}", name.to_lowercase())])
    };
    let one = |v: &Y| resolve(template, v).and_then(|mut v| (v.len() == 1).then(|| v.remove(0)));
    match value {
        Y::String(s) => Some(vec![s.clone()]),
        Y::Number(n) => Some(vec![n.to_string()]),
        Y::Bool(b) => Some(vec![b.to_string()]),
        Y::Tagged(tagged) => {
            let inner = &tagged.value;
            match tagged.tag.to_string().as_str() {
                "!Ref" => reference(inner.as_str()?),
                "!GetAtt" => {
                    let (resource, attribute) = inner.as_str()?.split_once('.')?;
                    template["Resources"].get(resource)?;
                    Some(vec![if attribute == "Arn" {
                        format!(
                            "arn:aws:iam::123456789012:role/shoal-{}",
                            resource.to_lowercase()
                        )
                    } else {
                        format!("shoal-{}", resource.to_lowercase())
                    }])
                }
                "!Join" => {
                    let separator = inner[0].as_str()?;
                    let parts = match &inner[1] {
                        Y::Sequence(items) => items
                            .iter()
                            .map(|i| resolve(template, i))
                            .collect::<Option<Vec<_>>>()?
                            .concat(),
                        other => resolve(template, other)?,
                    };
                    Some(vec![parts.join(separator)])
                }
                "!If" => resolve(template, &inner[1]),
                "!Sub" => {
                    let (text, names) = match inner {
                        Y::String(text) => (text.as_str(), None),
                        Y::Sequence(items) => (items[0].as_str()?, Some(&items[1])),
                        _ => return None,
                    };
                    let mut out = String::new();
                    let mut rest = text;
                    while let Some(start) = rest.find("${") {
                        out.push_str(&rest[..start]);
                        let end = rest[start..].find('}')? + start;
                        let name = &rest[start + 2..end];
                        let value = match names.and_then(|n| n.get(name)) {
                            Some(v) => one(v)?,
                            None if name.starts_with("AWS::") => "aws".to_owned(),
                            None => reference(name)?.join(","),
                        };
                        out.push_str(&value);
                        rest = &rest[end + 1..];
                    }
                    out.push_str(rest);
                    Some(vec![out])
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The environment the template gives `function` (Globals included), resolved.
fn environment(template: &serde_norway::Value, function: &str) -> HashMap<String, String> {
    let mut env = HashMap::new();
    let globals = &template["Globals"]["Function"]["Environment"]["Variables"];
    let own = &template["Resources"][function]["Properties"]["Environment"]["Variables"];
    for variables in [globals, own] {
        if let serde_norway::Value::Mapping(map) = variables {
            for (name, value) in map {
                let name = name.as_str().unwrap().to_owned();
                let value = resolve(template, value)
                    .unwrap_or_else(|| panic!("{function}: {name} does not resolve"));
                env.insert(name, value.join(","));
            }
        }
    }
    env
}

/// The seam between the template and the functions: each function's whole configuration loads
/// from the environment the template gives it (with the parameters' defaults), so a variable a
/// function requires can never be missing or malformed in a deployed stack. Each `Config` reads
/// every variable its function reads, so this covers all of them.
#[test]
fn every_function_loads_its_configuration_from_the_templates_environment() {
    let t = template();

    let env = environment(&t, "TelemetryRouterFunction");
    telemetry_router::handler::RouterConfig::from_source(&env).unwrap();

    let env = environment(&t, "PreProvisioningHookFunction");
    provisioning::hook::HookConfig::from_source(&env).unwrap();
    let env = environment(&t, "JitrFunction");
    provisioning::jitr::JitrConfig::from_source(&env).unwrap();

    let env = environment(&t, "PresenceFunction");
    shadow_sync::presence::PresenceConfig::from_source(&env).unwrap();
    let env = environment(&t, "ShadowDocumentsFunction");
    shadow_sync::documents::SyncConfig::from_source(&env).unwrap();

    let env = environment(&t, "OtaAdvancerFunction");
    ota_scheduler::AdvancerConfig::from_source(&env).unwrap();
}
