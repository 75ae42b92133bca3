//! The strict JUnit readers' rules, applied to a file nodegate wrote:
//! - the Jenkins xunit plugin's junit-10.xsd, as PyPI ships it (fixtures/build, step
//!   `readers`), through xmllint;
//! - Maven Surefire's test-report schema, which no registry reachable here ships: its
//!   rules written as this module's own assertions, applied to each `<testsuite>`, and to
//!   the files `nodegate report split` makes (Surefire's layout: one testsuite per file,
//!   `<testsuite>` as the root), and those files read by Surefire's own report parser
//!   (Debian's libsurefire-java, tests/data/SurefireRead.java) with the same counts;
//! - junitparser (PyPI), a lenient reader, must load it and count the same testcases.

use roxmltree::{Document, Node};

/// Asserts `xml` meets all of them; `what` names it in failures.
pub fn assert_strict(what: &str, xml: &str) {
    let readers = super::testbed("readers", "junit-10.xsd");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("junit.xml");
    std::fs::write(&file, xml).unwrap();
    let out = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(readers.join("junit-10.xsd"))
        .arg(&file)
        .output()
        .expect("xmllint (libxml2-utils) runs");
    assert!(
        out.status.success(),
        "{what}: not valid against the xunit plugin's junit-10.xsd:\n{}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = Document::parse(xml).unwrap_or_else(|e| panic!("{what}: not XML: {e}"));
    let suites: Vec<Node> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testsuite"))
        .collect();
    assert!(!suites.is_empty(), "{what}: no testsuite");
    let mut cases = 0;
    for s in &suites {
        surefire_suite(what, s);
        cases += s.children().filter(|n| n.has_tag_name("testcase")).count();
    }
    let split = dir.path().join("split");
    let out = super::nodegate()
        .args(["report", "split"])
        .arg(&file)
        .arg("-o")
        .arg(&split)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: report split: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut split_cases = 0;
    let mut files = 0;
    let mut expected = Vec::new();
    for f in std::fs::read_dir(&split).unwrap() {
        let path = f.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let d = Document::parse(&text).unwrap_or_else(|e| panic!("{what}: split file: {e}"));
        let root = d.root_element();
        assert!(
            root.has_tag_name("testsuite"),
            "{what}: a Surefire file's root is <testsuite>"
        );
        surefire_suite(what, &root);
        expected.push((path, outcomes(&root)));
        split_cases += root
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .count();
        files += 1;
    }
    assert_eq!(files, suites.len(), "{what}: one file per testsuite");
    assert_eq!(
        split_cases, cases,
        "{what}: the split files hold every testcase"
    );
    surefire_parser(what, &readers, &expected);
    let script = "import sys; from junitparser import JUnitXml\n\
        x = JUnitXml.fromfile(sys.argv[1])\n\
        print(sum(1 for s in x for c in s))";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&file)
        .env("PYTHONPATH", readers.join("junitparser.whl"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{what}: junitparser cannot read it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counted: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(counted, cases, "{what}: junitparser counts other testcases");
}

/// Each testcase's outcome as Surefire's parser names it, in file order.
fn outcomes(suite: &Node) -> Vec<String> {
    suite
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|c| {
            let has = |t: &str| c.children().any(|k| k.has_tag_name(t));
            let o = if has("failure") {
                "failure"
            } else if has("error") {
                "error"
            } else if has("skipped") {
                "skipped"
            } else {
                "ok"
            };
            format!(
                "case {} outcome={o}",
                c.attribute("name").unwrap_or_default()
            )
        })
        .collect()
}

/// Surefire's report parser reads each split file as valid, as one suite whose counts
/// match its testcases, with each testcase's outcome as the file says.
fn surefire_parser(
    what: &str,
    readers: &std::path::Path,
    files: &[(std::path::PathBuf, Vec<String>)],
) {
    let jars = readers.join("surefire");
    let cp = format!(
        "{}:{}",
        jars.join("surefire-report-parser.jar").display(),
        jars.join("surefire-logger-api.jar").display()
    );
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/SurefireRead.java");
    let out = std::process::Command::new("java")
        .arg("-cp")
        .arg(&cp)
        .arg(&source)
        .args(files.iter().map(|(p, _)| p))
        .output()
        .expect("java (openjdk-17-jdk-headless) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: Surefire's report parser failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blocks: Vec<&str> = text.split("file ").filter(|b| !b.is_empty()).collect();
    assert_eq!(blocks.len(), files.len(), "{what}: Surefire read:\n{text}");
    for (block, (path, cases)) in blocks.iter().zip(files) {
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(
            lines[0],
            format!("{} valid=true suites=1", path.display()),
            "{what}: Surefire's parser on a split file"
        );
        let count = |o: &str| {
            cases
                .iter()
                .filter(|c| c.ends_with(&format!("={o}")))
                .count()
        };
        let suite = lines[1];
        for (key, n) in [
            ("tests", cases.len()),
            ("failures", count("failure")),
            ("errors", count("error")),
            ("skipped", count("skipped")),
            ("cases", cases.len()),
        ] {
            assert!(
                suite.split(' ').any(|w| w == format!("{key}={n}")),
                "{what}: Surefire counts {suite:?}, the file has {key}={n}"
            );
        }
        assert_eq!(
            &lines[2..],
            cases.as_slice(),
            "{what}: Surefire's testcases"
        );
    }
}

fn attrs(n: &Node) -> Vec<String> {
    n.attributes().map(|a| a.name().to_string()).collect()
}

/// `n` has every attribute of `required` and none outside `allowed` (and `required`).
fn attributes(what: &str, n: &Node, required: &[&str], allowed: &[&str]) {
    let tag = n.tag_name().name();
    for r in required {
        assert!(n.has_attribute(*r), "{what}: <{tag}> lacks `{r}`");
    }
    for a in attrs(n) {
        assert!(
            required.contains(&a.as_str()) || allowed.contains(&a.as_str()),
            "{what}: Surefire's schema has no `{a}` on <{tag}>"
        );
    }
}

/// Surefire's time: digits, an optional fraction of at most three.
fn surefire_time(what: &str, n: &Node) {
    if let Some(t) = n.attribute("time") {
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        let ok = !int.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit() || b == b',')
            && frac.len() <= 3
            && frac.bytes().all(|b| b.is_ascii_digit());
        assert!(ok, "{what}: time {t:?} is not Surefire's SUREFIRE_TIME");
    }
}

fn elements<'a>(n: &Node<'a, 'a>) -> Vec<Node<'a, 'a>> {
    n.children().filter(|c| c.is_element()).collect()
}

fn surefire_suite(what: &str, s: &Node) {
    attributes(
        what,
        s,
        &["name", "tests", "errors", "skipped", "failures"],
        &["version", "time", "group"],
    );
    surefire_time(what, s);
    // properties*, then testcase*.
    let mut seen_case = false;
    for c in elements(s) {
        match c.tag_name().name() {
            "properties" => {
                assert!(!seen_case, "{what}: <properties> after a testcase");
                for p in elements(&c) {
                    assert!(
                        p.has_tag_name("property"),
                        "{what}: <{}> in <properties>",
                        p.tag_name().name()
                    );
                    attributes(what, &p, &["name", "value"], &[]);
                }
            }
            "testcase" => {
                seen_case = true;
                surefire_case(what, &c);
            }
            other => panic!("{what}: Surefire's schema has no <{other}> in <testsuite>"),
        }
    }
}

/// The order Surefire's schema gives a testcase's children, and how many of each.
const CASE_ORDER: [(&str, bool); 9] = [
    ("failure", true),
    ("rerunFailure", true),
    ("flakyFailure", true),
    ("skipped", false),
    ("error", false),
    ("rerunError", true),
    ("flakyError", true),
    ("system-out", false),
    ("system-err", false),
];

fn surefire_case(what: &str, c: &Node) {
    attributes(what, c, &["name", "time"], &["classname", "group"]);
    surefire_time(what, c);
    let mut at = 0;
    let mut last: Option<&str> = None;
    for e in elements(c) {
        let tag = e.tag_name().name();
        let i = CASE_ORDER
            .iter()
            .position(|(t, _)| *t == tag)
            .unwrap_or_else(|| panic!("{what}: Surefire's schema has no <{tag}> in <testcase>"));
        assert!(
            i >= at,
            "{what}: <{tag}> comes after <{}>",
            CASE_ORDER[at].0
        );
        assert!(
            i > at || CASE_ORDER[i].1 || last != Some(tag),
            "{what}: more than one <{tag}>"
        );
        at = i;
        last = Some(tag);
        match tag {
            "failure" | "error" => attributes(what, &e, &["type"], &["message"]),
            "skipped" => attributes(what, &e, &[], &["message"]),
            "rerunFailure" | "flakyFailure" | "rerunError" | "flakyError" => {
                attributes(what, &e, &["type"], &["message"]);
                let kids: Vec<&str> = elements(&e).iter().map(|k| k.tag_name().name()).collect();
                assert_eq!(
                    kids.first(),
                    Some(&"stackTrace"),
                    "{what}: <{tag}> must start with <stackTrace>"
                );
                let rest = &kids[1..];
                assert!(
                    matches!(
                        rest,
                        [] | ["system-out"] | ["system-err"] | ["system-out", "system-err"]
                    ),
                    "{what}: <{tag}> children {kids:?}"
                );
            }
            _ => assert!(attrs(&e).is_empty(), "{what}: attributes on <{tag}>"),
        }
    }
}
