//! Decoding of the backend (server -> client) messages the session needs:
//! CommandComplete tags and ErrorResponse fields.
//!
//! Guarantees: total over any byte input; of an ErrorResponse only the
//! SQLSTATE, severity and primary message are kept, never DETAIL, HINT,
//! WHERE or the internal query (they quote row values).

use super::frontend::cstr;

/// The command and row count of a CommandComplete tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Tag {
    /// `SELECT`, `INSERT`, `CREATE TABLE`, ...
    pub command: String,
    /// Rows affected or returned, for the commands that report it.
    pub rows: Option<u64>,
}

/// `"INSERT 0 3"` -> (`INSERT`, 3); `"SELECT 5"` -> (`SELECT`, 5);
/// `"CREATE TABLE"` -> (`CREATE TABLE`, None).
pub(super) fn parse_tag(body: &[u8]) -> Tag {
    let text = String::from_utf8_lossy(cstr(body).0);
    let numeric = |w: &str| w.bytes().all(|b| b.is_ascii_digit());
    // The command is the words before the first number (of the first 8).
    let (mut command, mut first, mut last, mut in_command) = (String::new(), None, None, true);
    for w in text.split_ascii_whitespace().take(8) {
        first.get_or_insert(w);
        last = Some(w);
        in_command &= !numeric(w);
        if in_command {
            if !command.is_empty() {
                command.push(' ');
            }
            command.push_str(w);
        }
    }
    let counted =
        matches!(first, Some("SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY"));
    let rows = if counted { last.filter(|w| numeric(w)).and_then(|w| w.parse().ok()) } else { None };
    Tag { command, rows }
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
        assert_eq!(parse_tag(b""), Tag { command: String::new(), rows: None });
        assert_eq!(parse_tag(b"SELECT 99999999999999999999999\0").rows, None);
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
