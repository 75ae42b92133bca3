//! `pod-kubectl`: the Kubernetes path to a pod works: `kubectl logs`, `kubectl exec` and
//! `kubectl port-forward` reach a pod on every node of the run. Each goes from the API server to the
//! node's kubelet on 10250, so this needs the run's cluster network.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::builtin::Builtin;
use super::cluster_checks::{create_pod, wait_pod, PodGuard};
use super::context::{Attempt, CheckEnv, Failure};
use crate::process::ProcessGroup;
use crate::wait::{wait_until, Poll, WaitError};

/// One way to reach the pod: its name and the attempt.
type Step<'a> = (&'static str, Box<dyn Fn() -> Result<(), String> + 'a>);

/// Retries `f` every second (the project's [`wait_until`]) until it gives `Ok` or
/// `within` passes; the last error is kept for the failure.
pub(super) fn retry<T>(
    within: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    wait_until("the pod", within, Duration::from_secs(1), || match f() {
        Ok(v) => Poll::Ready(v),
        Err(e) => Poll::Pending(e),
    })
    .map_err(|e| match e {
        WaitError::Timeout { last: Some(l), .. } => l,
        e => e.to_string(),
    })
}

fn kubectl_logs(pod: &PodGuard<'_>, want: &str) -> Result<(), String> {
    let out = pod
        .kubectl
        .run(&["logs", "-n", "default", &pod.name, "-c", "c"])
        .map_err(|e| e.to_string())?;
    if out.contains(want) {
        Ok(())
    } else {
        Err(format!("the log lacks {want:?}: {:?}", out.trim()))
    }
}

fn kubectl_exec(pod: &PodGuard<'_>, want: &str) -> Result<(), String> {
    let out = pod
        .kubectl
        .run(&[
            "exec",
            "-n",
            "default",
            &pod.name,
            "-c",
            "c",
            "--",
            "cat",
            "/tmp/w/index.html",
        ])
        .map_err(|e| e.to_string())?;
    if out.contains(want) {
        Ok(())
    } else {
        Err(format!("exec printed {:?}", out.trim()))
    }
}

/// Starts `kubectl port-forward` to the pod's 8080 on a free loopback port (where
/// kubectl runs), fetches the page through it and stops kubectl.
fn kubectl_port_forward(
    pod: &PodGuard<'_>,
    log: &std::path::Path,
    want: &str,
) -> Result<(), String> {
    let k = pod.kubectl;
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = k.command(&[
        "port-forward",
        "-n",
        "default",
        &format!("pod/{}", pod.name),
        "--address",
        "127.0.0.1",
        ":8080",
    ]);
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out);
    let mut group = ProcessGroup::spawn("kubectl port-forward", &mut cmd)
        .map_err(|e| format!("cannot start kubectl port-forward: {e}"))?
        .with_grace(Duration::from_secs(2));
    // "Forwarding from 127.0.0.1:PORT -> 8080"
    let port = retry(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Ok(Some(status)) = group.try_status() {
            return Ok(Err(format!(
                "kubectl port-forward exited ({status}): {}",
                crate::message::one_line(text.trim())
            )));
        }
        text.lines()
            .find_map(|l| {
                let rest = l.strip_prefix("Forwarding from 127.0.0.1:")?;
                rest.split_whitespace().next()?.parse::<u16>().ok()
            })
            .map(Ok)
            .ok_or_else(|| format!("kubectl port-forward said {:?}", text.trim()))
    })??;
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let page = retry(Duration::from_secs(20), || {
        let mut s = k
            .dialer
            .connect(addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        let _ = s.take(64 * 1024).read_to_end(&mut body);
        let body = String::from_utf8_lossy(&body).into_owned();
        if body.contains(want) {
            Ok(body)
        } else {
            Err(format!("the page through {addr} was {:?}", body.trim()))
        }
    });
    group.terminate();
    page.map(|_| ())
}

/// `pod-kubectl`: on every node of the run, a pinned pod serves a page and prints a
/// line; `kubectl logs` shows the line, `kubectl exec` reads the page's file, `kubectl
/// port-forward` serves the page.
pub fn pod_kubectl(
    b: &Builtin,
    env: &mut CheckEnv<'_>,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let nodes = env.node_names()?;
    let m = env.member()?;
    for node in &nodes {
        reach_pod_on(b.param("image"), m.kubectl, node, env.scratch, attempt)?;
    }
    Ok(())
}

fn reach_pod_on(
    image: &str,
    kubectl: &crate::cluster::Kubectl,
    node: &str,
    scratch: &std::path::Path,
    attempt: &mut Attempt,
) -> Result<(), Failure> {
    let marker = format!("nodegate-kubectl-{}", std::process::id());
    let command = format!(
        "echo {marker}-log; mkdir -p /tmp/w && echo {marker}-page > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"
    );
    let pod = create_pod(kubectl, node, "kubectl", image, &command, attempt)?;
    wait_pod(&pod, node, attempt, "Running", |p| {
        p["status"]["phase"] == "Running" || p["status"]["phase"] == "Failed"
    })?;
    let within = Duration::from_secs(30).min(attempt.remaining());
    let log = scratch.join(format!("{}.port-forward.log", pod.name));
    let steps: [Step<'_>; 3] = [
        (
            "kubectl logs",
            Box::new(|| retry(within, || kubectl_logs(&pod, &format!("{marker}-log")))),
        ),
        (
            "kubectl exec",
            Box::new(|| retry(within, || kubectl_exec(&pod, &format!("{marker}-page")))),
        ),
        (
            "kubectl port-forward",
            Box::new(|| kubectl_port_forward(&pod, &log, &format!("{marker}-page"))),
        ),
    ];
    for (what, step) in steps {
        let t = Instant::now();
        step().map_err(|e| {
            Failure::mismatch(
                format!("{what} did not reach pod {} on {node}", pod.name),
                format!("{what} through the API server to the kubelet"),
                e,
            )
        })?;
        attempt.note(format!(
            "{node}: {what} ok in {:.1}s",
            t.elapsed().as_secs_f64()
        ));
    }
    let _ = std::fs::remove_file(&log);
    Ok(())
}
