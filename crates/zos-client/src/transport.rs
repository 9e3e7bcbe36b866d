//! The connection to one node: every request signed with the user's key, over a unix socket,
//! TLS (see `tls.rs`) or plain TCP, behind a blocking interface. `api.rs` builds the typed endpoints on it.
//!
//! One HTTP/1.1 connection is kept for the next request once an answer was read whole, for
//! [`REUSE_WITHIN`]: a TLS handshake costs more than a request, and clients that poll or send
//! many requests would pay it each time. A request that failed half-way never leaves its
//! connection to the next one, streams have their own, and a kept connection that the node
//! closed meanwhile (its idle limit) is replaced by a fresh one, the request sent again: the
//! node never read it.

use crate::{ClientError, NodeUrl};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;
use zos_types::api::{ErrorBody, NodeIdentity, StreamIn, StreamOut, API_PREFIX, SESSION_PROTOCOL};
use zos_types::{Keypair, PublicKey, RequestAuth};

/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole non-streaming request may take, connection included.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle connection is kept for the next request: well under the node's
/// default header (idle) timeout of 10 s.
const REUSE_WITHIN: Duration = Duration::from_secs(2);

/// A connection whose last answer was read whole.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// Over TLS, the key of the node's certificate.
    presented: Option<PublicKey>,
}

/// A parsed JSON answer, with the JSON itself for `--json`.
pub struct Answer<T> {
    /// The answer as a typed value.
    pub value: T,
    /// The answer as the node sent it.
    pub json: serde_json::Value,
}

impl<T> Answer<T> {
    /// The JSON, pretty-printed.
    pub fn pretty(&self) -> String {
        serde_json::to_string_pretty(&self.json).unwrap_or_else(|_| self.json.to_string())
    }
}

/// One request to make.
struct Call<'a> {
    method: Method,
    path: &'a str,
    body: Vec<u8>,
    /// Whether it asks to become a session (`Upgrade: zos-session`).
    upgrade: bool,
}

/// A client for one node, acting as one key.
pub struct NodeClient {
    url: NodeUrl,
    key: Keypair,
    /// The node's id, which every signature names: pinned by the user, or asked once. The
    /// TLS connector accepts only a certificate for it once it is set.
    node_id: Arc<OnceLock<PublicKey>>,
    /// For an `https://` node.
    tls: Option<tokio_rustls::TlsConnector>,
    /// The connection kept for the next request, and when it was last used.
    idle: Mutex<Option<(Conn, Instant)>>,
    runtime: tokio::runtime::Runtime,
}

impl NodeClient {
    /// A client for the node at `url`, signing with `key`.
    pub fn new(url: NodeUrl, key: Keypair) -> Result<Self, ClientError> {
        // One thread is plenty for one request at a time, and starts instantly.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Local(format!("starting the async runtime: {e}")))?;
        let node_id = Arc::new(OnceLock::new());
        let tls = match &url {
            NodeUrl::Http { tls: true, .. } => {
                Some(crate::tls::connector(node_id.clone()).map_err(ClientError::Local)?)
            }
            _ => None,
        };
        Ok(NodeClient {
            url,
            key,
            node_id,
            tls,
            idle: Mutex::new(None),
            runtime,
        })
    }

    /// Signs for `id` without asking the node: a node with another id then refuses.
    pub fn pin_node_id(&self, id: PublicKey) {
        let _ = self.node_id.set(id);
    }

    /// The node's id: pinned, or asked of the node (unsigned) the first time.
    pub fn node_id(&self) -> Result<PublicKey, ClientError> {
        self.runtime.block_on(self.fetch_node_id())
    }

    async fn fetch_node_id(&self) -> Result<PublicKey, ClientError> {
        if let Some(id) = self.node_id.get() {
            return Ok(*id);
        }
        let path = format!("{API_PREFIX}/node/id");
        let call = Call {
            method: Method::GET,
            path: &path,
            body: Vec::new(),
            upgrade: false,
        };
        let (identity, conn): (NodeIdentity, _) = self
            .limit(&call, REPLY_TIMEOUT, async {
                let (response, conn) = self.send_with(&call, None).await?;
                let body = self.check_status(&call, response).await?;
                Ok((self.read_json(&call, body).await?, conn))
            })
            .await?;
        // Over TLS, the id the node states must be the key it proved it holds.
        if let Some(presented) = conn.presented {
            if presented != identity.node_id {
                return Err(ClientError::WrongNode {
                    node: self.url.to_string(),
                    stated: identity.node_id,
                    presented,
                });
            }
        }
        self.keep(conn);
        Ok(*self.node_id.get_or_init(|| identity.node_id))
    }

    /// The key requests are signed with.
    pub fn key(&self) -> &Keypair {
        &self.key
    }

    /// The node's address.
    pub fn url(&self) -> &NodeUrl {
        &self.url
    }

    // The raw calls below take a path under `API_PREFIX`; the typed methods in `api.rs` are
    // what callers should use. They stay public for tools that probe the API itself
    // (benchmarks, tests of the node).

    /// `GET path`, parsed as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Answer<T>, ClientError> {
        self.json_call(Method::GET, path, Vec::new())
    }

    /// `POST path` with `body` as JSON, the answer parsed as `T`.
    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<Answer<T>, ClientError> {
        self.json_call(Method::POST, path, to_json(path, body)?)
    }

    /// `PUT path` with `body` as JSON, the answer parsed as `T`.
    pub fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<Answer<T>, ClientError> {
        self.json_call(Method::PUT, path, to_json(path, body)?)
    }

    /// `DELETE path`, the answer parsed as `T`.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<Answer<T>, ClientError> {
        self.json_call(Method::DELETE, path, Vec::new())
    }

    /// `GET path`, handing each piece of the body to `sink` as it arrives, until the node
    /// ends it. No time limit once the answer has started: logs and events run for as long
    /// as the user wants.
    pub fn stream(
        &self,
        path: &str,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let call = Call {
            method: Method::GET,
            path,
            body: Vec::new(),
            upgrade: false,
        };
        self.runtime.block_on(async {
            // The stream's connection goes with it: it may end anywhere.
            let (mut body, _conn) = self
                .limit(&call, REPLY_TIMEOUT, self.send_checked(&call))
                .await?;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| self.transport(&call, &e))?;
                if let Some(data) = frame.data_ref() {
                    sink(data).map_err(ClientError::Output)?;
                }
            }
            Ok(())
        })
    }

    /// `POST path` with `body`, turned into a session (see `zos_types::api`): what arrives
    /// on `input` goes to the node, each line the node sends goes to `output`. Returns the
    /// session's exit: its code and, when it could not run, why.
    pub fn session(
        &self,
        path: &str,
        body: Vec<u8>,
        input: std::sync::mpsc::Receiver<StreamIn>,
        mut output: impl FnMut(StreamOut) -> std::io::Result<()>,
    ) -> Result<(i32, Option<String>), ClientError> {
        let call = Call {
            method: Method::POST,
            path,
            body,
            upgrade: true,
        };
        // The input comes from a blocking reader (a terminal, a file): a thread hands it on.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in input {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        self.runtime.block_on(async {
            let upgraded = self
                .limit(&call, REPLY_TIMEOUT, async {
                    let (response, _conn) = self.sign_and_send(&call).await?;
                    if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
                        let _ = self.check_status(&call, response).await?;
                        return Err(self.transport(
                            &call,
                            &std::io::Error::other("the node answered without a session"),
                        ));
                    }
                    hyper::upgrade::on(response)
                        .await
                        .map_err(|e| self.transport(&call, &e))
                })
                .await?;
            let (read, mut write) = tokio::io::split(TokioIo::new(upgraded));
            tokio::spawn(async move {
                while let Some(line) = rx.recv().await {
                    let Ok(mut bytes) = serde_json::to_vec(&line) else {
                        continue;
                    };
                    bytes.push(b'\n');
                    if write.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                // The input ended: the node reads the end of our half.
                let _ = write.shutdown().await;
            });
            let mut lines = tokio::io::BufReader::new(read);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = lines
                    .read_until(b'\n', &mut line)
                    .await
                    .map_err(|e| self.transport(&call, &e))?;
                if n == 0 {
                    return Err(self.transport(
                        &call,
                        &std::io::Error::other("the node ended the session without an exit"),
                    ));
                }
                let out: StreamOut =
                    serde_json::from_slice(&line).map_err(|e| self.bad_answer(&call, e))?;
                if let StreamOut::Exit { code, error } = out {
                    return Ok((code, error));
                }
                output(out).map_err(ClientError::Output)?;
            }
        })
    }

    fn json_call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Answer<T>, ClientError> {
        let call = Call {
            method,
            path,
            body,
            upgrade: false,
        };
        let json: serde_json::Value =
            self.runtime
                .block_on(self.limit(&call, REPLY_TIMEOUT, async {
                    let (body, conn) = self.send_checked(&call).await?;
                    let json = self.read_json(&call, body).await?;
                    self.keep(conn);
                    Ok(json)
                }))?;
        let value = serde_json::from_value(json.clone()).map_err(|e| self.bad_answer(&call, e))?;
        Ok(Answer { value, json })
    }

    /// Reads a whole answer as JSON of type `T`.
    async fn read_json<T: DeserializeOwned>(
        &self,
        call: &Call<'_>,
        body: Incoming,
    ) -> Result<T, ClientError> {
        let bytes = body
            .collect()
            .await
            .map_err(|e| self.transport(call, &e))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| self.bad_answer(call, e))
    }

    fn bad_answer(&self, call: &Call<'_>, e: serde_json::Error) -> ClientError {
        ClientError::BadAnswer {
            method: call.method.clone(),
            path: call.path.to_string(),
            detail: e.to_string(),
        }
    }

    /// Sends `call` and checks the answer's status; returns the body to read.
    async fn send_checked(&self, call: &Call<'_>) -> Result<(Incoming, Conn), ClientError> {
        let (response, conn) = self.sign_and_send(call).await?;
        Ok((self.check_status(call, response).await?, conn))
    }

    /// Keeps `conn`, whose answer was read whole, for the next request.
    fn keep(&self, conn: Conn) {
        *self.idle.lock().unwrap_or_else(|e| e.into_inner()) = Some((conn, Instant::now()));
    }

    /// The kept connection, if it was used lately and is still open.
    fn kept(&self) -> Option<Conn> {
        let (conn, at) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        (at.elapsed() < REUSE_WITHIN && !conn.sender.is_closed()).then_some(conn)
    }

    /// Signs `call` for the node and sends it; returns once the answer's head has arrived.
    async fn sign_and_send(
        &self,
        call: &Call<'_>,
    ) -> Result<(Response<Incoming>, Conn), ClientError> {
        let node = self.fetch_node_id().await?;
        // The path is sent exactly as signed: it becomes the request target unchanged.
        // A clock before 1970 signs 0, which the node rejects with a clear skew error.
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let auth = RequestAuth::sign(
            &self.key,
            &node,
            call.method.as_str(),
            call.path,
            timestamp,
            &call.body,
        );
        self.send_with(call, Some(auth.to_header())).await
    }

    /// Sends `call` with `authorization`, if any, as its header, on the kept connection or a
    /// new one; returns the answer and its connection.
    async fn send_with(
        &self,
        call: &Call<'_>,
        authorization: Option<String>,
    ) -> Result<(Response<Incoming>, Conn), ClientError> {
        if !call.path.starts_with('/') {
            return Err(ClientError::Local(format!(
                "request path {:?} must start with /",
                call.path
            )));
        }
        let build = || {
            let mut request = Request::builder()
                .method(call.method.clone())
                .uri(call.path)
                .header(HOST, self.url.host_header());
            if let Some(value) = &authorization {
                request = request.header(AUTHORIZATION, value);
            }
            if !call.body.is_empty() {
                request = request.header(CONTENT_TYPE, "application/json");
            }
            if call.upgrade {
                request = request
                    .header(CONNECTION, "upgrade")
                    .header(UPGRADE, SESSION_PROTOCOL);
            }
            request
                .body(Full::new(Bytes::from(call.body.clone())))
                .map_err(|e| ClientError::Local(format!("{} {}: {e}", call.method, call.path)))
        };
        if let Some(mut conn) = self.kept() {
            if conn.sender.ready().await.is_ok() {
                // Without an answer's head on a kept connection, the node closed it while
                // idle (seen as a reset, an end of file, or TLS ending without close_notify)
                // and read nothing: the request then goes on a new connection.
                if let Ok(response) = conn.sender.send_request(build()?).await {
                    return Ok((response, conn));
                }
            }
        }
        let request = build()?;
        let unreachable = |cause| ClientError::Unreachable {
            node: self.url.to_string(),
            cause,
        };
        let connect_timeout = || {
            unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
            ))
        };
        match &self.url {
            NodeUrl::Unix(path) => {
                let connect = tokio::net::UnixStream::connect(path);
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                    .await
                    .map_err(|_| connect_timeout())?
                    .map_err(unreachable)?;
                self.exchange(call, stream, request, None).await
            }
            NodeUrl::Http { host, port, .. } => {
                let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                    .await
                    .map_err(|_| connect_timeout())?
                    .map_err(unreachable)?;
                let _ = stream.set_nodelay(true);
                let Some(tls) = &self.tls else {
                    return self.exchange(call, stream, request, None).await;
                };
                let (stream, key) = self.handshake(tls, host, stream).await?;
                self.exchange(call, stream, request, Some(key)).await
            }
        }
    }

    /// TLS over `stream`, accepting only a certificate for the node id (once known); returns
    /// the stream and the certificate's key.
    async fn handshake(
        &self,
        tls: &tokio_rustls::TlsConnector,
        host: &str,
        stream: tokio::net::TcpStream,
    ) -> Result<
        (
            tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
            PublicKey,
        ),
        ClientError,
    > {
        let failed = |cause: String| ClientError::Tls {
            node: self.url.to_string(),
            cause,
        };
        // The name is not checked (the key is); it is only sent.
        let name = ServerName::try_from(host.to_string())
            .unwrap_or_else(|_| ServerName::try_from("localhost").expect("a valid name"));
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, stream))
            .await
            .map_err(|_| {
                failed(format!(
                    "no handshake within {}s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| failed(crate::tls::handshake_error(&e)))?;
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or_else(|| failed("the node presented no certificate".into()))?;
        let key = crate::tls::certificate_key(cert).map_err(failed)?;
        Ok((stream, key))
    }

    /// Sends `request` on a new connection over `stream`.
    async fn exchange<S>(
        &self,
        call: &Call<'_>,
        stream: S,
        request: Request<Full<Bytes>>,
        presented: Option<PublicKey>,
    ) -> Result<(Response<Incoming>, Conn), ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.transport(call, &e))?;
        // The connection task moves the bytes; its errors also surface through the sender
        // and the body, where they are reported with the request they belong to.
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.transport(call, &e))?;
        Ok((response, Conn { sender, presented }))
    }

    /// Passes a success on; turns an error status into [`ClientError::Node`].
    async fn check_status(
        &self,
        call: &Call<'_>,
        response: Response<Incoming>,
    ) -> Result<Incoming, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response.into_body());
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => e.error,
            Err(_) => {
                let text = String::from_utf8_lossy(&body);
                let text = text.trim();
                if text.is_empty() {
                    status
                        .canonical_reason()
                        .unwrap_or("error without details")
                        .to_string()
                } else {
                    text.chars().take(500).collect()
                }
            }
        };
        Err(ClientError::Node {
            method: call.method.clone(),
            path: call.path.to_string(),
            status,
            message,
        })
    }

    async fn limit<T>(
        &self,
        call: &Call<'_>,
        limit: Duration,
        work: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| ClientError::Timeout {
                node: self.url.to_string(),
                method: call.method.clone(),
                path: call.path.to_string(),
                limit,
            })?
    }

    fn transport(&self, call: &Call<'_>, e: &(dyn std::error::Error + 'static)) -> ClientError {
        ClientError::Transport {
            node: self.url.to_string(),
            method: call.method.clone(),
            path: call.path.to_string(),
            cause: chain(e),
        }
    }
}

fn to_json(path: &str, body: &impl Serialize) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(body)
        .map_err(|e| ClientError::Local(format!("encoding the body for {path}: {e}")))
}

/// An error and its causes, `outer: inner: innermost`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
