//! What can go wrong: [`ClientError`] for a request to the node, [`DeployError`] for the
//! deployment file and signing flow around it.

use hyper::{Method, StatusCode};
use std::path::PathBuf;
use std::time::Duration;
use zos_types::{ParseError, PublicKey, ValidationError};

/// Why a request to the node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the node's address, or we may not connect to it.
    #[error("cannot reach the node at {node} ({cause}): {}", unreachable_hint(.cause))]
    Unreachable {
        /// The node's address.
        node: String,
        /// What connecting said.
        cause: std::io::Error,
    },
    /// The TLS handshake failed: above all, a certificate whose key is not the node id.
    #[error("TLS with the node at {node} failed: {cause}")]
    Tls {
        /// The node's address.
        node: String,
        /// What the handshake said, with its causes.
        cause: String,
    },
    /// Asked for its id, the node named another key than its TLS certificate's.
    #[error(
        "the node at {node} says its id is {stated}, but its TLS certificate is for {presented}: \
         a man in the middle, or a misconfigured proxy; refusing it (pin the right node with \
         --node-id)"
    )]
    WrongNode {
        /// The node's address.
        node: String,
        /// The id in the answer to `GET /v1/node/id`.
        stated: PublicKey,
        /// The key of the certificate it came over.
        presented: PublicKey,
    },
    /// The node answered with an error status.
    #[error("node: {message} (HTTP {status} for {method} {path})")]
    Node {
        /// The request's method.
        method: Method,
        /// The request's path and query.
        path: String,
        /// The answer's status.
        status: StatusCode,
        /// The node's `ErrorBody.error`, or the raw body when it sent none.
        message: String,
    },
    /// The connection failed after it was made.
    #[error("talking to the node at {node} ({method} {path}): {cause}")]
    Transport {
        /// The node's address.
        node: String,
        /// The request's method.
        method: Method,
        /// The request's path and query.
        path: String,
        /// What went wrong, with its causes.
        cause: String,
    },
    /// The node took too long.
    #[error("the node at {node} did not answer {method} {path} within {}s", .limit.as_secs())]
    Timeout {
        /// The node's address.
        node: String,
        /// The request's method.
        method: Method,
        /// The request's path and query.
        path: String,
        /// The limit that passed.
        limit: Duration,
    },
    /// The node answered with something this client does not understand.
    #[error(
        "the node's answer to {method} {path} is not what zos expects ({detail}); \
         are zos and the node the same version?"
    )]
    BadAnswer {
        /// The request's method.
        method: Method,
        /// The request's path and query.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Writing streamed output failed.
    #[error("writing output: {0}")]
    Output(std::io::Error),
    /// A deployment name that breaks the naming rule, refused before any request.
    #[error("{0:?} is not a deployment name: use 1 to 64 letters, digits, '_' or '-'")]
    InvalidName(String),
    /// The request could not be built or the runtime not started (a bug, not a node problem).
    #[error("preparing the request: {0}")]
    Local(String),
}

impl ClientError {
    /// The HTTP status, when the node answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Node { status, .. } => Some(*status),
            _ => None,
        }
    }
}

fn unreachable_hint(cause: &std::io::Error) -> &'static str {
    match cause.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "you may need root, or membership of the group owning the socket"
        }
        _ => "is `zos node run` running?",
    }
}

/// Why reading, preparing, signing or writing a deployment failed. File errors name the
/// file; parse errors carry the field path.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The file could not be read.
    #[error("reading {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading said.
        source: std::io::Error,
    },
    /// A user's deployment file does not parse.
    #[error("{}: {error}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, at which field.
        error: ParseError,
    },
    /// A file with an owner (so a signed deployment) does not parse as one.
    #[error("{}: a signed deployment, but {error}", .path.display())]
    ParseSigned {
        /// The file.
        path: PathBuf,
        /// What is wrong, at which field.
        error: ParseError,
    },
    /// The deployment breaks a rule (names, sizes, mounts…).
    #[error("{}: {error}", .path.display())]
    Invalid {
        /// The file it came from.
        path: PathBuf,
        /// The rule it breaks.
        error: ValidationError,
    },
    /// The stored deployment has the highest version there is.
    #[error("deployment {name} is at the last version ({version}); deploy it under a new name")]
    LastVersion {
        /// The deployment.
        name: String,
        /// Its version on the node.
        version: u32,
    },
    /// A key that the signature requirement does not list tried to sign.
    #[error("your key {key} is not among the signers of {name}")]
    NotASigner {
        /// The key.
        key: PublicKey,
        /// The deployment.
        name: String,
    },
    /// No temporary file could be made beside the signed file.
    #[error("writing next to {}", .path.display())]
    TempFile {
        /// The signed file to be.
        path: PathBuf,
        /// What creating the temporary file said.
        source: std::io::Error,
    },
    /// The signed file could not be written; the old one, if any, is unchanged.
    #[error("writing {}", .path.display())]
    Write {
        /// The signed file.
        path: PathBuf,
        /// What writing said.
        source: std::io::Error,
    },
    /// A request to the node failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}
