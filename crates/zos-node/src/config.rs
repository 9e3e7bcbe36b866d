//! The node's configuration: a TOML file read once at start. It is the operator's only say in
//! what the node does; there is no API for it.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use zos_types::ByteSize;

/// Where tenants' flists come from when the config names nothing.
pub const DEFAULT_FLIST_DIR: &str = "/var/lib/zos/flists";

/// Where the node listens when the config names nothing.
pub const DEFAULT_SOCKET: &str = "/run/zos/node.sock";

/// The node's settings. Every field has a default, so an empty file (or none) is a node.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Everything the node keeps: its identity, database, VMs and disks.
    pub data_dir: PathBuf,
    /// Addresses to serve the API on: `unix:///path.sock` or `tcp://HOST:PORT`.
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
    /// Days the node keeps what it found on the host but could not account for (VMs and
    /// disks no deployment owns), in `<data_dir>/quarantine`, before deleting it.
    pub quarantine_days: u32,
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
        }
    }
}

/// A listen address, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(String),
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
        Ok(())
    }

    /// The parsed listen addresses.
    pub fn listeners(&self) -> anyhow::Result<Vec<Listen>> {
        self.listen.iter().map(|l| Listen::parse(l)).collect()
    }

    /// The block cache dir.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cache"))
    }
}

impl Listen {
    /// Parses `unix:///path` or `tcp://host:port`.
    pub fn parse(s: &str) -> anyhow::Result<Listen> {
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                anyhow::bail!("listen address {s:?}: a unix socket needs an absolute path, e.g. unix:///run/zos/node.sock");
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp://") {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                anyhow::bail!("listen address {s:?}: use tcp://IP:PORT, e.g. tcp://127.0.0.1:7700");
            }
            return Ok(Listen::Tcp(addr.to_string()));
        }
        anyhow::bail!("listen address {s:?}: use unix:///PATH or tcp://IP:PORT")
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
            vec![Listen::Tcp("127.0.0.1:7700".into())]
        );
        assert_eq!(c.max_restarts, 5);

        std::fs::write(&path, "reserve_memroy = \"2G\"\n").unwrap();
        let err = NodeConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("reserve_memroy") && err.contains("node.toml"),
            "{err}"
        );

        std::fs::write(&path, "listen = [\"http://x\"]\n").unwrap();
        let err = NodeConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("unix:///PATH or tcp://IP:PORT"), "{err}");

        std::fs::write(&path, "cpu_overcommit = 0.5\n").unwrap();
        assert!(NodeConfig::load(Some(&path)).is_err());
    }
}
