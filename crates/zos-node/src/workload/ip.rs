//! `ip` on the node: one of the public addresses the node's config lists, leased to the
//! workload host-wide (`zos_net::public`), with its interface bridged so machines naming it
//! (`public_ip`) get a tap there (see `zmachine.rs`).

use super::{result, step_of, strip_all, Claim, Host, Kind, Step, Target};
use crate::config::PublicIps;
use std::net::Ipv4Addr;
use zos_net::public;
use zos_types::api::Resources;
use zos_types::{PublicIpResult, PublicKey, ResultState, Workload, WorkloadSpec};

/// The node side of public IPs.
pub struct Ip;

fn data(spec: &WorkloadSpec) -> Option<&zos_types::PublicIp> {
    match spec {
        WorkloadSpec::Ip(ip) => Some(ip),
        _ => None,
    }
}

/// The lease owner of resource `resource`: the node's tag keeps two nodes on one host apart.
fn owner(host: &Host, resource: &str) -> String {
    format!("{}/{resource}", host.node_tag)
}

/// Every address of the node's pools.
fn pool(host: &Host) -> Vec<Ipv4Addr> {
    host.public_ips
        .iter()
        .flat_map(|p| p.addresses.iter().map(|a| a.addr()))
        .collect()
}

/// Where `ip` lives: its pool's position (naming its bridge), the pool and the address with
/// its prefix.
fn placed(host: &Host, ip: Ipv4Addr) -> Option<(usize, &PublicIps, ipnet::Ipv4Net)> {
    host.public_ips.iter().enumerate().find_map(|(i, p)| {
        p.addresses
            .iter()
            .find(|a| a.addr() == ip)
            .map(|a| (i, p, *a))
    })
}

/// The interface a machine gets for the public address leased to resource `resource` (an
/// `ip` workload's), or why it has none.
pub fn interface(host: &Host, resource: &str) -> Result<zos_net::Interface, String> {
    let ip = public::lease_of(&owner(host, resource))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "its public IP is not up".to_string())?;
    let (index, pool, net) = placed(host, ip)
        .ok_or_else(|| format!("public IP {ip} is no longer in the node's config"))?;
    Ok(public::interface(
        &public::bridge_name(&host.node_tag, index),
        ip,
        net.prefix_len(),
        pool.gateway,
    ))
}

impl Kind for Ip {
    fn type_name(&self) -> &'static str {
        "ip"
    }

    fn rank(&self) -> u8 {
        0
    }

    fn check(&self, host: &Host, spec: &WorkloadSpec) -> Result<(), String> {
        let ip = data(spec).ok_or("not an ip")?;
        let all = pool(host);
        if all.is_empty() {
            return Err("this node has no public IPs (its config lists no public_ips)".into());
        }
        match ip.address {
            Some(a) if !all.contains(&a) => {
                let listed: Vec<String> = all.iter().map(|a| a.to_string()).collect();
                Err(format!(
                    "public IP {a} is not one of this node's ({}): pick one of those, or leave \
                     address out to get a free one",
                    listed.join(", ")
                ))
            }
            _ => Ok(()),
        }
    }

    fn demand(&self, _spec: &WorkloadSpec) -> Resources {
        Resources::default()
    }

    fn claims(&self, _owner: &PublicKey, _deployment: &str, w: &Workload) -> Vec<Claim> {
        data(&w.spec)
            .and_then(|ip| ip.address)
            .map(Claim::PublicIp)
            .into_iter()
            .collect()
    }

    fn converge(&self, host: &Host, target: &Target) -> Step {
        let w = target.workload;
        let resource = self.resource(target.id, w.name.as_str());
        let wanted = data(&w.spec).and_then(|ip| ip.address);
        let made = public::lease(&owner(host, &resource), wanted, &pool(host))
            .map_err(|e| e.to_string())
            .and_then(|ip| {
                let (index, p, net) =
                    placed(host, ip).ok_or_else(|| format!("{ip} is not in the node's config"))?;
                public::ensure_bridge(&public::bridge_name(&host.node_tag, index), &p.interface)
                    .map_err(|e| e.to_string())?;
                Ok(PublicIpResult {
                    address: net,
                    gateway: p.gateway,
                })
            });
        let r = match made {
            Ok(info) => result(
                ResultState::Ok,
                "held",
                serde_json::to_value(info).unwrap_or_default(),
            ),
            Err(e) => result(ResultState::Error, e, serde_json::Value::Null),
        };
        step_of(r)
    }

    fn resource(&self, id: &str, workload: &str) -> String {
        format!("{id}-{workload}")
    }

    fn resources(&self, host: &Host) -> std::io::Result<Vec<String>> {
        let prefix = owner(host, "");
        let owners = public::owners(&prefix).map_err(std::io::Error::other)?;
        Ok(strip_all(&owners, &prefix))
    }

    fn remove(&self, host: &Host, resource: &str) -> Result<(), String> {
        public::release(&owner(host, resource)).map_err(|e| e.to_string())
    }

    fn quarantine(
        &self,
        host: &Host,
        resource: &str,
        _into: &std::path::Path,
    ) -> Result<(), String> {
        // An address holds no data: given back, not kept.
        self.remove(host, resource)
    }
}
