//! A SAM/CloudFormation template read as the local stack deploys it: parameters at their
//! defaults unless overridden, `Conditions` evaluated, and the intrinsic functions a value uses
//! (`Ref`, `Fn::GetAtt`, `Fn::Sub`, `Fn::Join`, `Fn::If`, `Fn::Select`, `AWS::NoValue`, the
//! pseudo parameters) resolved to the local names the stack gives (`LogicalId=name`). Both the
//! local IoT Core (its rules) and the local Lambda host (its functions) read the template here,
//! so the two cannot resolve a reference differently.
//!
//! What a reference means follows CloudFormation's return values: `Ref` of a parameter is its
//! value (a `CommaDelimitedList` is a list), `Ref` of a resource its local name (a queue's URL, a
//! stream's, table's, bucket's or policy's name; a function's name is its logical id unless given),
//! and `Fn::GetAtt X.Arn` the ARN built from that name for the resource's type.
//!
//! <https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/intrinsic-function-reference.html>

use std::collections::BTreeMap;

use serde_norway::Value;
use thiserror::Error;

/// The account id the local stack (moto) uses in ARNs.
pub const ACCOUNT_ID: &str = "123456789012";
/// The region of the local stack.
pub const REGION: &str = "us-east-1";

/// Why the template could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    /// Not YAML, or no `Resources` map.
    #[error("template: {0}")]
    Unreadable(String),
}

/// A resolved value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Text (numbers and booleans as CloudFormation passes them: their text).
    Text(String),
    /// A list (`CommaDelimitedList` parameters, YAML sequences).
    List(Vec<String>),
    /// `!Ref AWS::NoValue`: the property is left out.
    NoValue,
}

/// A template with its parameters and local names.
#[derive(Debug, Clone)]
pub struct Template {
    doc: Value,
    parameters: BTreeMap<String, String>,
    list_parameters: Vec<String>,
    resources: BTreeMap<String, String>,
}

impl Template {
    /// Reads `text` (YAML). `parameters` override the template's defaults; `resources` map a
    /// logical id to the local name (or URL) a `Ref` of it means.
    ///
    /// # Errors
    /// [`TemplateError::Unreadable`] when the text is not YAML or has no `Resources` map.
    pub fn parse(
        text: &str,
        parameters: &BTreeMap<String, String>,
        resources: &BTreeMap<String, String>,
    ) -> Result<Self, TemplateError> {
        let doc: Value =
            serde_norway::from_str(text).map_err(|e| TemplateError::Unreadable(e.to_string()))?;
        if doc.get("Resources").and_then(Value::as_mapping).is_none() {
            return Err(TemplateError::Unreadable("no Resources".into()));
        }
        let declared = doc.get("Parameters").and_then(Value::as_mapping);
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        let mut list_parameters = Vec::new();
        for (name, spec) in declared.into_iter().flatten() {
            let Some(name) = name.as_str() else { continue };
            if spec.get("Type").and_then(Value::as_str) == Some("CommaDelimitedList") {
                list_parameters.push(name.to_owned());
            }
            if let Some(default) = spec.get("Default").and_then(scalar) {
                values.insert(name.to_owned(), default);
            }
        }
        values.extend(parameters.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(Self {
            doc,
            parameters: values,
            list_parameters,
            resources: resources.clone(),
        })
    }

    /// Every resource of `kind` (e.g. `AWS::IoT::TopicRule`), in the template's order, with its
    /// logical id: `(id, resource)`.
    pub fn resources_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Value)> {
        self.all_resources()
            .filter(move |(_, r)| r.get("Type").and_then(Value::as_str) == Some(kind))
    }

    fn all_resources(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.doc
            .get("Resources")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
            .filter_map(|(id, r)| Some((id.as_str()?, r)))
    }

    /// What `Ref` of `id` means: its local name (a parameter's value, a resource's name).
    ///
    /// # Errors
    /// No local name was given for it, or it is a list.
    pub fn local_name(&self, id: &str) -> Result<String, String> {
        match self.reference(id)? {
            Resolved::Text(text) => Ok(text),
            _ => Err(format!("{id} has no single local name")),
        }
    }

    /// Every resource's `(logical id, type)`.
    pub fn all_resource_types(&self) -> impl Iterator<Item = (&str, &str)> {
        self.all_resources().map(|(id, r)| {
            (
                id,
                r.get("Type").and_then(Value::as_str).unwrap_or_default(),
            )
        })
    }

    /// The type of the resource `id`, if the template has it.
    pub fn resource_type(&self, id: &str) -> Option<&str> {
        self.doc
            .get("Resources")?
            .get(id)?
            .get("Type")
            .and_then(Value::as_str)
    }

    /// A top-level section, e.g. `Globals`.
    pub fn section(&self, name: &str) -> Option<&Value> {
        self.doc.get(name)
    }

    /// Whether `resource` is deployed: it has no `Condition`, or its condition holds.
    ///
    /// # Errors
    /// The condition names no condition of the template, or uses a function not supported here.
    pub fn deployed(&self, resource: &Value) -> Result<bool, String> {
        match resource.get("Condition").and_then(Value::as_str) {
            None => Ok(true),
            Some(name) => self.condition(name, 0),
        }
    }

    /// `value` as text: a literal, or a function whose result is text.
    ///
    /// # Errors
    /// What [`Template::resolve`] refuses, or a value that resolves to a list or to no value.
    pub fn text(&self, value: &Value) -> Result<String, String> {
        match self.resolve(value)? {
            Resolved::Text(text) => Ok(text),
            Resolved::List(list) => Err(format!("{list:?} is a list, not text")),
            Resolved::NoValue => Err("AWS::NoValue where a value is needed".into()),
        }
    }

    /// `value` resolved.
    ///
    /// # Errors
    /// A reference without a local name (the message names the `LogicalId=` to give), a function
    /// not supported here, or a malformed argument.
    pub fn resolve(&self, value: &Value) -> Result<Resolved, String> {
        self.resolve_at(value, 0)
    }

    fn resolve_at(&self, value: &Value, depth: usize) -> Result<Resolved, String> {
        if depth > 32 {
            return Err("functions nest too deep".into());
        }
        let Some((function, argument)) = function(value) else {
            return match value {
                Value::Sequence(items) => Ok(Resolved::List(
                    items
                        .iter()
                        .map(|item| self.text_at(item, depth + 1))
                        .collect::<Result<_, _>>()?,
                )),
                other => scalar(other)
                    .map(Resolved::Text)
                    .ok_or_else(|| format!("{other:?} is not a value")),
            };
        };
        match function {
            "Ref" => {
                let name = argument.as_str().ok_or("Ref takes a name")?;
                self.reference(name)
            }
            "GetAtt" => {
                let (id, attribute) = match argument {
                    Value::String(s) => {
                        s.split_once('.').map(|(a, b)| (a.to_owned(), b.to_owned()))
                    }
                    Value::Sequence(parts) => match parts.as_slice() {
                        [id, attribute] => Some((
                            id.as_str().unwrap_or_default().to_owned(),
                            attribute.as_str().unwrap_or_default().to_owned(),
                        )),
                        _ => None,
                    },
                    _ => None,
                }
                .ok_or("GetAtt takes Resource.Attribute")?;
                self.attribute(&id, &attribute).map(Resolved::Text)
            }
            "Sub" => {
                let (text, variables) = match argument {
                    Value::String(text) => (text.as_str(), None),
                    Value::Sequence(parts) => match parts.as_slice() {
                        [Value::String(text), Value::Mapping(variables)] => {
                            (text.as_str(), Some(variables))
                        }
                        _ => return Err("Sub takes text or [text, {variables}]".into()),
                    },
                    _ => return Err("Sub takes text or [text, {variables}]".into()),
                };
                substitute(text, |name| {
                    if let Some(value) = variables.and_then(|v| v.get(name)) {
                        return self.text_at(value, depth + 1);
                    }
                    match name.split_once('.') {
                        Some((id, attribute)) => self.attribute(id, attribute),
                        None => match self.reference(name)? {
                            Resolved::Text(text) => Ok(text),
                            _ => Err(format!("${{{name}}} is not text")),
                        },
                    }
                })
                .map(Resolved::Text)
            }
            "Join" => {
                let [separator, items] = argument
                    .as_sequence()
                    .map(Vec::as_slice)
                    .and_then(|s| <&[Value; 2]>::try_from(s).ok())
                    .ok_or("Join takes [separator, list]")?;
                let separator = separator.as_str().ok_or("Join's separator is text")?;
                let items = match items {
                    Value::Sequence(items) => items
                        .iter()
                        .filter_map(|item| match self.resolve_at(item, depth + 1) {
                            Ok(Resolved::NoValue) => None,
                            Ok(Resolved::Text(t)) => Some(Ok(t)),
                            Ok(Resolved::List(_)) => Some(Err("Join of a nested list".to_owned())),
                            Err(e) => Some(Err(e)),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    other => match self.resolve_at(other, depth + 1)? {
                        Resolved::List(list) => list,
                        _ => return Err("Join's second argument is a list".into()),
                    },
                };
                Ok(Resolved::Text(items.join(separator)))
            }
            "Select" => {
                let [index, items] = argument
                    .as_sequence()
                    .map(Vec::as_slice)
                    .and_then(|s| <&[Value; 2]>::try_from(s).ok())
                    .ok_or("Select takes [index, list]")?;
                let index: usize = self
                    .text_at(index, depth + 1)?
                    .parse()
                    .map_err(|_| "Select's index is a number")?;
                match self.resolve_at(items, depth + 1)? {
                    Resolved::List(list) => list
                        .get(index)
                        .cloned()
                        .map(Resolved::Text)
                        .ok_or_else(|| format!("Select index {index} out of range")),
                    _ => Err("Select's second argument is a list".into()),
                }
            }
            "If" => {
                let [condition, then, otherwise] = argument
                    .as_sequence()
                    .map(Vec::as_slice)
                    .and_then(|s| <&[Value; 3]>::try_from(s).ok())
                    .ok_or("If takes [condition, value if true, value if false]")?;
                let condition = condition.as_str().ok_or("If's condition is a name")?;
                if self.condition(condition, depth + 1)? {
                    self.resolve_at(then, depth + 1)
                } else {
                    self.resolve_at(otherwise, depth + 1)
                }
            }
            other => Err(format!("Fn::{other} is not supported here")),
        }
    }

    /// `value` (a map, a list, a scalar, or a function anywhere in them) resolved to JSON: the
    /// shape a property such as a policy document has once deployed. A function's text is a
    /// JSON string, its list an array; an entry that resolves to `AWS::NoValue` is left out;
    /// YAML numbers and booleans keep their type.
    ///
    /// # Errors
    /// What [`Template::resolve`] refuses anywhere inside, or a map key that is not text.
    pub fn resolve_json(&self, value: &Value) -> Result<serde_json::Value, String> {
        self.json_at(value, 0)?
            .ok_or_else(|| "AWS::NoValue where a value is needed".to_owned())
    }

    fn json_at(&self, value: &Value, depth: usize) -> Result<Option<serde_json::Value>, String> {
        if depth > 64 {
            return Err("the value nests too deep".into());
        }
        if function(value).is_some() {
            return Ok(match self.resolve_at(value, depth + 1)? {
                Resolved::Text(text) => Some(text.into()),
                Resolved::List(list) => Some(list.into()),
                Resolved::NoValue => None,
            });
        }
        Ok(Some(match value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Number(n) => serde_json::from_str(&n.to_string())
                .map_err(|_| format!("{n} is not a JSON number"))?,
            Value::String(s) => s.clone().into(),
            Value::Sequence(items) => items
                .iter()
                .map(|item| self.json_at(item, depth + 1))
                .filter_map(Result::transpose)
                .collect::<Result<Vec<_>, _>>()?
                .into(),
            Value::Mapping(map) => {
                let mut object = serde_json::Map::new();
                for (key, item) in map {
                    let key = key.as_str().ok_or("a map key is text")?;
                    if let Some(item) = self.json_at(item, depth + 1)? {
                        object.insert(key.to_owned(), item);
                    }
                }
                object.into()
            }
            Value::Tagged(tagged) => return Err(format!("{} is not supported here", tagged.tag)),
        }))
    }

    fn text_at(&self, value: &Value, depth: usize) -> Result<String, String> {
        match self.resolve_at(value, depth)? {
            Resolved::Text(text) => Ok(text),
            Resolved::List(list) => Err(format!("{list:?} is a list, not text")),
            Resolved::NoValue => Err("AWS::NoValue where a value is needed".into()),
        }
    }

    fn condition(&self, name: &str, depth: usize) -> Result<bool, String> {
        let body = self
            .doc
            .get("Conditions")
            .and_then(|c| c.get(name))
            .ok_or_else(|| format!("no condition {name}"))?;
        self.truth(body, depth + 1)
    }

    fn truth(&self, value: &Value, depth: usize) -> Result<bool, String> {
        if depth > 32 {
            return Err("conditions nest too deep".into());
        }
        let Some((function, argument)) = function(value) else {
            return Err(format!("a condition is a function, not {value:?}"));
        };
        let args = || {
            argument
                .as_sequence()
                .ok_or_else(|| format!("Fn::{function} takes a list"))
        };
        match function {
            "Equals" => match args()?.as_slice() {
                [a, b] => Ok(self.text_at(a, depth + 1)? == self.text_at(b, depth + 1)?),
                _ => Err("Fn::Equals takes two values".into()),
            },
            "Not" => match args()?.as_slice() {
                [c] => Ok(!self.truth(c, depth + 1)?),
                _ => Err("Fn::Not takes one condition".into()),
            },
            "And" => args()?
                .iter()
                .try_fold(true, |all, c| Ok(all && self.truth(c, depth + 1)?)),
            "Or" => args()?
                .iter()
                .try_fold(false, |any, c| Ok(any || self.truth(c, depth + 1)?)),
            "Condition" => {
                let name = argument.as_str().ok_or("Condition takes a name")?;
                self.condition(name, depth)
            }
            other => Err(format!("condition function Fn::{other} is not supported")),
        }
    }

    fn reference(&self, name: &str) -> Result<Resolved, String> {
        if let Some(value) = self.parameters.get(name) {
            return Ok(if self.list_parameters.iter().any(|p| p == name) {
                Resolved::List(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            } else {
                Resolved::Text(value.clone())
            });
        }
        if let Some(value) = self.resources.get(name) {
            return Ok(Resolved::Text(value.clone()));
        }
        match name {
            "AWS::Region" => Ok(Resolved::Text(REGION.into())),
            "AWS::Partition" => Ok(Resolved::Text("aws".into())),
            "AWS::AccountId" => Ok(Resolved::Text(ACCOUNT_ID.into())),
            "AWS::URLSuffix" => Ok(Resolved::Text("amazonaws.com".into())),
            "AWS::StackName" => Ok(Resolved::Text("shoal-local".into())),
            "AWS::NoValue" => Ok(Resolved::NoValue),
            _ if self.is_function(name) => Ok(Resolved::Text(name.to_owned())),
            _ => Err(format!("no local name for {name} (--resource {name}=…)")),
        }
    }

    fn is_function(&self, id: &str) -> bool {
        matches!(
            self.resource_type(id),
            Some("AWS::Serverless::Function" | "AWS::Lambda::Function")
        )
    }

    /// `Fn::GetAtt id.attribute`: `Arn` built for the resource's type from its local name (or the
    /// local name itself when it is already an ARN); any other attribute is the local name.
    fn attribute(&self, id: &str, attribute: &str) -> Result<String, String> {
        let name = match self.reference(id)? {
            Resolved::Text(name) => name,
            _ => return Err(format!("{id} has no local name")),
        };
        if attribute != "Arn" || name.starts_with("arn:") {
            return Ok(name);
        }
        let kind = self.resource_type(id).unwrap_or_default();
        Ok(arn(kind, &name))
    }
}

/// The ARN of a resource of CloudFormation type `kind` whose local name is `name` (a queue's
/// URL gives its last path segment), in the local account and region.
pub fn arn(kind: &str, name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    match kind {
        "AWS::SQS::Queue" => format!("arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{last}"),
        "AWS::Kinesis::Stream" => format!("arn:aws:kinesis:{REGION}:{ACCOUNT_ID}:stream/{name}"),
        "AWS::DynamoDB::Table" => format!("arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{name}"),
        "AWS::S3::Bucket" => format!("arn:aws:s3:::{name}"),
        "AWS::SNS::Topic" => format!("arn:aws:sns:{REGION}:{ACCOUNT_ID}:{last}"),
        "AWS::Serverless::Function" | "AWS::Lambda::Function" => {
            format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}")
        }
        "AWS::IAM::Role" => format!("arn:aws:iam::{ACCOUNT_ID}:role/{name}"),
        "AWS::IoT::TopicRule" => format!("arn:aws:iot:{REGION}:{ACCOUNT_ID}:rule/{name}"),
        "AWS::IoT::Policy" => format!("arn:aws:iot:{REGION}:{ACCOUNT_ID}:policy/{name}"),
        "AWS::KMS::Key" => format!("arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/{name}"),
        _ => format!("arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:{kind}/{name}"),
    }
}

/// The function a value calls, in either spelling (`!Ref x`, `{Ref: x}`, `!GetAtt`,
/// `{Fn::GetAtt: …}`): `(name without Fn::, argument)`.
fn function(value: &Value) -> Option<(&str, &Value)> {
    match value {
        Value::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.trim_start_matches('!');
            // The tag's text lives in the tag; map it to a static name for the caller.
            FUNCTIONS
                .iter()
                .find(|f| **f == name)
                .map(|f| (*f, &tagged.value))
        }
        Value::Mapping(map) if map.len() == 1 => {
            let (key, argument) = map.iter().next()?;
            let key = key.as_str()?;
            let name = if key == "Ref" {
                "Ref"
            } else {
                key.strip_prefix("Fn::")?
            };
            FUNCTIONS
                .iter()
                .find(|f| **f == name)
                .map(|f| (*f, argument))
        }
        _ => None,
    }
}

const FUNCTIONS: &[&str] = &[
    "Ref",
    "GetAtt",
    "Sub",
    "Join",
    "Select",
    "If",
    "Equals",
    "Not",
    "And",
    "Or",
    "Condition",
    "Split",
    "Base64",
    "GetAZs",
    "ImportValue",
    "FindInMap",
    "Cidr",
    "Length",
    "ToJsonString",
];

/// CloudFormation's `Fn::Sub` of `text`: each `${Name}` is what `lookup` gives for `Name`, and
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

#[cfg(test)]
mod tests;
