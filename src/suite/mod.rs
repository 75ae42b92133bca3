//! Conformance suites as data (`suites/*.toml`, format in docs/suites.md) and the checks
//! they name: built-in Rust checks with parameters, or in-guest commands with
//! expectations. Loading validates everything that can be validated before a VM boots.

mod agent_checks;
pub mod builtin;
mod cluster_checks;
pub mod command;
mod component_checks;
pub mod context;
mod guest_checks;
mod image_checks;
mod integrity_checks;
pub mod lint;
pub mod multi_node_checks;
mod partition_checks;
pub mod plan;
mod pod_access_checks;
mod rollout_checks;
mod rollout_replacement;
mod rollout_upgrade;
mod secure_boot_checks;
mod service_checks;
mod upgrade_checks;
pub mod vars;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config_file::{self, ConfigError};

pub use agent_checks::heartbeat_marks;
pub use builtin::Need;
pub use context::{Attempt, CheckEnv, Failure, Guest, Member, Verification};
pub use plan::{plan, Check, CheckKind, PlanError};

/// The suite name reserved for the run's own testcase in reports (JUnit's `nodegate::run`).
pub const RUN_SUITE: &str = "nodegate";

/// One suite file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteDef {
    /// Suite name (`containerd`); check ids are `SUITE::CHECK`.
    pub name: String,
    /// What the suite certifies.
    #[serde(default)]
    pub description: String,
    /// The checks, in run order.
    #[serde(rename = "check", default)]
    pub checks: Vec<CheckDef>,
    /// The file it came from.
    #[serde(skip)]
    pub path: PathBuf,
    /// The file's text as read (kept with signed evidence).
    #[serde(skip)]
    pub text: String,
}

/// One check as written in a suite file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckDef {
    /// Name, unique in its suite: lowercase letters, digits, `_` and `-`.
    pub name: String,
    /// What it proves, in one sentence.
    pub description: String,
    /// Tags for `--tag` / `--skip-tag`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Deadline for one attempt.
    #[serde(default = "default_timeout", with = "crate::profile::duration_serde")]
    pub timeout: Duration,
    /// Changes the node (upgrade, fault injection): runs on a VM of its own.
    #[serde(default)]
    pub destructive: bool,
    /// Skipped unless `--ignored` or `--include-ignored`; the text says why.
    #[serde(default)]
    pub ignore: Option<String>,
    /// A built-in check by name (see [`builtin::Builtin`]).
    #[serde(default)]
    pub builtin: Option<String>,
    /// Parameters of the built-in check (values may use `${variables}`).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// A shell command run in the guest (as root unless `sudo = false`).
    #[serde(default)]
    pub run: Option<String>,
    /// What the check needs beyond its kind's own need: `guest` or `node` (joined).
    #[serde(default)]
    pub needs: Option<NeedName>,
    /// Checks this one relies on (`name` earlier in this suite, or `suite::name`): when
    /// one of them has failed in this run, this check fails at once naming it instead of
    /// waiting out its own budget.
    #[serde(default)]
    pub requires: Vec<String>,
    /// Whether `run` runs as root.
    #[serde(default = "yes")]
    pub sudo: bool,
    /// What `run` must produce.
    #[serde(default)]
    pub expect: Option<Expect>,
}

/// Expectations on an in-guest command.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Exit status (default 0).
    #[serde(default)]
    pub status: Option<i32>,
    /// stdout, trimmed, equals this.
    #[serde(default)]
    pub stdout: Option<String>,
    /// Substrings stdout must contain.
    #[serde(default)]
    pub stdout_contains: Vec<String>,
    /// Substrings stdout must not contain.
    #[serde(default)]
    pub stdout_excludes: Vec<String>,
    /// Regular expressions stdout must match (multi-line mode).
    #[serde(default)]
    pub stdout_matches: Vec<String>,
    /// Substrings stderr must contain.
    #[serde(default)]
    pub stderr_contains: Vec<String>,
    /// Regular expressions stderr must match.
    #[serde(default)]
    pub stderr_matches: Vec<String>,
    /// stdout parsed as JSON: dotted path (`a.b.0.c`) -> expected value as text.
    #[serde(default)]
    pub json: BTreeMap<String, String>,
}

impl Expect {
    /// Every expected text (values, substrings, patterns), in no particular order.
    pub fn texts(&self) -> impl Iterator<Item = &String> {
        let lists = [
            &self.stdout_contains,
            &self.stdout_excludes,
            &self.stdout_matches,
            &self.stderr_contains,
            &self.stderr_matches,
        ];
        self.stdout
            .iter()
            .chain(lists.into_iter().flatten())
            .chain(self.json.values())
    }
}

/// `needs` in a suite file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NeedName {
    /// A booted guest.
    Guest,
    /// A guest joined to the control plane.
    Node,
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

fn yes() -> bool {
    true
}

/// Loads every `*.toml` in `dirs` (folders or files), sorted by file name; suite names must
/// be unique and check names unique within a suite.
pub fn load(paths: &[PathBuf]) -> Result<Vec<SuiteDef>, ConfigError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?;
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    let mut suites: Vec<SuiteDef> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|source| ConfigError::Read {
            path: f.clone(),
            source,
        })?;
        let s = parse(&f, &text)?;
        if let Some(other) = suites.iter().find(|o| o.name == s.name) {
            return Err(invalid(
                &f,
                format!(
                    "suite `{}` is also defined in {}",
                    s.name,
                    other.path.display()
                ),
            ));
        }
        suites.push(s);
    }
    for s in &suites {
        for c in &s.checks {
            for id in required_ids(&s.name, c) {
                let (suite, name) = id.split_once("::").expect("an id");
                let known = suites
                    .iter()
                    .any(|o| o.name == suite && o.checks.iter().any(|k| k.name == name));
                if !known {
                    return Err(invalid(
                        &s.path,
                        format!(
                            "check `{}`: requires `{id}`, which no loaded suite defines",
                            c.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(suites)
}

/// Parses and checks one suite file's text (read from `path`, for messages).
pub fn parse(path: &Path, text: &str) -> Result<SuiteDef, ConfigError> {
    let mut s: SuiteDef = config_file::parse(path, text)?;
    s.path = path.to_owned();
    s.text = text.to_string();
    validate(&s)?;
    Ok(s)
}

fn invalid(path: &Path, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        message,
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// A `requires` entry of check `c`: a check defined before it in its suite, or a
/// `suite::name` of another suite (checked once every suite is loaded).
fn check_requirement(s: &SuiteDef, c: &CheckDef, r: &str) -> Result<(), String> {
    match r.split_once("::") {
        Some((suite, name)) if valid_name(suite) && valid_name(name) => {
            if suite == s.name {
                return Err(format!(
                    "requires `{r}`: name a check of this suite without `{suite}::`"
                ));
            }
            Ok(())
        }
        None if valid_name(r) => {
            let before = s.checks.iter().take_while(|o| o.name != c.name);
            if before.clone().any(|o| o.name == r) {
                Ok(())
            } else {
                Err(format!(
                    "requires `{r}`, which is not a check defined before it in this suite"
                ))
            }
        }
        _ => Err(format!(
            "requires `{}`: expected `name` or `suite::name`",
            crate::message::one_line(r)
        )),
    }
}

/// The `suite::name` ids a check of suite `suite` requires.
pub fn required_ids(suite: &str, c: &CheckDef) -> Vec<String> {
    c.requires
        .iter()
        .map(|r| match r.contains("::") {
            true => r.clone(),
            false => format!("{suite}::{r}"),
        })
        .collect()
}

fn validate(s: &SuiteDef) -> Result<(), ConfigError> {
    let path = &s.path;
    if s.name == RUN_SUITE {
        return Err(invalid(
            path,
            format!(
                "suite name `{}` is reserved for the run's own testcase",
                s.name
            ),
        ));
    }
    if !valid_name(&s.name) {
        return Err(invalid(
            path,
            format!(
                "suite name `{}` must be lowercase letters, digits, `_` or `-`",
                s.name
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for c in &s.checks {
        let at = |m: String| invalid(path, format!("check `{}`: {m}", c.name));
        if !valid_name(&c.name) {
            return Err(at(
                "name must be lowercase letters, digits, `_` or `-`".into()
            ));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(at("defined twice".into()));
        }
        if c.timeout.is_zero() {
            return Err(at("timeout must be more than zero".into()));
        }
        for r in &c.requires {
            check_requirement(s, c, r).map_err(at)?;
        }
        match (&c.builtin, &c.run) {
            (Some(_), Some(_)) => return Err(at("has both `builtin` and `run`".into())),
            (None, None) => return Err(at("needs `builtin` or `run`".into())),
            (Some(b), None) => {
                if c.expect.is_some() {
                    return Err(at("`expect` applies to `run` checks only".into()));
                }
                builtin::validate(b, &c.params).map_err(at)?;
            }
            (None, Some(_)) => {
                if !c.params.is_empty() {
                    return Err(at("`params` applies to `builtin` checks only".into()));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Vec<SuiteDef>, ConfigError> {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("s.toml"), text).unwrap();
        load(&[d.path().to_owned()])
    }

    #[test]
    fn a_suite_with_both_kinds_of_check_loads() {
        let s = load_text(
            "name = \"s\"\n[[check]]\nname = \"a\"\ndescription = \"d\"\nrun = \"true\"\n\
             [[check]]\nname = \"b\"\ndescription = \"d\"\nbuiltin = \"service-active\"\n\
             params = { unit = \"x.service\" }\n",
        )
        .unwrap();
        assert_eq!(s[0].checks.len(), 2);
        assert_eq!(s[0].checks[0].timeout, Duration::from_secs(60));
    }

    #[test]
    fn an_unknown_key_in_a_check_names_file_and_line() {
        let e = load_text("name = \"s\"\n[[check]]\nname = \"a\"\ndescription = \"d\"\nrun = \"true\"\ntimout = \"3s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.toml:6:1: unknown field `timout`"), "{e}");
    }

    #[test]
    fn an_unknown_builtin_and_a_duplicate_are_refused() {
        let e = load_text(
            "name = \"s\"\n[[check]]\nname = \"a\"\ndescription = \"d\"\nbuiltin = \"nope\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("check `a`: unknown builtin `nope`"), "{e}");
        let e = load_text("name = \"s\"\n[[check]]\nname = \"a\"\ndescription = \"d\"\nrun = \"x\"\n[[check]]\nname = \"a\"\ndescription = \"d\"\nrun = \"y\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("check `a`: defined twice"), "{e}");
    }

    #[test]
    fn requires_names_an_earlier_check_or_a_loaded_suite() {
        let two = |req: &str| {
            format!(
                "name = \"s\"\n[[check]]\nname = \"a\"\ndescription = \"d\"\nrun = \"true\"\n\
                 [[check]]\nname = \"b\"\ndescription = \"d\"\nrun = \"true\"\nrequires = [{req}]\n"
            )
        };
        let s = load_text(&two("\"a\"")).unwrap();
        assert_eq!(required_ids("s", &s[0].checks[1]), vec!["s::a"]);
        for (req, says) in [
            (
                "\"b\"",
                "check `b`: requires `b`, which is not a check defined before it",
            ),
            (
                "\"zz\"",
                "check `b`: requires `zz`, which is not a check defined before it",
            ),
            ("\"s::a\"", "without `s::`"),
            ("\"a b\"", "expected `name` or `suite::name`"),
            (
                "\"other::x\"",
                "requires `other::x`, which no loaded suite defines",
            ),
        ] {
            let e = load_text(&two(req)).unwrap_err().to_string();
            assert!(e.contains("s.toml") && e.contains(says), "{req}: {e}");
        }
    }

    #[test]
    fn a_missing_param_is_refused() {
        let e = load_text("name = \"s\"\n[[check]]\nname = \"a\"\ndescription = \"d\"\nbuiltin = \"service-active\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("check `a`: builtin `service-active` needs param `unit`"),
            "{e}"
        );
    }
}
