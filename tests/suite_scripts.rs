//! Contract tests of the shipped suites' shell scripts, run on the host against stand-in
//! `containerd` and `systemctl` commands: the cases a real guest cannot easily be put in
//! (an unreadable containerd config, a kubelet that is not running). The script and its
//! expectation are the shipped ones, planned with the test bed profile's variables and
//! judged by nodegate's own expectation code; only the guest is a stand-in.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use nodegate::profile::Profile;
use nodegate::suite::{self, CheckKind};

fn repo(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .display()
        .to_string()
}

/// The planned `containerd::cgroup_driver_matches_kubelet` command check, with the
/// profile's containerd at `containerd` (the stand-in).
fn cgroup_check(containerd: &Path) -> suite::command::CommandCheck {
    let mut defs = suite::load(&[repo("suites/containerd.toml").into()]).unwrap();
    defs[0]
        .checks
        .retain(|c| c.name == "cgroup_driver_matches_kubelet");
    let profile = Profile::load(Path::new(&repo("profiles/debian-fixture.toml"))).unwrap();
    let mut vars = profile.variables();
    let path = vars
        .get_mut("profile.components.containerd.path")
        .expect("the profile names containerd's path");
    *path = containerd.display().to_string();
    let checks = suite::plan(&defs, &vars).unwrap();
    match &checks[0].kind {
        CheckKind::Command(c) => (**c).clone(),
        other => panic!("{other:?}"),
    }
}

fn stub(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs the check's script with stand-ins: `containerd config dump` prints `dump` (or
/// fails when `None`), and the kubelet unit's main PID is a process with `kubelet_args`
/// on its command line (none: not running).
fn judge(dump: Option<&str>, kubelet_args: Option<&[&str]>) -> Result<String, String> {
    let d = tempfile::tempdir().unwrap();
    let c = cgroup_check(&d.path().join("containerd"));
    match dump {
        Some(text) => {
            fs::write(d.path().join("dump"), text).unwrap();
            stub(
                d.path(),
                "containerd",
                &format!("cat {}", d.path().join("dump").display()),
            );
        }
        None => stub(
            d.path(),
            "containerd",
            "echo 'failed to load config' >&2; exit 1",
        ),
    }
    let mut kubelet = kubelet_args.map(|args| {
        Command::new("sh")
            .args(["-c", "sleep 60; true", "kubelet"])
            .args(args)
            .spawn()
            .unwrap()
    });
    let pid = kubelet.as_ref().map_or(0, |k| k.id());
    stub(d.path(), "systemctl", &format!("echo {pid}"));
    let path = format!("{}:{}", d.path().display(), std::env::var("PATH").unwrap());
    let out = Command::new("sh")
        .arg("-c")
        .arg(&c.run)
        .env("PATH", path)
        .output()
        .unwrap();
    if let Some(k) = kubelet.as_mut() {
        let _ = k.kill();
        let _ = k.wait();
    }
    let o = nodegate::ssh::ExecOutput {
        status: out.status.code().unwrap_or(255),
        signal: None,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        dropped: 0,
    };
    c.judge(&o)
        .map(|()| o.stdout.trim().to_string())
        .map_err(|f| format!("{} / {}", f.message, o.stderr.trim()))
}

const RUNC_FALSE: &str = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = false\n";
const RUNC_TRUE: &str = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n";

#[test]
fn cgroup_drivers_that_agree_with_the_profile_pass() {
    let got = judge(Some(RUNC_FALSE), Some(&["--cgroup-driver=cgroupfs"])).unwrap();
    assert_eq!(got, "containerd=cgroupfs kubelet=cgroupfs");
    // The image pins one driver and the join passes another: the kubelet takes the last.
    let got = judge(
        Some(RUNC_FALSE),
        Some(&["--cgroup-driver=systemd", "--cgroup-driver=cgroupfs"]),
    )
    .unwrap();
    assert_eq!(got, "containerd=cgroupfs kubelet=cgroupfs");
    let cfg = tempfile::NamedTempFile::new().unwrap();
    fs::write(cfg.path(), "kind: KubeletConfiguration\n").unwrap();
    let flag = format!("--config={}", cfg.path().display());
    // A kubelet config without cgroupDriver: kubelet 1.20's default, cgroupfs.
    assert!(judge(Some(RUNC_FALSE), Some(&[&flag])).is_ok());
}

#[test]
fn a_cgroup_driver_that_could_not_be_read_fails_never_defaults() {
    type Case<'a> = (Option<&'a str>, Option<&'a [&'a str]>, &'a str);
    let cases: [Case; 4] = [
        (
            None,
            Some(&["--cgroup-driver=cgroupfs"]),
            "containerd config dump failed",
        ),
        (
            Some("version = 2\n"),
            Some(&["--cgroup-driver=cgroupfs"]),
            "set no SystemdCgroup",
        ),
        (Some(RUNC_FALSE), None, "the kubelet is not running"),
        (
            Some(RUNC_FALSE),
            Some(&["--v=2"]),
            "neither --cgroup-driver nor --config",
        ),
    ];
    for (dump, args, why) in cases {
        let e = judge(dump, args).unwrap_err();
        assert!(e.contains("exited 1") && e.contains(why), "{why}: {e}");
    }
    // Read, but not the profile's: fails with both values.
    let e = judge(Some(RUNC_TRUE), Some(&["--cgroup-driver=cgroupfs"])).unwrap_err();
    assert!(e.contains("printed something else"), "{e}");
}
