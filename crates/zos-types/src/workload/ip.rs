//! `ip`: one of the node's public IPv4 addresses, held by the deployment for as long as the
//! workload lives; a zmachine of the deployment names it (`public_ip`) to get a second
//! interface with that address.

use super::{Workload, WorkloadData};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// A public address from the node's pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicIp {
    /// The address to take; left out, the node gives a free one of its pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
}

impl WorkloadData for PublicIp {
    fn problems(&self, _deployment: &[Workload]) -> Vec<String> {
        Vec::new()
    }
}

/// An `ip` workload's result data: the address it holds and how it reaches the world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicIpResult {
    /// The address with the prefix length of its subnet, e.g. `198.51.100.10/24`.
    pub address: ipnet::Ipv4Net,
    /// The subnet's gateway.
    pub gateway: Ipv4Addr,
}
