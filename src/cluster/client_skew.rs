//! kubectl inside Kubernetes' client skew. kubectl is supported within one minor release
//! of the API server, older or newer; a run talks to each control plane with the client
//! nearest that server among the test bed's kubectl and every `--kubectl` given.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::ClusterError;
use crate::process::run_bounded;

/// How many minor releases kubectl may be from the API server, either way.
pub const MAX_MINOR_SKEW: u32 = 1;

/// How long `kubectl version --client` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// A Kubernetes release, `vMAJOR.MINOR.PATCH` (a suffix such as `-rc.1+k3s1` is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl KubeVersion {
    /// Parses `v1.20.2`, `1.32.3+ds`, `v1.29.0-rc.1`; `None` for anything else.
    pub fn parse(s: &str) -> Option<KubeVersion> {
        let s = s.trim().strip_prefix('v').unwrap_or(s.trim());
        let core = s.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let v = KubeVersion {
            major: parts.next()??,
            minor: parts.next()??,
            patch: parts.next()??,
        };
        parts.next().is_none().then_some(v)
    }

    /// Minor releases between `self` and `other` (`None` across major releases).
    pub fn minor_distance(self, other: KubeVersion) -> Option<u32> {
        (self.major == other.major).then(|| self.minor.abs_diff(other.minor))
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A kubectl binary and the release it says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubectlClient {
    /// The binary.
    pub path: PathBuf,
    /// `kubectl version --client`.
    pub version: KubeVersion,
}

impl KubectlClient {
    /// Asks `path` for its release (`kubectl version --client -o json`); one line naming
    /// the file when it is not a kubectl that answers.
    pub fn probe(path: &Path) -> Result<KubectlClient, ClusterError> {
        let bad = |reason: String| ClusterError::BadKubectl {
            path: path.to_owned(),
            reason,
        };
        if !super::is_executable(path) {
            return Err(bad("not an executable file".into()));
        }
        let mut cmd = Command::new(path);
        cmd.args(["version", "--client", "-o", "json"]);
        let out = run_bounded(&mut cmd, None, PROBE_TIMEOUT).map_err(|e| bad(e.to_string()))?;
        if !out.status.success() {
            return Err(bad(format!(
                "`kubectl version --client` failed ({}): {}",
                out.status,
                super::last_lines(&out.stderr_text(), 1)
            )));
        }
        let json: serde_json::Value = serde_json::from_str(&out.stdout_text())
            .map_err(|_| bad("`kubectl version --client -o json` did not print JSON".into()))?;
        let text = json["clientVersion"]["gitVersion"].as_str().unwrap_or("");
        let version = KubeVersion::parse(text).ok_or_else(|| {
            bad(format!(
                "`kubectl version --client` names no release (clientVersion.gitVersion {text:?})"
            ))
        })?;
        Ok(KubectlClient {
            path: path.to_owned(),
            version,
        })
    }
}

/// Which client a control plane gets, and whether it is inside the skew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientChoice {
    /// The client.
    pub client: KubectlClient,
    /// The server's release.
    pub server: KubeVersion,
    /// Within [`MAX_MINOR_SKEW`] of the server.
    pub within_skew: bool,
}

impl ClientChoice {
    /// One line for the report: `kubectl v1.20.2 (PATH) for server v1.20.2: within ...`.
    pub fn describe(&self, candidates: usize) -> String {
        let c = &self.client;
        let fit = if self.within_skew {
            format!("within the client skew (±{MAX_MINOR_SKEW} minor)")
        } else {
            format!(
                "OUTSIDE the client skew (±{MAX_MINOR_SKEW} minor): no kubectl given is near it (--kubectl)"
            )
        };
        format!(
            "kubectl {} ({}) for server {}: {fit}; nearest of {candidates}",
            c.version,
            c.path.display(),
            self.server
        )
    }
}

/// The client for `server`: the one fewest minor releases away (of equally near ones, one
/// not newer than the server, which may lack the APIs a newer client calls; then the
/// nearest patch); `None` when there is no client.
pub fn choose(clients: &[KubectlClient], server: KubeVersion) -> Option<ClientChoice> {
    let distance = |c: &KubectlClient| c.version.minor_distance(server).unwrap_or(u32::MAX);
    let nearest_patch = |c: &KubectlClient| {
        let at = |v: KubeVersion| u64::from(v.minor) << 32 | u64::from(v.patch);
        at(c.version).abs_diff(at(server))
    };
    let best = clients
        .iter()
        .min_by_key(|c| (distance(c), c.version > server, nearest_patch(c)))?;
    Some(ClientChoice {
        client: best.clone(),
        server,
        within_skew: distance(best) <= MAX_MINOR_SKEW,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> KubeVersion {
        KubeVersion::parse(s).unwrap()
    }

    fn client(s: &str) -> KubectlClient {
        KubectlClient {
            path: PathBuf::from(format!("/k/{s}")),
            version: v(s),
        }
    }

    #[test]
    fn releases_parse_with_or_without_prefix_and_suffix() {
        assert_eq!(
            v("v1.20.2"),
            KubeVersion {
                major: 1,
                minor: 20,
                patch: 2
            }
        );
        assert_eq!(
            v("1.32.3+ds"),
            KubeVersion {
                major: 1,
                minor: 32,
                patch: 3
            }
        );
        assert_eq!(v("v1.29.0-rc.1+k3s1").minor, 29);
        for bad in ["", "v1.20", "v1.20.2.1", "latest", "v1.x.2", "v-1.2.3"] {
            assert_eq!(KubeVersion::parse(bad), None, "{bad}");
        }
        assert_eq!(v("v1.20.2").to_string(), "v1.20.2");
    }

    #[test]
    fn the_nearest_client_is_chosen_and_skew_is_judged() {
        let all = [client("v1.32.3"), client("v1.20.2"), client("v1.36.4")];
        let c = choose(&all, v("v1.20.2")).unwrap();
        assert_eq!(c.client.version, v("v1.20.2"));
        assert!(c.within_skew);
        let c = choose(&all, v("v1.33.1")).unwrap();
        assert_eq!(c.client.version, v("v1.32.3"));
        assert!(c.within_skew, "one minor older is inside the skew");
        let c = choose(&all, v("v1.26.0")).unwrap();
        assert_eq!(c.client.version, v("v1.20.2"), "6 away beats 6 away newer");
        assert!(!c.within_skew);
        assert!(c.describe(3).contains("OUTSIDE"), "{}", c.describe(3));
        assert_eq!(choose(&[], v("v1.20.2")), None);
    }

    #[test]
    fn of_equally_near_clients_one_not_newer_than_the_server_wins() {
        let all = [client("v1.22.0"), client("v1.20.9")];
        assert_eq!(
            choose(&all, v("v1.21.5")).unwrap().client.version,
            v("v1.20.9")
        );
        let same_minor = [client("v1.21.9"), client("v1.21.1"), client("v1.21.4")];
        assert_eq!(
            choose(&same_minor, v("v1.21.5")).unwrap().client.version,
            v("v1.21.4"),
            "same minor: not newer than the server, then the nearest patch"
        );
    }

    #[test]
    fn a_file_that_is_not_kubectl_is_one_line_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kubectl");
        std::fs::write(&p, "#!/bin/sh\necho not json\n").unwrap();
        let e = KubectlClient::probe(&p).unwrap_err().to_string();
        assert!(e.contains("not an executable"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = KubectlClient::probe(&p).unwrap_err().to_string();
        assert!(
            e.starts_with(&p.display().to_string()) && e.contains("JSON"),
            "{e}"
        );
        std::fs::write(
            &p,
            "#!/bin/sh\necho '{\"clientVersion\":{\"gitVersion\":\"v1.20.2\"}}'\n",
        )
        .unwrap();
        assert_eq!(KubectlClient::probe(&p).unwrap().version, v("v1.20.2"));
    }
}
