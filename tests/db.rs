//! End-to-end: PostgreSQL 15 and Redis 7 (real servers on free, non-default
//! ports, so detection is by content) driven by psql, pgbench, psycopg,
//! asyncpg, redis-cli, redis-benchmark and redis-py, traced by the real kspan.

use std::process::{Command, Stdio};
use std::time::Duration;

use kspan_e2e::servers::{child_pid_of, postgres, redis, redis_unix};
use kspan_e2e::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn is_pg(s: &Value) -> bool {
    attr_str(s, "db.system.name") == Some("postgresql")
}

fn is_redis(s: &Value) -> bool {
    attr_str(s, "db.system.name") == Some("redis")
}

fn exe(s: &Value) -> &str {
    resource_str(s, "process.executable.name").unwrap_or("")
}

fn psql(port: u16, sql: &str) -> std::process::ExitStatus {
    Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "kspan", "-qc", sql])
        .env("PGSSLMODE", "disable")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("psql")
}

#[test]
fn psql_queries_errors_and_server_side_spans() {
    let pg = postgres();
    let postmaster = child_pid_of(pg.pid());
    let k = Kspan::start(&["--exe", "bin/psql$", "--pid", &postmaster.to_string()]);
    assert!(psql(pg.port, "CREATE TABLE users (id int primary key, email text)").success());
    assert!(psql(pg.port, "INSERT INTO users VALUES (1, 'secret@example.com')").success());
    assert!(psql(pg.port, "SELECT email FROM users WHERE id = 1 AND email = 'secret@example.com'").success());
    assert!(!psql(pg.port, "SELEC oops").success());
    assert!(!psql(pg.port, "INSERT INTO users VALUES (1, 'dup@example.com')").success());

    let want = |s: &Value, op: &str| is_pg(s) && kind(s) == "client" && attr_str(s, "db.operation.name") == Some(op);
    let inserts = k.wait_spans(2, WAIT, |s| want(s, "INSERT") && exe(s) == "psql");
    let select = k.wait_spans(1, WAIT, |s| want(s, "SELECT") && attr_str(s, "db.collection.name") == Some("users"));
    let ok_insert = inserts.iter().find(|s| s["status"]["code"] != "error").expect("successful insert");
    assert_eq!(attr_str(ok_insert, "db.collection.name"), Some("users"));
    assert_eq!(attr_str(ok_insert, "db.namespace"), Some("kspan"));
    assert_eq!(ok_insert["name"], "INSERT users");
    let text = attr_str(ok_insert, "db.query.text").unwrap();
    assert!(text.contains('?') && !text.contains("secret"), "literals are masked: {text}");
    assert!(!attr_str(&select[0], "db.query.text").unwrap().contains("secret"));
    assert_eq!(attr_i64(&select[0], "db.response.returned_rows"), Some(1));
    assert_eq!(attr_i64(&select[0], "server.port"), Some(pg.port as i64));

    let dup = inserts.iter().find(|s| s["status"]["code"] == "error").expect("unique violation span");
    assert_eq!(attr_str(dup, "db.response.status_code"), Some("23505"));
    let syntax = k.wait_spans(1, WAIT, |s| is_pg(s) && attr_str(s, "db.response.status_code") == Some("42601"));
    assert_eq!(syntax[0]["status"]["code"], "error");
    // The backend (forked by the postmaster, selected by --pid) reports the same queries as SERVER spans.
    let server = k
        .wait_spans(2, WAIT, |s| is_pg(s) && kind(s) == "server" && attr_str(s, "db.operation.name") == Some("INSERT"));
    assert!(server.iter().all(|s| exe(s) == "postgres"), "{server:#?}");
    assert!(k.stop());
}

#[test]
fn unix_domain_sockets_psql_and_redis_cli() {
    let pg = postgres();
    let r = redis_unix();
    let pg_dir = pg.dir().expect("socket directory").to_path_buf();
    let pg_sock = pg_dir.join(format!(".s.PGSQL.{}", pg.port));
    let redis_sock = r.dir().unwrap().join("redis.sock");
    let postmaster = child_pid_of(pg.pid());
    let k = Kspan::start(&["--exe", "bin/psql$", "--pid", &postmaster.to_string(), "--pid", &r.pid().to_string()]);
    // psql -h DIR: the socket DIR/.s.PGSQL.PORT.
    let st = Command::new("psql")
        .args(["-h", pg_dir.to_str().unwrap(), "-p", &pg.port.to_string(), "-U", "postgres", "-d", "kspan"])
        .args(["-qc", "SELECT 1 WHERE 'secret' = 'x'"])
        .stdout(Stdio::null())
        .status()
        .expect("psql");
    assert!(st.success());
    let out = run_ok(Command::new("redis-cli").arg("-s").arg(&redis_sock).args(["SET", "user:7", "hidden"]));
    assert_eq!(out.trim(), "OK");

    let pg_spans = k.wait_spans(2, WAIT, |s| is_pg(s) && attr_str(s, "db.operation.name") == Some("SELECT"));
    let pg_path = pg_sock.to_str().unwrap();
    for role in ["client", "server"] {
        let s = pg_spans.iter().find(|s| kind(s) == role).unwrap_or_else(|| panic!("{role}: {pg_spans:#?}"));
        assert_eq!(attr_str(s, "network.transport"), Some("unix"), "{s:#}");
        assert_eq!(attr_str(s, "server.address"), Some(pg_path), "{s:#}");
        assert_eq!(attr_str(s, "db.namespace"), Some("kspan"));
        assert_eq!(attr_str(s, "db.query.text"), Some("SELECT ? WHERE ? = ?"), "{s:#}");
        assert!(attr(s, "server.port").is_none());
    }
    // psql and its backend are the two ends of one socket: one trace.
    let client = pg_spans.iter().find(|s| kind(s) == "client").unwrap();
    let server = pg_spans.iter().find(|s| kind(s) == "server").unwrap();
    assert_eq!(server["parent_span_id"], client["span_id"], "{server:#}\n{client:#}");
    assert_eq!(server["trace_id"], client["trace_id"]);
    let set = k.wait_spans(1, WAIT, |s| is_redis(s) && attr_str(s, "db.operation.name") == Some("SET"));
    assert_eq!(kind(&set[0]), "server");
    assert_eq!(attr_str(&set[0], "network.transport"), Some("unix"));
    assert_eq!(attr_str(&set[0], "server.address"), redis_sock.to_str());
    assert_eq!(attr_str(&set[0], "network.local.address"), redis_sock.to_str());
    assert_eq!(attr_str(&set[0], "db.query.text"), Some("SET user:7"));
    // Debian's redis-server is a link to redis-check-rdb: named as started.
    assert_eq!(resource_str(&set[0], "service.name"), Some("redis-server"));
    assert!(k.stop());
}

fn pgbench(port: u16, args: &[&str]) {
    run_ok(
        Command::new("pgbench")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(args)
            .arg("kspan")
            .env("PGSSLMODE", "disable"),
    );
}

#[test]
fn pgbench_simple_extended_and_prepared() {
    let pg = postgres();
    pgbench(pg.port, &["-i", "-s", "1", "-q"]);
    let k = Kspan::start(&["--exe", "bin/pgbench$"]);
    for (mode, n) in [("simple", 30), ("extended", 30), ("prepared", 30)] {
        let before = k.spans().len();
        pgbench(pg.port, &["-M", mode, "-S", "-c", "2", "-t", &(n / 2).to_string(), "-n"]);
        let selects = |s: &Value| {
            is_pg(s)
                && attr_str(s, "db.operation.name") == Some("SELECT")
                && attr_str(s, "db.collection.name") == Some("pgbench_accounts")
        };
        let t = std::time::Instant::now();
        loop {
            let got = k.spans()[before..].iter().filter(|s| selects(s)).count();
            if got >= n || t.elapsed() > WAIT {
                std::thread::sleep(Duration::from_millis(500));
                let spans: Vec<Value> = k.spans()[before..].iter().filter(|s| selects(s)).cloned().collect();
                assert_eq!(spans.len(), n, "-M {mode}: one span per SELECT");
                for s in &spans {
                    let text = attr_str(s, "db.query.text").unwrap_or("");
                    assert!(text.starts_with("SELECT abalance FROM pgbench_accounts WHERE aid = "), "{mode}: {text}");
                    assert!(
                        !text.chars().any(|c| c.is_ascii_digit()) || text.contains('$'),
                        "{mode}: no literal ids: {text}"
                    );
                    assert_eq!(s["name"], "SELECT pgbench_accounts");
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(k.stop());
}

#[test]
fn psycopg_extended_protocol() {
    let pg = postgres();
    let k = Kspan::start(&["--exe", "pg_app\\.py"]);
    let out = run_ok(Command::new("python3").arg(apps_dir().join("pg_app.py")).arg(pg.port.to_string()));
    assert!(out.contains("done"));
    let inserts = k.wait_spans(5, WAIT, |s| is_pg(s) && attr_str(s, "db.operation.name") == Some("INSERT"));
    assert_eq!(inserts.len(), 5);
    for s in &inserts {
        let text = attr_str(s, "db.query.text").unwrap();
        assert_eq!(text, "INSERT INTO orders (id, customer, total) VALUES ($1, $2, $3)");
        assert_eq!(attr_str(s, "db.collection.name"), Some("orders"));
    }
    let sel = k.wait_spans(1, WAIT, |s| is_pg(s) && attr_str(s, "db.operation.name") == Some("SELECT"));
    assert_eq!(attr_i64(&sel[0], "db.response.returned_rows"), Some(1));
    assert!(k.spans().iter().all(|s| !s.to_string().contains("alice@example.com")), "bound values never exported");
}

/// asyncpg speaks the extended protocol with its own code (no libpq):
/// executemany pipelines its Bind/Execute pairs under one Sync, and a cursor
/// fetches with a row limit, the server stopping with PortalSuspended.
#[test]
fn asyncpg_pipelines_and_cursor_portals() {
    let pg = postgres();
    let k = Kspan::start(&["--exe", "asyncpg_app\\.py"]);
    let out = run_ok(Command::new("python3").arg(apps_dir().join("asyncpg_app.py")).arg(pg.port.to_string()));
    let run: Value = serde_json::from_str(out.trim()).expect("asyncpg_app JSON");
    assert_eq!(run["inserted"], 50, "{run}");
    assert_eq!(run["cursor_rows"], 50, "{run}");
    assert_eq!(run["error"], "23505", "{run}");
    let text = |s: &Value| attr_str(s, "db.query.text").unwrap_or("").to_owned();
    let inserts = k.wait_spans(50, WAIT, |s| is_pg(s) && text(s) == "INSERT INTO apg VALUES ($1, $2)");
    assert_eq!(inserts.len(), 50, "one span per pipelined INSERT: {inserts:#?}");
    for s in &inserts {
        assert_eq!(attr_i64(s, "db.response.returned_rows"), Some(1), "{s:#}");
        assert_ne!(s["status"]["code"], "error", "{s:#}");
    }
    let mut fetches = k.wait_spans(3, WAIT, |s| is_pg(s) && text(s) == "SELECT id FROM apg ORDER BY id");
    fetches.sort_by_key(|s| s["start_unix_nanos"].as_u64());
    let rows: Vec<_> = fetches.iter().map(|s| attr_i64(s, "db.response.returned_rows")).collect();
    assert_eq!(rows, [Some(20), Some(20), Some(10)], "a span per fetch of the portal: {fetches:#?}");
    let prepared = k.wait_spans(3, WAIT, |s| is_pg(s) && text(s) == "SELECT email FROM apg WHERE id = $1");
    assert_eq!(prepared.len(), 3, "{prepared:#?}");
    assert!(prepared.iter().all(|s| attr_i64(s, "db.response.returned_rows") == Some(1)), "{prepared:#?}");
    let failed = k.wait_spans(1, WAIT, |s| is_pg(s) && attr_str(s, "db.response.status_code") == Some("23505"));
    assert_eq!(failed[0]["status"]["code"], "error", "{:#}", failed[0]);
    assert_eq!(attr_str(&failed[0], "db.operation.name"), Some("INSERT"));
    assert!(k.spans().iter().all(|s| !s.to_string().contains("secret.example")), "no bound value or literal exported");
    assert!(k.stop());
}

fn redis_cli(port: u16, input: &str) -> String {
    use std::io::Write;
    let mut c = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn redis_cli_commands_errors_and_transactions() {
    let r = redis();
    let k = Kspan::start(&["--exe", "redis-cli$"]);
    redis_cli(
        r.port,
        "SET user:42 supersecretvalue\nGET user:42\nLPUSH user:42 x\nMULTI\nINCR counter\nSET k2 v2\nEXEC\n",
    );
    let spans = k.wait_spans(7, WAIT, |s| is_redis(s) && kind(s) == "client");
    let ops: Vec<&str> = spans.iter().filter_map(|s| attr_str(s, "db.operation.name")).collect();
    for op in ["SET", "GET", "LPUSH", "MULTI", "INCR", "EXEC"] {
        assert!(ops.contains(&op), "{op} in {ops:?}");
    }
    let set =
        spans.iter().find(|s| attr_str(s, "db.query.text") == Some("SET user:42")).expect("SET span with key only");
    assert_eq!(set["status"]["code"], "unset");
    assert!(spans.iter().all(|s| !s.to_string().contains("supersecretvalue")), "values are never exported");
    let wrong = spans.iter().find(|s| attr_str(s, "db.operation.name") == Some("LPUSH")).unwrap();
    assert_eq!(wrong["status"]["code"], "error");
    assert_eq!(attr_str(wrong, "db.response.status_code"), Some("WRONGTYPE"));
    assert!(spans.iter().all(|s| attr_i64(s, "server.port") == Some(r.port as i64)));
    assert!(k.stop());
}

/// redis-py, RESP2 and RESP3: a transaction and a plain pipeline (one write
/// each), an error, and Pub/Sub (messages, RESP3 pushes, a PING answered in
/// subscribe mode) on a connection of its own.
#[test]
fn redis_py_transactions_pipelines_and_pub_sub_in_resp2_and_resp3() {
    let r = redis();
    let k = Kspan::start(&["--exe", "redis_py_app\\.py"]);
    let out = run_ok(Command::new("python3").arg(apps_dir().join("redis_py_app.py")).arg(r.port.to_string()));
    for line in out.lines() {
        let run: Value = serde_json::from_str(line).expect("redis_py_app JSON");
        assert_eq!((&run["tx"][0], &run["tx"][2]), (&Value::Bool(true), &Value::from("secret-value-1")), "{run}");
        assert_eq!((&run["wrongtype"], &run["messages"], &run["pong"]), (&"WRONGTYPE".into(), &3.into(), &true.into()));
    }
    let text = |s: &Value| attr_str(s, "db.query.text").unwrap_or("").to_owned();
    let client = |s: &Value| is_redis(s) && kind(s) == "client";
    for p in ["p2", "p3"] {
        let bulk = k.wait_spans(20, WAIT, |s| client(s) && text(s).starts_with(&format!("SET {p}:bulk")));
        assert_eq!(bulk.len(), 20, "{p}: a span per pipelined SET");
        // MULTI, the three queued commands, EXEC; the queued ones say so.
        let tx = k.wait_spans(3, WAIT, |s| {
            client(s)
                && attr(s, "db.redis.transaction") == Some(&Value::Bool(true))
                && text(s).contains(&format!(" {p}:"))
        });
        let mut queued: Vec<_> = tx.iter().map(text).collect();
        queued.sort();
        assert_eq!(queued, [format!("GET {p}:k"), format!("INCRBY {p}:n"), format!("SET {p}:k")]);
        let wrong = k.wait_spans(1, WAIT, |s| client(s) && text(s) == format!("LPUSH {p}:k"));
        assert_eq!(
            (wrong[0]["status"]["code"].as_str(), attr_str(&wrong[0], "db.response.status_code")),
            (Some("error"), Some("WRONGTYPE"))
        );
        // After the transaction and the pipeline, the connection still pairs.
        let last = k.wait_spans(2, WAIT, |s| client(s) && text(s) == format!("GET {p}:k"));
        assert_eq!(last.len(), 2, "{p}: the GET in the transaction and the one after it");
    }
    let count = |op: &str, n: usize| {
        let spans = k.wait_spans(n, WAIT, |s| client(s) && attr_str(s, "db.operation.name") == Some(op));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            k.spans().iter().filter(|s| client(s) && attr_str(s, "db.operation.name") == Some(op)).count(),
            n,
            "{op}: {spans:#?}"
        );
    };
    // Per protocol: one MULTI/EXEC, one SUBSCRIBE (ended by its
    // confirmation), three PUBLISHes, one PING in subscribe mode; the
    // messages themselves are not replies and make no span.
    for (op, n) in [("MULTI", 2), ("EXEC", 2), ("SUBSCRIBE", 2), ("PUBLISH", 6), ("PING", 2)] {
        count(op, n);
    }
    assert!(k.spans().iter().all(|s| !s.to_string().contains("secret-value")), "values are never exported");
    assert!(k.stop());
}

/// 16 SETs of 1,000-byte values per write (16.7 KB): the capture (4 KiB
/// and the last 256 bytes) shows the first three whole and the fourth's
/// name; their replies come first, so they pair, and the twelve behind
/// them, never seen, pair with nothing. Before, the lost commands made the
/// parser drop the four as well: no SET had a span.
#[test]
fn pipelined_values_larger_than_the_capture_keep_the_commands_it_shows() {
    let r = redis();
    let k = Kspan::start(&["--exe", "redis-benchmark$"]);
    let port = r.port.to_string();
    let args = ["-p", &port, "-P", "16", "-d", "1000", "-n", "320", "-c", "1", "-t", "set", "-q"];
    run_ok(Command::new("redis-benchmark").args(args));
    let set = |s: &Value| is_redis(s) && kind(s) == "client" && attr_str(s, "db.operation.name") == Some("SET");
    let spans = k.wait_spans(80, WAIT, set);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(k.spans().iter().filter(|s| set(s)).count(), 80, "4 SETs of each of the 20 pipelines");
    assert!(spans.iter().all(|s| s["status"]["code"] != "error"), "{spans:#?}");
    assert!(k.stop());
}

#[test]
fn redis_benchmark_pipelines_pair_every_command() {
    let r = redis();
    let k = Kspan::start(&["--exe", "redis-benchmark$"]);
    run_ok(Command::new("redis-benchmark").args([
        "-p",
        &r.port.to_string(),
        "-P",
        "16",
        "-n",
        "2000",
        "-c",
        "4",
        "-t",
        "set,get",
        "-q",
    ]));
    let want = |s: &Value| is_redis(s) && matches!(attr_str(s, "db.operation.name"), Some("SET") | Some("GET"));
    let spans = k.wait_spans(4000, WAIT, want);
    assert_eq!(spans.len(), 4000, "one span per pipelined command");
    assert!(spans.iter().all(|s| s["status"]["code"] != "error"));
    // Parse counters are published once a second: wait for the series.
    let find = |m: &str| {
        m.lines()
            .find(|l| l.contains("protocol=\"redis\"") && l.contains("kind=\"unmatched_responses\""))
            .map(str::to_owned)
    };
    let t = std::time::Instant::now();
    let unmatched = loop {
        match find(&k.metrics()) {
            Some(l) => break l,
            None if t.elapsed() < std::time::Duration::from_secs(5) => {
                std::thread::sleep(std::time::Duration::from_millis(200))
            }
            None => break String::new(),
        }
    };
    assert!(unmatched.ends_with(" 0"), "no mis-pairing: {unmatched}");
    assert!(k.stop());
}

/// The value of `kspan_parse_total{protocol="postgresql",kind=...}` once
/// published (0 while absent: a counter is published from its first count).
fn pg_parse_count(k: &Kspan, kind: &str) -> u64 {
    let needle = format!("kspan_parse_total{{protocol=\"postgresql\",kind=\"{kind}\"}} ");
    k.metrics().lines().find_map(|l| l.strip_prefix(&needle)?.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn results_and_copies_larger_than_the_capture_keep_their_counts() {
    let pg = postgres();
    let postmaster = child_pid_of(pg.pid());
    let k = Kspan::start(&[
        "--exe",
        "bin/psql$",
        "--exe",
        "bin/pgbench$",
        "--exe",
        "python3",
        "--pid",
        &postmaster.to_string(),
    ]);
    // COPY FROM STDIN of 100,000 rows in writes far larger than the capture.
    pgbench(pg.port, &["-i", "-s", "1", "-q"]);
    // Each response is 100-300 KB, written in 8 KiB sends and read in large
    // receives, captured to 4 KiB plus the last 256 bytes of each.
    assert!(psql(pg.port, "SELECT * FROM pgbench_accounts WHERE aid <= 1000").success());
    assert!(psql(pg.port, "COPY (SELECT * FROM pgbench_accounts WHERE aid <= 3000) TO STDOUT").success());
    let script = "import psycopg, sys\n\
                  c = psycopg.connect(f'host=127.0.0.1 port={sys.argv[1]} user=postgres dbname=kspan sslmode=disable')\n\
                  print(len(c.execute('SELECT * FROM pgbench_accounts WHERE aid < %s', (2000,)).fetchall()))\n";
    let out = run_ok(Command::new("python3").args(["-c", script, &pg.port.to_string()]));
    assert_eq!(out.trim(), "1999");

    let accounts = |s: &Value, op: &str, role: &str| {
        is_pg(s)
            && kind(s) == role
            && attr_str(s, "db.operation.name") == Some(op)
            && attr_str(s, "db.query.text").is_some_and(|t| t.contains("pgbench_accounts WHERE aid"))
    };
    for role in ["client", "server"] {
        let selects = k.wait_spans(2, WAIT, |s| accounts(s, "SELECT", role));
        let mut rows: Vec<_> = selects.iter().map(|s| attr_i64(s, "db.response.returned_rows")).collect();
        rows.sort();
        assert_eq!(rows, vec![Some(1000), Some(1999)], "{role}: psql's simple and psycopg's extended SELECT");
        let copy = k.wait_spans(1, WAIT, |s| accounts(s, "COPY", role));
        assert_eq!(attr_i64(&copy[0], "db.response.returned_rows"), Some(3000), "{role}: {:#?}", copy[0]);
        let load = k.wait_spans(1, WAIT, |s| is_pg(s) && kind(s) == role && s["name"] == "COPY pgbench_accounts");
        assert_eq!(attr_i64(&load[0], "db.response.returned_rows"), Some(100_000), "{role}");
    }
    // Valid traffic too large for the capture is not malformed, and no
    // request went without its span.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pg_parse_count(&k, "malformed"), 0);
    assert_eq!(pg_parse_count(&k, "dropped_requests"), 0);
    assert!(pg_parse_count(&k, "truncated") > 0, "the responses were larger than the capture");
    assert!(k.stop());
}
