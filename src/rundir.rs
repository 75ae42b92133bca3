//! Each run's private folder, and what a killed run leaves behind.
//!
//! Everything a run writes that is not a report or an artifact lives in one folder under
//! [`root`] (`$NODEGATE_STATE`, default `$TMPDIR/nodegate-runs`): the verified copies of
//! the image, each VM's overlay, seed and SSH key, the local control plane's PKI and etcd
//! data. The folder holds a lock file the run keeps locked (`flock`) for its whole life;
//! the kernel drops the lock when the process dies, however it dies. Its processes die
//! with it too (parent-death signal), so after a SIGKILL only files remain, and objects
//! created in someone else's cluster. [`reap`] (run by every `nodegate run`, `boot` and
//! `doctor`) finds folders whose lock nobody holds, marks their reports as killed,
//! deletes the cluster objects they recorded, and removes them.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The folder under which runs keep their private folders.
pub fn root() -> PathBuf {
    match std::env::var_os("NODEGATE_STATE") {
        Some(d) if !d.is_empty() => d.into(),
        _ => std::env::temp_dir().join("nodegate-runs"),
    }
}

const LOCK: &str = "lock";
const RECORD: &str = "run.json";

/// An object a run created in a cluster it does not own (a kubeconfig cluster): deleted
/// by [`reap`] if the run was killed before its guard could.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteObject {
    /// The kubectl binary.
    pub kubectl: PathBuf,
    /// The kubeconfig it uses.
    pub kubeconfig: PathBuf,
    /// `node`, `secret`...
    pub kind: String,
    /// Its namespace, if namespaced.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

/// A kind cluster a run creates: deleted by [`reap`] if the run was killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCluster {
    /// The `PATH` kind and docker were found on.
    pub path: String,
    /// `DOCKER_HOST` as the run had it.
    pub docker_host: Option<String>,
    /// The cluster (and its docker network).
    pub name: String,
}

/// What a run folder says of its run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    pid: u32,
    started: String,
    command: String,
    json_report: Option<PathBuf>,
    junit_report: Option<PathBuf>,
    #[serde(default)]
    html_report: Option<PathBuf>,
    remote: Vec<RemoteObject>,
    #[serde(default)]
    kind_clusters: Vec<KindCluster>,
}

/// A run's private folder (mode 0700), locked while the run lives and removed when the
/// guard drops.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    record: Record,
    _lock: File,
}

fn lock(file: &File, block: bool) -> io::Result<bool> {
    let op = if block {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Creates `dir` (and its parents) and makes it private; refuses a symbolic link.
fn private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a folder (a symbolic link?)",
            dir.display()
        )));
    }
    use std::os::unix::fs::MetadataExt;
    if meta.uid() == unsafe { libc::geteuid() } {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

impl RunDir {
    /// Creates a run folder under [`root`] for `command`, whose reports (if any) a
    /// later [`reap`] marks as killed should this process die without finishing.
    pub fn create(command: &str, reports: &crate::report::ReportPaths) -> io::Result<RunDir> {
        let root = root();
        private_dir(&root)?;
        let path = tempfile::Builder::new()
            .prefix("run-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(&root)?
            .keep();
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path.join(LOCK))?;
        lock(&lock_file, true)?;
        let absolute =
            |p: Option<&Path>| p.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_owned()));
        let dir = RunDir {
            record: Record {
                pid: std::process::id(),
                started: crate::image::manifest::format_time(std::time::SystemTime::now()),
                command: command.into(),
                json_report: absolute(reports.json.as_deref()),
                junit_report: absolute(reports.junit.as_deref()),
                html_report: absolute(reports.html.as_deref()),
                remote: Vec::new(),
                kind_clusters: Vec::new(),
            },
            path,
            _lock: lock_file,
        };
        dir.save()?;
        Ok(dir)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn save(&self) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(&self.record).map_err(io::Error::other)?;
        crate::fsutil::write_atomic(&self.path.join(RECORD), &text, crate::fsutil::PRIVATE)
    }

    /// Records an object created in a cluster nodegate does not own.
    pub fn note_remote(&mut self, object: RemoteObject) {
        self.record.remote.push(object);
        let _ = self.save();
    }

    /// Records a kind cluster the run is about to create (found on `path`).
    pub fn note_kind_cluster(&mut self, path: &std::ffi::OsStr, name: &str) {
        self.record.kind_clusters.push(KindCluster {
            path: path.to_string_lossy().into_owned(),
            docker_host: std::env::var("DOCKER_HOST").ok(),
            name: name.into(),
        });
        let _ = self.save();
    }

    /// Forgets an object once its guard has deleted it.
    pub fn forget_remote(&mut self, kind: &str, name: &str) {
        self.record
            .remote
            .retain(|o| !(o.kind == kind && o.name == name));
        let _ = self.save();
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// What [`reap`] found of one killed run, and what it did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// The folder (now removed).
    pub path: PathBuf,
    /// The dead run's process id (0 if its record was unreadable).
    pub pid: u32,
    /// Its command (`run`, `boot`).
    pub command: String,
    /// Bytes the folder held.
    pub bytes: u64,
    /// Reports marked as killed.
    pub reports: Vec<PathBuf>,
    /// Cluster objects deleted (or that could not be: with the reason).
    pub remote: Vec<String>,
}

/// One line on what [`reap`] did about a killed run.
pub fn describe(s: &Stale) -> String {
    let mut line = format!(
        "removed the folder of a killed nodegate {} (pid {}): {} ({:.1} MB)",
        s.command,
        s.pid,
        s.path.display(),
        s.bytes as f64 / 1e6
    );
    for r in &s.reports {
        line.push_str(&format!("; marked {} as killed", r.display()));
    }
    for o in &s.remote {
        line.push_str(&format!("; {o}"));
    }
    line
}

fn size_of(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        fs::read_dir(path)
            .map(|d| d.flatten().map(|e| size_of(&e.path())).sum())
            .unwrap_or(0)
    } else {
        use std::os::unix::fs::MetadataExt;
        meta.blocks() * 512
    }
}

/// Whether a folder changed in the last minute (or its age is unknown).
fn young(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age < Duration::from_secs(60))
}

/// Finds run folders under `root` whose run is gone, cleans up after each (reports
/// marked killed, recorded cluster objects deleted, the folder removed) and says what it
/// did. Folders of live runs are left alone.
pub fn reap(root: &Path) -> Vec<Stale> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(root) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_run = entry.file_name().to_string_lossy().starts_with("run-")
            && fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !is_run {
            continue;
        }
        let held = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path.join(LOCK))
        {
            // Held by a live run: leave it.
            Ok(f) => match lock(&f, false) {
                // No record yet: a run between creating its lock file and taking the
                // lock (it waits for ours), unless it died there long ago.
                Ok(true) if !path.join(RECORD).exists() && young(&path) => continue,
                Ok(true) => Some(f),
                _ => continue,
            },
            // No lock file: a run that died while creating its folder, or not ours.
            Err(_) if young(&path) => continue,
            Err(_) => None,
        };
        let record: Record = fs::read(path.join(RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let reason = format!(
            "nodegate {} (pid {}) was killed before it finished; found by nodegate (pid {}) at {}",
            record.command,
            record.pid,
            std::process::id(),
            crate::image::manifest::format_time(std::time::SystemTime::now())
        );
        let reports = crate::report::mark_killed(
            &crate::report::ReportPaths {
                json: record.json_report.clone(),
                junit: record.junit_report.clone(),
                html: record.html_report.clone(),
            },
            &reason,
        );
        let remote: Vec<String> = record
            .remote
            .iter()
            .map(|o| {
                let mut c = std::process::Command::new(&o.kubectl);
                c.arg("--kubeconfig")
                    .arg(&o.kubeconfig)
                    .args(["--request-timeout=20s", "delete", &o.kind, &o.name])
                    .args(["--ignore-not-found", "--wait=false"]);
                if let Some(ns) = &o.namespace {
                    c.args(["-n", ns]);
                }
                let what = format!("{} {}", o.kind, o.name);
                match crate::process::run_bounded(&mut c, None, Duration::from_secs(30)) {
                    Ok(out) if out.status.success() => format!("{what} deleted"),
                    Ok(out) => format!("{what} not deleted: {}", out.stderr_text().trim()),
                    Err(e) => format!("{what} not deleted: {e}"),
                }
            })
            .collect();
        let kind = record.kind_clusters.iter().map(reap_kind_cluster);
        let remote = remote.into_iter().chain(kind).collect();
        let bytes = size_of(&path);
        let _ = fs::remove_dir_all(&path);
        drop(held);
        found.push(Stale {
            path,
            pid: record.pid,
            command: record.command,
            bytes,
            reports,
            remote,
        });
    }
    found
}

/// Deletes a killed run's kind cluster and its network; says what happened.
fn reap_kind_cluster(c: &KindCluster) -> String {
    let path = std::ffi::OsString::from(&c.path);
    let (Some(kind), Some(docker)) = (
        crate::cluster::find_on_path("kind", &path),
        crate::cluster::find_on_path("docker", &path),
    ) else {
        return format!(
            "kind cluster {} not deleted: kind or docker is gone from {}",
            c.name, c.path
        );
    };
    // The engine the run used: its DOCKER_HOST, for kind and docker alike.
    let problems =
        crate::cluster::kind::delete_cluster(&kind, &docker, &c.name, c.docker_host.as_deref());
    if problems.is_empty() {
        format!("kind cluster {} deleted", c.name)
    } else {
        format!(
            "kind cluster {} not deleted: {}",
            c.name,
            problems.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_run_is_left_alone_and_a_dead_one_is_reaped() {
        let root = tempfile::tempdir().unwrap();
        std::env::set_var("NODEGATE_STATE", root.path());
        let live = RunDir::create("run", &Default::default()).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(live.path()).unwrap().mode() & 0o777, 0o700);
        fs::write(live.path().join("overlay.qcow2"), vec![1u8; 8192]).unwrap();
        assert!(reap(root.path()).is_empty(), "a live run was reaped");
        // A dead run: its folder and record, nobody holding the lock.
        let dead = root.path().join("run-dead");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join(LOCK), b"").unwrap();
        fs::write(dead.join("ca.key"), vec![2u8; 4096]).unwrap();
        let rec = Record {
            pid: 4242,
            command: "run".into(),
            ..Record::default()
        };
        fs::write(dead.join(RECORD), serde_json::to_vec(&rec).unwrap()).unwrap();
        // A run that has made its lock file but not yet taken the lock or written its
        // record: young, so left alone.
        let starting = root.path().join("run-starting");
        fs::create_dir(&starting).unwrap();
        fs::write(starting.join(LOCK), b"").unwrap();
        let found = reap(root.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(starting.exists(), "a starting run was reaped");
        assert_eq!(found[0].pid, 4242);
        assert!(found[0].bytes >= 4096);
        assert!(!dead.exists());
        assert!(live.path().exists());
        let path = live.path().to_owned();
        drop(live);
        assert!(!path.exists(), "a finished run keeps its folder");
        std::env::remove_var("NODEGATE_STATE");
    }
}
