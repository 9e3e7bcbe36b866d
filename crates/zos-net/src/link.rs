//! Links over rtnetlink: the bridge (made once, idempotently, with its address), taps joined
//! to it, links removed. Each call runs its requests on a private current-thread runtime,
//! so callers stay synchronous.

use crate::{Error, Result};
use futures::TryStreamExt;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkWireguard, RouteMessageBuilder};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};

/// Runs `f` with a netlink handle.
fn with_handle<T, F, Fut>(f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::io("starting the netlink runtime", e))?;
    rt.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("opening a netlink socket", e))?;
        let task = tokio::spawn(conn);
        let out = f(handle).await;
        task.abort();
        out
    })
}

/// The kernel's errno in a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn netlink(what: String) -> impl FnOnce(rtnetlink::Error) -> Error {
    move |e| Error::Netlink {
        what,
        detail: e.to_string(),
    }
}

async fn find(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(netlink(format!("looking up link {name}"))(e)),
    }
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32> {
    find(handle, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| Error::Invalid(format!("link {name} does not exist")))
}

/// Adds a link unless one of its name exists (EEXIST is fine too: another manager may have
/// just made it).
async fn add_link(handle: &Handle, name: &str, link: LinkMessage) -> Result<()> {
    if find(handle, name).await?.is_some() {
        return Ok(());
    }
    match handle.link().add(link).execute().await {
        Err(e) if errno(&e) != Some(libc::EEXIST) => {
            Err(netlink(format!("creating link {name}"))(e))
        }
        _ => Ok(()),
    }
}

/// Makes the bridge `name` without an address and brings it up; what exists is kept.
pub fn ensure_plain_bridge(name: &str) -> Result<()> {
    with_handle(|handle| async move {
        add_link(&handle, name, LinkBridge::new(name).build()).await?;
        set_up(&handle, name).await
    })
}

/// Gives link `name` the address `addr/prefix` (kept if it has it) and brings it up.
async fn address_up(handle: &Handle, name: &str, addr: IpAddr, prefix: u8) -> Result<()> {
    let index = index_of(handle, name).await?;
    match handle.address().add(index, addr, prefix).execute().await {
        Err(e) if errno(&e) != Some(libc::EEXIST) => {
            return Err(netlink(format!("adding {addr}/{prefix} to {name}"))(e))
        }
        _ => {}
    }
    set_up(handle, name).await
}

/// Brings link `name` up.
async fn set_up(handle: &Handle, name: &str) -> Result<()> {
    let index = index_of(handle, name).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink(format!("bringing {name} up")))
}

/// Makes the bridge `name` with address `addr/prefix` and brings it up; what already exists
/// is kept, so concurrent and repeated calls are fine.
pub fn ensure_bridge(name: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
    with_handle(|handle| async move {
        add_link(&handle, name, LinkBridge::new(name).build()).await?;
        address_up(&handle, name, addr.into(), prefix).await
    })
}

/// Gives link `name` the address `addr/prefix` (kept if it has it) and brings it up.
pub fn ensure_address(name: &str, addr: IpAddr, prefix: u8) -> Result<()> {
    with_handle(|handle| async move { address_up(&handle, name, addr, prefix).await })
}

/// Brings link `name` up.
pub fn up(name: &str) -> Result<()> {
    with_handle(|handle| async move { set_up(&handle, name).await })
}

/// Makes a veth pair `name` / `peer` here unless `name` exists, and moves `peer` into the
/// network namespace open at `peer_ns`.
pub fn ensure_veth(name: &str, peer: &str, peer_ns: std::os::fd::RawFd) -> Result<()> {
    with_handle(|handle| async move {
        if find(&handle, name).await?.is_some() {
            return Ok(());
        }
        add_link(&handle, name, LinkVeth::new(name, peer).build()).await?;
        let index = index_of(&handle, peer).await?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(peer_ns)
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("moving {peer} into its namespace")))
    })
}

/// Makes a kernel WireGuard device `name`; fails where the kernel has no WireGuard.
pub fn add_wireguard(name: &str) -> Result<()> {
    with_handle(|handle| async move {
        handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
            .map_err(netlink(format!("creating WireGuard device {name}")))
    })
}

/// Sets link `name`'s MTU and brings it up.
pub fn set_mtu_up(name: &str, mtu: u32) -> Result<()> {
    with_handle(|handle| async move {
        let index = index_of(&handle, name).await?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(netlink(format!("bringing {name} up")))
    })
}

/// Makes `routes` the IPv4 routes through link `name`: missing ones added, others through
/// it removed (its own subnet's route, which the kernel keeps, is left alone).
pub fn set_routes(name: &str, routes: &[ipnet::Ipv4Net]) -> Result<()> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
    with_handle(|handle| async move {
        let index = index_of(&handle, name).await?;
        let mut listed = handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut have = Vec::new();
        while let Some(route) = listed
            .try_next()
            .await
            .map_err(netlink(format!("listing routes of {name}")))?
        {
            let through = route.attributes.contains(&RouteAttribute::Oif(index));
            if !through || route.header.protocol == RouteProtocol::Kernel {
                continue;
            }
            let dest = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let net = dest.and_then(|ip| {
                ipnet::Ipv4Net::new(ip, route.header.destination_prefix_length).ok()
            });
            match net {
                Some(net) if routes.contains(&net) => have.push(net),
                _ => {
                    handle
                        .route()
                        .del(route)
                        .execute()
                        .await
                        .map_err(netlink(format!("removing a route of {name}")))?;
                }
            }
        }
        for net in routes.iter().filter(|n| !have.contains(n)) {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .output_interface(index)
                .build();
            handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(netlink(format!("routing {net} through {name}")))?;
        }
        Ok(())
    })
}

/// Renames link `from` (down, as a link just moved is) to `to`.
pub fn rename(from: &str, to: &str) -> Result<()> {
    with_handle(|handle| async move {
        let index = index_of(&handle, from).await?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).name(to).build())
            .execute()
            .await
            .map_err(netlink(format!("renaming {from} to {to}")))
    })
}

/// Makes `gateway` the default route (kept if it is already).
pub fn default_route(gateway: Ipv4Addr) -> Result<()> {
    with_handle(|handle| async move {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(netlink(format!("routing through {gateway}")))
    })
}

/// Joins `port` to `bridge` and brings it up.
pub fn join_bridge(port: &str, bridge: &str) -> Result<()> {
    with_handle(|handle| async move {
        let br = index_of(&handle, bridge).await?;
        let index = index_of(&handle, port).await?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(br)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("joining {port} to bridge {bridge}")))
    })
}

/// Whether a link named `name` exists.
pub fn exists(name: &str) -> Result<bool> {
    with_handle(|handle| async move { Ok(find(&handle, name).await?.is_some()) })
}

/// Removes the link `name`; nothing to do when it is gone.
pub fn remove(name: &str) -> Result<()> {
    with_handle(|handle| async move {
        let Some(link) = find(&handle, name).await? else {
            return Ok(());
        };
        match handle.link().del(link.header.index).execute().await {
            Err(e) if errno(&e) != Some(libc::ENODEV) => {
                Err(netlink(format!("removing link {name}"))(e))
            }
            _ => Ok(()),
        }
    })
}
