//! A VM's network on the host side: its interface leased at create and given back at
//! delete (zos-net), its tap plugged at start and handed to QEMU as a descriptor with a
//! virtio-net device, unplugged at teardown, and what zos-init is told to configure.

use super::jail::Jail;
use super::record::load;
use crate::spec::{NetSpec, VmSpec};
use crate::{Error, Result};
use std::ffi::OsString;
use std::path::Path;
use zos_init::{GuestInterface, GuestNetwork};

fn net_error(e: zos_net::Error) -> Error {
    Error::Invalid(format!("network: {e}"))
}

/// Leases an interface on the local network for the VM in `dir`, with `ports` published.
pub(super) fn lease(dir: &Path, ports: &[zos_net::PortMap]) -> Result<zos_net::Interface> {
    zos_net::allocate(dir, ports).map_err(net_error)
}

/// Leases the host ports of the VM in `dir`'s interfaces on its caller's networks.
pub(super) fn reserve_ports(dir: &Path, net: &NetSpec) -> Result<()> {
    let ports: Vec<zos_net::PortMap> = net.joined.iter().flat_map(|i| i.ports.clone()).collect();
    if ports.is_empty() {
        return Ok(());
    }
    zos_net::lease::reserve_ports(dir, &ports).map_err(net_error)
}

/// Gives back the lease of the VM that was in `dir`; a failure is logged, not returned:
/// the VM is gone either way, and a stale lease is taken back later.
pub(super) fn release(dir: &Path) {
    if let Err(e) = zos_net::release(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "giving back a network lease");
    }
}

/// The VM's interfaces, in guest order.
fn interfaces(spec: &VmSpec) -> impl Iterator<Item = &zos_net::Interface> {
    spec.network().into_iter().flat_map(|n| n.interfaces())
}

/// Plugs the VM's interfaces (tap on its bridge, rules) and adds the devices QEMU gives the
/// guest: `-netdev tap` on each tap's descriptor, `virtio-net-device` (virtio-mmio, as
/// `microvm` has no PCI) with its MAC.
pub(super) fn push_network(args: &mut Vec<OsString>, jail: &mut Jail, spec: &VmSpec) -> Result<()> {
    for (i, iface) in interfaces(spec).enumerate() {
        let fd = jail.hand_over(zos_net::plug(iface).map_err(net_error)?);
        for a in [
            "-netdev".to_string(),
            format!("tap,id=net{i},fd={fd}"),
            "-device".to_string(),
            format!("virtio-net-device,netdev=net{i},mac={}", iface.mac),
        ] {
            args.push(a.into());
        }
    }
    Ok(())
}

/// Removes what [`push_network`] plugged for the VM in `dir` (its rules, and its taps if
/// QEMU has not taken them along); nothing when it has no network or no record.
pub(super) fn unplug(dir: &Path) {
    if let Ok(record) = load(dir) {
        interfaces(&record.spec).for_each(zos_net::unplug);
    }
}

/// What zos-init configures in the guest: each interface's address, the first one's
/// gateway as default route; as resolver, a private network's own (on its gateway, see
/// `zos_net::resolver`), or on the local network the host's (see `zos_net::dns`).
pub(super) fn guest_network(spec: &VmSpec) -> Option<GuestNetwork> {
    let dns = match interfaces(spec).next() {
        Some(first) if first.netns.is_some() => vec![first.gateway.into()],
        _ => zos_net::dns::host_resolvers(),
    };
    let interfaces: Vec<GuestInterface> = interfaces(spec)
        .enumerate()
        .map(|(i, iface)| GuestInterface {
            mac: iface.mac.clone(),
            address: iface.ip,
            prefix: iface.prefix,
            gateway: (i == 0).then_some(iface.gateway),
            mtu: iface.mtu,
        })
        .collect();
    (!interfaces.is_empty()).then(|| GuestNetwork {
        interfaces,
        dns,
        hosts: Vec::new(),
    })
}
