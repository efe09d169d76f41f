//! Decoding of the backend (server -> client) messages the session needs:
//! CommandComplete tags and ErrorResponse fields.
//!
//! Guarantees: total over any byte input; of an ErrorResponse only the
//! SQLSTATE, severity and primary message are kept, never DETAIL, HINT,
//! WHERE or the internal query (they quote row values).

use compact_str::CompactString;

use super::frontend::cstr;

/// The command and row count of a CommandComplete tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Tag {
    /// `SELECT`, `INSERT`, `CREATE TABLE`, ...
    pub command: CompactString,
    /// Rows affected or returned, for the commands that report it.
    pub rows: Option<u64>,
}

/// `"INSERT 0 3"` -> (`INSERT`, 3); `"SELECT 5"` -> (`SELECT`, 5);
/// `"CREATE TABLE"` -> (`CREATE TABLE`, None).
pub(super) fn parse_tag(body: &[u8]) -> Tag {
    let text = cstr(body).0;
    let numeric = |w: &[u8]| w.iter().all(u8::is_ascii_digit);
    // The command is the words before the first number (of the first 8):
    // the byte range `cmd` of `text`, holding `cmd_words` words.
    let (mut first, mut last, mut cmd, mut cmd_words, mut in_command) = (None, None, 0..0, 0, true);
    for w in text.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty()).take(8) {
        first.get_or_insert(w);
        last = Some(w);
        in_command &= !numeric(w);
        if in_command {
            let end = w.as_ptr() as usize - text.as_ptr() as usize + w.len();
            cmd = if cmd_words == 0 { end - w.len()..end } else { cmd.start..end };
            cmd_words += 1;
        }
    }
    let cmd_text = text.get(cmd).unwrap_or_default();
    let spaces = cmd_text.iter().filter(|b| b.is_ascii_whitespace()).count();
    let single_spaced = cmd_words == 0 || (spaces + 1 == cmd_words && spaces == bytecount(cmd_text, b' '));
    let command = if single_spaced {
        CompactString::from_utf8_lossy(cmd_text)
    } else {
        // Runs of whitespace inside the command collapse to one space.
        let words: Vec<_> = cmd_text.split(u8::is_ascii_whitespace).filter(|w| !w.is_empty()).collect();
        CompactString::from_utf8_lossy(&words.join(&b' '))
    };
    let counted =
        matches!(first, Some(b"SELECT" | b"INSERT" | b"UPDATE" | b"DELETE" | b"MERGE" | b"FETCH" | b"MOVE" | b"COPY"));
    // Digits only, so the conversion to text cannot fail.
    let rows = match last {
        Some(w) if counted && numeric(w) => std::str::from_utf8(w).ok().and_then(|w| w.parse().ok()),
        _ => None,
    };
    Tag { command, rows }
}

fn bytecount(s: &[u8], b: u8) -> usize {
    s.iter().filter(|&&c| c == b).count()
}

/// The exported parts of an ErrorResponse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgError {
    /// SQLSTATE (`23505`).
    pub code: String,
    /// Non-localised severity (`ERROR`, `FATAL`, `PANIC`), else the localised one.
    pub severity: String,
    /// Primary message (field `M`). May quote an input value for some
    /// SQLSTATE classes: `describe` masks it unless raw SQL is allowed.
    pub message: String,
}

/// Fields of an ErrorResponse body (a cut body yields the fields present).
pub(super) fn parse_error(body: &[u8]) -> PgError {
    const MAX_FIELD: usize = 1024;
    let mut e = PgError::default();
    let mut localized_severity = String::new();
    let mut rest = body;
    while let Some((&code, r)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let (value, r, _) = cstr(r);
        let value = value.get(..MAX_FIELD).unwrap_or(value);
        let text = || String::from_utf8_lossy(value).into_owned();
        match code {
            b'C' => e.code = text(),
            b'V' => e.severity = text(),
            b'S' => localized_severity = text(),
            b'M' => e.message = text(),
            _ => {}
        }
        rest = r;
    }
    if e.severity.is_empty() {
        e.severity = localized_severity;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_give_command_and_rows() {
        assert_eq!(parse_tag(b"INSERT 0 3\0"), Tag { command: "INSERT".into(), rows: Some(3) });
        assert_eq!(parse_tag(b"SELECT 5\0"), Tag { command: "SELECT".into(), rows: Some(5) });
        assert_eq!(parse_tag(b"UPDATE 0\0"), Tag { command: "UPDATE".into(), rows: Some(0) });
        assert_eq!(parse_tag(b"CREATE TABLE\0"), Tag { command: "CREATE TABLE".into(), rows: None });
        assert_eq!(parse_tag(b"BEGIN\0"), Tag { command: "BEGIN".into(), rows: None });
        assert_eq!(parse_tag(b"COPY 3"), Tag { command: "COPY".into(), rows: Some(3) });
        assert_eq!(parse_tag(b""), Tag { command: CompactString::default(), rows: None });
        assert_eq!(parse_tag(b"SELECT 99999999999999999999999\0").rows, None);
        // Runs of whitespace collapse; bytes that are not UTF-8 are replaced.
        assert_eq!(parse_tag(b" CREATE \t TABLE\0").command, "CREATE TABLE");
        assert_eq!(parse_tag(b"CREATE\tTABLE\0").command, "CREATE TABLE");
        assert_eq!(parse_tag(b"ALTER  DEFAULT PRIVILEGES 2\0").command, "ALTER DEFAULT PRIVILEGES");
        assert_eq!(parse_tag(b"12 X\0").command, "");
        assert_eq!(parse_tag(b"DO\xff 1\0"), Tag { command: "DO\u{fffd}".into(), rows: None });
    }

    #[test]
    fn error_keeps_code_severity_message_only() {
        let body = b"SERROR\0VERROR\0C23505\0Mduplicate key value violates unique constraint \"u_email\"\0DKey (email)=(a@b.c) already exists.\0\0";
        let e = parse_error(body);
        assert_eq!(e.code, "23505");
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.message, "duplicate key value violates unique constraint \"u_email\"");
        assert!(!format!("{e:?}").contains("a@b.c"));
    }

    #[test]
    fn cut_error_keeps_present_fields() {
        let e = parse_error(b"SFEHLER\0C42P01\0Mrelation \"x");
        assert_eq!((e.code.as_str(), e.severity.as_str(), e.message.as_str()), ("42P01", "FEHLER", "relation \"x"));
    }
}
