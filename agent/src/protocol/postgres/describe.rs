//! Maps a [`PgExchange`] to a span name, OpenTelemetry database attributes
//! and a status.
//!
//! Guarantees:
//! - `db.query.text` is the sanitised SQL (literals masked) unless
//!   `privacy.raw_sql`; the raw text and the user name only go to `private`.
//! - Of an error, the SQLSTATE (`db.response.status_code`, `error.type`) and
//!   the primary message (status description) are exported, never DETAIL.
//!   Messages that quote input values (SQLSTATE class 22, quoted tokens that
//!   are not identifiers) are masked; PL/pgSQL `RAISE` messages (class P0)
//!   are application text and are withheld.
//! - An Execute of a statement prepared before kspan saw the connection is
//!   reported as such, never guessed: no query text, summary or collection,
//!   `kspan.postgresql.prepared_statement_unknown = true`, and the operation
//!   and span name come only from the server's CommandComplete tag (else the
//!   span is named `postgresql`).

use super::PgExchange;
use crate::protocol::{ConnMeta, Described, Privacy, Role};
use crate::span::model::{Attributes, SpanStatus, Text};

/// Most exported attributes a PostgreSQL span has (sizes the vector once;
/// each is pushed once, without looking for an earlier value).
const MAX_ATTRS: usize = 16;

/// Span name, attributes and status of one exchange.
pub fn describe(r: &PgExchange, role: Role, conn: &ConnMeta, privacy: &Privacy) -> Described {
    let mut attributes = Attributes(Vec::with_capacity(MAX_ATTRS));
    let mut private = Attributes::new();
    let keep_private = !privacy.skip_private;
    attributes.push_unique("db.system.name", "postgresql");
    if let Some(db) = &r.database {
        attributes.push_unique("db.namespace", db.as_ref());
    }
    let analysis = r.statement.as_deref().map(|s| (s, s.analysis()));
    // Borrowed from the statement's cached analysis: short texts become
    // inline attribute values without an allocation.
    let operation = analysis.and_then(|(_, a)| a.operation.as_deref()).or(r.command.as_deref());
    if let Some(op) = operation {
        attributes.push_unique("db.operation.name", op);
    }
    let mut summary = None;
    if let Some((statement, a)) = analysis {
        if let Some(collection) = &a.collection {
            attributes.push_unique("db.collection.name", collection.as_str());
        }
        if let Some(s) = &a.summary {
            attributes.push_unique("db.query.summary", s.as_str());
            summary = Some(s.as_str());
        }
        let text = if privacy.raw_sql { &*statement.text } else { a.sanitized.as_str() };
        attributes.push_unique("db.query.text", text);
        if statement.truncated {
            attributes.push_unique("kspan.postgresql.query_truncated", true);
        }
        if keep_private {
            private.set("db.query.text.raw", statement.text.to_string());
        }
    }
    if r.prepared_unknown {
        attributes.push_unique("kspan.postgresql.prepared_statement_unknown", true);
        if let Some(name) = r.unknown_statement_name.as_ref().filter(|_| keep_private) {
            private.set("kspan.postgresql.statement_name", name.to_string());
        }
    }
    if let Some(rows) = r.rows {
        attributes.push_unique("db.response.returned_rows", i64::try_from(rows).unwrap_or(i64::MAX));
    }
    if r.response_truncated {
        attributes.push_unique("kspan.postgresql.response_truncated", true);
    }
    crate::protocol::push_db_addresses(&mut attributes, role, conn);
    let mut status = SpanStatus::default();
    if let Some(e) = &r.error {
        if !e.code.is_empty() {
            attributes.push_unique("db.response.status_code", e.code.clone());
            attributes.push_unique("error.type", e.code.clone());
        }
        let message = if privacy.raw_sql { e.message.clone() } else { safe_error_message(&e.code, &e.message) };
        status = SpanStatus::error(message);
    }
    if let Some(user) = r.user.as_ref().filter(|_| keep_private) {
        private.set("db.user", user.as_ref());
    }
    let name = Text::new(summary.or(operation).unwrap_or("postgresql"));
    Described { name, attributes, private, status, traceparent: None, tracestate: None }
}

/// The primary error message with values that may come from row data masked.
pub fn safe_error_message(sqlstate: &str, message: &str) -> String {
    if sqlstate.starts_with("P0") {
        return String::new();
    }
    let data_exception = sqlstate.starts_with("22");
    // Class 22 messages end with the offending input: `...: "abc"`.
    let message = match message.find(": ") {
        Some(i) if data_exception => format!("{}: ?", message.get(..i).unwrap_or_default()),
        _ => message.to_owned(),
    };
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    while let Some(open) = rest.find('"') {
        out.push_str(rest.get(..open).unwrap_or_default());
        let after = rest.get(open + 1..).unwrap_or_default();
        let Some(close) = after.find('"') else {
            out.push_str("\"?\"");
            return out;
        };
        let inner = after.get(..close).unwrap_or_default();
        if !data_exception && is_identifier_like(inner) {
            out.push('"');
            out.push_str(inner);
            out.push('"');
        } else {
            out.push_str("\"?\"");
        }
        rest = after.get(close + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

fn is_identifier_like(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '$' | '.' | ' '))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::postgres::{PgError, Statement};
    use crate::span::model::StatusCode;

    fn conn() -> ConnMeta {
        ConnMeta { local: "10.0.0.1:40000".parse().ok(), peer: "10.0.0.2:5432".parse().ok(), tls: false, unix: None }
    }

    #[test]
    fn names_span_by_summary_and_sanitises_text() {
        let r = PgExchange {
            statement: Some(Statement::new(b"SELECT * FROM users WHERE email = 'a@b.c'", false)),
            database: Some("shop".into()),
            user: Some("bob".into()),
            rows: Some(1),
            ..PgExchange::default()
        };
        let d = describe(&r, Role::Client, &conn(), &Privacy::default());
        assert_eq!(d.name, "SELECT users");
        assert_eq!(d.attributes.get_str("db.query.text"), Some("SELECT * FROM users WHERE email = ?"));
        assert_eq!(d.attributes.get_str("db.namespace"), Some("shop"));
        assert_eq!(d.attributes.get_str("server.address"), Some("10.0.0.2"));
        assert_eq!(d.attributes.get("db.response.returned_rows").and_then(|v| v.as_i64()), Some(1));
        assert!(d.attributes.iter().all(|(_, v)| !v.to_text().contains("a@b.c") && !v.to_text().contains("bob")));
        assert_eq!(d.private.get_str("db.user"), Some("bob"));
        assert_eq!(d.private.get_str("db.query.text.raw"), Some("SELECT * FROM users WHERE email = 'a@b.c'"));
    }

    #[test]
    fn raw_sql_privacy_switch_exports_text_as_sent() {
        let r = PgExchange { statement: Some(Statement::new(b"SELECT 1", false)), ..PgExchange::default() };
        let privacy = Privacy { raw_sql: true, ..Privacy::default() };
        assert_eq!(describe(&r, Role::Server, &conn(), &privacy).attributes.get_str("db.query.text"), Some("SELECT 1"));
        let d = describe(&r, Role::Server, &conn(), &Privacy::default());
        assert_eq!(d.attributes.get_str("db.query.text"), Some("SELECT ?"));
        assert_eq!(d.attributes.get_str("server.address"), Some("10.0.0.1"), "server role: the local side serves");
    }

    #[test]
    fn unknown_prepared_statement_is_reported_not_guessed() {
        let r =
            PgExchange { prepared_unknown: true, unknown_statement_name: Some("P0_1".into()), ..PgExchange::default() };
        let d = describe(&r, Role::Client, &conn(), &Privacy::default());
        assert_eq!(d.name, "postgresql");
        assert_eq!(d.attributes.get("kspan.postgresql.prepared_statement_unknown"), Some(&true.into()));
        assert!(d.attributes.get("db.query.text").is_none() && d.attributes.get("db.operation.name").is_none());
        let r = PgExchange { command: Some("UPDATE".into()), ..r };
        let d = describe(&r, Role::Client, &conn(), &Privacy::default());
        assert_eq!((d.name.as_str(), d.attributes.get_str("db.operation.name")), ("UPDATE", Some("UPDATE")));
    }

    #[test]
    fn errors_export_sqlstate_and_a_safe_message() {
        let r = PgExchange {
            statement: Some(Statement::new(b"INSERT INTO t VALUES ('x')", false)),
            error: Some(PgError {
                code: "22P02".into(),
                severity: "ERROR".into(),
                message: "invalid input syntax for type integer: \"x\"".into(),
            }),
            ..PgExchange::default()
        };
        let d = describe(&r, Role::Client, &conn(), &Privacy::default());
        assert_eq!(d.status.code, StatusCode::Error);
        assert_eq!(d.status.message, "invalid input syntax for type integer: ?");
        assert_eq!(d.attributes.get_str("error.type"), Some("22P02"));
        assert_eq!(d.attributes.get_str("db.response.status_code"), Some("22P02"));
    }

    #[test]
    fn error_messages_keep_identifiers_and_mask_values() {
        assert_eq!(
            safe_error_message("23505", "duplicate key value violates unique constraint \"users_email_key\""),
            "duplicate key value violates unique constraint \"users_email_key\""
        );
        assert_eq!(
            safe_error_message("42601", "syntax error at or near \"'secret'\""),
            "syntax error at or near \"?\""
        );
        assert_eq!(safe_error_message("42601", "syntax error at or near \"42\""), "syntax error at or near \"?\"");
        assert_eq!(safe_error_message("22003", "value \"99999\" is out of range"), "value \"?\" is out of range");
        assert_eq!(safe_error_message("P0001", "card 4111 declined"), "");
        assert_eq!(safe_error_message("42P01", "relation \"open"), "relation \"?\"");
    }
}
