//! End-to-end: a real `zos node run` keeps answering while clients misbehave on its
//! listeners: hundreds of connections that never send a request head, more connections than
//! its cap, hundreds of followed log streams; and its TCP listener speaks TLS bound to the
//! node's key, which the client checks.

mod common;
mod node_common;

use common::{fails, ok};
use node_common::Node;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

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
    let node = Node::start_with(
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
    let out = ok(&mut node.cli_at("alice", &url, &["node", "info"]));
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
    let out = ok(&mut node.cli_at("alice", &url, &["node", "info"]));
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
    let node = Node::start_with(
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
    let node = Node::start_with(
        "tcp://ADDR",
        &format!(
            "max_streams_per_owner = {STREAMS}\nmax_connections_per_peer = 1000\n\
             [limits]\nrequests_per_second = 100000.0\nrequest_burst = 100000"
        ),
    );
    let d = node.deploy_settled(
        "alice",
        "name: chatty\nworkloads:\n  - name: web\n    type: zmachine\n    data:\n      flist: FLIST\n      cmd: [sh, -c, 'echo chatty-started; exec sleep 600']\n      memory: 256M\n",
    );
    assert_eq!(d["workloads"][0]["result"]["state"], "ok", "{d}");
    // More followed logs of one VM than tokio's blocking pool has threads (512).
    let path = "/v1/deployments/chatty/logs/web?follow=true";
    let streams: Vec<UnixStream> = (0..STREAMS)
        .map(|i| {
            let (s, status, body) = node.signed(Some("alice"), "GET", path, b"", false);
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
    let (_, status, body) = node.signed(Some("alice"), "GET", "/v1/deployments/chatty", b"", true);
    assert_eq!(status, 200, "{body}");
    let out = ok(&mut node.cli("alice", &["ps"]));
    assert!(out.contains("chatty"), "{out}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "with {STREAMS} followed logs open, two requests took {:?}",
        asked.elapsed()
    );
    // One more stream of the same owner, log or events, is refused with the limit named.
    for path in [path, "/v1/events"] {
        let (_, status, body) = node.signed(Some("alice"), "GET", path, b"", true);
        assert_eq!(status, 429, "{body}");
        assert!(
            body.contains(&format!("max_streams_per_owner = {STREAMS}")),
            "{body}"
        );
    }
    // A stream whose client left frees its slot.
    let id = node.id();
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Until the node has read the closes of 600 connections, a new one may be turned
        // away: that is retried like a 429.
        let status = try_status(&node, &id, "/v1/events");
        if status == Some(200) {
            break;
        }
        assert!(matches!(status, Some(429) | None), "{status:?}");
        assert!(
            Instant::now() < deadline,
            "closed streams still count against the owner"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The status of alice's signed GET of `path` on the unix socket, or `None` when the
/// connection is turned away.
fn try_status(node: &Node, id: &zos_types::PublicKey, path: &str) -> Option<u16> {
    let now = node_common::unix_now();
    let auth = zos_types::RequestAuth::sign(&node.keypair("alice"), id, "GET", path, now, b"");
    let mut s = UnixStream::connect(node.socket()).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: node\r\nAuthorization: {}\r\n\r\n",
        auth.to_header()
    );
    s.write_all(head.as_bytes()).ok()?;
    let mut status = [0u8; 12];
    s.read_exact(&mut status).ok()?;
    std::str::from_utf8(&status[9..]).ok()?.parse().ok()
}

#[test]
fn tcp_is_tls_bound_to_the_node_key_and_another_key_is_refused() {
    if !common::is_root() {
        return;
    }
    let a = Node::start_with("tcp://ADDR", "");
    let b = Node::start_with("tcp://ADDR?insecure", "");
    let (a_url, a_id) = (format!("https://{}", a.tcp), a.id().to_string());
    // Asked once over TLS, the id is the certificate's key: the client talks to the node.
    let out = ok(&mut a.cli_at("alice", &a_url, &["node", "info"]));
    assert!(out.contains(&a_id), "{out}");
    // Pinned to its id, too.
    ok(&mut a.cli_at("alice", &a_url, &["node", "info", "--node-id", &a_id]));
    // Pinned to another id (b's): a's certificate is refused before anything is sent.
    let b_id = b.id().to_string();
    let err = fails(&mut a.cli_at("alice", &a_url, &["node", "info", "--node-id", &b_id]));
    assert!(
        err.contains("man in the middle") && err.contains(&a_id) && err.contains(&b_id),
        "{err}"
    );
    // Another node (another key) answering at the address a client trusts for a: refused.
    let c = Node::start_with("tcp://ADDR", "");
    let c_url = format!("https://{}", c.tcp);
    let err = fails(&mut a.cli_at("alice", &c_url, &["node", "info", "--node-id", &a_id]));
    assert!(
        err.contains("man in the middle") && err.contains(&c.id().to_string()),
        "{err}"
    );
    // Plain HTTP on TCP only where the config says ?insecure; TLS is not spoken there, and
    // plain HTTP is not answered on a TLS listener.
    let b_http = format!("http://{}", b.tcp);
    let out = ok(&mut b.cli_at("alice", &b_http, &["node", "info"]));
    assert!(out.contains(&b_id), "{out}");
    fails(&mut b.cli_at("alice", &format!("https://{}", b.tcp), &["node", "info"]));
    fails(&mut a.cli_at("alice", &format!("http://{}", a.tcp), &["node", "info"]));
    assert!(b.log().contains("?insecure"), "{}", b.log());
}

#[test]
fn a_kept_connection_the_node_closed_while_idle_is_replaced() {
    if !common::is_root() {
        return;
    }
    // The node closes idle connections after 1 s; the client keeps one for 2 s.
    let node = Node::start_with("tcp://ADDR", "header_timeout_secs = 1");
    for url in [
        format!("https://{}", node.tcp),
        format!("unix://{}", node.socket().display()),
    ] {
        let url = zos_client::NodeUrl::parse(&url).unwrap();
        let client = zos_client::NodeClient::new(url, node.keypair("alice")).unwrap();
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
    let node = Node::start_with("tcp://ADDR", "body_timeout_secs = 2");
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
