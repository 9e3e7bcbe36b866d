//! NodeClient against a scripted HTTP server on a unix socket: status mapping, 404 as
//! "none", signed requests, and event lines split across chunks.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::thread::JoinHandle;
use zos_client::{ClientError, NodeClient, NodeUrl, StatusCode};
use zos_types::Keypair;

/// Serves one canned answer per connection, in order; returns each request's head.
fn serve(socket: &Path, answers: Vec<Vec<u8>>) -> JoinHandle<Vec<String>> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let mut heads = Vec::new();
        for answer in answers {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head += &line;
            }
            let mut stream = reader.into_inner();
            stream.write_all(&answer).unwrap();
            heads.push(head);
        }
        heads
    })
}

fn answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn client(socket: &Path) -> NodeClient {
    let client = NodeClient::new(
        NodeUrl::Unix(socket.to_path_buf()),
        Keypair::from_seed(&[1; 32]),
    )
    .unwrap();
    client.pin_node_id(Keypair::from_seed(&[2; 32]).public());
    client
}

#[test]
fn error_statuses_are_typed_and_a_missing_deployment_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("node.sock");
    let server = serve(
        &socket,
        vec![
            answer("404 Not Found", r#"{"error":"no deployment named app"}"#),
            answer("500 Internal Server Error", r#"{"error":"disk full"}"#),
        ],
    );
    let node = client(&socket);
    assert!(node.find_deployment("app").unwrap().is_none());
    let err = node.deployment("app").err().unwrap();
    assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert!(err.to_string().contains("disk full"), "{err}");
    let heads = server.join().unwrap();
    // find_deployment asks for the caller's own deployment of that name, not a co-owned one.
    let own = Keypair::from_seed(&[1; 32]).public().to_string();
    assert!(
        heads[0].starts_with(&format!("GET /v1/deployments/app?owner={own} HTTP/1.1")),
        "{heads:?}"
    );
    assert!(
        heads[1].starts_with("GET /v1/deployments/app HTTP/1.1"),
        "{heads:?}"
    );
    assert!(
        heads[0].to_lowercase().contains("authorization: zos key="),
        "{heads:?}"
    );

    // Names are checked before anything is sent.
    let err = node.remove("../node").err().unwrap();
    assert!(matches!(err, ClientError::InvalidName(_)), "{err}");
}

#[test]
fn event_lines_split_across_chunks_arrive_whole() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("node.sock");
    let event =
        r#"{"time":0,"deployment":"app","version":1,"workload":"web","state":"ok","message":""}"#;
    let (first, second) = event.split_at(20);
    let chunks = [
        format!("{event}\n{first}"),
        format!("{second}\n\nnot json\n"),
        "tail".to_string(),
    ];
    let mut body = String::new();
    for chunk in &chunks {
        body += &format!("{:x}\r\n{chunk}\r\n", chunk.len());
    }
    body += "0\r\n\r\n";
    let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let server = serve(&socket, vec![format!("{head}{body}").into_bytes()]);
    let mut lines = Vec::new();
    client(&socket)
        .events(|line| {
            lines.push((line.raw.to_string(), line.event.is_some()));
            Ok(())
        })
        .unwrap();
    server.join().unwrap();
    assert_eq!(
        lines,
        [
            (event.to_string(), true),
            (event.to_string(), true),
            ("not json".to_string(), false),
            ("tail".to_string(), false),
        ]
    );
}
