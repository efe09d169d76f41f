//! HPACK (RFC 7541) header block decoding, one decoder per direction.
//!
//! kspan decodes HPACK itself: loona-hpack builds a 257-entry hash map for
//! every Huffman-coded string (measured: about 100 us per nginx read under
//! h2load, the agent fell behind and the ring buffer overflowed),
//! httlib-hpack can panic on a malformed integer, and h2 keeps its decoder
//! private. loona-hpack stays as the reference in the tests and the fuzz
//! target, which check that both decoders agree.
//!
//! Guarantees: never panics on any input; the dynamic table holds at most
//! the size the peer allowed (at most [`MAX_TABLE`](super::MAX_TABLE)
//! bytes, RFC size accounting); an error leaves the decoder unusable for
//! the connection (the caller stops), never silently out of step.
//!
//! A decoder [`joined`](Decoder::joined) mid-stream (a connection opened
//! before kspan started) never gives a wrong field either: index `i` of the
//! dynamic table is the `i`-th newest entry, and the entries inserted since
//! the join are the newest ones, so an index within them is decoded
//! exactly and one beyond them (an entry the encoder added before the
//! join) is reported as an unknown field ([`UNKNOWN`] as its name), never
//! guessed. A joined decoder keeps up to [`MAX_TABLE`](super::MAX_TABLE)
//! bytes whatever size the encoder uses (it keeps at least every entry the
//! encoder still has, or reports the ones it lost as unknown).

use std::collections::VecDeque;
use std::sync::OnceLock;

/// Why a header block could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("header block ends inside a field")]
    Short,
    #[error("integer too large")]
    Integer,
    #[error("index {0} is in neither table")]
    Index(usize),
    #[error("bad Huffman code or padding")]
    Huffman,
    #[error("table size update to {0} over the allowed size")]
    TableSize(usize),
}

/// The static table (RFC 7541 Appendix A), index 1 first.
pub(super) const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Code lengths of the Huffman code (RFC 7541 Appendix B), symbols 0-255
/// and EOS (256). The code is canonical: codes follow from the lengths
/// (shorter first, then by symbol), which a unit test checks against the
/// RFC's own examples.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
/// Marks a tree slot as a leaf: the low bits are the symbol.
const LEAF: u16 = 0x8000;

/// (code, length) of every symbol: shorter codes first, then by symbol,
/// each the previous code plus one, shifted to its length.
fn canonical_codes() -> [(u32, u8); 257] {
    let mut order: Vec<u16> = (0..=EOS).collect();
    order.sort_by_key(|&s| (CODE_LENGTHS[s as usize], s));
    let mut codes = [(0u32, 0u8); 257];
    let (mut code, mut prev_len) = (0u32, 0u8);
    for (n, &sym) in order.iter().enumerate() {
        let len = CODE_LENGTHS[sym as usize];
        if n > 0 {
            code = (code + 1) << (len - prev_len);
        }
        prev_len = len;
        codes[sym as usize] = (code, len);
    }
    codes
}

/// The Huffman code as a binary tree: node `i` has children `tree[i][bit]`,
/// each another node or `LEAF | symbol`.
fn tree() -> &'static [[u16; 2]] {
    static TREE: OnceLock<Vec<[u16; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut nodes = vec![[0u16; 2]];
        for (sym, &(code, len)) in (0..=EOS).zip(canonical_codes().iter()) {
            let mut node = 0usize;
            for i in (0..len).rev() {
                let bit = ((code >> i) & 1) as usize;
                if i == 0 {
                    nodes[node][bit] = LEAF | sym;
                } else {
                    if nodes[node][bit] == 0 {
                        nodes.push([0, 0]);
                        nodes[node][bit] = (nodes.len() - 1) as u16;
                    }
                    node = nodes[node][bit] as usize;
                }
            }
        }
        nodes
    })
}

/// One step of the Huffman decoder: from a tree node, four input bits lead
/// to node `next`, emitting `sym` when a code ended on the way (codes are at
/// least 5 bits long, so at most one does); `sym` is [`NONE`] otherwise and
/// [`FAIL`] for EOS, which must not appear in a string.
#[derive(Clone, Copy, Default)]
struct Step {
    next: u16,
    sym: u16,
}

const NONE: u16 = 0x100 + 1;
const FAIL: u16 = EOS;

/// Per tree node: its 16 steps, and whether ending there is valid padding
/// (at most 7 bits into a code, all of them ones).
struct Steps {
    steps: Vec<[Step; 16]>,
    pad_ok: Vec<bool>,
}

fn steps() -> &'static Steps {
    static STEPS: OnceLock<Steps> = OnceLock::new();
    STEPS.get_or_init(|| {
        let tree = tree();
        // Depth and all-ones path of every node, root first (children are
        // pushed after their parent, so one pass in order suffices).
        let mut depth = vec![0u8; tree.len()];
        let mut ones = vec![true; tree.len()];
        for (n, kids) in tree.iter().enumerate() {
            for (bit, &k) in kids.iter().enumerate() {
                if k & LEAF == 0 && k != 0 {
                    depth[k as usize] = depth[n] + 1;
                    ones[k as usize] = ones[n] && bit == 1;
                }
            }
        }
        let steps = (0..tree.len())
            .map(|n| {
                let mut row = [Step::default(); 16];
                for (x, step) in row.iter_mut().enumerate() {
                    let (mut node, mut sym) = (n, NONE);
                    for i in (0..4).rev() {
                        let k = tree[node][(x >> i) & 1];
                        if k & LEAF != 0 {
                            sym = if k & !LEAF == EOS { FAIL } else { k & !LEAF };
                            node = 0;
                        } else {
                            node = k as usize;
                        }
                    }
                    *step = Step { next: node as u16, sym };
                }
                row
            })
            .collect();
        let pad_ok = (0..tree.len()).map(|n| depth[n] <= 7 && ones[n]).collect();
        Steps { steps, pad_ok }
    })
}

/// Decodes a Huffman-coded string, appending to `out`, four bits a step.
/// The padding must be at most 7 bits, all ones (a prefix of EOS); EOS
/// itself is an error.
fn huffman(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let Steps { steps, pad_ok } = steps();
    let mut node = 0usize;
    for &byte in src {
        for nibble in [byte >> 4, byte & 0xf] {
            let step = steps[node][nibble as usize];
            match step.sym {
                NONE => {}
                FAIL => return Err(HpackError::Huffman),
                sym => out.push(sym as u8),
            }
            node = step.next as usize;
        }
    }
    if !pad_ok[node] {
        return Err(HpackError::Huffman);
    }
    Ok(())
}

/// An integer with an `n`-bit prefix at `block[*pos]` (RFC 7541 5.1),
/// at most 2^28 (no header needs more).
fn integer(block: &[u8], pos: &mut usize, n: u8) -> Result<usize, HpackError> {
    let mask = (1u16 << n) as usize - 1;
    let first = *block.get(*pos).ok_or(HpackError::Short)? as usize & mask;
    *pos += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = first;
    for shift in (0..28).step_by(7) {
        let b = *block.get(*pos).ok_or(HpackError::Short)?;
        *pos += 1;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(HpackError::Integer)
}

/// A string literal at `block[*pos]` (Huffman-coded or raw), into `out`.
fn string(block: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Result<(), HpackError> {
    out.clear();
    let coded = *block.get(*pos).ok_or(HpackError::Short)? & 0x80 != 0;
    let len = integer(block, pos, 7)?;
    let end = pos.checked_add(len).ok_or(HpackError::Short)?;
    let raw = block.get(*pos..end).ok_or(HpackError::Short)?;
    *pos = end;
    if coded {
        return huffman(raw, out);
    }
    out.extend_from_slice(raw);
    Ok(())
}

/// The name of a header block's first field when it can be told without
/// the dynamic table (a static-table index or a literal name), after any
/// table size updates: on a connection joined mid-stream it tells a
/// request (`:method`, `:path`...) from a response (`:status`).
pub fn first_name(block: &[u8]) -> Option<Vec<u8>> {
    let mut pos = 0;
    loop {
        let b = *block.get(pos)?;
        if b & 0xe0 == 0x20 {
            integer(block, &mut pos, 5).ok()?;
            continue;
        }
        let prefix = if b & 0x80 != 0 {
            7
        } else if b & 0x40 != 0 {
            6
        } else {
            4
        };
        let i = integer(block, &mut pos, prefix).ok()?;
        if i == 0 && prefix != 7 {
            let mut name = Vec::new();
            string(block, &mut pos, &mut name).ok()?;
            return Some(name);
        }
        return STATIC.get(i.checked_sub(1)?).map(|(n, _)| n.as_bytes().to_vec());
    }
}

/// The name a joined decoder gives a field it cannot know (empty: no real
/// HTTP/2 field name is).
pub const UNKNOWN: &[u8] = b"";

/// One direction's decoding state: the dynamic table and its size limits.
pub struct Decoder {
    /// Newest entry first.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// RFC size of the table (name + value + 32 per entry).
    size: usize,
    /// Current maximum size (changed by size updates in blocks).
    max: usize,
    /// The most a size update may ask for (the peer's SETTINGS).
    allowed: usize,
    name: Vec<u8>,
    value: Vec<u8>,
    /// Started mid-stream: entries from before the join are unknown.
    joined: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max: 4096,
            allowed: 4096,
            name: Vec::new(),
            value: Vec::new(),
            joined: false,
        }
    }
}

impl Decoder {
    /// A decoder starting mid-stream (see the module guarantees): the
    /// encoder's table size is unknown, so the largest kspan keeps is used
    /// and size updates above it are clamped instead of refused.
    pub fn joined() -> Self {
        let max = super::MAX_TABLE;
        Self { max, allowed: max, joined: true, ..Self::default() }
    }

    /// The largest table a size update may ask for.
    pub fn set_allowed(&mut self, n: usize) {
        if !self.joined {
            self.allowed = n;
        }
    }

    /// Decodes one whole header block, calling `field` for each field in
    /// order.
    pub fn decode(&mut self, block: &[u8], mut field: impl FnMut(&[u8], &[u8])) -> Result<(), HpackError> {
        let mut pos = 0;
        while let Some(&b) = block.get(pos) {
            if b & 0x80 != 0 {
                let i = integer(block, &mut pos, 7)?;
                let (n, v) = self.get(i)?;
                field(n, v);
            } else if b & 0xe0 == 0x20 {
                let mut n = integer(block, &mut pos, 5)?;
                if n > self.allowed {
                    if !self.joined {
                        return Err(HpackError::TableSize(n));
                    }
                    n = self.allowed;
                }
                self.max = n;
                self.evict(0);
            } else {
                // Literal: with incremental indexing (01), else without or
                // never indexed (0000, 0001).
                let index = b & 0x40 != 0;
                let i = integer(block, &mut pos, if index { 6 } else { 4 })?;
                let mut name = std::mem::take(&mut self.name);
                if i == 0 {
                    string(block, &mut pos, &mut name)?;
                } else {
                    name.clear();
                    name.extend_from_slice(self.get(i)?.0);
                }
                let mut value = std::mem::take(&mut self.value);
                string(block, &mut pos, &mut value)?;
                field(&name, &value);
                if index {
                    self.insert(&name, &value);
                }
                (self.name, self.value) = (name, value);
            }
        }
        Ok(())
    }

    /// Entry `i` of the static or dynamic table; for a joined decoder, an
    /// unknown field (empty name and value) for a dynamic entry from before
    /// the join.
    fn get(&self, i: usize) -> Result<(&[u8], &[u8]), HpackError> {
        if let Some(&(n, v)) = i.checked_sub(1).and_then(|j| STATIC.get(j)) {
            return Ok((n.as_bytes(), v.as_bytes()));
        }
        match i.checked_sub(STATIC.len() + 1).map(|j| self.table.get(j)) {
            Some(Some((n, v))) => Ok((n, v)),
            Some(None) if self.joined => Ok((UNKNOWN, b"")),
            _ => Err(HpackError::Index(i)),
        }
    }

    /// Adds an entry (RFC 7541 4.4: one larger than the table empties it).
    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + 32;
        self.evict(size);
        if size <= self.max {
            self.table.push_front((name.to_vec(), value.to_vec()));
            self.size += size;
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some((n, v)) = self.table.pop_back() else {
                self.size = 0;
                return;
            };
            self.size -= n.len() + v.len() + 32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn fields(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut v = Vec::new();
        d.decode(block, |n, val| {
            v.push((String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(val).into_owned()))
        })?;
        Ok(v)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn rfc_7541_c4_requests_with_huffman_share_the_dynamic_table() {
        let mut d = Decoder::default();
        let base = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
        assert_eq!(fields(&mut d, &hex("828684418cf1e3c2e5f23a6ba0ab90f4ff")).unwrap(), pairs(&base));
        let mut second = base.to_vec();
        second.push(("cache-control", "no-cache"));
        assert_eq!(fields(&mut d, &hex("828684be5886a8eb10649cbf")).unwrap(), pairs(&second));
        let third = [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ];
        let block = hex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf");
        assert_eq!(fields(&mut d, &block).unwrap(), pairs(&third));
        assert_eq!(d.size, 164, "RFC 7541 C.4.3: three entries, 164 bytes");
        assert_eq!(d.table.len(), 3);
    }

    #[test]
    fn the_static_table_and_plain_literals_agree_with_loona_hpack() {
        let mut reference = loona_hpack::Decoder::new();
        reference.set_max_allowed_table_size(4096);
        let mut ours = Decoder::default();
        let mut enc = loona_hpack::Encoder::new();
        let mut blocks: Vec<Vec<u8>> = (1..=61u8).map(|i| vec![0x80 | i]).collect();
        for i in 0..50 {
            let v = format!("value-{i}-{}", "x".repeat(i * 7));
            let fields =
                [(":path", format!("/orders/{i}")), ("x-tenant-id", v), ("content-type", "application/grpc".into())];
            blocks.push(enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))));
        }
        for b in &blocks {
            let want: Vec<(String, String)> = reference
                .decode(b)
                .unwrap()
                .into_iter()
                .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                .collect();
            assert_eq!(fields(&mut ours, b).unwrap(), want, "{b:02x?}");
        }
    }

    #[test]
    fn every_symbol_round_trips_through_the_canonical_code() {
        // Encode each byte with the code derived from the lengths; decoding
        // gives it back, and the RFC's example strings decode as printed.
        let codes = canonical_codes();
        assert_eq!(codes[b'a' as usize], (0x3, 5));
        assert_eq!(codes[EOS as usize], (0x3fff_ffff, 30));
        for sym in 0..=255u8 {
            let (code, len) = codes[sym as usize];
            // Left-align the code, pad with ones to whole bytes.
            let bits = u64::from(code) << (64 - u32::from(len)) | (u64::MAX >> len);
            let n = usize::from(len).div_ceil(8);
            let bytes = &bits.to_be_bytes()[..n];
            let mut out = Vec::new();
            huffman(bytes, &mut out).unwrap();
            assert_eq!(out, [sym], "symbol {sym}");
        }
        let mut out = Vec::new();
        huffman(&hex("d07abe941054d444a8200595040b8166e082a62d1bff"), &mut out).unwrap();
        assert_eq!(out, b"Mon, 21 Oct 2013 20:13:21 GMT");
    }

    #[test]
    fn bad_blocks_are_errors_never_panics() {
        let mut d = Decoder::default();
        assert_eq!(d.decode(&[0x80 | 62], |_, _| {}), Err(HpackError::Index(62)), "empty dynamic table");
        assert_eq!(d.decode(&[0x80], |_, _| {}), Err(HpackError::Index(0)));
        assert_eq!(d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], |_, _| {}), Err(HpackError::Integer));
        assert_eq!(d.decode(&[0xff, 0x80], |_, _| {}), Err(HpackError::Short));
        assert_eq!(d.decode(&[0x40, 0x85, 0xff], |_, _| {}), Err(HpackError::Short), "string longer than the block");
        // Padding longer than 7 bits, or not all ones, or an EOS.
        assert_eq!(d.decode(&[0x40, 0x81, 0xff, 0x00], |_, _| {}), Err(HpackError::Huffman));
        assert_eq!(d.decode(&[0x40, 0x81, 0x00, 0x00], |_, _| {}), Err(HpackError::Huffman));
        assert_eq!(d.decode(&hex("3fe21f"), |_, _| {}), Err(HpackError::TableSize(4097)));
        assert_eq!(d.decode(&hex("3fe11f"), |_, _| {}), Ok(()), "4096 is allowed");
    }

    #[test]
    fn size_updates_and_eviction_keep_the_table_bounded() {
        let mut d = Decoder::default();
        d.set_allowed(100);
        let mut enc = loona_hpack::Encoder::new();
        let block = enc.encode([(b"k1".as_slice(), b"v".repeat(30).as_slice())]);
        // A size update to 60, then two entries of 64 bytes: each evicts all.
        let mut with_update = vec![0x20 | 0x1f, 60 - 31];
        with_update.extend_from_slice(&block);
        fields(&mut d, &with_update).unwrap();
        assert_eq!((d.max, d.size, d.table.len()), (60, 0, 0), "an entry larger than the table empties it");
        d.set_allowed(4096);
        let update = [0x20 | 0x1f, 0xe1, 0x1f]; // 4096
        fields(&mut d, &update).unwrap();
        for i in 0..200 {
            // New names: the encoder adds each to its table (as ours must).
            let (n, v) = (format!("x-k{i}"), format!("{i:>40}"));
            let b = enc.encode([(n.as_bytes(), v.as_bytes())]);
            assert_eq!(fields(&mut d, &b).unwrap(), pairs(&[(&n, &v)]));
        }
        let sum: usize = d.table.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
        assert_eq!(sum, d.size);
        assert!(d.size <= 4096 && d.size > 4096 - 80, "full, within bounds: {}", d.size);
        // The newest entry is index 62.
        assert_eq!(d.get(62).unwrap().0, b"x-k199");
    }
}
