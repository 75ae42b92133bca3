//! Latency and loss on a node's link, inside the run's namespace.
//!
//! Where the kernel has the `netem` qdisc, it shapes the node's tap. Where it has not (these
//! CI machines), the node's frames go through a userspace link emulator instead: QEMU's
//! `vde` netdev plugs into a `vde_switch`, Debian's `wirefilter` (vde2) joins that switch
//! to a second one, and the second switch owns the node's tap on the bridge:
//!
//! ```text
//! QEMU ── vde_switch A ── wirefilter ── vde_switch B ── ngtapN ── bridge
//! ```
//!
//! Both shape what travels **towards the node**: frames are held for the latency and
//! dropped with the loss probability, so a round trip to the node grows by the latency
//! and one frame in `loss` never arrives. (netem on a tap shapes only its egress, the way
//! to the node; wirefilter is told the same, `R->L`, so both kinds mean the same.) A
//! partition stays the tap going down, with or without the emulator.
//!
//! The emulator's processes start inside the namespace, each in a process group with the
//! parent-death signal, and each reads a pipe nodegate holds: they exit on its EOF too, so
//! none outlives nodegate.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::{Namespace, NamespaceError};
use crate::process::ProcessGroup;
use crate::wait::{wait_until, Poll};

/// How this machine shapes a node's link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shaper {
    /// The kernel's `netem` qdisc on the tap.
    Netem,
    /// vde2's switch and wirefilter between QEMU and the tap.
    Wirefilter {
        /// `vde_switch`.
        switch: PathBuf,
        /// `wirefilter`.
        filter: PathBuf,
        /// Why netem could not be used (one line: the kernel has none, tc cannot run).
        no_netem: String,
    },
}

impl Shaper {
    /// netem if a qdisc can be added inside `ns` (on its loopback), else wirefilter if
    /// vde2's tools are on PATH; otherwise why neither can shape.
    pub fn detect(ns: &Namespace) -> Result<Shaper, String> {
        let netem = ns
            .tool(
                "tc",
                &["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            )
            .map(|_| {
                let _ = ns.tool("tc", &["qdisc", "del", "dev", "lo", "root"]);
            });
        let netem = match netem {
            Ok(()) => return Ok(Shaper::Netem),
            // The tool's own complaint ("cannot start" already names it).
            Err(NamespaceError::Tool { tool, detail, .. }) if detail.starts_with(tool) => {
                crate::message::one_line(&detail)
            }
            Err(NamespaceError::Tool { tool, detail, .. }) => {
                crate::message::one_line(&format!("{tool}: {detail}"))
            }
            Err(e) => crate::message::one_line(&e.to_string()),
        };
        let path = crate::cluster::provider::env_path();
        let find = |bin| crate::cluster::find_on_path(bin, &path);
        match (find("vde_switch"), find("wirefilter")) {
            (Some(switch), Some(filter)) => Ok(Shaper::Wirefilter {
                switch,
                filter,
                no_netem: netem,
            }),
            _ => Err(format!(
                "no netem here ({netem}) and vde2's vde_switch and wirefilter are not on \
                 PATH (Debian: vde-switch, vde-wirefilter)"
            )),
        }
    }

    /// How it is named in reports: `netem` or `wirefilter`.
    pub fn name(&self) -> &'static str {
        match self {
            Shaper::Netem => "netem",
            Shaper::Wirefilter { .. } => "wirefilter",
        }
    }
}

/// What a shaped link does to frames towards the node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Added to each frame (the round trip grows by as much).
    pub latency: Duration,
    /// Share of frames dropped, in percent (0-100).
    pub loss_percent: f64,
}

impl Impairment {
    /// From a check's `latency` (a duration) and `loss` (`"10%"`) params; `None` when both
    /// are empty.
    pub fn from_params(latency: &str, loss: &str) -> Result<Option<Impairment>, String> {
        if latency.is_empty() && loss.is_empty() {
            return Ok(None);
        }
        let latency = if latency.is_empty() {
            Duration::ZERO
        } else {
            humantime::parse_duration(latency)
                .map_err(|e| format!("param `latency` = {latency:?}: {e}"))?
        };
        if latency > Duration::from_secs(10) {
            return Err(format!(
                "param `latency` = {}: at most 10s",
                crate::message::duration(latency)
            ));
        }
        let loss_percent = if loss.is_empty() {
            0.0
        } else {
            loss.strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
                .filter(|p| (0.0..=100.0).contains(p))
                .ok_or_else(|| format!("param `loss` = {loss:?}: a percentage, 0% to 100%"))?
        };
        Ok(Some(Impairment {
            latency,
            loss_percent,
        }))
    }
}

impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ms latency, {}% loss towards the node",
            self.latency.as_millis(),
            self.loss_percent
        )
    }
}

/// The netem qdisc for `imp` on `tap` (`tc` arguments).
fn netem_args(tap: &str, imp: &Impairment) -> Vec<String> {
    let mut a: Vec<String> = ["qdisc", "replace", "dev", tap, "root", "netem"]
        .map(String::from)
        .to_vec();
    a.extend([
        "delay".into(),
        format!("{}ms", imp.latency.as_millis()),
        "loss".into(),
        format!("{}%", imp.loss_percent),
    ]);
    a
}

/// One node's wire through the emulator (see the module's doc); dropping it stops the
/// filter and both switches.
pub struct Wire {
    // Drop order: the filter, then the switches.
    _filter: ProcessGroup,
    _switches: [ProcessGroup; 2],
    /// The switch QEMU plugs into (`-netdev vde,sock=`).
    pub qemu_socket: PathBuf,
    mgmt: PathBuf,
}

/// Spawns `program args` inside `ns` with a pipe on stdin that nodegate holds (vde2's
/// tools exit on its EOF) and output to `log`.
fn spawn_held(
    ns: &Namespace,
    name: &str,
    program: &Path,
    args: &[String],
    log: &Path,
) -> Result<ProcessGroup, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::piped()).stdout(out).stderr(err);
    ns.enter(&mut cmd);
    ProcessGroup::spawn(name, &mut cmd).map_err(|e| format!("{name}: {e}"))
}

/// Waits until `path` exists (a switch's or the filter's socket), or the process died.
fn wait_socket(group: &mut ProcessGroup, path: &Path, log: &Path) -> Result<(), String> {
    wait_until(
        "a link emulator socket",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            if let Ok(Some(status)) = group.try_status() {
                let said = std::fs::read_to_string(log).unwrap_or_default();
                let said = said.lines().next().unwrap_or("no message").to_string();
                return Poll::Fatal(format!("{} exited ({status}): {said}", group.name()));
            }
            if path.exists() {
                Poll::Ready(())
            } else {
                Poll::Pending(format!("no {} yet", path.display()))
            }
        },
    )
    .map_err(|e| e.to_string())
}

impl Wire {
    /// Starts the two switches (the second owning `tap`, which must exist in `ns`) and
    /// the filter between them; sockets and logs go to `dir`.
    pub fn start(
        ns: &Arc<Namespace>,
        switch: &Path,
        filter: &Path,
        tap: &str,
        dir: &Path,
    ) -> Result<Wire, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (a, b, mgmt) = (
            dir.join("qemu.vde"),
            dir.join("tap.vde"),
            dir.join("wirefilter.mgmt"),
        );
        let s = |p: &Path| p.display().to_string();
        let mut switch_a = spawn_held(
            ns,
            "vde_switch",
            switch,
            &["-s".into(), s(&a)],
            &dir.join("switch-qemu.log"),
        )?;
        let mut switch_b = spawn_held(
            ns,
            "vde_switch",
            switch,
            &["-s".into(), s(&b), "-t".into(), tap.into()],
            &dir.join("switch-tap.log"),
        )?;
        wait_socket(&mut switch_a, &a.join("ctl"), &dir.join("switch-qemu.log"))?;
        wait_socket(&mut switch_b, &b.join("ctl"), &dir.join("switch-tap.log"))?;
        let log = dir.join("wirefilter.log");
        let mut filter = spawn_held(
            ns,
            "wirefilter",
            filter,
            &[
                "-v".into(),
                format!("{}:{}", s(&a), s(&b)),
                "-M".into(),
                s(&mgmt),
            ],
            &log,
        )?;
        wait_socket(&mut filter, &mgmt, &log)?;
        Ok(Wire {
            _filter: filter,
            _switches: [switch_a, switch_b],
            qemu_socket: a,
            mgmt,
        })
    }

    /// Sets the filter towards the node (`R->L`: from the tap's switch to QEMU's) and
    /// reads its settings back.
    pub fn set(&self, imp: &Impairment) -> Result<(), String> {
        let delay = imp.latency.as_millis().to_string();
        let loss = format!("{}", imp.loss_percent);
        let info = self.mgmt(&[
            &format!("delay RL {delay}"),
            &format!("loss RL {loss}"),
            "showinfo",
        ])?;
        for (key, want) in [("Delay", &delay), ("Loss", &loss)] {
            let line = info
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_default();
            let got = line
                .split("R->L")
                .nth(1)
                .and_then(|v| v.split('+').next())
                .map(str::trim)
                .unwrap_or("?");
            if got != want.as_str() {
                return Err(format!(
                    "wirefilter did not take {key} {want} towards the node (it shows {line:?})"
                ));
            }
        }
        Ok(())
    }

    /// Sends `commands` to the filter's management socket, one at a time; returns what
    /// it answered. wirefilter answers `1000 Success` or an error code per command.
    fn mgmt(&self, commands: &[&str]) -> Result<String, String> {
        let fail = |e: std::io::Error| format!("wirefilter's management socket: {e}");
        let stream = UnixStream::connect(&self.mgmt).map_err(fail)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(fail)?;
        let mut writer = stream.try_clone().map_err(fail)?;
        let mut reader = BufReader::new(stream);
        let mut answers = String::new();
        // The banner ends with the first prompt (no newline): read up to its `$`.
        let mut banner = Vec::new();
        reader.read_until(b'$', &mut banner).map_err(fail)?;
        for c in commands {
            writer
                .write_all(format!("{c}\n").as_bytes())
                .map_err(fail)?;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).map_err(fail)? == 0 {
                    return Err(format!(
                        "wirefilter closed its management socket after {c:?}"
                    ));
                }
                // A reply follows the previous command's prompt (`VDEwf$ `) on its line.
                let code = line
                    .rfind("$ ")
                    .map_or(line.as_str(), |i| &line[i + 2..])
                    .trim_start();
                if code.starts_with("1000") {
                    break;
                }
                if code.len() >= 4
                    && code.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                    && !code.starts_with("0000")
                {
                    return Err(format!("wirefilter refused {c:?}: {}", code.trim()));
                }
                answers.push_str(&line);
            }
        }
        Ok(answers)
    }
}

/// Shapes a node's link (`tap` inside `ns`, or its wire) as `imp` says; `None` clears it.
pub fn apply(
    ns: &Namespace,
    tap: &str,
    wire: Option<&Wire>,
    imp: Option<&Impairment>,
) -> Result<(), String> {
    let clear = Impairment {
        latency: Duration::ZERO,
        loss_percent: 0.0,
    };
    match (wire, imp) {
        (Some(w), imp) => w.set(imp.unwrap_or(&clear)),
        (None, Some(imp)) => {
            let args = netem_args(tap, imp);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ns.tool("tc", &args).map(|_| ()).map_err(|e| e.to_string())
        }
        (None, None) => ns
            .tool("tc", &["qdisc", "del", "dev", tap, "root"])
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_give_an_impairment_or_one_line_naming_the_param() {
        let i = Impairment::from_params("200ms", "10%").unwrap().unwrap();
        assert_eq!(i.latency, Duration::from_millis(200));
        assert_eq!(i.loss_percent, 10.0);
        assert_eq!(Impairment::from_params("", "").unwrap(), None);
        let e = Impairment::from_params("200ms", "10").unwrap_err();
        assert!(e.contains("param `loss`"), "{e}");
        let e = Impairment::from_params("fast", "").unwrap_err();
        assert!(e.contains("param `latency`"), "{e}");
        assert!(Impairment::from_params("", "101%").is_err());
        assert!(Impairment::from_params("1h", "").is_err());
    }

    #[test]
    fn netem_shapes_the_taps_egress_with_both_figures() {
        let i = Impairment {
            latency: Duration::from_millis(200),
            loss_percent: 10.0,
        };
        assert_eq!(
            netem_args("ngtap1", &i).join(" "),
            "qdisc replace dev ngtap1 root netem delay 200ms loss 10%"
        );
    }
}
