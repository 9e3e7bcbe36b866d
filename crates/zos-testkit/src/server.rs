//! Servers the tests start on loopback (Python's HTTP server, Redis…), killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process killed and reaped when dropped.
pub struct Server {
    child: Child,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
}

impl Server {
    /// The server `child` listens on `port` of 127.0.0.1.
    pub fn new(child: Child, port: u16) -> Server {
        Server { child, port }
    }

    /// Stops it now (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port free now (bound by the OS, then released for the server).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits (20 s at most) until `ready` says so; panics naming `what` otherwise.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not become ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Python's HTTP server serving `dir` read-only on a free loopback port, its request log
/// (one line per request) sent to `log`.
pub fn http_server(dir: &Path, log: impl Into<Stdio>) -> Server {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--directory")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start python3 -m http.server");
    wait_until("http server", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Server::new(child, port)
}
