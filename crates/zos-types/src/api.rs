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
//!
//! Errors answer with a 4xx/5xx status and an [`ErrorBody`].
//!
//! [`RequestAuth`]: crate::RequestAuth

use crate::workload::ResultState;
use serde::{Deserialize, Serialize};

/// The API's version prefix.
pub const API_PREFIX: &str = "/v1";

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
