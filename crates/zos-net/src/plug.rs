//! One interface up and down on the host: the network it joins made if needed, its tap, its
//! rules.

use crate::{link, local, netns, private, rules, sysctl, tap, Error, Interface, Result};
use std::os::fd::OwnedFd;

/// Makes sure the interface's network exists (bridge, address, forwarding), creates its tap
/// on the bridge, and brings the base rules up to date with its elements added. Returns the tap's descriptor for QEMU;
/// the tap lives as long as a copy of it is open.
pub fn plug(iface: &Interface) -> Result<OwnedFd> {
    if let Some(ns) = &iface.netns {
        // A private network, made by its owner beforehand (see [`crate::private::ensure`]).
        let fd = netns::enter(ns, || {
            if !link::exists(&iface.bridge)? {
                return Err(Error::Invalid(format!(
                    "network namespace {ns} has no bridge {}: the network is not up",
                    iface.bridge
                )));
            }
            let fd = tap::create(&iface.tap)?;
            link::join_bridge(&iface.tap, &iface.bridge)?;
            rules::add(iface)?;
            Ok(fd)
        })?;
        rules::add_forwards(&iface.ports, private::uplink_address(ns)?)?;
        return Ok(fd);
    }
    if iface.bridge != local::BRIDGE {
        // A public bridge, made by its owner beforehand (see [`crate::public`]).
        if !link::exists(&iface.bridge)? {
            return Err(Error::Invalid(format!(
                "bridge {} does not exist: the public interface is not up",
                iface.bridge
            )));
        }
        let fd = tap::create(&iface.tap)?;
        link::join_bridge(&iface.tap, &iface.bridge)?;
        rules::add(iface)?;
        return Ok(fd);
    }
    link::ensure_bridge(&iface.bridge, iface.gateway, iface.prefix)?;
    // Forwarding is what NAT and published ports need; route_localnet (on zos's own bridge
    // only) lets a port published on 127.0.0.1 be forwarded to a guest.
    sysctl("/proc/sys/net/ipv4/ip_forward")?;
    sysctl(&format!(
        "/proc/sys/net/ipv4/conf/{}/route_localnet",
        iface.bridge
    ))?;
    let fd = tap::create(&iface.tap)?;
    link::join_bridge(&iface.tap, &iface.bridge)?;
    // Before QEMU has the tap, so no frame leaves it unfiltered.
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
