//! Incremental decoder of the command direction: RESP arrays of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) and inline commands (`PING\r\n`).
//!
//! Guarantees:
//! - Byte-for-byte the same commands whatever the chunking.
//! - Per command, only the name (inline, 32 bytes) and a bounded [`ArgList`]
//!   are kept; bulk payloads are copied up to [`MAX_ARG_BYTES`] and the rest
//!   (captured or not) is skipped by count.
//! - Malformed input (bad headers, lengths > 512 MiB or negative, a missing
//!   CRLF, an unknown inline word) yields [`CmdEvent::Garbage`] and a scan for
//!   the next `*<digits>\r\n$`; uncaptured bytes that break framing yield
//!   [`CmdEvent::Lost`].
//!
//! [`MAX_ARG_BYTES`]: super::MAX_ARG_BYTES

use super::commands::{self, CmdInfo, KeySpec, Kind};
use super::line::{LineBuf, LineStep, bulk_crlf, parse_i64, quick_len};
use super::{ArgList, CommandName, MAX_RESP_LEN, RespError};
use crate::protocol::Chunk;

/// Longest `*<n>` / `$<n>` header line accepted.
const MAX_HEADER: usize = 24;
/// Bytes of an inline command line that are kept.
const INLINE_KEEP: usize = 4096;
/// Longest inline line accepted (Redis's own limit).
const INLINE_MAX: usize = 64 * 1024;
/// Longest inline command word.
const INLINE_WORD_MAX: usize = 32;

/// A decoded command, ready to wait for its reply.
#[derive(Debug)]
pub(super) struct ParsedCommand {
    /// Time of the chunk holding the command's first byte.
    pub start_ts: u64,
    pub tid: u32,
    pub name: CommandName,
    pub info: Option<&'static CmdInfo>,
    pub args: ArgList,
    /// Arguments after the command word.
    pub arg_count: u32,
    pub key_index: Option<u8>,
    pub inline: bool,
    pub truncated: bool,
}

/// What the decoder reports to the pairing logic.
#[derive(Debug)]
pub(super) enum CmdEvent {
    Command(ParsedCommand),
    /// Malformed bytes were skipped (typically the tail of a command whose
    /// start was not captured); the server answers them with one reply.
    Garbage,
    /// A whole command whose name was not captured (the capture's gap fell
    /// inside it): one reply is owed to it.
    Unnamed,
    /// Uncaptured bytes broke framing. `partial`: a command had started;
    /// `cmd`: it, when its name was known; `single`: it began its chunk, so
    /// the lost bytes most likely held nothing else.
    Lost {
        cmd: Option<ParsedCommand>,
        partial: bool,
        single: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between commands.
    Idle,
    /// After `*`, reading the element count.
    ArrayHeader,
    /// Expecting `$<len>`.
    ArgHeader,
    /// Payload bytes left, plus 2 for the CRLF.
    ArgBody { remaining: u64 },
    /// Reading an inline command's first word (into the name).
    InlineWord,
    /// Reading the rest of an inline line.
    InlineRest,
    /// Scanning for `*<digits>\r\n$`.
    Resync,
}

/// The command being decoded.
struct Builder {
    start_ts: u64,
    tid: u32,
    at_chunk_start: bool,
    argc: u64,
    /// Index of the argument being read (0 = command word).
    index: u64,
    name: CommandName,
    word_len: usize,
    info: Option<&'static CmdInfo>,
    key: KeySpec,
    container: bool,
    /// Whether argument values are kept (not for commands that carry secrets).
    store: bool,
    args: ArgList,
    truncated: bool,
    arg_truncated: bool,
    /// The command word (or a container's subcommand) was not captured
    /// whole: the command's name is unknown.
    name_cut: bool,
}

impl Builder {
    fn new(start_ts: u64, tid: u32, at_chunk_start: bool) -> Self {
        Self {
            start_ts,
            tid,
            at_chunk_start,
            argc: 0,
            index: 0,
            name: CommandName::default(),
            word_len: 0,
            info: None,
            key: KeySpec::None,
            container: false,
            store: true,
            args: ArgList::default(),
            truncated: false,
            arg_truncated: false,
            name_cut: false,
        }
    }

    /// The command word is complete.
    fn on_name(&mut self) {
        self.info = commands::lookup(self.name.as_bytes());
        if let Some(info) = self.info {
            self.key = info.key;
            self.store = info.kind != Kind::Sensitive;
            self.container = info.kind == Kind::Container;
        }
    }

    /// A container command's subcommand is complete.
    fn on_subcommand(&mut self) {
        let Some(info) = self.info else { return };
        let sub = self.name.as_bytes().get(info.name.len() + 1..).unwrap_or(&[]);
        let (key, secret) = commands::subcommand(info.name.as_bytes(), sub);
        self.key = key;
        if secret {
            self.store = false;
        }
    }

    fn finish(&mut self, inline: bool) -> ParsedCommand {
        let args = std::mem::take(&mut self.args);
        let key_index = if self.store { resolve_key(self.key, &args) } else { None };
        ParsedCommand {
            start_ts: self.start_ts,
            tid: self.tid,
            name: self.name,
            info: self.info,
            args,
            arg_count: u32::try_from(self.argc.saturating_sub(1)).unwrap_or(u32::MAX),
            key_index,
            inline,
            truncated: self.truncated,
        }
    }
}

/// Index in `args` (argv[1..]) of the first key.
fn resolve_key(spec: KeySpec, args: &ArgList) -> Option<u8> {
    let idx = match spec {
        KeySpec::None => return None,
        KeySpec::At(p) => usize::from(p).checked_sub(1)?,
        KeySpec::Eval => {
            let numkeys = args.get(1).and_then(|a| parse_i64(a.bytes).ok())?;
            if numkeys <= 0 {
                return None;
            }
            2
        }
        KeySpec::Streams => args.iter().position(|a| a.bytes.eq_ignore_ascii_case(b"STREAMS"))? + 1,
    };
    (idx < args.len()).then_some(idx as u8)
}

/// Progress of the resync scan for `*<digits>\r\n$`.
#[derive(Default)]
struct Scan {
    /// 0: seek `*`; 1: first digit; 2: digits; 3: `\n`; 4: `$`.
    phase: u8,
    n: u64,
    start_ts: u64,
    tid: u32,
    at_chunk_start: bool,
}

/// Decoder of one connection's command direction.
pub(super) struct RequestDecoder {
    state: State,
    header: LineBuf<MAX_HEADER>,
    /// Inline line bytes (allocated only if inline commands are seen).
    inline: Vec<u8>,
    inline_total: usize,
    cur: Builder,
    scan: Scan,
}

impl Default for RequestDecoder {
    fn default() -> Self {
        Self {
            state: State::Idle,
            header: LineBuf::default(),
            inline: Vec::new(),
            inline_total: 0,
            cur: Builder::new(0, 0, false),
            scan: Scan::default(),
        }
    }
}

impl RequestDecoder {
    /// A command is partly decoded.
    pub fn in_command(&self) -> bool {
        !matches!(self.state, State::Idle | State::Resync)
    }

    pub fn feed(&mut self, chunk: &Chunk<'_>, sink: &mut impl FnMut(CmdEvent)) {
        let mut pos = 0;
        while pos < chunk.data.len() {
            if self.step(chunk, &mut pos, sink).is_err() {
                self.enter_resync();
                sink(CmdEvent::Garbage);
            }
        }
        let (gap, tail) = chunk.gap_and_tail();
        if gap > 0 {
            self.skip_missing(gap as u64, sink);
        }
        // The call's last bytes, past the gap: read in place when the gap
        // ended inside an argument (the commands after a large value).
        if !tail.is_empty() && !matches!(self.state, State::Resync) {
            self.feed(&chunk.tail_chunk(), sink);
        }
    }

    fn enter_resync(&mut self) {
        self.header.reset();
        self.inline.clear();
        self.inline_total = 0;
        self.scan.phase = 0;
        self.state = State::Resync;
    }

    /// One state transition; consumes at least one byte unless it only
    /// changes state.
    fn step(&mut self, chunk: &Chunk<'_>, pos: &mut usize, sink: &mut impl FnMut(CmdEvent)) -> Result<(), RespError> {
        let data = chunk.data;
        match self.state {
            State::Idle => {
                let Some(&b) = data.get(*pos) else {
                    return Ok(());
                };
                if b == b'\r' || b == b'\n' {
                    *pos += 1;
                    return Ok(());
                }
                self.cur = Builder::new(chunk.ts_ns, chunk.tid, *pos == 0);
                if b == b'*' {
                    *pos += 1;
                    self.state = State::ArrayHeader;
                } else if b.is_ascii_alphabetic() {
                    self.state = State::InlineWord;
                } else {
                    return Err(RespError::TypeByte(b));
                }
            }
            State::ArrayHeader
                if self.header.is_empty()
                    && let Some((n, used)) = quick_len(data, *pos) =>
            {
                *pos += used;
                self.on_array_len(n)?;
            }
            State::ArgHeader
                if self.header.is_empty()
                    && data.get(*pos) == Some(&b'$')
                    && let Some((n, used)) = quick_len(data, *pos + 1) =>
            {
                *pos += used + 1;
                self.on_arg_len(n)?;
            }
            State::ArrayHeader => match self.header.take(data, pos, MAX_HEADER) {
                LineStep::More => {}
                LineStep::TooLong => return Err(RespError::LineTooLong),
                LineStep::Done(line) => {
                    let n = parse_i64(line)?;
                    self.on_array_len(n)?;
                }
            },
            State::ArgHeader => match self.header.take(data, pos, MAX_HEADER) {
                LineStep::More => {}
                LineStep::TooLong => return Err(RespError::LineTooLong),
                LineStep::Done(line) => {
                    let Some((b'$', digits)) = line.split_first() else {
                        return Err(RespError::NotBulk);
                    };
                    let n = parse_i64(digits)?;
                    self.on_arg_len(n)?;
                }
            },
            State::ArgBody { remaining } => {
                let rest = data.get(*pos..).unwrap_or(&[]);
                let take = remaining.min(rest.len() as u64) as usize;
                let payload = take.min(remaining.saturating_sub(2) as usize);
                if let Some(p) = rest.get(..payload)
                    && !p.is_empty()
                {
                    self.arg_bytes(p);
                }
                let left = match bulk_crlf(rest.get(payload..take).unwrap_or(&[]), remaining - payload as u64) {
                    Ok(left) => left,
                    Err(e) => {
                        *pos += payload;
                        return Err(e);
                    }
                };
                *pos += take;
                if left == 0 {
                    self.end_arg(sink);
                } else {
                    self.state = State::ArgBody { remaining: left };
                }
            }
            State::InlineWord => {
                let rest = data.get(*pos..).unwrap_or(&[]);
                let end = rest.iter().position(|b| !is_word_byte(*b)).unwrap_or(rest.len());
                let word = rest.get(..end).unwrap_or(&[]);
                self.cur.word_len += word.len();
                if self.cur.word_len > INLINE_WORD_MAX {
                    return Err(RespError::UnknownInline);
                }
                self.cur.name.push_bytes(word);
                *pos += end;
                match rest.get(end) {
                    None => {}
                    Some(b' ' | b'\t' | b'\r' | b'\n') => {
                        self.cur.on_name();
                        if self.cur.info.is_none() {
                            return Err(RespError::UnknownInline);
                        }
                        self.state = State::InlineRest;
                    }
                    Some(&b) => return Err(RespError::TypeByte(b)),
                }
            }
            State::InlineRest => {
                let rest = data.get(*pos..).unwrap_or(&[]);
                let nl = memchr::memchr(b'\n', rest);
                let part = rest.get(..nl.unwrap_or(rest.len())).unwrap_or(&[]);
                let room = INLINE_KEEP.saturating_sub(self.inline.len());
                self.inline.extend_from_slice(part.get(..room.min(part.len())).unwrap_or(&[]));
                self.inline_total += part.len();
                *pos += part.len() + usize::from(nl.is_some());
                if self.inline_total > INLINE_MAX {
                    return Err(RespError::LineTooLong);
                }
                if nl.is_some() {
                    let cmd = self.finish_inline();
                    sink(CmdEvent::Command(cmd));
                    self.state = State::Idle;
                }
            }
            State::Resync => self.scan_step(chunk, pos),
        }
        Ok(())
    }

    fn on_array_len(&mut self, n: i64) -> Result<(), RespError> {
        if n > MAX_RESP_LEN {
            return Err(RespError::Length(n));
        }
        if n <= 0 {
            // Redis ignores empty and null multibulks.
            self.state = State::Idle;
        } else {
            self.cur.argc = n as u64;
            self.state = State::ArgHeader;
        }
        Ok(())
    }

    fn on_arg_len(&mut self, n: i64) -> Result<(), RespError> {
        if !(0..=MAX_RESP_LEN).contains(&n) {
            return Err(RespError::Length(n));
        }
        self.begin_arg();
        self.state = State::ArgBody { remaining: n as u64 + 2 };
        Ok(())
    }

    fn begin_arg(&mut self) {
        let cur = &mut self.cur;
        cur.arg_truncated = false;
        if cur.index >= 1 && cur.store {
            cur.args.open();
        }
        if cur.index == 1 && cur.container {
            cur.name.push_space();
        }
    }

    fn arg_bytes(&mut self, bytes: &[u8]) {
        let cur = &mut self.cur;
        if cur.index == 0 || (cur.index == 1 && cur.container) {
            cur.name.push_bytes(bytes);
        }
        if cur.index >= 1 {
            cur.args.extend(bytes);
        }
    }

    fn end_arg(&mut self, sink: &mut impl FnMut(CmdEvent)) {
        let cur = &mut self.cur;
        if cur.index == 0 {
            cur.on_name();
        } else {
            cur.args.close(cur.arg_truncated);
            if cur.index == 1 && cur.container {
                cur.on_subcommand();
            }
        }
        cur.index += 1;
        if cur.index >= cur.argc {
            if cur.name_cut {
                sink(CmdEvent::Unnamed);
            } else {
                let cmd = cur.finish(false);
                sink(CmdEvent::Command(cmd));
            }
            self.state = State::Idle;
        } else {
            self.state = State::ArgHeader;
        }
    }

    /// Splits the kept inline line into arguments.
    fn finish_inline(&mut self) -> ParsedCommand {
        let line_cut = self.inline_total > self.inline.len();
        let line = self.inline.strip_suffix(b"\r").unwrap_or(&self.inline);
        let cur = &mut self.cur;
        let mut words = line.split(|b| *b == b' ' || *b == b'\t').filter(|w| !w.is_empty()).peekable();
        let mut argc = 1u64;
        while let Some(w) = words.next() {
            argc += 1;
            if argc == 2 && cur.container {
                cur.name.push_space();
                cur.name.push_bytes(w);
                if cur.store {
                    cur.args.push(w, false);
                }
                cur.on_subcommand();
                continue;
            }
            if cur.store && cur.args.has_room() {
                let last_cut = line_cut && words.peek().is_none();
                cur.args.push(w, last_cut);
            }
        }
        cur.argc = argc;
        cur.truncated |= line_cut;
        let cmd = cur.finish(true);
        self.inline.clear();
        self.inline_total = 0;
        cmd
    }

    fn scan_step(&mut self, chunk: &Chunk<'_>, pos: &mut usize) {
        let data = chunk.data;
        while let Some(rest) = data.get(*pos..).filter(|r| !r.is_empty()) {
            let s = &mut self.scan;
            if s.phase == 0 {
                let Some(i) = memchr::memchr(b'*', rest) else {
                    *pos = data.len();
                    return;
                };
                *s = Scan { phase: 1, n: 0, start_ts: chunk.ts_ns, tid: chunk.tid, at_chunk_start: *pos + i == 0 };
                *pos += i + 1;
                continue;
            }
            let b = rest.first().copied().unwrap_or(0);
            let digit = u64::from(b.wrapping_sub(b'0'));
            let ok = match (s.phase, b) {
                (1, b'1'..=b'9') => {
                    s.n = digit;
                    s.phase = 2;
                    true
                }
                (2, b'0'..=b'9') if s.n * 10 + digit <= MAX_RESP_LEN as u64 => {
                    s.n = s.n * 10 + digit;
                    true
                }
                (2, b'\r') => {
                    s.phase = 3;
                    true
                }
                (3, b'\n') => {
                    s.phase = 4;
                    true
                }
                (4, b'$') => {
                    *pos += 1;
                    s.phase = 0;
                    self.cur = Builder::new(s.start_ts, s.tid, s.at_chunk_start);
                    self.cur.argc = s.n;
                    self.header.seed(b"$");
                    self.state = State::ArgHeader;
                    return;
                }
                _ => false,
            };
            if ok {
                *pos += 1;
            } else {
                // Not consumed: it is re-examined as a possible '*'.
                s.phase = 0;
            }
        }
    }

    /// `n` bytes after the captured data were not captured.
    fn skip_missing(&mut self, mut n: u64, sink: &mut impl FnMut(CmdEvent)) {
        if let State::ArgBody { remaining } = self.state {
            let take = n.min(remaining);
            n -= take;
            self.cur.truncated = true;
            self.cur.arg_truncated = true;
            self.cur.name_cut |= self.cur.index == 0 || self.cur.index == 1 && self.cur.container;
            if take == remaining {
                self.end_arg(sink);
            } else {
                self.state = State::ArgBody { remaining: remaining - take };
            }
        }
        if n == 0 {
            return;
        }
        match self.state {
            State::Resync => {}
            State::Idle => {
                sink(CmdEvent::Lost { cmd: None, partial: false, single: false });
                self.enter_resync();
            }
            _ => {
                let cur = &mut self.cur;
                let named = cur.index >= 1 && cur.argc > 0 && !cur.name_cut;
                let cmd = named.then(|| {
                    cur.args.close(true);
                    cur.truncated = true;
                    cur.finish(false)
                });
                let single = cur.at_chunk_start;
                sink(CmdEvent::Lost { cmd, partial: true, single });
                self.enter_resync();
            }
        }
    }
}

/// Bytes allowed in an inline command word (letters, digits, `_`, `.`).
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.'
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
