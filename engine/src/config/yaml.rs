//! Reads a YAML file into plain JSON plus an index from JSON pointer to source position.
//!
//! Why not deserialize the typed config straight from YAML: serde stops at the first error and
//! loses positions inside enums, while `tilts check` must report *every* problem with its line and
//! column. So the YAML is read once into a position-carrying tree, turned into a
//! `serde_json::Value` and a pointer -> position index; typed deserialization then runs per route
//! and per system on the JSON, and any error (serde's or a semantic one) is located by pointer.

use std::collections::HashMap;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::Spanned;

/// A 1-based position in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl From<serde_saphyr::Location> for Pos {
    fn from(l: serde_saphyr::Location) -> Self {
        Pos {
            line: l.line(),
            column: l.column(),
        }
    }
}

/// Where a node is: its key (for mapping values) and its value.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodePos {
    pub key: Option<Pos>,
    pub value: Pos,
}

/// The YAML document as JSON, with the position of every node.
#[derive(Debug, Default)]
pub struct Located {
    pub value: Value,
    positions: HashMap<String, NodePos>,
    /// Keys that appear twice in one mapping: (key, position of the repeat, line of the first).
    /// The later value wins in `value`; the checker reports each as an error.
    pub duplicates: Vec<(String, Pos, u64)>,
}

impl Located {
    /// The position of the node at `pointer` (RFC 6901), or of its nearest existing ancestor.
    pub fn pos(&self, pointer: &str) -> Pos {
        self.node(pointer).value
    }

    /// The position of the *key* of the node at `pointer` (for "unknown field" errors), falling
    /// back to the value's position.
    pub fn key_pos(&self, pointer: &str) -> Pos {
        let n = self.node(pointer);
        n.key.unwrap_or(n.value)
    }

    fn node(&self, pointer: &str) -> NodePos {
        let mut p = pointer;
        loop {
            if let Some(n) = self.positions.get(p) {
                return *n;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return self.positions.get("").copied().unwrap_or_default(),
            }
        }
    }
}

/// The first tab in a line's indentation, from line `from` on (else from the start).
fn tab_in_indentation(text: &str, from: u64) -> Option<Pos> {
    let tabs: Vec<Pos> = text
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
            let col = line[..indent].find('\t')?;
            (indent < line.len()).then_some(Pos {
                line: i as u64 + 1,
                column: col as u64 + 1,
            })
        })
        .collect();
    tabs.iter()
        .find(|p| p.line >= from)
        .or(tabs.first())
        .copied()
}

/// A YAML syntax error with its position.
#[derive(Debug)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses YAML text. Duplicate keys, bad indentation and the like are syntax errors.
pub fn parse(text: &str) -> Result<Located, SyntaxError> {
    if text.trim().is_empty() {
        return Ok(Located {
            value: Value::Null,
            positions: HashMap::from([(String::new(), NodePos::default())]),
            duplicates: Vec::new(),
        });
    }
    // Duplicate keys are passed through to `Node`'s visitor, which reports them with the line
    // of the first occurrence (the library's own message talks about its settings instead).
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
    };
    let root: Spanned<Node> = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let pos = e
            .location()
            .map(Pos::from)
            .unwrap_or(Pos { line: 1, column: 1 });
        let message = clean_message(&e.without_snippet().to_string());
        // The parser reports a tab where the scalar before it ends; point at the tab itself.
        if message.contains("tab")
            && let Some(pos) = tab_in_indentation(text, pos.line)
        {
            return SyntaxError {
                pos,
                message: "a tab in the indentation: YAML indents with spaces only; replace the tab with spaces".into(),
            };
        }
        SyntaxError { pos, message }
    })?;
    let mut positions = HashMap::new();
    let mut duplicates = Vec::new();
    let value = flatten(root, None, String::new(), &mut positions, &mut duplicates);
    Ok(Located {
        value,
        positions,
        duplicates,
    })
}

/// serde-saphyr appends " at line L column C"; tilts prints the position itself.
fn clean_message(msg: &str) -> String {
    let msg = msg.lines().next().unwrap_or(msg);
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn flatten(
    node: Spanned<Node>,
    key: Option<Pos>,
    pointer: String,
    out: &mut HashMap<String, NodePos>,
    dups: &mut Vec<(String, Pos, u64)>,
) -> Value {
    let value_pos = Pos::from(node.referenced);
    let v = match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::I64(i) => Value::Number(i.into()),
        Node::U64(u) => Value::Number(u.into()),
        Node::F64(f) => Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Node::Str(s) => Value::String(s),
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| flatten(item, None, format!("{pointer}/{i}"), out, dups))
                .collect(),
        ),
        Node::Map(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                let kp = Pos::from(k.referenced);
                let child = format!("{pointer}/{}", escape_pointer(&k.value));
                if let Some(first) = out.get(&child).and_then(|n| n.key) {
                    dups.push((k.value.clone(), kp, first.line));
                }
                let val = flatten(v, Some(kp), child, out, dups);
                m.insert(k.value, val);
            }
            Value::Object(m)
        }
    };
    out.insert(
        pointer,
        NodePos {
            key,
            value: value_pos,
        },
    );
    v
}

/// Escapes one JSON-pointer segment (RFC 6901).
pub fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// One YAML node with positioned children.
enum Node {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Node, E> {
        Ok(Node::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Node, E> {
        Ok(Node::I64(i))
    }
    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Node, E> {
        Ok(Node::U64(u))
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Node, E> {
        Ok(Node::F64(f))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Node, E> {
        Ok(Node::Str(s.to_string()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Node, E> {
        Ok(Node::Str(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(Spanned<String>, Spanned<Node>)> = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyString>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            let key = Spanned::new(key.value.0, key.referenced, key.defined);
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

/// A mapping key: YAML allows `200:` or `true:` as keys; tilts treats every key as text.
struct KeyString(String);

impl<'de> Deserialize<'de> for KeyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyString;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<KeyString, E> {
                Ok(KeyString(s.to_string()))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<KeyString, E> {
                Ok(KeyString(b.to_string()))
            }
            fn visit_i64<E: de::Error>(self, i: i64) -> Result<KeyString, E> {
                Ok(KeyString(i.to_string()))
            }
            fn visit_u64<E: de::Error>(self, u: u64) -> Result<KeyString, E> {
                Ok(KeyString(u.to_string()))
            }
            fn visit_f64<E: de::Error>(self, f: f64) -> Result<KeyString, E> {
                Ok(KeyString(f.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyString, E> {
                Ok(KeyString("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_nested_keys_and_values() {
        let text = "version: 1\nroutes:\n  - id: a\n    steps:\n      - map: x.json.hbs\n";
        let l = parse(text).unwrap();
        assert_eq!(l.value["routes"][0]["steps"][0]["map"], "x.json.hbs");
        assert_eq!(l.pos("/routes/0/id"), Pos { line: 3, column: 9 });
        assert_eq!(l.key_pos("/routes/0/id"), Pos { line: 3, column: 5 });
        assert_eq!(l.pos("/routes/0/steps/0/map").line, 5);
        // A pointer below an existing node falls back to the nearest ancestor.
        assert_eq!(l.pos("/routes/0/steps/0/map/nope").line, 5);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(err.pos.line >= 2, "{err:?}");
        let dup = parse("a: 1\na: 2\n").unwrap();
        assert_eq!(
            dup.duplicates,
            vec![("a".to_string(), Pos { line: 2, column: 1 }, 1)]
        );
    }

    #[test]
    fn scalars_keep_their_types() {
        let l = parse("a: 1\nb: true\nc: \"1\"\nd: 1.5\ne: ~\n200: ok\n").unwrap();
        assert_eq!(l.value["a"], 1);
        assert_eq!(l.value["b"], true);
        assert_eq!(l.value["c"], "1");
        assert_eq!(l.value["d"], 1.5);
        assert!(l.value["e"].is_null());
        assert_eq!(l.value["200"], "ok");
    }
}
