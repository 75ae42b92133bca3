//! Error messages are one line (the project's rule: a refusal is one line naming the file
//! and the reason). Text from outside (a vendor's key, a parser's complaint quoting its
//! input) may hold newlines and other control characters: [`one_line`] escapes them.
//! Durations print rounded to what matters ([`duration`]).

use std::time::Duration;

/// `d` as people read it in a message: whole seconds from 10 s up (`2m 5s`, where a
/// deadline's remainder would print `1m 59s 999ms 980us 782ns`), tenths below (`1.5s`),
/// milliseconds under a second (`250ms`).
pub fn duration(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        let secs = (d.as_millis() + 500) / 1000;
        humantime::format_duration(Duration::from_secs(secs as u64)).to_string()
    } else if d >= Duration::from_secs(1) {
        let tenths = (d.as_millis() + 50) / 100;
        match tenths % 10 {
            0 => format!("{}s", tenths / 10),
            t => format!("{}.{t}s", tenths / 10),
        }
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `text` with every control character escaped (`\n`, `\u{1b}`...), so it prints as one
/// line; printable text, non-ASCII included, is kept as it is.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{duration, one_line};
    use std::time::Duration;

    #[test]
    fn durations_are_rounded_to_what_matters() {
        let d = |ms: u64| duration(Duration::from_millis(ms));
        assert_eq!(duration(Duration::new(119, 999_980_782)), "2m");
        assert_eq!(d(125_400), "2m 5s");
        assert_eq!(d(10_000), "10s");
        assert_eq!(d(1_500), "1.5s");
        assert_eq!(d(2_001), "2s");
        assert_eq!(d(250), "250ms");
        assert_eq!(duration(Duration::from_micros(300_400)), "300ms");
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(one_line("a\nb\tc\u{1b}[0m é"), "a\\nb\\tc\\u{1b}[0m é");
        assert_eq!(one_line("plain"), "plain");
    }
}
