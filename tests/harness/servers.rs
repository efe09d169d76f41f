//! Real servers for the end-to-end tests, each on a free loopback port and
//! stopped on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{apps_dir, free_port, wait_port};

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub port: u16,
    _dir: Option<TempDir>,
}

impl Proc {
    /// A server child already listening on `port`.
    pub fn from_child(child: Child, port: u16) -> Self {
        Self { child, port, _dir: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's private directory (PostgreSQL's socket directory).
    pub fn dir(&self) -> Option<&Path> {
        self._dir.as_ref().map(|d| d.0.as_path())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signal our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(100));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("kspan-e2e-{tag}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Python threaded HTTP app (`apps/http_app.py PORT TAG`).
pub fn python_http(tag: &str) -> Proc {
    let port = free_port();
    let mut proc = python_http_on(&port.to_string(), tag);
    wait_port(port, Duration::from_secs(10));
    proc.port = port;
    proc
}

/// The Python HTTP app serving on the Unix domain socket `path` (port 0).
pub fn python_http_unix(path: &Path, tag: &str) -> Proc {
    python_http_on(path.to_str().expect("UTF-8 socket path"), tag)
}

/// Starts the Python app on `on` (a port or a socket path) and waits for its
/// ready line.
fn python_http_on(on: &str, tag: &str) -> Proc {
    Proc { child: python_app_ready("http_app.py", &[on, tag]), port: 0, _dir: None }
}

/// Starts `apps/<script>` with `args` and waits for its `ready` line.
fn python_app_ready(script: &str, args: &[&str]) -> Child {
    let mut child = Command::new("python3")
        .arg(apps_dir().join(script))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {script} (`cargo xtask setup` installs what it needs): {e}"));
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("ready line");
    assert_eq!(line.trim(), "ready", "{script} did not start");
    child
}

/// A self-signed certificate and key for `localhost` in `dir` (made with
/// `openssl req`); returns (certificate, key) paths.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl req (apt-get install openssl)");
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
    // PostgreSQL refuses a key readable by others.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    (cert, key)
}

/// The Go HTTPS test app (`apps/go_tls_app.go`: Go's own crypto/tls and
/// net/http), built once per test process with Debian's golang-go into
/// `target/e2e-apps/`, with its symbol table.
pub fn go_tls_app() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| go_build("go_tls_app", &["go_tls_app.go"], &[], false)).clone()
}

/// [`go_tls_app`] built without a symbol table (`-ldflags=-s -w`), as
/// container images usually ship Go programs.
pub fn go_tls_app_stripped() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| go_build("go_tls_app_stripped", &["go_tls_app.go"], &["-ldflags=-s -w"], false)).clone()
}

/// `tests/apps/go_db_app.go`: a Go web service on lib/pq and redigo, built
/// in GOPATH mode against Debian's packaged sources (`cargo xtask setup`
/// installs them).
pub fn go_db_app() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| go_build("go_db_app", &["go_db_app.go", "go_backends.go"], &[], false)).clone()
}

/// [`go_db_app`] built with cgo and C thread-local data
/// (`tests/apps/go_db_app_cgo.go`): the goroutine slot is elsewhere in the
/// thread's TLS block.
pub fn go_db_app_cgo() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| go_build("go_db_app_cgo", &["go_db_app.go", "go_backends.go", "go_db_app_cgo.go"], &[], true))
        .clone()
}

/// `tests/apps/go_grpc_app.go`: a grpc-go service (Debian's
/// golang-google-grpc-dev, GOPATH build) on lib/pq and redigo.
pub fn go_grpc_app() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| go_build("go_grpc_app", &["go_grpc_app.go", "go_backends.go"], &[], false)).clone()
}

fn go_build(name: &str, sources: &[&str], flags: &[&str], cgo: bool) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-apps");
    std::fs::create_dir_all(&dir).expect("target/e2e-apps");
    let (exe, tmp) = (dir.join(name), dir.join(format!("{name}.{}", std::process::id())));
    let out = Command::new("go")
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&tmp)
        .args(sources.iter().map(|s| apps_dir().join(s)))
        .env("CGO_ENABLED", if cgo { "1" } else { "0" })
        .env("GOCACHE", dir.join("go-cache"))
        // Standard library and Debian's golang-*-dev sources only: no module download.
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .output()
        .expect("go build (`cargo xtask setup` installs golang-go)");
    assert!(out.status.success(), "go build: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::rename(&tmp, &exe).expect("rename the Go app");
    exe
}

/// [`go_db_app`] (or [`go_db_app_cgo`]: `exe`) serving HTTP and HTTPS
/// (self-signed certificate), its handlers calling the PostgreSQL at
/// `pg_port` (database `kspan`) and the Redis at `redis_port`. `port` is the
/// HTTP port; the HTTPS ports are returned too: net/http's HTTP/2 server,
/// then golang.org/x/net/http2's.
pub fn go_db_server(exe: &Path, pg_port: u16, redis_port: u16) -> (Proc, [u16; 2]) {
    let dir = TempDir::new("go-db");
    let (cert, key) = self_signed_cert(&dir.0);
    let dsn = format!("host=127.0.0.1 port={pg_port} user=postgres dbname=kspan sslmode=disable");
    let mut cmd = Command::new(exe);
    cmd.args([dsn, format!("127.0.0.1:{redis_port}")]).args([&cert, &key]);
    let (child, ports) = start_go_app(cmd);
    let [http, https, xnet] = ports[..] else { panic!("go_db_app printed ports {ports:?}") };
    (Proc { child, port: http, _dir: Some(dir) }, [https, xnet])
}

/// [`go_grpc_app`] serving gRPC without TLS, its health service's Check
/// calling the PostgreSQL at `pg_port` (database `kspan`) and the Redis at
/// `redis_port`.
pub fn go_grpc_server(pg_port: u16, redis_port: u16) -> Proc {
    let dsn = format!("host=127.0.0.1 port={pg_port} user=postgres dbname=kspan sslmode=disable");
    let mut cmd = Command::new(go_grpc_app());
    cmd.args([dsn, format!("127.0.0.1:{redis_port}")]);
    let (child, ports) = start_go_app(cmd);
    Proc { child, port: ports[0], _dir: None }
}

/// The Go app `exe` ([`go_tls_app`] or [`go_tls_app_stripped`]) serving
/// HTTPS (HTTP/1.1, and HTTP/2 through ALPN) with a self-signed
/// certificate: `/` and `/items/ID` 200, `/err` 500, else 404.
pub fn go_tls_server(exe: &Path) -> Proc {
    let dir = TempDir::new("go-tls");
    let (cert, key) = self_signed_cert(&dir.0);
    let mut cmd = Command::new(exe);
    cmd.arg("server").args([&cert, &key]);
    let (child, ports) = start_go_app(cmd);
    Proc { child, port: ports[0], _dir: Some(dir) }
}

/// `apps/node_https.js serve`: Node.js's https module, whose TLS runs
/// OpenSSL on memory BIOs (libuv writes the ciphertext, outside any
/// OpenSSL call), on a free port with a self-signed certificate.
pub fn node_https() -> Proc {
    let mut cmd = Command::new("node");
    cmd.arg(apps_dir().join("node_https.js")).arg("serve");
    https_app("node-https", cmd)
}

/// `apps/asyncio_https_server.py`: an HTTPS server on Python's asyncio
/// streams (its ssl module on memory BIOs), like [`node_https`].
pub fn asyncio_https() -> Proc {
    let mut cmd = Command::new("python3");
    cmd.arg(apps_dir().join("asyncio_https_server.py"));
    https_app("asyncio-https", cmd)
}

/// Starts `cmd CERT KEY PORT` (a self-signed certificate, a free port) and
/// waits for its "listening" line.
fn https_app(tag: &str, mut cmd: Command) -> Proc {
    let dir = TempDir::new(tag);
    let (cert, key) = self_signed_cert(&dir.0);
    let port = free_port();
    let mut child = cmd
        .args([&cert, &key])
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {tag} (`cargo xtask setup` installs what it needs): {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
    assert_eq!(line.trim(), "listening", "{tag} did not start");
    Proc { child, port, _dir: Some(dir) }
}

/// Starts a Go test app that prints its port(s) on its first line, and
/// waits until each accepts connections.
fn start_go_app(mut cmd: Command) -> (std::process::Child, Vec<u16>) {
    // Each wait_port probe of a TLS port is logged as a failed handshake.
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start a Go test app");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("port line");
    let ports: Vec<u16> = line.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    assert!(!ports.is_empty(), "the Go app printed {line:?}");
    for p in &ports {
        wait_port(*p, Duration::from_secs(10));
    }
    (child, ports)
}

/// GnuTLS's test server (`gnutls-serv --http`, from gnutls-bin) on HTTPS
/// with a self-signed certificate: answers every GET with a 200 HTML page
/// (HTTP/1.0, the body ends at close).
pub fn gnutls_serv() -> Proc {
    let dir = TempDir::new("gnutls-serv");
    let (cert, key) = self_signed_cert(&dir.0);
    let port = free_port();
    let child = Command::new("gnutls-serv")
        .args(["--http", "--port", &port.to_string(), "--x509certfile"])
        .arg(&cert)
        .arg("--x509keyfile")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gnutls-serv (apt-get install gnutls-bin)");
    wait_port(port, Duration::from_secs(10));
    Proc { child, port, _dir: Some(dir) }
}

/// nginx (master + 1 worker) serving a small static tree; `/err` returns 500.
pub fn nginx() -> Proc {
    nginx_with(false, false, false)
}

/// [`nginx`] serving HTTPS only, with a self-signed certificate.
pub fn nginx_tls() -> Proc {
    nginx_with(true, false, false)
}

/// [`nginx`] speaking plaintext HTTP/2 only (h2c with prior knowledge,
/// `listen PORT http2;`): clients need `curl --http2-prior-knowledge`.
pub fn nginx_h2c() -> Proc {
    nginx_with(false, true, false)
}

/// [`nginx_tls`] with HTTP/2 offered through ALPN (`listen PORT ssl http2;`);
/// `curl --http2` picks it, HTTP/1.1 clients still get HTTP/1.1.
pub fn nginx_h2_tls() -> Proc {
    nginx_with(true, true, false)
}

/// [`nginx`] with `sendfile on` (as Debian's packaged configuration has
/// it): file bodies leave through sendfile, not write. Also serves
/// `/big.bin` (1 MiB).
pub fn nginx_sendfile() -> Proc {
    nginx_with(false, false, true)
}

fn nginx_with(tls: bool, http2: bool, sendfile: bool) -> Proc {
    let dir = TempDir::new("nginx");
    let port = free_port();
    let (mut listen, certs) = if tls {
        let (cert, key) = self_signed_cert(&dir.0);
        (
            format!("{port} ssl"),
            format!("ssl_certificate {};\n    ssl_certificate_key {};\n    ", cert.display(), key.display()),
        )
    } else {
        (port.to_string(), String::new())
    };
    if http2 {
        // nginx 1.22 syntax (1.25 moved it to a separate `http2 on;`).
        listen.push_str(" http2");
    }
    let root = dir.0.join("www");
    std::fs::create_dir_all(root.join("api")).expect("www");
    std::fs::write(root.join("index.html"), "<h1>kspan</h1>\n").expect("index");
    std::fs::write(root.join("api/items.json"), "[1,2,3]\n").expect("items");
    std::fs::write(root.join("big.bin"), vec![b'k'; 1 << 20]).expect("big.bin");
    let sendfile = if sendfile { "on" } else { "off" };
    // wrk reconnects after nginx closes a connection; h2load does not, so an
    // HTTP/2 server keeps its connections open for a whole benchmark.
    let keepalive = if http2 { 1_000_000 } else { 1000 };
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  sendfile {sendfile};\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         server {{\n    listen 127.0.0.1:{listen};\n    {certs}root {root};\n    keepalive_requests {keepalive};\n    \
         location = /err {{ return 500; }}\n  }}\n}}\n",
        d = dir.0.display(),
        root = root.display()
    );
    let conf_path = dir.0.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let child = Command::new("nginx")
        .args(["-c"])
        .arg(&conf_path)
        .args(["-p"])
        .arg(&dir.0)
        .args(["-g", "daemon off;"])
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx (apt-get install nginx; `cargo xtask setup` does it)");
    wait_port(port, Duration::from_secs(10));
    Proc { child, port, _dir: Some(dir) }
}

/// The Python gRPC server (`apps/grpc_app.py server PORT`, grpcio,
/// plaintext HTTP/2) on a free port: service `kspan.test.Echo` with `Say`
/// (echo, OK) and `Fail` (NOT_FOUND).
pub fn grpc_server() -> Proc {
    let port = free_port();
    let child = python_app_ready("grpc_app.py", &["server", &port.to_string()]);
    wait_port(port, Duration::from_secs(10));
    Proc { child, port, _dir: None }
}

/// Finds PostgreSQL's server binaries (Debian puts them under /usr/lib/postgresql/<v>/bin).
fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (`cargo xtask setup` installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| panic!("no {name} under /usr/lib/postgresql"))
}

/// A private PostgreSQL cluster (trust auth, TCP on a free loopback port,
/// database `kspan`), run as the `postgres` user; the Proc is the postmaster.
pub fn postgres() -> Proc {
    postgres_with(false)
}

/// [`postgres`] with `ssl=on` (self-signed certificate): clients may use
/// `sslmode=require`.
pub fn postgres_tls() -> Proc {
    postgres_with(true)
}

fn postgres_with(ssl: bool) -> Proc {
    let dir = TempDir::new("pg");
    let ssl_args: Vec<String> = if ssl {
        let (cert, key) = self_signed_cert(&dir.0);
        vec![
            "-c".into(),
            "ssl=on".into(),
            "-c".into(),
            format!("ssl_cert_file={}", cert.display()),
            "-c".into(),
            format!("ssl_key_file={}", key.display()),
        ]
    } else {
        Vec::new()
    };
    let port = free_port();
    let data = dir.0.join("data");
    let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir.0).status().expect("chown");
    assert!(chown.success());
    let as_pg = |cmd: &str| {
        let st = Command::new("runuser")
            .args(["-u", "postgres", "--", "sh", "-c", cmd])
            .stdout(Stdio::null())
            .status()
            .expect("runuser");
        assert!(st.success(), "as postgres: {cmd}");
    };
    as_pg(&format!("{} -D {} -A trust -U postgres --no-sync >/dev/null", pg_bin("initdb").display(), data.display()));
    let child = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .args(&ssl_args)
        .arg("-k")
        .arg(&dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres");
    wait_port(port, Duration::from_secs(30));
    // runuser forks the server; the postmaster is runuser's child.
    let proc = Proc { child, port, _dir: Some(dir) };
    let st = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-qc", "CREATE DATABASE kspan"])
        .stdout(Stdio::null())
        .status()
        .expect("psql");
    assert!(st.success(), "create database");
    proc
}

/// The postmaster's pid (runuser's child) for `--pid` selection.
pub fn child_pid_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(pid)
}

/// redis-server on a free port, no persistence.
pub fn redis() -> Proc {
    redis_with(false)
}

/// [`redis`] also serving on the Unix domain socket `redis.sock` in [`Proc::dir`].
pub fn redis_unix() -> Proc {
    redis_with(true)
}

fn redis_with(unix: bool) -> Proc {
    let port = free_port();
    let dir = unix.then(|| TempDir::new("redis"));
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    if let Some(d) = &dir {
        cmd.arg("--unixsocket").arg(d.0.join("redis.sock"));
    }
    let child = cmd.stdout(Stdio::null()).spawn().expect("start redis-server (`cargo xtask setup` installs it)");
    wait_port(port, Duration::from_secs(10));
    Proc { child, port, _dir: dir }
}

/// A real OTLP collector: rotel (PyPI) with the blackhole exporter and a
/// detailed debug log of every span it receives.
pub struct Rotel {
    pub proc: Proc,
    pub grpc_port: u16,
    pub http_port: u16,
    pub log: PathBuf,
}

impl Rotel {
    /// rotel printing every span it receives (for tests that read what arrived).
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// `debug_log: false` for load tests (the detailed log would dominate).
    pub fn start_with(debug_log: bool) -> Self {
        let dir = TempDir::new("rotel");
        let (grpc_port, http_port) = (free_port(), free_port());
        let log = dir.0.join("stdout.log");
        let out = std::fs::File::create(&log).expect("log file");
        let bin = rotel_binary();
        let mut cmd = Command::new(&bin);
        cmd.arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
            .args(["--exporter", "blackhole"]);
        if debug_log {
            cmd.args(["--debug-log", "traces", "--debug-log-verbosity", "detailed"]);
        }
        let child = cmd
            .arg("--pid-file")
            .arg(dir.0.join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.0.join("rotel.log"))
            .env("NO_COLOR", "1")
            .stdout(out.try_clone().expect("clone"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        wait_port(grpc_port, Duration::from_secs(15));
        wait_port(http_port, Duration::from_secs(15));
        Self { proc: Proc { child, port: http_port, _dir: Some(dir) }, grpc_port, http_port, log }
    }

    /// Everything rotel printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn rotel_binary() -> PathBuf {
    if let Ok(out) = Command::new("which").arg("rotel-agent").output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    let out = Command::new("python3")
        .args(["-c", "import rotel,os;print(os.path.dirname(rotel.__file__))"])
        .output()
        .expect("python3");
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("rotel-agent");
    assert!(p.exists(), "rotel-agent not found (pip install rotel; `cargo xtask setup` does it)");
    p
}
