//! `nodegate suites check`: the shipped suites name nothing image-specific (every path,
//! unit, binary and expected value comes from `${profile.*}` or `${manifest.*}`), and a
//! suite that does is refused line by line.

mod common;

/// `nodegate suites check` of `suites` against the test bed's profile, from `dir`.
fn check(suites: &str, dir: &std::path::Path) -> common::Run {
    let profile = common::repo("profiles/debian-fixture.toml");
    let args = ["suites", "check", "--suites", suites, "--profile", &profile];
    common::run(&args, dir)
}

#[test]
fn the_shipped_suites_name_nothing_image_specific() {
    let r = check(&common::repo("suites"), std::path::Path::new("."));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("nothing image-specific outside the profile and the manifest"),
        "{}",
        r.stdout
    );
}

#[test]
fn literals_that_belong_in_the_profile_are_named_by_file_check_and_variable() {
    let d = tempfile::tempdir().unwrap();
    let suite = d.path().join("vendor.toml");
    std::fs::write(
        &suite,
        r#"name = "vendor"
[[check]]
name = "kubelet_config"
description = "Reads the test bed's kubelet config."
run = "systemctl is-active kubelet && test -f /var/lib/kubelet/config.yaml && ${profile.components.containerd.path} --version"
expect = { stdout_contains = ["v1.20.2", "registry.k8s.io/pause:3.6"] }

[[check]]
name = "agent_unit"
description = "The agent's unit by name."
builtin = "service-active"
params = { unit = "nodegate-agent.service" }
"#,
    )
    .unwrap();
    let before = std::fs::read(&suite).unwrap();
    let r = check(suite.to_str().unwrap(), d.path());
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    for (check, literal, says) in [
        ("vendor::kubelet_config run", "`kubelet`", "is a unit"),
        (
            "vendor::kubelet_config run",
            "`/var/lib/kubelet/config.yaml`",
            "path of this image",
        ),
        (
            "vendor::kubelet_config expect",
            "`v1.20.2`",
            "${manifest.components",
        ),
        (
            "vendor::kubelet_config expect",
            "`registry.k8s.io/pause:3.6`",
            "${profile.expect.sandbox_image}",
        ),
        (
            "vendor::agent_unit params.unit",
            "`nodegate-agent.service`",
            "unit",
        ),
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(suite.to_str().unwrap())
                && l.contains(check)
                && l.contains(literal)
                && l.contains(says)),
            "{check} {literal}: {}",
            r.stdout
        );
    }
    assert_eq!(
        lines.len(),
        6,
        "five findings and the summary: {}",
        r.stdout
    );
    assert_eq!(
        std::fs::read(&suite).unwrap(),
        before,
        "the suite is not modified"
    );
    // A suite that does not parse is bad input, named.
    std::fs::write(&suite, "name = ").unwrap();
    let r = check(suite.to_str().unwrap(), d.path());
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("vendor.toml"), "{}", r.stderr);
}
