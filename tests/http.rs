//! End-to-end: the real kspan (real eBPF programs) traces real HTTP servers
//! driven by real clients; spans are read from kspan's JSON-lines output.

use std::process::Command;
use std::time::Duration;

use kspan_e2e::servers::{
    TempDir, child_pid_of, grpc_server, nginx, nginx_h2c, nginx_sendfile, python_http, python_http_unix,
};
use kspan_e2e::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn server_spans_of(pid: u32) -> impl Fn(&Value) -> bool {
    move |s| kind(s) == "server" && s["resource"]["process.pid"].as_i64() == Some(pid as i64)
}

/// curl with several URLs reuses one connection; prints time_total per URL.
fn curl_keepalive(port: u16, paths: &[&str]) -> Vec<f64> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "%{http_code} %{time_total} %{num_connects}\\n"]);
    for p in paths {
        cmd.args(["-o", "/dev/null"]).arg(format!("http://127.0.0.1:{port}{p}"));
    }
    let out = run_ok(&mut cmd);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), paths.len(), "curl output: {out}");
    let connects: u32 = lines.iter().map(|l| l.split_whitespace().nth(2).unwrap().parse::<u32>().unwrap()).sum();
    assert_eq!(connects, 1, "curl must reuse one keep-alive connection: {out}");
    lines.iter().map(|l| l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap()).collect()
}

fn by_route<'a>(spans: &'a [Value], route: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| attr_str(s, "http.route") == Some(route)).collect()
}

#[test]
fn python_server_keepalive_404_and_500_over_one_connection() {
    let app = python_http("keepalive");
    let k = Kspan::start(&["--pid", &app.pid().to_string()]);
    let paths = ["/users/1", "/users/22", "/missing", "/boom"];
    let times = curl_keepalive(app.port, &paths);
    let spans = k.wait_spans(4, WAIT, server_spans_of(app.pid()));
    assert_eq!(spans.len(), 4, "exactly one span per request: {spans:#?}");
    let users = by_route(&spans, "/users/{id}");
    assert_eq!(users.len(), 2, "numeric ids are templated: {spans:#?}");
    for s in &spans {
        assert_eq!(attr_str(s, "http.request.method"), Some("GET"));
        assert_eq!(s["name"].as_str().unwrap(), format!("GET {}", attr_str(s, "http.route").unwrap()));
        assert_eq!(attr_i64(s, "server.port"), Some(app.port as i64), "{s:#}");
        assert_eq!(attr_str(s, "client.address"), Some("127.0.0.1"), "{s:#}");
    }
    let status = |route: &str| attr_i64(by_route(&spans, route)[0], "http.response.status_code");
    assert_eq!(status("/missing"), Some(404));
    assert_eq!(status("/boom"), Some(500));
    assert_eq!(users.iter().map(|s| attr_i64(s, "http.response.status_code")).collect::<Vec<_>>(), [Some(200); 2]);
    // Server errors are errors; a 404 is not an error for the server.
    assert_eq!(by_route(&spans, "/boom")[0]["status"]["code"], "error");
    assert_eq!(by_route(&spans, "/missing")[0]["status"]["code"], "unset");
    // Durations lie inside what the client measured for the same request.
    for (p, t) in paths.iter().zip(&times) {
        let s = spans.iter().find(|s| attr_str(s, "url.path") == Some(p)).expect("span per path");
        let client_ns = (t * 1e9) as u64;
        assert!(duration_ns(s) <= client_ns, "{p}: span {} ns > client {client_ns} ns", duration_ns(s));
        assert!(duration_ns(s) > 0, "{p}: zero duration");
    }
    assert!(k.stop(), "kspan exits cleanly on SIGTERM");
}

#[test]
fn nginx_served_to_curl() {
    let ng = nginx();
    let k = Kspan::start(&["--pid", &ng.pid().to_string()]);
    curl_keepalive(ng.port, &["/index.html", "/api/items.json", "/nope", "/err"]);
    let spans =
        k.wait_spans(4, WAIT, |s| kind(s) == "server" && resource_str(s, "process.executable.name") == Some("nginx"));
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let code = |p: &str| {
        let s = spans.iter().find(|s| attr_str(s, "url.path") == Some(p)).unwrap_or_else(|| panic!("no span for {p}"));
        attr_i64(s, "http.response.status_code")
    };
    assert_eq!(code("/index.html"), Some(200));
    assert_eq!(code("/api/items.json"), Some(200));
    assert_eq!(code("/nope"), Some(404));
    assert_eq!(code("/err"), Some(500));
    assert!(spans.iter().all(|s| resource_str(s, "service.name") == Some("nginx")));
    assert!(k.stop());
}

#[test]
fn nginx_with_sendfile_bodies_keep_every_request_on_a_keepalive_connection() {
    // The body bytes leave through sendfile, not write: kspan must count
    // them, or the response never ends and later requests are lost.
    let ng = nginx_sendfile();
    let k = Kspan::start(&["--pid", &ng.pid().to_string()]);
    let paths = ["/index.html", "/big.bin", "/api/items.json", "/big.bin", "/nope"];
    let times = curl_keepalive(ng.port, &paths);
    let spans = k.wait_spans(5, WAIT, |s| kind(s) == "server");
    assert_eq!(spans.len(), 5, "{spans:#?}");
    for (i, p) in paths.iter().enumerate() {
        let s = &spans[i];
        assert_eq!(attr_str(s, "url.path"), Some(*p), "in order: {spans:#?}");
        let (status, size) = match *p {
            "/big.bin" => (200, 1 << 20),
            "/nope" => (404, -1),
            _ => (200, -1),
        };
        assert_eq!(attr_i64(s, "http.response.status_code"), Some(status));
        if size > 0 {
            assert_eq!(attr_i64(s, "http.response.body.size"), Some(size), "{s:#}");
        }
        assert!(duration_ns(s) as f64 <= times[i] * 1e9, "{s}: inside what the client measured");
    }
    let m = k.metrics();
    assert_eq!(metric(&m, "kspan_parse_total{protocol=\"http\",kind=\"resyncs\"}"), 0.0, "{m}");
    assert!(k.stop());
}

#[test]
fn spliced_bodies_keep_every_request_on_a_keepalive_connection() {
    // Both ends move bodies with splice(2): the server from a pipe into its
    // socket, the client from its socket into a pipe. kspan sees their
    // length only; without it the responses never end and later requests
    // on the connection are lost.
    let app = python_http("spliced");
    let k = Kspan::start(&["--pid", &app.pid().to_string(), "--exe", r"http_client\.py spliced"]);
    let r = client(&["spliced", &app.port.to_string()]);
    let paths = ["/spliced", "/users/5", "/spliced"];
    let sizes = [3000, 14, 500];
    assert_eq!(r.iter().map(|x| x["status"].as_i64()).collect::<Vec<_>>(), [Some(200); 3], "{r:#?}");
    let servers = k.wait_spans(3, WAIT, server_spans_of(app.pid()));
    let clients = k.wait_spans(3, WAIT, |s| kind(s) == "client");
    for (side, spans) in [("server", &servers), ("client", &clients)] {
        assert_eq!(spans.len(), 3, "{side}: one span per request: {spans:#?}");
        for ((s, p), size) in spans.iter().zip(paths).zip(sizes) {
            assert_eq!(attr_str(s, "url.path"), Some(p), "{side}, in order: {spans:#?}");
            assert_eq!(attr_i64(s, "http.response.status_code"), Some(200), "{side}: {s:#}");
            assert_eq!(attr_i64(s, "http.response.body.size"), Some(size), "{side}: {s:#}");
        }
    }
    for (x, s) in r.iter().zip(&clients) {
        let client_ns = x["end"].as_u64().unwrap() - x["start"].as_u64().unwrap();
        assert!(duration_ns(s) <= client_ns, "{s}: inside what the client measured");
    }
    let m = k.metrics();
    assert_eq!(metric(&m, "kspan_parse_total{protocol=\"http\",kind=\"resyncs\"}"), 0.0, "{m}");
    assert!(k.stop());
}

#[test]
fn a_chunked_body_written_in_pieces_larger_than_the_capture_is_followed_to_its_end() {
    // Five 10,000-byte chunks, one write each, 30 ms apart: each write (and
    // curl's read of it) is over the 4 KiB capture, its middle uncaptured.
    let app = python_http("stream");
    let k = Kspan::start(&["--pid", &app.pid().to_string(), "--exe", "bin/curl$"]);
    let times = curl_keepalive(app.port, &["/stream?chunks=5&bytes=10000&ms=30", "/users/7"]);
    let spans = k.wait_spans(4, WAIT, |s| attr_str(s, "url.path").is_some());
    for side in ["server", "client"] {
        let mine: Vec<_> = spans.iter().filter(|s| kind(s) == side).collect();
        let paths: Vec<_> = mine.iter().map(|s| attr_str(s, "url.path")).collect();
        assert_eq!(paths, [Some("/stream"), Some("/users/7")], "{side}: both requests of the connection");
        let stream = mine[0];
        assert_eq!(attr_i64(stream, "http.response.body.size"), Some(50_000), "{side}: {stream:#}");
        let d = duration_ns(stream);
        assert!(d >= 120_000_000, "{side}: ends at the last chunk, after the four pauses: {d} ns");
        assert!(d as f64 <= times[0] * 1e9, "{side}: inside what curl measured ({} s): {d} ns", times[0]);
    }
    // Parse counters are published once a second: wait for these exchanges.
    let exchanges = "kspan_parse_total{protocol=\"http\",kind=\"exchanges\"}";
    let t = std::time::Instant::now();
    let mut m = k.metrics();
    while metric(&m, exchanges) < 4.0 && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(200));
        m = k.metrics();
    }
    assert!(metric(&m, exchanges) >= 4.0, "{m}");
    assert_eq!(metric(&m, "kspan_parse_total{protocol=\"http\",kind=\"truncated\"}"), 0.0, "{m}");
    assert_eq!(metric(&m, "kspan_parse_total{protocol=\"http\",kind=\"resyncs\"}"), 0.0, "{m}");
    assert!(k.stop());
}

#[test]
fn peeked_bytes_are_read_once() {
    // A receive with MSG_PEEK leaves its bytes for the next one: reported,
    // they would be in the stream twice (`HHTTP/1.1 200`).
    let app = python_http("peeked");
    let k = Kspan::start(&["--exe", r"http_client\.py peeked"]);
    let r = client(&["peeked", &app.port.to_string()]);
    let paths = ["/users/1", "/users/2", "/users/3", "/users/4"];
    assert_eq!(r.iter().map(|x| x["status"].as_i64()).collect::<Vec<_>>(), [Some(200); 4], "{r:#?}");
    let spans = k.wait_spans(4, WAIT, |s| kind(s) == "client");
    assert_eq!(spans.len(), 4, "{spans:#?}");
    for (s, p) in spans.iter().zip(paths) {
        assert_eq!(attr_str(s, "url.path"), Some(p), "in order: {spans:#?}");
        assert_eq!(attr_i64(s, "http.response.status_code"), Some(200), "{s:#}");
    }
    let m = k.metrics();
    for kind in ["resyncs", "malformed"] {
        assert_eq!(metric(&m, &format!("kspan_parse_total{{protocol=\"http\",kind=\"{kind}\"}}")), 0.0, "{m}");
    }
    assert!(k.stop());
}

fn client(args: &[&str]) -> Vec<Value> {
    let out = run_ok(Command::new("python3").arg(apps_dir().join("http_client.py")).args(args));
    serde_json::from_str(out.trim()).expect("client JSON")
}

#[test]
fn request_body_sent_in_several_writes() {
    let app = python_http("pieces");
    let k = Kspan::start(&["--pid", &app.pid().to_string()]);
    let r = client(&["pieces", &app.port.to_string()]);
    assert_eq!(r[0]["status"], 200);
    let spans = k.wait_spans(1, WAIT, server_spans_of(app.pid()));
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let s = &spans[0];
    assert_eq!(attr_str(s, "http.request.method"), Some("POST"));
    assert_eq!(attr_str(s, "http.route"), Some("/upload"));
    assert_eq!(attr_i64(s, "http.response.status_code"), Some(200));
    assert_eq!(attr_i64(s, "http.request.body.size"), Some(3000));
    // The request started with its first byte: the body writes were 3 x 50 ms later.
    assert!(duration_ns(s) >= 100_000_000, "span covers the body writes: {} ns", duration_ns(s));
    let client_ns = r[0]["end"].as_u64().unwrap() - r[0]["start"].as_u64().unwrap();
    assert!(duration_ns(s) <= client_ns);
}

/// tests/apps/http_client.py in `preopened` mode: its first request is
/// answered when this returns, with its local port; a line on its stdin
/// makes the second request on the same connection.
struct Preopened {
    app: Interactive,
    port: u16,
}

impl Preopened {
    fn start(port: u16) -> Self {
        let mut app = Interactive::start("http_client.py", &["preopened", &port.to_string()], &[]);
        let line = app.line();
        let first: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let port = first[0]["local_port"].as_u64().unwrap_or_else(|| panic!("{line}")) as u16;
        Self { app, port }
    }

    /// Makes the second request and waits for the client to exit.
    fn finish(mut self) {
        self.app.go_on();
        let line = self.app.line();
        assert!(line.contains("/users/2"), "{line}");
        assert!(self.app.wait());
    }
}

#[test]
fn sigusr1_pauses_and_resumes_capture_and_sockets_of_the_pause_get_their_own_peer() {
    let app = python_http("pause");
    let k = Kspan::start(&["--pid", &app.pid().to_string()]);
    let attached = k.links();
    assert!(attached > 0, "kspan holds its program links");
    let a = Preopened::start(app.port);
    let first = k.wait_spans(1, WAIT, server_spans_of(app.pid()));
    assert_eq!(attr_i64(&first[0], "client.port"), Some(a.port as i64));

    k.toggle_pause(true);
    assert_eq!(k.links(), 0, "paused: every program is detached");
    // Unseen: A's second request and its close, B's connect and first
    // request (the server likely reuses A's fd for B).
    a.finish();
    std::thread::sleep(Duration::from_millis(300));
    let b = Preopened::start(app.port);
    let b_port = b.port;

    k.toggle_pause(false);
    assert_eq!(k.links(), attached, "resumed: every program is attached again");
    b.finish();
    let spans = k.wait_spans(2, WAIT, server_spans_of(app.pid()));
    std::thread::sleep(Duration::from_millis(500));
    let spans_now = k.spans();
    let all: Vec<&Value> = spans_now.iter().filter(|s| server_spans_of(app.pid())(s)).collect();
    assert_eq!(all.len(), 2, "nothing from the pause: {all:#?}");
    let last = &spans[1];
    assert_eq!(attr_str(last, "url.path"), Some("/users/2"));
    assert_eq!(
        attr_i64(last, "client.port"),
        Some(b_port as i64),
        "the socket accepted during the pause is B's, not A's"
    );
    let m = k.metrics();
    assert!(m.lines().any(|l| l == "kspan_capture_pauses_total 2"), "{m}");
    assert!(m.lines().any(|l| l == "kspan_capture_resume_failures_total 0"), "{m}");
    assert!(k.stop());
}

#[test]
fn connection_opened_before_kspan_started() {
    let app = python_http("preopened");
    let c = Preopened::start(app.port);
    let k = Kspan::start(&["--pid", &app.pid().to_string()]);
    let client_port = c.port;
    c.finish();
    let spans = k.wait_spans(1, WAIT, server_spans_of(app.pid()));
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(attr_str(&spans[0], "url.path"), Some("/users/2"));
    assert_eq!(attr_i64(&spans[0], "http.response.status_code"), Some(200));
    assert_eq!(attr_i64(&spans[0], "server.port"), Some(app.port as i64), "addresses known for pre-existing sockets");
    assert_eq!(attr_i64(&spans[0], "client.port"), Some(client_port as i64));
}

/// Steps the wall clock by `secs` (relative to what it reads, so no time
/// is lost) and steps it back when dropped, also when the test fails.
struct ClockStep(i64);

impl ClockStep {
    fn by(secs: i64) -> Self {
        step_wall_clock(secs);
        Self(secs)
    }
}

impl Drop for ClockStep {
    fn drop(&mut self) {
        step_wall_clock(-self.0);
    }
}

fn step_wall_clock(secs: i64) {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec for both calls.
    let r = unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
        ts.tv_sec += secs as libc::time_t;
        libc::clock_settime(libc::CLOCK_REALTIME, &ts)
    };
    assert_eq!(r, 0, "clock_settime: {}", std::io::Error::last_os_error());
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_nanos() as u64
}

/// The wall clock stepped while kspan runs (NTP's first correction on a
/// host that booted with a wrong time, `date -s`): spans made after the
/// step carry the new wall-clock time, inside what the client measured,
/// and the step is counted. Before, every span kept the offset sampled at
/// start-up for the agent's whole life (here: an hour early).
#[test]
fn span_times_follow_a_stepped_wall_clock() {
    let app = python_http("clockstep");
    let k = Kspan::start(&["--pid", &app.pid().to_string()]);
    curl_keepalive(app.port, &["/users/1"]);
    k.wait_spans(1, WAIT, server_spans_of(app.pid()));
    let step = ClockStep::by(3600);
    // kspan samples the clocks about once a second.
    std::thread::sleep(Duration::from_millis(2500));
    let before = unix_now_ns();
    curl_keepalive(app.port, &["/users/2"]);
    let after = unix_now_ns();
    let spans = k.wait_spans(2, WAIT, server_spans_of(app.pid()));
    let m = k.metrics();
    drop(step);
    let s = spans.iter().find(|s| attr_str(s, "url.path") == Some("/users/2")).expect("span of the second request");
    let (start, end) = (s["start_unix_nanos"].as_u64().expect("start"), s["end_unix_nanos"].as_u64().expect("end"));
    assert!(
        before <= start && end <= after,
        "span {start}..{end} outside the client's {before}..{after} (off by {:.3} s)",
        (start as f64 - before as f64) / 1e9
    );
    assert_eq!(metric(&m, "kspan_clock_steps_total"), 1.0, "{m}");
    assert!(k.stop());
}

#[test]
fn pid_selects_only_that_process() {
    let a = python_http("selected");
    let b = python_http("ignored");
    let k = Kspan::start(&["--pid", &a.pid().to_string()]);
    curl_keepalive(b.port, &["/users/9"]);
    curl_keepalive(a.port, &["/users/1"]);
    curl_keepalive(b.port, &["/users/9"]);
    let spans = k.wait_spans(1, WAIT, |s| kind(s) == "server");
    std::thread::sleep(Duration::from_millis(500));
    let all = k.spans();
    assert!(all.iter().all(|s| s["resource"]["process.pid"].as_i64() == Some(a.pid() as i64)), "{all:#?}");
    assert_eq!(spans.len(), 1);
    assert!(all.iter().all(|s| kind(s) == "server"), "curl is not traced with --pid: {all:#?}");
}

#[test]
fn a_pid_that_names_no_process_is_refused_at_start() {
    // The pid of a process that has ended: kspan must not start and trace
    // nothing (as it did, silently, before).
    let mut done = Command::new("true").spawn().expect("spawn true");
    let pid = done.id().to_string();
    done.wait().expect("wait true");
    let metrics = format!("127.0.0.1:{}", free_port());
    let out = Command::new("timeout")
        .arg("20")
        .arg(kspan_bin())
        .args(["run", "--pid", &pid, "--output", "none", "--metrics-addr", &metrics])
        .output()
        .expect("run kspan");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "kspan exits with an error at once:\n{err}");
    assert!(err.contains(&format!("select.pids (--pid): no process {pid} on this host")), "{err}");
}

#[test]
fn exe_picks_up_a_process_started_later_and_curl_client_spans() {
    let tag = format!("late-{}", free_port());
    let k = Kspan::start(&["--exe", &tag, "--exe", "^/usr/bin/curl$"]);
    let app = python_http(&tag);
    curl_keepalive(app.port, &["/users/5", "/boom"]);
    let spans = k.wait_spans(2, WAIT, server_spans_of(app.pid()));
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let clients = k.wait_spans(2, WAIT, |s| kind(s) == "client");
    assert_eq!(clients.len(), 2, "{clients:#?}");
    for c in &clients {
        assert_eq!(resource_str(c, "process.executable.name"), Some("curl"));
        assert_eq!(attr_i64(c, "server.port"), Some(app.port as i64));
    }
    let boom = clients.iter().find(|c| attr_str(c, "url.path") == Some("/boom")).expect("client /boom");
    assert_eq!(boom["status"]["code"], "error", "a 5xx is an error for the client");
    // Client span contains the server span.
    let server_boom = spans.iter().find(|s| attr_str(s, "url.path") == Some("/boom")).unwrap();
    assert!(duration_ns(server_boom) <= duration_ns(boom));
}

#[test]
fn non_http_bytes_and_huge_headers_are_counted_not_fatal() {
    let app = python_http("garbage");
    let k = Kspan::start(&["--pid", &app.pid().to_string()]);
    client(&["garbage", &app.port.to_string()]);
    // A 64 KiB header block (the server rejects it; kspan must survive and count).
    let big = "a".repeat(64 * 1024);
    let _ = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-H", &format!("X-Big: {big}")])
        .arg(format!("http://127.0.0.1:{}/users/1", app.port))
        .status();
    curl_keepalive(app.port, &["/users/3"]);
    let spans = k.wait_spans(1, WAIT, |s| attr_str(s, "url.path") == Some("/users/3"));
    assert_eq!(attr_i64(&spans[0], "http.response.status_code"), Some(200));
    std::thread::sleep(Duration::from_millis(1500));
    let m = k.metrics();
    let opaque = m.lines().find(|l| l.starts_with("kspan_connections_total{reason=\"opaque\"}")).unwrap_or("");
    let n: f64 = opaque.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    assert!(n >= 1.0, "the garbage connection is counted as opaque:\n{m}");
    assert!(k.stop(), "kspan is still healthy");
}

/// A counter of kspan's /metrics (0 when absent).
fn metric(m: &str, series: &str) -> f64 {
    m.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

#[test]
fn an_opaque_connection_is_muted_in_the_kernel_and_the_process_stays_traced() {
    const ROUND_TRIPS: usize = 1500;
    let app = python_http("opaque");
    let mut client =
        Interactive::start("http_client.py", &["opaque", &app.port.to_string(), &ROUND_TRIPS.to_string()], &[]);
    let pid = serde_json::from_str::<Value>(&client.line()).unwrap()["pid"].as_u64().unwrap();
    let k = Kspan::start(&["--pid", &pid.to_string()]);
    client.go_on();
    let line = client.line();
    assert!(client.wait());
    let got: Vec<Value> = serde_json::from_str(line.trim()).expect("client JSON");
    assert_eq!(got[0]["status"], 200);

    // The GET after the opaque connection closed (on a new socket, likely
    // its fd) is still traced.
    let spans = k.wait_spans(1, WAIT, |s| kind(s) == "client" && attr_str(s, "url.path") == Some("/users/9"));
    assert_eq!(attr_i64(&spans[0], "http.response.status_code"), Some(200));
    std::thread::sleep(Duration::from_millis(1500));
    let m = k.metrics();
    // Both ends of the echo connection are this process's sockets.
    assert_eq!(metric(&m, "kspan_connections_total{reason=\"opaque\"}"), 2.0, "{m}");
    assert_eq!(metric(&m, "kspan_connections_total{reason=\"muted\"}"), 2.0, "{m}");
    // Unmuted, every send and receive of both ends is a ring buffer record
    // (4 per round trip); muted, only what came before the agent's verdict
    // (the client pauses after 10 round trips: a drain cycle's worth).
    let read = metric(&m, "kspan_events_read_total");
    assert!(read < (ROUND_TRIPS / 4) as f64, "{read} records read for {ROUND_TRIPS} round trips:\n{m}");
    // Closes are still reported: the muted connections are forgotten.
    assert_eq!(metric(&m, "kspan_open_connections"), 0.0, "{m}");
    assert!(k.stop());
}

#[test]
fn unix_domain_socket_server_and_client_spans() {
    let dir = TempDir::new("unix");
    let sock = dir.0.join("app.sock");
    let path = sock.to_str().unwrap();
    let app = python_http_unix(&sock, "unix");
    let k = Kspan::start(&["--pid", &app.pid().to_string(), "--exe", "bin/curl$"]);
    let out = run_ok(
        Command::new("curl").args(["-s", "--unix-socket", path, "-w", "%{http_code}\n", "-o", "/dev/null"]).args([
            "http://app/users/5",
            "-o",
            "/dev/null",
            "http://app/missing",
        ]),
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), ["200", "404"]);
    let spans = k.wait_spans(4, WAIT, |s| attr_str(s, "http.request.method") == Some("GET"));
    for (role, route, status) in [
        ("server", "/users/{id}", 200),
        ("client", "/users/{id}", 200),
        ("server", "/missing", 404),
        ("client", "/missing", 404),
    ] {
        let s = spans
            .iter()
            .find(|s| kind(s) == role && attr_str(s, "http.route") == Some(route))
            .unwrap_or_else(|| panic!("{role} span of {route}: {spans:#?}"));
        assert_eq!(attr_i64(s, "http.response.status_code"), Some(status));
        assert_eq!(attr_str(s, "network.transport"), Some("unix"), "{s:#}");
        // The Host header names the server; the socket is the connection's address.
        assert_eq!(attr_str(s, "server.address"), Some("app"), "{s:#}");
        let own = if role == "server" { "network.local.address" } else { "network.peer.address" };
        assert_eq!(attr_str(s, own), Some(path), "{s:#}");
        assert!(attr(s, "server.port").is_none(), "a Unix domain socket has no port: {s:#}");
    }
    let client = spans.iter().find(|s| kind(s) == "client" && attr_str(s, "url.path") == Some("/users/5")).unwrap();
    assert_eq!(attr_str(client, "url.full"), Some("http://app/users/5"));
    // Both ends are traced: the server span is the child of curl's, paired
    // by the kernel's socket ids of the two ends.
    let server = spans.iter().find(|s| kind(s) == "server" && attr_str(s, "url.path") == Some("/users/5")).unwrap();
    assert_eq!(server["trace_id"], client["trace_id"], "{server:#}\n{client:#}");
    assert_eq!(server["parent_span_id"], client["span_id"]);
    assert!(k.stop());
}

#[test]
fn vectored_sends_and_receives_are_one_stream() {
    let k = vectored(&[]);
    assert!(!k.log().contains("capture.bpf_loop is off"));
    assert!(k.stop());
}

#[test]
fn vectored_calls_without_bpf_loop_use_the_compat_program() {
    let (_dir, conf) = kspan_e2e::config_file("no-bpf-loop", "capture:\n  bpf_loop: false\n");
    let k = vectored(&["--config", &conf]);
    assert!(k.log().contains("capture.bpf_loop is off"), "{}", k.log());
    assert!(k.stop());
}

/// Requests sent and responses read with several buffers per call, traced
/// by a kspan started with `extra` arguments (returned, still running).
fn vectored(extra: &[&str]) -> Kspan {
    let app = python_http("vectored");
    let k = Kspan::start(&[&["--exe", r"http_client\.py vectored"], extra].concat());
    let r = client(&["vectored", &app.port.to_string()]);
    assert_eq!(r.iter().map(|x| x["status"].as_i64()).collect::<Vec<_>>(), [Some(200); 4], "{r:#?}");
    let spans = k.wait_spans(4, WAIT, |s| kind(s) == "client");
    assert_eq!(spans.len(), 4, "one client span per request: {spans:#?}");
    let path = |p: &str| spans.iter().find(|s| attr_str(s, "url.path") == Some(p)).unwrap_or_else(|| panic!("{p}"));
    // A request line split over four buffers of one sendmsg, its response read
    // into three buffers of one recvmsg.
    let first = path("/users/31");
    assert_eq!(attr_str(first, "http.route"), Some("/users/{id}"));
    assert_eq!(attr_i64(first, "http.response.status_code"), Some(200));
    // Twelve buffers: all captured, or with the compat program the first
    // eight, and the length of the rest still counts, so the body is skipped
    // exactly and the next request on the connection is parsed.
    let upload = path("/upload");
    assert_eq!(attr_str(upload, "http.request.method"), Some("POST"));
    assert_eq!(attr_i64(upload, "http.request.body.size"), Some(1100), "{upload:#}");
    assert_eq!(attr_i64(upload, "http.response.status_code"), Some(200));
    // Three chunks of 10,000 bytes, each read with one recvmsg into two
    // buffers: its middle is not captured, its last 256 bytes are (with
    // the compat program too), and they hold the chunk's end and the next
    // chunk's size line or the last chunk, so the body is followed to its end.
    let stream = path("/stream");
    assert_eq!(attr_i64(stream, "http.response.body.size"), Some(30_000), "{stream:#}");
    let d = duration_ns(stream);
    assert!(d >= 60_000_000, "ends at the last chunk, after the two pauses: {d} ns");
    assert_eq!(attr_i64(path("/users/7"), "http.response.status_code"), Some(200));
    for (x, s) in r.iter().zip(["/users/31", "/upload", "/stream", "/users/7"]) {
        let client_ns = x["end"].as_u64().unwrap() - x["start"].as_u64().unwrap();
        assert!(duration_ns(path(s)) <= client_ns, "{s}: inside what the client measured");
    }
    k
}

#[test]
fn attach_only_attaches_every_hook_and_reports_nothing() {
    let ng = nginx();
    let (_dir, conf) = kspan_e2e::config_file("attach-only", "capture:\n  attach_only: true\n");
    let k = Kspan::start(&["--pid", &ng.pid().to_string(), "--config", &conf]);
    curl_keepalive(ng.port, &["/index.html", "/nope"]);
    // Counters are published once a second.
    std::thread::sleep(Duration::from_millis(2500));
    let m = k.metrics();
    let events = m.lines().find(|l| l.starts_with("kspan_events_read_total ")).unwrap_or_else(|| panic!("{m}"));
    assert_eq!(events, "kspan_events_read_total 0", "the programs returned at once");
    assert!(k.spans().is_empty());
    assert!(k.stop());
}

/// Spans sorted by start time: the order the requests were made in.
fn in_start_order(mut spans: Vec<Value>) -> Vec<Value> {
    spans.sort_by_key(|s| s["start_unix_nanos"].as_u64().unwrap_or(0));
    spans
}

/// curl over one plaintext HTTP/2 connection with prior knowledge (no
/// Upgrade); returns (status, local port) per path. Debian 12's curl 7.88.1
/// cannot reuse a prior-knowledge connection for a second URL (the transfer
/// fails with error 16; fixed in curl 8.0), so the URLs after the first go
/// in `--next` parts with `--http2`, which reuse the open HTTP/2 connection
/// as it is (no Upgrade on a reused one).
fn curl_h2c(port: u16, paths: &[&str]) -> Vec<(u16, u16)> {
    let mut cmd = Command::new("curl");
    for (i, p) in paths.iter().enumerate() {
        if i > 0 {
            cmd.arg("--next");
        }
        let version = if i == 0 { "--http2-prior-knowledge" } else { "--http2" };
        cmd.args(["-s", version, "-w", "%{http_code} %{http_version} %{num_connects} %{local_port}\\n"])
            .args(["-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}{p}"));
    }
    let out = run_ok(&mut cmd);
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines.len(), paths.len(), "curl output: {out}");
    assert!(lines.iter().all(|l| l.len() == 4 && l[1] == "2"), "every request over HTTP/2: {out}");
    let connects: u32 = lines.iter().map(|l| l[2].parse::<u32>().unwrap()).sum();
    assert_eq!(connects, 1, "curl must reuse one HTTP/2 connection: {out}");
    lines.iter().map(|l| (l[0].parse().unwrap(), l[3].parse().unwrap())).collect()
}

#[test]
fn http2_prior_knowledge_curl_to_nginx_h2c() {
    let ng = nginx_h2c();
    // nginx runs as master + worker: the worker serves, a child of the master.
    let k = Kspan::start(&["--pid", &ng.pid().to_string(), "--exe", "^/usr/bin/curl$"]);
    let worker = child_pid_of(ng.pid());
    let paths = ["/", "/missing", "/"];
    let got = curl_h2c(ng.port, &paths);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [200, 404, 200]);
    let curl_port = got[0].1;
    assert!(got.iter().all(|g| g.1 == curl_port), "one connection: {got:?}");
    let servers = in_start_order(k.wait_spans(3, WAIT, server_spans_of(worker)));
    assert_eq!(servers.len(), 3, "exactly one server span per request: {servers:#?}");
    let clients =
        in_start_order(k.wait_spans(3, WAIT, |s| {
            kind(s) == "client" && resource_str(s, "process.executable.name") == Some("curl")
        }));
    assert_eq!(clients.len(), 3, "exactly one client span per request: {clients:#?}");
    for (side, spans) in [("server", &servers), ("client", &clients)] {
        for ((s, p), code) in spans.iter().zip(paths).zip([200, 404, 200]) {
            assert_eq!(attr_str(s, "url.path"), Some(p), "{side}, in request order: {spans:#?}");
            assert_eq!(attr_str(s, "http.request.method"), Some("GET"), "{side}: {s:#}");
            assert_eq!(attr_i64(s, "http.response.status_code"), Some(code), "{side}: {s:#}");
            assert_eq!(attr_str(s, "network.protocol.version"), Some("2"), "{side}: {s:#}");
            assert_eq!(attr_str(s, "url.scheme"), Some("http"), "{side}: {s:#}");
            assert_eq!(attr_str(s, "http.route"), Some(p), "{side}: {s:#}");
            assert_eq!(s["name"].as_str(), Some(format!("GET {p}").as_str()), "{side}: {s:#}");
            assert_eq!(attr_i64(s, "server.port"), Some(ng.port as i64), "{side}: {s:#}");
        }
    }
    assert!(servers.iter().all(|s| resource_str(s, "process.executable.name") == Some("nginx")), "{servers:#?}");
    assert!(servers.iter().all(|s| attr_i64(s, "client.port") == Some(curl_port as i64)), "{servers:#?}");
    assert!(clients.iter().all(|c| attr_i64(c, "network.local.port") == Some(curl_port as i64)), "{clients:#?}");
    // A 404 is an error for the client, not for the server.
    let codes = |spans: &[Value]| spans.iter().map(|s| s["status"]["code"].clone()).collect::<Vec<_>>();
    assert_eq!(codes(&clients), ["unset", "error", "unset"], "{clients:#?}");
    assert_eq!(codes(&servers), ["unset", "unset", "unset"], "{servers:#?}");
    assert_eq!(attr_str(&clients[1], "url.full"), Some(format!("http://127.0.0.1:{}/missing", ng.port).as_str()));
    // Both ends are traced: each nginx span is the child of curl's span of
    // the same request (the same stream of the one connection).
    for (server, client) in servers.iter().zip(&clients) {
        assert_eq!(server["trace_id"], client["trace_id"], "{server:#}\n{client:#}");
        assert_eq!(server["parent_span_id"], client["span_id"], "{server:#}\n{client:#}");
    }
    assert!(k.stop());
}

#[test]
fn grpc_unary_calls_client_and_server_spans() {
    let srv = grpc_server();
    let tag = format!("grpc-{}", free_port());
    let k = Kspan::start(&["--pid", &srv.pid().to_string(), "--exe", &format!(r"grpc_app\.py client .*{tag}")]);
    let out = run_ok(Command::new("python3").arg(apps_dir().join("grpc_app.py")).args([
        "client",
        &srv.port.to_string(),
        "3",
        &tag,
    ]));
    assert!(out.contains("Fail NOT_FOUND 'no such thing'"), "{out}");
    let servers = in_start_order(k.wait_spans(4, WAIT, server_spans_of(srv.pid())));
    assert_eq!(servers.len(), 4, "exactly one server span per call: {servers:#?}");
    let clients = in_start_order(k.wait_spans(4, WAIT, |s| kind(s) == "client"));
    assert_eq!(clients.len(), 4, "exactly one client span per call: {clients:#?}");
    let calls = [("Say", 0), ("Say", 0), ("Say", 0), ("Fail", 5)];
    for (side, spans) in [("server", &servers), ("client", &clients)] {
        for (s, (method, code)) in spans.iter().zip(calls) {
            assert_eq!(s["name"].as_str(), Some(format!("kspan.test.Echo/{method}").as_str()), "{side}: {spans:#?}");
            assert_eq!(attr_str(s, "rpc.system"), Some("grpc"), "{side}: {s:#}");
            assert_eq!(attr_str(s, "rpc.service"), Some("kspan.test.Echo"), "{side}: {s:#}");
            assert_eq!(attr_str(s, "rpc.method"), Some(method), "{side}: {s:#}");
            assert_eq!(attr_i64(s, "rpc.grpc.status_code"), Some(code), "{side}: {s:#}");
            assert_eq!(attr_str(s, "network.protocol.version"), Some("2"), "{side}: {s:#}");
            assert_eq!(attr_i64(s, "server.port"), Some(srv.port as i64), "{side}: {s:#}");
        }
    }
    assert!(
        clients.iter().all(|c| resource_str(c, "process.executable.name").is_some_and(|e| e.starts_with("python"))),
        "{clients:#?}"
    );
    // One channel, one connection.
    let port = attr_i64(&clients[0], "network.local.port");
    assert!(port.is_some() && clients.iter().all(|c| attr_i64(c, "network.local.port") == port), "{clients:#?}");
    // NOT_FOUND is an error for the client; for the server only codes that
    // mean it failed (UNKNOWN, INTERNAL, UNAVAILABLE...) are.
    let codes = |spans: &[Value]| spans.iter().map(|s| s["status"]["code"].clone()).collect::<Vec<_>>();
    assert_eq!(codes(&clients), ["unset", "unset", "unset", "error"], "{clients:#?}");
    assert_eq!(codes(&servers), ["unset"; 4], "{servers:#?}");
    assert!(k.stop());
}

#[test]
fn grpc_messages_larger_than_the_capture_keep_their_calls() {
    // 10 KB messages: grpcio sends each call's frames with one sendmsg of
    // several iovecs, larger than the 4 KiB capture; the call's trailers
    // (or its END_STREAM) are in the last bytes, copied past the gap.
    let srv = grpc_server();
    let tag = format!("grpc-big-{}", free_port());
    let k = Kspan::start(&["--pid", &srv.pid().to_string(), "--exe", &format!(r"grpc_app\.py client .*{tag}")]);
    let out = run_ok(
        Command::new("python3")
            .arg(apps_dir().join("grpc_app.py"))
            .args(["client", &srv.port.to_string(), "5", &tag])
            .env("KSPAN_MSG_BYTES", "10000"),
    );
    assert!(out.contains("Fail NOT_FOUND 'no such thing'"), "{out}");
    for side in ["server", "client"] {
        let spans = in_start_order(k.wait_spans(6, WAIT, |s| kind(s) == side && attr_str(s, "rpc.system").is_some()));
        assert_eq!(spans.len(), 6, "{side}: one span per call: {spans:#?}");
        let codes: Vec<_> = spans.iter().map(|s| attr_i64(s, "rpc.grpc.status_code")).collect();
        assert_eq!(codes, [Some(0), Some(0), Some(0), Some(0), Some(0), Some(5)], "{side}");
        for s in &spans[..5] {
            assert_eq!(attr_i64(s, "http.request.body.size"), Some(10_005), "{side}: {s:#}");
            assert_eq!(attr_i64(s, "http.response.body.size"), Some(10_005), "{side}: {s:#}");
        }
    }
    let m = k.metrics();
    assert_eq!(metric(&m, "kspan_parse_total{protocol=\"http2\",kind=\"dropped_requests\"}"), 0.0, "{m}");
    assert!(k.stop());
}

/// A gRPC channel opened before kspan started (an agent restarted under
/// long-lived connections): its HTTP/2 connection is taken up mid-stream
/// at its next call, on both ends. HPACK fields the peers indexed before
/// the join are unknown, never guessed: the `Say` calls, whose `:path` was
/// indexed by the warm-up calls, are spans named by their method alone,
/// without a path; `Fail`, called for the first time after the join, has
/// its path. Every call after the join has its span, and each server span
/// is linked to its client span.
#[test]
fn grpc_connection_opened_before_kspan_is_followed_from_its_next_call() {
    let srv = grpc_server();
    let mut client = Interactive::start("grpc_app.py", &["joined", &srv.port.to_string(), "3"], &[]);
    assert_eq!(client.line().trim(), "warm");
    let cpid = client.child.id();
    let k = Kspan::start(&["--pid", &srv.pid().to_string(), "--pid", &cpid.to_string()]);
    client.go_on();
    let mut out = String::new();
    loop {
        let line = client.line();
        if line.is_empty() {
            break;
        }
        out.push_str(&line);
    }
    assert!(client.wait(), "{out}");
    assert!(out.contains("Fail NOT_FOUND 'no such thing'"), "{out}");
    let measured: Vec<u64> = out
        .lines()
        .filter(|l| l.starts_with("Say "))
        .map(|l| l.rsplit(' ').next().and_then(|n| n.parse().ok()).expect("duration"))
        .collect();
    let servers = in_start_order(k.wait_spans(4, WAIT, server_spans_of(srv.pid())));
    let clients =
        in_start_order(k.wait_spans(4, WAIT, |s| {
            kind(s) == "client" && s["resource"]["process.pid"].as_i64() == Some(cpid as i64)
        }));
    assert_eq!((servers.len(), clients.len()), (4, 4), "one span per call after the join: {servers:#?} {clients:#?}");
    for (side, spans) in [("server", &servers), ("client", &clients)] {
        for (i, s) in spans.iter().enumerate() {
            assert_eq!(attr_str(s, "http.request.method"), Some("POST"), "{side}: {s:#}");
            assert_eq!(attr_i64(s, "http.response.status_code"), Some(200), "{side}: {s:#}");
            assert_eq!(attr_str(s, "network.protocol.version"), Some("2"), "{side}: {s:#}");
            assert_eq!(attr_i64(s, "server.port"), Some(srv.port as i64), "{side}: {s:#}");
            let (name, path) =
                if i < 3 { ("POST", None) } else { ("POST /kspan.test.Echo/Fail", Some("/kspan.test.Echo/Fail")) };
            assert_eq!(s["name"].as_str(), Some(name), "{side}: {s:#}");
            assert_eq!(attr_str(s, "url.path"), path, "{side}: {s:#}");
        }
        for (s, m) in spans.iter().zip(&measured) {
            assert!(duration_ns(s) <= *m, "{side}: {} ns, the client measured {m} ns: {s:#}", duration_ns(s));
        }
    }
    for (s, c) in servers.iter().zip(&clients) {
        assert_eq!(s["parent_span_id"], c["span_id"], "{s:#}\n{c:#}");
    }
    // Both ends: the client's and the server's socket.
    k.wait_metric("kspan_connections_total{reason=\"http2_joined\"} 2");
    assert!(k.stop());
}
