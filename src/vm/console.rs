//! Serial console checks: scan the console log for signs that the guest is broken.

use std::fs;
use std::path::Path;

/// A class of console trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// Secure Boot refused to start the boot loader or kernel (the firmware, shim or
    /// GRUB found no trusted signature).
    SecureBootRefused,
    /// `Kernel panic - not syncing`.
    KernelPanic,
    /// A kernel Oops.
    Oops,
    /// A kernel `BUG:`.
    Bug,
    /// systemd dropped to the emergency or rescue shell.
    EmergencyShell,
    /// systemd found an ordering cycle.
    OrderingCycle,
    /// The OOM killer killed a process.
    OomKill,
    /// A unit failed to start.
    FailedUnit,
}

impl Trouble {
    /// A short name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Trouble::SecureBootRefused => "Secure Boot refused the boot loader or kernel",
            Trouble::KernelPanic => "kernel panic",
            Trouble::Oops => "kernel Oops",
            Trouble::Bug => "kernel BUG",
            Trouble::EmergencyShell => "emergency/rescue shell",
            Trouble::OrderingCycle => "systemd ordering cycle",
            Trouble::OomKill => "OOM kill",
            Trouble::FailedUnit => "failed unit",
        }
    }

    /// Whether the guest cannot go on after this (the boot can stop waiting at once).
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            Trouble::SecureBootRefused | Trouble::KernelPanic | Trouble::EmergencyShell
        )
    }

    fn matches(self, line: &str) -> bool {
        match self {
            Trouble::SecureBootRefused => {
                SECURE_BOOT_REFUSED.iter().all(|m| line.contains(m))
                    || SIGNATURE_REFUSED.iter().any(|m| line.contains(m))
            }
            Trouble::KernelPanic => line.contains("Kernel panic - not syncing"),
            Trouble::Oops => line.contains("Oops:") || line.contains("Oops "),
            Trouble::Bug => line.contains("BUG: ") && !line.contains("Bug: "),
            Trouble::EmergencyShell => EMERGENCY.iter().any(|m| line.contains(m)),
            Trouble::OrderingCycle => line.contains("Found ordering cycle"),
            Trouble::OomKill => line.contains("Out of memory: Killed process"),
            Trouble::FailedUnit => line.contains("[FAILED] Failed to start"),
        }
    }
}

/// What consoles print when a system gives up booting and offers a shell: systemd's
/// emergency and rescue modes (sulogin), initramfs-tools and dracut.
const EMERGENCY: &[&str] = &[
    "You are in emergency mode",
    "You are in rescue mode",
    "Entering emergency mode",
    "Give root password for maintenance",
    "Cannot open access to console, the root account is locked",
    "Gave up waiting for root file system device",
    "Failed to mount /dev/",
    "Dropping to a shell!",
];

/// OVMF's boot manager when Secure Boot refuses an image: `BdsDxe: failed to load
/// Boot0001 "..." from PciRoot(...): Access Denied`.
const SECURE_BOOT_REFUSED: &[&str] = &["failed to load", "Access Denied"];

/// shim (`Verification failed: (0x1A) Security Violation`) and Debian's signed GRUB
/// refusing what they were to start.
const SIGNATURE_REFUSED: &[&str] = &["Security Violation", "bad shim signature"];

/// Shell prompts printed without a newline: matched on the console's last, unfinished
/// line.
const PROMPTS: &[&str] = &["(initramfs) ", "dracut:/# ", "sh-5"];

/// Every kind of trouble, in the order they are reported.
pub const ALL: [Trouble; 8] = [
    Trouble::SecureBootRefused,
    Trouble::KernelPanic,
    Trouble::Oops,
    Trouble::Bug,
    Trouble::EmergencyShell,
    Trouble::OrderingCycle,
    Trouble::OomKill,
    Trouble::FailedUnit,
];

/// A console line that matched a trouble pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The class.
    pub trouble: Trouble,
    /// 1-based line number in the console log.
    pub line_no: usize,
    /// The line, without control characters.
    pub line: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at console line {}: {:?}",
            self.trouble.as_str(),
            self.line_no,
            self.line
        )
    }
}

/// Removes ANSI escapes and control characters (systemd colours its status lines).
pub fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// Scans console text for the given trouble classes.
pub fn scan(text: &str, classes: &[Trouble]) -> Vec<Finding> {
    let mut found = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = clean(raw);
        for &t in classes {
            if t.matches(&line) {
                found.push(Finding {
                    trouble: t,
                    line_no: i + 1,
                    line: line.trim().to_string(),
                });
            }
        }
    }
    found
}

/// A console log read as it grows: each poll reads only the new bytes and scans the
/// lines completed since, so a watch over a long boot costs the log's size once.
#[derive(Debug)]
pub struct ConsoleWatch {
    path: std::path::PathBuf,
    offset: u64,
    partial: Vec<u8>,
    lines: usize,
    findings: Vec<Finding>,
    /// Beyond this many bytes the console is not read further (a flooding guest).
    cap: u64,
}

/// How much console a watch reads before it stops (and reports a flood).
pub const CONSOLE_CAP: u64 = 256 << 20;

impl ConsoleWatch {
    /// Watches the console log at `path` (it may not exist yet).
    pub fn new(path: &Path) -> ConsoleWatch {
        ConsoleWatch {
            path: path.to_owned(),
            offset: 0,
            partial: Vec::new(),
            lines: 0,
            findings: Vec::new(),
            cap: CONSOLE_CAP,
        }
    }

    /// Reads what the guest wrote since the last poll; returns the number of findings
    /// so far. A flood past the cap is reported as a fatal finding.
    pub fn poll(&mut self) -> usize {
        use std::io::{Read, Seek, SeekFrom};
        if self.offset >= self.cap {
            return self.findings.len();
        }
        let Ok(mut f) = fs::File::open(&self.path) else {
            return self.findings.len();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return self.findings.len();
        }
        let mut fresh = Vec::new();
        let _ = f.take(self.cap - self.offset).read_to_end(&mut fresh);
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.partial.drain(..=i).collect();
            self.lines += 1;
            let line = clean(&String::from_utf8_lossy(&raw));
            self.judge(&line, false);
        }
        if self.offset >= self.cap {
            self.findings.push(Finding {
                trouble: Trouble::EmergencyShell,
                line_no: self.lines + 1,
                line: format!(
                    "the guest wrote more than {} MiB to its serial console; nodegate stopped reading it",
                    self.cap >> 20
                ),
            });
        }
        self.findings.len()
    }

    fn judge(&mut self, line: &str, unfinished: bool) {
        for t in ALL {
            let hit = t.matches(line)
                || (unfinished
                    && t == Trouble::EmergencyShell
                    && PROMPTS
                        .iter()
                        .any(|p| line.trim_start().starts_with(p.trim_end())));
            if hit {
                let line_no = self.lines + usize::from(unfinished);
                let line = line.trim().to_string();
                if !self
                    .findings
                    .iter()
                    .any(|f| f.trouble == t && f.line_no == line_no && f.line == line)
                {
                    self.findings.push(Finding {
                        trouble: t,
                        line_no,
                        line,
                    });
                }
            }
        }
    }

    /// Every finding so far of the given classes, the console's unfinished last line
    /// (a shell prompt) included.
    pub fn findings(&mut self, classes: &[Trouble]) -> Vec<Finding> {
        self.poll();
        if !self.partial.is_empty() {
            let line = clean(&String::from_utf8_lossy(&self.partial));
            self.judge(&line, true);
        }
        self.findings
            .iter()
            .filter(|f| classes.contains(&f.trouble))
            .cloned()
            .collect()
    }

    /// The first fatal finding (a panic, an emergency shell), if any.
    pub fn fatal(&mut self) -> Option<Finding> {
        let fatal: Vec<Trouble> = ALL.into_iter().filter(|t| t.is_fatal()).collect();
        self.findings(&fatal).into_iter().next()
    }
}

/// Reads the console log (lossily: a console is not always UTF-8).
pub fn read(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` non-empty lines of the console, cleaned, for error messages.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = read(path);
    let lines: Vec<String> = text
        .lines()
        .map(clean)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_kind_of_trouble_with_its_line() {
        let log = "\
\x1b[2J\x1b[01;01H\x1b[=3hBdsDxe: failed to load Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x3,0x0): Access Denied\r\n\
[    0.000000] Linux version 6.1.0\n\
[    1.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n\
[    2.0] Oops: 0000 [#1] PREEMPT SMP\n\
[    2.1] BUG: unable to handle page fault\n\
You are in emergency mode. After logging in, type \"journalctl -xb\"\n\
systemd[1]: local-fs.target: Found ordering cycle on foo.service/start\n\
[  99.0] Out of memory: Killed process 1234 (stress)\n\
\x1b[0;1;31m[FAILED]\x1b[0m Failed to start \x1b[0;1;39mkubelet.service\x1b[0m.\n";
        let found = scan(log, &ALL);
        let kinds: Vec<_> = found.iter().map(|f| f.trouble).collect();
        assert_eq!(kinds, ALL.to_vec());
        assert!(
            found[0].line.starts_with("BdsDxe: failed to load Boot0001"),
            "{}",
            found[0].line
        );
        assert_eq!(found[1].line_no, 3);
        assert_eq!(found[7].line, "[FAILED] Failed to start kubelet.service.");
        for refused in [
            "Verification failed: (0x1A) Security Violation",
            "error: bad shim signature.",
        ] {
            assert_eq!(scan(refused, &ALL)[0].trouble, Trouble::SecureBootRefused);
        }
        let not_found =
            "BdsDxe: failed to load Boot0002 \"UEFI PXEv4\" from PciRoot(0x0): Not Found";
        assert!(scan(not_found, &ALL).is_empty());
    }

    #[test]
    fn a_watch_reads_incrementally_and_sees_prompts_without_newlines() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let mut f = fs::File::create(&p).unwrap();
        let mut w = ConsoleWatch::new(&p);
        write!(
            f,
            "[    1.0] Linux version 6.1\nBegin: Running /scripts/local-block ... done.\n"
        )
        .unwrap();
        assert_eq!(w.poll(), 0);
        writeln!(
            f,
            "Gave up waiting for root file system device.  Common problems:"
        )
        .unwrap();
        write!(f, "ALERT!  /dev/vdz does not exist.  Dropping to a shell!\n\n\nBusyBox v1.35 built-in shell (ash)\n(initramfs) ").unwrap();
        let fatal = w.fatal().expect("the initramfs shell is fatal");
        assert_eq!(fatal.line_no, 3);
        let all = w.findings(&ALL);
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all[2].line, "(initramfs)");
        assert_eq!(all[2].line_no, 8);
        // Polling again finds nothing new.
        assert_eq!(w.findings(&ALL).len(), 3);
    }

    #[test]
    fn systemd_emergency_with_a_locked_root_is_fatal() {
        let log = "[  OK  ] Reached target emergency.target - Emergency Mode.\n\
Cannot open access to console, the root account is locked.\n\
See sulogin(8) man page for more details.\n";
        let found = scan(log, &[Trouble::EmergencyShell]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].line_no, 2);
    }

    #[test]
    fn a_flooding_console_is_capped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        fs::write(&p, vec![b'x'; 4096]).unwrap();
        let mut w = ConsoleWatch::new(&p);
        w.cap = 1000;
        assert!(w.fatal().unwrap().line.contains("more than"));
    }

    #[test]
    fn a_clean_boot_has_no_findings() {
        let log = "[  OK  ] Started ssh.service - OpenBSD Secure Shell server.\n\
                   [  OK  ] Reached target multi-user.target.\n\
                   Debian GNU/Linux 12 node ttyS0\n";
        assert!(scan(log, &ALL).is_empty());
    }
}
