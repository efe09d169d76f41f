//! Go's crypto/tls: the Go HTTPS test app (`tests/apps/go_tls_app.go`)
//! served to wrk over HTTP/1.1 and to h2load over HTTP/2 (ALPN `h2`), with
//! and without kspan (`--pid` the Go server: the uprobes on its
//! `crypto/tls.(*Conn).Read`/`Write`). Both load generators run on a private
//! libssl copy, so only the Go server's calls hit uprobes.

use anyhow::Result;
use kspan_e2e::servers::{go_tls_app, go_tls_server};

use super::{compare, h2::h2load, private_libssl, wrk};

pub fn go_tls_bench(bin: &std::path::Path, secs: u32, n_rounds: u32) -> Result<()> {
    let srv = go_tls_server(&go_tls_app());
    let libs = private_libssl()?;
    let args = ["--pid".to_owned(), srv.pid().to_string()];
    let h1 = || wrk("https", Some(&libs.0), srv.port, secs, None).map(|l| l.rps);
    compare(
        &format!("Go HTTPS (crypto/tls) + wrk (-t2 -c32, {secs}s, HTTP/1.1), kspan --pid: req/s"),
        n_rounds,
        0.97,
        bin,
        &args,
        srv.pid(),
        &h1,
    )?;
    let url = format!("https://127.0.0.1:{}/index.html", srv.port);
    let h2 = || h2load(&url, secs, Some(&libs.0));
    compare(
        &format!("Go HTTPS (crypto/tls) + h2load (-t2 -c32 -m10, {secs}s, HTTP/2), kspan --pid: req/s"),
        n_rounds,
        0.97,
        bin,
        &args,
        srv.pid(),
        &h2,
    )
}
