//! Maps a [`RedisExchange`] to a span name, attributes and status following
//! the OpenTelemetry database semantic conventions.
//!
//! Guarantees: argument values are exported only with
//! [`Privacy::redis_values`] (then as a bounded, truncated list, and never
//! for commands that carry secrets); by default `db.query.text` holds the
//! command and its key only. The key and the argument count are always
//! available to rules as private attributes `db.redis.key` / `db.redis.args`.
//!
//! Non-standard attribute: `db.redis.transaction = true` (exported) marks a
//! command queued between MULTI and EXEC, whose span ends at `+QUEUED`.

use compact_str::ToCompactString as _;

use super::{Arg, RedisExchange};
use crate::protocol::{ConnMeta, Described, Privacy, Role};
use crate::span::model::{Attributes, SpanStatus, Text};

/// Most exported attributes a Redis span has (sizes the vector once).
const MAX_ATTRS: usize = 11;

/// Semantic-convention name, attributes and status of an exchange.
///
/// Runs once per command: texts are built as [`Text`] (inline up to 24
/// bytes: database index, addresses, `GET user:42`), so a typical command
/// allocates only the attribute vectors and the span name.
pub fn describe(r: &RedisExchange, role: Role, conn: &ConnMeta, privacy: &Privacy) -> Described {
    let op = if r.command.is_empty() { "redis" } else { r.command.as_str() };
    let mut a = Attributes(Vec::with_capacity(MAX_ATTRS));
    a.push_unique("db.system.name", "redis");
    a.push_unique("db.operation.name", op);
    a.push_unique("db.namespace", r.db.to_compact_string());
    a.push_unique("db.query.text", query_text(r, op, privacy.redis_values));
    crate::protocol::push_db_addresses(&mut a, role, conn);
    if r.in_transaction {
        a.push_unique("db.redis.transaction", true);
    }
    let mut status = SpanStatus::default();
    if r.reply.is_error() {
        let msg = r.error.as_deref().unwrap_or_default();
        if let Some(code) = error_prefix(msg) {
            a.push_unique("db.response.status_code", code);
        }
        status = SpanStatus::error(msg);
    }
    let mut private = Attributes::new();
    if !privacy.skip_private {
        private.0.reserve_exact(2);
        if let Some(k) = r.key() {
            let mut text = Text::default();
            push_arg(&mut text, k);
            private.push_unique("db.redis.key", text);
        }
        private.push_unique("db.redis.args", i64::from(r.arg_count));
    }
    Described { name: Text::new(op), attributes: a, private, status, traceparent: None, tracestate: None }
}

/// Redis error code: the first word when it is upper case (`ERR`,
/// `WRONGTYPE`, `MOVED`, `NOSCRIPT`...).
fn error_prefix(msg: &str) -> Option<&str> {
    let word = msg.split(' ').next()?;
    let code = !word.is_empty() && word.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    code.then_some(word)
}

/// Appends an argument as text (invalid UTF-8 replaced), `...` when cut.
fn push_arg(s: &mut Text, a: Arg<'_>) {
    for piece in a.bytes.utf8_chunks() {
        s.push_str(piece.valid());
        if !piece.invalid().is_empty() {
            s.push(char::REPLACEMENT_CHARACTER);
        }
    }
    if a.truncated {
        s.push_str("...");
    }
}

/// `GET user:42` by default; with values, the command word and every kept
/// argument (` ...` marks arguments not kept).
fn query_text(r: &RedisExchange, op: &str, values: bool) -> Text {
    let mut s = Text::default();
    if values {
        s.push_str(op.split(' ').next().unwrap_or(op));
        for a in r.args.iter() {
            s.push(' ');
            push_arg(&mut s, a);
        }
        if (r.args.len() as u64) < u64::from(r.arg_count) {
            s.push_str(" ...");
        }
        return s;
    }
    s.push_str(op);
    if let Some(k) = r.key() {
        s.push(' ');
        push_arg(&mut s, k);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::UnixConn;
    use crate::protocol::redis::{ArgList, CommandName, ReplyKind};
    use crate::span::model::StatusCode;

    fn exchange(name: &str, args: &[&str], key: Option<u8>) -> RedisExchange {
        let mut list = ArgList::default();
        for a in args {
            list.push(a.as_bytes(), false);
        }
        RedisExchange {
            command: CommandName::new(name.as_bytes()),
            args: list,
            arg_count: args.len() as u32,
            key_index: key,
            reply: ReplyKind::Simple,
            ..RedisExchange::default()
        }
    }

    fn conn() -> ConnMeta {
        ConnMeta { local: "10.0.0.1:40000".parse().ok(), peer: "10.0.0.2:6379".parse().ok(), tls: false, unix: None }
    }

    #[test]
    fn a_unix_socket_names_the_server() {
        let r = exchange("GET", &["k"], Some(0));
        let unix = ConnMeta {
            unix: Some(UnixConn { name: "/run/redis/redis.sock", ..UnixConn::default() }),
            ..ConnMeta::default()
        };
        let d = describe(&r, Role::Client, &unix, &Privacy::default());
        assert_eq!(d.attributes.get_str("network.transport"), Some("unix"));
        assert_eq!(d.attributes.get_str("server.address"), Some("/run/redis/redis.sock"));
        assert_eq!(d.attributes.get_str("network.peer.address"), Some("/run/redis/redis.sock"));
        assert_eq!(d.attributes.get("server.port"), None);
        // An unnamed socket (socketpair): the transport only.
        let d = describe(
            &r,
            Role::Server,
            &ConnMeta { unix: Some(UnixConn::default()), ..ConnMeta::default() },
            &Privacy::default(),
        );
        assert_eq!(d.attributes.get_str("network.transport"), Some("unix"));
        assert_eq!(d.attributes.get("server.address"), None);
    }

    #[test]
    fn values_are_not_exported_by_default() {
        let r = exchange("SET", &["user:42", "s3cret"], Some(0));
        let d = describe(&r, Role::Client, &conn(), &Privacy::default());
        assert_eq!(d.name, "SET");
        assert_eq!(d.attributes.get_str("db.query.text"), Some("SET user:42"));
        assert!(d.attributes.iter().all(|(_, v)| !v.to_text().contains("s3cret")));
        assert_eq!(d.private.get_str("db.redis.key"), Some("user:42"));
        assert_eq!(d.private.get("db.redis.args").and_then(|v| v.as_i64()), Some(2));
    }

    #[test]
    fn without_rules_the_key_is_not_kept_and_nothing_exported_changes() {
        let r = exchange("GET", &["user:42"], Some(0));
        let with = describe(&r, Role::Client, &conn(), &Privacy::default());
        let without = describe(&r, Role::Client, &conn(), &Privacy { skip_private: true, ..Privacy::default() });
        assert!(without.private.is_empty());
        assert_eq!(with.private.get_str("db.redis.key"), Some("user:42"));
        assert_eq!((without.name, without.attributes), (with.name, with.attributes));
    }

    #[test]
    fn values_are_exported_on_opt_in_with_truncation_marks() {
        let mut r = exchange("SET", &["k"], Some(0));
        r.args.push(&[b'v'; 128], true);
        r.arg_count = 4;
        let privacy = Privacy { redis_values: true, ..Privacy::default() };
        let d = describe(&r, Role::Client, &conn(), &privacy);
        let text = d.attributes.get_str("db.query.text").unwrap_or_default();
        assert!(text.starts_with("SET k vvvv"), "{text}");
        assert!(text.ends_with("v... ..."), "{text}");
    }

    #[test]
    fn server_address_depends_on_role() {
        let r = exchange("PING", &[], None);
        let c = describe(&r, Role::Client, &conn(), &Privacy::default());
        assert_eq!(c.attributes.get_str("server.address"), Some("10.0.0.2"));
        assert_eq!(c.attributes.get("server.port").and_then(|v| v.as_i64()), Some(6379));
        let s = describe(&r, Role::Server, &conn(), &Privacy::default());
        assert_eq!(s.attributes.get_str("server.address"), Some("10.0.0.1"));
        assert_eq!(s.attributes.get_str("network.peer.address"), Some("10.0.0.2"));
        assert_eq!(s.attributes.get_str("db.query.text"), Some("PING"));
        assert_eq!(s.attributes.get_str("db.namespace"), Some("0"));
        assert!(s.private.get("db.redis.key").is_none());
    }

    #[test]
    fn error_reply_sets_status_and_code() {
        let mut r = exchange("GET", &["l"], Some(0));
        r.reply = ReplyKind::Error;
        r.error = Some("WRONGTYPE Operation against a key holding the wrong kind of value".into());
        let d = describe(&r, Role::Client, &conn(), &Privacy::default());
        assert_eq!(d.status.code, StatusCode::Error);
        assert!(d.status.message.starts_with("WRONGTYPE Operation"));
        assert_eq!(d.attributes.get_str("db.response.status_code"), Some("WRONGTYPE"));
        r.error = Some("odd lower case error".into());
        let d = describe(&r, Role::Client, &conn(), &Privacy::default());
        assert_eq!(d.status.code, StatusCode::Error);
        assert!(d.attributes.get("db.response.status_code").is_none());
    }

    #[test]
    fn transaction_flag_is_exported_only_when_set() {
        let mut r = exchange("INCR", &["n"], Some(0));
        assert!(
            describe(&r, Role::Client, &conn(), &Privacy::default()).attributes.get("db.redis.transaction").is_none()
        );
        r.in_transaction = true;
        let d = describe(&r, Role::Client, &conn(), &Privacy::default());
        assert_eq!(d.attributes.get("db.redis.transaction"), Some(&true.into()));
    }
}
