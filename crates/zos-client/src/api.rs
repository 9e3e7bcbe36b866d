//! The node's endpoints as typed methods (see `zos_types::api` for the table): what a
//! caller asks for, not which path it lives at.

use crate::{Answer, ClientError, NodeClient};
use hyper::StatusCode;
use zos_types::api::{CopyRequest, Event, ExecRequest, NodeInfo, StreamIn, StreamOut, API_PREFIX};
use zos_types::{is_valid_deployment_name, Deployment, PublicKey, WorkloadName};

/// One line of the event stream: the text as the node sent it (trimmed), and the event when
/// this client understands it.
pub struct EventLine<'a> {
    /// The line, without surrounding whitespace; never empty.
    pub raw: &'a str,
    /// The parsed event; `None` for a line this version does not understand.
    pub event: Option<Event>,
}

/// Checks a deployment name before it goes into a request path, so a name cannot reach
/// another endpoint (`a/logs/b`) and the user learns the rule instead of getting a 404.
pub fn check_deployment_name(name: &str) -> Result<(), ClientError> {
    if is_valid_deployment_name(name) {
        Ok(())
    } else {
        Err(ClientError::InvalidName(name.to_string()))
    }
}

impl NodeClient {
    /// The node's identity, version and capacity (`GET /v1/node`).
    pub fn node_info(&self) -> Result<Answer<NodeInfo>, ClientError> {
        self.get(&format!("{API_PREFIX}/node"))
    }

    /// The caller's deployments, the deleted ones too when `all` (`GET /v1/deployments`).
    pub fn deployments(&self, all: bool) -> Result<Answer<Vec<Deployment>>, ClientError> {
        let query = if all { "?all=true" } else { "" };
        self.get(&format!("{API_PREFIX}/deployments{query}"))
    }

    /// The node's end of the WireGuard link of the caller's network `network` in deployment
    /// `name`, known before it is deployed
    /// (`GET /v1/deployments/{name}/networks/{network}/wireguard`).
    pub fn wireguard_end(
        &self,
        name: &str,
        network: &str,
    ) -> Result<Answer<zos_types::WireGuardEnd>, ClientError> {
        check_deployment_name(name)?;
        let network = WorkloadName::try_from(network.to_string())
            .map_err(|_| ClientError::InvalidName(network.to_string()))?;
        self.get(&format!(
            "{API_PREFIX}/deployments/{name}/networks/{}/wireguard",
            network.as_str()
        ))
    }

    /// One deployment with its workloads' results (`GET /v1/deployments/{name}`).
    pub fn deployment(&self, name: &str) -> Result<Answer<Deployment>, ClientError> {
        check_deployment_name(name)?;
        self.get(&format!("{API_PREFIX}/deployments/{name}"))
    }

    /// `owner`'s deployment `name`, which the caller owns or co-owns (is a signer of):
    /// `GET /v1/deployments/{name}?owner=KEY`.
    pub fn deployment_of(
        &self,
        owner: &PublicKey,
        name: &str,
    ) -> Result<Answer<Deployment>, ClientError> {
        check_deployment_name(name)?;
        self.get(&format!("{API_PREFIX}/deployments/{name}?owner={owner}"))
    }

    /// The caller's own deployment `name` (never one it co-owns), or `None` when the node
    /// holds none of the caller's by that name.
    pub fn find_deployment(&self, name: &str) -> Result<Option<Answer<Deployment>>, ClientError> {
        match self.deployment_of(&self.key().public(), name) {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a deployment signed at version 0 (`POST /v1/deployments`).
    pub fn create(&self, deployment: &Deployment) -> Result<Answer<Deployment>, ClientError> {
        self.post(&format!("{API_PREFIX}/deployments"), deployment)
    }

    /// Replaces a deployment with its next version (`PUT /v1/deployments/{name}`).
    pub fn update(&self, deployment: &Deployment) -> Result<Answer<Deployment>, ClientError> {
        check_deployment_name(&deployment.name)?;
        self.put(
            &format!("{API_PREFIX}/deployments/{}", deployment.name),
            deployment,
        )
    }

    /// Sends a signed deployment: a create at version 0, else an update.
    pub fn send(&self, deployment: &Deployment) -> Result<Answer<Deployment>, ClientError> {
        if deployment.version == 0 {
            self.create(deployment)
        } else {
            self.update(deployment)
        }
    }

    /// Removes a deployment and everything it runs (`DELETE /v1/deployments/{name}`);
    /// answers with the deployment, every result `deleted`.
    pub fn remove(&self, name: &str) -> Result<Answer<Deployment>, ClientError> {
        check_deployment_name(name)?;
        self.delete(&format!("{API_PREFIX}/deployments/{name}"))
    }

    /// A workload's console log as it is now, handed to `sink` piece by piece.
    pub fn logs(
        &self,
        name: &str,
        workload: &WorkloadName,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        self.logs_at(name, workload, "", sink)
    }

    /// A workload's console log, then what it prints next, until the node ends the stream
    /// (the workload is removed, or the node stops) or `sink` fails.
    pub fn follow_logs(
        &self,
        name: &str,
        workload: &WorkloadName,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        self.logs_at(name, workload, "?follow=true", sink)
    }

    fn logs_at(
        &self,
        name: &str,
        workload: &WorkloadName,
        query: &str,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        check_deployment_name(name)?;
        self.stream(
            &format!("{API_PREFIX}/deployments/{name}/logs/{workload}{query}"),
            sink,
        )
    }

    /// Runs a process in a container workload (see [`NodeClient::session`]).
    pub fn exec(
        &self,
        name: &str,
        workload: &WorkloadName,
        request: &ExecRequest,
        input: std::sync::mpsc::Receiver<StreamIn>,
        output: impl FnMut(StreamOut) -> std::io::Result<()>,
    ) -> Result<(i32, Option<String>), ClientError> {
        self.session_at(name, workload, "exec", request, input, output)
    }

    /// Copies a path out of or into a container workload as a tar stream (see
    /// [`NodeClient::session`]).
    pub fn copy(
        &self,
        name: &str,
        workload: &WorkloadName,
        request: &CopyRequest,
        input: std::sync::mpsc::Receiver<StreamIn>,
        output: impl FnMut(StreamOut) -> std::io::Result<()>,
    ) -> Result<(i32, Option<String>), ClientError> {
        self.session_at(name, workload, "copy", request, input, output)
    }

    fn session_at(
        &self,
        name: &str,
        workload: &WorkloadName,
        verb: &str,
        request: &impl serde::Serialize,
        input: std::sync::mpsc::Receiver<StreamIn>,
        output: impl FnMut(StreamOut) -> std::io::Result<()>,
    ) -> Result<(i32, Option<String>), ClientError> {
        check_deployment_name(name)?;
        let path = format!("{API_PREFIX}/deployments/{name}/{verb}/{workload}");
        let body = serde_json::to_vec(request)
            .map_err(|e| ClientError::Local(format!("encoding the body for {path}: {e}")))?;
        self.session(&path, body, input, output)
    }

    /// What happens to the caller's deployments, one line at a time, until the node ends
    /// the stream (it is stopping) or `on_line` fails.
    pub fn events(
        &self,
        mut on_line: impl FnMut(EventLine<'_>) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let mut pending = Vec::new();
        self.stream(&format!("{API_PREFIX}/events"), |chunk| {
            // A line may arrive in pieces; hand on only whole lines.
            pending.extend_from_slice(chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                event_line(&line, &mut on_line)?;
            }
            Ok(())
        })?;
        event_line(&pending, &mut on_line).map_err(ClientError::Output)
    }
}

fn event_line(
    line: &[u8],
    on_line: &mut impl FnMut(EventLine<'_>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let line = String::from_utf8_lossy(line);
    let raw = line.trim();
    if raw.is_empty() {
        return Ok(());
    }
    let event = serde_json::from_str::<Event>(raw).ok();
    on_line(EventLine { raw, event })
}
