//! Addresses and host ports of the local network, leased to VMs in one file under a lock:
//! two `zos run` at once never get one address or one host port, and leases survive
//! restarts of whoever manages the VMs (and of the host: the file is on disk).
//!
//! The file is host-wide (the bridge and the rules are), so managers with different data
//! dirs share it: `ZOS_NET_DIR`, default `/var/lib/zos/net`. A lease names its owner (the
//! VM's directory); one whose owner has no `vm.json` any more is taken back after a grace
//! period (the owner was removed by hand, or crashed between lease and record).

use crate::{local, Error, Interface, PortMap, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a lease whose owner has no record yet is kept: a create in progress writes its
/// record within this.
const GRACE: Duration = Duration::from_secs(300);

/// The directory holding the lease file and its lock.
pub fn state_dir() -> PathBuf {
    std::env::var_os("ZOS_NET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/zos/net"))
}

#[derive(Default, Serialize, Deserialize)]
pub(crate) struct Leases {
    /// By owner (a VM's directory).
    leases: BTreeMap<String, Lease>,
    /// The uplinks of private networks (see [`crate::private`]): their number, by namespace.
    #[serde(default)]
    links: BTreeMap<String, LinkLease>,
    /// Public addresses (see [`crate::public`]): their holder, by address.
    #[serde(default)]
    pub(crate) public: BTreeMap<Ipv4Addr, String>,
}

#[derive(Clone, Serialize, Deserialize)]
struct LinkLease {
    index: u16,
    /// Unix seconds when it was given.
    since: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct Lease {
    /// An address on the local network; `None` for a VM on private networks, which leases
    /// only its host ports.
    ip: Option<Ipv4Addr>,
    #[serde(default)]
    ports: Vec<PortMap>,
    /// Unix seconds when it was given.
    since: u64,
}

/// The lease file, locked for as long as it lives.
pub(crate) struct Locked {
    path: PathBuf,
    _lock: fs::File,
    pub(crate) leases: Leases,
}

impl Locked {
    /// Opens and locks the lease file.
    pub(crate) fn open() -> Result<Locked> {
        let lock = crate::lock::exclusive("lock")?;
        let path = state_dir().join("leases.json");
        let leases = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Invalid(format!(
                    "{} is damaged ({e}): fix or remove it (its VMs get new addresses)",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Leases::default(),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        Ok(Locked {
            path,
            _lock: lock,
            leases,
        })
    }

    /// Writes the leases back (a temp file renamed into place).
    pub(crate) fn save(&self) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.leases)
            .map_err(|e| Error::Invalid(format!("encoding leases: {e}")))?;
        fs::write(&tmp, bytes)
            .and_then(|_| fs::rename(&tmp, &self.path))
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }

    /// Checks that `ports` can be leased to `owner`: each host port once, none published by
    /// another owner, none a host process listens on. Drops stale leases first.
    fn check_ports(&mut self, owner: &str, ports: &[PortMap]) -> Result<()> {
        for (i, p) in ports.iter().enumerate() {
            if let Some(q) = ports[..i].iter().find(|q| q.clashes(p)) {
                return Err(Error::Invalid(format!(
                    "host port {p} is published twice ({q} too): give each host port once"
                )));
            }
        }
        self.reclaim();
        for p in ports {
            let taken = self
                .leases
                .leases
                .iter()
                .filter(|(o, _)| o.as_str() != owner)
                .any(|(_, l)| l.ports.iter().any(|q| q.clashes(p)));
            if taken {
                return Err(Error::Invalid(format!(
                    "host port {p} is already published by another VM: pick another host port"
                )));
            }
            p.check_host_free()?;
        }
        Ok(())
    }

    /// Drops leases whose owner is gone (past the grace period): a VM without its record,
    /// an uplink without its namespace.
    fn reclaim(&mut self) {
        let now = now();
        let young = |since: u64| now.saturating_sub(since) < GRACE.as_secs();
        self.leases
            .leases
            .retain(|owner, lease| Path::new(owner).join("vm.json").exists() || young(lease.since));
        self.leases
            .links
            .retain(|netns, lease| crate::netns::exists(netns) || young(lease.since));
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Leases an address on the local network and the host ports of `ports` to `owner` (a VM's
/// directory), and returns the interface to plug. Refuses a host port another VM publishes
/// or a host process listens on, before anything is made.
pub fn allocate(owner: &Path, ports: &[PortMap]) -> Result<Interface> {
    let owner_key = owner.to_string_lossy().into_owned();
    let mut file = Locked::open()?;
    file.check_ports(&owner_key, ports)?;
    let used: std::collections::HashSet<Ipv4Addr> = file
        .leases
        .leases
        .iter()
        .filter(|(o, _)| **o != owner_key)
        .filter_map(|(_, l)| l.ip)
        .collect();
    let base = u32::from(local::SUBNET);
    let size = 1u32 << (32 - local::PREFIX);
    // .0 is the network, .1 the gateway, the last the broadcast address.
    let ip = (2..size - 1)
        .map(|i| Ipv4Addr::from(base + i))
        .find(|ip| !used.contains(ip) && *ip != local::GATEWAY)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the local network {} has no free address left: remove VMs you no longer need",
                local::cidr()
            ))
        })?;
    file.leases.leases.insert(
        owner_key,
        Lease {
            ip: Some(ip),
            ports: ports.to_vec(),
            since: now(),
        },
    );
    file.save()?;
    Ok(local_interface(ip, ports))
}

/// Leases host ports `ports` to `owner` (a VM's directory) without an address: a VM on
/// private networks, whose ports are forwarded into its network. Refused as in
/// [`allocate`].
pub fn reserve_ports(owner: &Path, ports: &[PortMap]) -> Result<()> {
    let owner_key = owner.to_string_lossy().into_owned();
    let mut file = Locked::open()?;
    file.check_ports(&owner_key, ports)?;
    file.leases.leases.insert(
        owner_key,
        Lease {
            ip: None,
            ports: ports.to_vec(),
            since: now(),
        },
    );
    file.save()
}

/// The interface on the local network with address `ip` and `ports` published.
fn local_interface(ip: Ipv4Addr, ports: &[PortMap]) -> Interface {
    Interface {
        bridge: local::BRIDGE.to_string(),
        tap: tap_name(ip),
        mac: local::mac_for(ip),
        ip,
        prefix: local::PREFIX,
        gateway: local::GATEWAY,
        mtu: local::MTU,
        ports: ports.to_vec(),
        netns: None,
        ula: None,
        default_route: true,
        routes: Vec::new(),
    }
}

/// The tap of a guest address: the zos prefix and the address in hex, 10 bytes (Linux allows
/// 15), unique while the address is leased.
pub(crate) fn tap_name(ip: Ipv4Addr) -> String {
    format!("{}{:08x}", crate::rules::TAP_PREFIX, u32::from(ip))
}

/// The number of the uplink of the private network in namespace `netns`: the one it has,
/// or the lowest free one (below `max`), leased to it until [`release_link`].
pub fn link_for(netns: &str, max: u16) -> Result<u16> {
    let mut file = Locked::open()?;
    if let Some(lease) = file.leases.links.get(netns) {
        return Ok(lease.index);
    }
    file.reclaim();
    let used: std::collections::HashSet<u16> =
        file.leases.links.values().map(|l| l.index).collect();
    let index = (0..max).find(|i| !used.contains(i)).ok_or_else(|| {
        Error::Invalid(format!(
            "this host has {max} private networks already: remove networks no longer needed"
        ))
    })?;
    file.leases.links.insert(
        netns.to_string(),
        LinkLease {
            index,
            since: now(),
        },
    );
    file.save()?;
    Ok(index)
}

/// The uplink number leased to the network in `netns`, if any.
pub fn link_of(netns: &str) -> Result<Option<u16>> {
    Ok(Locked::open()?.leases.links.get(netns).map(|l| l.index))
}

/// Gives back the uplink number of the network in `netns`; nothing to do when it has none.
pub fn release_link(netns: &str) -> Result<()> {
    let mut file = Locked::open()?;
    if file.leases.links.remove(netns).is_some() {
        file.save()?;
    }
    Ok(())
}

/// Gives back `owner`'s address and host ports; nothing to do when it has none.
pub fn release(owner: &Path) -> Result<()> {
    let mut file = Locked::open()?;
    if file
        .leases
        .leases
        .remove(&*owner.to_string_lossy())
        .is_some()
    {
        file.save()?;
    }
    Ok(())
}

/// An interface as [`allocate`] makes them, for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn tests_interface() -> Interface {
    local_interface(Ipv4Addr::new(10, 77, 0, 5), &[])
}
