//! TOML parsing whose errors name the key path and the line, shared by the gateway's config and
//! the simulator's scenarios.

use serde::de::DeserializeOwned;

/// Why a TOML document did not parse into the expected shape.
#[derive(Debug)]
pub(crate) struct TomlProblem {
    /// The key path (`models[1].fallbacks[0]`), or `.` for the document itself.
    pub key: String,
    /// Line and column, when the parser knows them.
    pub line: Option<(usize, usize)>,
    /// The parser's message.
    pub message: String,
}

/// Parse `text` into `T`, tracking the key path of the first problem.
pub(crate) fn parse<T: DeserializeOwned>(text: &str) -> Result<T, TomlProblem> {
    let problem = |key: String, err: toml::de::Error| TomlProblem {
        key,
        line: err.span().map(|s| line_col(text, s.start)),
        message: err.message().trim().to_owned(),
    };
    let de = toml::de::Deserializer::parse(text).map_err(|e| problem(".".into(), e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        problem(key, e.into_inner())
    })
}

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(1, |l| l.chars().count() + 1);
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 0), (1, 1));
    }
}
