//! Low-cardinality routes from raw paths: identifier-like segments become `{id}`.
//!
//! Guarantees: the output has as many segments as the input, only whole
//! segments are replaced, and the query string is never part of a route.

use crate::span::model::Text;

/// Templates a request path: each `/`-separated segment that is all digits,
/// a UUID, a hex string of at least 8 characters with a digit in it, or a
/// token of at least 16 letters/digits/`-`/`_` mixing letters and digits,
/// becomes `{id}`. Anything after `?` is dropped.
pub fn template_route(path: &str) -> Text {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    // Every identifier form has a digit, except a UUID of letters only.
    if path.len() < 36 && !path.bytes().any(|b| b.is_ascii_digit()) {
        return Text::new(path);
    }
    let mut out = Text::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if is_id(seg) { "{id}" } else { seg });
    }
    out
}

fn is_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    let has_digit = b.iter().any(u8::is_ascii_digit);
    b.iter().all(u8::is_ascii_digit)
        || is_uuid(b)
        || (b.len() >= 8 && has_digit && b.iter().all(u8::is_ascii_hexdigit))
        || (b.len() >= 16
            && has_digit
            && b.iter().any(u8::is_ascii_alphabetic)
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_'))
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(
            |(i, c)| {
                if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() }
            },
        )
}

#[cfg(test)]
mod tests {
    use super::template_route;

    #[test]
    fn numeric_uuid_and_hex_segments_become_id() {
        assert_eq!(template_route("/users/42"), "/users/{id}");
        assert_eq!(template_route("/users/42/orders/7/"), "/users/{id}/orders/{id}/");
        assert_eq!(template_route("/o/3f2504e0-4f89-11d3-9a0c-0305e82c3301"), "/o/{id}");
        assert_eq!(template_route("/blob/9f86d081884c7d65"), "/blob/{id}");
        assert_eq!(template_route("/s/AbC123xyz789QwErTy"), "/s/{id}");
        assert_eq!(template_route("/s/01HZX3K9Q2V8M4N6P7R5T0W1YB"), "/s/{id}");
    }

    #[test]
    fn words_and_short_or_digitless_tokens_stay() {
        assert_eq!(template_route("/"), "/");
        assert_eq!(template_route("/api/v1/users"), "/api/v1/users");
        assert_eq!(template_route("/deadbeef"), "/deadbeef");
        assert_eq!(template_route("/abc123"), "/abc123");
        assert_eq!(template_route("/static/app.js"), "/static/app.js");
        assert_eq!(template_route("/this-is-a-long-slug-without-digits"), "/this-is-a-long-slug-without-digits");
        assert_eq!(template_route("/v2/health-check"), "/v2/health-check");
    }

    #[test]
    fn query_is_never_part_of_the_route() {
        assert_eq!(template_route("/search?q=secret&id=5"), "/search");
        assert_eq!(template_route("/items/12?x=1"), "/items/{id}");
    }
}
