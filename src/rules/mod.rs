//! rules: analyst-owned YAML files compiled into an indexed, immutable rule set, reloaded live.
//!
//! [`model`] is the file format, [`parse`] reads one file rule by rule,
//! [`load`] reads a directory, [`compile`] checks and compiles one rule
//! (conditions through `crate::expr`, templates through `crate::render`,
//! patterns through `crate::patterns`), [`texts`] the texts per locale,
//! [`subscription`] the alerts users subscribe to with their own values,
//! [`set`] is the index and matcher, and [`live`] swaps sets on reload.

pub mod compile;
pub mod digest;
pub mod error;
pub mod experiment;
pub mod live;
pub mod load;
pub mod model;
pub mod parse;
pub mod set;
pub mod subscription;
pub mod texts;

pub use compile::{Known, Rule};
pub use error::{RuleError, RuleErrors};
pub use live::{LiveRules, Loaded};
pub use load::load_dir;
pub use set::FileSummary;
pub use set::{RuleSet, Verdict};
