//! The few calls `zos-bench node` makes to the node's API over its unix socket, each signed
//! with the benchmark's key as the node requires.
//!
//! A stand-in: the `zos` CLI's client is private to its binary. Once the API client is a
//! library crate (`zos-client`, issue 10), this file gives way to it.

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zos_types::api::{NodeIdentity, API_PREFIX};
use zos_types::{Keypair, PublicKey, RequestAuth};

/// How long one call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A client for the node listening on one unix socket, acting as one key.
pub struct Api {
    socket: PathBuf,
    key: Keypair,
    /// The node's id, which every signature names; asked once.
    node: std::sync::OnceLock<PublicKey>,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    /// A client for the node at `socket`, signing with `key`.
    pub fn new(socket: PathBuf, key: Keypair) -> Result<Api> {
        // One thread is plenty for one request at a time, and starts instantly.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime of the API client")?;
        Ok(Api {
            socket,
            key,
            node: std::sync::OnceLock::new(),
            runtime,
        })
    }

    /// The node's id, asked of the node (unsigned) the first time.
    pub fn node_id(&self) -> Result<PublicKey> {
        if let Some(id) = self.node.get() {
            return Ok(*id);
        }
        let body = self.call(Method::GET, &format!("{API_PREFIX}/node/id"), None, None)?;
        let identity: NodeIdentity = serde_json::from_slice(&body)
            .with_context(|| format!("parsing the node's answer to {API_PREFIX}/node/id"))?;
        Ok(*self.node.get_or_init(|| identity.node_id))
    }

    /// Signs for `id` without asking the node.
    pub fn pin_node_id(&self, id: PublicKey) {
        let _ = self.node.set(id);
    }

    /// Signed `GET path`, the answer parsed as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self.signed(Method::GET, path, Vec::new())?;
        serde_json::from_slice(&body).with_context(|| format!("parsing the answer to GET {path}"))
    }

    /// Signed `GET path`, the whole answer as bytes (e.g. a log).
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        self.signed(Method::GET, path, Vec::new())
    }

    /// Signed `POST path` with `body` as JSON; the answer is dropped.
    pub fn post(&self, path: &str, body: &impl Serialize) -> Result<()> {
        let json = serde_json::to_vec(body).with_context(|| format!("encoding POST {path}"))?;
        self.signed(Method::POST, path, json).map(|_| ())
    }

    /// Signed `DELETE path`; the answer is dropped.
    pub fn delete(&self, path: &str) -> Result<()> {
        self.signed(Method::DELETE, path, Vec::new()).map(|_| ())
    }

    fn signed(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Vec<u8>> {
        let node = self.node_id()?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let auth = RequestAuth::sign(&self.key, &node, method.as_str(), path, timestamp, &body);
        self.call(method, path, Some(auth.to_header()), Some(body))
    }

    /// Sends one request on a new connection; returns the body of a 2xx answer.
    fn call(
        &self,
        method: Method,
        path: &str,
        authorization: Option<String>,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let what = format!("{method} {path} to the node at {}", self.socket.display());
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            // Any name will do over a socket; the node does not route by host.
            .header(HOST, "localhost");
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .with_context(|| format!("building {what}"))?;
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.socket).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            // The connection task moves the bytes; its errors surface through the sender.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let response = sender.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, bytes))
        };
        let (status, bytes) = self
            .runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, exchange).await })
            .with_context(|| format!("{what}: no answer within {}s", CALL_TIMEOUT.as_secs()))?
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            bail!("{what}: {status}: {}", text.trim());
        }
        Ok(bytes.to_vec())
    }
}
