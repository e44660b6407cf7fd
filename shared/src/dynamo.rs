//! What Shoal's DynamoDB edges share: creating an on-demand table for local setup, and reading
//! every item of a partition whose sort key starts with a prefix.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};

use crate::aws::{AwsError, AwsResultExt};

pub type Item = HashMap<String, AttributeValue>;

fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> AwsError {
    AwsError::local("dynamodb", "CreateTable", e)
}

pub fn attribute(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition, AwsError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(build_error)
}

pub fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, AwsError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(build_error)
}

/// An on-demand CreateTable with a string partition key and, optionally, a string sort key;
/// the caller adds indexes and sends it (through `aws::created_unless_in_use`).
pub fn create_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    partition: &str,
    sort: Option<&str>,
) -> Result<CreateTableFluentBuilder, AwsError> {
    let mut request = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(partition, ScalarAttributeType::S)?)
        .key_schema(key(partition, KeyType::Hash)?);
    if let Some(sort) = sort {
        request = request
            .attribute_definitions(attribute(sort, ScalarAttributeType::S)?)
            .key_schema(key(sort, KeyType::Range)?);
    }
    Ok(request)
}

/// Every item of partition `partition = value` whose `sort` key begins with `prefix`, read
/// consistently, in sort-key order.
pub async fn query_prefix(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    (partition, value): (&str, &str),
    (sort, prefix): (&str, &str),
) -> Result<Vec<Item>, AwsError> {
    let mut pages = client
        .query()
        .table_name(table)
        .key_condition_expression("#p = :p AND begins_with(#s, :prefix)")
        .expression_attribute_names("#p", partition)
        .expression_attribute_names("#s", sort)
        .expression_attribute_values(":p", AttributeValue::S(value.to_owned()))
        .expression_attribute_values(":prefix", AttributeValue::S(prefix.to_owned()))
        .consistent_read(true)
        .into_paginator()
        .items()
        .send();
    let mut items = Vec::new();
    while let Some(item) = pages.next().await {
        items.push(item.aws("dynamodb", "Query")?);
    }
    Ok(items)
}
