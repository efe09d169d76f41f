//! Names of Unix domain sockets, interned: a connection's [`ConnMeta`]
//! (copied into every exchange) holds a `&'static str`.
//!
//! Guarantees: the process keeps at most [`MAX_UNIX_NAMES`] distinct names
//! for its lifetime, in one table ([`intern`]; a host has a handful of
//! socket files), so they stay reachable from it and nothing grows however
//! many connection tables come and go; a connection with a name beyond
//! that is reported as unnamed and counted ([`dropped`]).
//!
//! [`ConnMeta`]: crate::protocol::ConnMeta

use std::sync::{Mutex, OnceLock};

use foldhash::HashMap;

/// Distinct socket names kept at most (each at most 109 bytes).
pub const MAX_UNIX_NAMES: usize = 1024;

#[derive(Default)]
pub struct UnixNames {
    names: HashMap<Box<[u8]>, &'static str>,
    /// Names not kept (the table was full).
    pub dropped: u64,
}

impl UnixNames {
    /// The text of a `sun_path` prefix as the kernel reported it: a file
    /// system path (up to its NUL), `@name` for an abstract name (leading
    /// NUL), `""` for an unnamed socket. Invalid UTF-8 is replaced.
    pub fn name(&mut self, raw: &[u8]) -> &'static str {
        if raw.is_empty() {
            return "";
        }
        if let Some(n) = self.names.get(raw) {
            return n;
        }
        if self.names.len() >= MAX_UNIX_NAMES {
            self.dropped += 1;
            return "";
        }
        let text = match raw.split_first() {
            Some((0, abstract_name)) => format!("@{}", String::from_utf8_lossy(abstract_name)),
            _ => {
                let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
                String::from_utf8_lossy(&raw[..end]).into_owned()
            }
        };
        // Kept for good (the agent's table stays reachable): at most
        // MAX_UNIX_NAMES small strings per table, one table per process.
        let text: &'static str = Box::leak(text.into_boxed_str());
        self.names.insert(raw.into(), text);
        text
    }
}

/// The process's table of names.
fn table() -> &'static Mutex<UnixNames> {
    static NAMES: OnceLock<Mutex<UnixNames>> = OnceLock::new();
    NAMES.get_or_init(Mutex::default)
}

/// The name of a socket (see [`UnixNames::name`]) from the process's table.
pub fn intern(raw: &[u8]) -> &'static str {
    table().lock().map_or("", |mut t| t.name(raw))
}

/// Names in the process's table.
pub fn len() -> usize {
    table().lock().map_or(0, |t| t.names.len())
}

/// Names the process's table could not keep (reported unnamed).
pub fn dropped() -> u64 {
    table().lock().map_or(0, |t| t.dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_abstract_and_unnamed_sockets() {
        let mut n = UnixNames::default();
        assert_eq!(n.name(b"/run/postgresql/.s.PGSQL.5432\0\0"), "/run/postgresql/.s.PGSQL.5432");
        assert_eq!(n.name(b"\0kspan-test\xff"), "@kspan-test\u{fffd}");
        assert_eq!(n.name(b""), "");
        let a = n.name(b"/tmp/redis.sock");
        assert!(std::ptr::eq(a, n.name(b"/tmp/redis.sock")), "interned once");
    }

    #[test]
    fn names_are_bounded() {
        let mut n = UnixNames::default();
        for i in 0..MAX_UNIX_NAMES {
            assert!(!n.name(format!("/s/{i}").as_bytes()).is_empty());
        }
        assert_eq!(n.name(b"/one/more"), "");
        assert_eq!(n.dropped, 1);
        assert_eq!(n.name(b"/s/7"), "/s/7", "known names still resolve");
    }
}
