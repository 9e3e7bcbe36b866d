//! Public addresses: the host interface they live on joins a bridge of zos's (`zp<tag><N>`),
//! and each VM holding one gets a tap on that bridge, with the address's own MAC. The
//! `bridge zos` table holds that tap to its MAC and address (as every zos tap), so no other
//! VM can send from the address, and its tap can send from nothing else.
//!
//! Who holds which address is leased host-wide by owner name (the caller's resource), so
//! two managers never hand out one address.

use crate::lease::Locked;
use crate::{link, Error, Interface, Result};
use std::net::Ipv4Addr;

/// The bridge of the `index`th public interface of the config of the manager tagged `tag`
/// (a short tag: two managers on one host keep apart).
pub fn bridge_name(tag: &str, index: usize) -> String {
    let name = format!("zp{tag}{index}");
    name.chars().take(libc::IFNAMSIZ - 1).collect()
}

/// Makes `bridge` (no address of its own) with the host interface `uplink` in it, both up;
/// what exists is kept.
pub fn ensure_bridge(bridge: &str, uplink: &str) -> Result<()> {
    if !link::exists(uplink)? {
        return Err(Error::Invalid(format!(
            "the public interface {uplink} does not exist on this host: fix public_ips in the \
             node config"
        )));
    }
    link::ensure_plain_bridge(bridge)?;
    link::join_bridge(uplink, bridge)
}

/// The interface of a VM holding `ip/prefix` on `bridge`, routed by default through
/// `gateway`.
pub fn interface(bridge: &str, ip: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Interface {
    Interface {
        bridge: bridge.to_string(),
        tap: crate::lease::tap_name(ip),
        mac: crate::local::mac_for(ip),
        ip,
        prefix,
        gateway,
        mtu: 1500,
        ports: Vec::new(),
        netns: None,
        ula: None,
        default_route: true,
        routes: Vec::new(),
    }
}

/// Leases a public address to `owner`: the one it holds, else `wanted` if given (refused
/// when another owner holds it), else the first of `pool` nobody holds.
pub fn lease(owner: &str, wanted: Option<Ipv4Addr>, pool: &[Ipv4Addr]) -> Result<Ipv4Addr> {
    let mut file = Locked::open()?;
    let public = &mut file.leases.public;
    if let Some(held) = public.iter().find(|(_, o)| *o == owner).map(|(ip, _)| *ip) {
        if wanted.is_none_or(|w| w == held) {
            return Ok(held);
        }
        public.remove(&held);
    }
    let ip = match wanted {
        Some(ip) if public.contains_key(&ip) => {
            return Err(Error::Invalid(format!(
                "public IP {ip} is already taken on this node: pick another, or leave the \
                 address out to get a free one"
            )))
        }
        Some(ip) => ip,
        None => *pool
            .iter()
            .find(|ip| !public.contains_key(ip))
            .ok_or_else(|| Error::Invalid("this node has no free public IP left".to_string()))?,
    };
    public.insert(ip, owner.to_string());
    file.save()?;
    Ok(ip)
}

/// The public address `owner` holds, if any.
pub fn lease_of(owner: &str) -> Result<Option<Ipv4Addr>> {
    let file = Locked::open()?;
    let held = file.leases.public.iter().find(|(_, o)| *o == owner);
    Ok(held.map(|(ip, _)| *ip))
}

/// Gives back `owner`'s public address; nothing to do when it holds none.
pub fn release(owner: &str) -> Result<()> {
    let mut file = Locked::open()?;
    let before = file.leases.public.len();
    file.leases.public.retain(|_, o| o != owner);
    if file.leases.public.len() != before {
        file.save()?;
    }
    Ok(())
}

/// The owners holding public addresses whose names start with `prefix`.
pub fn owners(prefix: &str) -> Result<Vec<String>> {
    let file = Locked::open()?;
    let mut out: Vec<String> = file
        .leases
        .public
        .values()
        .filter(|o| o.starts_with(prefix))
        .cloned()
        .collect();
    out.sort();
    Ok(out)
}
