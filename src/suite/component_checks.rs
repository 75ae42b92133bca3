//! Component versions read from the binaries the signed manifest lists: the binary at the
//! profile's path must have the manifest's digest, then it is run with the profile's
//! version arguments and its output parsed with the profile's pattern. The version a
//! check compares is never the output of a command of the profile's choosing.

use super::builtin::Builtin;
use super::context::{shell_quote, Attempt, CheckEnv, Failure};
use crate::image::Manifest;
use crate::profile::{ComponentProfile, Profile};
use crate::ssh::SshSession;

/// The profile's reader of `component`, or a failure saying the profile lacks one.
pub(super) fn reader<'p>(
    profile: &'p Profile,
    component: &str,
) -> Result<&'p ComponentProfile, Failure> {
    profile.components.get(component).ok_or_else(|| {
        Failure::new(format!(
            "the profile has no [components.{component}]: nothing says which listed binary reports the {component} version"
        ))
    })
}

/// The digest `manifest` lists for the guest file `path`.
pub(super) fn listed_digest<'m>(
    manifest: &'m Manifest,
    path: &str,
    whose: &str,
) -> Result<&'m str, Failure> {
    manifest
        .files
        .iter()
        .find(|f| f.path == path)
        .map(|f| f.sha256.as_str())
        .ok_or_else(|| {
            Failure::new(format!(
                "the {whose} manifest lists no digest for {path}: a version read from an unlisted binary proves nothing"
            ))
        })
}

/// The sha256 of a guest file (as root), or a failure naming why it could not be read.
pub(super) fn guest_digest(
    attempt: &mut Attempt,
    ssh: &mut SshSession,
    path: &str,
) -> Result<String, Failure> {
    let o = attempt.exec_root(ssh, &format!("sha256sum {}", shell_quote(path)))?;
    let sum = o.stdout.split_whitespace().next().unwrap_or("");
    if !o.success() || sum.len() != 64 {
        return Err(Failure::new(format!(
            "cannot read {path} in the guest ({}): {}",
            o.describe_end(),
            o.stderr.trim()
        )));
    }
    Ok(sum.to_string())
}

/// Reads `component`'s version from its binary: the digest must be `want_digest`, then
/// the binary's own output gives the version.
pub(super) fn read_version(
    attempt: &mut Attempt,
    ssh: &mut SshSession,
    component: &str,
    c: &ComponentProfile,
    want_digest: &str,
) -> Result<String, Failure> {
    let path = c.path.as_ref();
    let found = guest_digest(attempt, ssh, path)?;
    if found != want_digest {
        return Err(Failure::mismatch(
            format!("{path} in the guest is not the binary the manifest lists: its {component} version would prove nothing"),
            want_digest,
            found,
        ));
    }
    let mut cmd = shell_quote(path);
    for a in &c.version_args {
        cmd.push(' ');
        cmd.push_str(&shell_quote(a));
    }
    let o = attempt.exec(ssh, &cmd)?;
    if !o.success() {
        return Err(Failure::new(format!(
            "`{cmd}` ended with {}: {}",
            o.describe_end(),
            o.stderr.trim()
        )));
    }
    let re = c.pattern().map_err(Failure::new)?;
    [&o.stdout, &o.stderr]
        .iter()
        .find_map(|text| {
            re.captures(text)
                .and_then(|m| m.get(1))
                .map(|g| g.as_str().to_string())
        })
        .ok_or_else(|| {
            Failure::mismatch(
                format!("`{cmd}` printed no version matching the profile's pattern"),
                format!("output matching /{}/", c.version_pattern),
                format!("{}{}", o.stdout.trim(), o.stderr.trim()),
            )
        })
}

/// `component-version`: the binary the manifest lists for `component` reports exactly
/// the manifest's version.
pub fn component_version(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let component = b.param("component");
    let manifest = env
        .verification
        .manifest()
        .ok_or_else(|| Failure::new("no manifest: the expected version is unknown"))?;
    let want = manifest.components.get(component).ok_or_else(|| {
        Failure::new(format!(
            "the manifest lists no `{component}` component version"
        ))
    })?;
    let c = reader(env.profile, component)?;
    let digest = listed_digest(manifest, &c.path, "image")?.to_string();
    let g = env.guest()?;
    let found = read_version(attempt, g.ssh, component, c, &digest)?;
    attempt.note(format!("{} reports {component} {found}", c.path));
    if &found != want {
        return Err(Failure::mismatch(
            format!(
                "{} reports another {component} version than the manifest",
                c.path
            ),
            want.clone(),
            found,
        ));
    }
    Ok(())
}
