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

/// What zos-init configures in the guest: each interface's address, its default route and
/// other routes as the interface says; as resolver, a private network's own (on its
/// gateway, see `zos_net::resolver`), or on the local network the host's (see
/// `zos_net::dns`).
pub(super) fn guest_network(spec: &VmSpec) -> Option<GuestNetwork> {
    let dns = match interfaces(spec).find(|i| i.netns.is_some()) {
        Some(private) => vec![private.gateway.into()],
        None => zos_net::dns::host_resolvers(),
    };
    let interfaces: Vec<GuestInterface> = interfaces(spec)
        .map(|iface| GuestInterface {
            mac: iface.mac.clone(),
            address: iface.ip,
            prefix: iface.prefix,
            address6: iface.ula,
            gateway: iface.default_route.then_some(iface.gateway),
            mtu: iface.mtu,
            routes: iface
                .routes
                .iter()
                .map(|r| zos_init::GuestRoute {
                    to: r.network(),
                    prefix: r.prefix_len(),
                    via: iface.gateway,
                })
                .collect(),
        })
        .collect();
    (!interfaces.is_empty()).then(|| GuestNetwork {
        interfaces,
        dns,
        hosts: Vec::new(),
    })
}

/// The NoCloud seed's `network-config` (version 2) for a VM-mode guest's interfaces: each
/// matched by its MAC and named `ethN` in order, its address, its gateway (`gateway4`) when
/// its default route goes there, its other routes, and the resolvers zos-init would give a
/// container. JSON, which YAML readers (cloud-init's) take as it is. `None` without
/// interfaces.
pub(super) fn seed_network_config(spec: &VmSpec) -> Option<String> {
    let net = guest_network(spec)?;
    let mut ethernets = serde_json::Map::new();
    for (i, iface) in net.interfaces.iter().enumerate() {
        let addresses: Vec<String> = [format!("{}/{}", iface.address, iface.prefix)]
            .into_iter()
            .chain(iface.address6.map(|a| format!("{a}/64")))
            .collect();
        let mut e = serde_json::json!({
            "match": { "macaddress": iface.mac },
            "set-name": format!("eth{i}"),
            "addresses": addresses,
            "mtu": iface.mtu,
        });
        let routes: Vec<serde_json::Value> = iface
            .routes
            .iter()
            .map(|r| serde_json::json!({ "to": format!("{}/{}", r.to, r.prefix), "via": r.via.to_string() }))
            .collect();
        // `gateway4`, not a 0.0.0.0/0 route: cloud-init's ifupdown renderer (Debian 12's
        // cloud images) writes routes as `post-up route add`, which needs net-tools, and a
        // stock image has none; a gateway becomes the interface's own `gateway` line. The
        // other routes have no such form in version 2: on such a guest they hold only
        // where net-tools is installed.
        if let Some(gw) = iface.gateway {
            e["gateway4"] = serde_json::json!(gw.to_string());
        }
        if !routes.is_empty() {
            e["routes"] = serde_json::Value::Array(routes);
        }
        if !net.dns.is_empty() {
            let dns: Vec<String> = net.dns.iter().map(|a| a.to_string()).collect();
            e["nameservers"] = serde_json::json!({ "addresses": dns });
        }
        ethernets.insert(format!("eth{i}"), e);
    }
    let config = serde_json::json!({ "version": 2, "ethernets": ethernets });
    serde_json::to_string_pretty(&config).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Boot, FlistSource, NetSpec};
    use std::process::Command;

    /// A disk-image VM on a private network at 10.20.1.5, as a node makes it.
    fn disk_vm_on_a_network() -> VmSpec {
        let net = zos_net::private::PrivateNet {
            netns: "n".into(),
            gateway: "10.20.1.1".parse().unwrap(),
            prefix: 24,
            egress: true,
            wireguard: None,
            ula_gateway: Some("fd00:1:2:1::1".parse().unwrap()),
        };
        VmSpec {
            cpus: 1,
            memory_mib: 256,
            hostname: "web".into(),
            accel: Default::default(),
            boot: Boot::Disk {
                flist: FlistSource {
                    path: "/x.fl".into(),
                    stores: Vec::new(),
                },
                image: "/image.qcow2".into(),
                format: crate::disk::DiskFormat::Qcow2,
                root_size: 1 << 30,
                seed: Default::default(),
                network: Some(NetSpec {
                    joined: vec![net.interface("10.20.1.5".parse().unwrap())],
                    ..NetSpec::default()
                }),
            },
            disks: Vec::new(),
        }
    }

    /// The seed's network-config, read by cloud-init's own converter (`cloud-init devel
    /// net-convert`, as a guest's cloud-init reads it) into Debian's ifupdown files: the
    /// address, the default route, the resolver and the name given to the MAC must all be
    /// there.
    #[test]
    fn cloud_init_reads_the_seed_network_config() {
        let config = seed_network_config(&disk_vm_on_a_network()).expect("a network-config");
        let Some(cloud_init) = zos_testkit::program("cloud-init") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("network-config");
        std::fs::write(&input, &config).unwrap();
        let out = dir.path().join("out");
        let run = Command::new(cloud_init)
            .args([
                "devel",
                "net-convert",
                "-k",
                "yaml",
                "-D",
                "debian",
                "-O",
                "eni",
                "-p",
            ])
            .arg(&input)
            .arg("-d")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "cloud-init refused:\n{config}\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let eni =
            std::fs::read_to_string(out.join("etc/network/interfaces.d/50-cloud-init")).unwrap();
        for want in [
            "iface eth0 inet static",
            "address 10.20.1.5/24",
            "iface eth0 inet6 static",
            "address fd00:1:2:1::5/64",
            "dns-nameservers 10.20.1.1",
            // ifupdown's own line, which needs no net-tools in the guest.
            "gateway 10.20.1.1",
        ] {
            assert!(eni.contains(want), "{want} in\n{eni}");
        }
        // A `route add` line would need net-tools, which stock images lack.
        assert!(!eni.contains("route add"), "{eni}");
        let udev =
            std::fs::read_to_string(out.join("etc/udev/rules.d/70-persistent-net.rules")).unwrap();
        assert!(
            udev.contains("ATTR{address}==\"02:5a:0a:14:01:05\", NAME=\"eth0\""),
            "{udev}"
        );
    }
}
