//! The node's configuration: a TOML file read once at start. It is the operator's only say in
//! what the node does; there is no API for it.

use crate::limits::OwnerLimits;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use zos_flist::store::StorePolicy;
use zos_types::ByteSize;

/// Where tenants' flists come from when the config names nothing.
pub const DEFAULT_FLIST_DIR: &str = "/var/lib/zos/flists";

/// Where the node listens when the config names nothing.
pub const DEFAULT_SOCKET: &str = "/run/zos/node.sock";

/// Public addresses on one host interface (a `[[public_ips]]` table): zos bridges the
/// interface (`zp<node tag><N>`, N its position here) and puts the VMs holding the addresses on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicIps {
    /// The host interface the addresses are reachable on; it should carry no address of the
    /// host's own, since zos makes it a bridge port.
    pub interface: String,
    /// The addresses' gateway.
    pub gateway: std::net::Ipv4Addr,
    /// The addresses, each with its subnet's prefix length, e.g. `198.51.100.10/24`.
    pub addresses: Vec<ipnet::Ipv4Net>,
}

/// The node's settings. Every field has a default, so an empty file (or none) is a node.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Everything the node keeps: its identity, database, VMs and disks.
    pub data_dir: PathBuf,
    /// Addresses to serve the API on: `unix:///path.sock` (plain HTTP), `tcp://IP:PORT`
    /// (HTTPS, with a certificate for the node's key), or `tcp://IP:PORT?insecure` (plain
    /// HTTP on TCP: only behind a tunnel or on a trusted network).
    pub listen: Vec<String>,
    /// Memory kept for the host and the node itself, never given to workloads.
    pub reserve_memory: ByteSize,
    /// Disk kept free on the data dir's filesystem.
    pub reserve_disk: ByteSize,
    /// Virtual CPUs handed out per host CPU (memory is never overcommitted).
    pub cpu_overcommit: f64,
    /// Disk the node hands out; default: what the data dir's filesystem has free at start
    /// (plus what deployments already hold).
    pub disk: Option<ByteSize>,
    /// The shared flist block cache (default: `<data_dir>/cache`).
    pub cache_dir: Option<PathBuf>,
    /// Crashes of a zmachine in a row before it is left in `error`.
    pub max_restarts: u32,
    /// Seconds a guest gets to power off cleanly when it is removed or replaced.
    pub stop_timeout_secs: u64,
    /// The directories tenants may name flists from (absolute; `.fl` files below them, not
    /// inside `data_dir`). Nothing else on the host can be named in a deployment.
    pub flist_dirs: Vec<PathBuf>,
    /// The address other nodes and users reach this node at, for the endpoint of its
    /// networks' WireGuard links (`ADDRESS:PORT` in each network's result); without it, the
    /// result has the port only.
    pub wireguard_host: Option<String>,
    /// Public IPv4 addresses `ip` workloads may take, per host interface they live on
    /// (`[[public_ips]]` tables); none by default.
    pub public_ips: Vec<PublicIps>,
    /// Days the node keeps what it found on the host but could not account for (VMs and
    /// disks no deployment owns), in `<data_dir>/quarantine`, before deleting it.
    pub quarantine_days: u32,
    /// The store policy: tenants' flists name their stores, and the node never reaches a
    /// loopback, link-local, unspecified, multicast or broadcast address, nor one of its own,
    /// for them; except in these networks (CIDRs or single addresses, e.g. `127.0.0.1/32`
    /// for a store on the node itself). Other hosts' addresses need no allowance.
    pub allow_store_nets: Vec<String>,
    /// Directories whose `dir://` stores (and Redis unix sockets) tenants' flists may read;
    /// none by default (a path on the host is as private as its loopback).
    pub allow_store_dirs: Vec<PathBuf>,
    /// Seconds a client has to send a request's head, counted from its connection (and TLS
    /// handshake) or from the end of the previous answer: so also how long a kept-alive
    /// connection may sit idle.
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a whole request body.
    pub body_timeout_secs: u64,
    /// Connections open at once per listener; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Connections one peer address may hold open at once on a TCP listener; more from it
    /// are closed as soon as accepted, so one client cannot take all of `max_connections`.
    pub max_connections_per_peer: usize,
    /// Streams (followed logs, events) one owner may hold open at once; more are refused
    /// with 429.
    pub max_streams_per_owner: usize,
    /// What one owner may store and ask (`[limits]`): see [`OwnerLimits`].
    pub limits: OwnerLimits,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("/var/lib/zos/node"),
            listen: vec![format!("unix://{DEFAULT_SOCKET}")],
            reserve_memory: ByteSize(1 << 30),
            reserve_disk: ByteSize(1 << 30),
            cpu_overcommit: 4.0,
            disk: None,
            cache_dir: None,
            max_restarts: 5,
            stop_timeout_secs: 10,
            quarantine_days: 7,
            flist_dirs: vec![PathBuf::from(DEFAULT_FLIST_DIR)],
            wireguard_host: None,
            public_ips: Vec::new(),
            allow_store_nets: Vec::new(),
            allow_store_dirs: Vec::new(),
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            max_connections: 1000,
            max_connections_per_peer: 100,
            max_streams_per_owner: 32,
            limits: OwnerLimits::default(),
        }
    }
}

/// A listen address, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp {
        /// `IP:PORT`.
        addr: String,
        /// Serve TLS (the default); false only for `?insecure`.
        tls: bool,
    },
}

impl NodeConfig {
    /// Reads `path`, or the defaults without one. Errors name the file and the setting.
    pub fn load(path: Option<&Path>) -> anyhow::Result<NodeConfig> {
        let config = match path {
            None => NodeConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading config {}: {e}", path.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?
            }
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        if !(self.cpu_overcommit >= 1.0 && self.cpu_overcommit <= 64.0) {
            anyhow::bail!(
                "cpu_overcommit = {}: use a ratio from 1.0 to 64.0",
                self.cpu_overcommit
            );
        }
        if self.listen.is_empty() {
            anyhow::bail!(
                "listen is empty: give at least one address, e.g. \"unix://{DEFAULT_SOCKET}\""
            );
        }
        for l in &self.listen {
            Listen::parse(l)?;
        }
        if let Some(dir) = self.flist_dirs.iter().find(|d| !d.is_absolute()) {
            anyhow::bail!(
                "flist_dirs: {:?} is not absolute: name directories like \"{DEFAULT_FLIST_DIR}\"",
                dir
            );
        }
        self.store_policy()?;
        for (name, value) in [
            ("header_timeout_secs", self.header_timeout_secs),
            ("body_timeout_secs", self.body_timeout_secs),
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_peer",
                self.max_connections_per_peer as u64,
            ),
            ("max_streams_per_owner", self.max_streams_per_owner as u64),
        ] {
            if value == 0 {
                anyhow::bail!(
                    "{name} = 0: give a positive number (or leave it out for the default)"
                );
            }
        }
        self.limits.check()?;
        self.check_public_ips()
    }

    /// Each pool's gateway is in its addresses' subnets, and no address is listed twice.
    fn check_public_ips(&self) -> anyhow::Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, pool) in self.public_ips.iter().enumerate() {
            let place = format!("public_ips[{i}]");
            if pool.interface.is_empty() || pool.interface.len() >= 16 {
                anyhow::bail!(
                    "{place}.interface {:?}: name a host interface",
                    pool.interface
                );
            }
            for a in &pool.addresses {
                if !a.contains(&pool.gateway) {
                    anyhow::bail!(
                        "{place}: gateway {} is not in the subnet of {a}: list addresses with \
                         their subnet's prefix, e.g. \"198.51.100.10/24\"",
                        pool.gateway
                    );
                }
                if a.addr() == pool.gateway || !seen.insert(a.addr()) {
                    anyhow::bail!("{place}: address {a} is the gateway or listed twice");
                }
            }
        }
        Ok(())
    }

    /// The store policy tenants' flists are mounted under.
    pub fn store_policy(&self) -> anyhow::Result<StorePolicy> {
        let nets = self
            .allow_store_nets
            .iter()
            .map(|n| {
                StorePolicy::parse_net(n).map_err(|e| anyhow::anyhow!("allow_store_nets: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        StorePolicy::new(nets, self.allow_store_dirs.clone())
            .map_err(|e| anyhow::anyhow!("allow_store_dirs: {e}"))
    }

    /// The parsed listen addresses.
    pub fn listeners(&self) -> anyhow::Result<Vec<Listen>> {
        self.listen.iter().map(|l| Listen::parse(l)).collect()
    }

    /// The limits each listener serves under.
    pub fn serve_limits(&self) -> crate::serve::Limits {
        crate::serve::Limits {
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs),
            body_timeout: std::time::Duration::from_secs(self.body_timeout_secs),
            max_connections: self.max_connections,
            max_connections_per_peer: self.max_connections_per_peer,
        }
    }

    /// The block cache dir.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cache"))
    }
}

impl Listen {
    /// Parses `unix:///path`, `tcp://IP:PORT` or `tcp://IP:PORT?insecure`.
    pub fn parse(s: &str) -> anyhow::Result<Listen> {
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                anyhow::bail!("listen address {s:?}: a unix socket needs an absolute path, e.g. unix:///run/zos/node.sock");
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (addr, tls) = match rest.split_once('?') {
                None => (rest, true),
                Some((addr, "insecure")) => (addr, false),
                Some((_, option)) => anyhow::bail!(
                    "listen address {s:?}: unknown option {option:?}; the one option is \
                     ?insecure (plain HTTP instead of TLS)"
                ),
            };
            if addr.parse::<std::net::SocketAddr>().is_err() {
                anyhow::bail!("listen address {s:?}: use tcp://IP:PORT, e.g. tcp://127.0.0.1:7700");
            }
            return Ok(Listen::Tcp {
                addr: addr.to_string(),
                tls,
            });
        }
        anyhow::bail!("listen address {s:?}: use unix:///PATH, tcp://IP:PORT (TLS) or tcp://IP:PORT?insecure (plain HTTP)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_defaults_and_typos_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/zos\"\nlisten = [\"tcp://127.0.0.1:7700\"]\nreserve_memory = \"2G\"\ncpu_overcommit = 2.0\n",
        )
        .unwrap();
        let c = NodeConfig::load(Some(&path)).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/zos"));
        assert_eq!(c.reserve_memory.0, 2 << 30);
        assert_eq!(
            c.listeners().unwrap(),
            vec![Listen::Tcp {
                addr: "127.0.0.1:7700".into(),
                tls: true
            }]
        );
        assert_eq!(
            Listen::parse("tcp://[::1]:7700?insecure").unwrap(),
            Listen::Tcp {
                addr: "[::1]:7700".into(),
                tls: false
            }
        );
        let err = Listen::parse("tcp://127.0.0.1:7700?plain").unwrap_err();
        assert!(err.to_string().contains("?insecure"), "{err}");
        assert_eq!(c.max_restarts, 5);

        std::fs::write(&path, "reserve_memroy = \"2G\"\n").unwrap();
        let err = NodeConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("reserve_memroy") && err.contains("node.toml"),
            "{err}"
        );

        std::fs::write(&path, "listen = [\"http://x\"]\n").unwrap();
        let err = NodeConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("unix:///PATH, tcp://IP:PORT (TLS)"), "{err}");

        std::fs::write(&path, "cpu_overcommit = 0.5\n").unwrap();
        assert!(NodeConfig::load(Some(&path)).is_err());

        std::fs::write(&path, "[limits]\ndeployments_per_owner = 3\n").unwrap();
        let c = NodeConfig::load(Some(&path)).unwrap();
        assert_eq!(c.limits.deployments_per_owner, 3);
        assert_eq!(c.limits.workloads_per_deployment, 200);
        std::fs::write(&path, "[limits]\nrequests_per_second = 0.0\n").unwrap();
        let err = NodeConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("limits.requests_per_second"), "{err}");
    }

    #[test]
    fn the_store_policy_denies_by_default_and_takes_allowances() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let policy = NodeConfig::default().store_policy().unwrap();
        assert!(policy.allow_nets().is_empty() && policy.allow_dirs().is_empty());
        assert!(policy.check_store("redis://127.0.0.1:6379").is_err());
        assert!(policy.check_store("dir:///var/lib/zos/store").is_err());

        std::fs::write(
            &path,
            "allow_store_nets = [\"127.0.0.0/8\", \"::1\"]\nallow_store_dirs = [\"/srv/store\"]\n",
        )
        .unwrap();
        let policy = NodeConfig::load(Some(&path))
            .unwrap()
            .store_policy()
            .unwrap();
        policy.check_store("redis://127.0.0.1:6379").unwrap();
        policy.check_store("zdb://[::1]:9900/ns").unwrap();
        policy.check_store("dir:///srv/store/a").unwrap();
        assert!(policy.check_store("http://169.254.169.254/").is_err());

        std::fs::write(&path, "allow_store_nets = [\"10.0.0.0/33\"]\n").unwrap();
        let err = NodeConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("allow_store_nets") && err.contains("CIDR"),
            "{err}"
        );
        std::fs::write(&path, "allow_store_dirs = [\"store\"]\n").unwrap();
        let err = NodeConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("allow_store_dirs") && err.contains("absolute"),
            "{err}"
        );
    }
}
