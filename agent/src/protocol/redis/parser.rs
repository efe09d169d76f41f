//! Pairs one connection's commands with its replies in strict FIFO order,
//! and tracks the connection state that changes pairing: MULTI/EXEC, SELECT,
//! Pub/Sub (RESP2 subscribe mode, RESP3 pushes) and MONITOR.
//!
//! Guarantees:
//! - At most [`MAX_IN_FLIGHT`] commands wait; beyond that commands are
//!   dropped but their replies are still counted off, so later pairs stay
//!   aligned.
//! - A reply that started before the oldest pending command, or whose type
//!   cannot answer it (command table shapes), is never paired; the second
//!   case drops all pending commands and pairs nothing until the streams
//!   look aligned again ("blind" mode: the reply side is between replies and
//!   at least as many replies as commands were seen since).
//! - Uncaptured or malformed command bytes: a command whose start was seen
//!   in a chunk of its own still expects one reply (kept as a truncated
//!   command when its name is known, otherwise its reply is skipped); when
//!   unknown commands may be hidden, the commands seen before them (and the
//!   one cut short, when its name is known) still pair, since their replies
//!   come first, and the parser goes blind once they have.
//! - Pub/Sub: the subscribing command gets a span ended by its first
//!   confirmation; further confirmations, messages and pushes never pair and
//!   are counted in [`RedisParser::push_messages`]. After MONITOR nothing
//!   more pairs on the connection (until RESET).
//! - SELECT takes effect when its `+OK` arrives (inside MULTI, when EXEC
//!   succeeds); the SELECT span itself reports the previous database.

use std::collections::VecDeque;

use super::commands::{Kind, Shape, shape_fits};
use super::line::parse_i64;
use super::reply::{ReplyDecoder, ReplyEvent, ReplyInfo};
use super::request::{CmdEvent, ParsedCommand, RequestDecoder};
use super::{MAX_IN_FLIGHT, RedisExchange, ReplyKind};
use crate::protocol::{Chunk, Exchange, ParseStats, Record, Role, StreamParser};

/// Per-connection Redis parser.
pub struct RedisParser {
    req: RequestDecoder,
    rep: ReplyDecoder,
    pair: Pairing,
}

impl RedisParser {
    pub fn new(role: Role) -> Self {
        Self { req: RequestDecoder::default(), rep: ReplyDecoder::default(), pair: Pairing::new(role) }
    }

    /// Out-of-band replies skipped so far (RESP3 pushes, Pub/Sub messages
    /// and extra confirmations, MONITOR output).
    pub fn push_messages(&self) -> u64 {
        self.pair.pushes
    }
}

impl StreamParser for RedisParser {
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        let pair = &mut self.pair;
        if chunk.dir == pair.role.request_direction() {
            let reply_idle = self.rep.is_idle();
            self.req.feed(chunk, &mut |ev| pair.on_cmd_event(ev, reply_idle, stats));
        } else {
            self.rep.feed(chunk, &mut |ev| pair.on_reply_event(ev, out, stats));
        }
    }

    fn close(&mut self, _ts_ns: u64, _out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        // RESP has no reply delimited by close: what waits is dropped.
        stats.dropped_requests += self.pair.queue.len() as u64;
        if self.req.in_command() {
            stats.truncated += 1;
        }
        // Start afresh, keeping the counter and the queue's allocation.
        let mut queue = std::mem::take(&mut self.pair.queue);
        queue.clear();
        let pushes = self.pair.pushes;
        *self = Self::new(self.pair.role);
        self.pair.pushes = pushes;
        self.pair.queue = queue;
    }
}

/// How a command changes pairing or connection state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Special {
    None,
    Select(u32),
    Multi,
    /// With the database a SELECT queued in the transaction switches to.
    Exec(Option<u32>),
    Discard,
    Subscribe(u32),
    Unsubscribe(u32),
    Ping,
    Monitor,
    Reset,
}

struct Pending {
    cmd: ParsedCommand,
    special: Special,
    in_tx: bool,
    shape: Shape,
    /// Replies to skip after this command's (commands dropped behind it).
    skip_after: u64,
}

struct Pairing {
    role: Role,
    queue: VecDeque<Pending>,
    /// Replies to skip before the oldest pending command's.
    skip_front: u64,
    /// Pairing suspended: the reply count of lost commands is unknown.
    blind: bool,
    /// Commands were lost behind the pending ones: those still pair, then
    /// pairing is suspended, with this many replies owed (the lost
    /// command cut short, commands seen since).
    blind_after: Option<i64>,
    /// While blind: commands seen minus replies seen (plus replies thought
    /// still owed at the time framing was lost).
    balance: i64,
    db: u32,
    /// RESP2 subscribe mode: arrays are Pub/Sub traffic.
    sub_mode: bool,
    monitor: bool,
    /// Confirmations still expected for a multi-channel (un)subscribe.
    confirm_skip: u64,
    /// An UNSUBSCRIBE-all is confirming until the count reaches 0.
    unsub_all: bool,
    /// Command-side view: inside MULTI.
    in_multi: bool,
    multi_select: Option<u32>,
    /// Command-side view: MONITOR was sent.
    cmd_monitor: bool,
    pushes: u64,
}

impl Pairing {
    fn new(role: Role) -> Self {
        Self {
            role,
            queue: VecDeque::new(),
            skip_front: 0,
            blind: false,
            blind_after: None,
            balance: 0,
            db: 0,
            sub_mode: false,
            monitor: false,
            confirm_skip: 0,
            unsub_all: false,
            in_multi: false,
            multi_select: None,
            cmd_monitor: false,
            pushes: 0,
        }
    }

    fn on_cmd_event(&mut self, ev: CmdEvent, reply_idle: bool, stats: &mut ParseStats) {
        match ev {
            CmdEvent::Command(cmd) => self.on_command(cmd, reply_idle, stats),
            CmdEvent::Unnamed => {
                stats.truncated += 1;
                self.expect_unknown_reply();
            }
            CmdEvent::Garbage => {
                stats.malformed += 1;
                stats.resyncs += 1;
                self.expect_unknown_reply();
            }
            CmdEvent::Lost { cmd, partial, single } => {
                stats.resyncs += 1;
                stats.truncated += u64::from(partial);
                match cmd {
                    Some(c) if single => self.on_command(c, reply_idle, stats),
                    None if partial && single => self.expect_unknown_reply(),
                    // Already blind: one more reply owed, as before.
                    Some(_) if self.blind => self.go_blind(1, stats),
                    Some(c) => {
                        // Its reply is the next after those pending.
                        self.on_command(c, reply_idle, stats);
                        self.blind_after_pending(0, stats);
                    }
                    None => self.blind_after_pending(i64::from(partial), stats),
                }
            }
        }
    }

    /// Commands of unknown count were lost after those pending (`owed`:
    /// replies known to be owed beyond them): the pending ones still pair,
    /// in order, and pairing is suspended once they have.
    fn blind_after_pending(&mut self, owed: i64, stats: &mut ParseStats) {
        if self.blind || self.queue.is_empty() {
            self.go_blind(owed, stats);
        } else {
            *self.blind_after.get_or_insert(0) += owed;
        }
    }

    /// One reply is owed to a command that will not be paired.
    fn expect_unknown_reply(&mut self) {
        if self.blind {
            self.balance += 1;
        } else if let Some(owed) = &mut self.blind_after {
            *owed += 1;
        } else if let Some(tail) = self.queue.back_mut() {
            tail.skip_after += 1;
        } else {
            self.skip_front += 1;
        }
    }

    /// Drops every pending command and pairs nothing until realigned.
    fn go_blind(&mut self, owed: i64, stats: &mut ParseStats) {
        stats.dropped_requests += self.queue.len() as u64;
        self.queue.clear();
        self.skip_front = 0;
        self.confirm_skip = 0;
        self.unsub_all = false;
        self.blind = true;
        self.balance = owed + self.blind_after.take().unwrap_or(0);
    }

    fn on_command(&mut self, cmd: ParsedCommand, reply_idle: bool, stats: &mut ParseStats) {
        let (kind, shape) = cmd.info.map_or((Kind::Plain, Shape::Any), |i| (i.kind, i.shape));
        let channels = cmd.arg_count;
        let special = match kind {
            Kind::Select => cmd
                .args
                .get(0)
                .and_then(|a| parse_i64(a.bytes).ok())
                .and_then(|n| u32::try_from(n).ok())
                .map_or(Special::None, Special::Select),
            Kind::Multi => Special::Multi,
            Kind::Exec => Special::Exec(None),
            Kind::Discard => Special::Discard,
            Kind::Subscribe => Special::Subscribe(channels),
            Kind::Unsubscribe => Special::Unsubscribe(channels),
            Kind::Ping => Special::Ping,
            Kind::Monitor => Special::Monitor,
            Kind::Reset => Special::Reset,
            Kind::Plain | Kind::Container | Kind::Sensitive => Special::None,
        };
        if self.cmd_monitor && special != Special::Reset {
            return;
        }
        let in_tx = self.in_multi && !matches!(special, Special::Multi | Special::Exec(_) | Special::Discard);
        let special = match special {
            Special::Multi => {
                self.in_multi = true;
                self.multi_select = None;
                special
            }
            Special::Exec(_) => {
                self.in_multi = false;
                Special::Exec(self.multi_select.take())
            }
            Special::Discard | Special::Reset => {
                self.in_multi = false;
                self.multi_select = None;
                self.cmd_monitor = false;
                special
            }
            Special::Select(n) if in_tx => {
                self.multi_select = Some(n);
                special
            }
            Special::Monitor => {
                self.cmd_monitor = true;
                special
            }
            _ => special,
        };
        if self.blind {
            if reply_idle && self.balance <= 0 {
                self.blind = false;
            } else {
                self.balance += 1;
                stats.dropped_requests += 1;
                return;
            }
        }
        if let Some(owed) = &mut self.blind_after {
            // Behind lost commands: its reply's place is unknown.
            *owed += 1;
            stats.dropped_requests += 1;
            return;
        }
        if self.queue.len() >= MAX_IN_FLIGHT {
            stats.dropped_requests += 1;
            self.expect_unknown_reply();
            return;
        }
        self.queue.push_back(Pending { cmd, special, in_tx, shape, skip_after: 0 });
    }

    fn on_reply_event(&mut self, ev: ReplyEvent, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        match ev {
            ReplyEvent::Reply(info) => self.on_reply(info, out, stats),
            ReplyEvent::Malformed => {
                stats.malformed += 1;
                stats.resyncs += 1;
                if !self.queue.is_empty() {
                    let owed = self.queue.len().saturating_sub(1);
                    self.go_blind(owed as i64, stats);
                }
            }
            ReplyEvent::Lost { partial } => {
                stats.truncated += 1;
                stats.resyncs += 1;
                if let Some(info) = partial {
                    self.on_reply(info, out, stats);
                }
                if !self.queue.is_empty() {
                    self.go_blind(0, stats);
                }
            }
        }
    }

    fn head_special(&self) -> Option<Special> {
        self.queue.front().map(|p| p.special)
    }

    fn on_reply(&mut self, info: ReplyInfo, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        if self.monitor {
            let reset = info.kind == ReplyKind::Simple && info.text().eq_ignore_ascii_case(b"RESET");
            if reset && self.head_special() == Some(Special::Reset) {
                self.pair_head(info, out, stats);
            } else {
                self.pushes += 1;
            }
            return;
        }
        let head_subscribes = matches!(self.head_special(), Some(Special::Subscribe(_) | Special::Unsubscribe(_)));
        if info.kind == ReplyKind::Push || (info.kind == ReplyKind::Array && (self.sub_mode || head_subscribes)) {
            self.on_push(info, out, stats);
            return;
        }
        if self.skip_front > 0 {
            self.skip_front -= 1;
            return;
        }
        if self.blind {
            self.balance -= 1;
            stats.unmatched_responses += 1;
            return;
        }
        let Some(head) = self.queue.front() else {
            stats.unmatched_responses += 1;
            return;
        };
        if info.start_ts < head.cmd.start_ts {
            // Started before the command was sent: answers an unseen one.
            stats.unmatched_responses += 1;
            return;
        }
        if !head.in_tx && !shape_fits(head.shape, info.kind) {
            stats.unmatched_responses += 1;
            let owed = self.queue.len().saturating_sub(1);
            self.go_blind(owed as i64, stats);
            return;
        }
        self.pair_head(info, out, stats);
    }

    /// Pub/Sub traffic: RESP3 pushes, or arrays in RESP2 subscribe mode.
    fn on_push(&mut self, info: ReplyInfo, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        let text = info.text();
        let unsub = confirmation(text);
        let pong = text.eq_ignore_ascii_case(b"pong");
        let resp2 = info.kind == ReplyKind::Array;
        let none_left = info.last_int == Some(0);
        let pairable =
            !self.blind && self.skip_front == 0 && self.queue.front().is_some_and(|p| info.start_ts >= p.cmd.start_ts);
        let head = if pairable { self.head_special() } else { None };
        match unsub {
            Some(unsub) => {
                if self.confirm_skip > 0 {
                    self.confirm_skip -= 1;
                    self.pushes += 1;
                } else if unsub && self.unsub_all {
                    self.unsub_all = !none_left;
                    self.pushes += 1;
                } else {
                    match (unsub, head) {
                        (false, Some(Special::Subscribe(n))) => {
                            self.pair_head(info, out, stats);
                            self.confirm_skip = u64::from(n.saturating_sub(1));
                        }
                        (true, Some(Special::Unsubscribe(n))) => {
                            self.pair_head(info, out, stats);
                            if n == 0 {
                                self.unsub_all = !none_left;
                            } else {
                                self.confirm_skip = u64::from(n - 1);
                            }
                        }
                        _ => self.pushes += 1,
                    }
                }
                if resp2 {
                    self.sub_mode = !(unsub && none_left);
                }
                if unsub && none_left {
                    self.confirm_skip = 0;
                    self.unsub_all = false;
                }
            }
            None if pong && head == Some(Special::Ping) => self.pair_head(info, out, stats),
            None => self.pushes += 1,
        }
    }

    fn pair_head(&mut self, info: ReplyInfo, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        let Some(p) = self.queue.pop_front() else {
            return;
        };
        self.skip_front += p.skip_after;
        if self.queue.is_empty()
            && let Some(owed) = self.blind_after.take()
        {
            self.blind = true;
            self.balance = owed;
        }
        let ok = !info.kind.is_error();
        let cmd = p.cmd;
        out.push(Exchange {
            role: self.role,
            start_ns: cmd.start_ts,
            end_ns: info.end_ts.max(cmd.start_ts),
            tid: cmd.tid,
            window: None,
            record: Record::Redis(RedisExchange {
                command: cmd.name,
                args: cmd.args,
                arg_count: cmd.arg_count,
                key_index: cmd.key_index,
                db: self.db,
                in_transaction: p.in_tx,
                inline: cmd.inline,
                truncated: cmd.truncated || info.truncated,
                reply: info.kind,
                error: info.error,
            }),
        });
        stats.exchanges += 1;
        if !ok || p.in_tx {
            return;
        }
        match p.special {
            Special::Select(n) => self.db = n,
            Special::Exec(Some(n)) if info.kind == ReplyKind::Array => self.db = n,
            Special::Monitor => self.monitor = true,
            Special::Reset => {
                self.db = 0;
                self.sub_mode = false;
                self.monitor = false;
                self.confirm_skip = 0;
                self.unsub_all = false;
            }
            _ => {}
        }
    }
}

/// Whether a Pub/Sub array is a subscribe (false) or unsubscribe (true)
/// confirmation.
fn confirmation(first: &[u8]) -> Option<bool> {
    const SUB: [&[u8]; 3] = [b"subscribe", b"psubscribe", b"ssubscribe"];
    const UNSUB: [&[u8]; 3] = [b"unsubscribe", b"punsubscribe", b"sunsubscribe"];
    if SUB.iter().any(|w| w.eq_ignore_ascii_case(first)) {
        Some(false)
    } else if UNSUB.iter().any(|w| w.eq_ignore_ascii_case(first)) {
        Some(true)
    } else {
        None
    }
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
