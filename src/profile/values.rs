//! Typed profile values. Every value that reaches a guest shell command, the seed, the
//! SSH login or a QEMU option is one of these: parsed and checked when the profile is
//! loaded (the error names file, line and key), and only ever rendered from the type.

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// Declares a string newtype checked by `$check` on deserialization.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(&s).map(|()| $name(s))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = String;
            fn try_from(s: &str) -> Result<Self, String> {
                $name::try_from(s.to_string())
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl $name {
            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// A value known to be valid (defaults, tests); panics otherwise.
            pub fn known(s: &str) -> $name {
                $name::try_from(s).unwrap_or_else(|e| panic!("{e}"))
            }
        }
    };
}

fn printable(what: &str, s: &str, extra: impl Fn(char) -> bool) -> Result<(), String> {
    match s.chars().find(|c| !(c.is_ascii_graphic() || extra(*c))) {
        Some(c) => Err(format!("{what} {s:?}: character {c:?} is not allowed")),
        None => Ok(()),
    }
}

const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".socket",
    ".target",
    ".mount",
    ".automount",
    ".timer",
    ".path",
    ".slice",
    ".scope",
    ".device",
    ".swap",
];

checked_string!(
    /// A systemd unit name: `[A-Za-z0-9:_.@-]`, ending in a unit type (`.service`...).
    UnitName,
    |s| {
        let ok_chars = !s.is_empty()
            && s.len() <= 255
            && !s.starts_with('-')
            && s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ":_.@-".contains(c));
        if !ok_chars {
            return Err(format!(
                "unit name {s:?}: only letters, digits and `:_.@-` are allowed (and no leading `-`)"
            ));
        }
        if !UNIT_SUFFIXES.iter().any(|x| s.ends_with(x) && s.len() > x.len()) {
            return Err(format!(
                "unit name {s:?} does not end in a unit type ({})",
                UNIT_SUFFIXES.join(", ")
            ));
        }
        Ok(())
    }
);

checked_string!(
    /// An absolute path inside the guest: printable, no `..`, no `//`.
    GuestPath,
    |s| {
        if !s.starts_with('/') {
            return Err(format!("guest path {s:?} is not absolute"));
        }
        if s.len() > 4096 {
            return Err("guest path longer than 4096 bytes".into());
        }
        printable("guest path", s, |c| c == ' ')?;
        if s.split('/').any(|p| p == "..") || s.contains("//") {
            return Err(format!("guest path {s:?} has `..` or an empty component"));
        }
        Ok(())
    }
);

checked_string!(
    /// A CRI endpoint: `unix://` and an absolute guest path.
    CriEndpoint,
    |s| {
        let path = s.strip_prefix("unix://").ok_or_else(|| {
            format!("CRI endpoint {s:?} is not unix:///PATH")
        })?;
        if s.contains(' ') {
            return Err(format!("CRI endpoint {s:?}: spaces are not allowed"));
        }
        GuestPath::try_from(path).map(|_| ())
    }
);

checked_string!(
    /// A file name (one path component): printable, no `/`, not `.` or `..`.
    FileName,
    |s| {
        printable("file name", s, |_| false)?;
        if s.is_empty() || s.contains('/') || s == "." || s == ".." {
            return Err(format!("{s:?} is not a file name"));
        }
        Ok(())
    }
);

checked_string!(
    /// A login name cloud-init can create: `[a-z_][a-z0-9_-]{0,31}`, not root.
    UserName,
    |s| {
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
        if !first_ok || !rest_ok || s.len() > 32 {
            return Err(format!(
                "user name {s:?}: [a-z_][a-z0-9_-]{{0,31}} (a name cloud-init can create)"
            ));
        }
        if s == "root" {
            return Err("user name \"root\": nodegate logs in as an ordinary user with sudo".into());
        }
        Ok(())
    }
);

checked_string!(
    /// The path of an HTTP request: starts with `/`, printable, no spaces.
    UrlPath,
    |s| {
        printable("URL path", s, |_| false)?;
        if !s.starts_with('/') {
            return Err(format!("URL path {s:?} does not start with `/`"));
        }
        Ok(())
    }
);

checked_string!(
    /// An `http://` or `https://` URL: printable, no spaces or quotes.
    HttpUrl,
    |s| {
        printable("URL", s, |_| false)?;
        if s.contains(['"', '\'', '\\', '`']) {
            return Err(format!("URL {s:?}: quotes and backslashes are not allowed"));
        }
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            return Err(format!("URL {s:?} is not http:// or https://"));
        }
        Ok(())
    }
);

checked_string!(
    /// A word: letters, digits, `_`, `-` and `.` (tokens, JSON field names, kubeadm
    /// preflight check names).
    Word,
    |s| {
        if s.is_empty()
            || s.len() > 256
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(format!(
                "{s:?}: only letters, digits, `_`, `-` and `.` are allowed"
            ));
        }
        Ok(())
    }
);

/// An IPv4 address in QEMU's user network that can carry a guest forward (see
/// [`crate::vm::config::user_net_addr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserNetAddr(pub Ipv4Addr);

impl TryFrom<String> for UserNetAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let addr: Ipv4Addr = s
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address"))?;
        crate::vm::config::user_net_addr(addr).map(UserNetAddr)
    }
}

impl From<UserNetAddr> for String {
    fn from(a: UserNetAddr) -> String {
        a.0.to_string()
    }
}

impl fmt::Display for UserNetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_refused_with_a_reason() {
        assert!(UnitName::try_from("kubelet.service").is_ok());
        assert!(UnitName::try_from("getty@ttyS0.service").is_ok());
        for bad in [
            "kubelet",
            "x; reboot.service",
            "-x.service",
            ".service",
            "a b.service",
        ] {
            assert!(UnitName::try_from(bad).is_err(), "{bad}");
        }
        assert!(GuestPath::try_from("/etc/x y.conf").is_ok());
        for bad in ["etc/x", "/etc/../root", "/a\nb", "/a//b", "/a\u{0}b"] {
            assert!(GuestPath::try_from(bad).is_err(), "{bad:?}");
        }
        assert!(UserName::try_from("nodegate").is_ok());
        for bad in ["root", "Admin", "a:b", "x\n  - name: root", ""] {
            assert!(UserName::try_from(bad).is_err(), "{bad:?}");
        }
        assert!(FileName::try_from("../x").is_err());
        assert!(HttpUrl::try_from("http://127.0.0.1:9101/state").is_ok());
        assert!(HttpUrl::try_from("http://x/'; reboot; '").is_err());
        assert!(Word::try_from("FileExisting-crictl").is_ok());
        assert!(Word::try_from("a,b").is_err());
    }

    #[test]
    fn forward_addresses_stay_in_the_user_network() {
        let ok = |s: &str| UserNetAddr::try_from(s.to_string());
        assert!(ok("10.0.2.101").is_ok());
        let e = ok("10.0.2.101,guestfwd=tcp:10.0.2.5:1-cmd:reboot").unwrap_err();
        assert!(e.contains("is not an IPv4 address"), "{e}");
        assert!(ok("10.0.2.2").is_err());
        assert!(ok("192.168.1.1").unwrap_err().contains("outside"));
        assert!(ok("10.0.2.20").unwrap_err().contains("DHCP"));
    }
}
