use std::collections::BTreeMap;

use super::*;

const TEMPLATE: &str = r#"
Parameters:
  Delivery:
    Type: String
    Default: sqs
  Apps:
    Type: CommaDelimitedList
    Default: "env, power"
  Models:
    Type: CommaDelimitedList
    Default: th-v2
  Name:
    Type: String
    Default: shoal-fleet
Conditions:
  ViaSqs: !Equals [!Ref Delivery, sqs]
  Direct: !Not [!Condition ViaSqs]
  Both: !And [!Condition ViaSqs, {"Fn::Equals": [!Ref Name, shoal-fleet]}]
Resources:
  Queue:
    Type: AWS::SQS::Queue
    Condition: ViaSqs
  Fn:
    Type: AWS::Serverless::Function
  Table:
    Type: AWS::DynamoDB::Table
  Values:
    Type: Custom::Values
    Properties:
      Joined: !Join [",", !Ref Apps]
      JoinedLiteral: !Join ["-", [a, !Ref Delivery, !Ref AWS::NoValue]]
      Selected: !Select [1, !Ref Apps]
      SubVariables: !Sub
        - "${Name}=${Models}"
        - Models: !Join [",", !Ref Models]
      SubPlain: !Sub "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:thing/*"
      SubAttribute: !Sub "${Table.Arn}/index/offline"
      SubLiteral: !Sub "copy/${!topic(3)}/${Delivery}"
      IfTrue: !If [ViaSqs, !GetAtt Queue.Arn, !Ref AWS::NoValue]
      IfFalse: !If [Direct, x, !Ref AWS::NoValue]
      FunctionArn: !GetAtt Fn.Arn
      FunctionName: {"Ref": "Fn"}
      LongForm: {"Fn::GetAtt": [Table, Arn]}
      QueueUrl: !Ref Queue
      Number: 30
      Missing: !Ref Nowhere
"#;

fn names(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn template(parameters: &[(&str, &str)]) -> Template {
    Template::parse(
        TEMPLATE,
        &names(parameters),
        &names(&[
            (
                "Queue",
                "http://127.0.0.1:4566/123456789012/shoal-local-telemetry",
            ),
            ("Table", "shoal-local-devices"),
        ]),
    )
    .unwrap()
}

fn property(template: &Template, name: &str) -> Result<Resolved, String> {
    let (_, values) = template.resources_of("Custom::Values").next().unwrap();
    template.resolve(&values["Properties"][name])
}

fn text(value: &str) -> Result<Resolved, String> {
    Ok(Resolved::Text(value.into()))
}

#[test]
fn every_function_the_project_uses_resolves_to_local_names() {
    let t = template(&[]);
    assert_eq!(
        property(&t, "Joined"),
        text("env,power"),
        "list parameters are trimmed lists"
    );
    assert_eq!(
        property(&t, "JoinedLiteral"),
        text("a-sqs"),
        "NoValue leaves a Join"
    );
    assert_eq!(property(&t, "Selected"), text("power"));
    assert_eq!(property(&t, "SubVariables"), text("shoal-fleet=th-v2"));
    assert_eq!(
        property(&t, "SubPlain"),
        text("arn:aws:iot:us-east-1:123456789012:thing/*")
    );
    assert_eq!(
        property(&t, "SubAttribute"),
        text("arn:aws:dynamodb:us-east-1:123456789012:table/shoal-local-devices/index/offline")
    );
    assert_eq!(property(&t, "SubLiteral"), text("copy/${topic(3)}/sqs"));
    assert_eq!(
        property(&t, "IfTrue"),
        text("arn:aws:sqs:us-east-1:123456789012:shoal-local-telemetry"),
        "a queue's Arn from its URL"
    );
    assert_eq!(property(&t, "IfFalse"), Ok(Resolved::NoValue));
    assert_eq!(
        property(&t, "FunctionArn"),
        text("arn:aws:lambda:us-east-1:123456789012:function:Fn"),
        "a function is named by its logical id"
    );
    assert_eq!(property(&t, "FunctionName"), text("Fn"));
    assert_eq!(
        property(&t, "LongForm"),
        text("arn:aws:dynamodb:us-east-1:123456789012:table/shoal-local-devices")
    );
    assert_eq!(
        property(&t, "QueueUrl"),
        text("http://127.0.0.1:4566/123456789012/shoal-local-telemetry")
    );
    assert_eq!(property(&t, "Number"), text("30"));
    let missing = property(&t, "Missing").unwrap_err();
    assert!(missing.contains("--resource Nowhere="), "{missing}");
}

#[test]
fn conditions_follow_parameters() {
    let t = template(&[]);
    let (_, queue) = t.resources_of("AWS::SQS::Queue").next().unwrap();
    assert_eq!(t.deployed(queue), Ok(true));
    let direct = template(&[("Delivery", "direct")]);
    assert_eq!(direct.deployed(queue), Ok(false));
    assert_eq!(property(&direct, "IfFalse"), text("x"));
    assert_eq!(property(&direct, "IfTrue"), Ok(Resolved::NoValue));
    let renamed = template(&[("Models", "a, b,,c")]);
    assert_eq!(
        property(&renamed, "SubVariables"),
        text("shoal-fleet=a,b,c")
    );
}

#[test]
fn unreadable_templates_and_unsupported_functions_are_refused() {
    assert!(Template::parse("not: [yaml", &BTreeMap::new(), &BTreeMap::new()).is_err());
    assert!(Template::parse("a: 1", &BTreeMap::new(), &BTreeMap::new()).is_err());
    let t = Template::parse(
        "Resources:\n  X:\n    Type: T\n    Properties:\n      P: !Base64 abc\n",
        &BTreeMap::new(),
        &BTreeMap::new(),
    )
    .unwrap();
    let (_, x) = t.resources_of("T").next().unwrap();
    assert!(
        t.resolve(&x["Properties"]["P"])
            .unwrap_err()
            .contains("Base64")
    );
}

#[test]
fn the_projects_template_parses() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../infra/template.yaml"
    ))
    .unwrap();
    let t = Template::parse(&text, &BTreeMap::new(), &BTreeMap::new()).unwrap();
    assert!(t.resources_of("AWS::Serverless::Function").count() >= 6);
    assert!(t.section("Globals").is_some());
}

#[test]
fn documents_resolve_to_json_with_their_types() {
    let t = Template::parse(
        r#"
Parameters:
  Prefix: {Type: String, Default: shoal/alerts}
Resources:
  Policy:
    Type: AWS::IoT::Policy
    Properties:
      PolicyDocument:
        Version: "2012-10-17"
        Statement:
          - Effect: Allow
            Action: [iot:Connect]
            Resource: !Sub "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:client/${!iot:Connection.Thing.ThingName}"
            Condition:
              Bool:
                iot:Connection.Thing.IsAttached: "true"
          - Effect: Allow
            Action: iot:Publish
            Resource: [!Sub "topic/${Prefix}/*", !Ref AWS::NoValue]
            Sid: !Ref AWS::NoValue
            Count: 3
            Flag: true
"#,
        &BTreeMap::new(),
        &BTreeMap::new(),
    )
    .unwrap();
    let (_, policy) = t.resources_of("AWS::IoT::Policy").next().unwrap();
    let document = t
        .resolve_json(&policy["Properties"]["PolicyDocument"])
        .unwrap();
    assert_eq!(
        document,
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["iot:Connect"],
                    "Resource": "arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}",
                    "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
                },
                {
                    "Effect": "Allow",
                    "Action": "iot:Publish",
                    "Resource": ["topic/shoal/alerts/*"],
                    "Count": 3,
                    "Flag": true,
                },
            ],
        })
    );
}
