//! Decoding of frontend (client -> server) message bodies.
//!
//! Guarantees: total over any byte input (a cut or malformed body decodes to
//! the parts that are present, or to [`FrontMsg::Other`]); password and SASL
//! messages are never decoded (their bodies are not even buffered).

use super::framing::{Frame, STARTUP};

/// Protocol 3.0 in a StartupMessage (minor versions accepted too).
const PROTOCOL_3: u32 = 3 << 16;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// A decoded frontend message (borrowing the frame's body).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FrontMsg<'a> {
    Startup {
        database: Option<&'a [u8]>,
        user: Option<&'a [u8]>,
    },
    /// SSLRequest or GSSENCRequest: a one-byte answer follows.
    EncryptionRequest,
    Cancel,
    /// A startup-phase code kspan does not speak (protocol 2, future codes).
    UnsupportedStartup,
    /// `sql` is the captured text, without its NUL terminator.
    Query {
        sql: &'a [u8],
    },
    Parse {
        name: &'a [u8],
        sql: &'a [u8],
    },
    Bind {
        portal: &'a [u8],
        statement: &'a [u8],
    },
    Execute {
        portal: &'a [u8],
    },
    /// `kind` is `S` (statement) or `P` (portal).
    Close {
        kind: u8,
        name: &'a [u8],
    },
    Sync,
    Other,
}

/// Splits a NUL-terminated string off `b`: (string, rest, terminated).
pub(super) fn cstr(b: &[u8]) -> (&[u8], &[u8], bool) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (b.get(..i).unwrap_or_default(), b.get(i + 1..).unwrap_or_default(), true),
        None => (b, &[], false),
    }
}

pub(super) fn decode<'a>(f: &Frame<'a>) -> FrontMsg<'a> {
    let body = f.body;
    match f.ty {
        STARTUP => decode_startup(body),
        b'Q' => FrontMsg::Query { sql: cstr(body).0 },
        b'P' => match cstr(body) {
            (name, rest, true) => FrontMsg::Parse { name, sql: cstr(rest).0 },
            _ => FrontMsg::Other,
        },
        b'B' => {
            let (portal, rest, ok1) = cstr(body);
            let (statement, _, ok2) = cstr(rest);
            if ok1 && ok2 { FrontMsg::Bind { portal, statement } } else { FrontMsg::Other }
        }
        b'E' => match cstr(body) {
            (portal, _, true) => FrontMsg::Execute { portal },
            _ => FrontMsg::Other,
        },
        b'C' => match body.split_first() {
            Some((&kind, rest)) if matches!(kind, b'S' | b'P') => match cstr(rest) {
                (name, _, true) => FrontMsg::Close { kind, name },
                _ => FrontMsg::Other,
            },
            _ => FrontMsg::Other,
        },
        b'S' => FrontMsg::Sync,
        _ => FrontMsg::Other,
    }
}

fn decode_startup(body: &[u8]) -> FrontMsg<'_> {
    let Some((code, mut rest)) = body.split_first_chunk::<4>() else {
        return FrontMsg::UnsupportedStartup;
    };
    match u32::from_be_bytes(*code) {
        SSL_REQUEST | GSSENC_REQUEST => FrontMsg::EncryptionRequest,
        CANCEL_REQUEST => FrontMsg::Cancel,
        v if v >> 16 == PROTOCOL_3 >> 16 => {
            let (mut database, mut user) = (None, None);
            while !rest.is_empty() {
                let (key, r, ok1) = cstr(rest);
                let (value, r, ok2) = cstr(r);
                if key.is_empty() || !ok1 || !ok2 {
                    break;
                }
                match key {
                    b"database" => database = Some(value),
                    b"user" => user = Some(value),
                    _ => {}
                }
                rest = r;
            }
            FrontMsg::Startup { database, user }
        }
        _ => FrontMsg::UnsupportedStartup,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ty: u8, body: &[u8]) -> Frame<'_> {
        Frame { ty, body, complete: true, start_ts: 0, tid: 0, end_ts: 0 }
    }

    #[test]
    fn startup_yields_database_and_user() {
        let body = b"\x00\x03\x00\x00user\0bob\0database\0shop\0application_name\0psql\0\0";
        assert_eq!(decode(&frame(STARTUP, body)), FrontMsg::Startup { database: Some(b"shop"), user: Some(b"bob") });
    }

    #[test]
    fn startup_codes_are_told_apart() {
        assert_eq!(decode(&frame(STARTUP, &80_877_103u32.to_be_bytes())), FrontMsg::EncryptionRequest);
        assert_eq!(decode(&frame(STARTUP, &80_877_104u32.to_be_bytes())), FrontMsg::EncryptionRequest);
        assert_eq!(decode(&frame(STARTUP, b"\x04\xd2\x16\x2e\0\0\0\x01\0\0\0\x02")), FrontMsg::Cancel);
        assert_eq!(decode(&frame(STARTUP, b"\x00\x02\x00\x00")), FrontMsg::UnsupportedStartup);
        assert_eq!(decode(&frame(STARTUP, b"\x00")), FrontMsg::UnsupportedStartup);
    }

    #[test]
    fn extended_messages_decode_names() {
        assert_eq!(
            decode(&frame(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17")),
            FrontMsg::Parse { name: b"s1", sql: b"SELECT $1" }
        );
        assert_eq!(decode(&frame(b'B', b"\0s1\0\0\0\0\0\0\0")), FrontMsg::Bind { portal: b"", statement: b"s1" });
        assert_eq!(decode(&frame(b'E', b"\0\0\0\0\0")), FrontMsg::Execute { portal: b"" });
        assert_eq!(decode(&frame(b'C', b"Ss1\0")), FrontMsg::Close { kind: b'S', name: b"s1" });
    }

    #[test]
    fn cut_bodies_decode_what_is_there() {
        assert_eq!(decode(&frame(b'Q', b"SELECT 'ab")), FrontMsg::Query { sql: b"SELECT 'ab" });
        assert_eq!(decode(&frame(b'P', b"s1\0SELECT")), FrontMsg::Parse { name: b"s1", sql: b"SELECT" });
        assert_eq!(decode(&frame(b'P', b"s1")), FrontMsg::Other);
        assert_eq!(decode(&frame(b'B', b"\0s1")), FrontMsg::Other);
        assert_eq!(decode(&frame(b'C', b"X")), FrontMsg::Other);
    }
}
