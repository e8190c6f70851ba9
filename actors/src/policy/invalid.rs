//! A setting that cannot work, typed: which field, and what is wrong with it. Validation returns
//! it so a config layer can name its own key for the field from a table, never by reading the
//! message.

use std::fmt;

/// One invalid field of a settings struct.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The field, as the struct names it (`"failure_rate"`, `"backoff.cap"`, `"trip"`).
    pub field: &'static str,
    /// What is wrong and how to fix it, without the field's name (`"must be at least 1"`).
    pub problem: String,
}

impl Invalid {
    /// `field` cannot be used: `problem`.
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.problem)
    }
}

impl std::error::Error for Invalid {}
