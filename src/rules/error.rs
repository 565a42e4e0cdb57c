//! A rule-file error that points at the text: `file:line:col: rule "id": message`.

use std::fmt;
use std::path::PathBuf;

/// One problem in one rule file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleError {
    /// The file, as found under the rules directory.
    pub file: PathBuf,
    /// 1-based line and column in the file.
    pub line: usize,
    pub column: usize,
    /// The rule the problem belongs to, when known.
    pub rule: Option<String>,
    /// What is wrong, and where possible how to fix it.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if let Some(rule) = &self.rule {
            write!(f, "rule \"{rule}\": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in a load, in file then line order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.0))]
pub struct RuleErrors(pub Vec<RuleError>);

fn render(errors: &[RuleError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
