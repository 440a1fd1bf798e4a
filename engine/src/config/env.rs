//! `${VAR}` and `${VAR:-default}` in the route file, resolved from the environment.
//!
//! Interpolation runs on parsed *string values* (never on raw YAML text), so a variable cannot
//! inject YAML structure. `$${` writes a literal `${`. A variable that is not set and has no
//! default is an error naming the variable; values are never printed (they are often secrets).

use serde_json::Value;

/// A problem found while interpolating, at a JSON pointer.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvProblem {
    pub pointer: String,
    pub message: String,
}

/// Replaces variables in every string of `value`, in place, reading variables through `lookup`.
pub fn interpolate(
    value: &mut Value,
    pointer: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<EnvProblem>,
) {
    match value {
        Value::String(s) if s.contains('$') => match expand(s, lookup) {
            Ok(new) => *s = new,
            Err(message) => problems.push(EnvProblem {
                pointer: pointer.to_string(),
                message,
            }),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &format!("{pointer}/{i}"), lookup, problems);
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let child = format!("{pointer}/{}", super::yaml::escape_pointer(k));
                interpolate(v, &child, lookup, problems);
            }
        }
        _ => {}
    }
}

/// Expands one string.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body.find('}') else {
            return Err(
                "unclosed '${': write ${NAME} or ${NAME:-default}, or $${ for a literal".into(),
            );
        };
        let inner = &body[..end];
        let (name, default) = match inner.find(":-") {
            Some(j) => (&inner[..j], Some(&inner[j + 2..])),
            None => (inner, None),
        };
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(format!(
                "'${{{inner}}}' is not a variable reference: names are letters, digits and '_' (write ${{NAME}} or ${{NAME:-default}})"
            ));
        }
        match (lookup(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set: set it, or give a default with ${{{name}:-value}}"
                ));
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("10.0.0.1".into()),
            "SECRET" => Some("hunter2".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_default_and_literal() {
        assert_eq!(
            expand("http://${HOST}:80", &env).unwrap(),
            "http://10.0.0.1:80"
        );
        assert_eq!(expand("${PORT:-8080}", &env).unwrap(), "8080");
        assert_eq!(expand("${HOST:-x}", &env).unwrap(), "10.0.0.1");
        assert_eq!(
            expand("cost $5 and $${HOST}", &env).unwrap(),
            "cost $5 and ${HOST}"
        );
        assert_eq!(expand("${EMPTY:-}", &env).unwrap(), "");
    }

    #[test]
    fn missing_variable_is_named_and_values_never_printed() {
        let e = expand("${NOPE}", &env).unwrap_err();
        assert!(e.contains("NOPE") && e.contains(":-"), "{e}");
        let e = expand("${SECRET} ${bad name}", &env).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(expand("${HOST", &env).unwrap_err().contains("unclosed"));
    }

    #[test]
    fn walks_the_tree_and_reports_pointers() {
        let mut v = serde_json::json!({"a": {"b": ["${HOST}", "${X}"]}});
        let mut problems = vec![];
        interpolate(&mut v, "", &env, &mut problems);
        assert_eq!(v["a"]["b"][0], "10.0.0.1");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].pointer, "/a/b/1");
    }
}
