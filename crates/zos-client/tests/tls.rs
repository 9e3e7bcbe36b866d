//! NodeClient over TLS against a real TLS server whose certificate is for another key than
//! the node id it states: what a TLS-terminating man in the middle (or a proxy holding its
//! own key) looks like. The client refuses it when asking for the id, and trusts a server
//! whose stated id is its certificate's key.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zos_client::{ClientError, NodeClient, NodeUrl};
use zos_types::{Keypair, PublicKey};

/// A TLS server with a certificate for `cert_key` (as a node makes it) answering every
/// request with `stated` as the node id; returns its address.
fn serve(cert_key: &Keypair, stated: PublicKey) -> SocketAddr {
    let acceptor = zos_node::tls::acceptor(cert_key).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    continue;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                let body = format!("{{\"node_id\":\"{stated}\",\"version\":\"0.1.0\"}}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
    });
    addr
}

fn client(addr: SocketAddr) -> NodeClient {
    let url = NodeUrl::parse(&format!("https://{addr}")).unwrap();
    NodeClient::new(url, Keypair::generate()).unwrap()
}

#[test]
fn a_server_whose_certificate_is_not_the_stated_node_id_is_refused() {
    let (node, proxy) = (Keypair::generate(), Keypair::generate());
    let addr = serve(&proxy, node.public());
    let err = client(addr).node_id().unwrap_err();
    match &err {
        ClientError::WrongNode {
            stated, presented, ..
        } => {
            assert_eq!(*stated, node.public());
            assert_eq!(*presented, proxy.public());
        }
        other => panic!("expected WrongNode, got {other}"),
    }
    assert!(err.to_string().contains("man in the middle"), "{err}");
}

#[test]
fn a_server_whose_certificate_is_its_stated_id_is_trusted_and_then_held_to_it() {
    let node = Keypair::generate();
    let addr = serve(&node, node.public());
    let c = client(addr);
    assert_eq!(c.node_id().unwrap(), node.public());
    // Pinned to another id, the same server is refused at the handshake.
    let pinned = client(addr);
    let other = Keypair::generate().public();
    pinned.pin_node_id(other);
    let Err(err) = pinned.get::<serde_json::Value>("/v1/node") else {
        panic!("a server with another key was talked to");
    };
    assert!(
        matches!(err, ClientError::Tls { .. })
            && err.to_string().contains(&other.to_string())
            && err.to_string().contains(&node.public().to_string()),
        "{err}"
    );
}
