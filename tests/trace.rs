//! End-to-end: whole-trace linking. Service A (threaded Python HTTP server
//! that propagates no context) queries PostgreSQL, Redis and calls service B;
//! kspan traces A and B and must put every span of one request in one trace
//! with the right parents. Also: incoming W3C context is joined, a malformed
//! one starts a new trace, and an SDK-instrumented client's context wins.
//! And a Go service under concurrent requests: its database and HTTP calls
//! nest by goroutine, not by thread.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use kspan_e2e::servers::{Proc, go_db_app, go_db_app_cgo, go_db_server, go_grpc_server, postgres, python_http, redis};
use kspan_e2e::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn pid_of(s: &Value) -> i64 {
    s["resource"]["process.pid"].as_i64().unwrap_or(-1)
}

fn id<'a>(s: &'a Value, field: &str) -> &'a str {
    s[field].as_str().unwrap_or("")
}

fn range(s: &Value) -> (u64, u64) {
    (s["start_unix_nanos"].as_u64().expect("start"), s["end_unix_nanos"].as_u64().expect("end"))
}

fn assert_inside(child: &Value, parent: &Value) {
    let (c, p) = (range(child), range(parent));
    assert!(p.0 <= c.0 && c.1 <= p.1, "child {c:?} not inside parent {p:?}:\n{child:#}\n{parent:#}");
}

/// Service A on a free port, using the given PostgreSQL, Redis and service B.
fn service_a(pg: u16, redis: u16, b: u16) -> Proc {
    let port = free_port();
    let mut child = Command::new("python3")
        .arg(apps_dir().join("service_a.py"))
        .args([port, pg, redis, b].map(|p| p.to_string()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start service_a.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
    assert_eq!(line.trim(), "ready", "service A did not start");
    wait_port(port, Duration::from_secs(10));
    Proc::from_child(child, port)
}

/// GET /order on a fresh connection, optionally with a `traceparent`.
fn get_order(port: u16, traceparent: Option<&str>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect A");
    let tp = traceparent.map(|v| format!("traceparent: {v}\r\n")).unwrap_or_default();
    write!(s, "GET /order HTTP/1.1\r\nHost: a\r\n{tp}Connection: close\r\n\r\n").expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    assert!(resp.starts_with("HTTP/1.1 200"), "A replied: {resp}");
}

/// Spans of one request to A: A's server span, A's client spans and B's server span.
struct OrderTrace {
    a_server: Value,
    a_clients: Vec<Value>,
    b_server: Value,
}

/// Waits for the next request's spans (those not in `seen`).
fn next_order(k: &Kspan, a: u32, b: u32, seen: &mut Vec<String>) -> OrderTrace {
    let new = |s: &Value, seen: &[String]| !seen.iter().any(|x| x == id(s, "span_id"));
    let a_srv = k.wait_spans(1, WAIT, |s| kind(s) == "server" && pid_of(s) == a as i64 && new(s, seen));
    assert_eq!(a_srv.len(), 1, "one request to A: {a_srv:#?}");
    let a_server = a_srv.into_iter().next().expect("A span");
    let b_srv = k.wait_spans(1, WAIT, |s| kind(s) == "server" && pid_of(s) == b as i64 && new(s, seen));
    assert_eq!(b_srv.len(), 1, "one request to B: {b_srv:#?}");
    let b_server = b_srv.into_iter().next().expect("B span");
    let (start, end) = range(&a_server);
    let a_clients: Vec<Value> = k
        .spans()
        .into_iter()
        .filter(|s| kind(s) == "client" && pid_of(s) == a as i64 && new(s, seen))
        .filter(|s| range(s).0 >= start && range(s).0 <= end)
        .collect();
    for s in std::iter::once(&a_server).chain(&a_clients).chain(std::iter::once(&b_server)) {
        seen.push(id(s, "span_id").to_owned());
    }
    OrderTrace { a_server, a_clients, b_server }
}

fn db(s: &Value) -> &str {
    attr_str(s, "db.system.name").unwrap_or(if attr_str(s, "http.request.method").is_some() { "http" } else { "" })
}

/// Checks one trace for the request: ids and parents as the linker promises.
fn assert_one_trace(t: &OrderTrace) {
    let trace = id(&t.a_server, "trace_id");
    let mut kinds: Vec<&str> = t.a_clients.iter().map(db).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds, ["http", "postgresql", "redis"], "A's client spans: {:#?}", t.a_clients);
    for c in &t.a_clients {
        assert_eq!(id(c, "trace_id"), trace, "client span in A's trace: {c:#}");
        assert_eq!(id(c, "parent_span_id"), id(&t.a_server, "span_id"), "client span's parent: {c:#}");
        assert_inside(c, &t.a_server);
    }
    let call: Vec<&Value> = t.a_clients.iter().filter(|c| db(c) == "http").collect();
    assert_eq!(call.len(), 1, "one call to B: {call:#?}");
    assert_eq!(id(&t.b_server, "trace_id"), trace, "B's server span in A's trace: {:#}", t.b_server);
    assert_eq!(id(&t.b_server, "parent_span_id"), id(call[0], "span_id"), "B's parent is A's call: {:#}", t.b_server);
    assert_inside(&t.b_server, call[0]);
}

#[test]
fn one_trace_across_a_its_databases_and_b() {
    let pg = postgres();
    let rd = redis();
    let b = python_http("trace-b");
    let a = service_a(pg.port, rd.port, b.port);
    let (a_pid, b_pid) = (a.pid(), b.pid());
    let k = Kspan::start(&["--pid", &a_pid.to_string(), "--pid", &b_pid.to_string()]);
    let mut seen = Vec::new();

    // No incoming context: A's server span is the root.
    get_order(a.port, None);
    let t = next_order(&k, a_pid, b_pid, &mut seen);
    assert_eq!(id(&t.a_server, "parent_span_id"), "", "root: {:#}", t.a_server);
    assert_one_trace(&t);

    // A valid traceparent: A joins it; everything below follows.
    let (tid, pid) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    get_order(a.port, Some(&format!("00-{tid}-{pid}-01")));
    let t = next_order(&k, a_pid, b_pid, &mut seen);
    assert_eq!(id(&t.a_server, "trace_id"), tid);
    assert_eq!(id(&t.a_server, "parent_span_id"), pid);
    assert_one_trace(&t);

    // A malformed one: a new trace, counted.
    get_order(a.port, Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
    let t = next_order(&k, a_pid, b_pid, &mut seen);
    assert_ne!(id(&t.a_server, "trace_id"), tid);
    assert_eq!(id(&t.a_server, "parent_span_id"), "");
    assert_one_trace(&t);
    // Counters are published once a second: wait until this request's are.
    let t = std::time::Instant::now();
    let mut m = k.metrics();
    while !(m.contains("kspan_bad_traceparent_total 1") && m.contains("kspan_links_total{kind=\"cross_process\"}"))
        && t.elapsed() < std::time::Duration::from_secs(5)
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
        m = k.metrics();
    }
    let bad: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("kspan_bad_traceparent_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no kspan_bad_traceparent_total in:\n{m}"));
    assert!(bad >= 1.0, "{m}");
    assert!(m.contains("kspan_links_total{kind=\"cross_process\"}"), "{m}");
    assert!(k.stop(), "kspan exits cleanly");
}

/// Requests per scheme to the Go service, 8 at a time.
const GO_REQUESTS: usize = 24;

/// The number at the end of a path or key (`/both/7`, `GET kspan:7`).
fn last_number(s: &str) -> Option<u32> {
    s.rsplit(['/', ':']).next()?.parse().ok()
}

/// A Go service (net/http, database/sql with lib/pq, redigo; it propagates
/// no context) under concurrent requests over HTTP and HTTPS (Go's
/// crypto/tls, HTTP/1.1): every PostgreSQL, Redis and HTTP call a handler
/// makes is the child of the server span of the request it serves, though
/// goroutines move between threads and each thread runs other requests'
/// goroutines (keyed by thread, their server spans overlap on one thread
/// and nothing would nest). Over HTTP the kernel reads the goroutine below
/// the thread's `fsbase` at each syscall; over HTTPS the server side comes
/// from the Go TLS probes (the goroutine in R14) and the database side from
/// syscalls, so the two readings must agree. `/chain/N` calls the service's
/// own `/redis/N` through net/http's client, whose `Transport` writes the
/// request on a goroutine of its own (the round-trip probe names the
/// caller): one trace of four spans. `/h2chain/N` and `/xchain/N` do the
/// same over HTTP/2 (net/http's client to its own HTTPS server, x/net's to
/// x/net's), where a goroutine per request writes it and acts for the
/// caller, and a goroutine per stream serves it.
#[test]
fn go_service_calls_nest_under_their_request_by_goroutine() {
    go_service_nests(&go_db_app(), false);
}

/// The same service's HTTPS servers (net/http's own HTTP/2 server, and
/// golang.org/x/net/http2's) speaking HTTP/2 to curl, which multiplexes the
/// concurrent requests as streams of one connection per server: Go
/// reads every request of a connection on one goroutine and runs each
/// stream's handler on a goroutine of its own. The stream-handler probe
/// names that goroutine for the stream, so each request's calls nest under
/// it (keyed by the reading goroutine, the streams overlap and the process
/// would be seen as multiplexed: nothing nested).
#[test]
fn go_http2_server_streams_nest_by_their_handler_goroutine() {
    go_service_nests(&go_db_app(), true);
}

/// A Go service's pooled HTTP/2 (TLS) connection to its own HTTPS server,
/// opened before kspan started: kspan takes it up mid-stream, on both ends
/// (`http2_joined`), and follows each direction from its first read or
/// write at a frame boundary (Go reads a frame's header and its payload
/// with two calls). Go's HPACK encoder sends each new
/// `:path` as a literal, so the calls are fully named; the server's stream
/// handler reports reach the joined stream (held while the connection was
/// still undecided), so each call nests: request -> HTTP/2 call -> its
/// server span -> Redis, in one trace.
#[test]
fn go_http2_connection_opened_before_kspan_is_followed_and_nests() {
    go_pooled_connection_opened_before_kspan_nests("h2chain", true);
}

/// The same over HTTP/1.1: net/http's keep-alive connection to the
/// service's own HTTP server, opened before kspan started (the kernel saw
/// no connect: a socket of no known role). The round-trip probe names
/// each call's caller on it, so each call nests the same way.
#[test]
fn go_http1_connection_opened_before_kspan_nests() {
    go_pooled_connection_opened_before_kspan_nests("chain", false);
}

/// Calls `/ROUTE/N` of the Go test service, whose handler calls its own
/// `/redis/N` on a pooled connection the first call opens before kspan
/// starts; then checks request -> call -> its server span -> Redis.
fn go_pooled_connection_opened_before_kspan_nests(route: &str, h2: bool) {
    let (pg, rd) = (postgres(), seeded_redis());
    let (go, _) = go_db_server(&go_db_app(), pg.port, rd.port);
    let chain = |n: usize| format!("http://127.0.0.1:{}/{route}/{n}", go.port);
    // The pooled connection is opened by the first call.
    assert_eq!(run_ok(Command::new("curl").args(["-sSf", &chain(0)])).trim(), "v0");
    // Local ports of the service's connections before kspan started.
    let ss = run_ok(Command::new("ss").args(["-tnpH", "state", "established"]));
    let before: Vec<i64> = ss
        .lines()
        .filter(|l| l.contains(&format!("pid={},", go.pid())))
        .filter_map(|l| l.split_whitespace().nth(2)?.rsplit(':').next()?.parse().ok())
        .collect();
    let k = Kspan::start(&["--pid", &go.pid().to_string()]);
    k.wait_log("\"Go crypto/tls\"", WAIT);
    for symbol in [
        "net/http.(*persistConn).roundTrip",
        "net/http.(*http2serverConn).runHandler",
        "net/http.(*http2clientStream).doRequest",
    ] {
        k.wait_log(symbol, WAIT);
    }
    // Over HTTP/2 the server's goroutine was already inside its TLS `Read`
    // of the next frame header when kspan attached: that read is never
    // seen (the probe reads a call's buffer at its entry), so the first
    // call's request is lost on the server's end. The calls after it are
    // whole.
    assert_eq!(run_ok(Command::new("curl").args(["-sSf", &chain(0)])).trim(), "v0");
    const CALLS: usize = 4;
    let mut curl = Command::new("curl");
    curl.arg("-sSf");
    for n in 1..=CALLS {
        curl.arg(chain(n));
    }
    let out = run_ok(&mut curl);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["v1", "v2", "v3", "v4"], "{out}");
    let go_pid = go.pid() as i64;
    let version = if h2 { "2" } else { "1.1" };
    let outer_path = format!("/{route}/");
    let spans = |kind_: &'static str, prefix: String| {
        move |s: &Value| {
            let path = attr_str(s, "url.path").unwrap_or("");
            kind(s) == kind_ && pid_of(s) == go_pid && path.starts_with(&prefix) && path != format!("{prefix}0")
        }
    };
    let outer = k.wait_spans(CALLS, WAIT, spans("server", outer_path.clone()));
    let calls = k.wait_spans(CALLS, WAIT, spans("client", "/redis/".into()));
    let inner = k.wait_spans(CALLS, WAIT, spans("server", "/redis/".into()));
    let redis = k.wait_spans(CALLS, WAIT, |s| {
        pid_of(s) == go_pid && attr_str(s, "db.query.text").is_some_and(|t| t != "GET kspan:0")
    });
    for n in 1..=CALLS {
        let (o, i) = (format!("{outer_path}{n}"), format!("/redis/{n}"));
        let at = |spans: &[Value], p: &str| -> Value {
            let found = spans.iter().find(|s| attr_str(s, "url.path") == Some(p));
            found.unwrap_or_else(|| panic!("{p}: {spans:#?}")).clone()
        };
        let (o, c, s) = (&at(&outer, &o), &at(&calls, &i), &at(&inner, &i));
        assert_eq!(s["name"].as_str(), Some("GET /redis/{id}"), "{s:#}");
        assert_eq!(attr_i64(s, "http.response.status_code"), Some(200), "{s:#}");
        for span in [c, s] {
            assert_eq!(attr_str(span, "network.protocol.version"), Some(version), "{span:#}");
        }
        let port = attr_i64(c, "network.local.port").expect("port");
        assert!(before.contains(&port), "the call is on a connection opened before kspan {before:?}: {c:#}");
        let r = redis
            .iter()
            .find(|r| attr_str(r, "db.query.text") == Some(&format!("GET kspan:{n}")))
            .unwrap_or_else(|| panic!("GET kspan:{n}: {redis:#?}"));
        for (child, parent) in [(c, o), (s, c), (r, s)] {
            assert_eq!(id(child, "parent_span_id"), id(parent, "span_id"), "{child:#}\n{parent:#}");
            assert_eq!(id(child, "trace_id"), id(o, "trace_id"), "{child:#}");
        }
        assert_inside(c, o);
        assert_inside(r, s);
    }
    if h2 {
        k.wait_metric("kspan_connections_total{reason=\"http2_joined\"} 2");
        streams_keyed_by_goroutine(&k, CALLS);
    }
    assert!(k.stop());
}

/// HTTP/2 upgraded from HTTP/1.1: curl's `--http2` on an `http://` URL sends
/// its first request with `Upgrade: h2c`, the Go service's h2c handler
/// (golang.org/x/net/http2/h2c) answers `101` and the HTTP/2 server
/// preface in one write, then stream 1's response; curl's later requests
/// on that connection are HTTP/2 streams. On both ends (curl and the Go
/// service) the upgrading request is one span with its HTTP/2 response
/// (not a `101`), and the later requests are HTTP/2 spans; each server
/// span is the child of curl's span, and the parent of its Redis call.
#[test]
fn h2c_upgrade_from_http1_is_followed_on_both_ends() {
    let rd = seeded_redis();
    let (go, _) = go_db_server(&go_db_app(), 1, rd.port);
    let k = Kspan::start(&["--pid", &go.pid().to_string(), "--exe", "^/usr/bin/curl$"]);
    let urls: Vec<String> = (1..=3).map(|n| format!("http://127.0.0.1:{}/redis/{n}", go.port)).collect();
    let t = std::time::Instant::now();
    let out =
        run_ok(Command::new("curl").args(["-sS", "--http2", "-w", "%{http_version} %{num_connects}\\n"]).args(&urls));
    let took = t.elapsed().as_nanos() as u64;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["v1", "2 1", "v2", "2 0", "v3", "2 0"], "three answers over one upgraded connection: {out}");
    let go_pid = go.pid() as i64;
    let servers = k.wait_spans(3, WAIT, |s| kind(s) == "server" && pid_of(s) == go_pid);
    let clients =
        k.wait_spans(3, WAIT, |s| kind(s) == "client" && resource_str(s, "process.executable.name") == Some("curl"));
    assert_eq!((servers.len(), clients.len()), (3, 3), "{servers:#?}\n{clients:#?}");
    let redis = k.wait_spans(3, WAIT, |s| pid_of(s) == go_pid && attr_str(s, "db.system.name") == Some("redis"));
    for n in 1..=3 {
        let path = format!("/redis/{n}");
        let at = |spans: &[Value]| -> Value {
            spans
                .iter()
                .find(|s| attr_str(s, "url.path") == Some(&path))
                .unwrap_or_else(|| panic!("{path}: {spans:#?}"))
                .clone()
        };
        let (s, c) = (at(&servers), at(&clients));
        for span in [&s, &c] {
            assert_eq!(attr_i64(span, "http.response.status_code"), Some(200), "{span:#}");
            assert_eq!(span["name"], "GET /redis/{id}", "{span:#}");
            // The upgrading request was sent as HTTP/1.1; the others are streams.
            let version = if n == 1 { "1.1" } else { "2" };
            assert_eq!(attr_str(span, "network.protocol.version"), Some(version), "{span:#}");
            assert!(duration_ns(span) <= took, "{span:#}");
        }
        assert_eq!(id(&s, "parent_span_id"), id(&c, "span_id"), "{s:#}\n{c:#}");
        assert_inside(&s, &c);
        let r = redis.iter().find(|r| attr_str(r, "db.query.text") == Some(&format!("GET kspan:{n}"))).expect("redis");
        assert_eq!(id(r, "parent_span_id"), id(&s, "span_id"), "{r:#}\n{s:#}");
    }
    // Both ends' exchanges are counted by the parser that took the
    // connection up (HTTP/1.x), the HTTP/2 part too; nothing went opaque.
    // x/net's h2c handler hands the server a wrapped connection (its
    // first field the `net.Conn`, as `tls.Conn`'s is): the handler
    // reports still name their socket, so the Redis calls nested above.
    streams_keyed_by_goroutine(&k, 3);
    let m = k.wait_metric("kspan_parse_total{protocol=\"http\",kind=\"exchanges\"} 6");
    assert!(m.lines().any(|l| l == "kspan_connections_total{reason=\"opaque\"} 0"), "nothing opaque:\n{m}");
    assert!(k.stop());
}

/// The same Go service built with cgo and C thread-local data: its
/// goroutine slot is not at Go's usual -8 from the thread pointer, and
/// kspan reads where it is from the executable's TLS segment.
#[test]
fn go_service_built_with_cgo_and_c_thread_locals_nests_too() {
    let exe = go_db_app_cgo();
    // readelf, independently: runtime.tlsg's value and the TLS segment.
    let segs = run_ok(Command::new("readelf").arg("-lW").arg(&exe));
    let tls: Vec<u64> = segs
        .lines()
        .find(|l| l.trim_start().starts_with("TLS "))
        .expect("a TLS segment")
        .split_whitespace()
        .filter_map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .collect();
    let (memsz, align) = (tls[4], tls[5].max(1));
    let syms = run_ok(Command::new("readelf").arg("-sW").arg(&exe));
    let tlsg = syms.lines().find(|l| l.ends_with(" runtime.tlsg")).expect("runtime.tlsg");
    let value = u64::from_str_radix(tlsg.split_whitespace().nth(1).expect("value"), 16).expect("hex");
    let offset = value as i64 - memsz.next_multiple_of(align) as i64;
    assert_ne!(offset, -8, "the goroutine slot moved (segment {tls:?}, runtime.tlsg {value:#x})");
    go_service_nests(&exe, false);
}

/// kspan's metrics once they count `n` Go HTTP/2 streams keyed by their
/// handler's goroutine; fails if they do not within 10 s.
fn streams_keyed_by_goroutine(k: &Kspan, n: usize) -> String {
    k.wait_metric(&format!("kspan_go_http2_streams_total{{reason=\"handler_goroutine\"}} {n}"))
}

/// A Redis server holding `kspan:N` = `vN` for each request number N.
fn seeded_redis() -> Proc {
    let rd = redis();
    let sets: String = (0..GO_REQUESTS).map(|n| format!("SET kspan:{n} v{n}\n")).collect();
    let mut cli = Command::new("redis-cli")
        .args(["-p", &rd.port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-cli");
    cli.stdin.take().expect("stdin").write_all(sets.as_bytes()).expect("SETs");
    assert!(cli.wait().expect("redis-cli").success());
    rd
}

/// Drives the Go service with curl: over HTTP/1.1, its HTTP and its first
/// HTTPS server; with `h2`, both HTTPS servers over HTTP/2.
fn go_service_nests(exe: &std::path::Path, h2: bool) {
    let (pg, rd) = (postgres(), seeded_redis());
    let (go, [https, xnet]) = go_db_server(exe, pg.port, rd.port);
    let k = Kspan::start(&["--pid", &go.pid().to_string()]);
    k.wait_log("\"Go crypto/tls\"", WAIT);
    k.wait_log("Go net/http client round trips followed", WAIT);
    for symbol in [
        "net/http.(*http2serverConn).runHandler",
        "golang.org/x/net/http2.(*serverConn).runHandler",
        "net/http.(*http2clientStream).doRequest",
        "golang.org/x/net/http2.(*clientStream).doRequest",
    ] {
        k.wait_log(symbol, WAIT);
    }

    let route = |n: usize| ["pg", "redis", "both", "chain", "h2chain", "xchain"][n % 6];
    let mut curl = Command::new("curl");
    curl.args(["-sSfk", if h2 { "--http2" } else { "--http1.1" }, "--parallel", "--parallel-max", "8"]);
    for n in 0..GO_REQUESTS {
        // Over HTTP/2: net/http's and golang.org/x/net/http2's servers.
        let first = if h2 { format!("https://127.0.0.1:{xnet}") } else { format!("http://127.0.0.1:{}", go.port) };
        curl.arg(format!("{first}/{}/{n}", route(n)));
        curl.arg(format!("https://127.0.0.1:{https}/{}/{n}", route(n)));
    }
    let out = run_ok(&mut curl);
    // Each request is sent to two servers.
    let per = 2;
    let redis_answers = per * (0..GO_REQUESTS).filter(|n| route(*n) != "pg").count();
    assert_eq!(out.lines().filter(|l| l.starts_with('v')).count(), redis_answers, "answers: {out}");

    // Per request: its server span, and pg 1 call, redis 1, both 2, each
    // chain 1 HTTP call whose own server span makes 1 Redis call (h2chain
    // and xchain over HTTP/2: net/http's client and server, x/net's).
    let count = |routes: &[&str]| per * (0..GO_REQUESTS).filter(|n| routes.contains(&route(*n))).count();
    let chains = count(&["chain", "h2chain", "xchain"]);
    let h2_streams = count(&["h2chain", "xchain"]) + if h2 { per * GO_REQUESTS } else { 0 };
    let go_pid = go.pid() as i64;
    let servers = k.wait_spans(per * GO_REQUESTS + chains, WAIT, |s| kind(s) == "server" && pid_of(s) == go_pid);
    assert_eq!(servers.len(), per * GO_REQUESTS + chains, "one server span per request: {servers:#?}");
    // HTTP/2 streams: curl's requests with `h2`, and the inner requests of
    // h2chain and xchain.
    let streams = servers.iter().filter(|s| attr_str(s, "network.protocol.version") == Some("2")).count();
    assert_eq!(streams, h2_streams, "{servers:#?}");
    let calls = per * (0..GO_REQUESTS).map(|n| if route(n) == "both" { 2 } else { 1 }).sum::<usize>() + chains;
    let clients = k.wait_spans(calls, WAIT, |s| kind(s) == "client" && pid_of(s) == go_pid);
    assert_eq!(clients.len(), calls, "one client span per call: {clients:#?}");
    let all: Vec<&Value> = servers.iter().chain(&clients).collect();
    // Counters that tell which Go path missed, for a failure's message.
    let go_counters = || -> String {
        // Counters are published once a second.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let m = k.metrics();
        let keep = ["kspan_go_", "kspan_link", "kspan_kernel_lost", "kspan_parse_total{protocol=\"http", "kspan_tls"];
        m.lines().filter(|l| keep.iter().any(|p| l.starts_with(p))).collect::<Vec<_>>().join("\n")
    };
    let children_of = |parent: &Value| -> Vec<&Value> {
        all.iter().copied().filter(|c| id(c, "parent_span_id") == id(parent, "span_id")).collect()
    };
    let what = |s: &Value| attr_str(s, "db.system.name").unwrap_or("http").to_owned();
    for c in &clients {
        let parent = servers.iter().find(|s| id(s, "span_id") == id(c, "parent_span_id")).unwrap_or_else(|| {
            panic!("a call outside any request span: {c:#}\n{}\nservers: {servers:#?}", go_counters())
        });
        assert_eq!(id(c, "trace_id"), id(parent, "trace_id"), "{c:#}");
        assert_inside(c, parent);
        if what(c) == "redis" {
            let (text, path) = (attr_str(c, "db.query.text").unwrap_or(""), attr_str(parent, "url.path"));
            assert_eq!(last_number(text), path.and_then(last_number), "the key names the request: {c:#}\n{parent:#}");
        }
    }
    let mut nested_servers = 0;
    for s in &servers {
        let path = attr_str(s, "url.path").expect("url.path");
        let mut got: Vec<String> = children_of(s).iter().map(|c| what(c)).collect();
        got.sort();
        let want: &[&str] = match path.split('/').nth(1) {
            Some("pg") => &["postgresql"],
            Some("redis") => &["redis"],
            Some("both") => &["postgresql", "redis"],
            _ => &["http"],
        };
        assert_eq!(got, want, "children of {path}: {s:#}\n{}", go_counters());
        if id(s, "parent_span_id").is_empty() {
            continue;
        }
        // The inner request of a chain: the child of the chain's HTTP call.
        nested_servers += 1;
        let call = clients.iter().find(|c| id(c, "span_id") == id(s, "parent_span_id")).expect("parent call");
        assert_eq!(attr_str(call, "url.path"), Some(path), "{s:#}\n{call:#}");
        assert_eq!(id(call, "trace_id"), id(s, "trace_id"));
        assert_inside(s, call);
    }
    assert_eq!(nested_servers, chains, "each chain's inner request is in its trace");
    let m = streams_keyed_by_goroutine(&k, h2_streams);
    assert!(m.lines().any(|l| l == "kspan_go_processes 1"), "the Go service is keyed by goroutine:\n{m}");
    assert!(m.lines().any(|l| l == "kspan_link_multiplexed_processes_total 0"), "no thread multiplexing seen:\n{m}");
    assert!(k.stop(), "kspan exits cleanly");
}

/// Concurrent gRPC calls, one channel (grpcio, raw bytes: the health
/// service's `HealthCheckRequest` is field 1, the service name): PORT N
/// [KIND,...] (pg, redis, both by default).
const GRPC_CLIENT: &str = r#"
import sys, grpc
port, n = int(sys.argv[1]), int(sys.argv[2])
kinds = sys.argv[3].split(",") if len(sys.argv) > 3 else ["pg", "redis", "both"]
check = grpc.insecure_channel(f"127.0.0.1:{port}").unary_unary("/grpc.health.v1.Health/Check")
def request(s):
    return b"\x0a" + bytes([len(s)]) + s.encode()
calls = [check.future(request(f"{kinds[i % len(kinds)]}/{i}"), timeout=30) for i in range(n)]
for c in calls:
    c.result()
print("ok", flush=True)
"#;

/// A grpc-go service (the health service's Check makes PostgreSQL and
/// Redis calls) answering concurrent calls multiplexed on one connection:
/// grpc-go reads every request on one goroutine and serves each stream on
/// a goroutine of its own. The handler probe (`(*Server).handleStream`,
/// the transport's connection read at the offset the executable's DWARF
/// gives) names that goroutine for the stream, so each call's database
/// calls nest under its server span.
#[test]
fn grpc_go_server_streams_nest_by_their_goroutine() {
    let (pg, rd) = (postgres(), seeded_redis());
    let go = go_grpc_server(pg.port, rd.port);
    let k = Kspan::start(&["--pid", &go.pid().to_string()]);
    k.wait_log("google.golang.org/grpc.(*Server).handleStream", WAIT);
    let out =
        run_ok(Command::new("python3").arg("-c").arg(GRPC_CLIENT).args([go.port.to_string(), GO_REQUESTS.to_string()]));
    assert_eq!(out.trim(), "ok");
    let go_pid = go.pid() as i64;
    let servers = k.wait_spans(GO_REQUESTS, WAIT, |s| kind(s) == "server" && pid_of(s) == go_pid);
    assert_eq!(servers.len(), GO_REQUESTS, "one server span per call: {servers:#?}");
    assert!(servers.iter().all(|s| s["name"] == "grpc.health.v1.Health/Check"), "{servers:#?}");
    // pg 1 call, redis 1, both 2.
    let calls = (0..GO_REQUESTS).map(|i| if i % 3 == 2 { 2 } else { 1 }).sum::<usize>();
    let clients = k.wait_spans(calls, WAIT, |s| kind(s) == "client" && pid_of(s) == go_pid);
    assert_eq!(clients.len(), calls, "one client span per call: {clients:#?}");
    let mut children: Vec<Vec<&str>> = vec![Vec::new(); servers.len()];
    for c in &clients {
        let i = servers
            .iter()
            .position(|s| id(s, "span_id") == id(c, "parent_span_id"))
            .unwrap_or_else(|| panic!("a call outside any request span: {c:#}\nservers: {servers:#?}"));
        assert_eq!(id(c, "trace_id"), id(&servers[i], "trace_id"), "{c:#}");
        assert_inside(c, &servers[i]);
        children[i].push(attr_str(c, "db.system.name").unwrap_or("?"));
    }
    // Each call's own calls, and no more: a wrong parent would show as a
    // server with two Redis calls, or none.
    let mut shapes: Vec<String> = children
        .iter_mut()
        .map(|c| {
            c.sort();
            c.join("+")
        })
        .collect();
    shapes.sort();
    let third = GO_REQUESTS / 3;
    let want: Vec<String> = ["postgresql", "postgresql+redis", "redis"]
        .iter()
        .flat_map(|s| std::iter::repeat_n(s.to_string(), third))
        .collect();
    assert_eq!(shapes, want, "{servers:#?}");
    let m = streams_keyed_by_goroutine(&k, GO_REQUESTS);
    assert!(m.lines().any(|l| l == "kspan_link_multiplexed_processes_total 0"), "no multiplexing seen:\n{m}");
    assert!(k.stop(), "kspan exits cleanly");
}

/// grpc-go's client writes every call of a channel on one goroutine
/// (`loopyWriter`), so the writer does not say whose call it is. The
/// probe on each `RET` of `(*http2Client).NewStream` (run on the caller's
/// goroutine, which also numbers the stream; the transport's connection
/// read at the offsets the executable's DWARF gives) names the caller for
/// the call's stream. Concurrent "chain/N" calls, each making one grpc-go
/// call on a shared channel to this very server ("redis/N"): each outer
/// Check -> its call -> the inner Check (linked across the connection) ->
/// its Redis command, one trace, no call under another's request.
#[test]
fn grpc_go_client_calls_nest_under_their_caller() {
    let (pg, rd) = (postgres(), seeded_redis());
    let go = go_grpc_server(pg.port, rd.port);
    let k = Kspan::start(&["--pid", &go.pid().to_string()]);
    k.wait_log("google.golang.org/grpc/internal/transport.(*http2Client).NewStream", WAIT);
    let out = run_ok(Command::new("python3").arg("-c").arg(GRPC_CLIENT).args([
        go.port.to_string(),
        GO_REQUESTS.to_string(),
        "chain".into(),
    ]));
    assert_eq!(out.trim(), "ok");
    let go_pid = go.pid() as i64;
    let servers = k.wait_spans(2 * GO_REQUESTS, WAIT, |s| kind(s) == "server" && pid_of(s) == go_pid);
    assert_eq!(servers.len(), 2 * GO_REQUESTS, "an outer and an inner server span per call: {servers:#?}");
    let clients = k.wait_spans(2 * GO_REQUESTS, WAIT, |s| kind(s) == "client" && pid_of(s) == go_pid);
    let (calls, redis): (Vec<&Value>, Vec<&Value>) =
        clients.iter().partition(|c| attr_str(c, "rpc.system") == Some("grpc"));
    assert_eq!((calls.len(), redis.len()), (GO_REQUESTS, GO_REQUESTS), "{clients:#?}");
    let span = |id_: &str| servers.iter().chain(&clients).find(|s| id(s, "span_id") == id_);
    let mut outer_seen = std::collections::HashSet::new();
    for c in &calls {
        assert_eq!(c["name"], "grpc.health.v1.Health/Check", "{c:#}");
        let parent = span(id(c, "parent_span_id"))
            .unwrap_or_else(|| panic!("a call outside any request span: {c:#}\nservers: {servers:#?}"));
        assert_eq!((kind(parent), id(parent, "parent_span_id")), ("server", ""), "an outer Check: {parent:#}");
        assert_eq!(id(c, "trace_id"), id(parent, "trace_id"), "{c:#}");
        assert_inside(c, parent);
        assert!(outer_seen.insert(id(parent, "span_id").to_owned()), "two calls under one request: {parent:#}");
    }
    for r in &redis {
        let inner = span(id(r, "parent_span_id")).unwrap_or_else(|| panic!("a Redis command outside a request: {r:#}"));
        let call = span(id(inner, "parent_span_id")).unwrap_or_else(|| panic!("an inner Check not linked: {inner:#}"));
        assert_eq!(attr_str(call, "rpc.system"), Some("grpc"), "{call:#}");
        assert_eq!(id(r, "trace_id"), id(call, "trace_id"));
        assert_inside(inner, call);
    }
    let m = k.wait_metric(&format!("kspan_go_http2_streams_total{{reason=\"caller_goroutine\"}} {GO_REQUESTS}"));
    assert!(m.lines().any(|l| l == "kspan_link_multiplexed_processes_total 0"), "no multiplexing seen:\n{m}");
    assert!(k.stop(), "kspan exits cleanly");
}

/// An OpenTelemetry-SDK client sends its own span's context to B.
const SDK_CLIENT: &str = r#"
import http.client, sys
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import TracerProvider
trace.set_tracer_provider(TracerProvider())
with trace.get_tracer("e2e").start_as_current_span("call-b") as span:
    headers = {}
    inject(headers)
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
    c.request("GET", "/users/7", headers=headers)
    c.getresponse().read()
    ctx = span.get_span_context()
    print(format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"), flush=True)
"#;

#[test]
fn sdk_client_context_is_the_servers_parent() {
    let b = python_http("trace-sdk");
    let k = Kspan::start(&["--pid", &b.pid().to_string()]);
    let out = run_ok(Command::new("python3").arg("-c").arg(SDK_CLIENT).arg(b.port.to_string()));
    let mut ids = out.split_whitespace();
    let (trace, parent) = (ids.next().expect("trace id"), ids.next().expect("span id"));
    let spans = k.wait_spans(1, WAIT, |s| kind(s) == "server" && pid_of(s) == b.pid() as i64);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(id(&spans[0], "trace_id"), trace, "{:#}", spans[0]);
    assert_eq!(id(&spans[0], "parent_span_id"), parent, "{:#}", spans[0]);
}
