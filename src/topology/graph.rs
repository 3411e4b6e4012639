//! `weir graph`: a topology as Graphviz DOT or a Mermaid flowchart.

use std::fmt::Write as _;

use crate::config::{ComponentKind, TopologyConfig};

/// Graphviz DOT: `weir graph p.yaml | dot -Tsvg > p.svg`.
pub fn to_dot(config: &TopologyConfig) -> String {
    let mut out = String::from("digraph weir {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
    for component in config.components.values() {
        let shape = match component.config.kind() {
            ComponentKind::Source => "invhouse",
            ComponentKind::Transform => "box",
            ComponentKind::Aggregator => "box3d",
            ComponentKind::Sink => "house",
            ComponentKind::Action => "octagon",
        };
        let _ = writeln!(
            out,
            "  \"{}\" [shape={shape}, label=\"{}\\n({})\"];",
            component.id,
            component.id,
            component.config.type_name()
        );
    }
    for component in config.components.values() {
        for input in &component.inputs {
            let label = input
                .output
                .as_deref()
                .map(|o| format!(" [label=\"{o}\"]"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\"{label};",
                input.component, component.id
            );
        }
    }
    out.push_str("}\n");
    out
}

/// A Mermaid flowchart, for Markdown that renders it.
pub fn to_mermaid(config: &TopologyConfig) -> String {
    let mut out = String::from("flowchart LR\n");
    for component in config.components.values() {
        let (open, close) = match component.config.kind() {
            ComponentKind::Source => ("[/", "/]"),
            ComponentKind::Transform => ("[", "]"),
            ComponentKind::Aggregator => ("[[", "]]"),
            ComponentKind::Sink => ("[\\", "\\]"),
            ComponentKind::Action => ("{{", "}}"),
        };
        let _ = writeln!(
            out,
            "  {id}{open}\"{id}<br/>{ty}\"{close}",
            id = component.id,
            ty = component.config.type_name()
        );
    }
    for component in config.components.values() {
        for input in &component.inputs {
            match &input.output {
                Some(output) => {
                    let _ = writeln!(out, "  {} -->|{output}| {}", input.component, component.id);
                }
                None => {
                    let _ = writeln!(out, "  {} --> {}", input.component, component.id);
                }
            }
        }
    }
    out
}
