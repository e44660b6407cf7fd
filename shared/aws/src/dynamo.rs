//! What Shoal's DynamoDB edges share: creating an on-demand table for local setup, and reading
//! every item of a partition whose sort key starts with a prefix, and batch calls that retry
//! unprocessed items.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};

use crate::client::{AwsResultExt, EdgeError, EdgeErrorKind};

pub type Item = HashMap<String, AttributeValue>;

/// Why a stored item is not the record its table holds: a corrupt or foreign row. Reading one
/// is an [`EdgeErrorKind::Unreadable`] answer, never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    /// A required attribute is absent.
    #[error("item has no {0}")]
    Missing(&'static str),
    /// An attribute of the wrong DynamoDB type, or whose value does not parse.
    #[error("item attribute {attribute}: {reason}")]
    Invalid {
        attribute: &'static str,
        reason: String,
    },
}

impl ItemError {
    /// `map_err(ItemError::invalid("size"))`: the attribute's value did not parse.
    pub fn invalid<E: std::fmt::Display>(attribute: &'static str) -> impl Fn(E) -> Self {
        move |e| Self::Invalid {
            attribute,
            reason: e.to_string(),
        }
    }
}

fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> EdgeError {
    EdgeError::request("dynamodb", "CreateTable", e)
}

/// The CreateTable attribute definition of `name` with type `kind`.
///
/// # Errors
/// [`EdgeError`] (a request error: nothing was sent) when the SDK builder refuses the definition.
pub fn attribute(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition, EdgeError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(build_error)
}

/// The CreateTable key schema element making `name` the `kind` (hash or range) key.
///
/// # Errors
/// [`EdgeError`] (a request error: nothing was sent) when the SDK builder refuses the element.
pub fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, EdgeError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(build_error)
}

/// An on-demand CreateTable with a string partition key and, optionally, a string sort key;
/// the caller adds indexes and sends it (through `aws::created_unless_in_use`).
///
/// # Errors
/// [`EdgeError`] (a request error) when an attribute definition or key schema element could
/// not be built; nothing is sent here.
pub fn create_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    partition: &str,
    sort: Option<&str>,
) -> Result<CreateTableFluentBuilder, EdgeError> {
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
///
/// # Errors
/// [`EdgeError`] when a Query page fails: DynamoDB unreachable, throttling or a refusal (such
/// as a missing table). Items of earlier pages are dropped.
pub async fn query_prefix(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    (partition, value): (&str, &str),
    (sort, prefix): (&str, &str),
) -> Result<Vec<Item>, EdgeError> {
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

/// DynamoDB's limit per BatchGetItem call.
pub const MAX_BATCH_GET: usize = 100;
/// Rounds of retrying unprocessed items (with doubling backoff from 50 ms) before giving up.
const UNPROCESSED_ROUNDS: u32 = 8;

/// The items with `keys` that exist (any order), read consistently, in calls of
/// [`MAX_BATCH_GET`], unprocessed keys retried; with `attributes`, only those attributes of
/// each item (a `ProjectionExpression`; DynamoDB still charges the whole item's reads).
///
/// # Errors
/// [`EdgeError`] when a request could not be built or a BatchGetItem call failed; a
/// throttled one with code `UnprocessedItems` when keys are still unprocessed after the last
/// retry round.
pub async fn batch_get(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: Vec<Item>,
    attributes: Option<&[&str]>,
) -> Result<Vec<Item>, EdgeError> {
    let mut found = Vec::with_capacity(keys.len());
    // Every name through a placeholder: an attribute may be a reserved word.
    let projection = attributes.map(|names| {
        let placeholders: Vec<String> = (0..names.len()).map(|i| format!("#p{i}")).collect();
        let map: HashMap<String, String> = placeholders
            .iter()
            .cloned()
            .zip(names.iter().map(|n| (*n).to_owned()))
            .collect();
        (placeholders.join(", "), map)
    });
    let mut keys = keys.into_iter().peekable();
    while keys.peek().is_some() {
        let mut pending: Vec<Item> = keys.by_ref().take(MAX_BATCH_GET).collect();
        // A loop rather than `until_processed`: its closure would make this future !Send.
        for round in 0..UNPROCESSED_ROUNDS {
            if pending.is_empty() {
                break;
            }
            backoff(round).await;
            let request = aws_sdk_dynamodb::types::KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut pending)))
                .consistent_read(true)
                .set_projection_expression(projection.as_ref().map(|(e, _)| e.clone()))
                .set_expression_attribute_names(projection.as_ref().map(|(_, n)| n.clone()))
                .build()
                .map_err(|e| EdgeError::request("dynamodb", "BatchGetItem", e))?;
            let got = client
                .batch_get_item()
                .request_items(table, request)
                .send()
                .await
                .aws("dynamodb", "BatchGetItem")?;
            if let Some(items) = got.responses().and_then(|r| r.get(table)) {
                found.extend(items.iter().cloned());
            }
            if let Some(left) = got.unprocessed_keys().and_then(|u| u.get(table)) {
                pending = left.keys().to_vec();
            }
        }
        if !pending.is_empty() {
            return Err(unprocessed("BatchGetItem", pending.len()));
        }
    }
    Ok(found)
}

/// Calls `call` with `pending` until nothing is left unprocessed, backing off between rounds;
/// gives up after [`UNPROCESSED_ROUNDS`].
pub(crate) async fn until_processed<T>(
    operation: &'static str,
    mut pending: Vec<T>,
    mut call: impl AsyncFnMut(Vec<T>) -> Result<Vec<T>, EdgeError>,
) -> Result<(), EdgeError> {
    for round in 0..UNPROCESSED_ROUNDS {
        if pending.is_empty() {
            return Ok(());
        }
        backoff(round).await;
        pending = call(pending).await?;
    }
    if pending.is_empty() {
        Ok(())
    } else {
        Err(unprocessed(operation, pending.len()))
    }
}

async fn backoff(round: u32) {
    if round > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(50 << round.min(6))).await;
    }
}

fn unprocessed(operation: &'static str, left: usize) -> EdgeError {
    EdgeError {
        service: "dynamodb",
        operation,
        kind: EdgeErrorKind::Throttled,
        code: Some("UnprocessedItems".into()),
        message: format!("{left} items still unprocessed after {UNPROCESSED_ROUNDS} rounds"),
    }
}
