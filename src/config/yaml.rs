//! YAML documents as trees that remember where every value was written.
//!
//! serde deserializers forget positions, so weir parses each file into a [`Node`] tree
//! (with saphyr, the maintained pure-Rust YAML 1.2 parser), substitutes `${VAR}`s in string
//! values, and only then deserializes typed configuration from it. When serde reports an
//! error at a path (`transforms.valid.condition`), [`Node::locate`] turns the path back into
//! a line and column.

use std::path::Path;
use std::sync::Arc;

use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, YamlDataOwned};
use serde_json::Value;

use super::diagnostic::{Diagnostic, Location};

/// A YAML value with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub location: Location,
    pub kind: NodeKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Seq(Vec<Node>),
    /// Entries in file order; keys are strings with their own positions.
    Map(Vec<(Key, Node)>),
}

/// A mapping key and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub location: Location,
}

/// One step of a path into a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathStep {
    Key(String),
    Index(usize),
}

impl Node {
    /// Parses one YAML file. An empty file is an empty mapping.
    pub fn parse(file: &Arc<Path>, text: &str) -> Result<Node, Diagnostic> {
        // Before anything recursive walks it (saphyr's loader included).
        super::nesting::check(file, text)?;
        let docs = MarkedYamlOwned::load_from_str(text).map_err(|err| {
            let marker = err.marker();
            Diagnostic::error(
                Some(Location {
                    file: Arc::clone(file),
                    line: marker.line(),
                    column: marker.col() + 1,
                }),
                format!("invalid YAML: {}", err.info()),
            )
        })?;
        let start = Location {
            file: Arc::clone(file),
            line: 1,
            column: 1,
        };
        match docs.len() {
            0 => Ok(Node {
                location: start,
                kind: NodeKind::Map(Vec::new()),
            }),
            1 => {
                let node = convert(file, &docs[0])?;
                match node.kind {
                    NodeKind::Null => Ok(Node {
                        location: start,
                        kind: NodeKind::Map(Vec::new()),
                    }),
                    _ => Ok(node),
                }
            }
            _ => Err(Diagnostic::error(
                Some(start),
                "a pipeline file holds one YAML document; split the others into their own files",
            )),
        }
    }

    /// The entries of a mapping, or `None` for other kinds.
    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// The key entry of `key` in a mapping.
    pub fn key(&self, key: &str) -> Option<&Key> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(k, _)| k)
    }

    /// The position of the value at `path`, or of its nearest existing ancestor.
    pub fn locate(&self, path: &[PathStep]) -> &Location {
        &self.find(path).location
    }

    /// The node at `path`, or its nearest existing ancestor.
    pub fn find(&self, path: &[PathStep]) -> &Node {
        let mut node = self;
        for step in path {
            let next = match (step, &node.kind) {
                (PathStep::Key(key), NodeKind::Map(_)) => node.get(key),
                (PathStep::Index(i), NodeKind::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(next) => node = next,
                None => break,
            }
        }
        node
    }

    /// A short name for the kind of value, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) | NodeKind::Float(_) => "a number",
            NodeKind::String(_) => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    /// Converts the tree into JSON, substituting `${VAR}` in strings with `lookup`.
    ///
    /// Every unresolved variable is reported with its position, not just the first.
    pub fn to_json(
        &self,
        lookup: &dyn Fn(&str) -> Option<String>,
        errors: &mut Vec<Diagnostic>,
    ) -> Value {
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::from(*i),
            NodeKind::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
            NodeKind::String(s) => match super::env::substitute(s, lookup) {
                Ok(substituted) => substituted,
                Err(message) => {
                    errors.push(Diagnostic::error(Some(self.location.clone()), message));
                    Value::String(s.clone())
                }
            },
            NodeKind::Seq(items) => {
                Value::Array(items.iter().map(|n| n.to_json(lookup, errors)).collect())
            }
            NodeKind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json(lookup, errors)))
                    .collect(),
            ),
        }
    }
}

fn marker_location(file: &Arc<Path>, node: &MarkedYamlOwned) -> Location {
    Location {
        file: Arc::clone(file),
        line: node.span.start.line(),
        column: node.span.start.col() + 1,
    }
}

fn convert(file: &Arc<Path>, node: &MarkedYamlOwned) -> Result<Node, Diagnostic> {
    let location = marker_location(file, node);
    let kind = match &node.data {
        YamlDataOwned::Value(scalar) => scalar_kind(scalar),
        YamlDataOwned::Representation(text, _, _) => {
            scalar_kind(&ScalarOwned::parse_from_cow(text.as_str().into()))
        }
        YamlDataOwned::Sequence(items) => NodeKind::Seq(
            items
                .iter()
                .map(|item| convert(file, item))
                .collect::<Result<_, _>>()?,
        ),
        YamlDataOwned::Mapping(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let name = match &key.data {
                    YamlDataOwned::Value(scalar) => scalar_to_key(scalar),
                    _ => None,
                }
                .ok_or_else(|| {
                    Diagnostic::error(
                        Some(marker_location(file, key)),
                        "mapping keys must be plain scalars (strings or numbers)",
                    )
                })?;
                out.push((
                    Key {
                        name,
                        location: marker_location(file, key),
                    },
                    convert(file, value)?,
                ));
            }
            NodeKind::Map(out)
        }
        // Core-schema tags (`!!str`, `!!int`) are harmless: keep the value.
        YamlDataOwned::Tagged(tag, inner) if tag.is_yaml_core_schema() => {
            return convert(file, inner);
        }
        YamlDataOwned::Tagged(tag, _) => {
            return Err(Diagnostic::error(
                Some(location),
                format!(
                    "YAML tags such as `{}{}` are not supported",
                    tag.handle, tag.suffix
                ),
            ));
        }
        YamlDataOwned::Alias(_) | YamlDataOwned::BadValue => {
            return Err(Diagnostic::error(Some(location), "invalid YAML value"));
        }
    };
    Ok(Node { location, kind })
}

fn scalar_kind(scalar: &ScalarOwned) -> NodeKind {
    match scalar {
        ScalarOwned::Null => NodeKind::Null,
        ScalarOwned::Boolean(b) => NodeKind::Bool(*b),
        ScalarOwned::Integer(i) => NodeKind::Int(*i),
        ScalarOwned::FloatingPoint(f) => NodeKind::Float(f.into_inner()),
        ScalarOwned::String(s) => NodeKind::String(s.clone()),
    }
}

fn scalar_to_key(scalar: &ScalarOwned) -> Option<String> {
    match scalar {
        ScalarOwned::String(s) => Some(s.clone()),
        ScalarOwned::Integer(i) => Some(i.to_string()),
        ScalarOwned::Boolean(b) => Some(b.to_string()),
        ScalarOwned::FloatingPoint(f) => Some(f.to_string()),
        ScalarOwned::Null => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Node, Diagnostic> {
        Node::parse(&Arc::from(Path::new("t.yaml")), text)
    }

    #[test]
    fn positions_are_one_based() {
        let node = parse("sources:\n  sim:\n    type: simulator\n").unwrap();
        let path = [
            PathStep::Key("sources".into()),
            PathStep::Key("sim".into()),
            PathStep::Key("type".into()),
        ];
        let at = node.locate(&path);
        assert_eq!((at.line, at.column), (3, 11));
    }

    #[test]
    fn duplicate_keys_are_an_error_with_position() {
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert!(err.message.contains("duplicate"), "{err}");
        assert_eq!(err.location.unwrap().line, 2);
    }

    #[test]
    fn empty_file_is_an_empty_map() {
        assert_eq!(parse("").unwrap().as_map().map(<[_]>::len), Some(0));
    }
}
