//! The HTML report as a real browser shows it: headless Chromium (Debian's `chromium`)
//! renders the page, takes a screenshot and dumps the DOM after the page's script ran.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A page rendered by Chromium.
pub struct Rendered {
    /// The DOM after the page's script ran, serialized.
    pub dom: String,
    /// The screenshot.
    pub screenshot: PathBuf,
}

fn chromium(page: &Path, args: &[String]) -> Vec<u8> {
    let profile = tempfile::tempdir().unwrap();
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        // This machine's network is closed: no background connections to refuse.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(["--hide-scrollbars", "--window-size=1400,1000"])
    .args(args)
    .arg(format!("file://{}", page.display()));
    let out = nodegate::process::run_bounded(&mut c, None, Duration::from_secs(120))
        .expect("chromium (Debian's package) runs");
    assert!(out.status.success(), "chromium: {}", out.stderr_text());
    out.stdout
}

/// Renders `page`; the screenshot goes beside it (`NAME.png`).
pub fn render(page: &Path) -> Rendered {
    let page = std::path::absolute(page).unwrap();
    let screenshot = page.with_extension("png");
    chromium(&page, &[format!("--screenshot={}", screenshot.display())]);
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a blank screenshot?"
    );
    let dom = String::from_utf8(chromium(&page, &["--dump-dom".into()])).unwrap();
    assert!(
        dom.contains("data-rendered=\"yes\""),
        "the page's script did not finish: {dom}"
    );
    Rendered { dom, screenshot }
}

impl Rendered {
    /// The text of the element whose start tag contains `marker` (its first text node).
    pub fn text_after(&self, marker: &str) -> String {
        let at = self
            .dom
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker} in the rendered page"));
        let rest = &self.dom[at..];
        let start = rest.find('>').unwrap() + 1;
        let end = rest[start..].find('<').unwrap() + start;
        html_text(&rest[start..end])
    }

    /// The verdict shown at the top.
    pub fn verdict(&self) -> String {
        self.text_after("id=\"verdict\"")
    }

    /// The message cell of check `id`'s row, and its status.
    pub fn check(&self, id: &str) -> (String, String) {
        let marker = format!("data-check=\"{id}\"");
        let at = self
            .dom
            .find(&marker)
            .unwrap_or_else(|| panic!("no row for {id} in the rendered page"));
        let row = &self.dom[at..];
        let row = &row[..row.find("</tr>").unwrap()];
        let status = row
            .split("data-status=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default()
            .to_string();
        let message = Rendered {
            dom: row.to_string(),
            screenshot: PathBuf::new(),
        }
        .text_after("class=\"message\"");
        (status, message)
    }

    /// The timeline's rows: each node's name and the kinds of its items, in order.
    pub fn timeline(&self) -> Vec<(String, Vec<String>)> {
        self.dom
            .split("class=\"node-row\" data-node=\"")
            .skip(1)
            .map(|row| {
                let name = html_text(row.split('"').next().unwrap());
                let kinds = row
                    .split("data-kind=\"")
                    .skip(1)
                    .map(|k| k.split('"').next().unwrap().to_string())
                    .collect();
                (name, kinds)
            })
            .collect()
    }
}

fn html_text(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}
