//! Reading deployments from YAML or JSON with errors that say where the problem is.

use serde::de::DeserializeOwned;
use std::fmt;

/// A document that does not parse, with the path of the offending field
/// (e.g. `workloads[0].data.memory`; empty for syntax errors at the top).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// Where the error is, in `a.b[2].c` form.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path.as_str() {
            "" => f.write_str(&self.message),
            path => write!(f, "{path}: {}", self.message),
        }
    }
}

impl ParseError {
    fn at<E: fmt::Display>(e: serde_path_to_error::Error<E>) -> Self {
        let path = e.path().to_string();
        // serde_path_to_error writes the empty path as ".".
        let path = if path == "." { String::new() } else { path };
        let message = e.inner().to_string();
        let message = strip_own_path(&path, &message).to_string();
        ParseError { path, message }
    }
}

/// serde_yaml_ng starts its messages with its own path, sometimes a shorter one
/// (`workloads[1]` for an error in `workloads[1].name`): drop it so the path shows once.
fn strip_own_path<'a>(path: &str, message: &'a str) -> &'a str {
    let cuts = path
        .match_indices(['.', '['])
        .map(|(i, _)| i)
        .chain([path.len()]);
    cuts.filter_map(|i| message.strip_prefix(&path[..i])?.strip_prefix(": "))
        .next_back()
        .unwrap_or(message)
}

/// Parses YAML into `T`.
pub(crate) fn yaml<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text))
        .map_err(ParseError::at)
}

/// Parses one JSON document into `T`; trailing content is an error.
pub(crate) fn json<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(ParseError::at)?;
    de.end().map_err(|e| ParseError {
        path: String::new(),
        message: e.to_string(),
    })?;
    Ok(value)
}
