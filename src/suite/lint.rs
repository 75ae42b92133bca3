//! `nodegate suites check`: finds what a suite says about one image that belongs in its
//! profile or manifest. A shipped suite must judge any image through `${profile.*}` and
//! `${manifest.*}`; a literal path, unit, component binary, profile value or version
//! would make it the test bed's suite.

use std::fmt;
use std::path::PathBuf;
use std::sync::LazyLock;

use regex::Regex;

use super::SuiteDef;
use crate::profile::Profile;

/// Paths every Linux has, whatever image: a suite may name them.
const OS_PATHS: &[&str] = &[
    "/proc/",
    "/sys/",
    "/dev/",
    "/tmp/",
    "/etc/machine-id",
    "/etc/os-release",
    "/etc/hostname",
    "/etc/ssh/ssh_host_",
];

/// One literal that should be a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The suite file.
    pub path: PathBuf,
    /// `suite::check`.
    pub check: String,
    /// Where in the check: `run`, `params.NAME`, `expect`.
    pub field: String,
    /// The literal.
    pub literal: String,
    /// What it should be instead.
    pub why: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} {}: `{}` {}",
            self.path.display(),
            self.check,
            self.field,
            self.literal,
            self.why
        )
    }
}

/// What counts as image-specific, from the profile the suites are checked against.
pub struct Rules {
    /// Component binaries (the `[components]` names and their paths' file names), each
    /// with the patterns that find it given to `systemctl` and run as a command.
    binaries: Vec<(String, Regex, Regex)>,
    /// Profile values that name something (a `/`, `.` or `:` in them), with their variable.
    values: Vec<(String, String)>,
}

static VAR: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\$\{[^}]*\}").unwrap());
static PATH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?:^|[\s"'=(,\[{<>|])(/[A-Za-z0-9_.@*-]+(?:/[A-Za-z0-9_.@*-]*)*)"#).unwrap()
});
static UNIT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9@_.-]+\.(?:service|socket|timer)\b").unwrap());
static VERSION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\bv?\d+\.\d+\.\d+(?:[.\d]*)").unwrap());

impl Rules {
    /// The rules for suites meant to judge images described like `profile`.
    pub fn new(profile: &Profile) -> Rules {
        let mut names: Vec<String> = Vec::new();
        for (name, c) in &profile.components {
            let file = c.path.rsplit('/').next().unwrap_or_default().to_string();
            for b in [name.clone(), file] {
                if !b.is_empty() && !names.contains(&b) {
                    names.push(b);
                }
            }
        }
        let binaries = names
            .into_iter()
            .map(|b| {
                let e = regex::escape(&b);
                let unit = format!(r"systemctl\s+[a-z-]+\s+(?:-\S+\s+)*{e}(?:\s|$|;|\))");
                let command =
                    format!(r"(?m)(?:^|[;&|(`]|\$\()\s*(?:sudo\s+|exec\s+)?{e}(?:\s|$|;|\))");
                let compile = |p: &str| Regex::new(p).expect("an escaped name makes a pattern");
                (b, compile(&unit), compile(&command))
            })
            .collect();
        let mut values: Vec<(String, String)> = profile
            .variables()
            .into_iter()
            .filter(|(k, _)| !k.ends_with(".version_pattern") && !k.ends_with("description"))
            .filter(|(_, v)| v.len() >= 4 && v.contains(['/', '.', ':']) && !v.contains('\n'))
            .map(|(k, v)| (v, k))
            .collect();
        // Longest first: `/usr/bin/kubelet` is reported, not the `kubelet.service` in it.
        values.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Rules { binaries, values }
    }

    /// Every finding in `suite`.
    pub fn check(&self, suite: &SuiteDef) -> Vec<Finding> {
        let mut out = Vec::new();
        for c in &suite.checks {
            let mut texts: Vec<(String, &str, bool)> = Vec::new();
            if let Some(run) = &c.run {
                texts.push(("run".into(), run, true));
            }
            for (k, v) in &c.params {
                texts.push((format!("params.{k}"), v, false));
            }
            for s in c.expect.iter().flat_map(|e| e.texts()) {
                texts.push(("expect".into(), s, false));
            }
            for (field, text, shell) in texts {
                for (literal, why) in self.literals(text, shell) {
                    let f = Finding {
                        path: suite.path.clone(),
                        check: format!("{}::{}", suite.name, c.name),
                        field: field.clone(),
                        literal,
                        why,
                    };
                    if !out.contains(&f) {
                        out.push(f);
                    }
                }
            }
        }
        out
    }

    /// The image-specific literals in one text (`shell`: a `run` command).
    fn literals(&self, text: &str, shell: bool) -> Vec<(String, String)> {
        let text = if shell {
            without_comments(text)
        } else {
            text.to_string()
        };
        let mut text = VAR.replace_all(&text, " ").into_owned();
        let mut found = Vec::new();
        for (value, var) in &self.values {
            if text.contains(value.as_str()) {
                found.push((value.clone(), format!("is ${{{var}}}")));
                text = text.replace(value.as_str(), " ");
            }
        }
        for m in PATH.captures_iter(&text) {
            let p = &m[1];
            if !OS_PATHS.iter().any(|os| p.starts_with(os) || *os == p) {
                found.push((
                    p.to_string(),
                    "is a path of this image: a profile value".into(),
                ));
            }
        }
        for m in UNIT.find_iter(&text) {
            if !m.as_str().starts_with("systemd-") {
                found.push((m.as_str().into(), "is a unit: ${profile.services.*}".into()));
            }
        }
        for m in VERSION.find_iter(&text) {
            if m.as_str().matches('.').count() == 2 {
                found.push((
                    m.as_str().into(),
                    "is a version: ${manifest.components.*}".into(),
                ));
            }
        }
        if shell {
            for (b, unit, command) in &self.binaries {
                if unit.is_match(&text) {
                    found.push((b.clone(), "is a unit: ${profile.services.*}".into()));
                } else if command.is_match(&text) {
                    found.push((
                        b.clone(),
                        format!("runs a component by name: ${{profile.components.{b}.path}}"),
                    ));
                }
            }
        }
        found
    }
}

/// A shell script without its comment lines and trailing comments (prose may name
/// anything).
fn without_comments(run: &str) -> String {
    run.lines()
        .map(|l| match l.find('#') {
            Some(0) => "",
            Some(i) if l[..i].ends_with(char::is_whitespace) => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.toml");
        std::fs::write(
            &p,
            "name = \"x\"\n[services]\nkubelet = \"kubelet.service\"\n\
             [components.kubelet]\npath = \"/usr/bin/kubelet\"\nversion_pattern = '(.*)'\n\
             [expect]\nsandbox_image = \"registry.k8s.io/pause:3.6\"\n",
        )
        .unwrap();
        Rules::new(&Profile::load(&p).unwrap())
    }

    fn literals(text: &str, shell: bool) -> Vec<String> {
        rules()
            .literals(text, shell)
            .into_iter()
            .map(|(l, _)| l)
            .collect()
    }

    #[test]
    fn literals_that_belong_in_the_profile_are_found() {
        assert_eq!(literals("cat /usr/bin/kubelet", true), ["/usr/bin/kubelet"]);
        assert_eq!(
            literals("ls /var/lib/kubelet/config.yaml", true),
            ["/var/lib/kubelet/config.yaml"]
        );
        assert_eq!(literals("systemctl restart kubelet", true), ["kubelet"]);
        assert_eq!(literals("x=$(kubelet --version)", true), ["kubelet"]);
        assert_eq!(
            literals("ctr images ls | grep registry.k8s.io/pause:3.6", true),
            ["registry.k8s.io/pause:3.6"]
        );
        assert_eq!(literals("v1.20.2", false), ["v1.20.2"]);
        assert_eq!(
            literals("journalctl -u crio.service", true),
            ["crio.service"]
        );
    }

    #[test]
    fn variables_os_paths_prose_and_addresses_are_not_findings() {
        for ok in [
            "${profile.components.kubelet.path} --version",
            "systemctl show -p MainPID --value ${profile.services.kubelet}",
            "cat /etc/machine-id /proc/sys/kernel/random/boot_id 2>/dev/null",
            "echo \"the kubelet is not running\" >&2",
            "# reads /usr/bin/kubelet\nk=cgroupfs  # kubelet 1.20's default",
            "awk '/^cgroupDriver:/ {print $2}' \"$cfg\"",
            "curl -s http://127.0.0.1:9101/x",
        ] {
            assert_eq!(literals(ok, true), Vec::<String>::new(), "{ok}");
        }
    }
}
