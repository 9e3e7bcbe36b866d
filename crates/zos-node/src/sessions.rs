//! Exec and copy sessions over an upgraded HTTP connection (see `zos_types::api`): the
//! client's [`StreamIn`] lines go to the guest's session, the guest's output comes back as
//! [`StreamOut`] lines, the last one the exit.

use crate::streams::StreamSlot;
use axum::http::header::{CONNECTION, UPGRADE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use zos_types::api::{
    CopyDirection, CopyRequest, ExecRequest, StreamIn, StreamOut, WindowSize, SESSION_PROTOCOL,
};
use zos_vmm::Session;

/// Longest line a client may send: 32 KiB of stdin in base64, with room to spare.
const MAX_LINE: usize = 256 * 1024;

/// Whether the request asks to upgrade to a session, as this endpoint needs.
pub fn asks_upgrade(headers: &HeaderMap) -> Result<(), String> {
    let has = |name, value: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(value))
            })
        })
    };
    match has(CONNECTION, "upgrade") && has(UPGRADE, SESSION_PROTOCOL) {
        true => Ok(()),
        false => Err(format!(
            "this endpoint opens a session: send Connection: upgrade and Upgrade: \
             {SESSION_PROTOCOL} (the zos CLI's exec and cp do)"
        )),
    }
}

/// The guest session an exec request asks for.
pub fn exec_open(r: ExecRequest) -> Result<zos_init::Open, String> {
    if r.argv.is_empty() || r.argv[0].is_empty() {
        return Err("exec needs a command: give argv, e.g. [\"sh\"]".into());
    }
    let size = |s: WindowSize| zos_init::WindowSize {
        rows: s.rows,
        cols: s.cols,
    };
    Ok(zos_init::Open::Exec(zos_init::Exec {
        argv: r.argv,
        env: r.env,
        cwd: r.cwd,
        user: r.user,
        stdin: r.stdin,
        tty: r.tty.map(size),
    }))
}

/// The guest session a copy request asks for.
pub fn copy_open(r: CopyRequest) -> zos_init::Open {
    match r.direction {
        CopyDirection::Out => zos_init::Open::CopyOut { path: r.path },
        CopyDirection::In => zos_init::Open::CopyIn { path: r.path },
    }
}

/// The 101 answer that starts a session.
pub fn switching() -> Response {
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [(CONNECTION, "upgrade"), (UPGRADE, SESSION_PROTOCOL)],
    )
        .into_response()
}

/// Relays between the upgraded connection and the guest's session until the session ends,
/// the client leaves or the node stops (a session that did not end is then killed).
pub async fn relay(
    upgraded: Upgraded,
    session: Session,
    mut stopping: watch::Receiver<bool>,
    slot: StreamSlot,
) {
    let _slot = slot;
    let session = Arc::new(session);
    let (read, mut write) = tokio::io::split(TokioIo::new(upgraded));
    let (tx, mut rx) = mpsc::channel::<StreamOut>(16);
    let reading = Arc::clone(&session);
    // The guest's side is blocking I/O: it gets a thread of the blocking pool for the
    // session's life.
    tokio::task::spawn_blocking(move || {
        while let Some(output) = reading.recv() {
            if tx.blocking_send(stream_out(output)).is_err() {
                return;
            }
        }
    });
    let input = tokio::spawn(feed(read, Arc::clone(&session)));
    loop {
        let next = tokio::select! {
            next = rx.recv() => next,
            _ = stopping.wait_for(|stop| *stop) => None,
        };
        let Some(out) = next else { break };
        let over = matches!(out, StreamOut::Exit { .. });
        let Ok(mut line) = serde_json::to_vec(&out) else {
            break;
        };
        line.push(b'\n');
        if write.write_all(&line).await.is_err() || over {
            break;
        }
    }
    let _ = write.shutdown().await;
    input.abort();
}

/// Passes the client's lines to the session until the client stops sending.
async fn feed(read: tokio::io::ReadHalf<TokioIo<Upgraded>>, session: Arc<Session>) {
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut lines)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // A line that does not parse is not ours to guess at: the client is told nothing
        // and the session goes on.
        let Ok(input) = serde_json::from_slice::<StreamIn>(&line) else {
            continue;
        };
        let session = Arc::clone(&session);
        let sent = tokio::task::spawn_blocking(move || session.send(guest_input(input))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
}

fn guest_input(input: StreamIn) -> zos_init::Input {
    match input {
        StreamIn::Stdin(data) => zos_init::Input::Stdin(data),
        StreamIn::StdinEnd => zos_init::Input::StdinEnd,
        StreamIn::Resize(s) => zos_init::Input::Resize(zos_init::WindowSize {
            rows: s.rows,
            cols: s.cols,
        }),
        StreamIn::Signal(n) => zos_init::Input::Signal(n),
    }
}

fn stream_out(output: zos_init::Output) -> StreamOut {
    match output {
        zos_init::Output::Stdout(data) => StreamOut::Stdout(data),
        zos_init::Output::Stderr(data) => StreamOut::Stderr(data),
        zos_init::Output::Exit { code, error } => StreamOut::Exit { code, error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_names_the_protocol() {
        let mut h = HeaderMap::new();
        assert!(asks_upgrade(&h).is_err());
        h.insert(CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        assert!(asks_upgrade(&h).is_err());
        h.insert(UPGRADE, SESSION_PROTOCOL.parse().unwrap());
        assert!(asks_upgrade(&h).is_ok());
    }

    #[test]
    fn exec_needs_a_command() {
        assert!(exec_open(ExecRequest::default()).is_err());
        let open = exec_open(ExecRequest {
            argv: vec!["true".into()],
            ..ExecRequest::default()
        });
        assert!(matches!(open, Ok(zos_init::Open::Exec(e)) if e.argv == ["true"]));
    }
}
