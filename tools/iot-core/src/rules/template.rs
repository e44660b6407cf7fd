//! The IoT rules of a SAM/CloudFormation template (`AWS::IoT::TopicRule`), read as the local
//! stack deploys them: parameters at their defaults unless overridden, `Conditions` evaluated
//! (`!Equals`, `!Not`, `!And`, `!Or`, `!Condition`), a rule whose condition is false left out, and
//! every reference an action makes (`!Ref`, `!GetAtt …​.Arn`, `!Sub`) resolved to a local name
//! the stack gives (`--resource TelemetryQueue=<queue URL>`). A rule this engine cannot run as
//! written (another SQL version, an action it does not have, a reference without a local name)
//! is not loaded, and the reason is returned: never half a rule.
//!
//! <https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-iot-topicrule.html>

use std::collections::BTreeMap;

use serde_norway::Value;
use shoal_template::Template;
pub use shoal_template::{TemplateError, substitute};

use super::sql::{SqlError, Statement, Template as SqlTemplate};

/// An action of a rule, its references resolved to local names.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// SQS SendMessage of the rule's output (`UseBase64`: base64 of it).
    Sqs {
        /// The queue's URL.
        queue_url: String,
        /// Whether the body is the output in base64.
        use_base64: bool,
    },
    /// Kinesis PutRecord of the rule's output.
    Kinesis {
        /// The stream's name.
        stream: String,
        /// The partition key, a substitution template.
        partition_key: SqlTemplate,
    },
    /// S3 PutObject of the rule's output.
    S3 {
        /// The bucket.
        bucket: String,
        /// The object key, a substitution template.
        key: SqlTemplate,
    },
    /// The rule's output published again on a topic.
    Republish {
        /// The topic, a substitution template.
        topic: SqlTemplate,
        /// QoS 0 or 1.
        qos: u8,
    },
    /// Lambda Invoke (asynchronous: `Event`) of the function with the rule's output.
    Lambda {
        /// The function's ARN or name.
        function: String,
    },
}

impl Action {
    /// The action's name as AWS's error payload gives it (`failedAction`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqs { .. } => "SqsAction",
            Self::Kinesis { .. } => "KinesisAction",
            Self::S3 { .. } => "S3Action",
            Self::Republish { .. } => "RepublishAction",
            Self::Lambda { .. } => "LambdaAction",
        }
    }

    /// The resource it writes to (`failedResource`).
    pub fn resource(&self) -> String {
        match self {
            Self::Sqs { queue_url, .. } => queue_url.clone(),
            Self::Kinesis { stream, .. } => stream.clone(),
            Self::S3 { bucket, .. } => bucket.clone(),
            Self::Republish { .. } => "republish".into(),
            Self::Lambda { function } => function.clone(),
        }
    }
}

/// A rule the engine runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule's name: its `RuleName`, else its logical id.
    pub name: String,
    /// Its statement.
    pub statement: Statement,
    /// Its actions, each run for every message the statement selects.
    pub actions: Vec<Action>,
    /// The action run with AWS's error payload when one of `actions` fails.
    pub error_action: Option<Action>,
}

/// What a template holds for the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// The rules to run.
    pub rules: Vec<Rule>,
    /// Rules left out: (logical id, why). A rule whose condition is false is not listed.
    pub skipped: Vec<(String, String)>,
}

/// Reads the rules of `template` (YAML text). `parameters` override the template's defaults;
/// `resources` map a logical id to the local name (or URL) a `!Ref` or `!GetAtt` of it means.
/// Lambda actions load only when `lambda_host` (a local Lambda host runs the functions).
///
/// # Errors
/// [`TemplateError::Unreadable`] when the text is not YAML or has no `Resources`.
pub fn load(
    template: &str,
    parameters: &BTreeMap<String, String>,
    resources: &BTreeMap<String, String>,
    lambda_host: bool,
) -> Result<Loaded, TemplateError> {
    let template = Template::parse(template, parameters, resources)?;
    let mut loaded = Loaded::default();
    for (id, resource) in template.resources_of("AWS::IoT::TopicRule") {
        match template.deployed(resource) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(why) => {
                loaded.skipped.push((id.to_owned(), why));
                continue;
            }
        }
        match rule(&template, id, resource, lambda_host) {
            Ok(Some(rule)) => loaded.rules.push(rule),
            Ok(None) => {}
            Err(why) => loaded.skipped.push((id.to_owned(), why)),
        }
    }
    Ok(loaded)
}

fn rule(
    template: &Template,
    id: &str,
    resource: &Value,
    lambda_host: bool,
) -> Result<Option<Rule>, String> {
    let properties = resource.get("Properties").ok_or("no Properties")?;
    let payload = properties
        .get("TopicRulePayload")
        .ok_or("no TopicRulePayload")?;
    if payload.get("RuleDisabled").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    let version = payload
        .get("AwsIotSqlVersion")
        .and_then(Value::as_str)
        .unwrap_or("2015-10-08");
    if version != "2016-03-23" {
        return Err(format!(
            "SQL version {version}: only 2016-03-23 is emulated"
        ));
    }
    let sql = template.text(payload.get("Sql").ok_or("no Sql")?)?;
    let statement = Statement::parse(&sql).map_err(|e| e.to_string())?;
    let actions = payload
        .get("Actions")
        .and_then(Value::as_sequence)
        .ok_or("no Actions")?
        .iter()
        .map(|a| action(template, a, lambda_host))
        .collect::<Result<Vec<_>, _>>()?;
    let error_action = payload
        .get("ErrorAction")
        .map(|a| action(template, a, lambda_host))
        .transpose()?;
    let name = match properties.get("RuleName") {
        Some(name) => template.text(name)?,
        None => id.to_owned(),
    };
    Ok(Some(Rule {
        name,
        statement,
        actions,
        error_action,
    }))
}

fn action(template: &Template, value: &Value, lambda_host: bool) -> Result<Action, String> {
    let map = value.as_mapping().ok_or("an action is a map")?;
    let (kind, spec) = match map.iter().next() {
        Some((kind, spec)) if map.len() == 1 => (kind.as_str().unwrap_or_default(), spec),
        _ => return Err("an action has exactly one kind".into()),
    };
    let field = |name: &str| -> Result<String, String> {
        template.text(
            spec.get(name)
                .ok_or_else(|| format!("{kind} needs {name}"))?,
        )
    };
    let parsed = |name: &str| -> Result<SqlTemplate, String> {
        SqlTemplate::parse(&field(name)?).map_err(|e: SqlError| e.to_string())
    };
    match kind {
        "Sqs" => Ok(Action::Sqs {
            queue_url: field("QueueUrl")?,
            use_base64: spec
                .get("UseBase64")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }),
        "Kinesis" => Ok(Action::Kinesis {
            stream: field("StreamName")?,
            partition_key: match spec.get("PartitionKey") {
                Some(_) => parsed("PartitionKey")?,
                None => SqlTemplate::parse("${newuuid()}").map_err(|e| e.to_string())?,
            },
        }),
        "S3" => Ok(Action::S3 {
            bucket: field("BucketName")?,
            key: parsed("Key")?,
        }),
        "Republish" => Ok(Action::Republish {
            topic: parsed("Topic")?,
            qos: match spec.get("Qos").and_then(Value::as_u64) {
                None | Some(0) => 0,
                Some(1) => 1,
                Some(q) => return Err(format!("Republish Qos {q}: 0 or 1")),
            },
        }),
        "Lambda" if lambda_host => Ok(Action::Lambda {
            function: field("FunctionArn")?,
        }),
        "Lambda" => Err(
            "Lambda actions need the local Lambda host (--lambda-endpoint), which is not given"
                .into(),
        ),
        other => Err(format!("{other} actions are not emulated")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
Parameters:
  Delivery:
    Type: String
    Default: sqs
Conditions:
  ViaSqs: !Equals [!Ref Delivery, sqs]
  Direct: !Not [!Condition ViaSqs]
Resources:
  Queue:
    Type: AWS::SQS::Queue
  SqsRule:
    Type: AWS::IoT::TopicRule
    Condition: ViaSqs
    Properties:
      TopicRulePayload:
        AwsIotSqlVersion: "2016-03-23"
        Sql: >-
          SELECT *, topic() AS _topic FROM 'dt/+/+/telemetry'
        Actions:
          - Sqs:
              QueueUrl: !Ref Queue
              RoleArn: !GetAtt Role.Arn
              UseBase64: false
        ErrorAction:
          S3:
            BucketName: !Ref Bucket
            Key: "errors/${topic(3)}/${newuuid()}.json"
  DirectRule:
    Type: AWS::IoT::TopicRule
    Condition: Direct
    Properties:
      TopicRulePayload:
        AwsIotSqlVersion: "2016-03-23"
        Sql: SELECT * FROM 'dt/+/+/telemetry'
        Actions:
          - Republish:
              Topic: !Sub "copy/${!topic(3)}"
              Qos: 1
  LambdaRule:
    Type: AWS::IoT::TopicRule
    Properties:
      RuleName: !Sub "presence_${Delivery}"
      TopicRulePayload:
        AwsIotSqlVersion: "2016-03-23"
        Sql: SELECT * FROM '$aws/events/presence/+/+'
        Actions:
          - Lambda:
              FunctionArn: !GetAtt Fn.Arn
"#;

    fn names(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn conditions_choose_the_rules_and_references_take_local_names() {
        let resources = names(&[("Queue", "http://q/telemetry"), ("Bucket", "archive")]);
        let loaded = load(TEMPLATE, &BTreeMap::new(), &resources, false).unwrap();
        assert_eq!(loaded.rules.len(), 1);
        let rule = &loaded.rules[0];
        assert_eq!(rule.name, "SqsRule");
        assert_eq!(
            rule.actions,
            [Action::Sqs {
                queue_url: "http://q/telemetry".into(),
                use_base64: false
            }]
        );
        assert!(
            matches!(&rule.error_action, Some(Action::S3 { bucket, .. }) if bucket == "archive")
        );
        assert_eq!(loaded.skipped.len(), 1);
        assert_eq!(loaded.skipped[0].0, "LambdaRule");
        assert!(loaded.skipped[0].1.contains("Lambda host"));

        let direct = load(
            TEMPLATE,
            &names(&[("Delivery", "direct")]),
            &resources,
            false,
        )
        .unwrap();
        assert_eq!(direct.rules.len(), 1);
        assert_eq!(direct.rules[0].name, "DirectRule");
        let Action::Republish { topic, qos } = &direct.rules[0].actions[0] else {
            panic!("{:?}", direct.rules[0].actions);
        };
        assert_eq!(*qos, 1);
        let message = super::super::sql::Message {
            topic: "dt/app/dev-1/telemetry",
            payload: b"{}",
            client_id: "",
            principal: "",
            timestamp_ms: 0,
        };
        assert_eq!(
            topic.render(&message),
            "copy/dev-1",
            "!Sub's ${{!x}} is the rule's ${{x}}"
        );
    }

    #[test]
    fn a_reference_without_a_local_name_leaves_the_rule_out_with_the_reason() {
        let loaded = load(TEMPLATE, &BTreeMap::new(), &names(&[("Queue", "q")]), false).unwrap();
        assert!(loaded.rules.is_empty());
        let (id, why) = &loaded.skipped[0];
        assert_eq!(id, "SqsRule");
        assert!(why.contains("--resource Bucket="), "{why}");
    }

    #[test]
    fn the_projects_template_loads_its_sqs_telemetry_rules() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../infra/template.yaml"
        ))
        .unwrap();
        let resources = names(&[("TelemetryQueue", "http://q"), ("ArchiveBucket", "archive")]);
        let loaded = load(&text, &BTreeMap::new(), &resources, false).unwrap();
        let mut loaded_names: Vec<&str> = loaded.rules.iter().map(|r| r.name.as_str()).collect();
        loaded_names.sort_unstable();
        assert_eq!(loaded_names, ["TelemetryBinarySqsRule", "TelemetrySqsRule"]);
        assert!(
            loaded.skipped.iter().all(|(_, why)| why.contains("Lambda")),
            "{:?}",
            loaded.skipped
        );
        assert!(load("not: [yaml", &BTreeMap::new(), &resources, false).is_err());
    }

    #[test]
    fn with_a_lambda_host_every_rule_of_the_project_loads() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../infra/template.yaml"
        ))
        .unwrap();
        let resources = names(&[("TelemetryQueue", "http://q"), ("ArchiveBucket", "archive")]);
        let loaded = load(&text, &BTreeMap::new(), &resources, true).unwrap();
        assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
        let presence = loaded
            .rules
            .iter()
            .find(|r| r.name == "PresenceRule")
            .expect("the presence rule");
        assert_eq!(
            presence.actions,
            [Action::Lambda {
                function: "arn:aws:lambda:us-east-1:123456789012:function:PresenceFunction".into()
            }]
        );
        let mut all: Vec<&str> = loaded.rules.iter().map(|r| r.name.as_str()).collect();
        all.sort_unstable();
        assert_eq!(
            all,
            [
                "JitrRule",
                "NamedShadowDocumentsRule",
                "PresenceRule",
                "ShadowDocumentsRule",
                "TelemetryBinarySqsRule",
                "TelemetrySqsRule"
            ]
        );
    }
}
