//! Reading TOML configuration files (profiles, suites) strictly: unknown keys are errors,
//! and every error names the file, the line and the key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::message::one_line;

/// Why a TOML configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", one_line(&path.display().to_string()))]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, a missing key or a value of the wrong type.
    #[error("{}:{line}:{column}: {}", one_line(&path.display().to_string()), one_line(message))]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, in one line.
        message: String,
    },
    /// Parsed, but the content makes no sense (a duplicate name, an empty field).
    #[error("{}: {}", one_line(&path.display().to_string()), one_line(message))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Reads and parses `path` as `T`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses `text` (read from `path`) as `T`. An error names the line, the column and,
/// for a bad value, its key (`agent.guest_addr`).
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start);
        let (line, column) = offset.map(|o| line_column(text, o)).unwrap_or((1, 1));
        let message = e.message().trim().to_string();
        let message = match offset.and_then(|o| key_at(text, o)) {
            Some(key) => format!("{key}: {message}"),
            None => message,
        };
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    })
}

/// The dotted key whose value starts at byte `offset`: the `[table]` (or `[[array]]`)
/// above it and the `key =` before it on its line. `None` when the offset is not a value.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..offset];
    let eq = before.rfind('=')?;
    let leaf = before[..eq]
        .rsplit(['{', ','])
        .next()?
        .trim()
        .trim_matches('"');
    if leaf.is_empty()
        || !leaf
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(['[', ']']).trim().to_string());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{leaf}"),
        _ => leaf.to_string(),
    })
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        name: String,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        a: Option<u32>,
    }

    #[test]
    fn an_unknown_key_names_file_line_and_key() {
        let e = parse::<T>(Path::new("p.toml"), "name = \"x\"\n\n[inner]\nb = 1\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("p.toml:4:1: unknown field `b`"), "{s}");
        assert!(!s.contains('\n'), "{s}");
    }

    #[test]
    fn a_wrong_type_names_the_line_and_the_key() {
        let e = parse::<T>(Path::new("p.toml"), "name = 3\n").unwrap_err();
        assert!(
            e.to_string().starts_with("p.toml:1:8: name: invalid type"),
            "{e}"
        );
        let e = parse::<T>(Path::new("p.toml"), "name = \"x\"\n[inner]\na = \"no\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("p.toml:3:5: inner.a: invalid type"),
            "{e}"
        );
    }
}
