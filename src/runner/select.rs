//! Which checks run: libtest's filters (through libtest-mimic's own matching), suites,
//! tags and partitions.

use libtest_mimic::{Arguments, Trial};

use crate::image::digest::sha256_bytes;
use crate::suite::Check;

/// `--partition hash:M/N`: this machine runs shard M (1-based) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// This shard, 1..=total.
    pub shard: u64,
    /// Number of shards.
    pub total: u64,
}

impl std::str::FromStr for Partition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid partition {s:?}: expected hash:M/N with 1 <= M <= N");
        let rest = s.strip_prefix("hash:").ok_or_else(bad)?;
        let (m, n) = rest.split_once('/').ok_or_else(bad)?;
        let (shard, total): (u64, u64) =
            (m.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if shard == 0 || total == 0 || shard > total {
            return Err(bad());
        }
        Ok(Partition { shard, total })
    }
}

impl Partition {
    /// Whether the check with `id` belongs to this shard (stable across machines).
    pub fn contains(&self, id: &str) -> bool {
        let h = sha256_bytes(id.as_bytes());
        let n = u64::from_str_radix(&h[..16], 16).unwrap_or(0);
        n % self.total == self.shard - 1
    }
}

/// Everything that selects checks.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Name filter, `--exact`, `--skip`, `--ignored`, `--include-ignored` (libtest's).
    pub libtest: Arguments,
    /// Suites to run (empty: all).
    pub suites: Vec<String>,
    /// Run only checks carrying one of these tags (empty: no restriction).
    pub tags: Vec<String>,
    /// Never run checks carrying one of these tags.
    pub skip_tags: Vec<String>,
    /// This machine's shard.
    pub partition: Option<Partition>,
}

/// What selection decided for one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Runs.
    Run,
    /// Listed as ignored, with the reason.
    Ignored(String),
    /// Not part of this run at all.
    Out,
}

impl Selection {
    /// Decides for one check.
    pub fn verdict(&self, c: &Check) -> Verdict {
        self.decide(&c.suite, &c.name, &c.tags, c.ignore.as_deref())
    }

    /// Decides for a check given by suite, name, tags and ignore reason.
    pub fn decide(
        &self,
        suite: &str,
        name: &str,
        tags: &[String],
        ignore: Option<&str>,
    ) -> Verdict {
        let id = format!("{suite}::{name}");
        if !self.suites.is_empty() && !self.suites.iter().any(|s| s == suite) {
            return Verdict::Out;
        }
        if !self.tags.is_empty() && !tags.iter().any(|t| self.tags.contains(t)) {
            return Verdict::Out;
        }
        if tags.iter().any(|t| self.skip_tags.contains(t)) {
            return Verdict::Out;
        }
        if let Some(p) = &self.partition {
            if !p.contains(&id) {
                return Verdict::Out;
            }
        }
        let trial = Trial::test(id, || Ok(())).with_ignored_flag(ignore.is_some());
        if self.libtest.is_filtered_out(&trial) {
            return Verdict::Out;
        }
        if self.libtest.is_ignored(&trial) {
            return Verdict::Ignored(ignore.unwrap_or_default().to_string());
        }
        Verdict::Run
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::builtin::Builtin;
    use crate::suite::{CheckKind, Need};

    fn check(suite: &str, name: &str, tags: &[&str], ignore: bool) -> Check {
        Check {
            suite: suite.into(),
            name: name.into(),
            description: String::new(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            timeout: std::time::Duration::from_secs(1),
            destructive: false,
            ignore: ignore.then(|| "slow".to_string()),
            need: Need::Guest,
            requires: Vec::new(),
            kind: CheckKind::Builtin(Builtin {
                name: "guest-files".into(),
                params: Default::default(),
            }),
        }
    }

    fn sel(args: &[&str]) -> Selection {
        let mut all = vec!["nodegate"];
        all.extend(args);
        Selection {
            libtest: Arguments::from_iter(all),
            ..Default::default()
        }
    }

    #[test]
    fn filters_behave_like_cargo_test() {
        let a = check("kubelet", "version", &[], false);
        let b = check("containerd", "version", &[], false);
        let s = sel(&["kubelet::"]);
        assert_eq!(s.verdict(&a), Verdict::Run);
        assert_eq!(s.verdict(&b), Verdict::Out);
        let s = sel(&["--exact", "kubelet::vers"]);
        assert_eq!(s.verdict(&a), Verdict::Out);
        let s = sel(&["--exact", "kubelet::version"]);
        assert_eq!(s.verdict(&a), Verdict::Run);
        let s = sel(&["--skip", "containerd"]);
        assert_eq!(s.verdict(&a), Verdict::Run);
        assert_eq!(s.verdict(&b), Verdict::Out);
    }

    #[test]
    fn ignored_checks_are_listed_unless_asked_for() {
        let slow = check("k", "slow", &[], true);
        let fast = check("k", "fast", &[], false);
        assert_eq!(sel(&[]).verdict(&slow), Verdict::Ignored("slow".into()));
        assert_eq!(sel(&["--ignored"]).verdict(&slow), Verdict::Run);
        assert_eq!(sel(&["--ignored"]).verdict(&fast), Verdict::Out);
        assert_eq!(sel(&["--include-ignored"]).verdict(&slow), Verdict::Run);
    }

    #[test]
    fn tags_suites_and_partitions_narrow_the_run() {
        let a = check("kubelet", "a", &["version", "fast"], false);
        let b = check("kubelet", "b", &["slow"], false);
        let mut s = sel(&[]);
        s.tags = vec!["version".into()];
        assert_eq!((s.verdict(&a), s.verdict(&b)), (Verdict::Run, Verdict::Out));
        let mut s = sel(&[]);
        s.skip_tags = vec!["fast".into()];
        assert_eq!((s.verdict(&a), s.verdict(&b)), (Verdict::Out, Verdict::Run));
        let mut s = sel(&[]);
        s.suites = vec!["containerd".into()];
        assert_eq!(s.verdict(&a), Verdict::Out);
        // Every check lands in exactly one of N shards.
        let ids: Vec<String> = (0..50).map(|i| format!("s::c{i}")).collect();
        for id in &ids {
            let n = (1..=3)
                .filter(|m| {
                    Partition {
                        shard: *m,
                        total: 3,
                    }
                    .contains(id)
                })
                .count();
            assert_eq!(n, 1, "{id}");
        }
        assert!("hash:0/3".parse::<Partition>().is_err());
        assert!("hash:4/3".parse::<Partition>().is_err());
        assert_eq!(
            "hash:2/3".parse::<Partition>().unwrap(),
            Partition { shard: 2, total: 3 }
        );
    }
}
