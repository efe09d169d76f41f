//! Errors of the rules stage, always naming the file and, when the problem
//! is in the file, the line and column (1-based) of the offending node.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RulesError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {len} bytes is over the {max}-byte limit for a rule file")]
    TooLarge { file: String, len: u64, max: u64 },
    #[error("{file}: the file is empty (an empty rule file is refused so a half-written file never wipes the rules)")]
    Empty { file: String },
    /// YAML syntax, schema or value error at a position in the file.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid { file: String, line: usize, column: usize, message: String },
    /// A YAML error the parser could not place (rare: e.g. recursion limit).
    #[error("{file}: {message}")]
    Unplaced { file: String, message: String },
    #[error("bad span JSON: {0}")]
    SpanJson(#[from] serde_json::Error),
    #[error("bad span JSON: field `{field}`: {problem}")]
    SpanField { field: &'static str, problem: String },
}

impl RulesError {
    /// Wraps a serde_yaml error, keeping its position.
    pub fn from_yaml(file: &str, e: &serde_yaml::Error) -> RulesError {
        let text = crate::config::shorten_quoted(&e.to_string());
        match e.location() {
            Some(loc) => {
                // serde_yaml inserts " at line L column C"; we print it up front.
                let at = format!(" at line {} column {}", loc.line(), loc.column());
                let message = text.replacen(&at, "", 1);
                RulesError::Invalid { file: file.to_owned(), line: loc.line(), column: loc.column(), message }
            }
            None => RulesError::Unplaced { file: file.to_owned(), message: text },
        }
    }

    /// (line, column) when the error has a position in the file.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            RulesError::Invalid { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }
}

/// Finds where `key: value` occurs for the `nth` time (0-based) in YAML
/// text, for errors found after parsing (duplicates, cross references).
/// Returns the 1-based line and the column of the value.
pub fn locate(text: &str, key: &str, value: &str, nth: usize) -> Option<(usize, usize)> {
    let mut seen = 0;
    for (lineno, line) in text.lines().enumerate() {
        let mut from = 0;
        while let Some(pos) = line[from..].find(key).map(|p| p + from) {
            from = pos + key.len();
            let before_ok =
                line[..pos].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'));
            let rest = &line[from..];
            let Some(after_colon) = rest.trim_start().strip_prefix(':') else {
                continue;
            };
            let val = after_colon.trim_start();
            let unquoted = val.trim_start_matches(['"', '\'']);
            let Some(tail) = unquoted.strip_prefix(value) else {
                continue;
            };
            let boundary =
                tail.chars().next().is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.'));
            if before_ok && boundary {
                if seen == nth {
                    let col = line.len() - val.len() + 1;
                    return Some((lineno + 1, col));
                }
                seen += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_errors_keep_position_and_drop_the_suffix() {
        let e = serde_yaml::from_str::<serde_yaml::Value>("a: [1, 2\nb: 3\n").unwrap_err();
        let r = RulesError::from_yaml("r.yaml", &e);
        let (line, col) = r.position().unwrap();
        assert!(line >= 2, "{r}");
        let shown = r.to_string();
        assert!(shown.starts_with(&format!("r.yaml:{line}:{col}: ")), "{shown}");
        assert!(!shown.contains(&format!(" at line {line} column {col}")), "{shown}");
    }

    #[test]
    fn locate_finds_nth_key_value() {
        let text = "rules:\n  - id: a\n  - id: ab\n  - {id: 'a', x: 1}\n";
        assert_eq!(locate(text, "id", "a", 0), Some((2, 9)));
        assert_eq!(locate(text, "id", "a", 1), Some((4, 10)));
        assert_eq!(locate(text, "id", "a", 2), None);
        assert_eq!(locate(text, "id", "ab", 0), Some((3, 9)));
    }
}
