//! JSON Schema validation of messages (`validate` steps).
//!
//! Schemas come only from files in the mappings folder and are compiled once at start. Remote and
//! file `$ref`s are never fetched (the jsonschema crate is built without its resolvers). Two
//! formats for Latvian identifiers are built in: `lv-personal-code` and `lv-reg-no`. Violation
//! messages never quote the instance value: it may be a personal code.

use jsonschema::Validator;
use serde_json::Value;
use tilts_adapters::ident;

/// One violation: where in the message, and what is wrong.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Violation {
    /// JSON pointer into the message (RFC 6901); `""` is the whole message.
    pub pointer: String,
    /// What is wrong, without the value.
    pub message: String,
}

/// A compiled schema.
pub struct Schema {
    pub name: String,
    validator: Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Schema({})", self.name)
    }
}

/// Why a schema does not compile: a message and the pointer into the schema.
#[derive(Debug, Clone)]
pub struct SchemaCompileError {
    pub pointer: String,
    pub message: String,
}

/// The most violations reported for one message (a huge invalid array must not produce a huge answer).
pub const MAX_VIOLATIONS: usize = 50;

impl Schema {
    /// Compiles a schema document.
    pub fn compile(name: &str, doc: &Value) -> Result<Schema, SchemaCompileError> {
        if !doc.is_object() && !doc.is_boolean() {
            return Err(SchemaCompileError {
                pointer: String::new(),
                message: "a JSON Schema must be an object (or true/false)".into(),
            });
        }
        let mut opts = jsonschema::options()
            .should_validate_formats(true)
            .with_format("lv-personal-code", |s: &str| {
                ident::PersonalCode::parse(s).is_ok()
            })
            .with_format("lv-reg-no", ident::is_valid_reg_no);
        if doc.get("$schema").is_none() {
            opts = opts.with_draft(jsonschema::Draft::Draft202012);
        }
        // Checking against the meta-schema first gives the pointer of the bad keyword.
        if let Some(e) = jsonschema::meta::validate(doc).err() {
            return Err(SchemaCompileError {
                pointer: e.instance_path().to_string(),
                message: format!("not a valid JSON Schema: {}", e.masked_with("the value")),
            });
        }
        let validator = opts.build(doc).map_err(|e| SchemaCompileError {
            pointer: e.instance_path().to_string(),
            message: e.to_string(),
        })?;
        Ok(Schema {
            name: name.to_string(),
            validator,
        })
    }

    /// Validates a message; an empty list means valid.
    pub fn validate(&self, instance: &Value) -> Vec<Violation> {
        if self.validator.is_valid(instance) {
            return Vec::new();
        }
        self.validator
            .iter_errors(instance)
            .take(MAX_VIOLATIONS)
            .map(|e| Violation {
                pointer: e.instance_path().to_string(),
                message: message_for(&e),
            })
            .collect()
    }
}

/// A message for a violation that never includes the offending value.
fn message_for(e: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    match e.kind() {
        K::Required { property } => format!("required property {} is missing", property),
        K::Format { format } => match format.as_str() {
            "lv-personal-code" => "is not a valid Latvian personal code".into(),
            "lv-reg-no" => "is not a valid Enterprise Register number".into(),
            f => format!("is not a valid {f}"),
        },
        K::Pattern { pattern } => format!("does not match the pattern {pattern}"),
        K::AdditionalProperties { unexpected } => {
            format!(
                "has properties the schema does not allow: {}",
                unexpected.join(", ")
            )
        }
        _ => e.masked_with("the value").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::compile(
            "t",
            &json!({
                "type": "object",
                "required": ["personalCode", "regNo", "amount"],
                "properties": {
                    "personalCode": {"type": "string", "format": "lv-personal-code"},
                    "regNo": {"type": "string", "format": "lv-reg-no"},
                    "amount": {"type": "number", "minimum": 0},
                    "kind": {"enum": ["a", "b"]}
                },
                "additionalProperties": false
            }),
        )
        .unwrap()
    }

    #[test]
    fn valid_message_has_no_violations() {
        let v = schema().validate(
            &json!({"personalCode": "010190-12349", "regNo": "40003521600", "amount": 5}),
        );
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn violations_have_pointers_and_never_the_value() {
        let v = schema().validate(&json!({"personalCode": "010190-12340", "regNo": "40003123454", "amount": -1, "kind": "010190-12349"}));
        let pointers: Vec<_> = v.iter().map(|v| v.pointer.as_str()).collect();
        for p in ["/personalCode", "/regNo", "/amount", "/kind"] {
            assert!(pointers.contains(&p), "{p} not in {pointers:?}");
        }
        let text = format!("{v:?}");
        assert!(!text.contains("010190"), "{text}");
        assert!(!text.contains("40003123454"), "{text}");
    }

    #[test]
    fn missing_property_is_named() {
        let v = schema().validate(&json!({"regNo": "40003521600", "amount": 1}));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].pointer, "");
        assert!(v[0].message.contains("personalCode"), "{}", v[0].message);
    }

    #[test]
    fn invalid_schema_is_reported_with_a_pointer() {
        let e = Schema::compile(
            "t",
            &json!({"type": "object", "properties": {"a": {"type": "strnig"}}}),
        )
        .unwrap_err();
        assert!(e.pointer.contains("/properties/a"), "{e:?}");
    }
}
