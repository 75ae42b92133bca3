//! Error messages are one line (the project's rule: a refusal is one line naming the file
//! and the reason). Text from outside (a vendor's key, a parser's complaint quoting its
//! input) may hold newlines and other control characters: [`one_line`] escapes them.

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
    use super::one_line;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(one_line("a\nb\tc\u{1b}[0m é"), "a\\nb\\tc\\u{1b}[0m é");
        assert_eq!(one_line("plain"), "plain");
    }
}
