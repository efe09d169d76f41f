//! Content-based protocol detection across all parsers (never by port).
