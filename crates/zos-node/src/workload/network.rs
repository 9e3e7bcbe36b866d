//! `network` on the node: one owner's subnet in a network namespace of its own, made with
//! `zos_net::private` (bridge holding the gateway, uplink to the host, NAT, isolation).
//! Zmachines of the deployment join it with a tap each (see `zmachine.rs`).

use super::{result, Claim, Host, Kind, Step, Target};
use zos_net::private::{self, PrivateNet};
use zos_net::resolver::{self, HostNames};
use zos_types::api::Resources;
use zos_types::{NetworkResult, PublicKey, ResultState, WorkloadSpec};
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

/// How the network `resource` is laid out on the host.
pub fn plan(host: &Host, resource: &str, net: &zos_types::Network) -> PrivateNet {
    PrivateNet {
        netns: netns_of(host, resource),
        gateway: net.gateway(),
        prefix: net.subnet.prefix_len(),
        egress: net.egress,
    }
}

/// What the network's resolver answers: each machine on it by its workload name and by
/// `WORKLOAD.DEPLOYMENT.internal`, at the address it has (or will have) there.
fn names(target: &Target) -> Vec<HostNames> {
    let network = target.workload.name.as_str();
    let deployment = hostname_for(target.name);
    zos_types::addresses(target.deployment)
        .into_iter()
        .filter(|((_, net), _)| net == network)
        .map(|((machine, _), ip)| {
            let host = hostname_for(&machine);
            (
                ip,
                vec![host.clone(), format!("{host}.{deployment}.internal")],
            )
        })
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

    fn claims(&self, owner: &PublicKey, name: &str, spec: &WorkloadSpec) -> Vec<Claim> {
        data(spec)
            .map(|n| Claim::Range {
                owner: *owner,
                range: n.ip_range,
                network: name.to_string(),
            })
            .into_iter()
            .collect()
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
        let plan = plan(host, &resource, net);
        let made = private::ensure(&plan)
            .and_then(|()| resolver::ensure(&plan.netns, plan.gateway, &names(target)));
        let r = match made {
            Ok(()) => {
                let info = NetworkResult {
                    gateway: net.gateway(),
                    subnet: net.subnet,
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
        let usable = match r.state {
            ResultState::Ok => Ok(()),
            _ => Err(r.message.clone()),
        };
        Step {
            result: Some(r),
            usable,
        }
    }

    fn resource(&self, id: &str, workload: &str) -> String {
        format!("{id}-{workload}")
    }

    fn resources(&self, host: &Host) -> std::io::Result<Vec<String>> {
        let prefix = prefix(host);
        let names = private::names(&prefix).map_err(std::io::Error::other)?;
        Ok(names
            .iter()
            .filter_map(|n| n.strip_prefix(&prefix).map(str::to_string))
            .collect())
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
