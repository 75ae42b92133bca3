//! From suite definitions and variables to runnable checks.

use std::path::PathBuf;
use std::time::Duration;

use super::builtin::{self, Builtin, Need};
use super::command::{self, CommandCheck};
use super::context::{Attempt, CheckEnv, Failure};
use super::vars::{expand, expand_shell, ExpandError, Vars};
use super::{CheckDef, SuiteDef};

/// A check ready to run.
#[derive(Debug, Clone)]
pub struct Check {
    /// Suite name.
    pub suite: String,
    /// Check name.
    pub name: String,
    /// What it proves.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Deadline per attempt.
    pub timeout: Duration,
    /// Runs on its own VM.
    pub destructive: bool,
    /// Why it is ignored by default, if it is.
    pub ignore: Option<String>,
    /// What it needs.
    pub need: Need,
    /// Ids of the checks it relies on: when one has failed, it fails at once.
    pub requires: Vec<String>,
    /// What it does.
    pub kind: CheckKind,
}

/// Built-in or command.
#[derive(Debug, Clone)]
pub enum CheckKind {
    /// A built-in Rust check.
    Builtin(Builtin),
    /// An in-guest command with expectations.
    Command(Box<CommandCheck>),
    /// Not runnable with this profile: it uses a value the profile leaves unset (the
    /// reason says which). Reported as not run.
    Unset(String),
}

impl Check {
    /// `suite::name`, the id used by filters, JUnit and the JSON report.
    pub fn id(&self) -> String {
        format!("{}::{}", self.suite, self.name)
    }

    /// Whether this check needs the run's cluster network (not run without it).
    pub fn needs_cluster_network(&self) -> bool {
        self.needs_link_shaping()
            || matches!(&self.kind, CheckKind::Builtin(b) if builtin::needs_cluster_network(&b.name))
    }

    /// Whether this check shapes the node's link (its `latency` or `loss` params): it
    /// needs the run's bridge and a way to shape it (netem or the link emulator).
    pub fn needs_link_shaping(&self) -> bool {
        matches!(&self.kind, CheckKind::Builtin(b)
            if !b.param("latency").is_empty() || !b.param("loss").is_empty())
    }

    /// Whether this check talks to the image's node agent through nodegate's endpoint
    /// (not run for a profile without `[agent]`).
    pub fn needs_agent_profile(&self) -> bool {
        matches!(&self.kind, CheckKind::Builtin(b) if builtin::needs_agent_profile(&b.name))
    }

    /// Whether this check judges the roll-out's pool (it needs a legacy image).
    pub fn needs_pool(&self) -> bool {
        self.need == Need::Pool
    }

    /// Whether this check needs two nodes or more (not run in a run of one).
    pub fn needs_several_nodes(&self) -> bool {
        matches!(&self.kind, CheckKind::Builtin(b) if builtin::needs_several_nodes(&b.name))
    }

    /// Whether this check judges the node's join (`node-ready`): when the image's node
    /// fails to join, it fails with the reason instead of not running.
    pub fn judges_join(&self) -> bool {
        matches!(&self.kind, CheckKind::Builtin(b) if b.name == "node-ready")
    }

    /// Whether this check judges the boot (`guest-boots`): when the image does not boot
    /// (a panic, an emergency shell, a disk with nothing to boot), it fails with the
    /// reason instead of not running.
    pub fn judges_boot(&self) -> bool {
        matches!(&self.kind, CheckKind::Builtin(b) if b.name == "guest-boots")
    }

    /// Whether this check judges Secure Boot (`secure-boot`): when the profile demands
    /// it and the firmware, shim or GRUB refuses the image, it fails with the console line.
    pub fn judges_secure_boot(&self) -> bool {
        matches!(&self.kind, CheckKind::Builtin(b) if b.name == "secure-boot")
    }

    /// The failure this check would end with whatever the node does, known before
    /// anything boots (a hot upgrade whose bundle was refused), if there is one.
    pub fn decided(
        &self,
        verification: &super::Verification,
        bundle: Option<&super::Verification>,
    ) -> Option<Failure> {
        match &self.kind {
            CheckKind::Builtin(b) if b.name == "hot-upgrade" || b.name == "pool-upgrade" => {
                super::upgrade_checks::refused(verification, bundle)
            }
            _ => None,
        }
    }

    /// Why this check cannot run with the profile (a value it uses is unset), if so.
    pub fn unset(&self) -> Option<&str> {
        match &self.kind {
            CheckKind::Unset(why) => Some(why),
            _ => None,
        }
    }

    /// Runs one attempt.
    pub fn run(&self, env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
        match &self.kind {
            CheckKind::Builtin(b) => b.run(env, attempt),
            CheckKind::Command(c) => c.run(env, attempt),
            CheckKind::Unset(why) => Err(Failure::new(why.clone())),
        }
    }
}

/// A check that cannot be planned: names the suite file and the check.
#[derive(Debug, thiserror::Error)]
#[error("{}: check `{}`: {}", path.display(), crate::message::one_line(check), crate::message::one_line(message))]
pub struct PlanError {
    /// The suite file.
    pub path: PathBuf,
    /// The check.
    pub check: String,
    /// What is wrong (an unknown variable, a bad pattern).
    pub message: String,
}

/// Expands variables and compiles every check of `suites`. A check that uses a value
/// the profile may leave unset, and does ([`crate::profile::optional_variable`]), is
/// planned as [`CheckKind::Unset`]; any other unknown variable is an error.
pub fn plan(suites: &[SuiteDef], vars: &Vars) -> Result<Vec<Check>, PlanError> {
    let mut out = Vec::new();
    for s in suites {
        for c in &s.checks {
            let check = match plan_one(s, c, vars) {
                Ok(check) => check,
                Err(Unplanned::Unset(name)) => {
                    let why = format!("uses `${{{name}}}`, which the profile does not set",);
                    let mut check = skeleton(s, c, Need::Manifest, CheckKind::Unset(why));
                    check.destructive = false;
                    check
                }
                Err(Unplanned::Bad(message)) => {
                    return Err(PlanError {
                        path: s.path.clone(),
                        check: c.name.clone(),
                        message,
                    })
                }
            };
            out.push(check);
        }
    }
    Ok(out)
}

/// Why a check was not planned.
enum Unplanned {
    /// It uses this optional profile value, which is unset.
    Unset(String),
    /// The suite is wrong (an unknown variable, a bad pattern): the message says how.
    Bad(String),
}

impl From<String> for Unplanned {
    fn from(message: String) -> Unplanned {
        Unplanned::Bad(message)
    }
}

impl From<ExpandError> for Unplanned {
    fn from(e: ExpandError) -> Unplanned {
        match e {
            ExpandError::Unknown(name) if crate::profile::optional_variable(&name) => {
                Unplanned::Unset(name)
            }
            other => Unplanned::Bad(other.to_string()),
        }
    }
}

fn plan_one(s: &SuiteDef, c: &CheckDef, vars: &Vars) -> Result<Check, Unplanned> {
    let x = |t: &String| expand(t, vars);
    let xs = |v: &Vec<String>| {
        v.iter()
            .map(|t| expand(t, vars))
            .collect::<Result<Vec<_>, _>>()
    };
    let (need, kind) = match (&c.builtin, &c.run) {
        (Some(name), _) => {
            let params = c
                .params
                .iter()
                .map(|(k, v)| Ok((k.clone(), x(v)?)))
                .collect::<Result<_, ExpandError>>()?;
            let b = Builtin {
                name: name.clone(),
                params,
            };
            b.validate_values()?;
            let (need, destructive) = builtin::need(name);
            if destructive && !c.destructive {
                return Err(Unplanned::Bad(format!(
                    "builtin `{name}` changes the node: mark the check `destructive = true`"
                )));
            }
            (need, CheckKind::Builtin(b))
        }
        (None, Some(run)) => {
            let e = c.expect.clone().unwrap_or_default();
            let res = |v: &Vec<String>| -> Result<Vec<_>, Unplanned> {
                Ok(xs(v)?
                    .iter()
                    .map(|p| command::regex(p))
                    .collect::<Result<Vec<_>, _>>()?)
            };
            let json = e
                .json
                .iter()
                .map(|(k, v)| Ok((k.clone(), x(v)?)))
                .collect::<Result<_, ExpandError>>()?;
            let cmd = CommandCheck {
                run: expand_shell(run, vars)?,
                sudo: c.sudo,
                status: e.status.unwrap_or(0),
                stdout: e.stdout.as_ref().map(x).transpose()?,
                stdout_contains: xs(&e.stdout_contains)?,
                stdout_excludes: xs(&e.stdout_excludes)?,
                stdout_matches: res(&e.stdout_matches)?,
                stderr_contains: xs(&e.stderr_contains)?,
                stderr_matches: res(&e.stderr_matches)?,
                json,
            };
            (Need::Guest, CheckKind::Command(Box::new(cmd)))
        }
        (None, None) => return Err(Unplanned::Bad("needs `builtin` or `run`".into())),
    };
    let need = match c.needs {
        Some(super::NeedName::Node) => need.max(Need::Node),
        Some(super::NeedName::Guest) => need.max(Need::Guest),
        None => need,
    };
    Ok(skeleton(s, c, need, kind))
}

/// The check `c` of `s` with its need and kind.
fn skeleton(s: &SuiteDef, c: &CheckDef, need: Need, kind: CheckKind) -> Check {
    Check {
        suite: s.name.clone(),
        name: c.name.clone(),
        description: c.description.clone(),
        tags: c.tags.clone(),
        timeout: c.timeout,
        destructive: c.destructive,
        ignore: c.ignore.clone(),
        need,
        requires: super::required_ids(&s.name, c),
        kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(run: &str) -> SuiteDef {
        let text = format!(
            "name = \"s\"\n[[check]]\nname = \"c\"\ndescription = \"d\"\nrun = \"{run}\"\n"
        );
        super::super::parse(std::path::Path::new("s.toml"), &text).unwrap()
    }

    #[test]
    fn an_unset_profile_value_leaves_its_check_unrun_and_a_wrong_name_is_an_error() {
        let vars = Vars::from([("profile.services.kubelet".into(), "kubelet.service".into())]);
        let checks = plan(
            &[suite("systemctl status ${profile.services.agent}")],
            &vars,
        )
        .unwrap();
        assert_eq!(
            checks[0].unset(),
            Some("uses `${profile.services.agent}`, which the profile does not set")
        );
        assert_eq!(checks[0].need, Need::Manifest, "nothing is booted for it");
        let ok = plan(
            &[suite("systemctl status ${profile.services.kubelet}")],
            &vars,
        )
        .unwrap();
        assert_eq!(ok[0].unset(), None);
        for wrong in [
            "${profile.servics.kubelet}",
            "${manifest.components.kublet}",
        ] {
            let e = plan(&[suite(&format!("echo {wrong}"))], &vars).unwrap_err();
            assert!(e.to_string().contains("unknown variable"), "{e}");
        }
    }
}
