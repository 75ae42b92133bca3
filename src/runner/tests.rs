//! The runner against a scripted environment: retries, flaky, fail-fast, stops, order.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::suite::builtin::Builtin;
use crate::suite::CheckKind;

fn check(name: &str, need: Need, destructive: bool) -> Check {
    Check {
        suite: "s".into(),
        name: name.into(),
        description: String::new(),
        tags: vec![],
        timeout: Duration::from_secs(1),
        destructive,
        ignore: None,
        need,
        requires: Vec::new(),
        kind: CheckKind::Builtin(Builtin {
            name: "guest-files".into(),
            params: Default::default(),
        }),
    }
}

/// Results per check id, one per attempt; missing means pass.
#[derive(Default)]
struct Scripted {
    results: HashMap<String, Vec<Result<(), Failure>>>,
    refuse: Option<(Need, StopKind)>,
    prepared: Vec<(Need, bool)>,
    released: usize,
    failures_seen: Vec<String>,
    panic_on: Option<String>,
    decided: Option<String>,
    unavailable: Option<String>,
    ran: Vec<String>,
}

impl Environment for Scripted {
    fn prepare(&mut self, need: Need, _: &mut dyn FnMut(Event)) -> Result<(), Stop> {
        self.prepared.push((need, false));
        match self.refuse {
            Some((n, kind)) if need >= n => Err(Stop {
                kind,
                phase: Phase::Boot,
                reason: "qemu: no".into(),
            }),
            _ => Ok(()),
        }
    }
    fn prepare_fresh(&mut self, need: Need, e: &mut dyn FnMut(Event)) -> Result<(), Stop> {
        self.prepare(need, e)?;
        self.prepared.last_mut().unwrap().1 = true;
        Ok(())
    }
    fn release_fresh(&mut self, _: &mut dyn FnMut(Event)) {
        self.released += 1;
    }
    fn run(&mut self, c: &Check, _: &mut Attempt) -> Result<(), Failure> {
        self.ran.push(c.id());
        if self.panic_on.as_deref() == Some(c.name.as_str()) {
            panic!("boom");
        }
        match self.results.get_mut(&c.id()) {
            Some(v) if !v.is_empty() => v.remove(0),
            _ => Ok(()),
        }
    }
    fn on_failure(&mut self, c: &Check, _: &mut dyn FnMut(Event)) {
        self.failures_seen.push(c.id());
    }
    fn decided(&mut self, c: &Check) -> Option<Failure> {
        (self.decided.as_deref() == Some(c.name.as_str())).then(|| Failure::new("refused"))
    }
    fn unavailable(&mut self, c: &Check) -> Option<String> {
        (self.unavailable.as_deref() == Some(c.name.as_str())).then(|| "no cluster network".into())
    }
}

fn fail(m: &str) -> Result<(), Failure> {
    Err(Failure::new(m))
}

fn go(checks: &[Check], env: &mut Scripted, options: RunOptions) -> (i32, Vec<CheckRecord>) {
    let mut records = Vec::new();
    let (code, _stop) = run(checks, &Selection::default(), options, env, &mut |e| {
        if let Event::CheckFinished(r) = e {
            records.push(*r)
        }
    });
    (code, records)
}

#[test]
fn a_pass_after_a_failure_is_flaky_not_passed() {
    let checks = vec![check("a", Need::Guest, false)];
    let mut env = Scripted::default();
    env.results.insert("s::a".into(), vec![fail("first")]);
    let (code, r) = go(
        &checks,
        &mut env,
        RunOptions {
            retries: 2,
            fail_fast: false,
        },
    );
    assert_eq!(code, exit::PASS);
    assert_eq!(r[0].status, Status::Flaky);
    assert_eq!(r[0].attempts.len(), 2);
    assert_eq!(r[0].failure().unwrap().message, "first");
}

#[test]
fn a_check_whose_requirement_failed_fails_at_once_naming_it_and_others_run() {
    let mut b = check("b", Need::Guest, false);
    b.requires = vec!["s::a".into()];
    let mut c = check("c", Need::Guest, false);
    c.requires = vec!["s::b".into()];
    let mut d = check("d", Need::Guest, false);
    d.requires = vec!["s::e".into()];
    let checks = vec![
        check("a", Need::Guest, false),
        b,
        c,
        d,
        check("e", Need::Guest, false),
    ];
    let mut env = Scripted::default();
    env.results
        .insert("s::a".into(), vec![fail("never registered\nsecond line")]);
    let (code, r) = go(&checks, &mut env, RunOptions::default());
    assert_eq!(code, exit::CHECKS_FAILED);
    let status: Vec<Status> = r.iter().map(|r| r.status).collect();
    use Status::*;
    assert_eq!(status, vec![Failed, Failed, Failed, Passed, Passed]);
    assert_eq!(
        r[1].failure().unwrap().message,
        "not tried: it requires s::a, which failed: never registered"
    );
    assert_eq!(
        r[2].failure().unwrap().message,
        "not tried: it requires s::b, which failed: not tried: it requires s::a, which failed: never registered"
    );
    assert_eq!(
        env.ran,
        vec!["s::a", "s::d", "s::e"],
        "b and c were not tried; d ran (e had not failed before it)"
    );
}

#[test]
fn a_check_the_environment_cannot_hold_is_not_run_with_its_reason_and_prepares_nothing() {
    let checks = vec![
        check("a", Need::Node, false),
        check("b", Need::Guest, false),
    ];
    let mut env = Scripted {
        unavailable: Some("a".into()),
        ..Default::default()
    };
    let (code, r) = go(&checks, &mut env, RunOptions::default());
    assert_eq!(r[0].status, Status::NotRun);
    assert_eq!(r[0].reason.as_deref(), Some("no cluster network"));
    assert!(r[0].attempts.is_empty(), "never passed, never attempted");
    assert_eq!(r[1].status, Status::Passed);
    assert_eq!(
        env.prepared,
        vec![(Need::Guest, false)],
        "nothing booted for a"
    );
    assert_eq!(code, exit::PASS);
}

#[test]
fn a_check_using_an_unset_profile_value_is_not_run_with_its_reason_and_boots_nothing() {
    let mut unset = check("a", Need::Manifest, false);
    unset.kind =
        CheckKind::Unset("uses `${profile.expect.x}`, which the profile does not set".into());
    let checks = vec![unset, check("b", Need::Guest, false)];
    let mut env = Scripted::default();
    let (code, r) = go(&checks, &mut env, RunOptions::default());
    assert_eq!(r[0].status, Status::NotRun);
    assert_eq!(
        r[0].reason.as_deref(),
        Some("uses `${profile.expect.x}`, which the profile does not set")
    );
    assert!(r[0].attempts.is_empty());
    assert_eq!(env.ran, ["s::b"], "a never ran");
    assert_eq!(env.prepared, vec![(Need::Guest, false)]);
    assert_eq!(code, exit::PASS);
}

#[test]
fn without_retries_a_failure_fails_the_run() {
    let checks = vec![
        check("a", Need::Guest, false),
        check("b", Need::Guest, false),
    ];
    let mut env = Scripted::default();
    env.results
        .insert("s::a".into(), vec![fail("x"), fail("y")]);
    let (code, r) = go(&checks, &mut env, RunOptions::default());
    assert_eq!(code, exit::CHECKS_FAILED);
    assert_eq!((r[0].status, r[1].status), (Status::Failed, Status::Passed));
    assert_eq!(env.failures_seen, vec!["s::a"]);
    // Retries exhausted: still failed, every attempt kept.
    let mut env = Scripted::default();
    env.results
        .insert("s::a".into(), vec![fail("x"), fail("y")]);
    let (_, r) = go(
        &checks,
        &mut env,
        RunOptions {
            retries: 1,
            fail_fast: false,
        },
    );
    assert_eq!(r[0].status, Status::Failed);
    assert_eq!(r[0].failure().unwrap().message, "y");
}

#[test]
fn fail_fast_leaves_the_rest_not_run_with_a_reason() {
    let checks = vec![
        check("a", Need::Guest, false),
        check("b", Need::Guest, false),
        check("c", Need::Node, false),
    ];
    let mut env = Scripted::default();
    env.results.insert("s::a".into(), vec![fail("x")]);
    let (code, r) = go(
        &checks,
        &mut env,
        RunOptions {
            retries: 0,
            fail_fast: true,
        },
    );
    assert_eq!(code, exit::CHECKS_FAILED);
    assert_eq!(r[1].status, Status::NotRun);
    assert!(r[2]
        .reason
        .as_deref()
        .unwrap()
        .contains("fail-fast: s::a failed"));
}

#[test]
fn a_boot_failure_stops_guest_checks_but_not_manifest_checks() {
    let checks = order(vec![
        check("g", Need::Guest, false),
        check("m", Need::Manifest, false),
    ]);
    assert_eq!(checks[0].name, "m");
    let mut env = Scripted {
        refuse: Some((Need::Guest, StopKind::Infrastructure)),
        ..Default::default()
    };
    let (code, r) = go(&checks, &mut env, RunOptions::default());
    assert_eq!(code, exit::ENVIRONMENT);
    assert_eq!(r[0].status, Status::Passed);
    assert_eq!(r[1].status, Status::NotRun);
    assert!(r[1].reason.as_deref().unwrap().contains("qemu: no"));
    let mut env = Scripted {
        refuse: Some((Need::Guest, StopKind::Integrity)),
        ..Default::default()
    };
    assert_eq!(
        go(&checks, &mut env, RunOptions::default()).0,
        exit::INTEGRITY
    );
}

#[test]
fn a_node_that_does_not_join_fails_the_join_check_wherever_it_sits() {
    let mut ready = check("ready", Need::Node, false);
    ready.kind = CheckKind::Builtin(Builtin {
        name: "node-ready".into(),
        params: Default::default(),
    });
    // The join is attempted for `first`; `ready` comes later and still fails by name.
    let checks = vec![
        check("g", Need::Guest, false),
        check("first", Need::Node, false),
        ready,
        check("later", Need::Node, true),
    ];
    let mut env = Scripted {
        refuse: Some((Need::Node, StopKind::Node)),
        ..Default::default()
    };
    let (code, r) = go(&checks, &mut env, RunOptions::default());
    assert_eq!(
        code,
        exit::CHECKS_FAILED,
        "an image fault, not the environment"
    );
    let status: Vec<Status> = r.iter().map(|r| r.status).collect();
    assert_eq!(
        status,
        [
            Status::Passed,
            Status::NotRun,
            Status::Failed,
            Status::NotRun
        ]
    );
    assert_eq!(r[2].failure().unwrap().message, "qemu: no");
    assert_eq!(r[1].reason.as_deref(), Some("node: qemu: no"));
    // Without a check that judges the join left to run, the check that needed the node
    // fails with the reason: exit 1 always comes with a failed check.
    let unjudged = [&checks[..2], &checks[3..]].concat();
    let mut env = Scripted {
        refuse: Some((Need::Node, StopKind::Node)),
        ..Default::default()
    };
    let (code, r) = go(&unjudged, &mut env, RunOptions::default());
    assert_eq!(code, exit::CHECKS_FAILED);
    let status: Vec<Status> = r.iter().map(|r| r.status).collect();
    assert_eq!(status, [Status::Passed, Status::Failed, Status::NotRun]);
    assert_eq!(r[1].failure().unwrap().message, "qemu: no");
    // The same stop as infrastructure: the join check is not run, exit 5.
    let mut env = Scripted {
        refuse: Some((Need::Node, StopKind::Infrastructure)),
        ..Default::default()
    };
    let (code, r) = go(&checks, &mut env, RunOptions::default());
    assert_eq!(code, exit::ENVIRONMENT);
    assert_eq!(r[2].status, Status::NotRun);
}

#[test]
fn a_boot_refused_by_secure_boot_fails_the_boot_and_secure_boot_checks_by_name() {
    let builtin = |name: &str, b: &str| {
        let mut c = check(name, Need::Guest, false);
        c.kind = CheckKind::Builtin(Builtin {
            name: b.into(),
            params: Default::default(),
        });
        c
    };
    let checks = vec![
        check("files", Need::Guest, false),
        builtin("secure_boot", "secure-boot"),
        builtin("boots", "guest-boots"),
        check("later", Need::Node, false),
    ];
    for (kind, secure_boot_fails) in [(StopKind::SecureBoot, true), (StopKind::Image, false)] {
        let mut env = Scripted {
            refuse: Some((Need::Guest, kind)),
            ..Default::default()
        };
        let (code, r) = go(&checks, &mut env, RunOptions::default());
        assert_eq!(code, exit::CHECKS_FAILED, "{kind:?}");
        let status: Vec<Status> = r.iter().map(|r| r.status).collect();
        let judged = if secure_boot_fails {
            Status::Failed
        } else {
            Status::NotRun
        };
        assert_eq!(
            status,
            [Status::NotRun, judged, Status::Failed, Status::NotRun],
            "{kind:?}"
        );
        assert_eq!(r[2].failure().unwrap().message, "qemu: no");
    }
}

#[test]
fn destructive_checks_run_last_on_a_fresh_vm_per_attempt() {
    let checks = order(vec![
        check("d", Need::Node, true),
        check("n", Need::Node, false),
    ]);
    assert_eq!(checks[1].name, "d");
    let mut env = Scripted::default();
    env.results.insert("s::d".into(), vec![fail("x")]);
    let (_, r) = go(
        &checks,
        &mut env,
        RunOptions {
            retries: 1,
            fail_fast: false,
        },
    );
    assert_eq!(r[1].status, Status::Flaky);
    assert_eq!(
        env.prepared,
        vec![(Need::Node, false), (Need::Node, true), (Need::Node, true)]
    );
    assert_eq!(env.released, 2);
}

#[test]
fn the_pool_checks_run_after_everything_else_in_suite_order_on_one_pool() {
    let checks = order(vec![
        check("skew", Need::Pool, false),
        check("d", Need::Node, true),
        check("upgrade", Need::Pool, false),
        check("m", Need::Manifest, false),
        check("n", Need::Node, false),
    ]);
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["m", "n", "d", "skew", "upgrade"]);
    let mut env = Scripted::default();
    let (code, r) = go(&checks, &mut env, RunOptions::default());
    assert_eq!(code, exit::PASS);
    assert!(r.iter().all(|r| r.status == Status::Passed));
    // The manifest, one shared node, one fresh one, then the pool, prepared for each of
    // its checks (the environment makes it once).
    assert_eq!(
        env.prepared,
        vec![
            (Need::Manifest, false),
            (Need::Node, false),
            (Need::Node, true),
            (Need::Pool, false),
            (Need::Pool, false)
        ]
    );
}

#[test]
fn a_panicking_check_fails_and_the_run_goes_on() {
    let checks = vec![
        check("p", Need::Guest, false),
        check("q", Need::Guest, false),
    ];
    let mut env = Scripted {
        panic_on: Some("p".into()),
        ..Default::default()
    };
    let (code, r) = go(&checks, &mut env, RunOptions::default());
    assert_eq!(code, exit::CHECKS_FAILED);
    assert!(r[0]
        .failure()
        .unwrap()
        .message
        .contains("check panicked: boom"));
    assert_eq!(r[1].status, Status::Passed);
}

#[test]
fn a_check_decided_before_boot_fails_without_preparing_anything() {
    let mut env = Scripted {
        decided: Some("upgrade".into()),
        ..Scripted::default()
    };
    let checks = [check("upgrade", Need::Node, true)];
    let (code, recs) = go(&checks, &mut env, RunOptions::default());
    assert_eq!(code, crate::exit::CHECKS_FAILED);
    assert_eq!(recs[0].status, Status::Failed);
    assert_eq!(recs[0].failure().unwrap().message, "refused");
    assert!(
        env.prepared.is_empty(),
        "nothing was booted: {:?}",
        env.prepared
    );
}
