//! What a run puts in its signed evidence (the format is [`crate::evidence`]'s).

use std::path::Path;

use crate::evidence::{Evidence, EvidenceError};
use crate::image::signature::default_signature_path;
use crate::report::{junit, page, RunReport};

use super::RunConfig;

/// Reads `path` into the evidence as `name`, if the file exists.
fn add_file(e: &mut Evidence, name: &str, path: &Path) -> Result<(), EvidenceError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            e.add(name, bytes);
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EvidenceError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn file_name(p: &Path, default: &str) -> String {
    p.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(default)
        .to_string()
}

/// An artifact's key as one plain file name (any other character becomes `_`).
fn flat_name(key: &str) -> String {
    let s: String = key
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        "artifact".into()
    } else {
        s
    }
}

/// The manifest and signature (and the bundle's), the effective profile, the suites as
/// read, the three reports drawn from the final record, the run's artifacts (consoles,
/// logs) and nodegate's version.
pub(super) fn gather(
    config: &RunConfig,
    suites: &[crate::suite::SuiteDef],
    report: &RunReport,
) -> Result<Evidence, EvidenceError> {
    let mut e = Evidence::default();
    let signed = [
        ("image", &config.manifest, &config.signature),
        ("upgrade-bundle", &config.upgrade_bundle, &None),
    ];
    for (dir, manifest, signature) in signed {
        if let Some(m) = manifest {
            add_file(
                &mut e,
                &format!("{dir}/{}", file_name(m, "manifest.json")),
                m,
            )?;
            let sig = signature
                .clone()
                .unwrap_or_else(|| default_signature_path(m));
            add_file(
                &mut e,
                &format!("{dir}/{}", file_name(&sig, "manifest.sig")),
                &sig,
            )?;
        }
    }
    e.add("profile.toml", config.profile.to_toml().into_bytes());
    for s in suites {
        e.add(
            &format!("suites/{}", file_name(&s.path, "suite.toml")),
            s.text.clone().into_bytes(),
        );
    }
    e.add(
        "report/report.json",
        crate::report::json_text(report).into_bytes(),
    );
    let xml = junit::to_xml(&junit::to_junit(report)).unwrap_or_default();
    e.add("report/junit.xml", xml.into_bytes());
    e.add("report/report.html", page::render(report).into_bytes());
    // This run's artifacts only (the folder may hold an earlier run's): under `logs/`,
    // by their path in the artifacts folder.
    for (name, path) in &report.artifacts {
        let inside = path
            .strip_prefix(&config.artifacts)
            .ok()
            .and_then(|p| p.to_str())
            .filter(|p| crate::evidence::valid_name(p))
            .map_or_else(|| flat_name(name), String::from);
        add_file(&mut e, &format!("logs/{inside}"), path)?;
    }
    let exe = std::env::current_exe()
        .and_then(|p| crate::image::digest::sha256_file(&p))
        .map_or_else(|_| "unknown".into(), |d| d.sha256);
    let about = format!(
        "nodegate {}\nexecutable sha256 {exe}\nreport schema {}\n",
        env!("CARGO_PKG_VERSION"),
        crate::report::model::SCHEMA_VERSION
    );
    e.add("nodegate.txt", about.into_bytes());
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::flat_name;
    use crate::evidence::valid_name;

    #[test]
    fn an_artifact_key_outside_the_folder_becomes_one_plain_name() {
        for key in ["node-1/console", "../../etc/passwd", "..", "", "a\\b\nc"] {
            let n = flat_name(key);
            assert!(valid_name(&n) && !n.contains('/'), "{key:?} -> {n:?}");
        }
        assert_eq!(flat_name("node-1/console.log"), "node-1_console.log");
    }
}
