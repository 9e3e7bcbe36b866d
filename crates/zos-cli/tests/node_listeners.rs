//! End-to-end: a real `zos node run` keeps answering while clients misbehave on its
//! listeners: hundreds of connections that never send a request head, more connections than
//! its cap, hundreds of followed log streams; and its TCP listener speaks TLS bound to the
//! node's key, which the client checks.

mod common;

use common::{fails, ok, zos};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use zos_types::{Deployment, DeploymentFile, Keypair, PublicKey, RequestAuth};

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

impl Node {
    fn keypair(&self) -> Keypair {
        zos_types::read_key_file(&self.dir().join("alice.pem")).unwrap()
    }

    /// The node's id, from its one unsigned endpoint.
    fn id(&self) -> PublicKey {
        let mut s = UnixStream::connect(self.socket()).unwrap();
        let (status, body) = exchange(&mut s, "GET", "/v1/node/id", None, b"", true);
        assert_eq!(status, 200, "{body}");
        let identity: zos_types::api::NodeIdentity = serde_json::from_str(&body).unwrap();
        identity.node_id
    }

    /// Opens a connection on the unix socket and sends a request signed by alice, with
    /// `Connection: close` when `close`; returns the connection and the answer's status and
    /// (when closing) its body.
    fn signed(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        close: bool,
    ) -> (UnixStream, u16, String) {
        let auth = RequestAuth::sign(&self.keypair(), &self.id(), method, path, unix_now(), body);
        let mut s = UnixStream::connect(self.socket()).unwrap();
        // A node that stalls fails the test rather than hanging it.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let (status, text) = exchange(&mut s, method, path, Some(&auth.to_header()), body, close);
        (s, status, text)
    }

    /// Deploys `yaml` (FLIST replaced by a busybox flist) as alice and waits until no
    /// workload is `init`; returns the deployment as JSON.
    fn deploy_settled(&self, yaml: &str) -> serde_json::Value {
        let root = self.dir().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in ["sh", "echo", "sleep"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        let fl = common::pack(&root, self.dir(), "bb.fl");
        let text = yaml.replace("FLIST", &fl.display().to_string());
        let mut d: Deployment = DeploymentFile::from_yaml_str(&text)
            .unwrap()
            .into_deployment(self.keypair().public(), self.id());
        d.sign(&self.keypair());
        let body = serde_json::to_vec(&d).unwrap();
        let (_, status, answer) = self.signed("POST", "/v1/deployments", &body, true);
        assert_eq!(status, 201, "{answer}");
        let path = format!("/v1/deployments/{}", d.name);
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let (_, status, body) = self.signed("GET", &path, b"", true);
            assert_eq!(status, 200, "{body}");
            let d: serde_json::Value = serde_json::from_str(&body).unwrap();
            let busy = d["workloads"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["result"]["state"] == "init");
            if !busy {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "still provisioning: {body}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Leave no VM behind: a plain `zos vm rm` of each.
        let data = self.dir().join("node");
        for vm in std::fs::read_dir(data.join("vms"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = zos()
                .args(["vm", "rm"])
                .arg(vm.file_name())
                .arg("--data-dir")
                .arg(&data)
                .output();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sends one HTTP/1.1 request on `s` and reads the answer's head; with `close`, also the
/// rest of the answer (the node closes after it). Returns the status and what was read of
/// the body.
fn exchange(
    s: &mut UnixStream,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
    close: bool,
) -> (u16, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if close {
        req.push_str("Connection: close\r\n");
    }
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).unwrap();
    let mut out = Vec::new();
    if close {
        s.read_to_end(&mut out).unwrap();
    } else {
        let mut byte = [0u8; 1];
        while !out.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut byte).unwrap();
            assert!(n > 0, "the node closed before its answer's head");
            out.push(byte[0]);
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
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
        // One peer (the test, on loopback) opens them all: its own cap is lifted here.
        &format!(
            "header_timeout_secs = {HEADER_TIMEOUT_SECS}\nmax_connections = {CAP}\n\
             max_connections_per_peer = {CAP}"
        ),
    );
    let url = format!("https://{}", node.tcp);
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

/// A TCP connection to `to` from the local address `from` (any of 127.0.0.0/8 is this host).
fn connect_from(from: &str, to: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    let to: std::net::SocketAddr = to.parse().unwrap();
    socket.connect(&to.into()).unwrap();
    socket.into()
}

#[test]
fn one_peer_cannot_take_every_connection_slot() {
    if !common::is_root() {
        return;
    }
    const PER_PEER: usize = 20;
    let node = Node::start(
        "tcp://ADDR",
        &format!("header_timeout_secs = 30\nmax_connections_per_peer = {PER_PEER}"),
    );
    // 127.0.0.1 asks for more than its share, all idle.
    let mine: Vec<TcpStream> = (0..PER_PEER + 5)
        .map(|_| connect_from("127.0.0.1", &node.tcp))
        .collect();
    let other = connect_from("127.0.0.2", &node.tcp);
    std::thread::sleep(Duration::from_millis(500));
    let open = mine.iter().filter(|s| !closed_now(s)).count();
    // (The fixture's own check may still hold one of the share for a moment.)
    assert!(
        (PER_PEER - 1..=PER_PEER).contains(&open),
        "{open} of {} connections from one address are open, its share is {PER_PEER}",
        mine.len()
    );
    assert!(!closed_now(&other), "another address is still let in");
    // Its share comes back as its connections end.
    drop(mine);
    std::thread::sleep(Duration::from_millis(500));
    let again = connect_from("127.0.0.1", &node.tcp);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !closed_now(&again),
        "a peer whose connections ended is let in again"
    );
}

const STREAMS: usize = 600;

#[test]
fn hundreds_of_followed_logs_leave_the_node_answering_and_are_capped_per_owner() {
    if !common::is_root() || !common::have("qemu-system-x86_64") {
        return;
    }
    // Its request rate and its address's connections are lifted too: 600 streams opened at
    // once from one address are a burst the per-owner token bucket and the per-peer cap would
    // rightly refuse, and the stream cap is what is tested here.
    let node = Node::start(
        "tcp://ADDR",
        &format!(
            "max_streams_per_owner = {STREAMS}\nmax_connections_per_peer = 1000\n\
             [limits]\nrequests_per_second = 100000.0\nrequest_burst = 100000"
        ),
    );
    let d = node.deploy_settled(
        "name: chatty\nworkloads:\n  - name: web\n    type: zmachine\n    data:\n      flist: FLIST\n      cmd: [sh, -c, 'echo chatty-started; exec sleep 600']\n      memory: 256M\n",
    );
    assert_eq!(d["workloads"][0]["result"]["state"], "ok", "{d}");
    // More followed logs of one VM than tokio's blocking pool has threads (512).
    let path = "/v1/deployments/chatty/logs/web?follow=true";
    let streams: Vec<UnixStream> = (0..STREAMS)
        .map(|i| {
            let (s, status, body) = node.signed("GET", path, b"", false);
            assert_eq!(status, 200, "stream {i}: {body}");
            s
        })
        .collect();
    // Each is a live stream: the first and the last deliver the log.
    for mut s in [&streams[0], &streams[STREAMS - 1]] {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("chatty-started") {
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "a followed log ended: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    }
    // Another request is still answered, and promptly.
    let asked = Instant::now();
    let (_, status, body) = node.signed("GET", "/v1/deployments/chatty", b"", true);
    assert_eq!(status, 200, "{body}");
    let out = ok(&mut node.cli(&format!("unix://{}", node.socket().display()), &["ps"]));
    assert!(out.contains("chatty"), "{out}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "with {STREAMS} followed logs open, two requests took {:?}",
        asked.elapsed()
    );
    // One more stream of the same owner, log or events, is refused with the limit named.
    for path in [path, "/v1/events"] {
        let (_, status, body) = node.signed("GET", path, b"", true);
        assert_eq!(status, 429, "{body}");
        assert!(
            body.contains(&format!("max_streams_per_owner = {STREAMS}")),
            "{body}"
        );
    }
    // A stream whose client left frees its slot.
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status, body) = node.signed("GET", "/v1/events", b"", false);
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(
            Instant::now() < deadline,
            "closed streams still count against the owner"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn tcp_is_tls_bound_to_the_node_key_and_another_key_is_refused() {
    if !common::is_root() {
        return;
    }
    let a = Node::start("tcp://ADDR", "");
    let b = Node::start("tcp://ADDR?insecure", "");
    let (a_url, a_id) = (format!("https://{}", a.tcp), a.id().to_string());
    // Asked once over TLS, the id is the certificate's key: the client talks to the node.
    let out = ok(&mut a.cli(&a_url, &["node", "info"]));
    assert!(out.contains(&a_id), "{out}");
    // Pinned to its id, too.
    ok(&mut a.cli(&a_url, &["node", "info", "--node-id", &a_id]));
    // Pinned to another id (b's): a's certificate is refused before anything is sent.
    let b_id = b.id().to_string();
    let err = fails(&mut a.cli(&a_url, &["node", "info", "--node-id", &b_id]));
    assert!(
        err.contains("man in the middle") && err.contains(&a_id) && err.contains(&b_id),
        "{err}"
    );
    // Another node (another key) answering at the address a client trusts for a: refused.
    let c = Node::start("tcp://ADDR", "");
    let c_url = format!("https://{}", c.tcp);
    let err = fails(&mut a.cli(&c_url, &["node", "info", "--node-id", &a_id]));
    assert!(
        err.contains("man in the middle") && err.contains(&c.id().to_string()),
        "{err}"
    );
    // Plain HTTP on TCP only where the config says ?insecure; TLS is not spoken there, and
    // plain HTTP is not answered on a TLS listener.
    let b_http = format!("http://{}", b.tcp);
    let out = ok(&mut b.cli(&b_http, &["node", "info"]));
    assert!(out.contains(&b_id), "{out}");
    fails(&mut b.cli(&format!("https://{}", b.tcp), &["node", "info"]));
    fails(&mut a.cli(&format!("http://{}", a.tcp), &["node", "info"]));
    assert!(b.log().contains("?insecure"), "{}", b.log());
}

#[test]
fn a_kept_connection_the_node_closed_while_idle_is_replaced() {
    if !common::is_root() {
        return;
    }
    // The node closes idle connections after 1 s; the client keeps one for 2 s.
    let node = Node::start("tcp://ADDR", "header_timeout_secs = 1");
    for url in [
        format!("https://{}", node.tcp),
        format!("unix://{}", node.socket().display()),
    ] {
        let url = zos_client::NodeUrl::parse(&url).unwrap();
        let client = zos_client::NodeClient::new(url, node.keypair()).unwrap();
        client.node_info().unwrap();
        client.deployments(false).unwrap();
        // Past the node's idle limit, within the client's: the kept connection is closed
        // under it, and the requests still go through, on a new one.
        std::thread::sleep(Duration::from_millis(1500));
        client.node_info().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let err = client
            .remove("none-such")
            .err()
            .map(|e| e.status())
            .unwrap();
        assert_eq!(err, Some(zos_client::StatusCode::NOT_FOUND));
    }
}

#[test]
fn a_body_that_stops_arriving_ends_its_request() {
    if !common::is_root() {
        return;
    }
    let node = Node::start("tcp://ADDR", "body_timeout_secs = 2");
    let mut s = UnixStream::connect(node.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // A head promising 1000 bytes, then 10 of them, then nothing.
    s.write_all(
        b"POST /v1/deployments HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"name\":\"",
    )
    .unwrap();
    let mut answer = Vec::new();
    let read = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok(),
        "the node still waits for the body: {read:?} {answer}"
    );
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("timeout"),
        "{answer}"
    );
    // The node still answers others.
    assert_eq!(node.id().to_string().len(), 64);
}
