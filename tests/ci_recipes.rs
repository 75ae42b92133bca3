//! The CI recipes in ci/examples/: each file passes its engine's schema (check-jsonschema
//! from PyPI with its vendored GitHub Actions and GitLab CI schemas, offline), and the
//! shard/merge flow they describe, run here as they write it with M=3, gives the same
//! testcases as one unsharded run.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn readers() -> PathBuf {
    common::testbed("readers", "venv/bin/check-jsonschema")
}

/// check-jsonschema with a builtin schema; its exit status and output.
fn schema_check(schema: &str, file: &Path) -> (bool, String) {
    let out = Command::new(readers().join("venv/bin/check-jsonschema"))
        .args(["--builtin-schema", schema, "--no-cache"])
        .arg(file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The recipe as JSON (read with the ruamel.yaml check-jsonschema brings).
fn yaml(file: &str) -> serde_json::Value {
    let script = "import sys, json; from ruamel.yaml import YAML; \
        print(json.dumps(YAML(typ='safe').load(open(sys.argv[1]))))";
    let out = Command::new(readers().join("venv/bin/python"))
        .args(["-c", script, &common::repo(file)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn each_recipe_passes_its_engines_schema_and_a_broken_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    for (file, schema, broken) in [
        (
            "ci/examples/github-actions.yml",
            "vendor.github-workflows",
            ("runs-on:", "runs_on:"),
        ),
        (
            "ci/examples/gitlab-ci.yml",
            "vendor.gitlab-ci",
            ("when: always", "when: sometimes"),
        ),
    ] {
        let (ok, text) = schema_check(schema, Path::new(&common::repo(file)));
        assert!(ok, "{file}: {text}");
        let bad = dir.path().join(Path::new(file).file_name().unwrap());
        let source = std::fs::read_to_string(common::repo(file)).unwrap();
        std::fs::write(&bad, source.replace(broken.0, broken.1)).unwrap();
        let (ok, text) = schema_check(schema, &bad);
        assert!(
            !ok,
            "{file} with {:?}: the schema check should refuse it: {text}",
            broken.1
        );
    }
}

/// Testcases (suite, name) of a JUnit file.
fn cases(junit: &Path) -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(junit).unwrap();
    let r = quick_junit::Report::deserialize_from_str(&text).unwrap();
    r.test_suites
        .iter()
        .flat_map(|s| {
            s.test_cases
                .iter()
                .map(move |c| (s.name.to_string(), c.name.to_string()))
        })
        .collect()
}

/// Runs one `run:`/`script:` line of a recipe in `dir` with `env`, as its job would.
fn job_line(line: &str, dir: &Path, env: &[(&str, String)]) -> i32 {
    let bin = Path::new(env!("CARGO_BIN_EXE_nodegate")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let line = line.replace("ci/examples/", &common::repo("ci/examples/"));
    let status = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &line])
        .current_dir(dir)
        .env("PATH", path)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .unwrap();
    status.code().unwrap_or(-1)
}

#[test]
fn the_recipes_shard_and_merge_flow_gives_the_testcases_of_one_unsharded_run() {
    let gh = yaml("ci/examples/github-actions.yml");
    let gl = yaml("ci/examples/gitlab-ci.yml");
    // Both shard three ways with the same script, and merge with `nodegate report merge`.
    assert_eq!(
        gh["jobs"]["gate"]["strategy"]["matrix"]["shard"],
        serde_json::json!([1, 2, 3])
    );
    assert_eq!(
        gl["gate"]["parallel"]["matrix"][0]["SHARD"],
        serde_json::json!(["1", "2", "3"])
    );
    assert_eq!(gh["env"]["SHARDS"], "3");
    assert_eq!(gl["variables"]["SHARDS"], "3");
    let gh_steps = gh["jobs"]["gate"]["steps"].as_array().unwrap();
    let gh_shard = gh_steps
        .iter()
        .find_map(|s| s["run"].as_str().filter(|r| r.contains("shard.sh")))
        .unwrap();
    assert_eq!(gl["gate"]["script"][0].as_str(), Some(gh_shard));
    let gh_merge = gh["jobs"]["merge"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|s| s["run"].as_str().filter(|r| r.contains("report merge")))
        .unwrap()
        .to_string();
    let gl_merge = gl["merge"]["script"][0].as_str().unwrap().to_string();

    // The flow, on the test bed's signed image, the pre-boot checks (nothing boots).
    let signed = common::testbed("signed", "trust");
    let dir = tempfile::tempdir().unwrap();
    let env = |shard: usize, shards: usize, out: &str| {
        vec![
            ("SHARD", shard.to_string()),
            ("SHARDS", shards.to_string()),
            ("OUT", out.to_string()),
            (
                "MANIFEST",
                signed
                    .join("v1-direct/node.manifest.json")
                    .display()
                    .to_string(),
            ),
            ("TRUST", signed.join("trust").display().to_string()),
            ("PROFILE", common::repo("profiles/debian-fixture.toml")),
            (
                "BUNDLE",
                signed
                    .join("bundle-v2/bundle.manifest.json")
                    .display()
                    .to_string(),
            ),
        ]
    };
    let selection = " --tag pre-boot";
    let code = job_line(
        &format!("{gh_shard}{selection}"),
        dir.path(),
        &env(1, 1, "whole"),
    );
    assert_eq!(code, 0, "the unsharded run");
    let whole = cases(&dir.path().join("whole/junit.xml"));
    assert!(whole.len() >= 4, "{whole:?}");
    for m in 1..=3 {
        // The GitHub job's download step puts shard M in out/nodegate-shard-M; GitLab's
        // artifacts keep out/shard-M.
        for out in [format!("out/nodegate-shard-{m}"), format!("out/shard-{m}")] {
            let code = job_line(
                &format!("{gh_shard}{selection}"),
                dir.path(),
                &env(m, 3, &out),
            );
            assert_eq!(code, 0, "shard {m}/3");
        }
    }
    for merge in [&gh_merge, &gl_merge] {
        assert_eq!(job_line(merge, dir.path(), &[]), 0, "{merge}");
        let merged = cases(&dir.path().join("out/junit.xml"));
        assert_eq!(
            merged, whole,
            "{merge}: the merged shards hold other testcases"
        );
        let xml = std::fs::read_to_string(dir.path().join("out/junit.xml")).unwrap();
        common::junit_rules::assert_strict("merged shards", &xml);
        std::fs::remove_file(dir.path().join("out/junit.xml")).unwrap();
    }
}
