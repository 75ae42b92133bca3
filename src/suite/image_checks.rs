//! Built-in checks that read the image's disk offline, before anything boots: what the
//! image ships, before cloud-init or first boot can hide it.

use super::builtin::Builtin;
use super::context::{Attempt, CheckEnv, Failure, Verification};
use crate::vm::rootfs::{glob_matches, RootFs};

/// The patterns of `paths`: absolute paths, globs (`*`, `?`) in the last component only.
pub fn patterns(paths: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for p in paths.split_whitespace() {
        let (dir, name) = p
            .rsplit_once('/')
            .filter(|_| p.starts_with('/'))
            .ok_or_else(|| format!("param `paths`: {p:?} is not an absolute path"))?;
        if p.contains(['"', '[', ']', '{', '}', '\\']) {
            return Err(format!(
                "param `paths`: {p:?}: only `*` and `?` are understood (no quotes, brackets, braces or backslashes)"
            ));
        }
        if dir.contains(['*', '?']) || name.is_empty() {
            return Err(format!(
                "param `paths`: {p:?}: globs are allowed in the file name only"
            ));
        }
        let dir = if dir.is_empty() { "/" } else { dir };
        out.push((dir.to_string(), name.to_string()));
    }
    if out.is_empty() {
        return Err("param `paths` is empty".into());
    }
    Ok(out)
}

/// `image-files-absent`: none of `paths` exists in the image's root file system.
pub fn files_absent(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    if let Verification::Refused(_) = env.verification {
        return Err(Failure::new(
            "not inspected: the image was refused at verification (see the integrity suite)",
        ));
    }
    if env.disk.as_os_str().is_empty() {
        return Err(Failure::new(
            "no disk image to inspect: the manifest has no disk artifact",
        ));
    }
    let wanted = patterns(b.param("paths")).map_err(Failure::new)?;
    attempt.note(format!(
        "qemu-img convert -O raw {} (a temporary copy), then debugfs",
        env.disk.display()
    ));
    let fs = RootFs::open(env.disk, env.disk_format, env.scratch, attempt.remaining())
        .map_err(|e| Failure::new(e.to_string()))?;
    let mut found = std::collections::BTreeSet::new();
    for &root in &fs.roots {
        attempt.note(format!("root file system at byte offset {root}"));
        let at = |path: String| {
            if fs.roots.len() > 1 {
                format!("{path} (file system at byte {root})")
            } else {
                path
            }
        };
        for (dir, name) in &wanted {
            match fs
                .list(root, dir)
                .map_err(|e| Failure::new(e.to_string()))?
            {
                None => attempt.note(format!("{dir}: no such folder")),
                Some(names) => {
                    attempt.note(format!("{dir}: {}", names.join(" ")));
                    let sep = if dir.ends_with('/') { "" } else { "/" };
                    found.extend(
                        names
                            .iter()
                            .filter(|n| glob_matches(name, n))
                            .map(|n| at(format!("{dir}{sep}{n}"))),
                    );
                }
            }
        }
    }
    let found: Vec<String> = found.into_iter().collect();
    if found.is_empty() {
        return Ok(());
    }
    Err(Failure::mismatch(
        format!(
            "the image ships {}: every node made from it starts with the same files; remove them when building the image",
            found.join(", ")
        ),
        format!("none of {}", b.param("paths")),
        found.join(", "),
    ))
}

#[cfg(test)]
mod tests {
    use super::patterns;

    #[test]
    fn paths_are_absolute_with_globs_in_the_name_only() {
        assert_eq!(
            patterns("/etc/ssh/ssh_host_* /machine-i?").unwrap(),
            [
                ("/etc/ssh".to_string(), "ssh_host_*".to_string()),
                ("/".to_string(), "machine-i?".to_string())
            ]
        );
        for bad in [
            "etc/ssh/x",
            "/etc/*/x",
            "/etc/ssh/",
            "/etc/ssh/ssh_host_[er]*",
            "/etc/\"x",
            "",
        ] {
            assert!(patterns(bad).is_err(), "{bad:?} accepted");
        }
    }
}
