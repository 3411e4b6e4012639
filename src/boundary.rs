//! The engine's boundary, checked: `config`, `topology`, `event`, `telemetry` and `buffers`
//! name no component or service module, so the engine reads (and is built upon) without
//! them.
//!
//! Every `crate::<module>` path in an engine file counts, in `use` lines or inline, and in
//! `crate::{a, b::c}` groups, as does a `super::` chain that climbs out of the engine to
//! the crate root. Comments do not count. Only the engine itself and the leaf libraries
//! (`template`, `codecs`, `redact`, and `testing` in unit tests) may be named; a module added to the
//! crate is outside the engine until this list says otherwise.

use std::path::{Path, PathBuf};

/// The engine's modules.
const ENGINE: &[&str] = &["config", "topology", "event", "telemetry", "buffers"];
/// Libraries with no knowledge of components, which anyone may use.
const LEAF_LIBRARIES: &[&str] = &["template", "codecs", "redact", "testing"];

/// The crate's top-level modules, as `lib.rs` declares them.
fn crate_modules(lib: &str) -> Vec<String> {
    lib.lines()
        .map(str::trim)
        .filter_map(|line| {
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub(crate) mod "))
                .or_else(|| line.strip_prefix("mod "))?;
            Some(rest.strip_suffix(';')?.trim().to_owned())
        })
        .collect()
}

/// The line without its `//` comment (a `//` inside a string literal is kept).
fn code_of(line: &str) -> &str {
    let mut quotes = 0;
    let bytes = line.as_bytes();
    for (i, pair) in bytes.windows(2).enumerate() {
        match pair {
            [b'"', _] if i == 0 || bytes[i - 1] != b'\\' => quotes += 1,
            [b'/', b'/'] if quotes % 2 == 0 => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The identifier at the start of `text`, after whitespace.
fn ident(text: &str) -> Option<&str> {
    let text = text.trim_start();
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

/// The first identifier of every top-level item of the `{...}` group `text` opens.
fn group_heads(text: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = 1;
    for (i, c) in text.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    item_start = i + 1;
                }
            }
            '}' | ',' if depth == 1 => {
                heads.extend(ident(&text[item_start..i]));
                item_start = i + 1;
                if c == '}' {
                    break;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    heads
}

/// The crate-root names `text` reaches: `crate::x`, `crate::{x, y}`, and `super::` chains
/// that climb `depth` levels or more (`depth`: how deep the file's module is).
fn root_names(text: &str, depth: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(found) = rest.find("::") {
        let before = rest[..found].trim_end();
        let after = &rest[found + 2..];
        let word_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let word = &before[word_start..];
        // Only the first segment of a path: `crate`, or the first `super` of a chain.
        let preceded = before[..word_start].trim_end().ends_with("::");
        if !preceded {
            let mut climbs = None;
            if word == "crate" {
                climbs = Some(after);
            } else if word == "super" {
                let mut level = 1;
                let mut chain = after;
                while let Some(next) = chain.trim_start().strip_prefix("super") {
                    match next.trim_start().strip_prefix("::") {
                        Some(more) => {
                            level += 1;
                            chain = more;
                        }
                        None => break,
                    }
                }
                if level >= depth {
                    climbs = Some(chain);
                }
            }
            if let Some(path) = climbs {
                if path.trim_start().starts_with('{') {
                    names.extend(group_heads(path.trim_start()).into_iter().map(String::from));
                } else if let Some(name) = ident(path) {
                    names.push(name.to_owned());
                }
            }
        }
        offset += found + 2;
        rest = &text[offset..];
    }
    names
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable source directory") {
        let path = entry.expect("a readable directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// How many `super`s from this file reach the crate root: 1 for `config/mod.rs`, 2 for
/// `config/load.rs` or `topology/channel/mod.rs`, ...
fn depth_of(relative: &Path) -> usize {
    let parts = relative.components().count();
    let is_mod = relative.file_name().is_some_and(|n| n == "mod.rs");
    if is_mod { parts - 1 } else { parts }
}

#[test]
fn the_engine_names_no_component_or_service() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let modules = crate_modules(&lib);
    assert!(
        modules.iter().any(|m| m == "sources"),
        "lib.rs lists modules"
    );
    let allowed = |name: &str| {
        ENGINE.contains(&name)
            || LEAF_LIBRARIES.contains(&name)
            || !modules.iter().any(|m| m == name)
    };

    let mut crossings = Vec::new();
    for engine in ENGINE {
        let mut files = Vec::new();
        let dir = src.join(engine);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(src.join(format!("{engine}.rs")));
        }
        assert!(!files.is_empty(), "the engine module `{engine}` has files");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a readable source file");
            let relative = file.strip_prefix(&src).unwrap_or(&file);
            let code: String = text.lines().map(code_of).collect::<Vec<_>>().join("\n");
            for name in root_names(&code, depth_of(relative)) {
                if !allowed(&name) {
                    crossings.push(format!("src/{} names `crate::{name}`", relative.display()));
                }
            }
        }
    }
    assert!(
        crossings.is_empty(),
        "the engine ({}) may name only itself and {}; move what it needs into the engine \
         or reach it through the catalogue or the services:\n{}",
        ENGINE.join(", "),
        LEAF_LIBRARIES.join(", "),
        crossings.join("\n")
    );
}

#[test]
fn every_form_of_path_is_seen() {
    let text = "use crate::sources::SourceConfig;\n\
                use crate::{config::Diagnostic, sinks::{self, SinkConfig}};\n\
                let r: Option<crate :: registry::RegistryConfig> = None;\n\
                use super::super::actions::ActionContext;\n\
                use super::diff::Diff;\n\
                let x = other::crate_like::thing;";
    assert_eq!(
        root_names(text, 2),
        ["sources", "config", "sinks", "registry", "actions"]
    );
    // From `config/mod.rs`, one `super` reaches the root.
    assert_eq!(root_names("use super::transforms::X;", 1), ["transforms"]);
    assert_eq!(
        code_of("let url = \"http://x\"; // crate::sources"),
        "let url = \"http://x\"; "
    );
}
