//! The HTML page: one self-contained file (no network, no external scripts) that draws
//! the JSON report it carries: the verdict, a timeline per node, and every check.

use super::model::RunReport;

const TEMPLATE: &str = include_str!("page.html");

/// The page for `r`. The report goes in as JSON inside a `<script type=
/// "application/json">` element, `<` escaped so no text in it (a vendor's check message)
/// can end that element; the page's script renders it with text nodes only.
pub fn render(r: &RunReport) -> String {
    let json = serde_json::to_string(r)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c");
    let title = format!(
        "nodegate {}: {}",
        r.verdict,
        r.properties
            .get("image.name")
            .map(String::as_str)
            .unwrap_or("no image")
    );
    TEMPLATE
        .replacen("@TITLE@", &escape(&title), 1)
        .replacen("@REPORT@", &json, 1)
}

/// Text for an HTML element's content.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::Recorder;

    #[test]
    fn nothing_in_the_report_can_close_the_data_element_or_the_title() {
        let mut rec = Recorder::new(
            [(
                "image.name".to_string(),
                "</title><script>x</script>".to_string(),
            )]
            .into(),
        );
        rec.report.verdict = "failed".into();
        let page = render(&rec.report);
        assert_eq!(page.matches("</script>").count(), 2, "{page}");
        assert!(page.contains(
            "<title>nodegate failed: &lt;/title&gt;&lt;script&gt;x&lt;/script&gt;</title>"
        ));
        let marker = "id=\"nodegate-report\">";
        let start = page.find(marker).unwrap() + marker.len();
        let end = start + page[start..].find("</script>").unwrap();
        let back: RunReport = serde_json::from_str(&page[start..end]).unwrap();
        assert_eq!(back.properties["image.name"], "</title><script>x</script>");
        assert!(!page.contains("@REPORT@") && !page.contains("@TITLE@"));
    }
}
