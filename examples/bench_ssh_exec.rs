//! Benchmark (not a test): median overhead of `exec("true")` over nodegate's persistent
//! ssh2 session against spawning the OpenSSH client per command, on one booted test bed
//! VM, in the same run. Run with `ci/bench-ssh.sh`.

use std::process::Command;
use std::time::{Duration, Instant};

use nodegate::vm::{AccelChoice, Boot, Vm, VmConfig};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(30, |s| s.parse().expect("rounds"));
    let layout = nodegate::cache_dir().join("image/direct");
    let cmdline = std::fs::read_to_string(layout.join("cmdline")).expect("test bed built");
    let run = tempfile::tempdir().unwrap();
    let mut config = VmConfig::new(
        "bench",
        layout.join("root.qcow2"),
        Boot::Kernel {
            kernel: layout.join("vmlinuz"),
            initrd: Some(layout.join("initrd.img")),
            cmdline: cmdline.trim().into(),
        },
        run.path().into(),
    );
    config.accel = AccelChoice::Auto;
    let mut vm = Vm::start(config, None).expect("vm starts");
    let mut ssh = vm.wait_ready().expect("vm ready");
    println!("boot: {:?} (accel {})", vm.timings, vm.accel.accel.as_str());
    let known = run.path().join("known_hosts");
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} {}\n", vm.ssh_port, vm.ssh_target.host_key),
    )
    .unwrap();

    let mut session = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        assert!(ssh.exec("true", Duration::from_secs(30)).unwrap().success());
        session.push(t.elapsed());
    }
    let mut client = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let st = Command::new("ssh")
            .arg("-i")
            .arg(&vm.ssh_target.key.private)
            .args(["-p", &vm.ssh_port.to_string(), "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .arg(format!("{}@127.0.0.1", vm.ssh_target.user))
            .arg("true")
            .status()
            .expect("ssh client runs");
        assert!(st.success());
        client.push(t.elapsed());
    }
    let (s, c) = (median(session), median(client));
    println!(
        "exec(\"true\") over the persistent ssh2 session: median {:.1} ms ({rounds} runs)",
        s.as_secs_f64() * 1e3
    );
    println!(
        "OpenSSH client spawned per command:           median {:.1} ms ({rounds} runs)",
        c.as_secs_f64() * 1e3
    );
    println!(
        "ratio client/session: {:.1}x",
        c.as_secs_f64() / s.as_secs_f64()
    );
}
