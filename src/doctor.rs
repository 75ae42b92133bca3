//! `nodegate doctor`: what this machine can do, and what each missing piece prevents.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::{find_on_path, local, provider::env_path};
use crate::vm::accel;

/// One finding.
#[derive(Debug, Clone)]
pub struct Finding {
    /// What was looked at.
    pub item: &'static str,
    /// Whether it is usable.
    pub ok: bool,
    /// Version, path or the reason it is not usable.
    pub detail: String,
    /// What its absence prevents (empty when ok).
    pub prevents: &'static str,
    /// A run cannot happen without it.
    pub required: bool,
}

/// The first line `cmd ARGS` prints (its version), or `None` without `ARGS` (a tool with
/// no version flag: its path is shown instead).
fn first_line(cmd: &Path, args: &[&str]) -> Option<String> {
    if args.is_empty() {
        return None;
    }
    let o = crate::process::run_bounded(
        Command::new(cmd).args(args),
        None,
        std::time::Duration::from_secs(20),
    )
    .ok()?;
    let text = o.stdout_text() + &o.stderr_text();
    text.lines()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

fn tool(
    item: &'static str,
    binary: &str,
    args: &[&str],
    prevents: &'static str,
    required: bool,
) -> Finding {
    let path = env_path();
    match find_on_path(binary, &path) {
        Some(p) => Finding {
            item,
            ok: true,
            detail: first_line(&p, args).unwrap_or_else(|| p.display().to_string()),
            prevents: "",
            required,
        },
        None => Finding {
            item,
            ok: false,
            detail: format!("{binary} not on PATH"),
            prevents,
            required,
        },
    }
}

fn file(item: &'static str, path: PathBuf, prevents: &'static str) -> Finding {
    let ok = path.is_file();
    Finding {
        item,
        ok,
        detail: if ok {
            path.display().to_string()
        } else {
            format!("{} missing", path.display())
        },
        prevents: if ok { "" } else { prevents },
        required: false,
    }
}

fn free_disk_mib(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a valid C string and a zeroed statvfs to fill.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64 / (1024 * 1024))
}

/// Whether this process's capability bounding set lacks CAP_SYS_RESOURCE (bit 24), which
/// privileged containers ask for.
fn lacks_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|bnd| bnd >> 24 & 1 == 0)
}

/// The same probe `--control-plane auto` runs before it picks kind.
fn kind_finding(image: Option<&str>) -> Finding {
    let path = env_path();
    let (ok, mut detail) = if find_on_path("kind", &path).is_none() {
        (false, "kind not on PATH".to_string())
    } else {
        let config = crate::cluster::KindConfig {
            image: image.map(String::from),
            ..Default::default()
        };
        match crate::cluster::kind::probe(&config) {
            Ok(p) => (true, p.describe()),
            Err(e) => (false, e.to_string()),
        }
    };
    if lacks_sys_resource() {
        detail.push_str(
            "; this host's capability set lacks CAP_SYS_RESOURCE: privileged containers need an engine runtime that drops it (the test bed's engine applies runc-without-sys-resource)",
        );
    }
    Finding {
        item: "kind",
        ok,
        detail,
        prevents: "--control-plane kind (and auto picking it)",
        required: false,
    }
}

/// Looks at everything; the kind probe tries `kind_image` (default: kind's own).
pub fn diagnose(kind_image: Option<&str>) -> Vec<Finding> {
    let mut out = vec![
        tool(
            "qemu",
            "qemu-system-x86_64",
            &["--version"],
            "booting any image",
            true,
        ),
        tool(
            "qemu-img",
            "qemu-img",
            &["--version"],
            "overlays: booting any image",
            true,
        ),
        tool(
            "ssh-keygen",
            "ssh-keygen",
            &[],
            "per-VM SSH keys: booting any image",
            true,
        ),
        tool(
            "debugfs",
            "debugfs",
            &["-V"],
            "reading the image offline: checks like kubelet::no_baked_ssh_host_keys",
            false,
        ),
        tool(
            "partx",
            "partx",
            &["--version"],
            "finding the root partition of a partitioned disk, offline",
            false,
        ),
        tool(
            "socat",
            "socat",
            &["-V"],
            "guest forwards: joining a control plane",
            false,
        ),
    ];
    let kvm = accel::kvm_works(
        Path::new("qemu-system-x86_64"),
        None,
        Some(&crate::cache_dir()),
    );
    out.push(Finding {
        item: "kvm",
        ok: kvm.is_ok(),
        detail: match &kvm {
            Ok(()) => "a probe guest ran under KVM".into(),
            Err(e) => e.clone(),
        },
        prevents:
            "fast boots: every VM runs under TCG (about 10x slower; budgets default to 600 s)",
        required: false,
    });
    out.push(file(
        "ovmf",
        PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        "UEFI boot (profiles with firmware = \"uefi\" and no kernel artifact)",
    ));
    out.push(file(
        "seabios",
        PathBuf::from("/usr/share/seabios/bios-256k.bin"),
        "legacy BIOS boot",
    ));
    let bin = crate::cache_dir().join("kubernetes/bin");
    let local_ok = local::check_bin_dir(&bin);
    out.push(Finding {
        item: "local control plane",
        ok: local_ok.is_ok(),
        detail: match &local_ok {
            Ok(()) => bin.display().to_string(),
            Err(e) => e.to_string(),
        },
        prevents: "--control-plane local (build it: fixtures/build)",
        required: false,
    });
    out.push(kind_finding(kind_image));
    out.push(tool(
        "kubectl (PATH)",
        "kubectl",
        &["version", "--client"],
        "nothing: nodegate uses the test bed's kubectl or the provider's",
        false,
    ));
    let mem = crate::vm::mem_available_mib();
    out.push(Finding {
        item: "memory",
        ok: mem.is_some_and(|m| m >= 3 * 1024),
        detail: mem.map_or("unknown".into(), |m| {
            format!("{:.1} GiB available", m as f64 / 1024.0)
        }),
        prevents: "a 2 GiB VM plus a local control plane (3 GiB wanted)",
        required: false,
    });
    let tmp = std::env::temp_dir();
    let disk = free_disk_mib(&tmp);
    out.push(Finding {
        item: "disk",
        ok: disk.is_some_and(|d| d >= 4 * 1024),
        detail: disk.map_or("unknown".into(), |d| {
            format!("{:.1} GiB free in {}", d as f64 / 1024.0, tmp.display())
        }),
        prevents: "overlays and artifacts (4 GiB wanted)",
        required: false,
    });
    out.extend(network_findings(&crate::network::probe()));
    // What killed runs left behind: found, reported and removed.
    let root = crate::rundir::root();
    let stale = crate::rundir::reap(&root);
    out.push(Finding {
        item: "stale runs",
        ok: true,
        detail: if stale.is_empty() {
            format!("none in {}", root.display())
        } else {
            stale
                .iter()
                .map(crate::rundir::describe)
                .collect::<Vec<_>>()
                .join("; ")
        },
        prevents: "",
        required: false,
    });
    out
}

/// The run network this machine gets, and the link faults it could inject.
fn network_findings(p: &crate::network::Probe) -> Vec<Finding> {
    // What `--network auto` gives a run with the local control plane.
    let decided = crate::network::NetworkChoice::Auto.decide(None);
    let bridge = Finding {
        item: "run network",
        ok: p.bridge.is_ok() && matches!(decided, Ok((crate::network::NetworkMode::Bridge, _))),
        detail: match (&p.bridge, decided) {
            (Err(e), _) => format!("user: each VM behind its own QEMU NAT ({e})"),
            (Ok(()), Ok((crate::network::NetworkMode::Bridge, why))) => {
                format!("bridge: the run's own namespace, one bridge for all nodes ({why})")
            }
            (Ok(()), Ok((_, why)) | Err(why)) => {
                format!("user: each VM behind its own QEMU NAT ({why})")
            }
        },
        prevents: "checks that need the cluster network (kubectl logs/exec/port-forward, \
                   several nodes), which are not run on user-mode networking",
        required: false,
    };
    let (can, cannot): (Vec<_>, Vec<_>) = p.faults.iter().partition(|(_, r)| r.is_ok());
    let describe = |v: &[&(crate::network::LinkFault, Result<String, String>)]| {
        v.iter()
            .map(|(f, r)| match r {
                Ok(how) | Err(how) => format!("{} ({how})", f.name()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let faults = Finding {
        item: "link faults",
        ok: cannot.is_empty(),
        detail: if cannot.is_empty() {
            describe(&can)
        } else if can.is_empty() {
            format!("none: {}", describe(&cannot))
        } else {
            format!("{}; not: {}", describe(&can), describe(&cannot))
        },
        prevents: "checks that inject the missing fault kinds on a node's link",
        required: false,
    };
    vec![bridge, faults]
}
