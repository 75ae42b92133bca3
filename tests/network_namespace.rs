//! The run's own network namespace, against the real kernel: what it holds stays inside
//! it, nodegate reaches into it, and nothing of it outlives a SIGKILL of its holder.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{holders, host_network};
use nodegate::network::Namespace;
use nodegate::process::ProcessGroup;

fn bridge_and_tap(ns: &Namespace) {
    for args in [
        &["link", "add", "br0", "type", "bridge"][..],
        &["addr", "add", "10.77.0.1/24", "dev", "br0"],
        &["link", "set", "br0", "up"],
        &["tuntap", "add", "dev", "tap0", "mode", "tap"],
        &["link", "set", "tap0", "master", "br0"],
    ] {
        ns.ip(args).unwrap();
    }
}

#[test]
fn a_bridge_and_tap_live_in_the_namespace_and_the_host_sees_none_of_it() {
    let before = host_network();
    let ns = Namespace::create().expect("tests run as root: a namespace can be made");
    bridge_and_tap(&ns);
    let links = ns.ip(&["-o", "link"]).unwrap();
    assert!(links.contains("br0") && links.contains("tap0"), "{links}");
    assert!(ns.ip(&["-o", "addr"]).unwrap().contains("10.77.0.1/24"));
    assert_eq!(host_network(), before, "the host's namespace changed");

    // A server inside the namespace: nodegate reaches it, the host's loopback does not.
    let listener = ns
        .within(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .unwrap()
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"inside\n").unwrap();
    });
    let mut s = ns.connect(addr, Duration::from_secs(5)).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "inside\n");
    server.join().unwrap();
    let outside = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(
        outside.is_err(),
        "the namespace's loopback is not the host's"
    );

    // A child started inside sees the namespace's links, not the host's.
    let mut cmd = Command::new("ip");
    cmd.args(["-o", "link"]);
    let o = ns.enter(&mut cmd).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("tap0"));
    drop(ns);
    assert_eq!(host_network(), before);
}

#[test]
fn two_namespaces_do_not_share_addresses() {
    // The same range in two runs cannot collide: each namespace has its own.
    let (a, b) = (Namespace::create().unwrap(), Namespace::create().unwrap());
    assert_ne!(a.inode(), b.inode());
    bridge_and_tap(&a);
    bridge_and_tap(&b);
    let listen = |ns: &Namespace| {
        ns.within(|| TcpListener::bind(SocketAddr::from(([10, 77, 0, 1], 7000))))
            .unwrap()
            .unwrap()
    };
    let _l = (listen(&a), listen(&b));
}

/// Not a test: the process `a_sigkilled_holder_leaves_no_namespace_process_or_link` kills.
#[test]
#[ignore = "run by a_sigkilled_holder_leaves_no_namespace_process_or_link in a child"]
fn holder() {
    let ns = Namespace::create().unwrap();
    bridge_and_tap(&ns);
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    let sleeper = ProcessGroup::spawn("sleep", ns.enter(&mut cmd)).unwrap();
    println!("ready {} {}", ns.inode(), sleeper.pid());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_sigkilled_holder_leaves_no_namespace_process_or_link() {
    let before = host_network();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "holder",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines
        .find_map(|l| Some(l.ok()?.split_once("ready ")?.1.to_string()))
        .expect("the holder says it is ready");
    let mut words = ready.split_whitespace();
    let inode: u64 = words.next().unwrap().parse().unwrap();
    let sleeper: u32 = words.next().unwrap().parse().unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{sleeper}/ns/net"))
            .unwrap()
            .to_string_lossy(),
        format!("net:[{inode}]"),
        "the holder's child runs inside the namespace"
    );
    assert!(!holders(inode).is_empty());

    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let t = Instant::now();
    while !holders(inode).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "still held after SIGKILL: {:?}",
            holders(inode)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Orphaned, it may linger as a zombie until init reaps it: dead all the same.
    let state = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
    let state = state.rsplit(") ").next().unwrap_or("").chars().next();
    assert!(
        matches!(state, None | Some('Z') | Some('X')),
        "the child inside died with its holder: {state:?}"
    );
    assert_eq!(
        host_network(),
        before,
        "nothing reached the host's namespace"
    );
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| {
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some(cmdline)
        })
        .collect()
}

/// A node's wire through vde2's real switch and wirefilter, with a tap in a second
/// namespace standing where QEMU plugs in: frames towards the "node" take the latency and
/// the loss set on the filter, and dropping the wire stops every emulator process.
#[test]
fn a_wire_through_wirefilter_delays_and_drops_frames_towards_the_node() {
    use nodegate::network::shaping::{Impairment, Wire};
    let path = std::env::var("PATH").unwrap_or_default();
    let find = |bin: &str| {
        std::env::split_paths(&path)
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("{bin} is not on PATH: CI installs vde2 (fixtures/host-packages.txt)")
            })
    };
    let (switch, filter, plug) = (find("vde_switch"), find("wirefilter"), find("vde_plug2tap"));
    let before = host_network();
    let dir = tempfile::tempdir().unwrap();
    let bridge = std::sync::Arc::new(Namespace::create().unwrap());
    bridge_and_tap(&bridge);
    bridge.ip(&["link", "set", "tap0", "up"]).unwrap();
    let wire = Wire::start(&bridge, &switch, &filter, "tap0", dir.path()).unwrap();

    // The node's side: a tap plugged into the wire's QEMU switch, in its own namespace.
    let node = Namespace::create().unwrap();
    for args in [
        &["tuntap", "add", "dev", "tapq", "mode", "tap"][..],
        &["addr", "add", "10.77.0.2/24", "dev", "tapq"],
        &["link", "set", "tapq", "up"],
    ] {
        node.ip(args).unwrap();
    }
    let mut cmd = Command::new(plug);
    cmd.arg("-s").arg(&wire.qemu_socket).arg("tapq");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _plug = ProcessGroup::spawn("vde_plug2tap", node.enter(&mut cmd)).unwrap();
    let listener = node
        .within(|| TcpListener::bind((Ipv4Addr::new(10, 77, 0, 2), 0)))
        .unwrap()
        .unwrap();
    let to_node = listener.local_addr().unwrap();
    let accept = std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let connect = |timeout: Duration| -> Result<Duration, std::io::Error> {
        let t = Instant::now();
        bridge.connect(to_node, timeout).map(|_| t.elapsed())
    };
    // The plug needs a moment; then a connection opens quickly.
    let t = Instant::now();
    while connect(Duration::from_secs(1)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no path through the wire"
        );
    }
    let plain = connect(Duration::from_secs(5)).unwrap();

    let latency = Impairment {
        latency: Duration::from_millis(300),
        loss_percent: 0.0,
    };
    wire.set(&latency).unwrap();
    let slow = connect(Duration::from_secs(5)).unwrap();
    assert!(
        slow >= Duration::from_millis(300),
        "the SYN towards the node was not held: {slow:?} (unshaped {plain:?})"
    );
    wire.set(&Impairment {
        latency: Duration::ZERO,
        loss_percent: 100.0,
    })
    .unwrap();
    assert!(
        connect(Duration::from_secs(2)).is_err(),
        "with every frame towards the node lost, a connection opened"
    );
    wire.set(&Impairment {
        latency: Duration::ZERO,
        loss_percent: 0.0,
    })
    .unwrap();
    connect(Duration::from_secs(5)).expect("cleared, the wire carries frames again");
    println!("connect: unshaped {plain:?}, 300 ms towards the node {slow:?}");

    let needle = dir.path().display().to_string();
    assert!(!processes_mentioning(&needle).is_empty());
    drop(wire);
    let gone = processes_mentioning(&needle);
    assert!(gone.iter().all(|p| p.contains("vde_plug2tap")), "{gone:?}");
    drop(accept);
    assert_eq!(host_network(), before, "the host's namespace changed");
}
