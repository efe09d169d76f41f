//! Redis (RESP2 and RESP3) parser: commands and replies of one connection
//! paired in strict FIFO order.
//!
//! Guarantees:
//! - Commands are RESP arrays of bulk strings or inline lines; replies may be
//!   any RESP2/RESP3 type, nested to depth 64 (an explicit stack, no
//!   recursion on input bytes).
//! - Memory per connection is bounded: at most [`MAX_IN_FLIGHT`] commands wait
//!   for replies; each keeps at most [`MAX_STORED_ARGS`] argument values of at
//!   most [`MAX_ARG_BYTES`] bytes; bulk payloads are skipped by length, never
//!   buffered, including bytes that were not captured.
//! - A reply is paired with a command only when the pairing is certain enough:
//!   a reply that began before the oldest pending command, or whose shape does
//!   not fit that command (e.g. an integer for `GET`), or that arrives after
//!   framing was lost, is never paired. The parser drops and resets rather
//!   than mis-pairs, and counts what it drops in [`ParseStats`].
//! - Out-of-band traffic (RESP3 `>` pushes, Pub/Sub messages, MONITOR output)
//!   never produces spans; it is counted in [`RedisParser::push_messages`].
//!
//! Layout: [`commands`] (command table), [`request`] (command decoder),
//! [`reply`] (reply decoder), [`parser`] (pairing and connection modes),
//! [`describe()`] (semantic conventions).

mod commands;
mod describe;
mod line;
mod parser;
mod reply;
mod request;

pub use describe::describe;
pub use parser::RedisParser;

#[cfg(doc)]
use super::ParseStats;
use super::{Detection, Direction, Role};

/// Commands waiting for a reply, per connection.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Argument values kept per command (after the command word).
pub const MAX_STORED_ARGS: usize = 16;
/// Bytes kept per argument value.
pub const MAX_ARG_BYTES: usize = 128;
/// Bytes of kept argument values stored without allocating.
pub const ARGS_INLINE: usize = 40;
/// Largest bulk string or aggregate length accepted (Redis's own limit).
pub const MAX_RESP_LEN: i64 = 512 * 1024 * 1024;
/// Deepest nesting of aggregates accepted in a reply.
pub const MAX_DEPTH: usize = 64;

/// Errors of the RESP decoders; each one is counted as malformed input and
/// followed by a resynchronisation, never surfaced to callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("unknown RESP type byte {0:#04x}")]
    TypeByte(u8),
    #[error("bad length or integer")]
    Number,
    #[error("length {0} out of range")]
    Length(i64),
    #[error("aggregates nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("line too long")]
    LineTooLong,
    #[error("bulk string not followed by CRLF")]
    MissingCrlf,
    #[error("expected a bulk string argument")]
    NotBulk,
    #[error("inline command word not known")]
    UnknownInline,
}

/// Upper-cased command name, one or two words (`GET`, `CLIENT SETNAME`),
/// stored inline (at most 32 bytes, printable ASCII; other bytes become `?`).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct CommandName {
    buf: [u8; 32],
    len: u8,
}

impl CommandName {
    /// Builds a name from bytes (upper-cased, truncated to 32 bytes).
    pub fn new(bytes: &[u8]) -> Self {
        let mut n = Self::default();
        n.push_bytes(bytes);
        n
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("?")
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len as usize).unwrap_or(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends bytes, upper-cased; stops silently when full.
    pub(crate) fn push_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            let Some(slot) = self.buf.get_mut(self.len as usize) else {
                return;
            };
            *slot = if b.is_ascii_graphic() { b.to_ascii_uppercase() } else { b'?' };
            self.len += 1;
        }
    }

    /// Starts a second word.
    pub(crate) fn push_space(&mut self) {
        if let Some(slot) = self.buf.get_mut(self.len as usize) {
            *slot = b' ';
            self.len += 1;
        }
    }
}

impl std::fmt::Debug for CommandName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// One kept argument value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arg<'a> {
    /// The first bytes of the value (at most [`MAX_ARG_BYTES`]).
    pub bytes: &'a [u8],
    /// The value was longer than what is kept, or not fully captured.
    pub truncated: bool,
}

/// The first [`MAX_STORED_ARGS`] arguments after the command word, each cut
/// to [`MAX_ARG_BYTES`], packed in one buffer (`[len][flags][bytes]...`).
///
/// Up to [`ARGS_INLINE`] bytes live inline (no allocation for typical
/// commands such as `SET key value`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArgList {
    buf: smallvec::SmallVec<[u8; ARGS_INLINE]>,
    count: u8,
    /// Offset of the header of the argument being appended, if any.
    open: Option<u32>,
}

impl ArgList {
    /// Number of kept arguments.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn get(&self, i: usize) -> Option<Arg<'_>> {
        self.iter().nth(i)
    }

    pub fn iter(&self) -> impl Iterator<Item = Arg<'_>> {
        let mut rest: &[u8] = &self.buf;
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let (&flags, tail) = tail.split_first()?;
            let bytes = tail.get(..len as usize)?;
            rest = tail.get(len as usize..)?;
            Some(Arg { bytes, truncated: flags != 0 })
        })
        .take(self.count as usize)
    }

    /// Whether another argument may be opened.
    pub(crate) fn has_room(&self) -> bool {
        (self.count as usize) < MAX_STORED_ARGS
    }

    #[inline]
    pub(crate) fn open(&mut self) {
        if self.open.is_none() && self.has_room() {
            self.open = Some(self.buf.len() as u32);
            // Two pushes: `extend_from_slice` goes through two libc calls.
            self.buf.push(0);
            self.buf.push(0);
        }
    }

    /// Appends bytes to the open argument, keeping at most MAX_ARG_BYTES.
    #[inline]
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        let Some(at) = self.open else { return };
        let at = at as usize;
        let Some(&stored) = self.buf.get(at) else {
            return;
        };
        let room = MAX_ARG_BYTES.saturating_sub(stored as usize);
        let take = room.min(bytes.len());
        if take < bytes.len()
            && let Some(f) = self.buf.get_mut(at + 1)
        {
            *f = 1;
        }
        if let (Some(part), Some(len)) = (bytes.get(..take), self.buf.get_mut(at)) {
            *len += take as u8;
            // A plain byte loop: the values are short (a key, a small value),
            // and `extend_from_slice` costs two libc calls each time.
            self.buf.extend(part.iter().copied());
        }
    }

    /// Closes the open argument; `truncated` marks bytes known to be missing.
    #[inline]
    pub(crate) fn close(&mut self, truncated: bool) {
        let Some(at) = self.open.take() else { return };
        if truncated && let Some(f) = self.buf.get_mut(at as usize + 1) {
            *f = 1;
        }
        self.count += 1;
    }

    /// Appends a whole argument (inline commands).
    pub(crate) fn push(&mut self, bytes: &[u8], truncated: bool) {
        self.open();
        self.extend(bytes);
        self.close(truncated);
    }
}

/// Top-level type of a reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplyKind {
    /// `+`
    Simple,
    /// `-`
    Error,
    /// `:`
    Integer,
    /// `$`
    Bulk,
    /// `$-1`, `*-1` or RESP3 `_`.
    #[default]
    Null,
    /// `*`
    Array,
    /// `%`
    Map,
    /// `~`
    Set,
    /// `#`
    Boolean,
    /// `,`
    Double,
    /// `(`
    BigNumber,
    /// `!`
    BulkError,
    /// `=`
    Verbatim,
    /// `>` (only ever paired as a RESP3 subscribe confirmation)
    Push,
}

impl ReplyKind {
    pub fn is_error(self) -> bool {
        matches!(self, ReplyKind::Error | ReplyKind::BulkError)
    }
}

/// One command and its reply.
#[derive(Clone, Debug, Default)]
pub struct RedisExchange {
    /// Upper-cased command name (two words for container commands).
    pub command: CommandName,
    /// Arguments after the command word (the subcommand of a container
    /// command is `args[0]`); empty for commands whose arguments may hold
    /// secrets (AUTH, HELLO, MIGRATE, CONFIG SET, ACL SETUSER).
    pub args: ArgList,
    /// Number of arguments after the command word (Redis argc - 1), kept or not.
    pub arg_count: u32,
    /// Index in `args` of the command's first key, when it has one.
    pub key_index: Option<u8>,
    /// Selected database index when the command ran.
    pub db: u32,
    /// Queued between MULTI and EXEC/DISCARD (its reply is `+QUEUED`).
    pub in_transaction: bool,
    /// Sent as an inline command rather than a RESP array.
    pub inline: bool,
    /// Some command or reply bytes were not captured.
    pub truncated: bool,
    pub reply: ReplyKind,
    /// Error reply text (`-` line or `!` payload), at most 256 bytes.
    pub error: Option<Box<str>>,
}

impl RedisExchange {
    /// The first key, if the command has one.
    pub fn key(&self) -> Option<Arg<'_>> {
        self.key_index.and_then(|i| self.args.get(i as usize))
    }
}

/// Words accepted as the start of an inline command by [`detect`]; HTTP
/// method names (GET, DELETE...) are deliberately absent.
const INLINE_DETECT_WORDS: [&[u8]; 6] = [b"PING", b"AUTH", b"HELLO", b"SELECT", b"ECHO", b"QUIT"];

/// Sniffs the first bytes of one direction: a command there means the
/// writer is a Redis client. Replies alone are never enough (`+`, `-`, `:`
/// starts are too common in other protocols).
pub fn detect(dir: Direction, data: &[u8]) -> Detection {
    let role = match dir {
        Direction::Egress => Role::Client,
        Direction::Ingress => Role::Server,
    };
    match sniff(data) {
        Sniff::Yes => Detection::Yes(role),
        Sniff::NeedMore => Detection::NeedMore,
        Sniff::No => Detection::No,
    }
}

enum Sniff {
    Yes,
    NeedMore,
    No,
}

fn sniff(data: &[u8]) -> Sniff {
    match data.first() {
        None => Sniff::NeedMore,
        Some(b'*') => sniff_array(data),
        Some(_) => sniff_inline(data),
    }
}

/// `*<1-9 digits, no leading 0>\r\n$`
fn sniff_array(data: &[u8]) -> Sniff {
    let mut i = 1;
    while let Some(b) = data.get(i) {
        if !b.is_ascii_digit() || (i == 1 && *b == b'0') || i > 9 {
            break;
        }
        i += 1;
    }
    if i == data.len() {
        return Sniff::NeedMore;
    }
    if i == 1 {
        return Sniff::No;
    }
    for want in [b'\r', b'\n', b'$'] {
        match data.get(i) {
            None => return Sniff::NeedMore,
            Some(b) if *b == want => i += 1,
            Some(_) => return Sniff::No,
        }
    }
    Sniff::Yes
}

/// Longest first line an inline command is looked for in.
const MAX_INLINE_LINE: usize = 256;

/// A known command word followed by CRLF, or by a space and the rest of a
/// line that ends in CRLF: a log line (`Auth failed for bob\n`, a service's
/// stdout on a Unix socket) ends in a bare LF and is not a command.
fn sniff_inline(data: &[u8]) -> Sniff {
    let word_end = data.iter().position(|b| !b.is_ascii_alphabetic()).unwrap_or(data.len());
    let word = data.get(..word_end).unwrap_or(&[]);
    let prefix_of_known =
        INLINE_DETECT_WORDS.iter().any(|w| w.get(..word.len()).is_some_and(|p| p.eq_ignore_ascii_case(word)));
    if word_end == data.len() {
        return if prefix_of_known { Sniff::NeedMore } else { Sniff::No };
    }
    if !INLINE_DETECT_WORDS.iter().any(|w| w.eq_ignore_ascii_case(word)) {
        return Sniff::No;
    }
    match (data.get(word_end), data.get(word_end + 1)) {
        (Some(b'\r'), Some(b'\n')) => Sniff::Yes,
        (Some(b'\r'), None) => Sniff::NeedMore,
        (Some(b' '), _) => {
            let line = &data[..data.len().min(MAX_INLINE_LINE)];
            match line.iter().position(|b| *b == b'\n') {
                Some(lf) if lf > 0 && line[lf - 1] == b'\r' => Sniff::Yes,
                Some(_) => Sniff::No,
                None if data.len() < MAX_INLINE_LINE => Sniff::NeedMore,
                None => Sniff::No,
            }
        }
        _ => Sniff::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(dir: Direction, s: &[u8]) -> Detection {
        detect(dir, s)
    }

    #[test]
    fn detect_resp_array_command_by_direction() {
        let cmd = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
        assert_eq!(det(Direction::Egress, cmd), Detection::Yes(Role::Client));
        assert_eq!(det(Direction::Ingress, cmd), Detection::Yes(Role::Server));
        assert_eq!(det(Direction::Egress, b"*12\r\n$"), Detection::Yes(Role::Client));
    }

    #[test]
    fn detect_needs_more_on_short_prefixes() {
        for p in [&b""[..], b"*", b"*3", b"*3\r", b"*3\r\n", b"P", b"PIN", b"PING", b"PING\r", b"hel"] {
            assert_eq!(det(Direction::Egress, p), Detection::NeedMore, "{:?}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn detect_inline_known_words() {
        assert_eq!(det(Direction::Egress, b"PING\r\n"), Detection::Yes(Role::Client));
        assert_eq!(det(Direction::Ingress, b"auth secret\r\n"), Detection::Yes(Role::Server));
        assert_eq!(det(Direction::Egress, b"HELLO 3\r\n"), Detection::Yes(Role::Client));
        assert_eq!(det(Direction::Egress, b"PINGX\r\n"), Detection::No);
        assert_eq!(det(Direction::Egress, b"PING\rX"), Detection::No);
        assert_eq!(det(Direction::Egress, b"SELECT 2"), Detection::NeedMore, "the line's end decides");
    }

    #[test]
    fn log_lines_that_start_with_a_command_word_are_not_redis() {
        // A service's stdout (a Unix socket to journald) or any text
        // protocol: lines end in a bare LF.
        for line in [&b"Auth failed for bob\n"[..], b"Hello world\nmore", b"select the mode: fast\n", b"PING\n"] {
            assert_eq!(det(Direction::Egress, line), Detection::No, "{:?}", String::from_utf8_lossy(line));
        }
        let long = [b"ECHO ".as_slice(), &[b'x'; MAX_INLINE_LINE]].concat();
        assert_eq!(det(Direction::Egress, &long), Detection::No, "no line end in sight");
    }

    #[test]
    fn detect_rejects_http_postgres_tls() {
        let http: [&[u8]; 4] =
            [b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b"HEAD / HTTP/1.1\r\n"];
        for h in http {
            assert_eq!(det(Direction::Egress, h), Detection::No, "{:?}", String::from_utf8_lossy(h));
            assert_eq!(det(Direction::Ingress, h), Detection::No);
        }
        let pg_ssl = [0u8, 0, 0, 8, 4, 210, 22, 47];
        let pg_startup = [0u8, 0, 0, 41, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0];
        let tls = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01];
        for b in [&pg_ssl[..], &pg_startup[..], &tls[..]] {
            assert_eq!(det(Direction::Egress, b), Detection::No);
            assert_eq!(det(Direction::Ingress, b), Detection::No);
        }
        assert_eq!(det(Direction::Egress, b"*0\r\n"), Detection::No);
        assert_eq!(det(Direction::Egress, b"*3\r\n+OK"), Detection::No);
    }

    #[test]
    fn arg_list_truncates_and_iterates() {
        let mut a = ArgList::default();
        a.push(b"k", false);
        a.open();
        a.extend(&[b'x'; 100]);
        a.extend(&[b'y'; 100]);
        a.close(false);
        a.push(b"z", true);
        let v: Vec<_> = a.iter().collect();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], Arg { bytes: b"k", truncated: false });
        assert_eq!(v[1].bytes.len(), MAX_ARG_BYTES);
        assert!(v[1].truncated);
        assert_eq!(v[2], Arg { bytes: b"z", truncated: true });
        for _ in 0..20 {
            a.push(b"q", false);
        }
        assert_eq!(a.len(), MAX_STORED_ARGS);
    }

    #[test]
    fn command_name_upper_cases_and_bounds() {
        let mut n = CommandName::new(b"client");
        n.push_space();
        n.push_bytes(b"setName");
        assert_eq!(n.as_str(), "CLIENT SETNAME");
        let long = CommandName::new(&[b'a'; 100]);
        assert_eq!(long.as_str().len(), 32);
        assert_eq!(CommandName::new(b"g\x00t").as_str(), "G?T");
    }
}
