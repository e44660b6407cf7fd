//! AWS IoT SQL (version 2016-03-23), the subset rules are written in: `SELECT` with `*`,
//! expressions and aliases, `FROM '<topic filter>'`, `WHERE` with comparisons, arithmetic and
//! `AND` / `OR` / `NOT`; functions `topic()`, `topic(n)`, `timestamp()`, `clientid()`,
//! `principal()`, `newuuid()`, `encode(<value or *>, 'base64')`, `lower()`, `upper()`.
//! The same expressions fill an action's `${…}` substitution templates.
//!
//! Follows <https://docs.aws.amazon.com/iot/latest/developerguide/iot-sql-reference.html>: a
//! field missing from the payload is *Undefined* (left out of the result, false in `WHERE`);
//! comparisons across types are Undefined; a payload that is not a JSON object is binary, and
//! `SELECT *` alone passes its bytes through; in 2016-03-23, a whole-number value such as `10.0`
//! comes out as the integer `10`.
//!
//! No crate parses IoT SQL (its functions, topic filters and Undefined are its own), hence this
//! small recursive-descent parser; it is pure.

use base64::Engine;
use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Number, Value};
use thiserror::Error;

use crate::topic;

/// Why a statement or template could not be read or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SqlError {
    /// The text is not a statement of the supported subset; the message says where.
    #[error("IoT SQL: {0}")]
    Syntax(String),
    /// The statement cannot be applied to this message (e.g. `SELECT *, …` on a binary payload).
    #[error("IoT SQL: {0}")]
    Evaluation(String),
}

fn syntax<T>(message: impl Into<String>) -> Result<T, SqlError> {
    Err(SqlError::Syntax(message.into()))
}

/// A function the subset knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `topic()` (the whole topic) or `topic(n)` (level n, from 1).
    Topic,
    /// `timestamp()`: when the message was received, ms since the epoch.
    Timestamp,
    /// `clientid()`: the publishing client's id.
    ClientId,
    /// `principal()`: the publisher's certificate id.
    Principal,
    /// `newuuid()`: a random UUID.
    NewUuid,
    /// `encode(value, 'base64')`; `encode(*, 'base64')` encodes the payload's bytes.
    Encode,
    /// `lower(string)`.
    Lower,
    /// `upper(string)`.
    Upper,
}

impl Function {
    fn named(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "topic" => Self::Topic,
            "timestamp" => Self::Timestamp,
            "clientid" => Self::ClientId,
            "principal" => Self::Principal,
            "newuuid" => Self::NewUuid,
            "encode" => Self::Encode,
            "lower" => Self::Lower,
            "upper" => Self::Upper,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Timestamp => "timestamp",
            Self::ClientId => "clientid",
            Self::Principal => "principal",
            Self::NewUuid => "newuuid",
            Self::Encode => "encode",
            Self::Lower => "lower",
            Self::Upper => "upper",
        }
    }
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `OR`
    Or,
    /// `AND`
    And,
    /// `=`
    Eq,
    /// `<>` or `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

/// An expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal: number, `'string'`, `true`, `false`, `null`.
    Literal(Value),
    /// A field of the payload: `a.b[0].c` as keys and indexes.
    Field(Vec<Step>),
    /// `*` as a function argument: the whole payload.
    Payload,
    /// A function call.
    Call(Function, Vec<Expr>),
    /// `NOT e`.
    Not(Box<Expr>),
    /// `-e`.
    Negate(Box<Expr>),
    /// `l op r`.
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `.key`
    Key(String),
    /// `[n]`
    Index(usize),
}

/// One item of the `SELECT` list.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    /// `*`: the payload's fields.
    All,
    /// An expression and the key it is written under.
    Named(Expr, String),
}

/// A rule's statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The `SELECT` list.
    pub select: Vec<SelectItem>,
    /// The `FROM` topic filter (MQTT wildcards `+` and `#`).
    pub from: String,
    /// The `WHERE` condition, if any.
    pub condition: Option<Expr>,
}

/// The message a statement is applied to.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The topic it was published on.
    pub topic: &'a str,
    /// Its payload, as published.
    pub payload: &'a [u8],
    /// The publishing client's id (empty for a message the service published itself).
    pub client_id: &'a str,
    /// The publisher's certificate id (empty when none).
    pub principal: &'a str,
    /// When it was received, ms since the epoch.
    pub timestamp_ms: i64,
}

/// What a statement makes of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A JSON document, as text: numbers from the payload keep their digits (a value beyond a
    /// double's range or precision passes through as written).
    Json(String),
    /// The payload's bytes as they came (`SELECT *` on a binary payload).
    Bytes(Vec<u8>),
}

impl Output {
    /// The bytes an action sends.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Json(text) => text.clone().into_bytes(),
            Self::Bytes(bytes) => bytes.clone(),
        }
    }

    /// The JSON document read back (numbers as `serde_json` reads them); `None` for bytes.
    pub fn json(&self) -> Option<Value> {
        match self {
            Self::Json(text) => serde_json::from_str(text).ok(),
            Self::Bytes(_) => None,
        }
    }
}

impl Statement {
    /// Reads a statement.
    ///
    /// # Errors
    /// [`SqlError::Syntax`] for text outside the subset, or a `FROM` that is not a valid topic
    /// filter.
    pub fn parse(text: &str) -> Result<Self, SqlError> {
        let mut parser = Parser::new(text)?;
        parser.keyword("SELECT")?;
        let mut select = Vec::new();
        loop {
            select.push(parser.select_item()?);
            if !parser.eat(&Token::Comma) {
                break;
            }
        }
        parser.keyword("FROM")?;
        let from = match parser.next() {
            Some(Token::Str(filter)) => filter,
            other => return syntax(format!("FROM needs a quoted topic filter, found {other:?}")),
        };
        topic::check_filter(&from).map_err(|e| SqlError::Syntax(format!("FROM '{from}': {e}")))?;
        let condition = if parser.is_keyword("WHERE") {
            parser.next();
            Some(parser.expr()?)
        } else {
            None
        };
        if let Some(extra) = parser.next() {
            return syntax(format!("unexpected {extra:?} after the statement"));
        }
        Ok(Self {
            select,
            from,
            condition,
        })
    }

    /// Whether the statement reads messages published on `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        topic::matches(&self.from, topic)
    }

    /// Applies the statement to `message`: `None` when `WHERE` is not true.
    ///
    /// # Errors
    /// [`SqlError::Evaluation`] when the statement selects fields along with `*` of a payload
    /// that is not a JSON object.
    pub fn apply(&self, message: &Message<'_>) -> Result<Option<Output>, SqlError> {
        let raw = raw_fields(message.payload);
        let scope = Scope::with_fields(message, raw.as_ref().map(values));
        if let Some(condition) = &self.condition
            && scope.eval(condition) != Some(Value::Bool(true))
        {
            return Ok(None);
        }
        let Some(raw) = raw else {
            if let [SelectItem::All] = self.select.as_slice() {
                return Ok(Some(Output::Bytes(message.payload.to_vec())));
            }
            if self.select.contains(&SelectItem::All) {
                return Err(SqlError::Evaluation(
                    "SELECT * with other fields needs a JSON object payload".into(),
                ));
            }
            return Ok(Some(Output::Json(self.named(&scope, &BTreeMap::new()))));
        };
        Ok(Some(Output::Json(self.named(&scope, &raw))))
    }

    /// The output document's text: `*`'s fields as written (whole-number decimals as integers),
    /// then the named items.
    fn named(&self, scope: &Scope<'_>, raw: &BTreeMap<String, Box<RawValue>>) -> String {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for item in &self.select {
            match item {
                SelectItem::All => {
                    for (key, value) in raw {
                        out.insert(key.clone(), whole_number_text(value.get()));
                    }
                }
                SelectItem::Named(expr, name) => {
                    // A top-level field keeps its digits; anything else is computed.
                    let text = match expr {
                        Expr::Field(steps) => match steps.as_slice() {
                            [Step::Key(key)] => raw.get(key).map(|v| whole_number_text(v.get())),
                            _ => None,
                        },
                        _ => None,
                    };
                    let text =
                        text.or_else(|| scope.eval(expr).map(|v| whole_numbers(v).to_string()));
                    if let Some(text) = text {
                        out.insert(name.clone(), text);
                    }
                }
            }
        }
        let members: Vec<String> = out
            .iter()
            .map(|(key, value)| format!("{}:{value}", Value::from(key.as_str())))
            .collect();
        format!("{{{}}}", members.join(","))
    }
}

/// The payload's top-level fields as written, when it is a JSON object or empty (an empty
/// payload is an empty document fields can be added to); `None` when it is binary.
fn raw_fields(payload: &[u8]) -> Option<BTreeMap<String, Box<RawValue>>> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Some(BTreeMap::new());
    }
    serde_json::from_slice(payload).ok()
}

/// The fields as values for expressions; a field a double cannot hold (e.g. `1e400`) is
/// Undefined to them, and still passes through `*` as written.
fn values(raw: &BTreeMap<String, Box<RawValue>>) -> Value {
    Value::Object(
        raw.iter()
            .filter_map(|(k, v)| Some((k.clone(), serde_json::from_str(v.get()).ok()?)))
            .collect(),
    )
}

/// `json` (valid JSON text) with every number that is a whole number written as an integer
/// (`22.0` → `22`, `9.3e18` → `9300000000000000000`; at most 34 digits, IoT SQL's integers),
/// strings untouched, whitespace between tokens dropped: SQL 2016-03-23's rule, digit for
/// digit.
fn whole_number_text(json: &str) -> String {
    let bytes = json.as_bytes();
    let mut out = String::with_capacity(json.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(bytes.len());
                out.push_str(&json[start..i]);
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let number = &json[start..i];
                out.push_str(&whole_number(number).unwrap_or_else(|| number.to_owned()));
            }
            // Whitespace between tokens is dropped: the document goes out compact.
            b if b.is_ascii_whitespace() => i += 1,
            _ => {
                let start = i;
                i += 1;
                while i < bytes.len()
                    && !matches!(bytes[i], b'"' | b'-' | b'0'..=b'9')
                    && !bytes[i].is_ascii_whitespace()
                {
                    i += 1;
                }
                out.push_str(&json[start..i]);
            }
        }
    }
    out
}

/// A JSON number with a fraction or exponent that is a whole number, as an integer of at most
/// 34 digits; `None` otherwise (kept as written).
fn whole_number(number: &str) -> Option<String> {
    if !number.contains(['.', 'e', 'E']) {
        return None;
    }
    let (negative, unsigned) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let point = i64::try_from(int.len()).ok()?.checked_add(exponent)?;
    let point = usize::try_from(point).ok().filter(|p| *p <= 34)?;
    let (whole, rest) = if point <= digits.len() {
        digits.split_at(point)
    } else {
        (digits.as_str(), "")
    };
    if !rest.bytes().all(|b| b == b'0') {
        return None;
    }
    let zeros = point.saturating_sub(digits.len());
    let text = format!("{whole}{}", "0".repeat(zeros));
    let text = text.trim_start_matches('0');
    Some(match (text.is_empty(), negative) {
        (true, _) => "0".to_owned(),
        (false, true) => format!("-{text}"),
        (false, false) => text.to_owned(),
    })
}

/// An action parameter with `${expression}` substitutions (e.g. `rule-errors/${newuuid()}.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Expr(Expr),
}

impl Template {
    /// Reads a template.
    ///
    /// # Errors
    /// [`SqlError::Syntax`] for an unclosed `${` or an expression outside the subset.
    pub fn parse(text: &str) -> Result<Self, SqlError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return syntax(format!("unclosed ${{ in {text:?}"));
            };
            let mut parser = Parser::new(&after[..end])?;
            let expr = parser.expr()?;
            if let Some(extra) = parser.next() {
                return syntax(format!("unexpected {extra:?} in ${{{}}}", &after[..end]));
            }
            parts.push(Part::Expr(expr));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The text for `message`: each expression's value (a string as it is, anything else as
    /// JSON; Undefined as nothing).
    pub fn render(&self, message: &Message<'_>) -> String {
        let scope = Scope::new(message);
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Expr(expr) => match scope.eval(expr).map(whole_numbers) {
                    Some(Value::String(s)) => out.push_str(&s),
                    Some(other) => out.push_str(&other.to_string()),
                    None => {}
                },
            }
        }
        out
    }
}

/// SQL 2016-03-23: a whole-number float comes out as an integer (`10.0` → `10`).
fn whole_numbers(value: Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Within i64 exactly: 2^63 is the first float outside.
            if f.fract() == 0.0 && f.abs() < 9.223_372_036_854_776e18 {
                Value::from(f as i64)
            } else {
                Value::Number(n)
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(whole_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, whole_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// What expressions are evaluated against: the message, and its payload's fields read once,
/// when an expression first needs them.
struct Scope<'a> {
    message: &'a Message<'a>,
    json: std::cell::OnceCell<Option<Value>>,
}

impl<'a> Scope<'a> {
    /// A scope whose payload fields are read when first needed.
    fn new(message: &'a Message<'a>) -> Self {
        Self {
            message,
            json: std::cell::OnceCell::new(),
        }
    }

    /// A scope whose payload fields were already read.
    fn with_fields(message: &'a Message<'a>, json: Option<Value>) -> Self {
        Self {
            message,
            json: std::cell::OnceCell::from(json),
        }
    }

    fn json(&self) -> Option<&Value> {
        self.json
            .get_or_init(|| raw_fields(self.message.payload).as_ref().map(values))
            .as_ref()
    }
}

impl Scope<'_> {
    /// The value of `expr`; `None` is Undefined.
    fn eval(&self, expr: &Expr) -> Option<Value> {
        match expr {
            Expr::Literal(value) => Some(value.clone()),
            Expr::Payload => self.json().cloned(),
            Expr::Field(steps) => {
                let mut node = self.json()?;
                for step in steps {
                    node = match step {
                        Step::Key(key) => node.get(key)?,
                        Step::Index(i) => node.get(*i)?,
                    };
                }
                Some(node.clone())
            }
            Expr::Call(function, args) => self.call(*function, args),
            Expr::Not(inner) => Some(Value::Bool(!truth(&self.eval(inner)?)?)),
            Expr::Negate(inner) => arithmetic(BinaryOp::Sub, &Value::from(0), &self.eval(inner)?),
            Expr::Binary(op, left, right) => match op {
                BinaryOp::And | BinaryOp::Or => {
                    let l = truth(&self.eval(left)?)?;
                    let r = truth(&self.eval(right)?)?;
                    Some(Value::Bool(if *op == BinaryOp::And {
                        l && r
                    } else {
                        l || r
                    }))
                }
                BinaryOp::Eq
                | BinaryOp::Ne
                | BinaryOp::Lt
                | BinaryOp::Le
                | BinaryOp::Gt
                | BinaryOp::Ge => {
                    compare(*op, &self.eval(left)?, &self.eval(right)?).map(Value::Bool)
                }
                _ => arithmetic(*op, &self.eval(left)?, &self.eval(right)?),
            },
        }
    }

    fn call(&self, function: Function, args: &[Expr]) -> Option<Value> {
        let message = self.message;
        match (function, args) {
            (Function::Topic, []) => Some(Value::from(message.topic)),
            (Function::Topic, [n]) => {
                let n = self.eval(n)?.as_u64()?;
                let level = message
                    .topic
                    .split('/')
                    .nth(usize::try_from(n).ok()?.checked_sub(1)?)?;
                Some(Value::from(level))
            }
            (Function::Timestamp, []) => Some(Value::from(message.timestamp_ms)),
            (Function::ClientId, []) => Some(Value::from(message.client_id)),
            (Function::Principal, []) => Some(Value::from(message.principal)),
            (Function::NewUuid, []) => Some(Value::from(uuid::Uuid::new_v4().to_string())),
            (Function::Encode, [value, encoding]) => {
                if !self
                    .eval(encoding)?
                    .as_str()?
                    .eq_ignore_ascii_case("base64")
                {
                    return None;
                }
                let bytes = match value {
                    Expr::Payload => message.payload.to_vec(),
                    other => match self.eval(other)? {
                        Value::String(s) => s.into_bytes(),
                        v => v.to_string().into_bytes(),
                    },
                };
                Some(Value::from(
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                ))
            }
            (Function::Lower, [s]) => Some(Value::from(self.eval(s)?.as_str()?.to_lowercase())),
            (Function::Upper, [s]) => Some(Value::from(self.eval(s)?.as_str()?.to_uppercase())),
            _ => None,
        }
    }
}

/// A Boolean operand: a Boolean, or the string `true` / `false` (any case); else Undefined.
fn truth(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// A number, or a string that reads as one (IoT SQL converts such strings in comparisons and
/// arithmetic).
fn numeric(value: &Value) -> Option<Number> {
    match value {
        Value::Number(n) => Some(n.clone()),
        Value::String(s) => serde_json::from_str::<Number>(s.trim()).ok(),
        _ => None,
    }
}

fn compare(op: BinaryOp, left: &Value, right: &Value) -> Option<bool> {
    use std::cmp::Ordering;
    let equality = matches!(op, BinaryOp::Eq | BinaryOp::Ne);
    let ordering = match (left, right) {
        (Value::String(a), Value::String(b)) if equality => a.cmp(b),
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::Array(_) | Value::Object(_) | Value::Null, _)
        | (_, Value::Array(_) | Value::Object(_) | Value::Null)
            if equality =>
        {
            return Some((left == right) == (op == BinaryOp::Eq));
        }
        _ => match (numeric(left), numeric(right)) {
            (Some(a), Some(b)) => match (a.as_i64(), b.as_i64()) {
                (Some(a), Some(b)) => a.cmp(&b),
                _ => a.as_f64()?.partial_cmp(&b.as_f64()?)?,
            },
            _ => match (left, right) {
                (Value::String(a), Value::String(b)) => a.cmp(b),
                // Values of different types are never equal.
                _ if equality => return Some(op == BinaryOp::Ne),
                _ => return None,
            },
        },
    };
    Some(match op {
        BinaryOp::Eq => ordering == Ordering::Equal,
        BinaryOp::Ne => ordering != Ordering::Equal,
        BinaryOp::Lt => ordering == Ordering::Less,
        BinaryOp::Le => ordering != Ordering::Greater,
        BinaryOp::Gt => ordering == Ordering::Greater,
        BinaryOp::Ge => ordering != Ordering::Less,
        _ => return None,
    })
}

/// `+ - * / %`: integers stay integers (`/` truncates, as IoT SQL's Int / Int), anything else
/// is a decimal; `+` of two strings joins them; a string that reads as a number counts as one.
fn arithmetic(op: BinaryOp, left: &Value, right: &Value) -> Option<Value> {
    if let (BinaryOp::Add, Value::String(a), Value::String(b)) = (op, left, right)
        && (numeric(left).is_none() || numeric(right).is_none())
    {
        return Some(Value::String(format!("{a}{b}")));
    }
    let (a, b) = (numeric(left)?, numeric(right)?);
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        let exact = match op {
            BinaryOp::Add => x.checked_add(y),
            BinaryOp::Sub => x.checked_sub(y),
            BinaryOp::Mul => x.checked_mul(y),
            BinaryOp::Rem => x.checked_rem(y),
            BinaryOp::Div => x.checked_div(y),
            _ => None,
        };
        match exact {
            Some(v) => return Some(Value::from(v)),
            // Division by zero is Undefined; an overflow falls through to decimals.
            None if y == 0 && matches!(op, BinaryOp::Div | BinaryOp::Rem) => return None,
            None => {}
        }
    }
    let (x, y) = (a.as_f64()?, b.as_f64()?);
    let v = match op {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Rem => x % y,
        _ => return None,
    };
    Number::from_f64(v).map(Value::Number)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    /// A double-quoted identifier: never a keyword.
    Quoted(String),
    Str(String),
    Num(Value),
    Comma,
    Dot,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Star,
    Op(&'static str),
}

fn tokens(text: &str) -> Result<Vec<Token>, SqlError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            ',' => (out.push(Token::Comma), i += 1).1,
            '.' if !chars.get(i + 1).is_some_and(char::is_ascii_digit) => {
                (out.push(Token::Dot), i += 1).1
            }
            '(' => (out.push(Token::LParen), i += 1).1,
            ')' => (out.push(Token::RParen), i += 1).1,
            '[' => (out.push(Token::LBracket), i += 1).1,
            ']' => (out.push(Token::RBracket), i += 1).1,
            '*' => (out.push(Token::Star), i += 1).1,
            '\'' | '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return syntax(format!("unclosed {c} in {text:?}")),
                        // A doubled quote is the quote itself.
                        Some(&q) if q == c && chars.get(i + 1) == Some(&c) => {
                            s.push(c);
                            i += 2;
                        }
                        Some(&q) if q == c => {
                            i += 1;
                            break;
                        }
                        Some(&other) => {
                            s.push(other);
                            i += 1;
                        }
                    }
                }
                out.push(if c == '\'' {
                    Token::Str(s)
                } else {
                    Token::Quoted(s)
                });
            }
            c if c.is_ascii_digit() || c == '.' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    // An exponent's sign belongs to the number.
                    if matches!(chars[i], 'e' | 'E') && matches!(chars.get(i + 1), Some('+' | '-'))
                    {
                        i += 1;
                    }
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let value: Value = serde_json::from_str(&text)
                    .ok()
                    .or_else(|| {
                        text.parse::<f64>()
                            .ok()
                            .and_then(Number::from_f64)
                            .map(Value::Number)
                    })
                    .filter(Value::is_number)
                    .ok_or_else(|| SqlError::Syntax(format!("bad number {text:?}")))?;
                out.push(Token::Num(value));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push(Token::Ident(chars[start..i].iter().collect()));
            }
            _ => {
                let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
                let op = ["<>", "!=", "<=", ">="]
                    .into_iter()
                    .find(|op| two == *op)
                    .or_else(|| {
                        ["=", "<", ">", "+", "-", "/", "%"]
                            .into_iter()
                            .find(|op| op.starts_with(c))
                    });
                let Some(op) = op else {
                    return syntax(format!("unexpected {c:?} in {text:?}"));
                };
                out.push(Token::Op(op));
                i += op.len();
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Self, SqlError> {
        Ok(Self {
            tokens: tokens(text)?,
            at: 0,
        })
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn eat(&mut self, token: &Token) -> bool {
        let found = self.peek() == Some(token);
        if found {
            self.at += 1;
        }
        found
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(w)) if w.eq_ignore_ascii_case(word))
    }

    fn keyword(&mut self, word: &str) -> Result<(), SqlError> {
        if self.is_keyword(word) {
            self.at += 1;
            Ok(())
        } else {
            syntax(format!("expected {word}, found {:?}", self.peek()))
        }
    }

    fn select_item(&mut self) -> Result<SelectItem, SqlError> {
        if self.eat(&Token::Star) {
            return Ok(SelectItem::All);
        }
        let expr = self.expr()?;
        let name = if self.is_keyword("AS") {
            self.next();
            match self.next() {
                Some(Token::Ident(name) | Token::Quoted(name)) => name,
                other => return syntax(format!("AS needs a name, found {other:?}")),
            }
        } else {
            match &expr {
                Expr::Field(steps) => match steps.iter().rev().find_map(|s| match s {
                    Step::Key(k) => Some(k.clone()),
                    Step::Index(_) => None,
                }) {
                    Some(name) => name,
                    None => return syntax("a selected index needs AS <name>"),
                },
                Expr::Call(function, _) => function.name().to_owned(),
                _ => return syntax("a selected expression needs AS <name>"),
            }
        };
        Ok(SelectItem::Named(expr, name))
    }

    fn expr(&mut self) -> Result<Expr, SqlError> {
        self.binary_level(0)
    }

    /// Precedence climbing: `OR` < `AND` < `NOT` < comparisons < `+ -` < `* / %`.
    fn binary_level(&mut self, level: usize) -> Result<Expr, SqlError> {
        const LEVELS: [&[(&str, BinaryOp)]; 5] = [
            &[("OR", BinaryOp::Or)],
            &[("AND", BinaryOp::And)],
            &[
                ("=", BinaryOp::Eq),
                ("<>", BinaryOp::Ne),
                ("!=", BinaryOp::Ne),
                ("<=", BinaryOp::Le),
                (">=", BinaryOp::Ge),
                ("<", BinaryOp::Lt),
                (">", BinaryOp::Gt),
            ],
            &[("+", BinaryOp::Add), ("-", BinaryOp::Sub)],
            &[
                ("*", BinaryOp::Mul),
                ("/", BinaryOp::Div),
                ("%", BinaryOp::Rem),
            ],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        // `NOT` binds looser than comparisons (`NOT a > 1` is `NOT (a > 1)`), tighter than AND.
        if level == 2 && self.is_keyword("NOT") {
            self.next();
            return Ok(Expr::Not(Box::new(self.binary_level(level)?)));
        }
        let mut left = self.binary_level(level + 1)?;
        loop {
            let found = LEVELS[level].iter().find(|(symbol, _)| match self.peek() {
                Some(Token::Ident(word)) => word.eq_ignore_ascii_case(symbol),
                Some(Token::Op(op)) => op == symbol,
                Some(Token::Star) => *symbol == "*",
                _ => false,
            });
            let Some((_, op)) = found else {
                return Ok(left);
            };
            self.next();
            let right = self.binary_level(level + 1)?;
            left = Expr::Binary(*op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, SqlError> {
        if self.eat(&Token::Op("-")) {
            return Ok(Expr::Negate(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, SqlError> {
        match self.next() {
            Some(Token::Num(n)) => Ok(Expr::Literal(n)),
            Some(Token::Str(s)) => Ok(Expr::Literal(Value::String(s))),
            Some(Token::LParen) => {
                let inner = self.expr()?;
                if !self.eat(&Token::RParen) {
                    return syntax("missing )");
                }
                Ok(inner)
            }
            Some(Token::Ident(word)) if self.peek() == Some(&Token::LParen) => {
                let Some(function) = Function::named(&word) else {
                    return syntax(format!("unknown function {word}()"));
                };
                self.next();
                let mut args = Vec::new();
                if !self.eat(&Token::RParen) {
                    loop {
                        args.push(if self.eat(&Token::Star) {
                            Expr::Payload
                        } else {
                            self.expr()?
                        });
                        if self.eat(&Token::RParen) {
                            break;
                        }
                        if !self.eat(&Token::Comma) {
                            return syntax(format!("missing , or ) in {word}()"));
                        }
                    }
                }
                Ok(Expr::Call(function, args))
            }
            Some(Token::Ident(word)) if word.eq_ignore_ascii_case("true") => {
                Ok(Expr::Literal(Value::Bool(true)))
            }
            Some(Token::Ident(word)) if word.eq_ignore_ascii_case("false") => {
                Ok(Expr::Literal(Value::Bool(false)))
            }
            Some(Token::Ident(word)) if word.eq_ignore_ascii_case("null") => {
                Ok(Expr::Literal(Value::Null))
            }
            Some(Token::Ident(word) | Token::Quoted(word)) => {
                let mut steps = vec![Step::Key(word)];
                loop {
                    if self.eat(&Token::Dot) {
                        match self.next() {
                            Some(Token::Ident(key) | Token::Quoted(key)) => {
                                steps.push(Step::Key(key))
                            }
                            other => {
                                return syntax(format!("a field name after ., found {other:?}"));
                            }
                        }
                    } else if self.eat(&Token::LBracket) {
                        let index = match self.next() {
                            Some(Token::Num(n)) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
                            _ => None,
                        };
                        let Some(index) = index else {
                            return syntax("an index in [ ] is a whole number");
                        };
                        if !self.eat(&Token::RBracket) {
                            return syntax("missing ]");
                        }
                        steps.push(Step::Index(index));
                    } else {
                        return Ok(Expr::Field(steps));
                    }
                }
            }
            other => syntax(format!("an expression, found {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message<'a>(topic: &'a str, payload: &'a [u8]) -> Message<'a> {
        Message {
            topic,
            payload,
            client_id: "dev-7",
            principal: "abc123",
            timestamp_ms: 1_700_000_000_123,
        }
    }

    /// The output a document gives (compact, keys in order, as the statement writes it).
    fn doc(value: Value) -> Output {
        Output::Json(value.to_string())
    }

    fn apply(sql: &str, topic: &str, payload: &[u8]) -> Option<Output> {
        Statement::parse(sql)
            .unwrap()
            .apply(&message(topic, payload))
            .unwrap()
    }

    #[test]
    fn the_templates_telemetry_statement_adds_topic_time_and_client() {
        let sql = "SELECT *, topic() AS _topic, timestamp() AS _received_at, clientid() AS _client_id\n FROM 'dt/+/+/telemetry'";
        let statement = Statement::parse(sql).unwrap();
        assert!(statement.matches("dt/app/dev-7/telemetry"));
        assert!(!statement.matches("dt/app/dev-7/telemetry/th-v2"));
        let out = statement
            .apply(&message(
                "dt/app/dev-7/telemetry",
                br#"{"temp": 22.0, "hum": 40.5}"#,
            ))
            .unwrap();
        assert_eq!(
            out,
            Some(doc(json!({
                "temp": 22,
                "hum": 40.5,
                "_topic": "dt/app/dev-7/telemetry",
                "_received_at": 1_700_000_000_123_i64,
                "_client_id": "dev-7",
            })))
        );
        let doc = out.and_then(|o| o.json()).unwrap();
        assert!(
            doc["temp"].is_i64(),
            "SQL 2016-03-23 makes 22.0 the integer 22"
        );
    }

    #[test]
    fn binary_payloads_pass_through_or_encode() {
        let raw = [0x1f, 0x8b, 0x00, 0xff];
        assert_eq!(
            apply("SELECT * FROM 'a/#'", "a/b", &raw),
            Some(Output::Bytes(raw.to_vec()))
        );
        let out = apply(
            "SELECT encode(*, 'base64') AS _payload, topic(3) AS t FROM 'a/#'",
            "a/b/c",
            &raw,
        );
        assert_eq!(out, Some(doc(json!({"_payload": "H4sA/w==", "t": "c"}))));
        let statement = Statement::parse("SELECT *, topic() AS t FROM 'a/#'").unwrap();
        assert!(matches!(
            statement.apply(&message("a/b", &raw)),
            Err(SqlError::Evaluation(_))
        ));
    }

    #[test]
    fn where_filters_with_undefined_as_false() {
        let sql = "SELECT temp, device.id AS id FROM 'x' WHERE temp > 20 AND NOT (mode = 'off' OR mode <> mode)";
        assert_eq!(
            apply(
                sql,
                "x",
                br#"{"temp": 21, "mode": "on", "device": {"id": "d"}}"#
            ),
            Some(doc(json!({"temp": 21, "id": "d"})))
        );
        assert_eq!(apply(sql, "x", br#"{"temp": 19, "mode": "on"}"#), None);
        assert_eq!(
            apply(sql, "x", br#"{"mode": "on"}"#),
            None,
            "missing temp is Undefined"
        );
        assert_eq!(
            apply(sql, "x", br#"{"temp": "hot", "mode": "on"}"#),
            None,
            "string vs number"
        );
        assert_eq!(apply(sql, "x", b"\x00binary"), None);
        let out = apply(
            "SELECT missing, a[1] AS second FROM 'x'",
            "x",
            br#"{"a": [1, 2]}"#,
        );
        assert_eq!(
            out,
            Some(doc(json!({"second": 2}))),
            "Undefined is left out"
        );
    }

    #[test]
    fn arithmetic_comparison_and_functions() {
        let out = apply(
            "SELECT (a + b) * 2 AS s, a / 2 AS h, 7 % 4 AS r, -a AS n, lower(name) AS l, upper('x') AS u, principal() AS p FROM '$aws/things/+/shadow/update/documents' WHERE a >= 1.0 AND name != 'Z'",
            "$aws/things/t/shadow/update/documents",
            br#"{"a": 3, "b": 1.5, "name": "AbC"}"#,
        );
        assert_eq!(
            out,
            Some(doc(
                json!({"s": 9, "h": 1, "r": 3, "n": -3, "l": "abc", "u": "X", "p": "abc123"})
            ))
        );
        let uuid = apply("SELECT newuuid() AS id FROM 'x'", "x", b"{}");
        let id = uuid.and_then(|o| o.json()).unwrap();
        assert_eq!(id["id"].as_str().map(str::len), Some(36));
    }

    #[test]
    fn operators_follow_iot_sqls_tables() {
        let eval = |expr: &str, payload: &[u8]| {
            let sql = format!("SELECT {expr} AS v FROM 'x'");
            match apply(&sql, "x", payload) {
                Some(out) => out.json().and_then(|d| d.get("v").cloned()),
                other => panic!("{other:?}"),
            }
        };
        let p = br#"{"temp": 25, "status": 3, "n": "10", "big": -9223372036854775808, "m": -1, "t": "TRUE"}"#;
        assert_eq!(
            eval("NOT temp > 20", p),
            Some(json!(false)),
            "NOT (temp > 20)"
        );
        assert_eq!(
            eval("status <> 'ok'", p),
            Some(json!(true)),
            "different types differ"
        );
        assert_eq!(eval("status = 'ok'", p), Some(json!(false)));
        assert_eq!(eval("'a' + 'b'", p), Some(json!("ab")));
        assert_eq!(eval("7 / 2", p), Some(json!(3)), "Int / Int is an Int");
        assert_eq!(eval("7.0 / 2", p), Some(json!(3.5)));
        assert_eq!(eval("n > 9", p), Some(json!(true)), "'10' reads as 10");
        assert_eq!(
            eval("'10' < '9'", p),
            Some(json!(false)),
            "numeric strings compare as numbers"
        );
        assert_eq!(
            eval("big / m", p),
            Some(json!(9.223_372_036_854_776e18)),
            "no overflow panic"
        );
        assert_eq!(eval("big % m", p), Some(json!(0)));
        assert_eq!(eval("1 / 0", p), None);
        assert_eq!(
            eval("t AND true", p),
            Some(json!(true)),
            "the string TRUE is a Boolean"
        );
        assert_eq!(
            eval("false AND missing", p),
            None,
            "Undefined in, Undefined out"
        );
    }

    #[test]
    fn payload_numbers_keep_their_digits_and_empty_payloads_take_fields() {
        let out = apply(
            "SELECT *, topic() AS t FROM 'x'",
            "x",
            br#"{"a": 1.0000000000000000001, "c": 99999999999999999999, "e": 1e400, "g": 9.3e18, "h": [2.50, -0.0, "1.0"], "s": "22.0"}"#,
        );
        assert_eq!(
            out,
            Some(Output::Json(
                r#"{"a":1.0000000000000000001,"c":99999999999999999999,"e":1e400,"g":9300000000000000000,"h":[2.50,0,"1.0"],"s":"22.0","t":"x"}"#.into()
            ))
        );
        assert_eq!(
            apply("SELECT temp FROM 'x'", "x", br#"{"temp": 22.000}"#),
            Some(Output::Json(r#"{"temp":22}"#.into()))
        );
        assert_eq!(
            apply("SELECT *, topic() AS t FROM 'x'", "x", b""),
            Some(doc(json!({"t": "x"})))
        );
        assert_eq!(
            apply("SELECT * FROM 'x' WHERE e > 1", "x", br#"{"e": 1e400}"#),
            None,
            "beyond a double: Undefined"
        );
        assert_eq!(
            whole_number("1e35"),
            None,
            "more than 34 digits stays as written"
        );
        assert_eq!(whole_number("-12.5e1"), Some("-125".into()));
        assert_eq!(whole_number("0.000"), Some("0".into()));
        assert_eq!(whole_number("12"), None);
    }

    #[test]
    fn syntax_errors_say_what_is_wrong() {
        for bad in [
            "SELECT FROM 'x'",
            "SELECT * 'x'",
            "SELECT * FROM x",
            "SELECT * FROM 'a/#/b'",
            "SELECT frob() FROM 'x'",
            "SELECT 1 + 2 FROM 'x'",
            "SELECT * FROM 'x' WHERE (a = 1",
            "SELECT * FROM 'x' extra",
            "SELECT 'open FROM 'x'",
        ] {
            assert!(
                matches!(Statement::parse(bad), Err(SqlError::Syntax(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn templates_substitute_expressions() {
        let template =
            Template::parse("rule-errors/${topic(2)}/${timestamp()}-${clientid()}.json").unwrap();
        let msg = message("dt/app/dev-7/telemetry", b"{}");
        assert_eq!(
            template.render(&msg),
            "rule-errors/app/1700000000123-dev-7.json"
        );
        assert_eq!(
            Template::parse("${topic(3)}").unwrap().render(&msg),
            "dev-7"
        );
        assert_eq!(Template::parse("plain").unwrap().render(&msg), "plain");
        assert!(Template::parse("${topic(").is_err());
        assert!(Template::parse("a-${x").is_err());
    }
}
