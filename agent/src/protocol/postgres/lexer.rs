//! A small, total SQL lexer for PostgreSQL's dialect, used by the sanitiser
//! and the summariser.
//!
//! Guarantees:
//! - Never panics and always makes progress: every input byte belongs to
//!   exactly one token, and tokens are cut at UTF-8 boundaries.
//! - Anything that is a literal value in PostgreSQL (quoted strings, `E'..'`,
//!   `B'..'`, `X'..'`, `N'..'`, `U&'..'`, dollar-quoted bodies, numbers) is a
//!   [`Tok::Str`] or [`Tok::Num`] token; an unterminated string or comment runs
//!   to the end of the input, so its content can never escape masking.

/// Token classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    /// Whitespace.
    Space,
    /// `-- ...` or `/* ... */` (nested), possibly unterminated.
    Comment,
    /// Bare word: keyword or identifier (`t1`, `SELECT`, `a$b`).
    Ident,
    /// `"quoted identifier"` or `U&"..."`.
    QIdent,
    /// A string literal of any flavour, or a dollar-quoted body.
    Str,
    /// A numeric literal.
    Num,
    /// A positional parameter `$1`.
    Param,
    /// Any other single character (operators, parentheses, commas, ...).
    Punct,
}

/// One token: its class and its exact text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub kind: Tok,
    pub text: &'a str,
}

/// Iterator over the tokens of a SQL string.
pub(crate) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Self {
        Self { src, pos: 0 }
    }

    fn byte(&self, i: usize) -> Option<u8> {
        self.src.as_bytes().get(i).copied()
    }

    /// First index at or after `from` that is past a run of bytes matching `f`.
    fn run_while(&self, from: usize, f: impl Fn(u8) -> bool) -> usize {
        let bytes = self.src.as_bytes();
        let mut i = from;
        while bytes.get(i).is_some_and(|b| f(*b)) {
            i += 1;
        }
        i
    }

    /// End of a quoted run opened at `open` (the quote byte) with quote `q`;
    /// a doubled quote is an escape, and `backslash` makes `\x` an escape too.
    fn quoted_end(&self, open: usize, q: u8, backslash: bool) -> usize {
        let bytes = self.src.as_bytes();
        let mut i = open + 1;
        while let Some(&b) = bytes.get(i) {
            if backslash && b == b'\\' {
                i += 2;
                continue;
            }
            if b == q {
                if bytes.get(i + 1) == Some(&q) {
                    i += 2;
                    continue;
                }
                return i + 1;
            }
            i += 1;
        }
        bytes.len()
    }

    fn block_comment_end(&self, open: usize) -> usize {
        let bytes = self.src.as_bytes();
        let mut depth = 0usize;
        let mut i = open;
        while i < bytes.len() {
            match (bytes.get(i), bytes.get(i + 1)) {
                (Some(b'/'), Some(b'*')) => {
                    depth += 1;
                    i += 2;
                }
                (Some(b'*'), Some(b'/')) => {
                    depth = depth.saturating_sub(1);
                    i += 2;
                    if depth == 0 {
                        return i;
                    }
                }
                _ => i += 1,
            }
        }
        bytes.len()
    }

    /// `$tag$ ... $tag$` starting at `open` (a `$`), or None if `open` does not
    /// start a dollar quote.
    fn dollar_quote_end(&self, open: usize) -> Option<usize> {
        let tag_end = self.run_while(open + 1, is_ident_continue_no_dollar);
        if self.byte(tag_end) != Some(b'$') {
            return None;
        }
        if tag_end > open + 1 && self.byte(open + 1).is_some_and(|b| b.is_ascii_digit()) {
            return None;
        }
        let delim = self.src.get(open..=tag_end)?;
        let body = tag_end + 1;
        let rest = self.src.get(body..)?;
        Some(rest.find(delim).map_or(self.src.len(), |at| body + at + delim.len()))
    }

    fn number_end(&self, start: usize) -> usize {
        let bytes = self.src.as_bytes();
        let radix_prefix = bytes.get(start) == Some(&b'0')
            && matches!(bytes.get(start + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B'));
        if radix_prefix {
            return self.run_while(start + 2, |b| b.is_ascii_hexdigit() || b == b'_');
        }
        let mut i = self.run_while(start, |b| b.is_ascii_digit() || b == b'_');
        if bytes.get(i) == Some(&b'.') && bytes.get(i + 1) != Some(&b'.') {
            i = self.run_while(i + 1, |b| b.is_ascii_digit() || b == b'_');
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            let mut j = i + 1;
            if matches!(bytes.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if bytes.get(j).is_some_and(u8::is_ascii_digit) {
                i = self.run_while(j, |b| b.is_ascii_digit());
            }
        }
        i
    }

    fn next_token(&mut self) -> Option<(Tok, usize)> {
        let start = self.pos;
        let b = self.byte(start)?;
        let next = self.byte(start + 1);
        let (kind, end) = match b {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                (Tok::Space, self.run_while(start, |b| b.is_ascii_whitespace() || b == 0x0b))
            }
            b'-' if next == Some(b'-') => (Tok::Comment, self.run_while(start, |b| b != b'\n')),
            b'/' if next == Some(b'*') => (Tok::Comment, self.block_comment_end(start)),
            b'\'' => (Tok::Str, self.quoted_end(start, b'\'', false)),
            b'"' => (Tok::QIdent, self.quoted_end(start, b'"', false)),
            b'e' | b'E' if next == Some(b'\'') => (Tok::Str, self.quoted_end(start + 1, b'\'', true)),
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if next == Some(b'\'') => {
                (Tok::Str, self.quoted_end(start + 1, b'\'', false))
            }
            b'u' | b'U' if next == Some(b'&') && self.byte(start + 2) == Some(b'\'') => {
                (Tok::Str, self.quoted_end(start + 2, b'\'', false))
            }
            b'u' | b'U' if next == Some(b'&') && self.byte(start + 2) == Some(b'"') => {
                (Tok::QIdent, self.quoted_end(start + 2, b'"', false))
            }
            b'$' if next.is_some_and(|n| n.is_ascii_digit()) => {
                (Tok::Param, self.run_while(start + 1, |b| b.is_ascii_digit()))
            }
            b'$' => match self.dollar_quote_end(start) {
                Some(end) => (Tok::Str, end),
                None => (Tok::Punct, start + 1),
            },
            b'0'..=b'9' => (Tok::Num, self.number_end(start)),
            b'.' if next.is_some_and(|n| n.is_ascii_digit()) => (Tok::Num, self.number_end(start)),
            b if is_ident_start(b) => (Tok::Ident, self.run_while(start, is_ident_continue)),
            _ => (Tok::Punct, start + 1),
        };
        // Defensive: never stall, never cut inside a UTF-8 sequence.
        let mut end = end.clamp(start + 1, self.src.len());
        while !self.src.is_char_boundary(end) {
            end += 1;
        }
        self.pos = end;
        Some((kind, end))
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        let start = self.pos;
        let (kind, end) = self.next_token()?;
        let text = self.src.get(start..end).unwrap_or("");
        Some(Token { kind, text })
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_continue(b: u8) -> bool {
    is_ident_continue_no_dollar(b) || b == b'$'
}

fn is_ident_continue_no_dollar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(Tok, &str)> {
        Lexer::new(sql).filter(|t| t.kind != Tok::Space).map(|t| (t.kind, t.text)).collect()
    }

    #[test]
    fn tokens_cover_the_whole_input() {
        let sql = "SELECT a1, 'x''y', E'\\'', $1, $$b$$ FROM \"T\" -- c\n/* d */ WHERE x>=1.5e-3";
        let joined: String = Lexer::new(sql).map(|t| t.text).collect();
        assert_eq!(joined, sql);
    }

    #[test]
    fn classifies_literals_identifiers_and_params() {
        assert_eq!(
            kinds("t1 'a' e'b\\'c' 42 0x1F $2 $tag$x$tag$ \"Q\""),
            vec![
                (Tok::Ident, "t1"),
                (Tok::Str, "'a'"),
                (Tok::Str, "e'b\\'c'"),
                (Tok::Num, "42"),
                (Tok::Num, "0x1F"),
                (Tok::Param, "$2"),
                (Tok::Str, "$tag$x$tag$"),
                (Tok::QIdent, "\"Q\""),
            ]
        );
    }

    #[test]
    fn unterminated_constructs_run_to_the_end() {
        assert_eq!(kinds("a 'open"), vec![(Tok::Ident, "a"), (Tok::Str, "'open")]);
        assert_eq!(kinds("a $q$ open"), vec![(Tok::Ident, "a"), (Tok::Str, "$q$ open")]);
        assert_eq!(kinds("a /* open"), vec![(Tok::Ident, "a"), (Tok::Comment, "/* open")]);
        assert_eq!(kinds("e'\\"), vec![(Tok::Str, "e'\\")]);
    }

    #[test]
    fn nested_block_comments_close_at_the_outer_end() {
        assert_eq!(kinds("/* a /* b */ c */ x"), vec![(Tok::Comment, "/* a /* b */ c */"), (Tok::Ident, "x")]);
    }

    #[test]
    fn non_ascii_identifiers_stay_whole() {
        assert_eq!(
            kinds("SELECT café FROM é"),
            vec![(Tok::Ident, "SELECT"), (Tok::Ident, "café"), (Tok::Ident, "FROM"), (Tok::Ident, "é")]
        );
    }
}
