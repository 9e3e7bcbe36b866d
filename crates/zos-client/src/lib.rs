//! A client for a zos node, for every program that deploys to one (the `zos` command, and
//! later a grid scheduler and Kubernetes front-ends): the node's API as typed, blocking
//! methods on [`NodeClient`]; deployment files and the signing flow ([`DeploymentInput`],
//! [`plan`], [`cosign`], [`write_signed`]); waiting for workloads to settle
//! ([`wait_until_settled`]); the summaries clients show ([`status`]); and deployments made
//! from Kubernetes clusters ([`kube`]) and Kubernetes manifests ([`manifest`]).
//!
//! A deploy, in calls: [`DeploymentInput::read`] → [`plan`] → [`Plan::sign`] → either
//! [`write_signed`] for co-signers (each runs [`cosign`]) or [`NodeClient::send`] →
//! [`wait_until_settled`].

mod access;
mod api;
mod error;
mod file;
pub mod kube;
pub mod manifest;
mod signing;
pub mod status;
mod tls;
mod transport;
mod url;
mod wait;

#[cfg(test)]
mod testutil;

pub use access::access_config;
pub use api::{check_deployment_name, EventLine};
pub use error::{ClientError, DeployError};
pub use file::{
    parse_file, parse_signed, read_signed, sets_versions, write_signed, DeploymentInput,
};
pub use hyper::{Method, StatusCode};
pub use signing::{
    bump_versions, check_signer, cosign, describe_signing, missing_signatures, plan, Action,
    MissingSignatures, Plan,
};
pub use transport::{Answer, NodeClient};
pub use url::{NodeUrl, DEFAULT_NODE};
pub use wait::{wait_until_settled, watch_settle, StateChange, Unsettled, Waited};
