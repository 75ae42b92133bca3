//! [`Kubectl`]: the test bed's kubectl (`$BIN/kubectl`, never the host's), one kubeconfig,
//! JSON output parsed with serde_json.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{is_executable, last_lines, ClusterError, ProviderKind};
use crate::process::{run_bounded, run_teardown, CommandError};

/// How long a one-shot provider command (kubeadm phase, docker, kind query) may run.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `cmd` (stdin fed from `stdin`) within `timeout`, returns stdout; a failure names
/// the provider and the command.
pub(crate) fn run_command(
    provider: ProviderKind,
    cmd: &mut Command,
    stdin: Option<&[u8]>,
) -> Result<String, ClusterError> {
    run_command_within(provider, cmd, stdin, COMMAND_TIMEOUT)
}

/// [`run_command`] with its own deadline.
pub(crate) fn run_command_within(
    provider: ProviderKind,
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<String, ClusterError> {
    run_checked(provider, cmd, stdin, timeout, false)
}

/// Runs `cmd` within `timeout`; `teardown`: a first signal does not cut it short
/// ([`run_teardown`]: it deletes what the run made).
fn run_checked(
    provider: ProviderKind,
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    teardown: bool,
) -> Result<String, ClusterError> {
    let shown = describe(cmd);
    let fail = |status: String, stderr: String| ClusterError::Command {
        provider,
        command: shown.clone(),
        status,
        stderr,
    };
    let ran = if teardown {
        run_teardown(cmd, timeout)
    } else {
        run_bounded(cmd, stdin, timeout)
    };
    let out = match ran {
        Ok(o) => o,
        Err(CommandError::Interrupted { .. }) => {
            return Err(ClusterError::Interrupted(shown.clone()))
        }
        Err(CommandError::Spawn { source, .. }) => {
            return Err(fail("not started".into(), source.to_string()))
        }
        Err(e @ CommandError::TimedOut { .. }) => {
            return Err(fail("timed out".into(), e.to_string()))
        }
    };
    if !out.status.success() {
        return Err(fail(
            out.status.to_string(),
            last_lines(&out.stderr_text(), 3),
        ));
    }
    Ok(out.stdout_text())
}

/// `kubectl get ...`, shortened for messages: program base name and arguments.
fn describe(cmd: &Command) -> String {
    let prog = Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut after_kubeconfig = false;
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| {
            // `--kubeconfig PATH` says nothing a reader needs: both words go.
            let skip = after_kubeconfig
                || a.starts_with("--kubeconfig")
                || a.starts_with("--request-timeout");
            after_kubeconfig = a == "--kubeconfig";
            !skip
        })
        .map(|a| {
            if a.len() > 60 {
                format!("{}...", &a[..57])
            } else {
                a
            }
        })
        .collect();
    format!("{prog} {}", args.join(" "))
}

/// A kubectl bound to one kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    /// The kubectl binary.
    pub bin: PathBuf,
    /// The kubeconfig it uses.
    pub kubeconfig: PathBuf,
    /// Per-request timeout (`--request-timeout`).
    pub request_timeout: Duration,
    /// The provider, for messages.
    pub provider: ProviderKind,
    /// Where kubectl runs: the run's namespace when the control plane lives there.
    pub dialer: crate::network::Dialer,
}

impl Kubectl {
    /// `bin_dir/kubectl` with `kubeconfig`; fails if the binary is missing.
    pub fn new(
        bin_dir: &Path,
        kubeconfig: &Path,
        provider: ProviderKind,
    ) -> Result<Kubectl, ClusterError> {
        let bin = bin_dir.join("kubectl");
        if !is_executable(&bin) {
            return Err(ClusterError::MissingTool {
                provider,
                tool: "kubectl".into(),
                looked: bin.display().to_string(),
            });
        }
        Ok(Kubectl {
            bin,
            kubeconfig: kubeconfig.to_owned(),
            request_timeout: Duration::from_secs(20),
            provider,
            dialer: crate::network::Dialer::Host,
        })
    }

    /// The kubectl command line for `args`, started where the control plane is.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        self.dialer.command(&mut c);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg(format!(
                "--request-timeout={}s",
                self.request_timeout.as_secs().max(1)
            ))
            .args(args);
        c
    }

    /// How long one kubectl call may run: its request timeout and a margin.
    fn deadline(&self) -> Duration {
        let t = if crate::interrupt::interrupted() {
            // Teardown after Ctrl-C: a cluster that does not answer at once is left to
            // the next run's clean-up.
            Duration::from_secs(5)
        } else {
            self.request_timeout
        };
        t + Duration::from_secs(10)
    }

    /// Runs kubectl with `args`; returns stdout.
    pub fn run(&self, args: &[&str]) -> Result<String, ClusterError> {
        run_command_within(
            self.provider,
            &mut self.command(args),
            None,
            self.deadline(),
        )
    }

    /// Runs kubectl with `args` within `timeout` (a command that waits on the cluster
    /// itself, such as `drain --timeout`); returns stdout.
    pub fn run_within(&self, args: &[&str], timeout: Duration) -> Result<String, ClusterError> {
        run_command_within(self.provider, &mut self.command(args), None, timeout)
    }

    /// Runs kubectl with `args`, feeding `stdin`; returns stdout.
    pub fn run_with_input(&self, args: &[&str], stdin: &[u8]) -> Result<String, ClusterError> {
        run_command_within(
            self.provider,
            &mut self.command(args),
            Some(stdin),
            self.deadline(),
        )
    }

    /// The API server's release as it says it (`serverVersion.gitVersion`, `v1.20.2`).
    pub fn server_version(&self) -> Result<String, ClusterError> {
        let v = self.json(&["version"])?;
        v["serverVersion"]["gitVersion"]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() < 64 && !s.contains(char::is_control))
            .map(String::from)
            .ok_or_else(|| ClusterError::Unexpected {
                provider: self.provider,
                command: "kubectl version -o json".into(),
                detail: "no serverVersion.gitVersion".into(),
            })
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<Value, ClusterError> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.run(&all)?;
        serde_json::from_str(&out).map_err(|e| ClusterError::Unexpected {
            provider: self.provider,
            command: format!("kubectl {}", all.join(" ")),
            detail: format!("not JSON: {e}"),
        })
    }

    /// Gets one object as JSON; `None` if it does not exist.
    pub fn get(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ClusterError> {
        let mut args = vec!["get", kind, name, "--ignore-not-found"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        args.extend(["-o", "json"]);
        let out = self.run(&args)?;
        if out.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&out)
            .map(Some)
            .map_err(|e| ClusterError::Unexpected {
                provider: self.provider,
                command: format!("kubectl {}", args.join(" ")),
                detail: format!("not JSON: {e}"),
            })
    }

    /// `kubectl create -f -` with the object as JSON (fails if it exists).
    pub fn create(&self, object: &Value) -> Result<(), ClusterError> {
        self.run_with_input(&["create", "-f", "-"], object.to_string().as_bytes())
            .map(|_| ())
    }

    /// Deletes one object; absent is fine.
    pub fn delete(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), ClusterError> {
        let mut args = vec!["delete", kind, name, "--ignore-not-found", "--wait=false"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        // What the run made goes even after a first Ctrl-C (guards delete through this).
        let cmd = &mut self.command(&args);
        run_checked(self.provider, cmd, None, self.deadline(), true).map(|_| ())
    }

    /// A JSON merge patch of one object.
    pub fn merge_patch(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> Result<(), ClusterError> {
        let p = patch.to_string();
        self.run(&[
            "-n", namespace, "patch", kind, name, "--type", "merge", "-p", &p,
        ])
        .map(|_| ())
    }
}

/// Replaces the `server:` of every cluster in a kubeconfig text with `server`.
pub fn set_server(kubeconfig: &str, server: &str) -> String {
    let mut out = String::with_capacity(kubeconfig.len());
    for line in kubeconfig.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("server:") {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}server: {server}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shown_without_their_kubeconfig() {
        let mut c = Command::new("/opt/bin/kubectl");
        c.args([
            "--kubeconfig",
            "/run/x/admin.conf",
            "--request-timeout=20s",
            "drain",
            "n1",
        ]);
        assert_eq!(describe(&c), "kubectl drain n1");
    }

    #[test]
    fn set_server_rewrites_only_server_lines() {
        let k = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: QQ==\n    server: https://kind-control-plane:6443\n  name: \"\"\n";
        let out = set_server(k, "https://10.0.2.100:34567");
        assert!(
            out.contains("    server: https://10.0.2.100:34567\n"),
            "{out}"
        );
        assert!(out.contains("certificate-authority-data: QQ==\n"));
        assert!(!out.contains("kind-control-plane"));
    }
}
