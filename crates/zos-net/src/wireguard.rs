//! A private network's WireGuard link: one device in the network's namespace, listening on
//! the namespace's uplink (the host forwards the port to it), routes to each peer's
//! addresses. The kernel's WireGuard when the host has the module, else `boringtun-cli`
//! (userspace, same configuration protocol); either way it is configured with
//! `wg setconf`, so `wg show` works on both.
//!
//! The device is named after the network's uplink number (`zw<N>`): a userspace device's
//! control socket lives in the host-wide `/var/run/wireguard`, so names must be unique on
//! the host, not only in the namespace.

use crate::{link, netns, Error, Result};
use std::io::Write;
use std::process::{Command, Stdio};

/// The MTU of a WireGuard device: 1500 less WireGuard's overhead over IPv4.
pub const MTU: u32 = 1420;

/// What a network's link is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// The network's private key on this host.
    pub private_key: [u8; 32],
    /// The UDP port it listens on.
    pub listen_port: u16,
    /// The other ends.
    pub peers: Vec<LinkPeer>,
}

/// One other end of a link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkPeer {
    /// Its public key (base64).
    pub public_key: String,
    /// What it may send from and is routed to (`a.b.c.d/len`).
    pub allowed_ips: Vec<ipnet::Ipv4Net>,
    /// Where to reach it, if known.
    pub endpoint: Option<std::net::SocketAddr>,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The public key (base64) of a private key.
pub fn public_key(private_key: &[u8; 32]) -> String {
    let secret = x25519_dalek::StaticSecret::from(*private_key);
    b64(x25519_dalek::PublicKey::from(&secret).as_bytes())
}

/// The device of the network whose uplink is number `index`.
pub fn device_name(index: u16) -> String {
    format!("zw{index}")
}

/// The configuration `wg setconf` takes.
fn config(link: &Link) -> String {
    let mut out = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {}\n",
        b64(&link.private_key),
        link.listen_port
    );
    for p in &link.peers {
        let allowed: Vec<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
        out.push_str(&format!(
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}\n",
            p.public_key,
            allowed.join(", ")
        ));
        if let Some(endpoint) = p.endpoint {
            // Keeps the path open through NATs and lets the far end learn this one.
            out.push_str(&format!(
                "Endpoint = {endpoint}\nPersistentKeepalive = 25\n"
            ));
        }
    }
    out
}

/// Runs `program args` (here, in the caller's namespace) with `input` on stdin.
fn run(program: &str, args: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::io(
                format!("running {program} (install it with scripts/setup)"),
                e,
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| Error::io(format!("writing to {program}"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for {program}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Makes the device `dev` in this thread's namespace: the kernel's if it has WireGuard,
/// else a `boringtun-cli` daemon (which makes a TUN device of that name).
fn create(dev: &str, log: &std::path::Path) -> Result<()> {
    if link::add_wireguard(dev).is_ok() {
        return Ok(());
    }
    // Its privilege drop needs a login session (getlogin), which a service has not.
    let log = format!("--log={}", log.display());
    run(
        &boringtun(),
        &["--disable-drop-privileges", "--threads=1", &log, dev],
        "",
    )
}

/// `boringtun-cli` on `PATH`, or where `cargo install` (scripts/setup) puts it.
fn boringtun() -> String {
    let name = "boringtun-cli";
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()));
    let cargo =
        std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo/bin").join(name));
    match cargo {
        Some(path) if !on_path && path.is_file() => path.display().to_string(),
        _ => name.to_string(),
    }
}

/// Makes the link of the network in `netns` (whose uplink is number `index`) as `link`
/// says: the device made if missing, its whole configuration set (peers no longer listed
/// go), up, and a route to each peer's addresses (others through it removed).
pub fn ensure(netns: &str, index: u16, link: &Link) -> Result<()> {
    let dev = device_name(index);
    let dir = crate::lease::state_dir().join("wireguard");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let log = dir.join(format!("{dev}.log"));
    netns::enter(netns, || {
        if !link::exists(&dev)? {
            create(&dev, &log)?;
        }
        run("wg", &["setconf", &dev, "/dev/stdin"], &config(link))?;
        link::set_mtu_up(&dev, MTU)?;
        let routes: Vec<ipnet::Ipv4Net> = link
            .peers
            .iter()
            .flat_map(|p| p.allowed_ips.clone())
            .collect();
        link::set_routes(&dev, &routes)
    })
}

/// Removes the link of the network in `netns` (uplink number `index`), if it has one: its
/// device (a userspace one's daemon ends with it) and its control socket.
pub fn remove(netns: &str, index: u16) -> Result<()> {
    let dev = device_name(index);
    if netns::exists(netns) {
        netns::enter(netns, || link::remove(&dev))?;
    }
    let _ = std::fs::remove_file(format!("/var/run/wireguard/{dev}.sock"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_each_peer_and_keys_match_wg() {
        // `wg pubkey` of this private key, computed once by wireguard-tools.
        let private = [0x42u8; 32];
        let link = Link {
            private_key: private,
            listen_port: 51820,
            peers: vec![LinkPeer {
                public_key: "yqtQfO+slSAdeu50WF6RCSrx6OXTk0FqEMYGOxn7lBY=".into(),
                allowed_ips: vec!["10.20.2.0/24".parse().unwrap()],
                endpoint: Some("192.0.2.7:51821".parse().unwrap()),
            }],
        };
        let text = config(&link);
        assert!(text.contains("ListenPort = 51820\n"), "{text}");
        assert!(text.contains("AllowedIPs = 10.20.2.0/24\nEndpoint = 192.0.2.7:51821\n"));
        assert_eq!(
            public_key(&private),
            "EyxEK+AQ+9V+cmAzKKp25x/MwVA6riGTJ9FNnJmT9HI="
        );
    }
}
