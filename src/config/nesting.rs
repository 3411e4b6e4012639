//! How deep a pipeline file's collections may nest, checked before the file is loaded.
//!
//! saphyr builds its tree recursively, and so do [`super::yaml`]'s conversion, `${VAR}`
//! substitution, serde and the tree's drop: a file of `- - - - …` 20,000 levels deep (40 KB)
//! overflowed the stack and killed the process — `weir validate`, or the daemon on a
//! `POST /v1/reload` body. So the file's events are walked first, with an explicit stack,
//! and a file nesting deeper than [`MAX_NESTING`] is refused before anything recursive
//! sees it. Aliases count as deep as the node they repeat.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use saphyr_parser::{Event, Parser};

use super::diagnostic::{Diagnostic, Location};

/// Far deeper than any pipeline (they nest a handful of levels), far shallower than what
/// exhausts even a 2 MB thread stack.
pub const MAX_NESTING: usize = 64;

/// Refuses `text` if its mappings and sequences nest deeper than [`MAX_NESTING`]. A file
/// that does not parse passes: the loader reports the syntax error with its own message.
pub fn check(file: &Arc<Path>, text: &str) -> Result<(), Diagnostic> {
    // For each open collection: its anchor and the deepest level reached inside it.
    let mut open: Vec<(usize, usize)> = Vec::new();
    // Anchor id -> how many levels the anchored node spans (a scalar: 0).
    let mut heights: HashMap<usize, usize> = HashMap::new();
    for event in Parser::new_from_str(text) {
        let Ok((event, span)) = event else {
            return Ok(());
        };
        let reached = match event {
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                open.push((anchor, open.len() + 1));
                open.len()
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, deepest)) = open.pop() {
                    if anchor != 0 {
                        heights.insert(anchor, deepest - open.len());
                    }
                    if let Some(parent) = open.last_mut() {
                        parent.1 = parent.1.max(deepest);
                    }
                }
                continue;
            }
            Event::Alias(anchor) => open.len() + heights.get(&anchor).copied().unwrap_or(0),
            Event::Scalar(_, _, anchor, _) => {
                if anchor != 0 {
                    heights.insert(anchor, 0);
                }
                continue;
            }
            _ => continue,
        };
        if let Some(parent) = open.last_mut() {
            parent.1 = parent.1.max(reached);
        }
        if reached > MAX_NESTING {
            return Err(Diagnostic::error(
                Some(Location {
                    file: Arc::clone(file),
                    line: span.start.line(),
                    column: span.start.col() + 1,
                }),
                format!(
                    "mappings and lists nest deeper than {MAX_NESTING} levels here: a pipeline \
                     is never that deep"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_text(text: &str) -> Result<(), Diagnostic> {
        check(&Arc::from(Path::new("t.yaml")), text)
    }

    #[test]
    fn pipelines_pass_and_deep_nesting_is_refused_where_it_gets_too_deep() {
        assert!(
            check_text("sources:\n  a: { type: simulator, devices: [1, [2, {x: 3}]] }\n").is_ok()
        );
        let at_limit = format!("{}{}", "[".repeat(MAX_NESTING), "]".repeat(MAX_NESTING));
        assert!(check_text(&at_limit).is_ok());
        let err = check_text(&format!("a:\n  {}x\n", "- ".repeat(MAX_NESTING))).unwrap_err();
        assert!(err.message.contains("nest deeper than 64"), "{err}");
        let at = err.location.unwrap();
        assert_eq!((at.line, at.column), (2, 3 + 2 * (MAX_NESTING - 1)));
    }

    #[test]
    fn a_file_nested_deep_enough_to_overflow_the_stack_is_refused_not_a_crash() {
        // Found by probing the `pipeline` fuzz target with inputs longer than its default
        // -max_len: 20,000 levels killed the process with a stack overflow.
        let text = format!("sources:\n  a:\n    {}x\n", "- ".repeat(200_000));
        let err =
            super::super::load_str(&crate::CATALOGUE, "deep.yaml", &text, &|_| None).unwrap_err();
        assert!(err.to_string().contains("nest deeper than"), "{err}");
    }

    #[test]
    fn aliases_count_as_deep_as_what_they_repeat() {
        // Each anchor wraps the previous alias in one more list: shallow as written, 70
        // levels deep once the aliases are expanded.
        let mut text = String::from("a0: &a0 [x]\n");
        for i in 1..70 {
            text.push_str(&format!("a{i}: &a{i} [*a{}]\n", i - 1));
        }
        let err = check_text(&text).unwrap_err();
        assert!(err.message.contains("nest deeper"), "{err}");
        assert!(check_text("a: &a [[x]]\nb: [*a, *a]\n").is_ok());
    }
}
