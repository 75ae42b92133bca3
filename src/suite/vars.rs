//! `${name}` substitution in suite text, from the manifest, the profile and the run.
//!
//! In a check's `run` command each value is inserted as one single-quoted shell word,
//! so a value (from a vendor's manifest or profile) cannot add shell syntax of its own;
//! `${raw:name}` inserts the text as it is, for the rare suite that means to build shell
//! from a value. Everywhere else (expectations, parameters) values are plain text.

use std::collections::BTreeMap;

/// Variables by name (`manifest.components.kubelet`, `profile.services.kubelet`, `node.name`).
pub type Vars = BTreeMap<String, String>;

pub use crate::ssh::shell_quote;

/// Why a text could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// A name no variable has.
    #[error("unknown variable `${{{0}}}`")]
    Unknown(String),
    /// An unclosed `${` or a name with other characters.
    #[error("{0}")]
    Malformed(String),
}

/// Replaces every `${name}` in `text` with its value as is; an unknown name or an
/// unclosed `${` is an error naming it. `$${` writes a literal `${`.
pub fn expand(text: &str, vars: &Vars) -> Result<String, ExpandError> {
    substitute(text, vars, |_, v| v.to_string())
}

/// Like [`expand`], for a shell command: each `${name}` becomes one quoted word, and
/// `${raw:name}` the value as is.
pub fn expand_shell(text: &str, vars: &Vars) -> Result<String, ExpandError> {
    substitute(
        text,
        vars,
        |raw, v| {
            if raw {
                v.to_string()
            } else {
                shell_quote(v)
            }
        },
    )
}

fn substitute(
    text: &str,
    vars: &Vars,
    render: impl Fn(bool, &str) -> String,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ExpandError::Malformed(format!("unclosed `${{` in {text:?}")))?;
        let name = after[..end].trim();
        let (raw, name) = match name.strip_prefix("raw:") {
            Some(n) => (true, n.trim()),
            None => (false, name),
        };
        let well_formed = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !well_formed {
            return Err(ExpandError::Malformed(format!(
                "malformed variable {name:?} in {text:?}: names are letters, digits, `_`, `.` and `-`"
            )));
        }
        match vars.get(name) {
            Some(v) => out.push_str(&render(raw, v)),
            None => return Err(ExpandError::Unknown(name.to_string())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_known_names_and_refuses_unknown_ones() {
        let vars = Vars::from([("a.b".to_string(), "1".to_string())]);
        assert_eq!(expand("x ${a.b} y", &vars).unwrap(), "x 1 y");
        assert_eq!(expand("$${a.b}", &vars).unwrap(), "${a.b}");
        assert_eq!(
            expand("${a.c}", &vars).unwrap_err().to_string(),
            "unknown variable `${a.c}`"
        );
        assert!(expand("${a.b", &vars)
            .unwrap_err()
            .to_string()
            .contains("unclosed"));
        let e = expand("${p\no}", &vars).unwrap_err().to_string();
        assert!(e.contains("malformed variable") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn shell_values_are_one_quoted_word_unless_raw() {
        let vars = Vars::from([("img".to_string(), "x'; reboot; '".to_string())]);
        assert_eq!(
            expand_shell("ctr run ${img} id", &vars).unwrap(),
            r"ctr run 'x'\''; reboot; '\''' id"
        );
        assert_eq!(
            expand_shell("echo ${raw:img}", &vars).unwrap(),
            "echo x'; reboot; '"
        );
        assert_eq!(expand("${raw:img}", &vars).unwrap(), "x'; reboot; '");
    }
}
