//! The test bed's kind (fixtures/kind): its engine started (idempotent), and the
//! environment a kind run needs.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// What `fixtures/kind/engine env` says.
#[derive(Debug, Clone)]
pub struct KindBed {
    /// `unix:///run/nodegate-docker/docker.sock`.
    pub docker_host: String,
    /// The node image's tag.
    pub image: String,
    /// kind, docker and the engine's binaries.
    pub bin: PathBuf,
}

impl KindBed {
    /// `PATH` with the test bed's kind and docker first.
    pub fn path(&self) -> String {
        format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// The test bed's kubectl far newer than its servers (step `kind`: trixie's v1.32.3).
    pub fn newer_kubectl(&self) -> PathBuf {
        let p = self.bin.with_file_name("clients").join("kubectl-v1.32.3");
        assert!(
            p.is_file(),
            "{}: missing (fixtures/build kind)",
            p.display()
        );
        p
    }

    /// The environment of a nodegate run on this engine.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DOCKER_HOST", self.docker_host.clone()),
            ("PATH", self.path()),
        ]
    }

    /// `TOOL ARGS` (kind or docker, from the bed) on the engine: its stdout, or a panic
    /// naming the command.
    fn tool(&self, tool: &str, args: &[&str]) -> String {
        let o = Command::new(self.bin.join(tool))
            .env("DOCKER_HOST", &self.docker_host)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// [`KindBed::env`] with `overrides` in place of its values.
    pub fn env_with<'a>(&self, overrides: &[(&'a str, String)]) -> Vec<(&'a str, String)> {
        let mut env = self.env();
        env.retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
        env.extend(overrides.iter().cloned());
        env
    }

    /// `docker ARGS` on the engine.
    pub fn docker(&self, args: &[&str]) -> String {
        self.tool("docker", args)
    }

    /// `kind get clusters`, one name per entry.
    pub fn clusters(&self) -> Vec<String> {
        self.tool("kind", &["get", "clusters"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Docker network names.
    pub fn networks(&self) -> Vec<String> {
        self.docker(&["network", "ls", "--format", "{{.Name}}"])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Starts the engine (built by `fixtures/build kind`; a missing build fails the test,
/// never skips it), reads its environment and sets `DOCKER_HOST` for this process; once
/// per test binary.
pub fn kind_bed() -> KindBed {
    static BED: OnceLock<KindBed> = OnceLock::new();
    BED.get_or_init(|| {
        let engine = super::repo("fixtures/kind/engine");
        let up = Command::new(&engine).arg("up").output().unwrap();
        assert!(
            up.status.success(),
            "fixtures/kind/engine up: {}{}",
            String::from_utf8_lossy(&up.stdout),
            String::from_utf8_lossy(&up.stderr)
        );
        let env = Command::new(&engine).arg("env").output().unwrap();
        assert!(env.status.success());
        let text = String::from_utf8_lossy(&env.stdout).into_owned();
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in: {text}"))
                .to_string()
        };
        let bed = KindBed {
            docker_host: get("DOCKER_HOST"),
            image: get("NODEGATE_KIND_IMAGE"),
            bin: get("NODEGATE_KIND_BIN").into(),
        };
        // The library's kind and docker calls inherit it: every test of a binary that
        // uses the bed wants this engine.
        std::env::set_var("DOCKER_HOST", &bed.docker_host);
        bed
    })
    .clone()
}
