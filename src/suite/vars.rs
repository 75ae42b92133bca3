//! `${name}` substitution in suite text, from the manifest, the profile and the run.

use std::collections::BTreeMap;

/// Variables by name (`manifest.components.kubelet`, `profile.services.kubelet`, `node.name`).
pub type Vars = BTreeMap<String, String>;

/// Replaces every `${name}` in `text`; an unknown name or an unclosed `${` is an error
/// naming it. `$${` writes a literal `${`.
pub fn expand(text: &str, vars: &Vars) -> Result<String, String> {
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
            .ok_or_else(|| format!("unclosed `${{` in {text:?}"))?;
        let name = after[..end].trim();
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => return Err(format!("unknown variable `${{{name}}}`")),
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
            expand("${a.c}", &vars).unwrap_err(),
            "unknown variable `${a.c}`"
        );
        assert!(expand("${a.b", &vars).unwrap_err().contains("unclosed"));
    }
}
