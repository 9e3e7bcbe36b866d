//! End-to-end: a real `zos node run` keeps answering while clients misbehave on its
//! listeners: hundreds of connections that never send a request head, more connections than
//! its cap, hundreds of followed log streams; and its TCP listener speaks TLS bound to the
//! node's key, which the client checks.

mod common;

use common::{ok, zos};
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A node in a temp dir with one user's key, listening on a unix socket and on TCP.
struct Node {
    tmp: tempfile::TempDir,
    child: Option<Child>,
    /// The TCP address the node listens on.
    tcp: String,
}

impl Node {
    /// Starts a node whose config ends with `extra` and whose TCP listener is `tcp_listen`
    /// with `ADDR` replaced by a free port's address.
    fn start(tcp_listen: &str, extra: &str) -> Node {
        let tmp = tempfile::tempdir_in("/tmp").unwrap();
        ok(zos()
            .args(["key", "new", "-o"])
            .arg(tmp.path().join("alice.pem")));
        // A free port: bound by the OS, released, then taken by the node.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let dir = tmp.path();
        let config = dir.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nlisten = [\"unix://{}\", \"{}\"]\ncache_dir = {:?}\nreserve_memory = \"1G\"\nflist_dirs = [{:?}]\nallow_store_dirs = [{:?}]\n{extra}\n",
                dir.join("node"),
                dir.join("node.sock").display(),
                tcp_listen.replace("ADDR", &tcp),
                dir.join("cache"),
                dir,
                dir.join("store"),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("node.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_zos"))
            .args(["node", "run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let node = Node {
            tmp,
            child: Some(child),
            tcp,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while UnixStream::connect(node.socket()).is_err() || TcpStream::connect(&node.tcp).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the node did not come up:\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn socket(&self) -> PathBuf {
        self.dir().join("node.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("node.log")).unwrap_or_default()
    }

    /// `zos ARGS --node URL --key alice`.
    fn cli(&self, url: &str, args: &[&str]) -> Command {
        let mut cmd = zos();
        cmd.args(args)
            .args(["--node", url, "--key"])
            .arg(self.dir().join("alice.pem"));
        cmd
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether the node has closed `s` (end of file or reset), looking without waiting.
fn closed_now(mut s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = match s.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("the node sent something on a connection that sent nothing"),
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// Whether the node closes `s` within `limit`.
fn closes_within(mut s: &TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("the node sent something on a connection that sent nothing"),
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

const IDLE: usize = 300;
const CAP: usize = 350;
const HEADER_TIMEOUT_SECS: u64 = 8;

#[test]
fn idle_connections_neither_stall_the_node_nor_stay_open() {
    if !common::is_root() {
        return;
    }
    let node = Node::start(
        "tcp://ADDR",
        &format!("header_timeout_secs = {HEADER_TIMEOUT_SECS}\nmax_connections = {CAP}"),
    );
    let url = format!("http://{}", node.tcp);
    let opened = Instant::now();
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(&node.tcp).unwrap())
        .collect();
    // Another client is answered while all of them are open (well before their header
    // timeout has passed, so not because they went away).
    let out = ok(&mut node.cli(&url, &["node", "info"]));
    assert!(out.contains("memory"), "{out}");
    assert!(
        opened.elapsed() < Duration::from_secs(HEADER_TIMEOUT_SECS / 2),
        "the second client took {:?} with {IDLE} idle connections open",
        opened.elapsed()
    );
    // Past the cap, connections are closed at once, while the first ones stay (for now).
    let extra: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&node.tcp).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let refused = extra.iter().filter(|s| closed_now(s)).count();
    let early = idle.iter().filter(|s| closed_now(s)).count();
    assert!(
        opened.elapsed() < Duration::from_secs(HEADER_TIMEOUT_SECS),
        "too slow to tell the cap from the timeout"
    );
    assert_eq!(
        early, 0,
        "idle connections closed before their header timeout"
    );
    assert!(
        refused >= IDLE + 100 - CAP,
        "only {refused} of the connections past max_connections = {CAP} were closed"
    );
    // Every idle one is closed once its header timeout has passed.
    for (i, s) in idle.iter().chain(extra.iter()).enumerate() {
        assert!(
            closes_within(s, Duration::from_secs(4 * HEADER_TIMEOUT_SECS)),
            "idle connection {i} is still open long after the header timeout"
        );
    }
    let out = ok(&mut node.cli(&url, &["node", "info"]));
    assert!(out.contains("memory"), "{out}");
}
