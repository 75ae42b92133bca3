//! Secure Boot, proved from inside the guest: the firmware's `SecureBoot` and
//! `SetupMode` variables as the booted kernel sees them.

use super::context::{Attempt, CheckEnv, Failure};

/// The EFI global variable GUID.
const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// What the guest shows: each variable's value byte (after efivarfs' four attribute
/// bytes), or `None` when it is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Whether `/sys/firmware/efi` exists (the kernel was started by UEFI).
    pub uefi: bool,
    /// `SecureBoot`: 1 when the firmware enforces signature checks.
    pub secure_boot: Option<u8>,
    /// `SetupMode`: 0 once a platform key is enrolled (the keys cannot be changed).
    pub setup_mode: Option<u8>,
}

/// One shell command printing `uefi=0|1`, then `NAME=BYTES` for each variable.
fn command() -> String {
    let mut cmd = String::from(
        "if [ -d /sys/firmware/efi ]; then echo uefi=1; else echo uefi=0; fi; \
         cat /sys/kernel/security/lockdown 2>/dev/null | sed 's/^/lockdown=/'",
    );
    for name in ["SecureBoot", "SetupMode"] {
        let path = format!("/sys/firmware/efi/efivars/{name}-{GLOBAL}");
        cmd.push_str(&format!(
            "; printf '{name}='; od -An -v -tu1 {path} 2>/dev/null | tr -s ' \\n' ' '; echo"
        ));
    }
    cmd
}

/// The last byte of a `NAME= 6 0 0 0 1` line, or `None` when the variable was unreadable.
fn value(out: &str, name: &str) -> Option<u8> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))?;
    let bytes: Vec<u8> = line
        .split_whitespace()
        .map(|b| b.parse().ok())
        .collect::<Option<_>>()?;
    (bytes.len() == 5).then(|| bytes[4])
}

/// Parses the command's output.
pub fn parse(out: &str) -> Seen {
    Seen {
        uefi: out.lines().any(|l| l == "uefi=1"),
        secure_boot: value(out, "SecureBoot"),
        setup_mode: value(out, "SetupMode"),
    }
}

/// Whether what the guest shows is Secure Boot enforcing.
pub fn judge(seen: Seen) -> Result<(), Failure> {
    if !seen.uefi {
        return Err(Failure::mismatch(
            "the guest was not started by UEFI (/sys/firmware/efi is absent): nothing verified its boot",
            "SecureBoot=1 SetupMode=0",
            "no UEFI",
        ));
    }
    let shown = |v: Option<u8>| v.map_or("unreadable".to_string(), |b| b.to_string());
    let actual = format!(
        "SecureBoot={} SetupMode={}",
        shown(seen.secure_boot),
        shown(seen.setup_mode)
    );
    match (seen.secure_boot, seen.setup_mode) {
        (Some(1), Some(0)) => Ok(()),
        (None, _) | (_, None) => Err(Failure::mismatch(
            "cannot read the SecureBoot and SetupMode EFI variables in the guest (efivarfs not mounted?), so Secure Boot is not proved",
            "SecureBoot=1 SetupMode=0",
            actual,
        )),
        (Some(1), Some(_)) => Err(Failure::mismatch(
            "the firmware is in setup mode: no platform key is enrolled, so anyone may enroll keys and Secure Boot is not enforcing",
            "SecureBoot=1 SetupMode=0",
            actual,
        )),
        _ => Err(Failure::mismatch(
            "Secure Boot is off in the guest: the firmware did not verify the boot loader and kernel",
            "SecureBoot=1 SetupMode=0",
            actual,
        )),
    }
}

/// `secure-boot`: the image booted with Secure Boot enforcing, as the guest's kernel
/// sees the firmware. A firmware, shim or GRUB that refused the image fails this check
/// with the console line before any guest exists (the runner sees to that).
pub fn secure_boot(env: &mut CheckEnv<'_>, attempt: &mut Attempt) -> Result<(), Failure> {
    let g = env.guest()?;
    match &g.vm.config.boot {
        crate::vm::Boot::Uefi { code, vars, .. } => attempt.note(format!(
            "booted by {} with vars from {}",
            code.display(),
            vars.display()
        )),
        other => attempt.note(format!("booted: {}", other.kind())),
    }
    // As root: an image may keep efivarfs or securityfs from other users.
    let o = attempt.exec_root(g.ssh, &command())?;
    if !o.success() || o.stdout.trim().is_empty() {
        return Err(Failure::new(format!(
            "cannot read the firmware's variables in the guest ({}): {}",
            o.describe_end(),
            o.stderr.trim()
        )));
    }
    if let Some(l) = o.stdout.lines().find_map(|l| l.strip_prefix("lockdown=")) {
        attempt.note(format!("kernel lockdown: {l}"));
    }
    judge(parse(&o.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforcing_means_secure_boot_on_and_a_platform_key_enrolled() {
        let out = "uefi=1\nlockdown=none [integrity] confidentiality\nSecureBoot= 6 0 0 0 1 \nSetupMode= 6 0 0 0 0 \n";
        let seen = parse(out);
        assert_eq!(
            seen,
            Seen {
                uefi: true,
                secure_boot: Some(1),
                setup_mode: Some(0)
            }
        );
        assert!(judge(seen).is_ok());
        for (out, says) in [
            ("uefi=0\nSecureBoot=\nSetupMode=\n", "not started by UEFI"),
            (
                "uefi=1\nSecureBoot= 6 0 0 0 0 \nSetupMode= 6 0 0 0 0 \n",
                "Secure Boot is off",
            ),
            (
                "uefi=1\nSecureBoot= 6 0 0 0 1 \nSetupMode= 6 0 0 0 1 \n",
                "setup mode",
            ),
            (
                "uefi=1\nSecureBoot=\nSetupMode= 6 0 0 0 0 \n",
                "cannot read",
            ),
            (
                "uefi=1\nSecureBoot= 6 0 x 0 1\nSetupMode= 6 0 0 0 0\n",
                "cannot read",
            ),
        ] {
            let f = judge(parse(out)).unwrap_err();
            assert!(f.message.contains(says), "{out:?}: {}", f.message);
        }
    }

    #[test]
    fn the_command_reads_the_global_variables() {
        let c = command();
        assert!(
            c.contains("/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c")
        );
        assert!(
            c.contains("/sys/firmware/efi/efivars/SetupMode-8be4df61-93ca-11d2-aa0d-00e098032b8c")
        );
    }
}
