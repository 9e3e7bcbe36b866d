//! One interface up and down on the host: the network it joins made if needed, its tap, its
//! rules.

use crate::{link, local, netns, private, rules, sysctl, tap, Error, Interface, Result};
use std::os::fd::OwnedFd;

/// Makes sure the interface's network exists (the local bridge, address, forwarding; a
/// private network or a public bridge must have been made by its owner), creates its tap on
/// the bridge, and adds its rules. Returns the tap's descriptor for QEMU; the tap lives as
/// long as a copy of it is open.
pub fn plug(iface: &Interface) -> Result<OwnedFd> {
    if let Some(ns) = &iface.netns {
        // A private network (see [`crate::private::ensure`]).
        let fd = netns::enter(ns, || {
            tap_on(iface, &format!("the network in namespace {ns} is not up"))
        })?;
        rules::add_forwards(&iface.ports, private::uplink_address(ns)?)?;
        return Ok(fd);
    }
    if iface.bridge != local::BRIDGE {
        // A public bridge (see [`crate::public::ensure_bridge`]).
        return tap_on(iface, "the public interface is not up");
    }
    link::ensure_bridge(&iface.bridge, iface.gateway, iface.prefix)?;
    // Forwarding is what NAT and published ports need; route_localnet (on zos's own bridge
    // only) lets a port published on 127.0.0.1 be forwarded to a guest.
    sysctl("/proc/sys/net/ipv4/ip_forward")?;
    sysctl(&format!(
        "/proc/sys/net/ipv4/conf/{}/route_localnet",
        iface.bridge
    ))?;
    tap_on(iface, "")
}

/// The interface's tap on its bridge, which must exist (`missing` says why it would not),
/// with its rules added before QEMU has it, so no frame leaves it unfiltered.
fn tap_on(iface: &Interface, missing: &str) -> Result<OwnedFd> {
    if !link::exists(&iface.bridge)? {
        return Err(Error::Invalid(format!(
            "bridge {} does not exist: {missing}",
            iface.bridge
        )));
    }
    let fd = tap::create(&iface.tap)?;
    link::join_bridge(&iface.tap, &iface.bridge)?;
    rules::add(iface)?;
    Ok(fd)
}

/// Removes the interface's rules and its tap if it is still there (it goes by itself when
/// QEMU ends). Never fails: it runs on teardown paths, where every step must be tried.
pub fn unplug(iface: &Interface) {
    let unplug_here = || {
        rules::remove(iface);
        link::remove(&iface.tap)
    };
    if let Some(ns) = &iface.netns {
        if let Ok(ns_addr) = private::uplink_address(ns) {
            rules::remove_forwards(&iface.ports, ns_addr);
        }
    }
    let done = match &iface.netns {
        // A network already gone took the tap and its elements with it.
        Some(ns) if !netns::exists(ns) => Ok(()),
        Some(ns) => netns::enter(ns, unplug_here),
        None => unplug_here(),
    };
    if let Err(e) = done {
        tracing::warn!(tap = %iface.tap, error = %e, "removing a tap");
    }
}
