//! Declarative checks: a shell command in the guest and expectations on its result.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::Value;

use super::context::{Attempt, CheckEnv, Failure};

/// A command check with its expectations compiled.
#[derive(Debug, Clone)]
pub struct CommandCheck {
    /// The command (variables expanded).
    pub run: String,
    /// Run as root.
    pub sudo: bool,
    /// Expected exit status.
    pub status: i32,
    /// Trimmed stdout equals.
    pub stdout: Option<String>,
    /// stdout contains each.
    pub stdout_contains: Vec<String>,
    /// stdout contains none.
    pub stdout_excludes: Vec<String>,
    /// stdout matches each.
    pub stdout_matches: Vec<Regex>,
    /// stderr contains each.
    pub stderr_contains: Vec<String>,
    /// stderr matches each.
    pub stderr_matches: Vec<Regex>,
    /// JSON path -> expected value.
    pub json: BTreeMap<String, String>,
}

/// Compiles a pattern in multi-line mode.
pub fn regex(p: &str) -> Result<Regex, String> {
    Regex::new(&format!("(?m){p}")).map_err(|e| {
        format!(
            "bad pattern {p:?}: {}",
            crate::message::one_line(&e.to_string())
        )
    })
}

/// Follows a dotted path (`a.b.0.c`) into JSON; scalars come back as text.
pub fn json_path(v: &Value, path: &str) -> Option<String> {
    let mut cur = v;
    for part in path.split('.') {
        cur = match cur {
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            Value::Object(o) => o.get(part)?,
            _ => return None,
        };
    }
    Some(match cur {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn clip(s: &str) -> String {
    let t = s.trim();
    if t.len() > 400 {
        let mut end = 400;
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &t[..end])
    } else {
        t.to_string()
    }
}

impl CommandCheck {
    /// Runs the command and checks every expectation; the first unmet one fails. A
    /// command killed by a signal, or whose output passed the cap, fails: it has no
    /// result to judge.
    pub fn run(&self, env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
        let g = env.guest()?;
        let o = if self.sudo {
            attempt.exec_root(g.ssh, &self.run)?
        } else {
            attempt.exec(g.ssh, &self.run)?
        };
        self.judge(&o)
    }

    /// Checks a command's whole result: how it ended, then every expectation.
    pub fn judge(&self, o: &crate::ssh::ExecOutput) -> Result<(), Failure> {
        let cmd = clip(&self.run);
        if let Some(sig) = &o.signal {
            return Err(Failure::mismatch(
                format!("`{cmd}` was killed by signal SIG{sig}: it has no exit status"),
                format!("exit status {}", self.status),
                format!("killed by SIG{sig}"),
            ));
        }
        if o.dropped > 0 {
            return Err(Failure::new(format!(
                "`{cmd}` printed more than nodegate keeps ({} MiB per stream; {} bytes dropped): its output cannot be judged",
                crate::ssh::EXEC_OUTPUT_CAP >> 20,
                o.dropped
            )));
        }
        self.evaluate(o.status, &o.stdout, &o.stderr)
    }

    /// Checks the expectations against a command's result.
    pub fn evaluate(&self, status: i32, stdout: &str, stderr: &str) -> Result<(), Failure> {
        let cmd = clip(&self.run);
        if status != self.status {
            return Err(Failure::mismatch(
                format!(
                    "`{cmd}` exited {status}{}",
                    if stderr.trim().is_empty() {
                        String::new()
                    } else {
                        format!(": {}", clip(stderr))
                    }
                ),
                format!("exit status {}", self.status),
                format!("exit status {status}"),
            ));
        }
        if let Some(want) = &self.stdout {
            if stdout.trim() != want.trim() {
                return Err(Failure::mismatch(
                    format!("`{cmd}` printed something else"),
                    want.trim(),
                    clip(stdout),
                ));
            }
        }
        for want in &self.stdout_contains {
            if !stdout.contains(want.as_str()) {
                return Err(Failure::mismatch(
                    format!("`{cmd}`: stdout lacks {want:?}"),
                    format!("stdout containing {want:?}"),
                    clip(stdout),
                ));
            }
        }
        for bad in &self.stdout_excludes {
            if stdout.contains(bad.as_str()) {
                return Err(Failure::mismatch(
                    format!("`{cmd}`: stdout contains {bad:?}"),
                    format!("stdout without {bad:?}"),
                    clip(stdout),
                ));
            }
        }
        for (stream, text, patterns, contains) in [
            ("stdout", stdout, &self.stdout_matches, &Vec::new()),
            (
                "stderr",
                stderr,
                &self.stderr_matches,
                &self.stderr_contains,
            ),
        ] {
            for re in patterns {
                if !re.is_match(text) {
                    let p = re.as_str().trim_start_matches("(?m)");
                    return Err(Failure::mismatch(
                        format!("`{cmd}`: {stream} does not match /{p}/"),
                        format!("{stream} matching /{p}/"),
                        clip(text),
                    ));
                }
            }
            for want in contains {
                if !text.contains(want.as_str()) {
                    return Err(Failure::mismatch(
                        format!("`{cmd}`: {stream} lacks {want:?}"),
                        format!("{stream} containing {want:?}"),
                        clip(text),
                    ));
                }
            }
        }
        if !self.json.is_empty() {
            let v: Value = serde_json::from_str(stdout).map_err(|e| {
                Failure::mismatch(
                    format!("`{cmd}`: stdout is not JSON: {e}"),
                    "JSON",
                    clip(stdout),
                )
            })?;
            for (path, want) in &self.json {
                let found = json_path(&v, path);
                if found.as_deref() != Some(want.as_str()) {
                    return Err(Failure::mismatch(
                        format!("`{cmd}`: JSON field {path} differs"),
                        want.clone(),
                        found.unwrap_or_else(|| "absent".into()),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> CommandCheck {
        CommandCheck {
            run: "x".into(),
            sudo: true,
            status: 0,
            stdout: None,
            stdout_contains: vec![],
            stdout_excludes: vec![],
            stdout_matches: vec![],
            stderr_contains: vec![],
            stderr_matches: vec![],
            json: BTreeMap::new(),
        }
    }

    #[test]
    fn status_and_patterns_report_expected_and_actual() {
        let mut c = check();
        assert!(c.evaluate(0, "", "").is_ok());
        let f = c.evaluate(3, "", "boom").unwrap_err();
        assert_eq!(f.expected.as_deref(), Some("exit status 0"));
        assert_eq!(f.actual.as_deref(), Some("exit status 3"));
        assert!(f.message.contains("boom"), "{}", f.message);
        c.stdout_matches = vec![regex("^version v1\\.20").unwrap()];
        assert!(c.evaluate(0, "a\nversion v1.20.2\n", "").is_ok());
        let f = c.evaluate(0, "version v1.21.0", "").unwrap_err();
        assert_eq!(
            f.expected.as_deref(),
            Some("stdout matching /^version v1\\.20/")
        );
    }

    #[test]
    fn a_signal_or_a_flood_is_never_a_pass() {
        let c = check();
        let mut o = crate::ssh::ExecOutput {
            status: 0,
            signal: Some("KILL".into()),
            stdout: String::new(),
            stderr: String::new(),
            dropped: 0,
        };
        let f = c.judge(&o).unwrap_err();
        assert!(
            f.message.contains("killed by signal SIGKILL"),
            "{}",
            f.message
        );
        o.signal = None;
        o.dropped = 10;
        assert!(c
            .judge(&o)
            .unwrap_err()
            .message
            .contains("10 bytes dropped"));
        o.dropped = 0;
        assert!(c.judge(&o).is_ok());
    }

    #[test]
    fn json_fields_follow_dotted_paths() {
        let mut c = check();
        c.json.insert("a.b.1.c".into(), "7".into());
        assert!(c.evaluate(0, r#"{"a":{"b":[{},{"c":7}]}}"#, "").is_ok());
        let f = c.evaluate(0, r#"{"a":{"b":[]}}"#, "").unwrap_err();
        assert_eq!(f.actual.as_deref(), Some("absent"));
        assert!(c
            .evaluate(0, "not json", "")
            .unwrap_err()
            .message
            .contains("not JSON"));
    }
}
