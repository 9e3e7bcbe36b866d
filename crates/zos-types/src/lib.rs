//! The types a zos user and a zos node share: deployments, workloads, keys, signatures, and
//! the exact bytes that get signed.
//!
//! # What is signed
//!
//! A deployment is signed over [`Deployment::challenge`]:
//!
//! ```text
//! challenge = SHA-256( "zos-deployment-v1\n" || signing_bytes )
//! signature = Ed25519( secret key, challenge )        // 64 bytes, hex on the wire
//! ```
//!
//! `signing_bytes` ([`Deployment::signing_bytes`]) is the deployment as canonical JSON
//! (RFC 8785, JCS): no whitespace, object members sorted by UTF-16 code units, with the
//! `signatures` member and every workload's `result` member left out entirely. Sizes are
//! integers of bytes, keys lowercase hex; there are no floats. Every field name is ASCII, so
//! their order is plain byte order; user-chosen keys (`env`) are sorted the JCS way.
//! The domain prefix keeps a deployment signature from being valid for anything else, and
//! the `node` member (the node's public key) keeps it from being valid on any other node.
//!
//! Reads over HTTP are signed per request, also naming the node; see [`RequestAuth`].
//!
//! # Files users write
//!
//! [`DeploymentFile`] (YAML or JSON) leaves out the owner, node, signatures and results;
//! [`DeploymentFile::into_deployment`] fills them in. Parse errors name the field path,
//! e.g. `workloads[0].data.memory: "12X": ...`.

pub mod api;
mod canonical;
mod deployment;
mod keys;
mod parse;
mod request;
mod size;
mod validate;
mod workload;

pub use deployment::{
    Deployment, DeploymentFile, Signature, SignatureError, SignatureRequest, SignatureRequirement,
    DEPLOYMENT_DOMAIN,
};
pub use keys::{
    check_key_file_mode, read_key_file, write_new_key_file, KeyError, Keypair, PublicKey,
    SignatureBytes,
};
pub use parse::ParseError;
pub use request::{RequestAuth, RequestAuthError, REQUEST_DOMAIN};
pub use size::ByteSize;
pub use validate::{is_valid_deployment_name, ValidationError};
pub use workload::{
    addresses, held_addresses, is_flist_url, network_named, wireguard_key, Healthcheck, Interface,
    MachineAddress, MachineFile, MachineNetwork, Mount, Network, NetworkResult, Peer, Port,
    Protocol, PublicIp, PublicIpResult, RegistryAuth, RestartPolicy, ResultState, WireGuard,
    WireGuardEnd, Workload, WorkloadData, WorkloadFile, WorkloadName, WorkloadResult, WorkloadSpec,
    ZMachine, ZMount, MIN_MEMORY, RANGE_PREFIX, SEALED_BEGIN, SUBNET_PREFIX, WORKLOAD_TYPES,
};
