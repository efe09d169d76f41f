//! Maps an [`HttpExchange`] to OpenTelemetry HTTP span conventions (v1.26+):
//! span name, attributes, status and W3C trace context.
//!
//! Guarantees: `url.query` is exported only when `capture_url_query` is on;
//! request headers are exported only when listed in `capture_headers`, and
//! Authorization, Proxy-Authorization, Cookie and Set-Cookie never with their
//! value. Raw headers and query go to `private` (readable by rules, never exported).

use std::borrow::Cow;
use std::fmt::Write as _;

use super::{HttpExchange, Method, template_route};
use crate::protocol::{ConnMeta, Described, Privacy, Role, SENSITIVE_HEADERS, ip_text};
use compact_str::ToCompactString;

use crate::span::model::{AttrValue, Attributes, SpanStatus, Text};

/// Exported in place of a sensitive header's value.
pub const REDACTED: &str = "REDACTED";
const HEADER_PREFIX: &str = "http.request.header.";

/// Semantic-convention name, attributes and status of an exchange.
pub fn describe(r: &HttpExchange, role: Role, conn: &ConnMeta, privacy: &Privacy) -> Described {
    let route = template_route(r.path());
    // Unknown methods are named "HTTP" (OTel: {method} is HTTP for _OTHER).
    let name_method = if r.method == Method::Other { "HTTP" } else { r.method.as_str() };
    // Room for every attribute a span usually gets (17-20), in one block small
    // enough for the allocator's per-thread cache (<= 1 KiB: 48-byte entries).
    let mut a = Attributes(Vec::with_capacity(20));
    a.push_unique("http.request.method", r.method.as_str());
    if let Some(orig) = r.method_original() {
        a.push_unique("http.request.method_original", orig);
    }
    // No path: an HTTP/2 request whose `:path` the peer indexed before
    // kspan joined its connection (so no route and no URL either).
    let known_path = !r.path().is_empty();
    if known_path {
        a.push_unique("url.path", r.path());
    }
    if privacy.capture_url_query
        && let Some(q) = r.query()
    {
        a.push_unique("url.query", q);
    }
    a.push_unique("url.scheme", if conn.tls { "https" } else { "http" });
    a.push_unique("network.protocol.name", "http");
    a.push_unique("network.protocol.version", r.version.as_str());
    // 0: an HTTP/2 `:status` indexed before kspan joined the connection.
    if r.status != 0 {
        a.push_unique("http.response.status_code", i64::from(r.status));
    }

    let host = r.header("host").map(split_host);
    // The server's own address: ours when serving, the peer's when calling.
    let own = match role {
        Role::Server => conn.local,
        Role::Client => conn.peer,
    };
    match (&host, own) {
        (Some((h, port)), _) => {
            a.push_unique("server.address", *h);
            // A Host without a port means the scheme's default, except on a
            // Unix domain socket, which has no port.
            let default = if conn.tls { 443 } else { 80 };
            if let Some(p) = port.or(conn.unix.is_none().then_some(default)) {
                a.push_unique("server.port", i64::from(p));
            }
        }
        (None, Some(addr)) => {
            a.push_unique("server.address", ip_text(addr.ip()));
            a.push_unique("server.port", i64::from(addr.port()));
        }
        (None, None) => {}
    }
    if let Some(peer) = conn.peer {
        let ip = ip_text(peer.ip());
        if role == Role::Server {
            a.push_unique("client.address", ip.clone());
            a.push_unique("client.port", i64::from(peer.port()));
        }
        a.push_unique("network.peer.address", ip);
        a.push_unique("network.peer.port", i64::from(peer.port()));
    }
    if let Some(local) = conn.local {
        a.push_unique("network.local.address", ip_text(local.ip()));
        a.push_unique("network.local.port", i64::from(local.port()));
    }
    crate::protocol::push_unix(&mut a, role, conn, host.is_none());
    if role == Role::Client && known_path {
        a.push_unique("url.full", url_full(r, host.as_ref().map(|(h, p)| (*h, *p)), conn, privacy));
    }
    if known_path {
        a.push_unique("http.route", route.clone());
    }
    if let Some(ua) = r.header("user-agent") {
        a.push_unique("user_agent.original", ua);
    }
    if let Some(n) = r.request_body_size {
        a.push_unique("http.request.body.size", clamp_i64(n));
    }
    if let Some(n) = r.response_body_size {
        a.push_unique("http.response.body.size", clamp_i64(n));
    }

    let grpc = grpc_call(r);
    let http_error = match role {
        Role::Server => r.status >= 500,
        Role::Client => r.status >= 400,
    };
    // The code that makes a gRPC call an error, if it is one.
    let grpc_error = grpc.and(r.grpc_status).filter(|&code| grpc_is_error(role, code));
    if let Some((service, method)) = grpc {
        a.push_unique("rpc.system", "grpc");
        a.push_unique("rpc.service", service);
        a.push_unique("rpc.method", method);
        if let Some(code) = r.grpc_status {
            a.push_unique("rpc.grpc.status_code", i64::from(code));
        }
    }
    let error = http_error || grpc_error.is_some();
    if http_error {
        a.push_unique("error.type", r.status.to_compact_string());
    } else if let Some(code) = grpc_error {
        a.push_unique("error.type", code.to_compact_string());
    }

    for name in &privacy.capture_headers {
        let name = name.to_ascii_lowercase();
        if let Some(v) = joined_header(r, &name) {
            let v = if SENSITIVE_HEADERS.contains(&name.as_str()) { REDACTED.to_owned() } else { v.into_owned() };
            a.set(format!("{HEADER_PREFIX}{name}"), v);
        }
    }

    let private = if privacy.skip_private { Attributes::new() } else { private_attributes(r) };

    Described {
        // gRPC: `package.Service/Method` (OTel RPC conventions).
        name: match grpc {
            Some(_) => Text::from(r.path().trim_start_matches('/')),
            None => span_name(name_method, &route),
        },
        attributes: a,
        private,
        status: if error { SpanStatus::error("") } else { SpanStatus::default() },
        traceparent: r.header("traceparent").map(str::to_owned),
        tracestate: r.header("tracestate").map(str::to_owned),
    }
}

/// (service, method) of a gRPC call: a request with a `application/grpc*`
/// content type to `/service/method`.
fn grpc_call(r: &HttpExchange) -> Option<(&str, &str)> {
    r.header("content-type").filter(|t| t.starts_with("application/grpc"))?;
    let (service, method) = r.path().strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some((service, method))
}

/// Whether a gRPC status code makes the span an error: any code but OK for
/// a client; for a server only the codes that mean it failed (UNKNOWN,
/// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS), as
/// OpenTelemetry's RPC conventions say.
fn grpc_is_error(role: Role, code: u32) -> bool {
    match role {
        Role::Client => code != 0,
        Role::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

/// `METHOD route`, without the formatting machinery (once per span).
/// `METHOD` alone when the route is unknown.
fn span_name(method: &str, route: &str) -> Text {
    let mut name = Text::with_capacity(method.len() + 1 + route.len());
    name.push_str(method);
    if !route.is_empty() {
        name.push(' ');
        name.push_str(route);
    }
    name
}

/// Every request header (repeated ones joined with `,`) and the query
/// string, for rules.
fn private_attributes(r: &HttpExchange) -> Attributes {
    let mut private = Attributes(Vec::with_capacity(r.headers.len() + 1));
    for (name, value) in r.headers() {
        let key = private_header_key(name);
        match private.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, AttrValue::Str(prev))) => {
                prev.push(',');
                prev.push_str(value);
            }
            _ => private.set(key, value),
        }
    }
    if let Some(q) = r.query() {
        private.set("url.query", q);
    }
    private
}

/// `http.request.header.<name>` for a lower-case header name; common names
/// come from a static table (no allocation per span).
fn private_header_key(name: &str) -> Cow<'static, str> {
    const COMMON: &[(&str, &str)] = &[
        ("host", "http.request.header.host"),
        ("user-agent", "http.request.header.user-agent"),
        ("accept", "http.request.header.accept"),
        ("accept-encoding", "http.request.header.accept-encoding"),
        ("accept-language", "http.request.header.accept-language"),
        ("connection", "http.request.header.connection"),
        ("content-type", "http.request.header.content-type"),
        ("content-length", "http.request.header.content-length"),
        ("authorization", "http.request.header.authorization"),
        ("cookie", "http.request.header.cookie"),
        ("traceparent", "http.request.header.traceparent"),
        ("tracestate", "http.request.header.tracestate"),
        ("x-forwarded-for", "http.request.header.x-forwarded-for"),
        ("x-request-id", "http.request.header.x-request-id"),
        ("x-tenant-id", "http.request.header.x-tenant-id"),
    ];
    match COMMON.iter().find(|(n, _)| *n == name) {
        Some((_, key)) => Cow::Borrowed(key),
        None => Cow::Owned(format!("{HEADER_PREFIX}{name}")),
    }
}

/// All values of a request header joined with `,` (RFC 9110 field combination).
fn joined_header<'a>(r: &'a HttpExchange, name: &str) -> Option<Cow<'a, str>> {
    let mut values = r.headers().filter(|(n, _)| *n == name).map(|(_, v)| v);
    let first = values.next()?;
    Some(values.fold(Cow::Borrowed(first), |mut acc, v| {
        let s = acc.to_mut();
        s.push(',');
        s.push_str(v);
        acc
    }))
}

/// Splits a Host header into host and port (`[v6]:port` handled); a bad
/// port is treated as absent.
fn split_host(h: &str) -> (&str, Option<u16>) {
    if let Some(rest) = h.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (h, None),
        };
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (h, None),
    }
}

fn url_full(r: &HttpExchange, host: Option<(&str, Option<u16>)>, conn: &ConnMeta, privacy: &Privacy) -> String {
    let (scheme, default_port) = if conn.tls { ("https", 443) } else { ("http", 80) };
    let path = if r.path().starts_with('/') { r.path() } else { "/" };
    let query = r.query().filter(|_| privacy.capture_url_query);
    // One allocation: this runs for every client span.
    let mut url = String::with_capacity(scheme.len() + 3 + 48 + 6 + path.len() + query.map_or(0, |q| q.len() + 1));
    url.push_str(scheme);
    url.push_str("://");
    let port = match (host, conn.peer) {
        (Some((h, p)), _) => {
            push_host(&mut url, h);
            p
        }
        (None, Some(peer)) => {
            push_host(&mut url, &ip_text(peer.ip()));
            Some(peer.port())
        }
        (None, None) => None,
    };
    if let Some(p) = port.filter(|p| *p != default_port) {
        let _ = write!(url, ":{p}");
    }
    url.push_str(path);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// Appends a host, an IPv6 address in brackets.
fn push_host(url: &mut String, host: &str) {
    if host.contains(':') {
        url.push('[');
        url.push_str(host);
        url.push(']');
    } else {
        url.push_str(host);
    }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::UnixConn;
    use crate::protocol::http::head::parse_request;

    fn exchange(req: &str, status: u16) -> HttpExchange {
        let mut ex = parse_request(req.as_bytes()).expect("valid request").ex;
        ex.status = status;
        ex
    }

    fn conn() -> ConnMeta {
        ConnMeta { local: "10.0.0.1:8080".parse().ok(), peer: "10.0.0.2:40000".parse().ok(), tls: false, unix: None }
    }

    #[test]
    fn authorization_and_cookies_are_never_exported_raw() {
        let ex =
            exchange("GET /a HTTP/1.1\r\nAuthorization: Bearer s3cr3t\r\nCookie: sid=1\r\nX-Tenant: acme\r\n\r\n", 200);
        let privacy = Privacy {
            capture_headers: vec!["Authorization".into(), "cookie".into(), "x-tenant".into()],
            ..Privacy::default()
        };
        let d = describe(&ex, Role::Server, &conn(), &privacy);
        assert_eq!(d.attributes.get_str("http.request.header.authorization"), Some(REDACTED));
        assert_eq!(d.attributes.get_str("http.request.header.cookie"), Some(REDACTED));
        assert_eq!(d.attributes.get_str("http.request.header.x-tenant"), Some("acme"));
        assert!(d.attributes.iter().all(|(_, v)| !v.to_text().contains("s3cr3t")));
        // Rules can still read the raw values.
        assert_eq!(d.private.get_str("http.request.header.authorization"), Some("Bearer s3cr3t"));
    }

    #[test]
    fn headers_are_not_exported_unless_listed() {
        let ex = exchange("GET /a HTTP/1.1\r\nX-Tenant: acme\r\n\r\n", 200);
        let d = describe(&ex, Role::Server, &conn(), &Privacy::default());
        assert!(d.attributes.iter().all(|(k, _)| !k.starts_with(HEADER_PREFIX)));
        assert_eq!(d.private.get_str("http.request.header.x-tenant"), Some("acme"));
    }

    #[test]
    fn without_rules_private_attributes_are_not_built_and_nothing_else_changes() {
        let ex = exchange("GET /a/7?q=1 HTTP/1.1\r\nHost: h:81\r\nX-Tenant: acme\r\nUser-Agent: curl\r\n\r\n", 503);
        let with = describe(&ex, Role::Server, &conn(), &Privacy::default());
        let skip = Privacy { skip_private: true, ..Privacy::default() };
        let without = describe(&ex, Role::Server, &conn(), &skip);
        assert!(without.private.is_empty());
        assert_eq!(with.private.get_str("http.request.header.x-tenant"), Some("acme"));
        assert_eq!((without.name.as_str(), without.attributes), (with.name.as_str(), with.attributes));
        assert_eq!(without.status, with.status);
    }

    #[test]
    fn url_query_is_off_by_default_and_private_always() {
        let ex = exchange("GET /s?token=abc HTTP/1.1\r\nHost: h\r\n\r\n", 200);
        let d = describe(&ex, Role::Client, &conn(), &Privacy::default());
        assert_eq!(d.attributes.get("url.query"), None);
        assert_eq!(d.attributes.get_str("url.full"), Some("http://h/s"));
        assert_eq!(d.private.get_str("url.query"), Some("token=abc"));
        let on = Privacy { capture_url_query: true, ..Privacy::default() };
        let d = describe(&ex, Role::Client, &conn(), &on);
        assert_eq!(d.attributes.get_str("url.query"), Some("token=abc"));
        assert_eq!(d.attributes.get_str("url.full"), Some("http://h/s?token=abc"));
    }

    #[test]
    fn a_host_without_port_means_the_default_of_the_scheme_and_none_on_a_unix_socket() {
        let ex = exchange("GET /a HTTP/1.1\r\nHost: app\r\n\r\n", 200);
        let port = |conn: &ConnMeta| {
            describe(&ex, Role::Client, conn, &Privacy::default())
                .attributes
                .get("server.port")
                .and_then(AttrValue::as_i64)
        };
        assert_eq!(port(&conn()), Some(80));
        assert_eq!(port(&ConnMeta { tls: true, ..conn() }), Some(443));
        let unix = ConnMeta {
            local: None,
            peer: None,
            tls: false,
            unix: Some(UnixConn { name: "/run/app.sock", sock: 1, peer: 2 }),
        };
        assert_eq!(port(&unix), None);
        let d = describe(&ex, Role::Server, &unix, &Privacy::default());
        assert_eq!(d.attributes.get_str("network.transport"), Some("unix"));
        assert_eq!(d.attributes.get_str("network.local.address"), Some("/run/app.sock"));
        assert_eq!(d.attributes.get_str("server.address"), Some("app"), "the Host header names the server");
        assert_eq!(d.attributes.get("client.address"), None);
        // Without a Host header the socket's name is the server's address.
        let ex = exchange("GET / HTTP/1.0\r\n\r\n", 200);
        let d = describe(&ex, Role::Client, &unix, &Privacy::default());
        assert_eq!(d.attributes.get_str("server.address"), Some("/run/app.sock"));
        assert_eq!(d.attributes.get_str("network.peer.address"), Some("/run/app.sock"));
    }

    #[test]
    fn name_route_and_server_address_follow_conventions() {
        let ex =
            exchange("GET /users/42?x=1 HTTP/1.1\r\nHost: api.example.com:8443\r\nUser-Agent: curl/8\r\n\r\n", 200);
        let d = describe(&ex, Role::Server, &conn(), &Privacy::default());
        assert_eq!(d.name, "GET /users/{id}");
        assert_eq!(d.attributes.get_str("http.route"), Some("/users/{id}"));
        assert_eq!(d.attributes.get_str("url.path"), Some("/users/42"));
        assert_eq!(d.attributes.get_str("server.address"), Some("api.example.com"));
        assert_eq!(d.attributes.get("server.port").and_then(AttrValue::as_i64), Some(8443));
        assert_eq!(d.attributes.get_str("client.address"), Some("10.0.0.2"));
        assert_eq!(d.attributes.get_str("user_agent.original"), Some("curl/8"));
        // No Host: the local address for a server, the peer for a client.
        let ex = exchange("GET / HTTP/1.0\r\n\r\n", 200);
        let d = describe(&ex, Role::Server, &conn(), &Privacy::default());
        assert_eq!(d.attributes.get_str("server.address"), Some("10.0.0.1"));
        assert_eq!(d.attributes.get_str("network.protocol.version"), Some("1.0"));
        let d = describe(&ex, Role::Client, &conn(), &Privacy::default());
        assert_eq!(d.attributes.get_str("server.address"), Some("10.0.0.2"));
        assert_eq!(d.attributes.get("server.port").and_then(AttrValue::as_i64), Some(40000));
        assert_eq!(d.attributes.get("client.address"), None);
    }

    #[test]
    fn tls_connections_are_https() {
        let ex = exchange("GET /a HTTP/1.1\r\nHost: h:443\r\n\r\n", 200);
        let tls = ConnMeta { tls: true, ..conn() };
        let d = describe(&ex, Role::Client, &tls, &Privacy::default());
        assert_eq!(d.attributes.get_str("url.scheme"), Some("https"));
        assert_eq!(d.attributes.get_str("url.full"), Some("https://h/a"), "443 is https's default port");
        let d = describe(&ex, Role::Client, &conn(), &Privacy::default());
        assert_eq!(d.attributes.get_str("url.scheme"), Some("http"));
        assert_eq!(d.attributes.get_str("url.full"), Some("http://h:443/a"));
    }

    #[test]
    fn url_full_brackets_ipv6_and_falls_back_to_the_peer() {
        let ex = exchange("GET /v HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 200);
        let d = describe(&ex, Role::Client, &conn(), &Privacy::default());
        assert_eq!(d.attributes.get_str("url.full"), Some("http://[::1]:8080/v"));
        let no_host = exchange("GET x HTTP/1.0\r\n\r\n", 200);
        let d = describe(&no_host, Role::Client, &conn(), &Privacy::default());
        assert_eq!(
            d.attributes.get_str("url.full"),
            Some("http://10.0.0.2:40000/"),
            "peer address, path defaults to /"
        );
        let v6 = ConnMeta { peer: Some("[fe80::2]:80".parse().unwrap()), ..conn() };
        let d = describe(&no_host, Role::Client, &v6, &Privacy::default());
        assert_eq!(d.attributes.get_str("url.full"), Some("http://[fe80::2]/"), "80 is http's default port");
    }

    #[test]
    fn unknown_methods_are_other_and_named_http() {
        let ex = exchange("PROPFIND /dav/1 HTTP/1.1\r\n\r\n", 207);
        let d = describe(&ex, Role::Server, &conn(), &Privacy::default());
        assert_eq!(d.attributes.get_str("http.request.method"), Some("_OTHER"));
        assert_eq!(d.attributes.get_str("http.request.method_original"), Some("PROPFIND"));
        assert_eq!(d.name, "HTTP /dav/{id}");
    }

    #[test]
    fn error_status_depends_on_role() {
        use crate::span::model::StatusCode;
        let code = |status, role| {
            describe(&exchange("GET / HTTP/1.1\r\n\r\n", status), role, &conn(), &Privacy::default()).status.code
        };
        assert_eq!(code(404, Role::Server), StatusCode::Unset);
        assert_eq!(code(500, Role::Server), StatusCode::Error);
        assert_eq!(code(404, Role::Client), StatusCode::Error);
        assert_eq!(code(302, Role::Client), StatusCode::Unset);
        let d = describe(&exchange("GET / HTTP/1.1\r\n\r\n", 503), Role::Server, &conn(), &Privacy::default());
        assert_eq!(d.attributes.get_str("error.type"), Some("503"));
        assert!(d.status.message.is_empty());
    }

    #[test]
    fn trace_context_headers_are_passed_raw() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ex = exchange(&format!("GET / HTTP/1.1\r\ntraceparent: {tp}\r\ntracestate: a=b\r\n\r\n"), 200);
        let d = describe(&ex, Role::Server, &conn(), &Privacy::default());
        assert_eq!(d.traceparent.as_deref(), Some(tp));
        assert_eq!(d.tracestate.as_deref(), Some("a=b"));
    }

    #[test]
    fn host_header_forms() {
        assert_eq!(split_host("a.b"), ("a.b", None));
        assert_eq!(split_host("a.b:81"), ("a.b", Some(81)));
        assert_eq!(split_host("[::1]:81"), ("::1", Some(81)));
        assert_eq!(split_host("[::1]"), ("::1", None));
        assert_eq!(split_host("a.b:x"), ("a.b", None));
    }
}
