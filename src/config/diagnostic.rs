//! Configuration errors that point at the file, line and column a user has to fix.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A position in a pipeline file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: Arc<Path>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// How bad a finding is: errors stop `validate` and `run`, warnings do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub location: Option<Location>,
    /// The component the finding is about, if any.
    pub component: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn error(location: Option<Location>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            location,
            component: None,
            message: message.into(),
        }
    }

    pub fn warning(location: Option<Location>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(location, message)
        }
    }

    pub fn in_component(mut self, component: impl Into<String>) -> Self {
        self.component = Some(component.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `error: pipelines/a.yaml:12:7: component `valid`: unknown field ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.severity {
            Severity::Error => f.write_str("error: ")?,
            Severity::Warning => f.write_str("warning: ")?,
        }
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        if let Some(component) = &self.component {
            write!(f, "component `{component}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every finding of one load or validation, errors first, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    /// Sorts errors before warnings, then by position.
    pub fn sort(&mut self) {
        self.0
            .sort_by(|a, b| (a.severity, &a.location).cmp(&(b.severity, &b.location)));
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for diagnostic in &self.0 {
            writeln!(f, "{diagnostic}")?;
        }
        let errors = self.errors().count();
        if errors > 0 {
            write!(f, "{errors} error{}", if errors == 1 { "" } else { "s" })?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// `` `a`, `b`, `c` ``
pub(super) fn list(items: &[&str]) -> String {
    if items.is_empty() {
        return "(none in this build)".into();
    }
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// ` (did you mean `x`?)` when a candidate is close to `word`, else empty.
pub fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(distance, c)| *distance <= 2.max(c.len() / 4) && *distance > 0)
        .min()
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}
