//! The roll-out's pool: nodes of the legacy image (`--legacy-manifest`) and of the image
//! under test, in one cluster, for the roll-out suite. Both images are judged against the
//! skew policy as soon as the API server's release is known: an image out of it is not
//! booted. Nodes boot in waves that pair a legacy node with a candidate one (so that each
//! pair's provisioning is measured under the same load), and each wave joins together
//! before the next boots.

use std::path::PathBuf;

use crate::rollout::workload::Workload;
use crate::rollout::{skew, PoolImage, PoolMember, PoolNode, PoolRole, PoolView};
use crate::runner::{Event, Phase, Stop, StopKind};
use crate::suite::Verification;

use super::environment::{node_fact, stop, NodeEnvironment};
use super::machines::{kubeadm_release, Machine, VmImage, Waited};
use super::BootDisk;

/// The legacy image of a roll-out: its verification (lent to each control plane's part of
/// the run in turn) and how its VMs boot.
#[derive(Debug)]
pub struct LegacyImage {
    /// Its manifest, as given.
    pub manifest: PathBuf,
    /// Its pre-boot verification.
    pub verification: Verification,
    /// Its disk (the verified copy) and how it boots.
    pub disk: BootDisk,
}

/// The pool once prepared: its images, its nodes with their VMs (none for a node that
/// never booted or was replaced), the API server's release, the roll-out's workload.
pub(super) struct Pool {
    images: Vec<PoolImage>,
    nodes: Vec<(PoolNode, Option<Machine>)>,
    server: String,
    workload: Option<Workload>,
    name: String,
}

/// An image's facts for the pool, from its verification: refused when it was.
fn pool_image(role: PoolRole, v: &Verification, manifest: Option<&std::path::Path>) -> PoolImage {
    let read = manifest
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| crate::image::Manifest::parse(&b).ok());
    let m = v.manifest().cloned().or(read);
    let label = match (&m, manifest) {
        (Some(m), _) => format!("{} v{}", m.name, m.version),
        (None, Some(p)) => p.display().to_string(),
        (None, None) => "without a manifest".into(),
    };
    PoolImage {
        role,
        label,
        kubelet: m.and_then(|m| m.components.get("kubelet").cloned()),
        refused: match v {
            Verification::Refused(e) => Some(format!("refused at verification: {e}")),
            _ => None,
        },
        out_of_skew: None,
    }
}

impl NodeEnvironment<'_> {
    /// The pool's size: the command line's `--pool`, else the profile's `[rollout]`.
    pub(super) fn pool_size(&self) -> (usize, usize) {
        let r = &self.config.profile.rollout;
        self.config
            .pool
            .map_or((r.legacy, r.candidate), |p| (p.legacy, p.candidate))
    }

    /// Prepares the pool once (after tearing down the run's other machines); its stop is
    /// remembered for the checks after.
    pub(super) fn prepare_pool(&mut self, emit: &mut dyn FnMut(Event)) -> Result<(), Stop> {
        if self.pool.is_some() {
            return Ok(());
        }
        if let Some(s) = &self.pool_failed {
            return Err(s.clone());
        }
        self.cancel_ahead(emit);
        if let Some(m) = self.fresh.take() {
            self.release(m, emit);
        }
        self.release_shared(emit);
        match self.make_pool(emit) {
            Ok(p) => {
                self.pool = Some(p);
                Ok(())
            }
            Err(s) => {
                self.pool_failed = Some(s.clone());
                Err(s)
            }
        }
    }

    fn make_pool(&mut self, emit: &mut dyn FnMut(Event)) -> Result<Pool, Stop> {
        let legacy = self
            .legacy
            .as_ref()
            .expect("a pool check runs only with a legacy image");
        let mut images = vec![
            pool_image(
                PoolRole::Legacy,
                &legacy.verification,
                Some(&legacy.manifest),
            ),
            pool_image(
                PoolRole::Candidate,
                &self.verification,
                self.config.manifest.as_deref(),
            ),
        ];
        // How each image's VMs boot, or why they cannot.
        let legacy_vm = self.legacy_image();
        let candidate_vm = match &images[1].refused {
            Some(_) => Err(None),
            None => self.image().map_err(Some),
        };
        let mut vms = Vec::new();
        for (img, vm) in images.iter_mut().zip([legacy_vm, candidate_vm]) {
            match vm {
                Ok(vm) => vms.push(Some(vm)),
                Err(Some(s)) if matches!(s.kind, StopKind::Integrity | StopKind::Image) => {
                    img.refused.get_or_insert(s.reason);
                    vms.push(None);
                }
                Err(Some(s)) => return Err(s),
                Err(None) => vms.push(None),
            }
        }
        self.control_plane(emit)?;
        let cp = self.cp.as_ref().expect("started");
        let server = cp
            .kubectl
            .server_version()
            .map_err(|e| stop(StopKind::Infrastructure, Phase::ControlPlane, e.to_string()))?;
        // The skew policy before anything boots.
        let policy = &self.config.profile.rollout.skew;
        for img in images.iter_mut() {
            if let Some(k) = &img.kubelet {
                if let Err(e) = skew::judge(k, &server, policy) {
                    img.out_of_skew = Some(e);
                }
            }
        }
        let (l, c) = self.pool_size();
        let roles = interleave(l, c);
        let name = format!("nodegate-rollout-{}", self.run_id);
        if cp.provider == crate::cluster::ProviderKind::Kubeconfig {
            // Someone else's cluster: the workload a check may make there is noted before
            // it exists, so that a killed run's is deleted by the next nodegate.
            for kind in ["deployment", "service", "poddisruptionbudget"] {
                self.rundir.note_remote(crate::rundir::RemoteObject {
                    kubectl: cp.kubectl.bin.clone(),
                    kubeconfig: cp.kubectl.kubeconfig.clone(),
                    kind: kind.into(),
                    namespace: Some("default".into()),
                    name: name.clone(),
                });
            }
        }
        if let Some(refused) = images.iter().find(|i| i.blocked().is_some()) {
            // A roll-out with an image it may not run cannot be judged: nothing boots.
            let why = format!(
                "nothing of the pool booted: the {} image {} was refused: {}",
                refused.role.as_str(),
                refused.label,
                refused.blocked().unwrap_or_default()
            );
            let nodes = roles
                .iter()
                .enumerate()
                .map(|(i, role)| {
                    let mut n = blank(format!("{} {}", role.as_str(), i + 1), *role);
                    n.absent = Some(why.clone());
                    (n, None)
                })
                .collect();
            return Ok(Pool {
                images,
                nodes,
                server,
                workload: None,
                name,
            });
        }
        let vm_of = |role: PoolRole| {
            vms[usize::from(role == PoolRole::Candidate)]
                .clone()
                .expect("not refused")
        };
        let jobs = self
            .config
            .jobs
            .unwrap_or_else(|| super::machines::default_jobs(self.config.profile.vm.vcpus))
            .max(2);
        emit(Event::Property {
            name: "rollout.pool".into(),
            value: format!("{l} legacy + {c} candidate, booted {jobs} at a time"),
        });
        let mut nodes = Vec::new();
        for wave in roles.chunks(jobs) {
            let wave: Vec<(PoolRole, VmImage)> = wave.iter().map(|r| (*r, vm_of(*r))).collect();
            nodes.extend(self.provision_wave(&wave, emit)?);
        }
        Ok(Pool {
            images,
            nodes,
            server,
            workload: None,
            name,
        })
    }

    /// Boots one wave of the pool together, then joins those that booted together; a node
    /// whose boot or join fails for its image's fault stays in the pool as absent, with
    /// the reason. Anything else stops the run.
    fn provision_wave(
        &mut self,
        wave: &[(PoolRole, VmImage)],
        emit: &mut dyn FnMut(Event),
    ) -> Result<Vec<(PoolNode, Option<Machine>)>, Stop> {
        let mut booting = Vec::new();
        for (role, image) in wave {
            booting.push((*role, self.start_vm(image, Some(*role), emit)?));
        }
        let waited: Vec<(PoolRole, Waited)> = std::thread::scope(|s| {
            let threads: Vec<_> = booting
                .into_iter()
                .map(|(role, b)| s.spawn(move || (role, b.wait())))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("a boot thread does not panic"))
                .collect()
        });
        let mut out = Vec::new();
        for (role, w) in waited {
            let (name, started) = w.booting_name();
            let mut node = blank(name, role);
            node.started = Some(started);
            match self.booted(w, emit) {
                Ok(m) => {
                    node.boot = Some(m.up_at.saturating_duration_since(m.started));
                    node.addr = m.link.as_ref().map(|l| l.port.addr);
                    node_fact(emit, &m.name, "role", role.as_str().into());
                    out.push((node, Some(m)));
                }
                Err(s) if s.is_image_fault() => {
                    node.absent = Some(format!("its boot failed: {}", s.reason));
                    out.push((node, None));
                }
                Err(s) => return Err(s),
            }
        }
        let mut machines: Vec<&mut Machine> =
            out.iter_mut().filter_map(|(_, m)| m.as_mut()).collect();
        let joins = self.join_all(&mut machines, true, emit);
        let mut joins = joins.into_iter();
        for (node, m) in out.iter_mut() {
            let Some(m) = m else { continue };
            match joins.next().expect("one outcome per machine") {
                Ok(()) => {
                    node.join = m.ready_at.map(|r| r.saturating_duration_since(m.up_at));
                    node.ready_at = m.ready_at;
                    if let Some(d) = node.provisioning() {
                        node_fact(
                            emit,
                            &node.name,
                            "provisioning_secs",
                            format!("{:.1}", d.as_secs_f64()),
                        );
                    }
                }
                Err(s) if s.kind == StopKind::Node => {
                    node.absent = Some(format!("its join failed: {}", s.reason));
                }
                Err(s) => return Err(s),
            }
        }
        Ok(out)
    }

    /// The legacy image as VMs boot it, or why it cannot boot (its verification refused
    /// it, it has nothing to boot, its disk is not what its manifest says).
    fn legacy_image(&mut self) -> Result<VmImage, Option<Stop>> {
        let legacy = self.legacy.as_ref().expect("a legacy image");
        if let Verification::Refused(_) = &legacy.verification {
            return Err(None);
        }
        let boot = legacy
            .disk
            .boot
            .clone()
            .map_err(|why| Some(stop(StopKind::Image, Phase::Boot, why)))?;
        let (path, format) = (legacy.disk.path.clone(), legacy.disk.format.clone());
        let kubeadm = kubeadm_release(legacy.verification.manifest());
        self.check_disk_of(&path, format.as_deref()).map_err(Some)?;
        Ok(VmImage {
            path,
            format,
            boot,
            kubeadm,
        })
    }

    /// Collects the logs of every node of the pool still running (after a failed check).
    pub(super) fn pool_logs(&mut self, emit: &mut dyn FnMut(Event)) {
        let Some(pool) = self.pool.as_mut() else {
            return;
        };
        for (node, m) in pool.nodes.iter_mut() {
            if let (None, Some(m)) = (&node.absent, m.as_mut()) {
                super::artifacts::collect_logs(
                    m,
                    &self.config.artifacts,
                    &self.config.profile,
                    emit,
                );
            }
        }
    }

    /// Tears the pool down: its workload, then its machines.
    pub(super) fn release_pool(&mut self, emit: &mut dyn FnMut(Event)) {
        let Some(pool) = self.pool.take() else {
            return;
        };
        drop(pool.workload);
        for (_, m) in pool.nodes {
            if let Some(m) = m {
                self.release(m, emit);
            }
        }
    }
}

/// The pool as the roll-out's checks see it: a replaced or never-booted node has no
/// session or VM.
pub(super) fn view<'a>(
    pool: &'a mut Option<Pool>,
    cp: Option<&'a crate::cluster::ControlPlane>,
    network: Option<&'a crate::network::RunNetwork>,
) -> Option<PoolView<'a>> {
    let pool = pool.as_mut()?;
    let members = pool
        .nodes
        .iter_mut()
        .map(|(node, m)| {
            let (ssh, vm) = match m {
                Some(Machine { ssh, vm, .. }) if node.absent.is_none() => (Some(ssh), Some(&*vm)),
                _ => (None, None),
            };
            PoolMember { node, ssh, vm }
        })
        .collect();
    Some(PoolView {
        server: &pool.server,
        images: &pool.images,
        members,
        kubectl: &cp?.kubectl,
        dialer: network.map(|n| n.dialer()).unwrap_or_default(),
        workload: &mut pool.workload,
        name: &pool.name,
    })
}

/// A node not yet booted.
fn blank(name: String, role: PoolRole) -> PoolNode {
    PoolNode {
        name,
        role,
        started: None,
        boot: None,
        join: None,
        ready_at: None,
        addr: None,
        absent: None,
    }
}

/// The pool's nodes in boot order: legacy and candidate in turn, then what is left of the
/// larger pool.
fn interleave(legacy: usize, candidate: usize) -> Vec<PoolRole> {
    let mut out = Vec::new();
    for i in 0..legacy.max(candidate) {
        if i < legacy {
            out.push(PoolRole::Legacy);
        }
        if i < candidate {
            out.push(PoolRole::Candidate);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pools_boot_in_turn_so_that_waves_pair_them() {
        use PoolRole::{Candidate as C, Legacy as L};
        assert_eq!(interleave(1, 1), vec![L, C]);
        assert_eq!(interleave(2, 1), vec![L, C, L]);
        assert_eq!(interleave(1, 3), vec![L, C, C, C]);
    }
}
