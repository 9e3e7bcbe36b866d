//! The node's HTTP/JSON API: paths and the bodies that are not deployments.
//!
//! Every request but `GET /v1/node/id` carries an
//! `Authorization: zos key=…,node=…,ts=…,nonce=…,sig=…` header ([`RequestAuth`]): the caller
//! is that key, and the request is good on the named node only. Deploy and update are
//! authorized by the deployment's own signatures (which also name the node); everything else
//! by the header, and a caller only ever sees deployments it owns.
//!
//! | method and path                                   | body → answer                          |
//! |---------------------------------------------------|----------------------------------------|
//! | `GET /v1/node/id` (no signature: what to sign for) | → [`NodeIdentity`]                    |
//! | `GET /v1/node`                                    | → [`NodeInfo`]                         |
//! | `POST /v1/deployments`                            | `Deployment` → `Deployment` (201)      |
//! | `PUT /v1/deployments/{name}`                      | `Deployment` (version + 1) → `Deployment` |
//! | `GET /v1/deployments[?all=true]`                  | → `[Deployment]`, the caller's (deleted ones only with `all`) |
//! | `GET /v1/deployments/{name}`                      | → `Deployment` with results            |
//! | `DELETE /v1/deployments/{name}`                   | → `Deployment`, every result `deleted` |
//! | `GET /v1/deployments/{name}/logs/{workload}?follow=true` | → console log, `text/plain`, streamed while following |
//! | `GET /v1/events`                                  | → [`Event`]s as JSON lines, streamed   |
//! | `GET /v1/deployments/{name}/networks/{network}/wireguard` | → `WireGuardEnd`: the node's key and port for that network, deployed or not |
//! | `POST /v1/deployments/{name}/exec/{workload}`    | [`ExecRequest`] → a session (below)    |
//! | `POST /v1/deployments/{name}/copy/{workload}`    | [`CopyRequest`] → a session (below)    |
//!
//! A session (the owner's only, in a running container zmachine) is asked for with
//! `Connection: upgrade` and `Upgrade: zos-session` ([`SESSION_PROTOCOL`]); the node answers
//! `101 Switching Protocols` and the connection then carries JSON lines both ways:
//! [`StreamIn`] from the client, [`StreamOut`] from the node, the last one an
//! [`StreamOut::Exit`]. A copy's archive is a tar stream: out on stdout, in on stdin.
//!
//! Errors answer with a 4xx/5xx status and an [`ErrorBody`].
//!
//! [`RequestAuth`]: crate::RequestAuth

use crate::workload::ResultState;
use serde::{Deserialize, Serialize};

/// The API's version prefix.
pub const API_PREFIX: &str = "/v1";

/// The `Upgrade` protocol of exec and copy sessions.
pub const SESSION_PROTOCOL: &str = "zos-session";

/// `POST /v1/deployments/{name}/exec/{workload}`: a process in a container zmachine, run
/// as its own process is (user, environment, working directory) unless told otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments (looked up in the container's `PATH`).
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries added to the container's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Working directory; the container's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`; the container's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Whether the client sends stdin (else the process reads /dev/null).
    #[serde(default)]
    pub stdin: bool,
    /// A terminal of this size instead of pipes (stdout and stderr then come as one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<WindowSize>,
}

/// `POST /v1/deployments/{name}/copy/{workload}`: files out of or into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRequest {
    /// Absolute path inside the container, without `..`.
    pub path: String,
    /// Which way.
    pub direction: CopyDirection,
}

/// Which way a copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyDirection {
    /// `path` is sent as a tar archive, its top entry named after it.
    Out,
    /// A tar archive the client sends is unpacked into `path` (a directory) or as it.
    In,
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A line a client sends in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamIn {
    /// Bytes for the process's stdin (base64 in JSON).
    Stdin(#[serde(with = "base64_bytes")] Vec<u8>),
    /// Its stdin ends.
    StdinEnd,
    /// The terminal's new size.
    Resize(WindowSize),
    /// A signal for the process.
    Signal(i32),
}

/// A line the node sends in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamOut {
    /// Bytes of its stdout (or terminal), base64 in JSON.
    Stdout(#[serde(with = "base64_bytes")] Vec<u8>),
    /// Bytes of its stderr.
    Stderr(#[serde(with = "base64_bytes")] Vec<u8>),
    /// The end: the exit code (`128 + N` for signal N; 126/127 when the program could not
    /// run; 1 for a copy that failed), and what went wrong if the session could not work.
    Exit {
        /// The exit code.
        code: i32,
        /// Why it failed, when it did not get to run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// Bytes as base64 text in JSON.
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do about it, for a human.
    pub error: String,
}

/// `GET /v1/node/id`: the node's identity, which clients sign their requests and
/// deployments for. Public, as it reveals nothing of anyone's deployments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node's public key.
    pub node_id: crate::PublicKey,
    /// The zos version the node runs.
    pub version: String,
}

/// `GET /v1/node`: who the node is and what it can still take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's public key (its identity).
    pub node_id: crate::PublicKey,
    /// The zos version the node runs.
    pub version: String,
    /// The accelerator VMs get (`kvm` or `tcg`).
    pub accel: String,
    /// What the node offers to deployments (after its reserves).
    pub total: Resources,
    /// What deployments hold now.
    pub used: Resources,
    /// What a new deployment can still get.
    pub free: Resources,
}

/// An amount of each resource the node hands out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Virtual CPUs (the host's CPUs times the overcommit ratio).
    pub cpus: u64,
    /// Memory in bytes (never overcommitted).
    pub memory: u64,
    /// Disk in bytes (disks and writable root layers).
    pub disk: u64,
}

/// `GET /v1/events`: one line of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix seconds.
    pub time: u64,
    /// The deployment.
    pub deployment: String,
    /// The deployment version the event is about.
    pub version: u32,
    /// The workload, if the event is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The workload's new state (for a deployment event: `ok` created or updated,
    /// `deleted` removed).
    pub state: ResultState,
    /// Details, e.g. an error.
    #[serde(default)]
    pub message: String,
}
