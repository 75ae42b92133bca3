//! Serial console checks: scan the console log for signs that the guest is broken.

use std::fs;
use std::path::Path;

/// A class of console trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
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
        matches!(self, Trouble::KernelPanic | Trouble::EmergencyShell)
    }

    fn matches(self, line: &str) -> bool {
        match self {
            Trouble::KernelPanic => line.contains("Kernel panic - not syncing"),
            Trouble::Oops => line.contains("Oops:") || line.contains("Oops "),
            Trouble::Bug => line.contains("BUG: ") && !line.contains("Bug: "),
            Trouble::EmergencyShell => {
                line.contains("You are in emergency mode")
                    || line.contains("You are in rescue mode")
                    || line.contains("Entering emergency mode")
            }
            Trouble::OrderingCycle => line.contains("Found ordering cycle"),
            Trouble::OomKill => line.contains("Out of memory: Killed process"),
            Trouble::FailedUnit => line.contains("[FAILED] Failed to start"),
        }
    }
}

/// Every kind of trouble, in the order they are reported.
pub const ALL: [Trouble; 7] = [
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
        assert_eq!(found[0].line_no, 2);
        assert_eq!(found[6].line, "[FAILED] Failed to start kubelet.service.");
    }

    #[test]
    fn a_clean_boot_has_no_findings() {
        let log = "[  OK  ] Started ssh.service - OpenBSD Secure Shell server.\n\
                   [  OK  ] Reached target multi-user.target.\n\
                   Debian GNU/Linux 12 node ttyS0\n";
        assert!(scan(log, &ALL).is_empty());
    }
}
