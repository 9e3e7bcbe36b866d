//! `network` on the node: one owner's subnet in a network namespace of its own, made with
//! `zos_net::private` (bridge holding the gateway, uplink to the host, NAT, isolation).
//! Zmachines of the deployment join it with a tap each (see `zmachine.rs`).

use super::{result, step_of, strip_all, Claim, Host, Kind, Step, Target};
use sha2::{Digest, Sha256};
use zos_net::private::{self, PrivateNet};
use zos_net::resolver::{self, HostNames};
use zos_net::wireguard;
use zos_types::api::Resources;
use zos_types::{NetworkResult, PublicKey, ResultState, WireGuardEnd, Workload, WorkloadSpec};
use zos_vmm::spec::hostname_for;

/// The node side of networks.
pub struct Network;

/// The namespace names of this node's networks start with this, then the resource name: the
/// node's tag keeps two nodes on one host (tests do that) out of each other's networks.
fn prefix(host: &Host) -> String {
    format!("zos-{}-", host.node_tag)
}

/// The namespace of network resource `resource`.
pub fn netns_of(host: &Host, resource: &str) -> String {
    format!("{}{resource}", prefix(host))
}

/// How the network `resource` is laid out on the host (its WireGuard link aside: see
/// [`wireguard_link`]).
pub fn plan(
    host: &Host,
    owner: &PublicKey,
    resource: &str,
    net: &zos_types::Network,
) -> PrivateNet {
    PrivateNet {
        netns: netns_of(host, resource),
        gateway: net.gateway(),
        prefix: net.subnet.prefix_len(),
        egress: net.egress,
        wireguard: None,
        ula_gateway: Some(net.ula_of(owner, net.gateway())),
    }
}

/// What names network `network` of `owner`'s deployment `deployment` for its WireGuard key
/// and port: the same on every node, so one name wires a network across nodes.
fn wireguard_context(owner: &PublicKey, deployment: &str, network: &str) -> Vec<u8> {
    format!("{owner}/{deployment}/{network}").into_bytes()
}

/// The UDP port network `network` of `owner`'s deployment `deployment` listens on for
/// WireGuard: picked from its name in 20000-59999, so a client knows it before deploying;
/// two networks on one node that pick the same are refused at admission (a claim).
pub fn wireguard_port(owner: &PublicKey, deployment: &str, network: &str) -> u16 {
    let mut h = Sha256::new();
    h.update(b"zos-wireguard-port-v1\n");
    h.update(wireguard_context(owner, deployment, network));
    let d = h.finalize();
    20000 + u16::from_be_bytes([d[0], d[1]]) % 40000
}

/// The private key of network `network` of `owner`'s deployment `deployment` on this node:
/// derived from the node's identity, so it is never stored nor sent, and the same after a
/// restart.
fn wireguard_private_key(
    host: &Host,
    owner: &PublicKey,
    deployment: &str,
    network: &str,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(host.wireguard_seed);
    h.update(wireguard_context(owner, deployment, network));
    h.finalize().into()
}

/// This node's end of the WireGuard link of network `network` of `owner`'s deployment
/// `deployment`: what its peers need, known before the network is deployed.
pub fn wireguard_end(
    host: &Host,
    owner: &PublicKey,
    deployment: &str,
    network: &str,
) -> WireGuardEnd {
    let key = wireguard_private_key(host, owner, deployment, network);
    let listen_port = wireguard_port(owner, deployment, network);
    WireGuardEnd {
        public_key: zos_net::wireguard::public_key(&key),
        listen_port,
        endpoint: host
            .wireguard_host
            .as_ref()
            .map(|h| format!("{h}:{listen_port}")),
    }
}

/// The network's WireGuard link as zos-net makes it.
fn wireguard_link(host: &Host, target: &Target, wg: &zos_types::WireGuard) -> wireguard::Link {
    let network = target.workload.name.as_str();
    wireguard::Link {
        private_key: wireguard_private_key(host, target.owner, target.name, network),
        listen_port: wireguard_port(target.owner, target.name, network),
        peers: wg
            .peers
            .iter()
            .map(|p| wireguard::LinkPeer {
                public_key: p.public_key.clone(),
                allowed_ips: p.routed(),
                endpoint: p.endpoint,
            })
            .collect(),
    }
}

/// What the network's resolver answers: each machine on it by its workload name and its
/// interface's aliases, and each of those as `NAME.DEPLOYMENT.internal`, at the address it
/// has (or will have) there.
fn names(target: &Target, net: &zos_types::Network) -> Vec<HostNames> {
    let network = target.workload.name.as_str();
    let deployment = hostname_for(target.name);
    zos_types::addresses(target.deployment)
        .into_iter()
        .filter(|((_, net), _)| net == network)
        .flat_map(|((machine, _), ip)| {
            let host = hostname_for(&machine);
            let names: Vec<String> = std::iter::once(host)
                .chain(aliases(target.deployment, &machine, network))
                .flat_map(|name| {
                    let full = format!("{name}.{deployment}.internal");
                    [name, full]
                })
                .collect();
            let ula = net.ula_of(target.owner, ip);
            [(ip.into(), names.clone()), (ula.into(), names)]
        })
        .collect()
}

/// The aliases machine `machine` of `deployment` asks for on `network`.
fn aliases(deployment: &[Workload], machine: &str, network: &str) -> Vec<String> {
    deployment
        .iter()
        .filter(|w| w.name.as_str() == machine)
        .filter_map(|w| match &w.spec {
            WorkloadSpec::Zmachine(m) => Some(&m.network.interfaces),
            _ => None,
        })
        .flatten()
        .filter(|i| i.network.as_str() == network)
        .flat_map(|i| i.aliases.clone())
        .collect()
}

fn data(spec: &WorkloadSpec) -> Option<&zos_types::Network> {
    match spec {
        WorkloadSpec::Network(n) => Some(n),
        _ => None,
    }
}

impl Kind for Network {
    fn type_name(&self) -> &'static str {
        "network"
    }

    fn rank(&self) -> u8 {
        0
    }

    fn demand(&self, _spec: &WorkloadSpec) -> Resources {
        Resources::default()
    }

    fn check(&self, _host: &Host, spec: &WorkloadSpec) -> Result<(), String> {
        data(spec)
            .map(|_| ())
            .ok_or_else(|| "not a network".to_string())
    }

    fn claims(&self, owner: &PublicKey, deployment: &str, w: &Workload) -> Vec<Claim> {
        let Some(n) = data(&w.spec) else {
            return Vec::new();
        };
        let name = w.name.as_str();
        let mut claims = vec![Claim::Range {
            owner: *owner,
            range: n.ip_range,
            network: name.to_string(),
        }];
        if n.wireguard.is_some() {
            claims.push(Claim::HostPort {
                port: wireguard_port(owner, deployment, name),
                protocol: zos_types::Protocol::Udp,
                remedy: "the network's WireGuard port is picked from the owner, deployment \
                         and network names: rename the network (`zos net key` shows the port)",
            });
        }
        claims
    }

    fn converge(&self, host: &Host, target: &Target) -> Step {
        let w = target.workload;
        let Some(net) = data(&w.spec) else {
            return Step {
                result: Some(result(
                    ResultState::Error,
                    "not a network",
                    Default::default(),
                )),
                usable: Err("not a network".into()),
            };
        };
        let resource = self.resource(target.id, w.name.as_str());
        let mut plan = plan(host, target.owner, &resource, net);
        plan.wireguard = net
            .wireguard
            .as_ref()
            .map(|wg| wireguard_link(host, target, wg));
        let made = private::ensure(&plan)
            .and_then(|()| resolver::ensure(&plan.netns, plan.gateway, &names(target, net)));
        let r = match made {
            Ok(()) => {
                let info = NetworkResult {
                    gateway: net.gateway(),
                    subnet: net.subnet,
                    wireguard: net
                        .wireguard
                        .as_ref()
                        .map(|_| wireguard_end(host, target.owner, target.name, w.name.as_str())),
                };
                let data = serde_json::to_value(info).unwrap_or_default();
                result(ResultState::Ok, "up", data)
            }
            Err(e) => {
                // Nothing half-made stays: the machines cannot join it anyway.
                let _ = private::remove(&plan.netns);
                result(ResultState::Error, e.to_string(), serde_json::Value::Null)
            }
        };
        step_of(r)
    }

    fn resource(&self, id: &str, workload: &str) -> String {
        format!("{id}-{workload}")
    }

    fn resources(&self, host: &Host) -> std::io::Result<Vec<String>> {
        let prefix = prefix(host);
        let names = private::names(&prefix).map_err(std::io::Error::other)?;
        Ok(strip_all(&names, &prefix))
    }

    fn remove(&self, host: &Host, resource: &str) -> Result<(), String> {
        private::remove(&netns_of(host, resource)).map_err(|e| e.to_string())
    }

    fn quarantine(
        &self,
        host: &Host,
        resource: &str,
        _into: &std::path::Path,
    ) -> Result<(), String> {
        // A network holds no data: nothing to keep, and leaving it up would leave its
        // uplink and rules on the host.
        self.remove(host, resource)
    }
}
