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
use thiserror::Error;

use super::sql::{SqlError, Statement, Template};

/// Why the template could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    /// Not YAML, or no `Resources` map.
    #[error("template: {0}")]
    Unreadable(String),
}

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
        partition_key: Template,
    },
    /// S3 PutObject of the rule's output.
    S3 {
        /// The bucket.
        bucket: String,
        /// The object key, a substitution template.
        key: Template,
    },
    /// The rule's output published again on a topic.
    Republish {
        /// The topic, a substitution template.
        topic: Template,
        /// QoS 0 or 1.
        qos: u8,
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
        }
    }

    /// The resource it writes to (`failedResource`).
    pub fn resource(&self) -> String {
        match self {
            Self::Sqs { queue_url, .. } => queue_url.clone(),
            Self::Kinesis { stream, .. } => stream.clone(),
            Self::S3 { bucket, .. } => bucket.clone(),
            Self::Republish { .. } => "republish".into(),
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
///
/// # Errors
/// [`TemplateError::Unreadable`] when the text is not YAML or has no `Resources`.
pub fn load(
    template: &str,
    parameters: &BTreeMap<String, String>,
    resources: &BTreeMap<String, String>,
) -> Result<Loaded, TemplateError> {
    let doc: Value =
        serde_norway::from_str(template).map_err(|e| TemplateError::Unreadable(e.to_string()))?;
    let Some(all) = doc.get("Resources").and_then(Value::as_mapping) else {
        return Err(TemplateError::Unreadable("no Resources".into()));
    };
    let mut values: BTreeMap<String, String> = doc
        .get("Parameters")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(name, spec)| Some((name.as_str()?.to_owned(), scalar(spec.get("Default")?)?)))
        .collect();
    values.extend(parameters.iter().map(|(k, v)| (k.clone(), v.clone())));
    let scope = Scope {
        doc: &doc,
        parameters: &values,
        resources,
    };
    let mut loaded = Loaded::default();
    for (id, resource) in all {
        let Some(id) = id.as_str() else { continue };
        if resource.get("Type").and_then(Value::as_str) != Some("AWS::IoT::TopicRule") {
            continue;
        }
        if let Some(condition) = resource.get("Condition").and_then(Value::as_str) {
            match scope.condition(condition, 0) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(why) => {
                    loaded.skipped.push((id.to_owned(), why));
                    continue;
                }
            }
        }
        match scope.rule(id, resource) {
            Ok(Some(rule)) => loaded.rules.push(rule),
            Ok(None) => {}
            Err(why) => loaded.skipped.push((id.to_owned(), why)),
        }
    }
    Ok(loaded)
}

/// CloudFormation's `!Sub` of `text`: each `${Name}` is what `lookup` gives for `Name`, and
/// `${!x}` is the literal `${x}` (how a template writes IoT's own substitution templates).
///
/// # Errors
/// An unclosed `${`, or the first name `lookup` cannot resolve (its error).
pub fn substitute(
    text: &str,
    lookup: impl Fn(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {text}"))?
            + start;
        let name = &rest[start + 2..end];
        match name.strip_prefix('!') {
            Some(literal) => {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            }
            None => out.push_str(&lookup(name)?),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

struct Scope<'a> {
    doc: &'a Value,
    parameters: &'a BTreeMap<String, String>,
    resources: &'a BTreeMap<String, String>,
}

impl Scope<'_> {
    fn condition(&self, name: &str, depth: usize) -> Result<bool, String> {
        let body = self
            .doc
            .get("Conditions")
            .and_then(|c| c.get(name))
            .ok_or_else(|| format!("no condition {name}"))?;
        self.truth(body, depth + 1)
    }

    fn truth(&self, value: &Value, depth: usize) -> Result<bool, String> {
        if depth > 16 {
            return Err("conditions nest too deep".into());
        }
        let Value::Tagged(tagged) = value else {
            return Err(format!("a condition is a function, not {value:?}"));
        };
        let args = || {
            tagged
                .value
                .as_sequence()
                .ok_or_else(|| format!("!{} takes a list", tagged.tag))
        };
        match tagged.tag.to_string().trim_start_matches('!') {
            "Equals" => match args()?.as_slice() {
                [a, b] => Ok(self.text(a)? == self.text(b)?),
                _ => Err("!Equals takes two values".into()),
            },
            "Not" => match args()?.as_slice() {
                [c] => Ok(!self.truth(c, depth + 1)?),
                _ => Err("!Not takes one condition".into()),
            },
            "And" => args()?
                .iter()
                .try_fold(true, |all, c| Ok(all && self.truth(c, depth + 1)?)),
            "Or" => args()?
                .iter()
                .try_fold(false, |any, c| Ok(any || self.truth(c, depth + 1)?)),
            "Condition" => {
                let name = tagged.value.as_str().ok_or("!Condition takes a name")?;
                self.condition(name, depth)
            }
            other => Err(format!("condition function !{other} is not supported")),
        }
    }

    /// A value as text: a literal, `!Ref` of a parameter or a resource, `!GetAtt X.Arn` of a
    /// resource, `!Sub` of those.
    fn text(&self, value: &Value) -> Result<String, String> {
        match value {
            Value::Tagged(tagged) => match tagged.tag.to_string().trim_start_matches('!') {
                "Ref" => {
                    let name = tagged.value.as_str().ok_or("!Ref takes a name")?;
                    self.reference(name)
                }
                "GetAtt" => {
                    let target = match &tagged.value {
                        Value::String(s) => s.split_once('.').map(|(id, _)| id.to_owned()),
                        Value::Sequence(parts) => {
                            parts.first().and_then(Value::as_str).map(str::to_owned)
                        }
                        _ => None,
                    }
                    .ok_or("!GetAtt takes Resource.Attribute")?;
                    self.resources.get(&target).cloned().ok_or_else(|| {
                        format!("no local name for {target} (--resource {target}=…)")
                    })
                }
                "Sub" => {
                    let text = tagged
                        .value
                        .as_str()
                        .ok_or("!Sub with a variables map is not supported")?;
                    self.substitute(text)
                }
                other => Err(format!("!{other} is not supported in an action")),
            },
            other => scalar(other).ok_or_else(|| format!("{other:?} is not text")),
        }
    }

    fn reference(&self, name: &str) -> Result<String, String> {
        if let Some(value) = self
            .parameters
            .get(name)
            .or_else(|| self.resources.get(name))
        {
            return Ok(value.clone());
        }
        match name {
            "AWS::Region" => Ok("us-east-1".into()),
            "AWS::Partition" => Ok("aws".into()),
            "AWS::AccountId" => Ok("123456789012".into()),
            _ => Err(format!("no local name for {name} (--resource {name}=…)")),
        }
    }

    /// `!Sub`: `${Name}` and `${Name.Attr}` resolved, `${!x}` kept as `${x}`.
    fn substitute(&self, text: &str) -> Result<String, String> {
        substitute(text, |name| {
            self.reference(name.split('.').next().unwrap_or(name))
        })
    }

    fn rule(&self, id: &str, resource: &Value) -> Result<Option<Rule>, String> {
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
        let sql = self.text(payload.get("Sql").ok_or("no Sql")?)?;
        let statement = Statement::parse(&sql).map_err(|e| e.to_string())?;
        let actions = payload
            .get("Actions")
            .and_then(Value::as_sequence)
            .ok_or("no Actions")?
            .iter()
            .map(|a| self.action(a))
            .collect::<Result<Vec<_>, _>>()?;
        let error_action = payload
            .get("ErrorAction")
            .map(|a| self.action(a))
            .transpose()?;
        let name = match properties.get("RuleName") {
            Some(name) => self.text(name)?,
            None => id.to_owned(),
        };
        Ok(Some(Rule {
            name,
            statement,
            actions,
            error_action,
        }))
    }

    fn action(&self, value: &Value) -> Result<Action, String> {
        let map = value.as_mapping().ok_or("an action is a map")?;
        let (kind, spec) = match map.iter().next() {
            Some((kind, spec)) if map.len() == 1 => (kind.as_str().unwrap_or_default(), spec),
            _ => return Err("an action has exactly one kind".into()),
        };
        let field = |name: &str| -> Result<String, String> {
            self.text(
                spec.get(name)
                    .ok_or_else(|| format!("{kind} needs {name}"))?,
            )
        };
        let template = |name: &str| -> Result<Template, String> {
            Template::parse(&field(name)?).map_err(|e: SqlError| e.to_string())
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
                    Some(_) => template("PartitionKey")?,
                    None => Template::parse("${newuuid()}").map_err(|e| e.to_string())?,
                },
            }),
            "S3" => Ok(Action::S3 {
                bucket: field("BucketName")?,
                key: template("Key")?,
            }),
            "Republish" => Ok(Action::Republish {
                topic: template("Topic")?,
                qos: match spec.get("Qos").and_then(Value::as_u64) {
                    None | Some(0) => 0,
                    Some(1) => 1,
                    Some(q) => return Err(format!("Republish Qos {q}: 0 or 1")),
                },
            }),
            "Lambda" => Err(
                "Lambda actions need the local Lambda host, which the local stack does not run yet"
                    .into(),
            ),
            other => Err(format!("{other} actions are not emulated")),
        }
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
        let loaded = load(TEMPLATE, &BTreeMap::new(), &resources).unwrap();
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

        let direct = load(TEMPLATE, &names(&[("Delivery", "direct")]), &resources).unwrap();
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
        let loaded = load(TEMPLATE, &BTreeMap::new(), &names(&[("Queue", "q")])).unwrap();
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
        let loaded = load(&text, &BTreeMap::new(), &resources).unwrap();
        let mut loaded_names: Vec<&str> = loaded.rules.iter().map(|r| r.name.as_str()).collect();
        loaded_names.sort_unstable();
        assert_eq!(loaded_names, ["TelemetryBinarySqsRule", "TelemetrySqsRule"]);
        assert!(
            loaded.skipped.iter().all(|(_, why)| why.contains("Lambda")),
            "{:?}",
            loaded.skipped
        );
        assert!(load("not: [yaml", &BTreeMap::new(), &resources).is_err());
    }
}
