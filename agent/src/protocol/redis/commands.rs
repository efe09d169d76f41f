//! Compact table of common Redis commands: where the first key is, which
//! reply shapes are possible, and which commands change connection state.
//!
//! Guarantees: lookups never allocate; commands not in the table have no
//! key (a safe default: an unknown or module command's first argument may be
//! a password, a script or a query, so it is never reported as a key); the
//! reply shape of a command is constrained only when it is certain, so a
//! shape mismatch really means the pairing is off.

/// Where a command's first key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeySpec {
    None,
    /// At this argv index (argv[0] is the command word).
    At(u8),
    /// EVAL-like: `argv[2]` is numkeys, the key is `argv[3]` when numkeys > 0.
    Eval,
    /// XREAD-like: the first argument after the `STREAMS` token.
    Streams,
}

/// Reply types a command may answer with (errors always fit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    Any,
    /// `+`, `$`, `=`, `,` or a null.
    Str,
    /// `:`
    Int,
    /// `*`, `%`, `~` or a null.
    Agg,
}

/// Commands that change connection state or reply in special ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Plain,
    /// Takes a subcommand: the name keeps two words.
    Container,
    /// Arguments may hold secrets: values are never kept.
    Sensitive,
    Select,
    Multi,
    Exec,
    Discard,
    Subscribe,
    Unsubscribe,
    Ping,
    Monitor,
    Reset,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct CmdInfo {
    pub name: &'static str,
    pub key: KeySpec,
    pub shape: Shape,
    pub kind: Kind,
}

use KeySpec::{At, Eval, Streams};
use Kind::*;
use Shape::{Agg, Any, Int, Str};

const fn c(name: &'static str, key: KeySpec, shape: Shape, kind: Kind) -> CmdInfo {
    CmdInfo { name, key, shape, kind }
}
const K1: KeySpec = At(1);
const K2: KeySpec = At(2);
const NK: KeySpec = KeySpec::None;

/// Sorted by name (a test checks it) for binary search.
static TABLE: &[CmdInfo] = &[
    c("ACL", NK, Any, Container),
    c("APPEND", K1, Int, Plain),
    c("AUTH", NK, Str, Sensitive),
    c("BGREWRITEAOF", NK, Str, Plain),
    c("BGSAVE", NK, Str, Plain),
    c("BITCOUNT", K1, Int, Plain),
    c("BITFIELD", K1, Any, Plain),
    c("BITOP", K2, Int, Plain),
    c("BITPOS", K1, Int, Plain),
    c("BLMOVE", K1, Any, Plain),
    c("BLMPOP", At(3), Any, Plain),
    c("BLPOP", K1, Any, Plain),
    c("BRPOP", K1, Any, Plain),
    c("BRPOPLPUSH", K1, Any, Plain),
    c("BZPOPMAX", K1, Any, Plain),
    c("BZPOPMIN", K1, Any, Plain),
    c("CLIENT", NK, Any, Container),
    c("CLUSTER", NK, Any, Container),
    c("COMMAND", NK, Any, Container),
    c("CONFIG", NK, Any, Container),
    c("COPY", K1, Int, Plain),
    c("DBSIZE", NK, Int, Plain),
    c("DEBUG", NK, Any, Container),
    c("DECR", K1, Int, Plain),
    c("DECRBY", K1, Int, Plain),
    c("DEL", K1, Int, Plain),
    c("DISCARD", NK, Str, Discard),
    c("DUMP", K1, Any, Plain),
    c("ECHO", NK, Str, Plain),
    c("EVAL", Eval, Any, Plain),
    c("EVALSHA", Eval, Any, Plain),
    c("EVALSHA_RO", Eval, Any, Plain),
    c("EVAL_RO", Eval, Any, Plain),
    c("EXEC", NK, Agg, Exec),
    c("EXISTS", K1, Int, Plain),
    c("EXPIRE", K1, Int, Plain),
    c("EXPIREAT", K1, Int, Plain),
    c("EXPIRETIME", K1, Int, Plain),
    c("FCALL", Eval, Any, Plain),
    c("FCALL_RO", Eval, Any, Plain),
    c("FLUSHALL", NK, Str, Plain),
    c("FLUSHDB", NK, Str, Plain),
    c("FUNCTION", NK, Any, Container),
    c("GEOADD", K1, Int, Plain),
    c("GEODIST", K1, Any, Plain),
    c("GEOHASH", K1, Any, Plain),
    c("GEOPOS", K1, Any, Plain),
    c("GEORADIUS", K1, Any, Plain),
    c("GEORADIUSBYMEMBER", K1, Any, Plain),
    c("GEOSEARCH", K1, Any, Plain),
    c("GEOSEARCHSTORE", K1, Any, Plain),
    c("GET", K1, Str, Plain),
    c("GETBIT", K1, Int, Plain),
    c("GETDEL", K1, Str, Plain),
    c("GETEX", K1, Str, Plain),
    c("GETRANGE", K1, Str, Plain),
    c("GETSET", K1, Str, Plain),
    c("HDEL", K1, Int, Plain),
    c("HELLO", NK, Any, Sensitive),
    c("HEXISTS", K1, Int, Plain),
    c("HGET", K1, Str, Plain),
    c("HGETALL", K1, Agg, Plain),
    c("HINCRBY", K1, Int, Plain),
    c("HINCRBYFLOAT", K1, Str, Plain),
    c("HKEYS", K1, Agg, Plain),
    c("HLEN", K1, Int, Plain),
    c("HMGET", K1, Agg, Plain),
    c("HMSET", K1, Str, Plain),
    c("HRANDFIELD", K1, Any, Plain),
    c("HSCAN", K1, Agg, Plain),
    c("HSET", K1, Int, Plain),
    c("HSETNX", K1, Int, Plain),
    c("HSTRLEN", K1, Int, Plain),
    c("HVALS", K1, Agg, Plain),
    c("INCR", K1, Int, Plain),
    c("INCRBY", K1, Int, Plain),
    c("INCRBYFLOAT", K1, Str, Plain),
    c("INFO", NK, Str, Plain),
    c("KEYS", NK, Agg, Plain),
    c("LASTSAVE", NK, Int, Plain),
    c("LATENCY", NK, Any, Container),
    c("LINDEX", K1, Str, Plain),
    c("LINSERT", K1, Int, Plain),
    c("LLEN", K1, Int, Plain),
    c("LMOVE", K1, Str, Plain),
    c("LMPOP", K2, Any, Plain),
    c("LPOP", K1, Any, Plain),
    c("LPOS", K1, Any, Plain),
    c("LPUSH", K1, Int, Plain),
    c("LPUSHX", K1, Int, Plain),
    c("LRANGE", K1, Agg, Plain),
    c("LREM", K1, Int, Plain),
    c("LSET", K1, Str, Plain),
    c("LTRIM", K1, Str, Plain),
    c("MEMORY", NK, Any, Container),
    c("MGET", K1, Agg, Plain),
    c("MIGRATE", NK, Any, Sensitive),
    c("MODULE", NK, Any, Container),
    c("MONITOR", NK, Str, Monitor),
    c("MOVE", K1, Int, Plain),
    c("MSET", K1, Str, Plain),
    c("MSETNX", K1, Int, Plain),
    c("MULTI", NK, Str, Multi),
    c("OBJECT", NK, Any, Container),
    c("PERSIST", K1, Int, Plain),
    c("PEXPIRE", K1, Int, Plain),
    c("PEXPIREAT", K1, Int, Plain),
    c("PEXPIRETIME", K1, Int, Plain),
    c("PFADD", K1, Int, Plain),
    c("PFCOUNT", K1, Int, Plain),
    c("PFMERGE", K1, Str, Plain),
    c("PING", NK, Str, Ping),
    c("PSETEX", K1, Str, Plain),
    c("PSUBSCRIBE", NK, Any, Subscribe),
    c("PTTL", K1, Int, Plain),
    c("PUBLISH", NK, Int, Plain),
    c("PUBSUB", NK, Any, Container),
    c("PUNSUBSCRIBE", NK, Any, Unsubscribe),
    c("QUIT", NK, Str, Plain),
    c("RANDOMKEY", NK, Str, Plain),
    c("RENAME", K1, Str, Plain),
    c("RENAMENX", K1, Int, Plain),
    c("RESET", NK, Str, Reset),
    c("RESTORE", K1, Str, Plain),
    c("RPOP", K1, Any, Plain),
    c("RPOPLPUSH", K1, Str, Plain),
    c("RPUSH", K1, Int, Plain),
    c("RPUSHX", K1, Int, Plain),
    c("SADD", K1, Int, Plain),
    c("SAVE", NK, Str, Plain),
    c("SCAN", NK, Agg, Plain),
    c("SCARD", K1, Int, Plain),
    c("SCRIPT", NK, Any, Container),
    c("SDIFF", K1, Agg, Plain),
    c("SDIFFSTORE", K1, Int, Plain),
    c("SELECT", NK, Str, Select),
    c("SET", K1, Str, Plain),
    c("SETBIT", K1, Int, Plain),
    c("SETEX", K1, Str, Plain),
    c("SETNX", K1, Int, Plain),
    c("SETRANGE", K1, Int, Plain),
    c("SINTER", K1, Agg, Plain),
    c("SINTERCARD", K2, Int, Plain),
    c("SINTERSTORE", K1, Int, Plain),
    c("SISMEMBER", K1, Int, Plain),
    c("SLOWLOG", NK, Any, Container),
    c("SMEMBERS", K1, Agg, Plain),
    c("SMISMEMBER", K1, Agg, Plain),
    c("SMOVE", K1, Int, Plain),
    c("SORT", K1, Any, Plain),
    c("SORT_RO", K1, Any, Plain),
    c("SPOP", K1, Any, Plain),
    c("SPUBLISH", NK, Int, Plain),
    c("SRANDMEMBER", K1, Any, Plain),
    c("SREM", K1, Int, Plain),
    c("SSCAN", K1, Agg, Plain),
    c("SSUBSCRIBE", NK, Any, Subscribe),
    c("STRLEN", K1, Int, Plain),
    c("SUBSCRIBE", NK, Any, Subscribe),
    c("SUNION", K1, Agg, Plain),
    c("SUNIONSTORE", K1, Int, Plain),
    c("SUNSUBSCRIBE", NK, Any, Unsubscribe),
    c("SWAPDB", NK, Str, Plain),
    c("TIME", NK, Agg, Plain),
    c("TOUCH", K1, Int, Plain),
    c("TTL", K1, Int, Plain),
    c("TYPE", K1, Str, Plain),
    c("UNLINK", K1, Int, Plain),
    c("UNSUBSCRIBE", NK, Any, Unsubscribe),
    c("UNWATCH", NK, Str, Plain),
    c("WAIT", NK, Int, Plain),
    c("WATCH", K1, Str, Plain),
    c("XACK", K1, Int, Plain),
    c("XADD", K1, Str, Plain),
    c("XAUTOCLAIM", K1, Agg, Plain),
    c("XCLAIM", K1, Agg, Plain),
    c("XDEL", K1, Int, Plain),
    c("XGROUP", NK, Any, Container),
    c("XINFO", NK, Any, Container),
    c("XLEN", K1, Int, Plain),
    c("XPENDING", K1, Any, Plain),
    c("XRANGE", K1, Agg, Plain),
    c("XREAD", Streams, Any, Plain),
    c("XREADGROUP", Streams, Any, Plain),
    c("XREVRANGE", K1, Agg, Plain),
    c("XTRIM", K1, Int, Plain),
    c("ZADD", K1, Any, Plain),
    c("ZCARD", K1, Int, Plain),
    c("ZCOUNT", K1, Int, Plain),
    c("ZDIFF", K2, Agg, Plain),
    c("ZDIFFSTORE", K1, Int, Plain),
    c("ZINCRBY", K1, Str, Plain),
    c("ZINTER", K2, Agg, Plain),
    c("ZINTERCARD", K2, Int, Plain),
    c("ZINTERSTORE", K1, Int, Plain),
    c("ZLEXCOUNT", K1, Int, Plain),
    c("ZMPOP", K2, Any, Plain),
    c("ZMSCORE", K1, Agg, Plain),
    c("ZPOPMAX", K1, Any, Plain),
    c("ZPOPMIN", K1, Any, Plain),
    c("ZRANDMEMBER", K1, Any, Plain),
    c("ZRANGE", K1, Agg, Plain),
    c("ZRANGEBYLEX", K1, Agg, Plain),
    c("ZRANGEBYSCORE", K1, Agg, Plain),
    c("ZRANGESTORE", K1, Int, Plain),
    c("ZRANK", K1, Any, Plain),
    c("ZREM", K1, Int, Plain),
    c("ZREMRANGEBYLEX", K1, Int, Plain),
    c("ZREMRANGEBYRANK", K1, Int, Plain),
    c("ZREMRANGEBYSCORE", K1, Int, Plain),
    c("ZREVRANGE", K1, Agg, Plain),
    c("ZREVRANGEBYLEX", K1, Agg, Plain),
    c("ZREVRANGEBYSCORE", K1, Agg, Plain),
    c("ZREVRANK", K1, Any, Plain),
    c("ZSCAN", K1, Agg, Plain),
    c("ZSCORE", K1, Str, Plain),
    c("ZUNION", K2, Agg, Plain),
    c("ZUNIONSTORE", K1, Int, Plain),
];

static GET: CmdInfo = c("GET", K1, Str, Plain);
static SET: CmdInfo = c("SET", K1, Str, Plain);

/// Looks up an upper-cased command word.
pub(super) fn lookup(name: &[u8]) -> Option<&'static CmdInfo> {
    // The two commands that dominate real traffic skip the search.
    match name {
        b"GET" => return Some(&GET),
        b"SET" => return Some(&SET),
        _ => {}
    }
    TABLE.binary_search_by(|e| e.name.as_bytes().cmp(name)).ok().and_then(|i| TABLE.get(i))
}

/// Properties of a container command's subcommand: (key position, whether
/// its arguments may hold secrets).
pub(super) fn subcommand(container: &[u8], sub: &[u8]) -> (KeySpec, bool) {
    match (container, sub) {
        (b"OBJECT", b"ENCODING" | b"FREQ" | b"IDLETIME" | b"REFCOUNT")
        | (b"MEMORY", b"USAGE")
        | (b"XINFO", b"STREAM" | b"GROUPS" | b"CONSUMERS")
        | (b"XGROUP", b"CREATE" | b"SETID" | b"DESTROY" | b"CREATECONSUMER" | b"DELCONSUMER")
        | (b"DEBUG", b"OBJECT") => (K2, false),
        (b"CONFIG", b"SET") | (b"ACL", b"SETUSER") => (NK, true),
        _ => (NK, false),
    }
}

/// Whether a reply of this top-level kind fits the shape.
pub(super) fn shape_fits(shape: Shape, kind: super::ReplyKind) -> bool {
    use super::ReplyKind as R;
    match (shape, kind) {
        (Any, _) | (_, R::Error | R::BulkError | R::Null) => true,
        (Str, k) => matches!(k, R::Simple | R::Bulk | R::Verbatim | R::Double),
        (Int, k) => k == R::Integer,
        (Agg, k) => matches!(k, R::Array | R::Map | R::Set),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::redis::ReplyKind;

    #[test]
    fn table_is_sorted_and_unique_so_binary_search_works() {
        for w in TABLE.windows(2) {
            assert!(w[0].name < w[1].name, "{} >= {}", w[0].name, w[1].name);
        }
        for e in TABLE {
            assert_eq!(lookup(e.name.as_bytes()).map(|i| i.name), Some(e.name));
        }
    }

    #[test]
    fn unknown_commands_are_absent() {
        assert!(lookup(b"FOO").is_none());
        assert!(lookup(b"get").is_none(), "lookup expects upper case");
        assert!(lookup(b"").is_none());
    }

    #[test]
    fn shapes_accept_errors_and_reject_mismatches() {
        assert!(shape_fits(Shape::Int, ReplyKind::Error));
        assert!(shape_fits(Shape::Str, ReplyKind::Null));
        assert!(!shape_fits(Shape::Int, ReplyKind::Bulk));
        assert!(!shape_fits(Shape::Str, ReplyKind::Array));
        assert!(!shape_fits(Shape::Agg, ReplyKind::Integer));
    }

    #[test]
    fn subcommands_with_keys_and_secrets() {
        assert_eq!(subcommand(b"OBJECT", b"ENCODING"), (K2, false));
        assert_eq!(subcommand(b"CONFIG", b"SET"), (NK, true));
        assert_eq!(subcommand(b"CONFIG", b"GET"), (NK, false));
    }
}
