//! Kubernetes' version skew between a kubelet and its API server, judged by a policy that
//! is data (the profile's `[rollout.skew]`): a kubelet may be some minor releases older
//! than the API server and (in Kubernetes' policy) never newer. Patch releases within one
//! minor release are always compatible.

use crate::cluster::client_skew::KubeVersion;
use crate::profile::SkewPolicy;

/// Judges a kubelet release against the API server's under `policy`: `Ok` with a line
/// saying how far apart they are, or `Err` naming both versions and the policy. A version
/// that is not `vMAJOR.MINOR.PATCH` cannot be judged, and is an error.
pub fn judge(kubelet: &str, server: &str, policy: &SkewPolicy) -> Result<String, String> {
    let parse = |what: &str, v: &str| {
        KubeVersion::parse(v).ok_or_else(|| {
            format!(
                "cannot judge the skew: the {what} version {:?} is not vMAJOR.MINOR.PATCH",
                crate::message::one_line(v)
            )
        })
    };
    let (k, s) = (parse("kubelet", kubelet)?, parse("API server", server)?);
    let allowed = format!(
        "the skew policy allows a kubelet {} minor release(s) older than the API server and {} newer",
        policy.kubelet_older_minors, policy.kubelet_newer_minors
    );
    if k.major != s.major {
        return Err(format!(
            "kubelet {k} and API server {s} are of different major releases ({allowed})"
        ));
    }
    if k.minor > s.minor + policy.kubelet_newer_minors {
        return Err(format!(
            "kubelet {k} is newer than the API server {s} by {} minor release(s) ({allowed})",
            k.minor - s.minor
        ));
    }
    if s.minor > k.minor + policy.kubelet_older_minors {
        return Err(format!(
            "kubelet {k} is older than the API server {s} by {} minor release(s) ({allowed})",
            s.minor - k.minor
        ));
    }
    Ok(match k.minor.cmp(&s.minor) {
        std::cmp::Ordering::Equal => format!("kubelet {k} and API server {s}: same minor release"),
        std::cmp::Ordering::Less => format!(
            "kubelet {k} is {} minor release(s) older than the API server {s}: within the policy",
            s.minor - k.minor
        ),
        std::cmp::Ordering::Greater => format!(
            "kubelet {k} is {} minor release(s) newer than the API server {s}: within the policy",
            k.minor - s.minor
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubernetes() -> SkewPolicy {
        SkewPolicy {
            kubelet_older_minors: 2,
            kubelet_newer_minors: 0,
        }
    }

    #[test]
    fn patch_releases_of_one_minor_are_within_the_policy_either_way() {
        assert!(judge("v1.20.3", "v1.20.2", &kubernetes()).is_ok());
        assert!(judge("v1.20.2", "v1.20.3", &kubernetes()).is_ok());
    }

    #[test]
    fn a_newer_minor_kubelet_is_refused_naming_both_versions() {
        let e = judge("v1.21.0", "v1.20.2", &kubernetes()).unwrap_err();
        assert!(
            e.contains("kubelet v1.21.0 is newer than the API server v1.20.2"),
            "{e}"
        );
        assert!(e.contains("0 newer"), "{e}");
    }

    #[test]
    fn older_kubelets_are_held_to_the_policy_s_number_of_minors() {
        assert!(judge("v1.18.9", "v1.20.2", &kubernetes()).is_ok());
        let e = judge("v1.17.0", "v1.20.2", &kubernetes()).unwrap_err();
        assert!(e.contains("older than the API server v1.20.2 by 3"), "{e}");
        let strict = SkewPolicy {
            kubelet_older_minors: 0,
            kubelet_newer_minors: 0,
        };
        assert!(judge("v1.19.0", "v1.20.2", &strict).is_err());
    }

    #[test]
    fn what_cannot_be_parsed_or_crosses_a_major_release_is_refused() {
        assert!(judge("latest", "v1.20.2", &kubernetes())
            .unwrap_err()
            .contains("\"latest\" is not vMAJOR.MINOR.PATCH"));
        assert!(judge("v2.0.0", "v1.20.2", &kubernetes())
            .unwrap_err()
            .contains("different major"));
    }
}
